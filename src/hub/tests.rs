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
    let mut p = hub.publish("live/a").unwrap();
    let (live, mut sub) = waiter.await.unwrap();
    assert!(live);
    p.send(video_header());
    p.send(video(0, true, 100));
    assert!(next(&mut sub).await.unwrap().is_sequence_header());
    assert!(next(&mut sub).await.unwrap().is_keyframe());
    p.finish();
    assert!(next(&mut sub).await.is_none(), "end of stream after the publisher unpublishes");
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
    let mut p = hub.publish("live/a").unwrap();
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
            // Metadata at the joiner's start, the cached keyframe's time.
            (MediaKind::Data, 66, false, false),
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
    let mut p = hub.publish("live/a").unwrap();
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
    p.finish();
    assert!(next(&mut slow).await.is_none());
}

#[test]
fn lag_by_media_duration_also_skips() {
    let hub = Hub::new(HubConfig {
        queue: QueueLimits { max_bytes: usize::MAX, max_duration: Duration::from_millis(500) },
        ..HubConfig::default()
    });
    let mut p = hub.publish("live/a").unwrap();
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
    let mut p = hub.publish("live/a").unwrap();
    let _stalled: Vec<Subscriber> = (0..100).map(|_| hub.subscribe("live/a")).collect();
    // 10 000 frames into 100 queues that nobody reads: returns, bounded.
    for i in 0..10_000u32 {
        p.send(video(i * 33, i % 60 == 0, 1000));
    }
    let stats = hub.stats("live/a").unwrap();
    assert!(stats.max_queued_bytes <= 10_000, "{stats:?}");
    assert!((5_000..=10_000).contains(&stats.peak_queued_bytes), "{stats:?}");
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

    fn try_write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let mut total = 0;
        for b in bufs {
            match self.try_write(b) {
                Ok(n) => total += n,
                Err(_) => break,
            }
            if *self.room.lock().unwrap() == 0 {
                break;
            }
        }
        if total == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
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
    let (mut p, sub) = live_subscriber(&hub);
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
    let (mut p, mut sub) = live_subscriber(&hub);
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
    let (mut p, mut sub) = live_subscriber(&hub);
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
    let (mut p, mut sub) = live_subscriber(&hub);
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
    let (mut p, mut sub) = live_subscriber(&hub);
    assert!(hand(&sub, &MemSink::with_room(usize::MAX)));
    p.send(video(0, true, 10));
    p.finish();
    assert!(!sub.ready().await, "ended, nothing left");
    assert!(next(&mut sub).await.is_none());
}

/// A socket whose writes block until the test releases them: a push caught in the middle
/// of a `send`, for as long as the test wants (bounded: 5 s).
struct StuckSink {
    entered: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl DirectSink for StuckSink {
    fn encode(&self, frame: &Frame) -> Bytes {
        frame.payload().clone()
    }

    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv_timeout(Duration::from_secs(5));
        Ok(buf.len())
    }
}

/// A subscriber whose direct writes get stuck, the signal that one is in progress, and
/// the switch that lets it finish.
fn stuck_subscriber(
    hub: &Hub,
    session_id: &str,
) -> (Subscriber, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let sub = hub.subscribe(session_id);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let sink = StuckSink { entered: Mutex::new(entered_tx), release: Mutex::new(release_rx) };
    assert!(sub.hand_to_publisher(Box::new(sink)).is_ok());
    (sub, entered_rx, release_tx)
}

/// Runs `f` on another thread and waits at most 5 s for it: `None` when it did not
/// finish (it is then left blocked, and let go once the test releases what it waits on).
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

#[test]
fn joining_leaving_and_stats_do_not_wait_for_a_push_in_progress() {
    let hub = Hub::default();
    let p = hub.publish("live/a").unwrap();
    let (stuck, entered, release) = stuck_subscriber(&hub, "live/a");
    let pusher = std::thread::spawn(move || {
        let mut p = p;
        p.send(video(0, true, 10));
        p
    });
    entered.recv_timeout(Duration::from_secs(5)).expect("the push is inside its write");

    // Same stream, another stream, the hub's own lookups: none of them may wait for the
    // write (before: the push held the stream lock, and subscribe took it under the hub
    // lock, so even `live/b` waited).
    let h = hub.clone();
    let done = within_5s(move || {
        let joiner = h.subscribe("live/a");
        let stats = h.stats("live/a");
        drop(joiner);
        let elsewhere = h.subscribe("live/b");
        let live = h.live_streams();
        drop(elsewhere);
        (stats, live, h.len())
    });
    release.send(()).unwrap();
    let p = pusher.join().unwrap();
    let (stats, live, entries) = done.expect("join, stats and leave while a push is writing");
    let stats = stats.unwrap();
    assert_eq!((stats.live, stats.subscribers, stats.frames), (true, 2, 1));
    assert_eq!(live, vec!["live/a".to_owned()]);
    assert_eq!(entries, 1, "live/b came and went");
    assert_eq!(hub.stats("live/a").unwrap().direct_writes, 1);
    drop((p, stuck));
    assert!(hub.is_empty());
}

