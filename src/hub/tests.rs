//! Hub behaviour without sockets: publisher claims, waiting players, late joiners,
//! bounded queues and skipping.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::media::frame::{Frame, MediaKind};

fn video(ts: u32, key: bool, len: usize) -> Frame {
    let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    p.resize(len.max(5), 0xAB);
    Frame::new(MediaKind::Video, ts, Bytes::from(p))
}

fn video_header() -> Frame {
    Frame::new(MediaKind::Video, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2, 3]))
}

fn audio(ts: u32) -> Frame {
    Frame::new(MediaKind::Audio, ts, Bytes::from_static(&[0xAF, 1, 9, 9]))
}

fn small_hub(max_bytes: usize) -> Hub {
    Hub::new(HubConfig {
        queue: QueueLimits { max_bytes, max_duration: Duration::from_secs(10) },
        ..HubConfig::default()
    })
}

async fn next(sub: &mut Subscriber) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(1), sub.recv()).await.expect("frame within 1 s")
}

#[test]
fn one_publisher_per_session_id() {
    let hub = Hub::default();
    let first = hub.publish("live/a").unwrap();
    assert_eq!(hub.publish("live/a").unwrap_err(), HubError::AlreadyPublishing("live/a".into()));
    assert!(hub.publish("live/b").is_ok(), "other IDs are independent");
    drop(first);
    assert!(hub.publish("live/a").is_ok(), "free again once the first leaves");
}

#[test]
fn entries_are_removed_when_unused() {
    let hub = Hub::default();
    let p = hub.publish("live/a").unwrap();
    let s = hub.subscribe("live/a");
    drop(p);
    assert_eq!(hub.len(), 1, "subscriber still attached");
    drop(s);
    assert!(hub.is_empty());
    drop(hub.subscribe("live/never"));
    assert!(hub.is_empty(), "a waiting player that leaves leaves nothing behind");
}

#[tokio::test]
async fn player_before_publisher_waits_and_gets_everything() {
    let hub = Hub::default();
    let sub = hub.subscribe("live/a");
    let waiter = tokio::spawn(async move {
        let live = sub.wait_live(Duration::from_secs(5)).await;
        (live, sub)
    });
    tokio::task::yield_now().await;
    let p = hub.publish("live/a").unwrap();
    let (live, mut sub) = waiter.await.unwrap();
    assert!(live);
    p.send(video_header());
    p.send(video(0, true, 100));
    assert!(next(&mut sub).await.unwrap().is_sequence_header());
    assert!(next(&mut sub).await.unwrap().is_keyframe());
    drop(p);
    assert!(next(&mut sub).await.is_none(), "end of stream after the publisher leaves");
}

#[tokio::test]
async fn wait_live_times_out() {
    let hub = Hub::default();
    let sub = hub.subscribe("live/nobody");
    assert!(!sub.wait_live(Duration::from_millis(20)).await);
}

#[tokio::test]
async fn late_joiner_gets_metadata_headers_and_gop_at_once() {
    let hub = Hub::default();
    let p = hub.publish("live/a").unwrap();
    let meta = Frame::new(MediaKind::Data, 0, Bytes::from_static(b"\x02\x00\x0aonMetaData\x05"));
    p.send(meta);
    p.send(video_header());
    p.send(Frame::new(MediaKind::Audio, 0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10])));
    p.send(video(0, true, 50));
    p.send(audio(10));
    p.send(video(33, false, 50));
    p.send(video(66, true, 50)); // new GOP: the cache restarts here
    p.send(video(99, false, 50));

    let mut sub = hub.subscribe("live/a");
    assert!(sub.wait_live(Duration::from_secs(1)).await);
    let mut frames = Vec::new();
    sub.drain_into(&mut frames, usize::MAX);
    let kinds: Vec<(MediaKind, u32, bool, bool)> =
        frames.iter().map(|f| (f.kind(), f.timestamp(), f.is_keyframe(), f.is_sequence_header())).collect();
    assert_eq!(
        kinds,
        vec![
            (MediaKind::Data, 0, false, false),
            (MediaKind::Video, 0, false, true),
            (MediaKind::Audio, 0, false, true),
            (MediaKind::Video, 66, true, false),
            (MediaKind::Video, 99, false, false),
        ]
    );
}

