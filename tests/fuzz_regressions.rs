//! Fuzz findings and seeds, replayed under plain `cargo test` (stable, no libFuzzer).
//!
//! The checks are the fuzz targets' own: `fuzz/src/lib.rs` is included here as a module,
//! so an input fails here exactly when it makes `cargo fuzz run <target>` crash.
//!
//! - `replay_<target>` runs every file in `fuzz/regressions/<target>/` (minimised crashes,
//!   kept forever) and `fuzz/seeds/<target>/` (the committed seed corpus) through the
//!   check and reports all the files that fail.
//! - The named tests further down pin individual findings with their bytes inline and
//!   the invariant spelled out, so a failure reads as the bug it is.
//!
//! To add a finding: minimise it (`cargo fuzz tmin <target> <artifact>`), copy it to
//! `fuzz/regressions/<target>/<short-name>`, and (optionally) add a named test below. See
//! fuzz/README.md.

#[allow(unreachable_pub, dead_code, clippy::all)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    out.sort();
    out
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs every saved input of `target` through `check`; fails listing every input that
/// panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut ran = 0;
    for kind in ["regressions", "seeds"] {
        for path in files(&root.join(kind).join(target)) {
            let data = std::fs::read(&path).expect("readable input");
            ran += 1;
            if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
                failures.push(format!("{}: {}", path.display(), panic_text(&*e)));
            }
        }
    }
    eprintln!("{target}: replayed {ran} saved inputs");
    assert!(ran > 0, "no saved inputs found for {target} under {}", root.display());
    assert!(
        failures.is_empty(),
        "{} of {ran} saved {target} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn replay_roqr_frame() {
    replay("roqr_frame", checks::roqr_frame);
}

#[test]
fn replay_roqr_server_session() {
    replay("roqr_server_session", checks::roqr_server_session);
}

#[test]
fn replay_client_session() {
    replay("client_session", checks::client_session);
}

#[test]
fn replay_handshake() {
    replay("handshake", checks::handshake);
}

#[test]
fn replay_chunk_decoder() {
    replay("chunk_decoder", checks::chunk_decoder);
}

#[test]
fn replay_chunk_roundtrip() {
    replay("chunk_roundtrip", checks::chunk_roundtrip);
}

#[test]
fn replay_server_session() {
    replay("server_session", checks::server_session);
}

#[test]
fn replay_amf0() {
    replay("amf0", checks::amf0);
}

#[test]
fn replay_flv() {
    replay("flv", checks::flv);
}

#[test]
fn replay_url() {
    replay("url", checks::url);
}

#[test]
fn replay_http_request() {
    replay("http_request", checks::http_request);
}

#[test]
fn replay_codec_inspect() {
    replay("codec_inspect", checks::codec_inspect);
}

#[test]
fn replay_message() {
    replay("message", checks::message);
}

// ---------------------------------------------------------------------------------------
// Named findings
// ---------------------------------------------------------------------------------------

/// Found by the `url` target (fuzz/regressions/url/: key_trailing_whitespace,
/// key_trailing_whitespace_empty_param, fuzzed_crash-61fda05a).
///
/// `StreamUrl::parse` trims the whole input, but a stream key can still end in whitespace
/// when something after it is removed: a relay parameter (`rtmp://h/a/k ?quic=0` parses
/// to key `"k "`) or an empty query parameter (`rtmp://h/a/k?x &` gives key `"k?x "`). `Display` then prints `rtmp://h:1935/a/k ` and parsing that trims
/// the key to `"k"`: a URL qrelay printed no longer names the same stream.
#[test]
fn url_key_with_trailing_whitespace_survives_display() {
    for input in ["rtmp://h/a/k ?quic=0", "rtmp://h/a/k?x &", "rtmps://h/a/k\t?quic=false"] {
        let Ok(url) = qrelay::url::StreamUrl::parse(input) else {
            // Refusing such keys outright is an acceptable fix too.
            continue;
        };
        let shown = url.to_string();
        assert_eq!(
            qrelay::url::StreamUrl::parse(&shown).as_ref(),
            Ok(&url),
            "{input:?} parsed to key {:?} but prints as {shown:?}",
            url.key
        );
    }
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
#[cfg(target_os = "linux")]
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmHWM")
        * 1024
}

/// Found while building the `server_session` and `amf0` targets (a resource finding, not
/// a crash: libFuzzer's inputs are far too small to show it). Fed to the ASan build of the
/// `server_session` target, one 16 MiB `connect` whose command object is a strict array
/// of nulls took 7.9 s and 900 MiB peak RSS.
///
/// The server decodes every command (type 20/17) fully with `amf0::decode_all`, whatever
/// its size, and AMF0 is very compressible into `Amf0Value`s: each one-byte `0x05` (null)
/// inside a strict array becomes a 24-32 byte `Amf0Value`. One 4 MiB command therefore
/// makes the server allocate well over 100 MiB (a 16 MiB one, the default message limit,
/// about 0.5-1 GiB and seconds of CPU), per connection, before it even looks at the
/// command name. The peak must stay within a small multiple of the message size.
#[cfg(target_os = "linux")]
#[test]
fn command_amf0_does_not_amplify_memory() {
    use bytes::{BufMut, Bytes, BytesMut};
    use qrelay::rtmp::chunk::{encode_message, Message};
    use qrelay::rtmp::handshake::Handshake;
    use qrelay::rtmp::session::{ServerSession, SessionConfig};

    const LEN: usize = 4 << 20;
    let mut body = BytesMut::new();
    body.put_slice(b"\x02\x00\x07connect\x00");
    body.put_f64(1.0);
    body.put_u8(0x0A);
    body.put_u32(LEN as u32);
    body.resize(LEN, 0x05);
    let msg = Message { csid: 3, timestamp: 0, type_id: 20, stream_id: 0, payload: body.freeze() };
    let mut wire = BytesMut::new();
    encode_message(&msg, 128, &mut wire);
    drop(msg);

    let mut s = ServerSession::new(SessionConfig::default());
    let (mut client, c0c1) = Handshake::client().expect("client handshake");
    s.handle_input(&c0c1).expect("C0C1");
    let s012: Bytes = s.take_output().expect("S0S1S2");
    let mut c2 = BytesMut::new();
    client.process(&s012, &mut c2).expect("client completes");
    s.handle_input(&c2).expect("C2");

    let before = peak_rss();
    let _ = s.handle_input(&wire); // refusing it is fine; the memory spent is the point
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 16 * LEN, "a {} MiB command raised peak memory by {} MiB", LEN >> 20, grown >> 20);
}
