//! `qrelay publish FILE URL` and `qrelay play URL -o FILE`: FLV files in and out of an
//! RTMP session, byte for byte (FLV tag bodies are RTMP payloads).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

use super::live::LiveSkip;
use super::{ClientError, ClientOptions, RtmpClient};
use crate::media::flv::{self, FlvError, FlvReader, FlvTag};
use crate::media::frame::{inspect_video, MediaKind};
use crate::rtmp::session::{ClientEvent, ClientMode};
use crate::url::StreamUrl;

/// How to publish a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions {
    /// Start again at the end, timestamps continuing.
    pub looped: bool,
    /// Send as fast as possible instead of at the file's real time.
    pub unpaced: bool,
}

/// How to play.
#[derive(Debug, Clone, Default)]
pub struct PlayOptions {
    /// Stop after this long (wall clock) once playback started.
    pub duration: Option<Duration>,
    /// Log each received video frame's arrival here (see [`ArrivalLog`]), for latency
    /// measurements such as `bench/netlab`.
    pub arrivals: Option<PathBuf>,
}

/// What a publish or play moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Media and data messages.
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Audio and video frames a paced publish dropped because its link fell behind real
    /// time by more than the latency budget ([`LiveSkip`](super::LiveSkip)).
    pub dropped: u64,
}

/// Error type for file transfers. Messages carry their cause themselves (as in
/// [`ClientError`]), so each is printed once.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The RTMP side failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The FLV file is malformed.
    #[error("{path}: {error}")]
    Flv {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: FlvError,
    },
    /// The file holds no audio or video tag: nothing to publish.
    #[error("{0}: no audio or video in the file")]
    NoMedia(PathBuf),
    /// Opening or reading the input file failed.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(std::io::Error),
}

impl From<std::io::Error> for FileError {
    fn from(error: std::io::Error) -> Self {
        Self::Write(error)
    }
}

const MAX_TAG: usize = 64 * 1024 * 1024;

struct TagSource {
    path: PathBuf,
    file: tokio::fs::File,
    reader: FlvReader,
    buf: Vec<u8>,
}

impl TagSource {
    async fn open(path: &Path) -> Result<Self, FileError> {
        let file = tokio::fs::File::open(path).await.map_err(|error| read_error(path, error))?;
        Ok(Self { path: path.to_owned(), file, reader: FlvReader::new(MAX_TAG), buf: vec![0; 64 * 1024] })
    }

    /// Next tag; `None` at the end of a file that ended where a tag did.
    async fn next(&mut self) -> Result<Option<FlvTag>, FileError> {
        let flv = |error| FileError::Flv { path: self.path.clone(), error };
        loop {
            if let Some(tag) = self.reader.next_tag().map_err(flv)? {
                return Ok(Some(tag));
            }
            let n = self.file.read(&mut self.buf).await.map_err(|error| read_error(&self.path, error))?;
            if n == 0 {
                self.reader.finish().map_err(flv)?;
                return Ok(None);
            }
            self.reader.push(&self.buf[..n]);
        }
    }

    /// Reads up to the first audio or video tag, so a file with nothing to publish fails
    /// before any connection is made. Returns the tags read, that one last.
    async fn first_media(&mut self) -> Result<Vec<FlvTag>, FileError> {
        let mut tags = Vec::new();
        while let Some(tag) = self.next().await? {
            let media = tag.kind != MediaKind::Data;
            tags.push(tag);
            if media {
                return Ok(tags);
            }
        }
        Err(FileError::NoMedia(self.path.clone()))
    }
}

fn read_error(path: &Path, error: std::io::Error) -> FileError {
    FileError::Read { path: path.to_owned(), error }
}

/// Where each track of a looped file stands, so the next pass continues every track's
/// timeline after its own last frame: one common offset for all tracks keeps them in
/// sync, and it is the largest track end so no track overlaps itself at the seam.
#[derive(Debug, Default)]
struct LoopSeam {
    first: Option<u32>,
    /// Per track (audio, video): last timestamp and the last frame's duration.
    tracks: [Option<(u32, u32)>; 2],
}

impl LoopSeam {
    fn record(&mut self, tag: &FlvTag) {
        self.first.get_or_insert(tag.timestamp);
        let track = match tag.kind {
            MediaKind::Audio => &mut self.tracks[0],
            MediaKind::Video => &mut self.tracks[1],
            MediaKind::Data => return,
        };
        let duration = match *track {
            Some((last, duration)) => {
                Some(tag.timestamp.wrapping_sub(last)).filter(|d| *d > 0 && *d < 1000).unwrap_or(duration)
            }
            None => 0,
        };
        *track = Some((tag.timestamp, duration));
    }