#[test]
fn a_subscriber_that_leaves_during_a_push_is_not_written_after_it_left() {
    let hub = Hub::default();
    let p = hub.publish("live/a").unwrap();
    // First in the list: the push gets stuck on it before it reaches the second.
    let (stuck, entered, release) = stuck_subscriber(&hub, "live/a");
    let leaving = hub.subscribe("live/a");
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&leaving, &sink));
    let pusher = std::thread::spawn(move || {
        let mut p = p;
        p.send(video(0, true, 10));
        p
    });
    entered.recv_timeout(Duration::from_secs(5)).expect("the push is inside its write");
    // The push's snapshot still holds the leaving subscriber's queue.
    let left = within_5s(move || drop(leaving));
    release.send(()).unwrap();
    let p = pusher.join().unwrap();
    assert!(left.is_some(), "leaving did not wait for the push");
    assert!(sink.written().is_empty(), "nothing written to a subscriber that left");
    assert_eq!(Arc::strong_count(&sink), 1, "its sink was dropped with it");
    drop((p, stuck));
}

#[test]
fn the_sink_moves_back_and_the_publisher_no_longer_writes() {
    let hub = Hub::default();
    let (mut p, sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&sub, &sink));
    assert!(
        sub.hand_to_publisher(Box::new(sink.clone())).is_err(),
        "a second sink is refused (and returned) while the publisher holds one"
    );
    p.send(video(0, true, 10));
    assert_eq!(sink.written().len(), 10);
    let back = sub.take_writer();
    assert!(back.sink.is_some(), "the sink comes back to the task");
    assert_eq!(back.unwritten, None);
    assert!(sub.take_writer().sink.is_none(), "and only once");
    p.send(video(33, false, 10));
    assert_eq!(sink.written().len(), 10, "the publisher has no sink to write with");
    assert!(wakes(&sub), "the frame waits for the task instead");
    assert_eq!(Arc::strong_count(&sink), 2, "the one box the task holds, and ours");
    drop(back);
    assert_eq!(Arc::strong_count(&sink), 1);
}

/// An in-memory socket that takes a varying share of each write (none, 3 bytes, up to
/// 1000, everything), so direct writes go part way, block and succeed in turn.
struct ChoppySink {
    socket: Arc<MemSink>,
    writes: usize,
}

impl DirectSink for ChoppySink {
    fn encode(&self, frame: &Frame) -> Bytes {
        frame.payload().clone()
    }

    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        let n = match self.writes % 4 {
            0 => return Err(std::io::ErrorKind::WouldBlock.into()),
            1 => buf.len().min(3),
            2 => buf.len().min(1000),
            _ => buf.len(),
        };
        self.socket.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A video frame whose every byte after the header says which frame it is.
fn numbered(i: u32, len: usize) -> Frame {
    let mut p = vec![if i.is_multiple_of(60) { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    p.extend(i.to_be_bytes().iter().cycle().take(len));
    Frame::new(MediaKind::Video, i * 33, Bytes::from(p))
}

#[test]
fn publisher_and_task_take_turns_without_interleaving_bytes() {
    let hub = Hub::new(HubConfig {
        queue: QueueLimits { max_bytes: usize::MAX, max_duration: Duration::from_secs(1 << 30) },
        ..HubConfig::default()
    });
    let (mut p, mut sub) = live_subscriber(&hub);
    let socket = Arc::new(MemSink::default());
    let frames: Vec<Frame> = (0..3000).map(|i| numbered(i, 1 + (i as usize * 37) % 2500)).collect();
    let expected: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();

    // The subscriber's task: whenever woken, take the writer role back, write what the
    // publisher left half-written, then the queue (a blocking write), and hand over again.
    // It says when it handed over, so the publisher can take turns with it.
    let (handed_tx, handed) = std::sync::mpsc::channel();
    let task_socket = socket.clone();
    let task = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async move {
            let mut sink: Option<Box<dyn DirectSink>> =
                Some(Box::new(ChoppySink { socket: task_socket.clone(), writes: 0 }));
            let mut task_writes = 0;
            loop {
                if let Some(s) = sink.take() {
                    sink = sub.hand_to_publisher(s).err();
                    if sink.is_none() {
                        let _ = handed_tx.send(());
                    }
                }
                let ready = tokio::time::timeout(Duration::from_secs(5), sub.ready()).await;
                if !ready.expect("woken within 5 s") {
                    return (task_writes, sub);
                }
                let back = sub.take_writer();
                sink = sink.or(back.sink);
                let mut out = Vec::new();
                sub.drain_into(&mut out, usize::MAX);
                let mut written = task_socket.written.lock().unwrap();
                written.extend(back.unwritten.iter().flat_map(|b| b.to_vec()));
                written.extend(out.iter().flat_map(|f| f.payload().to_vec()));
                task_writes += 1;
            }
        })
    });
    handed.recv_timeout(Duration::from_secs(5)).expect("first hand-over");
    for f in &frames {
        let before = hub.stats("live/a").unwrap().direct_writes;
        p.send(f.clone());
        if hub.stats("live/a").unwrap().direct_writes == before {
            // Handed back to the task: wait for the next hand-over, so both keep writing.
            handed.recv_timeout(Duration::from_secs(5)).expect("the task hands over again");
        }
    }
    let direct = hub.stats("live/a").unwrap().direct_writes;
    drop(p);
    let (task_writes, sub) = task.join().unwrap();
    let written = socket.written();
    assert_eq!(written.len(), expected.len());
    assert!(written == expected, "every byte once, in order: no interleaving of the writers");
    assert!(direct > 0 && task_writes > 0, "both wrote: {direct} direct, {task_writes} by the task");
    assert_eq!(sub.skipped(), 0);
}

