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
mod tests;
