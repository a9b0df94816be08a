//! `qrelay publish FILE URL` and `qrelay play URL -o FILE`: FLV files in and out of an
//! RTMP session, byte for byte (FLV tag bodies are RTMP payloads).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::info;

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
}

/// Error type for file transfers.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The RTMP side failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The FLV file is malformed.
    #[error("FLV: {0}")]
    Flv(#[from] FlvError),
    /// Reading or writing the file failed.
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
}

const MAX_TAG: usize = 64 * 1024 * 1024;

struct TagSource {
    file: tokio::fs::File,
    reader: FlvReader,
    buf: Vec<u8>,
}

impl TagSource {
    async fn open(path: &Path) -> Result<Self, FileError> {
        Ok(Self {
            file: tokio::fs::File::open(path).await?,
            reader: FlvReader::new(MAX_TAG),
            buf: vec![0; 64 * 1024],
        })
    }

    async fn next(&mut self) -> Result<Option<FlvTag>, FileError> {
        loop {
            if let Some(tag) = self.reader.next_tag()? {
                return Ok(Some(tag));
            }
            let n = self.file.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.push(&self.buf[..n]);
        }
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
    let mut client = RtmpClient::connect(url, ClientMode::Publish, opts).await?;
    info!(url = %url, "publishing");
    let start = Instant::now();
    let mut transfer = Transfer::default();
    let mut offset: u32 = 0;
    let mut first_ts: Option<u32> = None;
    let mut last_ts: u32 = 0;
    loop {
        let tag = match source.next().await? {
            Some(tag) => tag,
            None if publish.looped && transfer.messages > 0 => {
                // Continue the timeline one frame (~33 ms) after the last tag.
                offset = offset.wrapping_add(last_ts.wrapping_sub(first_ts.unwrap_or(0))).wrapping_add(33);
                source = TagSource::open(path).await?;
                first_ts = None;
                continue;
            }
            None => break,
        };
        let first = *first_ts.get_or_insert(tag.timestamp);
        last_ts = tag.timestamp;
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
        }
        transfer.messages += 1;
        transfer.bytes += tag.payload.len() as u64;
        // The file's own timestamps are what players receive (shifted on each loop).
        client.send_media(tag.kind, tag.timestamp.wrapping_add(offset), tag.payload).await?;
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
    info!(url = %url, "playing");
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
            Some(ClientEvent::StreamEnded) | None => break,
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

/// Reads a whole FLV from any reader (for tests and tools).
pub async fn read_flv_tags<R: AsyncRead + Unpin>(mut r: R) -> Result<Vec<FlvTag>, FileError> {
    let mut reader = FlvReader::new(MAX_TAG);
    let mut buf = vec![0; 64 * 1024];
    let mut tags = Vec::new();
    loop {
        while let Some(t) = reader.next_tag()? {
            tags.push(t);
        }
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(tags);
        }
        reader.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::ArrivalLog;

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