#[tokio::test]
async fn joins_racing_leaves_never_orphan_a_player() {
    let hub = Hub::default();
    // Threads join and leave the same not-yet-live stream as fast as they can, while a
    // player joins in the middle of it: the entry it joins must be the one the
    // publisher later finds (a leave that removed it meanwhile would orphan the player).
    let churn: Vec<_> = (0..2)
        .map(|_| {
            let h = hub.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    drop(h.subscribe("live/a"));
                }
            })
        })
        .collect();
    let players: Vec<Subscriber> = (0..50).map(|_| hub.subscribe("live/a")).collect();
    for t in churn {
        t.join().unwrap();
    }
    let p = hub.publish("live/a").unwrap();
    for sub in &players {
        assert!(sub.wait_live(Duration::from_secs(1)).await, "every player sees the publisher");
    }
    assert_eq!(hub.stats("live/a").unwrap().subscribers, 50);
    p.finish();
    drop(players);
    assert!(hub.is_empty(), "and the entry goes with the last of them");
}

/// An E-RTMP OneTrack multitrack video message (hvc1) for `track`.
fn track_video(ts: u32, track: u8, frame_type: u8, packet_type: u8) -> Frame {
    let mut p = vec![0x80 | frame_type << 4 | 6, packet_type];
    p.extend_from_slice(b"hvc1");
    p.extend_from_slice(&[track, 0xAB, ts as u8]);
    Frame::new(MediaKind::Video, ts, Bytes::from(p))
}

#[tokio::test]
async fn late_joiner_of_a_multitrack_stream_gets_every_track_header_and_the_default_tracks_gop() {
    let hub = Hub::default();
    let mut p = hub.publish("live/mt").unwrap();
    let (start, coded) = (0, 1);
    p.send(track_video(0, 0, 1, start));
    p.send(track_video(0, 1, 1, start));
    p.send(track_video(0, 1, 1, start)); // track 1 reconfigured: replaces its own only
    p.send(track_video(0, 0, 1, coded));
    p.send(track_video(10, 1, 2, coded));
    p.send(track_video(33, 1, 1, coded)); // track 1's keyframe: the GOP must not restart
    p.send(track_video(40, 0, 2, coded));

    let mut sub = hub.subscribe("live/mt");
    assert!(sub.wait_live(Duration::from_secs(1)).await);
    let mut frames = Vec::new();
    sub.drain_into(&mut frames, usize::MAX);
    let got: Vec<(u32, u8, bool)> =
        frames.iter().map(|f| (f.timestamp(), f.payload()[6], f.is_sequence_header())).collect();
    assert_eq!(
        got,
        vec![(0, 0, true), (0, 1, true), (0, 0, false), (10, 1, false), (33, 1, false), (40, 0, false)]
    );
}

// ---------------------------------------------------------------------------------------
// Publishers that go away, come back, or are replaced
// ---------------------------------------------------------------------------------------

fn metadata() -> Frame {
    Frame::new(MediaKind::Data, 0, Bytes::from_static(b"\x02\x00\x0aonMetaData\x05"))
}

fn audio_header() -> Frame {
    Frame::new(MediaKind::Audio, 0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10]))
}

/// A second encoder's video configuration (different bytes from [`video_header`]).
fn other_video_header() -> Frame {
    Frame::new(MediaKind::Video, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0x1f]))
}

