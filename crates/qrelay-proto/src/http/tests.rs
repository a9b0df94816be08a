use super::*;

#[test]
fn a_complete_head_is_parsed_with_its_length() {
    let req = b"GET /live/cam1.flv?token=abc HTTP/1.1\r\nHost: relay\r\nOrigin: http://x\r\n\r\nbody";
    let (head, len) = parse_head(req).unwrap().unwrap();
    assert_eq!(head.method, "GET");
    assert_eq!(head.path, "/live/cam1.flv");
    assert_eq!(head.query, "token=abc");
    assert_eq!(head.header("host"), Some("relay"));
    assert_eq!(head.header("origin"), Some("http://x"));
    assert_eq!(&req[len..], b"body");
}

#[test]
fn a_partial_head_waits_for_more() {
    assert_eq!(parse_head(b"GET /live/a.flv HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    assert_eq!(parse_head(b"GE"), Ok(None));
}

#[test]
fn an_endless_head_is_refused_at_the_cap() {
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    while req.len() < MAX_HEAD_BYTES {
        req.extend_from_slice(b"X-Fill: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    // Over the header count first (48 headers), or over the size.
    let e = parse_head(&req).unwrap_err();
    assert_eq!(e.status().0, 431, "{e}");
    let long_line = [b"GET /".as_slice(), &vec![b'a'; MAX_HEAD_BYTES], b" HTTP/1.1\r\n\r\n"].concat();
    assert_eq!(parse_head(&long_line), Err(HttpError::HeadTooLarge));
    let no_end = vec![b'a'; MAX_HEAD_BYTES + 1];
    assert!(parse_head(&no_end).is_err());
}

#[test]
fn too_many_headers_are_refused() {
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        req.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(parse_head(&req), Err(HttpError::TooManyHeaders));
}

#[test]
fn garbage_and_odd_targets_are_bad_requests() {
    for bad in [&b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"[..], b"GET / HTTP/9.9\r\n\r\n", b"GET  HTTP/1.1\r\n\r\n"]
    {
        let e = parse_head(bad).unwrap_err();
        assert_eq!(e.status().0, 400, "{bad:?}: {e}");
    }
    assert_eq!(parse_head(b"GET * HTTP/1.1\r\n\r\n"), Err(HttpError::BadTarget));
    assert_eq!(parse_head(b"GET http://a/b HTTP/1.1\r\n\r\n"), Err(HttpError::BadTarget));
}

#[test]
fn response_heads_cannot_be_split() {
    let head = response_head(404, "Not Found", &[("X-Reason", "no\r\nSet-Cookie: a")]);
    assert_eq!(head, "HTTP/1.1 404 Not Found\r\nX-Reason: noSet-Cookie: a\r\nConnection: close\r\n\r\n");
}