#[tokio::test]
async fn lagging_subscriber_skips_to_next_keyframe_and_keeps_headers() {
    let hub = small_hub(1000);
    let p = hub.publish("live/a").unwrap();
    let mut slow = hub.subscribe("live/a");
    let mut fast = hub.subscribe("live/a");
    p.send(video_header());
    let mut fast_got = 0;
    // Keyframes every 10 frames; the last GOP (40..44) fits in the 1000-byte bound.
    for i in 0..44u32 {
        p.send(video(i * 33, i % 10 == 0, 200));
        // The fast subscriber keeps up and gets everything.
        let mut got = Vec::new();
        fast.drain_into(&mut got, usize::MAX);
        fast_got += got.iter().filter(|f| !f.is_sequence_header()).count();
    }
    assert_eq!(fast_got, 44);
    assert!(slow.queued_bytes() <= 1000, "bounded: {}", slow.queued_bytes());
    assert!(slow.skipped() > 0);
    let mut frames = Vec::new();
    slow.drain_into(&mut frames, usize::MAX);
    // What is left starts with the sequence header, then a keyframe.
    assert!(frames[0].is_sequence_header());
    let first_media = frames.iter().find(|f| !f.is_sequence_header()).unwrap();
    assert!(first_media.is_keyframe(), "resumes at a keyframe");
    assert_eq!(fast.skipped(), 0);
    drop(p);
    assert!(next(&mut slow).await.is_none());
}

#[test]
fn lag_by_media_duration_also_skips() {
    let hub = Hub::new(HubConfig {
        queue: QueueLimits { max_bytes: usize::MAX, max_duration: Duration::from_millis(500) },
        ..HubConfig::default()
    });
    let p = hub.publish("live/a").unwrap();
    let slow = hub.subscribe("live/a");
    for i in 0..60u32 {
        p.send(video(i * 33, i % 30 == 0, 10));
    }
    assert!(slow.skipped() > 0);
    assert_eq!(hub.stats("live/a").unwrap().skipped, slow.skipped());
}

#[test]
fn publisher_does_not_block_on_a_full_queue() {
    let hub = small_hub(10_000);
    let p = hub.publish("live/a").unwrap();
    let _stalled: Vec<Subscriber> = (0..100).map(|_| hub.subscribe("live/a")).collect();
    // 10 000 frames into 100 queues that nobody reads: returns, bounded.
    for i in 0..10_000u32 {
        p.send(video(i * 33, i % 60 == 0, 1000));
    }
    let stats = hub.stats("live/a").unwrap();
    assert!(stats.max_queued_bytes <= 10_000, "{stats:?}");
    assert_eq!(stats.subscribers, 100);
}

#[test]
fn publisher_count_is_capped() {
    let hub = Hub::new(HubConfig { max_publishers: 2, ..HubConfig::default() });
    let a = hub.publish("live/a").unwrap();
    let _b = hub.publish("live/b").unwrap();
    assert_eq!(hub.publish("live/c").unwrap_err(), HubError::TooManyPublishers(2));
    drop(a);
    assert!(hub.publish("live/c").is_ok());
}

/// An in-memory socket with room for a set number of bytes; each frame is its payload.
#[derive(Default)]
struct MemSink {
    room: Mutex<usize>,
    written: Mutex<Vec<u8>>,
}

impl MemSink {
    fn with_room(room: usize) -> Arc<Self> {
        Arc::new(Self { room: Mutex::new(room), ..Self::default() })
    }

    fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
    }
}

/// The tests keep an `Arc` to look at what was written; the hub gets its own box.
impl DirectSink for Arc<MemSink> {
    fn encode(&self, frame: &Frame) -> Bytes {
        frame.payload().clone()
    }

    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut room = self.room.lock().unwrap();
        let n = buf.len().min(*room);
        if n == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        *room -= n;
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Hands `sink` (a box of another handle to it) to the publisher.
fn hand(sub: &Subscriber, sink: &Arc<MemSink>) -> bool {
    sub.hand_to_publisher(Box::new(sink.clone())).is_ok()
}

/// Polls `ready()` once: whether the subscriber's task would wake to write.
fn wakes(sub: &Subscriber) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::pin!(sub.ready()).poll(&mut cx).is_ready()
}