fn hub_with(grace_ms: u64, takeover_ms: u64) -> Hub {
    Hub::new(HubConfig {
        publisher_grace: Duration::from_millis(grace_ms),
        publisher_takeover: Duration::from_millis(takeover_ms),
        ..HubConfig::default()
    })
}

/// What is queued for `sub`, taken: (kind, timestamp, keyframe, sequence header).
fn drain(sub: &mut Subscriber) -> Vec<(MediaKind, u32, bool, bool)> {
    let mut frames = Vec::new();
    sub.drain_into(&mut frames, usize::MAX);
    frames
        .iter()
        .map(|f| {
            (f.kind(), f.timestamp(), f.kind() == MediaKind::Video && f.is_keyframe(), f.is_sequence_header())
        })
        .collect()
}

/// Whether `sub` is told the stream ended within a short wait (its queue empty).
async fn ends_soon(sub: &Subscriber) -> bool {
    matches!(tokio::time::timeout(Duration::from_millis(100), sub.ready()).await, Ok(false))
}

/// A first publisher's stream up to 33 ms, taken by `sub`.
fn first_stream(p: &mut Publisher, sub: &mut Subscriber) {
    p.send(video_header());
    p.send(video(0, true, 10));
    p.send(audio(10));
    p.send(video(33, false, 10));
    assert_eq!(drain(sub).len(), 4);
}

/// A second encoder's start: configuration, a picture it cannot decode without what came
/// before, audio ahead of its keyframe, the keyframe at its own 0 ms, the next picture.
fn second_stream(p: &mut Publisher) {
    p.send(metadata());
    p.send(other_video_header());
    p.send(audio_header());
    p.send(video(0, false, 10));
    p.send(audio(0));
    p.send(video(0, true, 20));
    p.send(video(33, false, 10));
}

use MediaKind::{Audio as A, Data as D, Video as V};

#[tokio::test]
async fn a_lost_publisher_leaves_its_players_waiting_and_a_new_one_resumes_the_stream() {
    let hub = Hub::default();
    let mut p = hub.publish("live/a").unwrap();
    let mut sub = hub.subscribe("live/a");
    first_stream(&mut p, &mut sub);

    drop(p); // the connection was lost: no unpublish
    let stats = hub.stats("live/a").unwrap();
    assert!(stats.grace && !stats.live, "{stats:?}");
    assert!(!ends_soon(&sub).await, "the player is kept");
    assert!(drain(&mut sub).is_empty(), "and gets nothing meanwhile");
    let mut joined_in_grace = hub.subscribe("live/a");

    let mut p2 = hub.publish("live/a").expect("a new publisher resumes the stream in its grace");
    second_stream(&mut p2);
    let resumed = 33 + timeline::RESUME_STEP_MS;
    let want = vec![
        (D, resumed, false, false),
        (V, resumed, false, true),
        (A, resumed, false, true),
        (V, resumed, true, false),
        (V, resumed + 33, false, false),
    ];
    assert_eq!(drain(&mut sub), want, "new configuration, then the keyframe, a step after the last frame");
    assert!(joined_in_grace.wait_live(Duration::from_secs(1)).await);
    assert_eq!(drain(&mut joined_in_grace), want, "a player that arrived in the grace gets the same");
    // A late joiner's cache is the new publisher's, consistent with what players got.
    let mut late = hub.subscribe("live/a");
    assert_eq!(drain(&mut late), want);

    let stats = hub.stats("live/a").unwrap();
    assert!(stats.live && !stats.grace && stats.resumes == 1, "{stats:?}");
    assert_eq!(
        hub.publisher_events(),
        PublisherEvents { graces: 1, resumed: 1, ..PublisherEvents::default() }
    );
    p2.finish();
    assert!(ends_soon(&sub).await && ends_soon(&late).await, "an unpublish ends the stream at once");
}

#[tokio::test]
async fn a_grace_that_runs_out_ends_the_players_and_frees_the_stream() {
    let hub = Hub::new(HubConfig {
        max_publishers: 1,
        publisher_grace: Duration::from_millis(50),
        ..HubConfig::default()
    });
    let mut p = hub.publish("live/a").unwrap();
    let mut sub = hub.subscribe("live/a");
    first_stream(&mut p, &mut sub);
    drop(p);
    assert_eq!(
        hub.publish("live/b").unwrap_err(),
        HubError::TooManyPublishers(1),
        "the grace keeps its slot"
    );
    let waiting = hub.subscribe("live/a");

    assert!(next(&mut sub).await.is_none(), "the end of stream once the grace ran out");
    assert_eq!(
        hub.publisher_events(),
        PublisherEvents { graces: 1, expired: 1, ..PublisherEvents::default() }
    );
    assert!(!hub.stats("live/a").unwrap().grace);
    // The player that arrived in the grace was waiting for a publisher, and still is.
    assert!(!ends_soon(&waiting).await);
    let mut p = hub.publish("live/a").expect("the slot is free again");
    assert!(waiting.wait_live(Duration::from_secs(1)).await);
    // A fresh stream: the publisher's own timestamps.
    p.send(video(0, true, 10));
    p.finish();
    drop((sub, waiting));
    assert!(hub.is_empty());
}

