//! Unit tests of `url`.

use super::*;

const TCP: Transport = Transport::Tcp;
const TLS: Transport = Transport::Tls;
const TUNNEL: Transport = Transport::Quic(QuicMapping::Tunnel);
const ROQR: Transport = Transport::Quic(QuicMapping::Roqr);

/// (input, transport, host, port, app, key)
const ACCEPTED: &[(&str, Transport, &str, u16, &str, &str)] = &[
    ("rtmp://host/live/cam1", TCP, "host", 1935, "live", "cam1"),
    ("rtmp://host:1936/live/cam1", TCP, "host", 1936, "live", "cam1"),
    ("rtmps://host/live/cam1", TLS, "host", 443, "live", "cam1"),
    ("rtmps://host:8443/live/cam1", TLS, "host", 8443, "live", "cam1"),
    ("rtmp+quic://host/live/cam1", ROQR, "host", 1935, "live", "cam1"),
    ("rtmpq://host/live/cam1", ROQR, "host", 1935, "live", "cam1"),
    ("RTMP://Host.Example/live/cam1", TCP, "host.example", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?quic=1", ROQR, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?quic=true", ROQR, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?quic=0", TCP, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?quic=false", TCP, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?quic=1&mode=roqr", ROQR, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?mode=tunnel&quic=1", TUNNEL, "host", 1935, "live", "cam1"),
    ("rtmp+quic://host/live/cam1?mode=roqr", ROQR, "host", 1935, "live", "cam1"),
    ("rtmpq://host/live/cam1?mode=tunnel", TUNNEL, "host", 1935, "live", "cam1"),
    ("rtmp+quic://host/live/cam1?quic=1", ROQR, "host", 1935, "live", "cam1"),
    ("rtmps://host/live/cam1?quic=0", TLS, "host", 443, "live", "cam1"),
    ("rtmp://host/a/b/key", TCP, "host", 1935, "a/b", "key"),
    ("rtmp://host/live/cam1?token=abc", TCP, "host", 1935, "live", "cam1?token=abc"),
    ("rtmp://host/live/cam1?a=1&quic=1&b=2&mode=roqr&c", ROQR, "host", 1935, "live", "cam1?a=1&b=2&c"),
    ("rtmp://host/live/cam1?token=a/b", TCP, "host", 1935, "live", "cam1?token=a/b"),
    ("rtmp://[::1]:1936/live/x", TCP, "::1", 1936, "live", "x"),
    ("rtmp://[::1]/live/x", TCP, "::1", 1935, "live", "x"),
    ("rtmp://[2001:DB8::1]/live/x", TCP, "2001:db8::1", 1935, "live", "x"),
    ("rtmp://127.0.0.1:65535/live/x", TCP, "127.0.0.1", 65535, "live", "x"),
    ("rtmp://host:/live/x", TCP, "host", 1935, "live", "x"),
    ("  rtmp://host/live/x \n", TCP, "host", 1935, "live", "x"),
    ("rtmp://host/live/cam#1", TCP, "host", 1935, "live", "cam#1"),
    ("rtmp://host/live/cam1?", TCP, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?token=x&&quic=0", TCP, "host", 1935, "live", "cam1?token=x"),
    ("rtmp://host/live/cam1?quic=TRUE", ROQR, "host", 1935, "live", "cam1"),
    ("rtmp://host/live/cam1?Quic=1", TCP, "host", 1935, "live", "cam1?Quic=1"),
    // A query on the app (OBS's "Server" box `rtmp://host/live?token=abc`), as ffmpeg reads it.
    ("rtmp://host/live?token=abc/cam3", TCP, "host", 1935, "live?token=abc", "cam3"),
    ("rtmp://host/live/?t=1/k", TCP, "host", 1935, "live?t=1", "k"),
    ("rtmpq://host/live?token=abc/cam3?mode=tunnel", TUNNEL, "host", 1935, "live?token=abc", "cam3"),
    ("rtmp://host/live?t=a/cam3?token=k&quic=1", ROQR, "host", 1935, "live?t=a", "cam3?token=k"),
];

/// (input, expected error)
fn rejected() -> Vec<(&'static str, UrlError)> {
    let q = |s: &str| UrlError::Query(s.to_owned());
    let port = |s: &str| UrlError::Port(s.to_owned());
    let syntax = UrlError::Syntax(String::new());
    vec![
        ("", syntax.clone()),
        ("host/live/x", syntax.clone()),
        ("rtmp:/host/live/x", syntax.clone()),
        ("http://host/live/x", UrlError::Scheme("http".into())),
        ("srt://host/live/x", UrlError::Scheme("srt".into())),
        ("rtmpt://host/live/x", UrlError::Scheme("rtmpt".into())),
        ("://host/live/x", syntax.clone()),
        ("rtmp:///live/x", UrlError::MissingHost),
        ("rtmp://:1935/live/x", UrlError::MissingHost),
        ("rtmp://host:0/live/x", port("0")),
        ("rtmp://host:65536/live/x", port("65536")),
        ("rtmp://host:abc/live/x", port("abc")),
        ("rtmp://host:+80/live/x", port("+80")),
        ("rtmp://host:-1/live/x", port("-1")),
        ("rtmp://[::1]:99999/live/x", port("99999")),
        ("rtmp://host", UrlError::MissingApp),
        ("rtmp://host/", UrlError::MissingApp),
        ("rtmp://host//key", UrlError::MissingApp),
        ("rtmp://host/live", UrlError::MissingKey),
        ("rtmp://host/live/", UrlError::MissingKey),
        ("rtmp://host/live?token=a", UrlError::MissingKey),
        ("rtmp://host/live?token=a/", UrlError::MissingKey),
        ("rtmp://host/?token=a/k", UrlError::MissingApp),
        ("rtmp://host/a/b/?token=a/k", UrlError::MissingKey),
        ("rtmp://host/live/x?quic=yes", q("quic=yes")),
        ("rtmp://host/live/x?quic", q("quic")),
        ("rtmp://host/live/x?quic=1&mode=webrtc", q("mode=webrtc")),
        ("rtmp://host/live/x?mode=roqr", q("mode=roqr")),
        ("rtmp://host/live/x?quic=0&mode=tunnel", q("mode=tunnel")),
        ("rtmps://host/live/x?quic=1", q("quic=1")),
        ("rtmps://host/live/x?mode=roqr", q("mode=roqr")),
        ("rtmp+quic://host/live/x?quic=0", q("quic=0")),
        ("rtmp://host/live/x?quic=1&quic=1", q("quic=1")),
        ("rtmp://host/live/x?mode=roqr&quic=1&mode=tunnel", q("mode=tunnel")),
        ("rtmp://user@host/live/x", syntax.clone()),
        ("rtmp://ho st/live/x", syntax.clone()),
        ("rtmp://::1/live/x", syntax.clone()),
        ("rtmp://[::1/live/x", syntax.clone()),
        ("rtmp://[nope]/live/x", syntax.clone()),
        ("rtmp://[::1]x/live/x", syntax),
    ]
}

#[test]
fn accepted_urls() {
    assert!(ACCEPTED.len() >= 25);
    for &(input, transport, host, port, app, key) in ACCEPTED {
        let want = StreamUrl { transport, host: host.into(), port, app: app.into(), key: key.into() };
        assert_eq!(StreamUrl::parse(input), Ok(want), "{input:?}");
    }
}

#[test]
fn rejected_urls() {
    let rows = rejected();
    assert!(rows.len() >= 25);
    for (input, want) in rows {
        let got = StreamUrl::parse(input);
        match (&got, &want) {
            // Syntax messages are for humans; only the variant is pinned down.
            (Err(UrlError::Syntax(_)), UrlError::Syntax(_)) => {}
            _ => assert_eq!(got, Err(want), "{input:?}"),
        }
    }
}

#[test]
fn display_round_trips() {
    let inputs = ACCEPTED.iter().map(|row| row.0);
    for input in inputs {
        let parsed = StreamUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        let shown = parsed.to_string();
        assert_eq!(StreamUrl::parse(&shown), Ok(parsed.clone()), "{input} -> {shown}");
        // Canonical: printing again changes nothing.
        assert_eq!(StreamUrl::parse(&shown).map(|u| u.to_string()), Ok(shown.clone()));
    }
}

#[test]
fn display_is_canonical() {
    let show = |s: &str| StreamUrl::parse(s).map(|u| u.to_string());
    assert_eq!(show("rtmp://h/live/k"), Ok("rtmp://h:1935/live/k".into()));
    assert_eq!(show("rtmpq://h/live/k?mode=tunnel"), Ok("rtmp+quic://h:1935/live/k?mode=tunnel".into()));
    assert_eq!(show("rtmpq://h/live/k"), Ok("rtmp+quic://h:1935/live/k?mode=roqr".into()));
    assert_eq!(
        show("rtmp://h/live/k?t=1&quic=1&mode=roqr"),
        Ok("rtmp+quic://h:1935/live/k?t=1&mode=roqr".into())
    );
    assert_eq!(show("rtmps://[::1]/a/b/k"), Ok("rtmps://[::1]:443/a/b/k".into()));
}

#[test]
fn session_ids() {
    assert_eq!(session_id("live", "cam1"), "live/cam1");
    assert_eq!(session_id("live", "cam1?token=abc"), "live/cam1");
    assert_eq!(session_id("a/b", "k?x=1?y=2"), "a/b/k");
    assert_eq!(session_id("live?token=abc", "cam3"), "live/cam3");
    assert_eq!(session_id("a/b?t=1", "k?x=2"), "a/b/k");
    let url = StreamUrl::parse("rtmp://h/a/b/cam1?token=abc&quic=1").ok();
    assert_eq!(url.map(|u| u.session_id()), Some("a/b/cam1".into()));
}

#[test]
fn tokens_are_redacted_for_logs() {
    let shown = |s: &str| StreamUrl::parse(s).map(|u| u.redacted());
    assert_eq!(shown("rtmp://h/live/k?token=abc.def&x=1"), Ok("rtmp://h:1935/live/k?token=***&x=1".into()));
    assert_eq!(
        shown("rtmp://h/live?token=abc/k?token=xyz"),
        Ok("rtmp://h:1935/live?token=***/k?token=***".into())
    );
    assert_eq!(shown("rtmp://h/live/k?mytoken=a"), Ok("rtmp://h:1935/live/k?mytoken=a".into()));
    assert_eq!(redact_tokens("cam1?a=1&token="), "cam1?a=1&token=***");
    assert_eq!(redact_tokens("token=abc"), "token=abc", "only query parameters");
    let params: Vec<_> = query_params("a=1&&b&token=x=y").collect();
    assert_eq!(params, [("a", "1"), ("b", ""), ("token", "x=y")]);
}

#[test]
fn tc_urls() {
    let tc = |s: &str| StreamUrl::parse(s).map(|u| u.tc_url());
    assert_eq!(tc("rtmp://h/live/k?t=1"), Ok("rtmp://h:1935/live".into()));
    assert_eq!(tc("rtmps://h/a/b/k"), Ok("rtmps://h:443/a/b".into()));
    assert_eq!(tc("rtmp://h/live/k?quic=1&mode=roqr"), Ok("rtmp+quic://h:1935/live".into()));
    assert_eq!(tc("rtmpq://[::1]:1936/live/k"), Ok("rtmp+quic://[::1]:1936/live".into()));
    assert_eq!(tc("rtmp://h/live?token=a/k"), Ok("rtmp://h:1935/live?token=a".into()));
}

#[test]
fn errors_name_the_part_at_fault() {
    let msg = |s: &str| StreamUrl::parse(s).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg("rtmp://h:99999/live/k").contains("99999"));
    assert!(msg("foo://h/live/k").contains("foo"));
    assert!(msg("rtmp://h/live/k?mode=x").contains("mode=x"));
}