    /// The offset the next pass adds, relative to this pass's: the latest point any
    /// track reaches (its last frame plus that frame's duration), from the pass's start.
    fn pass_length(&self) -> u32 {
        let first = self.first.unwrap_or(0);
        let end = self
            .tracks
            .iter()
            .flatten()
            // A track with a single frame has no duration yet: one 30 fps frame.
            .map(|(last, duration)| {
                last.wrapping_sub(first).wrapping_add(if *duration == 0 { 33 } else { *duration })
            })
            .max();
        end.unwrap_or(33)
    }
}

/// Publishes an FLV file, paced at its timestamps (so a 30 s file takes 30 s).
pub async fn publish_flv(
    url: &StreamUrl,
    opts: &ClientOptions,
    path: &Path,
    publish: PublishOptions,
) -> Result<Transfer, FileError> {
    let mut source = TagSource::open(path).await?;
    let mut pending = source.first_media().await?.into_iter();
    let mut client = RtmpClient::connect(url, ClientMode::Publish, opts).await?;
    info!(url = %url.redacted(), "publishing");
    let start = Instant::now();
    let mut transfer = Transfer::default();
    let mut offset: u32 = 0;
    let mut first_ts: Option<u32> = None;
    let mut seam = LoopSeam::default();
    let mut skip = LiveSkip::default();
    loop {
        let tag = match pending.next() {
            Some(tag) => tag,
            None => match source.next().await? {
                Some(tag) => tag,
                None if publish.looped => {
                    offset = offset.wrapping_add(seam.pass_length());
                    source = TagSource::open(path).await?;
                    first_ts = None;
                    seam = LoopSeam::default();
                    continue;
                }
                None => break,
            },
        };
        seam.record(&tag);
        let first = *first_ts.get_or_insert(tag.timestamp);
        let mut due_at = None;
        if !publish.unpaced {
            let elapsed = tag.timestamp.wrapping_sub(first).wrapping_add(offset);
            let due = start + Duration::from_millis(u64::from(elapsed));
            loop {
                client.flush().await?;
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    open = client.read_input() => {
                        if !open? {
                            return Err(ClientError::Closed.into());
                        }
                    }
                }
            }
            if !skip.keep(
                tag.kind,
                &tag.payload,
                Instant::now().saturating_duration_since(due),
                opts.max_latency,
            ) {
                transfer.dropped += 1;
                continue;
            }
            due_at = Some(due);
        }
        transfer.messages += 1;
        transfer.bytes += tag.payload.len() as u64;
        // The file's own timestamps are what players receive (shifted on each loop).
        client.send_media_due(tag.kind, tag.timestamp.wrapping_add(offset), tag.payload, due_at).await?;
    }
    if transfer.dropped > 0 {
        info!(
            frames = transfer.dropped,
            "frames dropped: the link fell behind real time by more than max_latency"
        );
    }
    client.finish().await?;
    Ok(transfer)
}

/// Plays a stream into `out` as an FLV file until the stream ends (or `duration`).
pub async fn play_to_flv<W: AsyncWrite + Unpin>(
    url: &StreamUrl,
    opts: &ClientOptions,
    out: &mut W,
    play: PlayOptions,
) -> Result<Transfer, FileError> {
    let mut client = RtmpClient::connect(url, ClientMode::Play, opts).await?;
    info!(url = %url.redacted(), "playing");
    let mut header = BytesMut::new();
    flv::write_header(&mut header, true, true);
    out.write_all(&header).await?;
    let mut arrivals = play.arrivals.as_deref().map(ArrivalLog::create).transpose()?;
    let deadline = play.duration.map(|d| Instant::now() + d);
    let mut transfer = Transfer::default();
    let mut tag = BytesMut::new();
    loop {
        let event = match deadline {
            Some(d) => match tokio::time::timeout_at(d, client.read_event()).await {
                Ok(e) => e?,
                Err(_) => break,
            },
            None => client.read_event().await?,
        };
        match event {
            Some(ClientEvent::Media { kind, timestamp, payload }) => {
                transfer.messages += 1;
                transfer.bytes += payload.len() as u64;
                if let (Some(log), MediaKind::Video) = (arrivals.as_mut(), kind) {
                    log.record(timestamp, &payload)?;
                }
                flv::write_tag(&mut tag, kind, timestamp, &payload);
                out.write_all(&tag).await?;
                tag.clear();
            }
            Some(ClientEvent::StreamEnded) => break,
            // The stream did not end, the connection did: a crash is not a success.
            None => return Err(ClientError::Interrupted.into()),
            Some(_) => {}
        }
    }
    out.flush().await?;
    if let Some(log) = arrivals.as_mut() {
        log.flush()?;
    }
    let _ = client.finish().await;
    Ok(transfer)
}