#[tokio::test]
async fn without_players_or_with_no_grace_a_lost_publisher_ends_its_stream_at_once() {
    let hub = Hub::default();
    let mut p = hub.publish("live/a").unwrap();
    p.send(video(5000, true, 10));
    drop(p);
    assert!(hub.is_empty(), "nobody to keep: no grace");
    let mut p = hub.publish("live/a").unwrap();
    let mut sub = hub.subscribe("live/a");
    p.send(video(7, true, 10));
    assert_eq!(drain(&mut sub), vec![(V, 7, true, false)], "a fresh publish keeps its timestamps");
    p.finish();

    let hub = hub_with(0, 0);
    let p = hub.publish("live/a").unwrap();
    let sub = hub.subscribe("live/a");
    drop(p);
    assert!(ends_soon(&sub).await, "publisher_grace_ms = 0: ended with the publisher");
    assert_eq!(hub.publisher_events(), PublisherEvents::default());
}

#[tokio::test]
async fn a_silent_publisher_is_replaced_and_can_no_longer_send_or_end_the_stream() {
    let hub = hub_with(5000, 50);
    let mut p1 = hub.publish("live/a").unwrap();
    let mut sub = hub.subscribe("live/a");
    first_stream(&mut p1, &mut sub);
    assert_eq!(hub.publish("live/a").unwrap_err(), HubError::AlreadyPublishing("live/a".into()), "active");

    tokio::time::sleep(Duration::from_millis(60)).await; // silence is time passing
    assert!(hub.publish_with("live/a", Takeover::Never, 0).is_err(), "Never is never");
    let mut p2 = hub.publish("live/a").expect("silent past the threshold: replaced");
    tokio::time::timeout(Duration::from_secs(1), p1.replaced()).await.expect("the old publisher learns it");
    p1.send(video(66, true, 10));
    assert!(drain(&mut sub).is_empty(), "the replaced publisher's frames are ignored");
    drop(p1);
    assert!(hub.stats("live/a").unwrap().live, "and its going does not end the stream");

    second_stream(&mut p2);
    let got = drain(&mut sub);
    assert_eq!(got[3], (V, 33 + timeline::RESUME_STEP_MS, true, false), "{got:?}");
    assert_eq!(hub.publisher_events().taken_over, 1);

    // Takeover::Now (the session layer knows it is the owner) replaces even an active one.
    let p3 = hub.publish_with("live/a", Takeover::Now, 0).expect("replaced at once");
    assert!(tokio::time::timeout(Duration::from_secs(1), p2.replaced()).await.is_ok());
    drop((p2, p3));
}

#[tokio::test]
async fn shutdown_ends_graces_and_starts_no_more() {
    let hub = Hub::default();
    let p = hub.publish("live/a").unwrap();
    let sub = hub.subscribe("live/a");
    drop(p);
    assert!(!ends_soon(&sub).await);
    hub.close();
    assert!(ends_soon(&sub).await, "no publisher comes back to a relay shutting down");
    let p = hub.publish("live/b").unwrap();
    let sub = hub.subscribe("live/b");
    drop(p);
    assert!(ends_soon(&sub).await);
    assert_eq!(hub.publisher_events().graces, 1);
}

/// Records what it is told and subscribes at once, as push forwarding does.
#[derive(Debug, Default)]
struct Recorder {
    told: Mutex<Vec<LiveStream>>,
    subs: Mutex<Vec<Subscriber>>,
}

impl LiveWatcher for Recorder {
    fn went_live(&self, hub: &Hub, stream: &LiveStream) {
        self.told.lock().unwrap().push(stream.clone());
        self.subs.lock().unwrap().push(hub.subscribe(&stream.session_id));
    }
}

