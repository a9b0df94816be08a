//! Process accounting from `/proc`: CPU time (`/proc/PID/stat` utime + stime) and memory
//! (`/proc/PID/status` VmRSS and VmHWM), for the server under test and the bench itself.

use std::time::Duration;

/// CPU time a process used so far, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// User time.
    pub utime: u64,
    /// System time.
    pub stime: u64,
}

impl CpuTicks {
    /// User plus system.
    pub fn total(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mem {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size (high-water mark) over the process's life.
    pub hwm_kib: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some(CpuTicks { utime, stime })
}

/// Parses VmRSS and VmHWM from `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_ascii_whitespace().next()?.parse().ok()
    };
    Some(Mem { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:").unwrap_or(0) })
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks summed over
/// all cores. Loopback TCP does much of its receive work in softirq context, which is not
/// always charged to the sending or receiving process, so this shows what the per-process
/// numbers miss (and whether the machine was saturated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCpu {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// Softirq time (network receive processing, mostly).
    pub softirq: u64,
    /// All time.
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_host_stat(text: &str) -> Option<HostCpu> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_ascii_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice].
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(HostCpu { busy: total.saturating_sub(idle), softirq: v.get(6).copied().unwrap_or(0), total })
}

/// The machine's CPU counters now.
pub fn host_cpu() -> Option<HostCpu> {
    parse_host_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `self` or a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// This process.
    Me,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn path(&self, file: &str) -> String {
        match self {
            Pid::Me => format!("/proc/self/{file}"),
            Pid::Other(p) => format!("/proc/{p}/{file}"),
        }
    }

    /// CPU ticks so far; `None` when the process is gone or `/proc` is unreadable.
    pub fn cpu(&self) -> Option<CpuTicks> {
        parse_stat(&std::fs::read_to_string(self.path("stat")).ok()?)
    }

    /// Memory now.
    pub fn mem(&self) -> Option<Mem> {
        parse_status(&std::fs::read_to_string(self.path("status")).ok()?)
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; Linux uses 100 everywhere in practice).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Summed CPU of several processes (e.g. nginx's master and worker), in ticks.
pub fn cpu_of(pids: &[Pid]) -> Option<u64> {
    pids.iter().map(|p| p.cpu().map(|c| c.total())).sum()
}

/// Summed memory of several processes.
pub fn mem_of(pids: &[Pid]) -> Option<Mem> {
    pids.iter().try_fold(Mem::default(), |acc, p| {
        let m = p.mem()?;
        Some(Mem { rss_kib: acc.rss_kib + m.rss_kib, hwm_kib: acc.hwm_kib + m.hwm_kib })
    })
}

/// Ticks to seconds.
pub fn ticks_to_secs(ticks: u64, hz: u64) -> f64 {
    ticks as f64 / hz.max(1) as f64
}

/// How often the memory sampler looks.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let s = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 \
                 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(s), Some(CpuTicks { utime: 250, stime: 75 }));
        assert_eq!(parse_stat(s).unwrap().total(), 325);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_host_stat() {
        let s = "cpu  100 5 50 800 10 1 30 4 0 0\ncpu0 50 2 25 400 5 0 15 2 0 0\n";
        let h = parse_host_stat(s).unwrap();
        assert_eq!(h, HostCpu { busy: 190, softirq: 30, total: 1000 });
        assert_eq!(parse_host_stat("cpu0 1 2 3"), None);
        assert!(host_cpu().unwrap().total > 0);
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tqrelay\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(s), Some(Mem { rss_kib: 40_960, hwm_kib: 51_200 }));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let cpu = Pid::Me.cpu().expect("/proc/self/stat");
        let mem = Pid::Me.mem().expect("/proc/self/status");
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        assert!(cpu_of(&[Pid::Me]).unwrap() >= cpu.total());
        assert!(mem_of(&[Pid::Me, Pid::Me]).unwrap().rss_kib >= mem.rss_kib);
        assert!(clock_ticks() > 0);
        assert_eq!(ticks_to_secs(250, 100), 2.5);
    }
}