/// One text line per received video frame, taken the moment the session decoded it:
/// `media_ms<TAB>arrival_unix_ms<TAB>key`, where `media_ms` is the RTMP timestamp,
/// `arrival_unix_ms` the wall clock in milliseconds since the Unix epoch (microsecond
/// resolution) and `key` 1 for a keyframe. A wall clock rather than a monotonic one so a
/// script can line arrivals up with events it timed itself (a link change, say).
/// Codec configuration records are left out: they are not pictures, and a looping
/// publisher repeats them with the timestamp of the next keyframe.
#[derive(Debug)]
pub struct ArrivalLog<W: std::io::Write = std::fs::File> {
    // A synchronous writer on purpose: one short line per frame goes to a buffer that
    // reaches the disk once per GOP, and `BufWriter` flushes on drop, so a play that
    // ends in an error still leaves its whole log behind.
    out: std::io::BufWriter<W>,
}

impl ArrivalLog {
    /// Creates (or truncates) the log file and writes its header line.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::new(std::fs::File::create(path)?)
    }
}

impl<W: std::io::Write> ArrivalLog<W> {
    /// A log on any writer, header line first.
    pub fn new(out: W) -> std::io::Result<Self> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        writeln!(out, "# media_ms\tarrival_unix_ms\tkey")?;
        Ok(Self { out })
    }

    /// Logs one video message that just arrived (nothing for a sequence header).
    pub fn record(&mut self, timestamp: u32, payload: &[u8]) -> std::io::Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let info = inspect_video(payload);
        if info.sequence_header || payload.is_empty() {
            return Ok(());
        }
        let ms = now.as_micros() as f64 / 1000.0;
        writeln!(self.out, "{timestamp}\t{ms:.3}\t{}", u8::from(info.keyframe))?;
        if info.keyframe {
            // A player stopped by a signal (no destructors run) then loses one GOP at most.
            self.out.flush()?;
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads a whole FLV from any reader (for tests and tools). Lenient about the end: a
/// file cut short yields the tags before the cut.
pub async fn read_flv_tags<R: AsyncRead + Unpin>(mut r: R) -> Result<Vec<FlvTag>, FileError> {
    let input = || PathBuf::from("<input>");
    let mut reader = FlvReader::new(MAX_TAG);
    let mut buf = vec![0; 64 * 1024];
    let mut tags = Vec::new();
    loop {
        while let Some(t) = reader.next_tag().map_err(|error| FileError::Flv { path: input(), error })? {
            tags.push(t);
        }
        let n = r.read(&mut buf).await.map_err(|error| FileError::Read { path: input(), error })?;
        if n == 0 {
            return Ok(tags);
        }
        reader.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn tag(kind: MediaKind, timestamp: u32) -> FlvTag {
        FlvTag { kind, timestamp, payload: Bytes::new() }
    }

    #[test]
    fn the_next_pass_starts_after_every_track_ended() {
        let mut seam = LoopSeam::default();
        seam.record(&tag(MediaKind::Data, 0));
        // Video at 30 fps ends at 3966 (+33 = 3999); AAC (23 ms frames) at 3979 (+23 = 4002).
        for i in 0..=119 {
            seam.record(&tag(MediaKind::Video, i * 3966 / 119));
        }
        for i in 0..=173 {
            seam.record(&tag(MediaKind::Audio, i * 23));
        }
        let next = seam.pass_length();
        // Each track's next frame comes no earlier than its last plus its duration, and
        // the longest track continues without a gap.
        assert_eq!(next, 4002);
    }

    #[test]
    fn arrival_log_lists_pictures_with_their_keyframe_flag() {
        let mut out = Vec::new();
        let mut log = ArrivalLog::new(&mut out).unwrap();
        log.record(0, &[0x17, 0, 0, 0, 0, 1]).unwrap(); // AVC sequence header: left out
        log.record(0, &[0x17, 1, 0, 0, 0, 9]).unwrap(); // keyframe
        log.record(33, &[0x27, 1, 0, 0, 0, 9]).unwrap(); // inter frame
        log.record(66, &[]).unwrap(); // nothing to show: left out
        log.flush().unwrap();
        drop(log);
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<(&str, &str)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 3, "{l}");
                assert!(f[1].parse::<f64>().unwrap() > 1.6e12, "not Unix milliseconds: {l}");
                (f[0], f[2])
            })
            .collect();
        assert_eq!(rows, [("0", "1"), ("33", "0")]);
    }
}