/// Timestamps of everything queued for `sub`, taking it.
fn drain_timestamps(sub: &mut Subscriber) -> Vec<u32> {
    let mut frames = Vec::new();
    sub.drain_into(&mut frames, usize::MAX);
    frames.iter().map(Frame::timestamp).collect()
}

fn live_subscriber(hub: &Hub) -> (Publisher, Subscriber) {
    let p = hub.publish("live/a").unwrap();
    let sub = hub.subscribe("live/a");
    (p, sub)
}

#[test]
fn an_idle_subscriber_is_written_directly_without_waking() {
    let hub = Hub::default();
    let (p, sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&sub, &sink));
    let frames = [video(0, true, 10), video(33, false, 20), audio(40)];
    for f in &frames {
        p.send(f.clone());
    }
    let expected: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
    assert_eq!(sink.written(), expected, "every frame, in order, straight to the socket");
    assert_eq!(hub.stats("live/a").unwrap().direct_writes, 3);
    assert_eq!(sub.queued_bytes(), 0);
    assert!(!wakes(&sub), "the subscriber's task was not needed");
    assert_eq!(sub.take_writer().unwritten, None);
}

#[test]
fn a_partial_direct_write_leaves_the_rest_first_and_hands_back() {
    let hub = Hub::default();
    let (p, mut sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(7);
    assert!(hand(&sub, &sink));
    let first = video(0, true, 10);
    p.send(first.clone());
    p.send(video(33, false, 12));
    assert_eq!(sink.written(), first.payload()[..7].to_vec());
    assert!(wakes(&sub), "the task takes over");
    assert_eq!(sub.take_writer().unwritten.as_deref(), Some(&first.payload()[7..]), "the rest goes first");
    assert_eq!(drain_timestamps(&mut sub), vec![33], "then the queue");
    assert_eq!(sink.written().len(), 7, "nothing more went direct");
}

#[test]
fn a_full_socket_queues_the_frame_for_the_task() {
    let hub = Hub::default();
    let (p, mut sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(0);
    assert!(hand(&sub, &sink));
    p.send(video(0, true, 10));
    p.send(video(33, false, 10));
    assert!(sink.written().is_empty());
    assert!(wakes(&sub));
    assert_eq!(sub.take_writer().unwritten, None);
    assert_eq!(drain_timestamps(&mut sub), vec![0, 33]);
}

#[test]
fn writing_is_not_handed_over_while_frames_wait_or_a_skip_is_on() {
    let hub = small_hub(1000);
    let (p, mut sub) = live_subscriber(&hub);
    p.send(video(0, true, 10));
    assert!(!hand(&sub, &MemSink::with_room(usize::MAX)), "a frame is queued");
    drain_timestamps(&mut sub);
    // Overflow the queue: the subscriber skips until the next keyframe.
    for i in 1..20u32 {
        p.send(video(i * 33, false, 200));
    }
    drain_timestamps(&mut sub);
    assert!(sub.skipped() > 0);
    let sink = MemSink::with_room(usize::MAX);
    assert!(!hand(&sub, &sink), "skipping: the next frame written must be a keyframe");
    p.send(video(700, false, 10));
    assert!(sink.written().is_empty());
    p.send(video(733, true, 10));
    assert_eq!(drain_timestamps(&mut sub), vec![733]);
    assert!(hand(&sub, &sink), "caught up again");
    p.send(video(766, false, 10));
    assert_eq!(sink.written().len(), 10);
}

#[tokio::test]
async fn the_end_of_a_directly_written_stream_wakes_the_subscriber() {
    let hub = Hub::default();
    let (p, mut sub) = live_subscriber(&hub);
    assert!(hand(&sub, &MemSink::with_room(usize::MAX)));
    p.send(video(0, true, 10));
    drop(p);
    assert!(!sub.ready().await, "ended, nothing left");
    assert!(next(&mut sub).await.is_none());
}
