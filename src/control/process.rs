//! The relay's own process figures for `/metrics`, read from `/proc/self` at scrape time
//! (Linux; elsewhere they are left out).

use qrelay_bench::proc::{parse_stat, parse_status};

/// Linux's `USER_HZ`: `/proc` counts CPU time in 1/100 s on every architecture it
/// supports, whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// What the process uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on file descriptors.
    pub max_fds: Option<u64>,
}

/// Reads `/proc/self`; `None` where there is no such thing.
pub fn read() -> Option<ProcessStats> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mem = parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|t| parse_max_fds(&t));
    Some(ProcessStats {
        rss_bytes: mem.rss_kib * 1024,
        cpu_seconds: stat.total() as f64 / TICKS_PER_SECOND,
        open_fds,
        max_fds,
    })
}

/// The soft limit of `Max open files` in `/proc/PID/limits`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc/self on Linux");
        assert!(s.rss_bytes > 0 && s.open_fds > 0, "{s:?}");
        assert_eq!(
            parse_max_fds("Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 524288               files\n"),
            Some(1024)
        );
    }
}