#[tokio::test]
async fn the_watcher_hears_of_each_publish_once_in_time_to_get_its_first_frame() {
    let recorder = Arc::new(Recorder::default());
    let hub = Hub::with_watcher(HubConfig::default(), recorder.clone());
    let mut p = hub.publish_relayed("live/a", 2).unwrap();
    assert!(hub.publish("live/a").is_err());
    assert!(recorder.told.lock().unwrap().is_empty(), "told only once something is published");
    p.send(video_header());
    p.send(video(0, true, 10));
    let told = recorder.told.lock().unwrap().clone();
    assert_eq!(
        told,
        vec![LiveStream { session_id: "live/a".into(), hops: 2 }],
        "a refused publish is not news"
    );
    let mut sub = recorder.subs.lock().unwrap().pop().unwrap();
    assert!(next(&mut sub).await.unwrap().is_sequence_header(), "the subscription has the first frame");
    assert!(next(&mut sub).await.unwrap().is_keyframe());
    p.finish();
    assert!(next(&mut sub).await.is_none());
    let mut q = hub.publish("live/a").unwrap();
    q.send(audio(0));
    assert_eq!(recorder.told.lock().unwrap().len(), 2);
    assert_eq!(recorder.told.lock().unwrap().last().map(|l| l.hops), Some(0), "an encoder's publish: 0 hops");
}

#[tokio::test]
async fn rejoin_drops_the_backlog_and_restarts_from_the_cache_of_the_same_publish() {
    let hub = Hub::default();
    let mut p = hub.publish("live/a").unwrap();
    let mut sub = hub.subscribe("live/a");
    p.send(video_header());
    p.send(video(0, true, 10));
    p.send(video(33, false, 10));
    p.send(video(66, true, 10));
    p.send(video(99, false, 10));
    assert!(sub.rejoin());
    let mut frames = Vec::new();
    sub.drain_into(&mut frames, usize::MAX);
    let got: Vec<(u32, bool, bool)> =
        frames.iter().map(|f| (f.timestamp(), f.is_keyframe(), f.is_sequence_header())).collect();
    assert_eq!(got, vec![(0, false, true), (66, true, false), (99, false, false)]);
    p.send(video(133, false, 10));
    assert_eq!(next(&mut sub).await.map(|f| f.timestamp()), Some(133), "follows the publish once, not twice");
    assert_eq!(hub.stats("live/a").unwrap().subscribers, 1, "still one subscriber");
    p.finish();
    assert!(!sub.rejoin(), "the publish it followed is over");
    let _p2 = hub.publish("live/a").unwrap();
    assert!(!sub.rejoin(), "a new publish is not the one it followed");
    drop(sub);
    drop(_p2);
    assert!(hub.is_empty());
}

#[tokio::test]
async fn a_resumed_publish_is_not_announced_again_and_a_rejoin_in_its_grace_gets_the_resume() {
    let recorder = Arc::new(Recorder::default());
    let hub = Hub::with_watcher(HubConfig::default(), recorder.clone());
    let mut p = hub.publish("live/a").unwrap();
    p.send(video_header());
    p.send(video(0, true, 10));
    let mut forward = recorder.subs.lock().unwrap().pop().unwrap();
    assert_eq!(drain(&mut forward).len(), 2);
    drop(p); // lost: the forward's subscription keeps the stream in its grace
    assert!(forward.rejoin(), "in a grace the stream is not over");
    let mut p2 = hub.publish("live/a").unwrap();
    p2.send(other_video_header());
    p2.send(video(0, true, 10));
    assert_eq!(recorder.told.lock().unwrap().len(), 1, "the stream went on: no second announcement");
    let resumed = timeline::RESUME_STEP_MS;
    assert_eq!(drain(&mut forward), vec![(V, resumed, false, true), (V, resumed, true, false)]);
    p2.finish();
}

#[test]
fn snapshots_show_peers_bytes_and_codecs_and_end_tokens_reach_the_sessions() {
    use tokio_util::sync::CancellationToken;
    let hub = Hub::default();
    let (pub_end, play_end) = (CancellationToken::new(), CancellationToken::new());
    let addr = Some("127.0.0.1:5000".parse().unwrap());
    let publisher_peer = Peer::new(hub.next_peer_id(), "tcp", addr, pub_end.clone());
    let player_peer = Peer::new(hub.next_peer_id(), "roqr", addr, play_end.clone());
    let player_id = player_peer.id;
    let mut sub = hub.subscribe("live/a");
    sub.identify(player_peer);
    let mut p = hub.publish("live/a").unwrap();
    p.identify(publisher_peer);
    let aac = Frame::new(MediaKind::Audio, 0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10]));
    let avc = Frame::new(MediaKind::Video, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x4d, 0, 0x1e]));
    for f in [avc, aac, video(0, true, 100), video(33, false, 50)] {
        p.send(f);
    }
    let mut got = Vec::new();
    sub.drain_into(&mut got, usize::MAX);
    let info = hub.stream_info("live/a").unwrap();
    let publisher = info.publisher.as_ref().unwrap();
    assert_eq!(publisher.peer.as_ref().unwrap().transport, "tcp");
    assert_eq!(publisher.video_codec.as_deref(), Some("avc1.4d001e"));
    assert_eq!(publisher.audio_codec.as_deref(), Some("mp4a.40.2"));
    assert_eq!(info.bytes_in, 9 + 4 + 100 + 50);
    assert_eq!(info.players.len(), 1);
    assert_eq!((info.players[0].bytes_sent, info.players[0].live), (info.bytes_in, true));
    assert_eq!(info.bytes_out, info.bytes_in);
    assert_eq!(info.gop_bytes, 150);
    assert_eq!(hub.snapshot().len(), 1);

    assert!(!hub.end_player(Some("live/b"), player_id), "another stream's player");
    assert!(hub.end_player(None, player_id) && play_end.is_cancelled());
    assert!(hub.end_publisher("live/a") && pub_end.is_cancelled());
    // A player that leaves keeps its bytes in the stream's total.
    drop(sub);
    assert_eq!(hub.stream_info("live/a").unwrap().bytes_out, 9 + 4 + 100 + 50);
    p.finish();
    assert!(!hub.end_publisher("live/a"));
}

