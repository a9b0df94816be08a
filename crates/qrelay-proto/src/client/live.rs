//! What a live source does when its link cannot keep up, shared by the paced file
//! publisher and the bridge.

use std::time::Duration;

use crate::media::frame::{inspect_audio, inspect_video, MediaKind};

/// A live source never sends media already older than the latency budget: an encoder
/// does not wait for its network, and a paced publisher (or a bridge's queue) that did
/// would fall further and further behind real time, and its players with it. Such a
/// frame is dropped, video up to the next keyframe in time (nothing after a gap would
/// decode); codec configuration and metadata always go.
#[derive(Debug, Default)]
pub struct LiveSkip {
    /// Video frames are dropped until the next keyframe.
    video_gap: bool,
}

impl LiveSkip {
    /// Whether to send a frame that was due `behind` ago.
    pub fn keep(&mut self, kind: MediaKind, payload: &[u8], behind: Duration, budget: Duration) -> bool {
        let late = behind > budget;
        match kind {
            MediaKind::Data => true,
            MediaKind::Audio => !late || inspect_audio(payload).sequence_header,
            MediaKind::Video => {
                let i = inspect_video(payload);
                if i.sequence_header {
                    return true;
                }
                if late {
                    self.video_gap = true;
                    return false;
                }
                if self.video_gap && !i.keyframe {
                    return false;
                }
                self.video_gap = false;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_source_skips_late_frames_and_video_up_to_the_next_keyframe() {
        let budget = Duration::from_secs(1);
        let (on_time, late) = (Duration::from_millis(20), Duration::from_millis(1500));
        let video = |key: bool, config: bool| [if key { 0x17 } else { 0x27 }, u8::from(!config), 0, 0, 0, 1];
        let audio = |config: bool| [0xaf, u8::from(!config), 1];
        let (v, a) = (MediaKind::Video, MediaKind::Audio);
        let mut s = LiveSkip::default();
        assert!(s.keep(v, &video(false, false), on_time, budget));
        // Behind by more than the budget: dropped, and so is video until a keyframe...
        assert!(!s.keep(v, &video(false, false), late, budget));
        assert!(!s.keep(a, &audio(false), late, budget));
        assert!(!s.keep(v, &video(false, false), on_time, budget), "a frame after a gap went");
        // ...but configuration always goes, and audio in time.
        assert!(s.keep(v, &video(true, true), late, budget));
        assert!(s.keep(a, &audio(true), late, budget));
        assert!(s.keep(a, &audio(false), on_time, budget));
        assert!(s.keep(MediaKind::Data, b"\x02\x00", late, budget));
        // A late keyframe is dropped too; the next one in time resumes video.
        assert!(!s.keep(v, &video(true, false), late, budget));
        assert!(s.keep(v, &video(true, false), on_time, budget));
        assert!(s.keep(v, &video(false, false), on_time, budget));
    }
}
