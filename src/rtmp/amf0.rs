//! AMF0 values, decoded with bounded nesting depth so hostile input cannot overflow the
//! stack (rml_amf0 recurses without a limit), and encoded for commands we send.
//!
//! Decoding is strict about what could cost memory or be misread (lengths are checked
//! against the bytes present before anything is allocated; count fields are hints only)
//! and lenient in one place real encoders need: an object or ECMA array whose end marker
//! is missing because the message ends is accepted with the properties read so far, as
//! librtmp does. So a message cut exactly at a property boundary inside an object decodes
//! `Ok`; a cut anywhere else is [`Amf0Error::Truncated`].
//!
//! Not here: AMF3 (0x11 is refused), references (0x07 is refused: RTMP commands never
//! need them and following them invites cycles).

use bytes::{BufMut, BytesMut};

/// Deepest object/array nesting accepted. Real RTMP commands nest 2-3 levels.
pub const MAX_DEPTH: usize = 32;

/// Entries a strict array's count may preallocate at most; beyond that the vector grows
/// as values actually decode, so a forged count costs nothing.
const MAX_PREALLOC: usize = 1024;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;
const XML_DOCUMENT: u8 = 0x0F;
const TYPED_OBJECT: u8 = 0x10;

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    /// Marker 0x00.
    Number(f64),
    /// Marker 0x01.
    Boolean(bool),
    /// Markers 0x02 (string) and 0x0C (long string).
    String(String),
    /// Marker 0x03; properties in wire order.
    Object(Vec<(String, Amf0Value)>),
    /// Marker 0x05.
    Null,
    /// Marker 0x06.
    Undefined,
    /// Marker 0x08; properties in wire order.
    EcmaArray(Vec<(String, Amf0Value)>),
    /// Marker 0x0A.
    StrictArray(Vec<Amf0Value>),
    /// Marker 0x0B: ms since epoch (time zone ignored).
    Date(f64),
}

/// Why AMF0 decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    /// Input ended inside a value.
    #[error("truncated AMF0 value")]
    Truncated,
    /// A type marker we do not accept.
    #[error("unsupported AMF0 marker 0x{0:02x}")]
    UnsupportedMarker(u8),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("AMF0 nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A string that is not UTF-8.
    #[error("AMF0 string is not UTF-8")]
    BadUtf8,
}

impl Amf0Value {
    /// String content, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Number, if this is a number.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Property `name` of an object or ECMA array.
    pub fn get(&self, name: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(props) | Amf0Value::EcmaArray(props) => {
                props.iter().find(|(k, _)| k == name).map(|(_, v)| v)
            }
            _ => None,
        }
    }
}

/// Decodes every value in `input` (a command or data message body).
///
/// Containers may nest [`MAX_DEPTH`] deep; recursion is bounded by that, so the stack is
/// safe whatever the input. See the module docs for the one tolerance (a missing object
/// end marker at the end of the input).
pub fn decode_all(input: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut d = Decoder { rest: input };
    let mut out = Vec::new();
    while !d.rest.is_empty() {
        out.push(d.value(0)?);
    }
    Ok(out)
}