fn coalescing_hub(window_ms: u64) -> Hub {
    Hub::new(HubConfig { write_coalesce: Duration::from_millis(window_ms), ..HubConfig::default() })
}

fn payloads(frames: &[&Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.payload().to_vec()).collect()
}

/// Time is paused: the flush timer fires exactly when due, and `sleep` moves the clock.
#[tokio::test(start_paused = true)]
async fn a_busy_stream_is_written_in_batches_within_the_window() {
    let hub = coalescing_hub(40);
    let (mut p, sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&sub, &sink));
    let (a0, a1, a2) = (audio(0), audio(10), audio(20));

    p.send(a0.clone());
    assert_eq!(sink.written(), payloads(&[&a0]), "an idle player's first frame goes at once");
    p.send(a1.clone());
    p.send(a2.clone());
    assert_eq!(sink.written(), payloads(&[&a0]), "frames right after a write are held");
    let stats = hub.stats("live/a").unwrap();
    assert_eq!((stats.direct_writes, stats.direct_sends), (1, 1));

    tokio::time::sleep(Duration::from_millis(39)).await;
    assert_eq!(sink.written(), payloads(&[&a0]), "held until the window after the last write");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(sink.written(), payloads(&[&a0, &a1, &a2]), "then written, in order");
    let stats = hub.stats("live/a").unwrap();
    assert_eq!((stats.direct_writes, stats.direct_sends), (3, 2), "the two held frames in one write");

    // Within the window of that write, but a batch of a video frame's size: at once, with
    // the audio held before it.
    let (a3, v) = (audio(45), video(50, false, 5000));
    p.send(a3.clone());
    p.send(v.clone());
    assert_eq!(sink.written(), payloads(&[&a0, &a1, &a2, &a3, &v]));
    let stats = hub.stats("live/a").unwrap();
    assert_eq!((stats.direct_writes, stats.direct_sends), (5, 3));
    assert!(!wakes(&sub), "the player's task was never needed");
}

#[tokio::test(start_paused = true)]
async fn zero_window_writes_every_frame_at_once() {
    let hub = coalescing_hub(0);
    let (mut p, sub) = live_subscriber(&hub);
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&sub, &sink));
    let frames: Vec<Frame> = (0..10).map(|i| audio(i * 5)).collect();
    for f in &frames {
        p.send(f.clone());
    }
    assert_eq!(sink.written(), payloads(&frames.iter().collect::<Vec<_>>()));
    let stats = hub.stats("live/a").unwrap();
    assert_eq!((stats.direct_writes, stats.direct_sends), (10, 10));
}

#[tokio::test(start_paused = true)]
async fn a_batch_the_socket_takes_in_part_goes_on_in_order_through_the_task() {
    let hub = coalescing_hub(40);
    let (mut p, mut sub) = live_subscriber(&hub);
    let mut big = vec![0xAF, 1];
    big.resize(1000, 7);
    let (a0, a1, a2) = (audio(0), Frame::new(MediaKind::Audio, 10, Bytes::from(big)), audio(20));
    // Room for the first frame and half of the second.
    let sink = MemSink::with_room(a0.payload().len() + 500);
    assert!(hand(&sub, &sink));
    p.send(a0.clone());
    p.send(a1.clone());
    p.send(a2.clone());
    assert!(!wakes(&sub), "held: nothing for the task yet");
    tokio::time::sleep(Duration::from_millis(41)).await;
    assert!(wakes(&sub), "the socket filled: the task takes over");
    let back = sub.take_writer();
    assert!(back.sink.is_some());
    let mut rest = sink.written();
    rest.extend(back.unwritten.expect("the rest of the frame begun").to_vec());
    let mut queued = Vec::new();
    sub.drain_into(&mut queued, usize::MAX);
    rest.extend(queued.iter().flat_map(|f| f.payload().to_vec()));
    assert_eq!(rest, payloads(&[&a0, &a1, &a2]), "every byte once, in order");
}

