//! The process's memory budget: new connections and new publishers are refused while
//! the resident set is over it. Per-connection bounds (pending partial messages, queue
//! bounds, QUIC receive windows, GOP caches) each hold, but summed over thousands of
//! peers they could exceed the machine; this is the one bound over all of them.
//!
//! The resident set is read from `/proc/self/statm` (a few microseconds), at most once
//! per [`FRESH`]: admission asks on every new connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old a reading may be when a decision uses it.
const FRESH: Duration = Duration::from_millis(5);

/// A limit on the process's resident memory.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    last: Mutex<Option<(Instant, u64)>>,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes of resident memory.
    pub fn new(limit: u64) -> Self {
        Self { limit, last: Mutex::new(None), refused: AtomicU64::new(0) }
    }

    /// The budget's limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Resident bytes now (a reading at most [`FRESH`] old); 0 where unknown.
    pub fn resident(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((at, bytes)) = *last {
            if now.duration_since(at) < FRESH {
                return bytes;
            }
        }
        let bytes = resident_bytes().unwrap_or(0);
        *last = Some((now, bytes));
        bytes
    }

    /// Whether the process is over its budget now (then counted as one refusal).
    pub fn over(&self) -> bool {
        let over = self.resident() > self.limit;
        if over {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Refusals made because of the budget.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Resident bytes of this process (`/proc/self/statm`, second field, in pages).
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // Every Linux this runs on (x86-64, aarch64 with 4 KiB pages); a 64 KiB-page kernel
    // would make the budget 16x looser, never tighter.
    4096
}

/// The default budget: three quarters of the memory this process may use, the smaller
/// of the machine's (`MemTotal`) and its cgroup's limit (`memory.max`); 4 GiB where
/// neither can be read.
pub fn default_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line["MemTotal:".len()..].split_ascii_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup =
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let limit = match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => 4 << 30,
    };
    limit / 4 * 3
}

/// Parses a size: bytes, or a number with `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`, `KB`,
/// `MB`, `GB`, all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a size (e.g. 2GiB, 512MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (KiB, MiB, GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999TiB").is_err());
    }

    #[test]
    fn the_budget_reads_this_process() {
        let here = MemoryBudget::new(u64::MAX);
        assert!(here.resident() > 1 << 20, "a process holds more than a MiB");
        assert!(!here.over());
        let tiny = MemoryBudget::new(1 << 20);
        assert!(tiny.over());
        assert_eq!(tiny.refused(), 1);
        assert!(default_limit() >= 1 << 28);
    }
}
