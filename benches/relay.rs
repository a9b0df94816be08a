//! Micro-benchmarks of the relay's hot paths: chunk encode/decode, hub fan-out, the
//! handshake and keyframe detection. `cargo bench --bench relay`; each group measures
//! for about a second so the whole run stays short.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qrelay::hub::{DirectSink, Hub, HubConfig, Subscriber, Takeover};
use qrelay::media::frame::{inspect_video, Frame, MediaKind};
use qrelay::rtmp::chunk::{self, ChunkDecoder, DecoderLimits, Message};
use qrelay::rtmp::handshake::Handshake;
use qrelay_bench::synth::VideoPlan;

/// A 3 Mbit/s, 30 fps inter frame is about 12 KB; a keyframe about 60 KB.
const INTER: usize = 12 * 1024;
const KEY: usize = 60 * 1024;

/// A synthetic video payload of `len` bytes (`qrelay_bench::synth`, the stream the load
/// generator publishes): frame 0 of its GOP for a keyframe, frame 1 otherwise.
fn video_payload(key: bool, len: usize) -> Bytes {
    VideoPlan::fixed(30, 30, len).frame(u64::from(!key), 0)
}

fn video_message(ts: u32, payload: Bytes) -> Message {
    Message { csid: 6, timestamp: ts, type_id: 9, stream_id: 1, payload }
}

fn chunk_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_encode");
    for (name, len, chunk_size) in
        [("12k@4096", INTER, 4096), ("60k@4096", KEY, 4096), ("12k@128", INTER, 128)]
    {
        let msg = video_message(1000, video_payload(false, len));
        let mut out = BytesMut::with_capacity(2 * len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                chunk::encode_message(black_box(&msg), chunk_size, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn chunk_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_decode");
    let limits = DecoderLimits { min_chunk_size: 1, ..DecoderLimits::default() };
    for (name, len, chunk_size) in
        [("12k@4096", INTER, 4096), ("60k@4096", KEY, 4096), ("12k@128", INTER, 128)]
    {
        // A GOP-like run of messages, decoded from one receive buffer.
        let mut wire = BytesMut::new();
        let n = 30;
        for i in 0..n {
            chunk::encode_message(&video_message(i * 33, video_payload(i == 0, len)), chunk_size, &mut wire);
        }
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes((len * n as usize) as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut dec = ChunkDecoder::new(limits);
                dec.set_chunk_size(chunk_size).expect("chunk size within limits");
                let mut buf = BytesMut::from(&wire[..]);
                let mut got = 0;
                while let Ok(Some(m)) = dec.decode(&mut buf) {
                    got += m.payload.len();
                }
                black_box(got)
            })
        });
    }
    g.finish();
}

/// One frame published to N subscribers and drained by each: what the relay does per
/// frame per player, minus the socket write.
fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_fanout");
    for n in [1usize, 100, 1000] {
        let hub = Hub::new(HubConfig::default());
        let mut publisher = hub.publish("live/bench").expect("fresh hub");
        let mut subs: Vec<Subscriber> = (0..n).map(|_| hub.subscribe("live/bench")).collect();
        // Inter frames only: no keyframe, so the GOP cache stays empty and the run is
        // steady-state fan-out.
        let frame = Frame::new(MediaKind::Video, 0, video_payload(false, INTER));
        let mut out = Vec::with_capacity(4);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("push_drain_per_subscriber", n), &n, |b, _| {
            b.iter(|| {
                publisher.send(frame.clone());
                for s in subs.iter_mut() {
                    s.drain_into(&mut out, 256 * 1024);
                    out.clear();
                }
            })
        });
        // Idle players written by the publisher: what the hub adds to each `send` (the
        // sink takes every byte and does no system call).
        for s in &subs {
            assert!(s.hand_to_publisher(Box::new(DiscardSink)).is_ok(), "idle subscriber");
        }
        g.bench_with_input(BenchmarkId::new("direct_write_per_subscriber", n), &n, |b, _| {
            b.iter(|| publisher.send(frame.clone()))
        });
    }
    g.finish();
}