#[tokio::test(start_paused = true)]
async fn held_frames_go_out_before_the_stream_ends() {
    let hub = coalescing_hub(40);
    let (mut p, mut sub) = live_subscriber(&hub);
    let (a0, a1) = (audio(0), audio(10));
    p.send(a0.clone());
    p.send(a1.clone());
    p.finish();
    let got: Vec<u32> = std::iter::from_fn(|| {
        let mut out = Vec::new();
        sub.drain_into(&mut out, usize::MAX);
        (!out.is_empty()).then_some(out)
    })
    .flatten()
    .map(|f| f.timestamp())
    .collect();
    assert_eq!(got, [0, 10], "the held frame was not lost with the publish");
    assert!(!sub.ready().await, "then the end");
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_during_a_hold_gets_each_frame_once() {
    let hub = coalescing_hub(40);
    let mut p = hub.publish("live/a").unwrap();
    let early = hub.subscribe("live/a");
    let sink = MemSink::with_room(usize::MAX);
    assert!(hand(&early, &sink));
    let (h, k, a1) = (video_header(), video(0, true, 100), audio(10));
    p.send(h.clone());
    p.send(k.clone());
    p.send(a1.clone());
    // Joins while `k` and `a1` are held: the cache has the header, the held batch
    // brings the rest (the cache is updated as a batch is written, not before).
    let mut late = hub.subscribe("live/a");
    tokio::time::sleep(Duration::from_millis(41)).await;
    assert_eq!(drain_timestamps(&mut late), [0, 0, 10], "header, keyframe, then the held frame, once each");
    assert_eq!(sink.written(), payloads(&[&h, &k, &a1]));
}

/// The regression guard of `write_coalesce_ms` (bench/RESULTS.md, "Write coalescing"):
/// `qrelay bench`'s default stream (3 Mbit/s H.264 at 30 fps and AAC, about 73 frames a
/// second) costs a player that keeps up about one write per video frame, not one per
/// frame, and no frame waits longer than the window. Counted in paused (virtual) time by
/// the hub's own statistics, not timed.
#[tokio::test(start_paused = true)]
async fn the_bench_stream_costs_a_write_per_video_frame_and_waits_at_most_the_window() {
    use qrelay_bench::synth::{self, Next, Schedule, VideoPlan};
    const PLAYERS: u64 = 4;
    let window = Duration::from_millis(40);
    let hub = coalescing_hub(40);
    let mut p = hub.publish("live/a").unwrap();
    let players: Vec<(Subscriber, Arc<MemSink>)> = (0..PLAYERS)
        .map(|_| {
            let sub = hub.subscribe("live/a");
            let sink = MemSink::with_room(usize::MAX);
            assert!(hand(&sub, &sink));
            (sub, sink)
        })
        .collect();
    let plan = VideoPlan::new(3_000_000, 30, Duration::from_secs(2));
    let start = tokio::time::Instant::now();
    // (when sent, bytes sent up to and including it)
    let mut sent: Vec<(tokio::time::Instant, usize)> = Vec::new();
    let (mut total, mut video) = (0usize, 0u64);
    for (due, next) in Schedule::new(plan, true).take_while(|(due, _)| *due < Duration::from_secs(4)) {
        tokio::time::sleep_until(start + due).await;
        let now = tokio::time::Instant::now();
        // Everything sent a window (and the timer's millisecond) ago is out by now.
        let out = sent.iter().rev().find(|(at, _)| *at + window + Duration::from_millis(1) <= now);
        if let Some((_, bytes)) = out {
            for (_, sink) in &players {
                assert!(sink.written.lock().unwrap().len() >= *bytes, "a frame was held past the window");
            }
        }
        let frame = match next {
            Next::Video(n) => {
                video += 1;
                Frame::new(MediaKind::Video, plan.timestamp_ms(n), plan.frame(n, 0))
            }
            Next::Audio(n) => {
                Frame::new(MediaKind::Audio, synth::audio_timestamp_ms(n), synth::audio_frame())
            }
        };
        total += frame.payload().len();
        sent.push((now, total));
        p.send(frame);
    }
    tokio::time::sleep(window * 2).await;
    let stats = hub.stats("live/a").unwrap();
    let frames = sent.len() as u64;
    assert_eq!(stats.direct_writes, frames * PLAYERS, "every frame written directly");
    let sends = stats.direct_sends / PLAYERS;
    assert!(
        sends <= video + 2 && sends * 2 < frames,
        "{sends} writes per player for {frames} frames ({video} video): coalescing regressed"
    );
    for (_, sink) in &players {
        assert_eq!(sink.written.lock().unwrap().len(), total);
    }
}