/// Reads values off the front of a slice; every read checks the length first.
struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Amf0Error> {
        if n > self.rest.len() {
            return Err(Amf0Error::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Amf0Error> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or(Amf0Error::Truncated)?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Amf0Error> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Amf0Error> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        Ok(f64::from_be_bytes(self.array::<8>()?))
    }

    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| Amf0Error::BadUtf8)
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u16()?;
        self.utf8(usize::from(len))
    }

    fn long_string(&mut self) -> Result<String, Amf0Error> {
        let len = self.u32()?;
        // A length beyond usize cannot be present in the input either.
        self.utf8(usize::try_from(len).map_err(|_| Amf0Error::Truncated)?)
    }

    /// Decodes one value inside `depth` enclosing containers.
    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        let marker = self.u8()?;
        Ok(match marker {
            NUMBER => Amf0Value::Number(self.f64()?),
            BOOLEAN => Amf0Value::Boolean(self.u8()? != 0),
            STRING => Amf0Value::String(self.short_string()?),
            OBJECT => Amf0Value::Object(self.properties(depth)?),
            NULL => Amf0Value::Null,
            UNDEFINED => Amf0Value::Undefined,
            ECMA_ARRAY => {
                // The count is only a hint (encoders get it wrong); the end marker rules.
                let _count = self.u32()?;
                Amf0Value::EcmaArray(self.properties(depth)?)
            }
            STRICT_ARRAY => {
                let inner = enter(depth)?;
                let count = self.u32()?;
                // Every value takes at least its marker byte, so the input bounds the count.
                let hint =
                    usize::try_from(count).unwrap_or(usize::MAX).min(self.rest.len()).min(MAX_PREALLOC);
                let mut items = Vec::with_capacity(hint);
                for _ in 0..count {
                    items.push(self.value(inner)?);
                }
                Amf0Value::StrictArray(items)
            }
            DATE => {
                let ms = self.f64()?;
                let _time_zone = self.array::<2>()?;
                Amf0Value::Date(ms)
            }
            LONG_STRING | XML_DOCUMENT => Amf0Value::String(self.long_string()?),
            TYPED_OBJECT => {
                // The class name means nothing to RTMP; keep the properties.
                let _class = self.short_string()?;
                Amf0Value::Object(self.properties(depth)?)
            }
            other => return Err(Amf0Error::UnsupportedMarker(other)),
        })
    }

    /// Properties up to the end marker (empty key + 0x09) of a container at `depth`.
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        let inner = enter(depth)?;
        let mut props = Vec::new();
        loop {
            // Tolerance: the message ended where the next key (or the end marker's final
            // 0x09) would start. librtmp accepts this and some encoders' onMetaData
            // relies on it.
            if self.rest.is_empty() {
                return Ok(props);
            }
            let key = self.short_string()?;
            if key.is_empty() {
                match self.rest.first() {
                    None => return Ok(props),
                    Some(&OBJECT_END) => {
                        self.rest = self.rest.get(1..).unwrap_or_default();
                        return Ok(props);
                    }
                    // An empty property name with a real value: legal, if odd.
                    Some(_) => {}
                }
            }
            let value = self.value(inner)?;
            props.push((key, value));
        }
    }
}

/// Depth for the children of a container at `depth`, or TooDeep.
fn enter(depth: usize) -> Result<usize, Amf0Error> {
    if depth >= MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    Ok(depth + 1)
}

/// `s` cut to at most `max` bytes on a char boundary, so a length field can hold it.
fn fit(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn put_key(key: &str, out: &mut BytesMut) {
    let key = fit(key, usize::from(u16::MAX));
    out.put_u16(key.len() as u16);
    out.put_slice(key.as_bytes());
}

fn put_properties(props: &[(String, Amf0Value)], out: &mut BytesMut) {
    for (k, v) in props {
        put_key(k, out);
        encode(v, out);
    }
    out.put_slice(&[0, 0, OBJECT_END]);
}

/// Encodes `value` onto `out`.
///
/// Strings longer than 65535 bytes become long strings (0x0C). Keys longer than 65535
/// bytes are cut at a char boundary, since the wire cannot carry them; values we send
/// never come near that.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) => {
            if s.len() <= usize::from(u16::MAX) {
                out.put_u8(STRING);
                out.put_u16(s.len() as u16);
                out.put_slice(s.as_bytes());
            } else {
                let s = fit(s, u32::MAX as usize);
                out.put_u8(LONG_STRING);
                out.put_u32(s.len() as u32);
                out.put_slice(s.as_bytes());
            }
        }
        Amf0Value::Object(props) => {
            out.put_u8(OBJECT);
            put_properties(props, out);
        }
        Amf0Value::Null => out.put_u8(NULL),
        Amf0Value::Undefined => out.put_u8(UNDEFINED),
        Amf0Value::EcmaArray(props) => {
            out.put_u8(ECMA_ARRAY);
            out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
            put_properties(props, out);
        }
        Amf0Value::StrictArray(items) => {
            let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.put_u8(STRICT_ARRAY);
            out.put_u32(count);
            for item in items.iter().take(count as usize) {
                encode(item, out);
            }
        }
        Amf0Value::Date(ms) => {
            out.put_u8(DATE);
            out.put_f64(*ms);
            out.put_i16(0);
        }
    }
}

/// Encodes several values back to back.
pub fn encode_all(values: &[Amf0Value], out: &mut BytesMut) {
    for v in values {
        encode(v, out);
    }
}