/// One frame to 300 idle (directly written) subscribers, alone and while another thread
/// joins and leaves about 1000 times a second (20 times `bench/churn.sh`'s rate): with
/// the fan-out outside the stream lock, a join or leave costs the publisher at most a
/// wait for a list copy, never for another frame's writes.
fn fanout_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_fanout_churn");
    let n = 300;
    let hub = Hub::new(HubConfig::default());
    let mut publisher = hub.publish("live/bench").expect("fresh hub");
    let subs: Vec<Subscriber> = (0..n).map(|_| hub.subscribe("live/bench")).collect();
    for s in &subs {
        assert!(s.hand_to_publisher(Box::new(DiscardSink)).is_ok(), "idle subscriber");
    }
    let frame = Frame::new(MediaKind::Video, 0, video_payload(false, INTER));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("direct_write_300_steady", |b| b.iter(|| publisher.send(frame.clone())));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (hub, stop) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut joins = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(hub.subscribe("live/bench"));
                joins += 1;
                // Pacing, not synchronisation: about 1000 joins and leaves per second.
                std::thread::sleep(Duration::from_millis(1));
            }
            joins
        })
    };
    g.bench_function("direct_write_300_with_churn", |b| b.iter(|| publisher.send(frame.clone())));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let joins = churn.join().expect("churn thread");
    black_box(joins);
    g.finish();
}

/// One frame to 100 idle subscribers from a fresh publisher (timestamps passed through)
/// and from one that resumed the stream (every frame re-stamped to follow the previous
/// publisher's): what continuing a stream across publishers costs per frame.
fn resumed(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_resumed");
    let n = 100;
    let key = Frame::new(MediaKind::Video, 0, video_payload(true, KEY));
    let frame = Frame::new(MediaKind::Video, 33, video_payload(false, INTER));
    for resume in [false, true] {
        let hub = Hub::new(HubConfig::default());
        let mut publisher = hub.publish("live/bench").expect("fresh hub");
        let subs: Vec<Subscriber> = (0..n).map(|_| hub.subscribe("live/bench")).collect();
        publisher.send(key.clone());
        if resume {
            // A takeover (no runtime here for a grace timer) resumes the same way.
            publisher = hub.publish_with("live/bench", Takeover::Now, 0).expect("takeover");
            publisher.send(key.clone());
        }
        let mut subs = subs;
        for s in subs.iter_mut() {
            let mut out = Vec::new();
            s.drain_into(&mut out, usize::MAX);
            assert!(s.hand_to_publisher(Box::new(DiscardSink)).is_ok(), "idle subscriber");
        }
        g.throughput(Throughput::Elements(n as u64));
        let name = if resume { "direct_write_100_resumed" } else { "direct_write_100_fresh" };
        g.bench_function(name, |b| b.iter(|| publisher.send(frame.clone())));
    }
    g.finish();
}

/// A socket that takes everything at once.
struct DiscardSink;

impl DirectSink for DiscardSink {
    fn encode(&self, frame: &Frame) -> Bytes {
        frame.payload().clone()
    }

    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(black_box(buf).len())
    }
}

fn handshake(c: &mut Criterion) {
    c.bench_function("handshake_client_server", |b| {
        b.iter(|| {
            let (mut client, c0c1) = Handshake::client().expect("client handshake");
            let mut server = Handshake::server();
            let mut s_out = BytesMut::new();
            let _ = server.process(&c0c1, &mut s_out);
            let mut c_out = BytesMut::new();
            let _ = client.process(&s_out, &mut c_out);
            let done = server.process(&c_out, &mut BytesMut::new());
            black_box(done.is_ok())
        })
    });
}

fn keyframe_detection(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = vec![
        vec![0x17, 1, 0, 0, 0, 0x65],          // AVC keyframe
        vec![0x27, 1, 0, 0, 0, 0x41],          // AVC inter frame
        vec![0x17, 0, 0, 0, 0, 1, 0x64],       // AVC sequence header
        vec![0x91, b'h', b'v', b'c', b'1', 0], // E-RTMP HEVC keyframe (CodedFrames)
        vec![0x90, b'a', b'v', b'0', b'1', 0], // E-RTMP AV1 sequence start
        vec![0xA3, b'h', b'v', b'c', b'1', 0], // E-RTMP inter, CodedFramesX
    ];
    let mut g = c.benchmark_group("inspect_video");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("mixed", |b| {
        b.iter(|| {
            let mut keys = 0;
            for p in &payloads {
                keys += usize::from(inspect_video(black_box(p)).keyframe);
            }
            keys
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = chunk_encode, chunk_decode, fanout, fanout_churn, resumed, handshake, keyframe_detection
}
criterion_main!(benches);
