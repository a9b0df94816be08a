//! Unit tests of `rtmp::amf0`.

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
    assert_eq!(cmd.get("flashVer").and_then(Amf0Value::as_str), Some("FMLE/3.0 (compatible; Lavf60.16.100)"));
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