/// Convenience for building objects.
pub fn object<const N: usize>(props: [(&str, Amf0Value); N]) -> Amf0Value {
    Amf0Value::Object(props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(values: &[Amf0Value]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_all(values, &mut out);
        out.to_vec()
    }

    fn s(v: &str) -> Amf0Value {
        Amf0Value::String(v.to_owned())
    }

    fn every_type() -> Vec<Amf0Value> {
        vec![
            Amf0Value::Number(0.0),
            Amf0Value::Number(-1.5e300),
            Amf0Value::Number(f64::INFINITY),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(false),
            s(""),
            s("héllo ✓"),
            object([("a", Amf0Value::Number(1.0)), ("b", s("x"))]),
            Amf0Value::Object(vec![]),
            Amf0Value::Null,
            Amf0Value::Undefined,
            Amf0Value::EcmaArray(vec![
                ("duration".into(), Amf0Value::Number(0.0)),
                ("encoder".into(), s("Lavf")),
            ]),
            Amf0Value::EcmaArray(vec![]),
            Amf0Value::StrictArray(vec![Amf0Value::Null, Amf0Value::Number(2.0), s("z")]),
            Amf0Value::StrictArray(vec![]),
            Amf0Value::Date(1.7e12),
        ]
    }

    #[test]
    fn round_trip_every_type() {
        for v in every_type() {
            let bytes = enc(std::slice::from_ref(&v));
            assert_eq!(decode_all(&bytes), Ok(vec![v.clone()]), "{v:?}");
        }
        let all = every_type();
        assert_eq!(decode_all(&enc(&all)), Ok(all));
    }

    #[test]
    fn exact_encodings() {
        assert_eq!(enc(&[Amf0Value::Number(1.0)]), [0, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(&[Amf0Value::Boolean(true)]), [1, 1]);
        assert_eq!(enc(&[s("ab")]), [2, 0, 2, b'a', b'b']);
        assert_eq!(enc(&[Amf0Value::Null, Amf0Value::Undefined]), [5, 6]);
        assert_eq!(enc(&[Amf0Value::Object(vec![])]), [3, 0, 0, 9]);
        assert_eq!(enc(&[Amf0Value::EcmaArray(vec![])]), [8, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(enc(&[Amf0Value::StrictArray(vec![])]), [0x0A, 0, 0, 0, 0]);
        assert_eq!(enc(&[Amf0Value::Date(0.0)]), [0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn long_strings() {
        let short = "x".repeat(65535);
        let bytes = enc(&[s(&short)]);
        assert_eq!(&bytes[..3], &[0x02, 0xFF, 0xFF]);
        assert_eq!(decode_all(&bytes), Ok(vec![s(&short)]));

        let long = "y".repeat(65536);
        let bytes = enc(&[s(&long)]);
        assert_eq!(&bytes[..5], &[0x0C, 0, 1, 0, 0]);
        assert_eq!(bytes.len(), 5 + 65536);
        assert_eq!(decode_all(&bytes), Ok(vec![s(&long)]));
    }

    #[test]
    fn overlong_key_is_cut_on_a_char_boundary() {
        // 3-byte chars: 65535 is a multiple of 3, so add one ASCII byte to misalign.
        let key = format!("k{}", "€".repeat(30_000));
        let bytes = enc(&[Amf0Value::Object(vec![(key.clone(), Amf0Value::Null)])]);
        let decoded = decode_all(&bytes).expect("valid");
        let Some(Amf0Value::Object(props)) = decoded.first() else {
            panic!("not an object: {decoded:?}");
        };
        let got = &props[0].0;
        assert!(got.len() <= 65535);
        assert!(key.starts_with(got.as_str()));
        assert_eq!(got.len(), 1 + 3 * 21_844);
    }

    #[test]
    fn other_markers_decode() {
        // XML document: long-string layout.
        let xml = [0x0F, 0, 0, 0, 3, b'<', b'a', b'>'];
        assert_eq!(decode_all(&xml), Ok(vec![s("<a>")]));
        // Typed object: class name, then properties.
        let mut typed = vec![0x10, 0, 3, b'F', b'o', b'o', 0, 1, b'k'];
        typed.extend([0x01, 0x01, 0, 0, 9]);
        assert_eq!(decode_all(&typed), Ok(vec![object([("k", Amf0Value::Boolean(true))])]));
        // Date with a time zone, which is ignored.
        let mut date = vec![0x0B];
        date.extend(1000.0f64.to_be_bytes());
        date.extend((-60i16).to_be_bytes());
        assert_eq!(decode_all(&date), Ok(vec![Amf0Value::Date(1000.0)]));
        // Any non-zero byte is true.
        assert_eq!(decode_all(&[1, 7]), Ok(vec![Amf0Value::Boolean(true)]));
        // An empty key followed by a value (not the end marker) is a property.
        let odd = [3, 0, 0, 5, 0, 0, 9];
        assert_eq!(decode_all(&odd), Ok(vec![Amf0Value::Object(vec![(String::new(), Amf0Value::Null)])]));
    }

    #[test]
    fn unsupported_markers() {
        for m in [0x04u8, 0x07, 0x09, 0x0D, 0x0E, 0x11, 0x12, 0xFF] {
            assert_eq!(decode_all(&[m, 0, 0]), Err(Amf0Error::UnsupportedMarker(m)));
        }
        // Inside a container too.
        assert_eq!(decode_all(&[0x0A, 0, 0, 0, 1, 0x07, 0, 1]), Err(Amf0Error::UnsupportedMarker(0x07)));
    }

    #[test]
    fn bad_utf8() {
        assert_eq!(decode_all(&[2, 0, 2, 0xC3, 0x28]), Err(Amf0Error::BadUtf8));
        assert_eq!(decode_all(&[3, 0, 1, 0xFF, 5, 0, 0, 9]), Err(Amf0Error::BadUtf8));
        assert_eq!(decode_all(&[0x0C, 0, 0, 0, 1, 0x80]), Err(Amf0Error::BadUtf8));
    }

    fn nested(depth: usize) -> Amf0Value {
        let mut v = Amf0Value::Null;
        for i in 0..depth {
            v = match i % 3 {
                0 => Amf0Value::Object(vec![("o".into(), v)]),
                1 => Amf0Value::EcmaArray(vec![("e".into(), v)]),
                _ => Amf0Value::StrictArray(vec![v]),
            };
        }
        v
    }

    #[test]
    fn nesting_up_to_the_limit() {
        let v = nested(MAX_DEPTH);
        assert_eq!(decode_all(&enc(std::slice::from_ref(&v))), Ok(vec![v]));
        assert_eq!(decode_all(&enc(&[nested(MAX_DEPTH + 1)])), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn deep_nesting_is_refused_without_stack_overflow() {
        // 1000 objects opened and never closed, and 1000 strict arrays: built by hand,
        // since encoding such values would itself recurse 1000 deep.
        let mut objects = Vec::new();
        for _ in 0..1000 {
            objects.extend([3, 0, 1, b'a']);
        }
        objects.push(5);
        assert_eq!(decode_all(&objects), Err(Amf0Error::TooDeep));

        let mut arrays = Vec::new();
        for _ in 0..1000 {
            arrays.extend([0x0A, 0, 0, 0, 1]);
        }
        arrays.push(5);
        assert_eq!(decode_all(&arrays), Err(Amf0Error::TooDeep));

        let mut ecma = Vec::new();
        for _ in 0..100_000 {
            ecma.extend([8, 0, 0, 0, 1, 0, 1, b'e']);
        }
        assert_eq!(decode_all(&ecma), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn truncated_scalars_at_every_offset() {
        let values = [
            Amf0Value::Number(3.25),
            Amf0Value::Boolean(true),
            s("hello"),
            s(&"L".repeat(70_000)),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), s("ab"), Amf0Value::Null]),
            Amf0Value::Date(5.0),
        ];
        for v in values {
            let bytes = enc(std::slice::from_ref(&v));
            for cut in 1..bytes.len() {
                assert_eq!(decode_all(&bytes[..cut]), Err(Amf0Error::Truncated), "{cut}");
            }
        }
    }

    #[test]
    fn truncated_objects_at_every_offset() {
        let v = object([
            ("app", s("live")),
            ("inner", Amf0Value::EcmaArray(vec![("n".into(), Amf0Value::Number(1.0))])),
            ("list", Amf0Value::StrictArray(vec![Amf0Value::Boolean(false)])),
        ]);
        let bytes = enc(std::slice::from_ref(&v));
        let mut accepted = Vec::new();
        for cut in 1..bytes.len() {
            match decode_all(&bytes[..cut]) {
                Err(Amf0Error::Truncated) => {}
                Ok(values) => {
                    // Only cuts at a property boundary are accepted, and they yield a
                    // prefix of the properties.
                    let [Amf0Value::Object(props)] = values.as_slice() else {
                        panic!("cut {cut}: {values:?}");
                    };
                    let Amf0Value::Object(all) = &v else { unreachable!() };
                    assert!(props.len() <= all.len());
                    accepted.push(cut);
                }
                Err(e) => panic!("cut {cut}: {e:?}"),
            }
        }
        // Key boundaries: after the marker, after each property, inside the inner ECMA
        // array after its count and its one property, and the two end markers' last bytes.
        assert!(accepted.contains(&1));
        assert!(accepted.contains(&(bytes.len() - 1)), "missing final 0x09 accepted");
        assert!(accepted.contains(&(bytes.len() - 3)), "missing whole end marker accepted");
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // Each claims ~4 GiB and gives a few bytes: must fail fast with Truncated.
        let cases: [&[u8]; 5] = [
            &[0x0C, 0xFF, 0xFF, 0xFF, 0xFF, b'a'],
            &[0x0F, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 5, 5, 5],
            &[0x02, 0xFF, 0xFF, b'a'],
            &[0x03, 0xFF, 0xFF, b'k'],
        ];
        for c in cases {
            assert_eq!(decode_all(c), Err(Amf0Error::Truncated), "{c:?}");
        }
        // ECMA count is a hint only: wrong counts are fine either way.
        let ecma = [8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1, b'a', 5, 0, 0, 9];
        assert_eq!(decode_all(&ecma), Ok(vec![Amf0Value::EcmaArray(vec![("a".into(), Amf0Value::Null)])]));
    }

    /// ffmpeg's connect command as sent when publishing, written out byte by byte.
    fn ffmpeg_connect_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend([0x02, 0x00, 0x07]);
        b.extend(b"connect");
        b.extend([0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
        b.push(0x03);
        b.extend([0x00, 0x03]);
        b.extend(b"app");
        b.extend([0x02, 0x00, 0x04]);
        b.extend(b"live");
        b.extend([0x00, 0x04]);
        b.extend(b"type");
        b.extend([0x02, 0x00, 0x0A]);
        b.extend(b"nonprivate");
        b.extend([0x00, 0x08]);
        b.extend(b"flashVer");
        b.extend([0x02, 0x00, 0x24]);
        b.extend(b"FMLE/3.0 (compatible; Lavf60.16.100)");
        b.extend([0x00, 0x05]);
        b.extend(b"tcUrl");
        b.extend([0x02, 0x00, 0x1A]);
        b.extend(b"rtmp://127.0.0.1:1935/live");
        b.extend([0x00, 0x00, 0x09]);
        b
    }

    #[test]
    fn ffmpeg_connect_command() {
        let bytes = ffmpeg_connect_bytes();
        let values = decode_all(&bytes).expect("valid connect");
        assert_eq!(values.len(), 3);
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_number(), Some(1.0));
        let cmd = &values[2];
        assert_eq!(cmd.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(cmd.get("type").and_then(Amf0Value::as_str), Some("nonprivate"));
        assert_eq!(
            cmd.get("flashVer").and_then(Amf0Value::as_str),
            Some("FMLE/3.0 (compatible; Lavf60.16.100)")
        );
        assert_eq!(cmd.get("tcUrl").and_then(Amf0Value::as_str), Some("rtmp://127.0.0.1:1935/live"));
        assert_eq!(cmd.get("missing"), None);
        // Our encoder produces the same bytes.
        let ours = [
            s("connect"),
            Amf0Value::Number(1.0),
            object([
                ("app", s("live")),
                ("type", s("nonprivate")),
                ("flashVer", s("FMLE/3.0 (compatible; Lavf60.16.100)")),
                ("tcUrl", s("rtmp://127.0.0.1:1935/live")),
            ]),
        ];
        assert_eq!(enc(&ours), bytes);
    }

    #[test]
    fn accessors() {
        assert_eq!(Amf0Value::Null.as_str(), None);
        assert_eq!(Amf0Value::Null.as_number(), None);
        assert_eq!(s("x").get("x"), None);
        let e = Amf0Value::EcmaArray(vec![("w".into(), Amf0Value::Number(1280.0))]);
        assert_eq!(e.get("w").and_then(Amf0Value::as_number), Some(1280.0));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = enc(&every_type());
        for round in 0..5000 {
            let data: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 200) as usize;
                // Small byte values hit real markers and short lengths more often.
                (0..len).map(|_| (next() % 20) as u8).collect()
            } else {
                let mut d = base.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % d.len() as u64) as usize;
                    if let Some(b) = d.get_mut(at) {
                        *b = next() as u8;
                    }
                }
                d
            };
            let _ = decode_all(&data);
        }
    }
}