#[test]
fn keys_are_appended_to_targets_without_one() {
    let target = |t: &str, k: &str| StreamUrl::target(t, k).map(|u| u.to_string());
    assert_eq!(target("rtmp://h/live", "cam1"), Ok("rtmp://h:1935/live/cam1".into()));
    assert_eq!(target("rtmp://h/live/", "cam1"), Ok("rtmp://h:1935/live/cam1".into()));
    assert_eq!(target("rtmp://h/live/renamed", "cam1"), Ok("rtmp://h:1935/live/renamed".into()));
    // A trailing slash makes the whole path the app.
    assert_eq!(target("rtmp://h/a/b/", "cam1"), Ok("rtmp://h:1935/a/b/cam1".into()));
    // The base's query goes after the key; the relay's own parameters still apply.
    assert_eq!(
        target("rtmpq://h:2000/live?mode=tunnel&t=1", "cam1"),
        Ok("rtmp+quic://h:2000/live/cam1?t=1&mode=tunnel".into())
    );
    assert_eq!(target("rtmp://h/", "cam1"), Err(UrlError::MissingApp));
    assert_eq!(target("rtmp://h:0/live", "cam1"), Err(UrlError::Port("0".into())));
    assert_eq!(StreamUrl::with_key("rtmp://h/live/x", "k").map(|u| u.key), Ok("k".into()));
}

#[test]
fn redacted_urls_keep_no_query_and_only_the_public_key() {
    let url = StreamUrl::parse("rtmp://h/live/cam1?token=b&quic=1").unwrap();
    assert_eq!(url.redacted_target("cam1"), "rtmp+quic://h:1935/live/cam1");
    assert_eq!(url.redacted_target("other"), "rtmp+quic://h:1935/live/***");
}

#[test]
fn passwords_in_urls_are_redacted() {
    assert_eq!(redact_password("redis://:s3cret@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
    assert_eq!(redact_password("rediss://relay:p@ss@redis.example/1"), "rediss://relay:***@redis.example/1");
    assert_eq!(redact_password("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
    assert_eq!(redact_password("redis://user@host/x@y"), "redis://user@host/x@y");
    assert_eq!(redact_password("redis+unix:///run/redis.sock"), "redis+unix:///run/redis.sock");
}
