//! What this process is and what it costs: `readtier_build_info` and the standard
//! `process_*` metrics (the names Prometheus's own client libraries export, so the
//! usual dashboards and alerts work unchanged).
//!
//! Read from `/proc/self` when `/metrics` is rendered: a scrape every few seconds
//! costs a few small file reads, and the request path never does any of it. On a
//! system without `/proc` the process metrics are left out (build info stays).

use std::fmt::Write;

/// The version and the commit this binary was built from (`build.rs`; "unknown" when
/// built outside a git checkout without `GIT_COMMIT`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = match option_env!("BUILD_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Linux reports CPU times in `/proc` in USER_HZ ticks, which the kernel fixes at 100
/// on every architecture it exports to user space (`sysconf(_SC_CLK_TCK)`; Prometheus's
/// procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files (`None`: unlimited).
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is none (not Linux) or it cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        // The directory listing holds one more descriptor (its own) while it is read,
        // as Prometheus's client libraries count it too.
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut s = parse(&stat, &status, &boot, &limits)?;
        s.open_fds = open_fds;
        Some(s)
    }
}

/// The figures of `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and
/// `/proc/self/limits` (all but the descriptor count).
pub fn parse(stat: &str, status: &str, boot: &str, limits: &str) -> Option<ProcessStats> {
    // `pid (comm) state ppid …`: the command may hold spaces and parentheses, so the
    // fields are counted from the last `)`. After it, field 3 (state) is index 0.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let utime = num(11)?;
    let stime = num(12)?;
    let start_ticks = num(19)?;
    let virtual_bytes = num(20)?;
    let resident_kib = status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
    let max_fds = limits.lines().find_map(|l| {
        let soft = l
            .strip_prefix("Max open files")?
            .split_whitespace()
            .next()?;
        Some(soft.parse::<u64>().ok())
    })?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: resident_kib * 1024,
        virtual_bytes,
        open_fds: 0,
        max_fds,
        start_time_seconds: btime as f64 + start_ticks as f64 / USER_HZ,
    })
}

/// Appends `readtier_build_info` and, where `/proc` can be read, the `process_*`
/// metrics, each with its `# HELP` and `# TYPE`.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP readtier_build_info The version and commit of this binary (always 1)\n\
         # TYPE readtier_build_info gauge\n\
         readtier_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
    );
    let Some(s) = ProcessStats::read() else {
        return;
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds",
        s.cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes",
        s.resident_bytes as f64,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes",
        s.virtual_bytes as f64,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Open file descriptors",
        s.open_fds as f64,
    );
    if let Some(max) = s.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Most file descriptors this process may open (soft limit)",
            max as f64,
        );
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds",
        s.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2171 0 0 0 \
        350 125 0 0 20 0 9 0 123456 1048576000 4000 18446744073709551615";
    const STATUS: &str =
        "Name:\treadtier\nVmPeak:\t 1024000 kB\nVmRSS:\t   16384 kB\nThreads:\t9\n";
    const BOOT: &str = "cpu  1 2 3 4\nintr 5\nbtime 1764480000\nprocesses 9\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units\n\
        Max cpu time              unlimited            unlimited            seconds\n\
        Max open files            1024                 524288               files\n";

    #[test]
    fn proc_files_are_read_by_field() {
        let s = parse(STAT, STATUS, BOOT, LIMITS).unwrap();
        assert_eq!(
            s,
            ProcessStats {
                cpu_seconds: 4.75,
                resident_bytes: 16384 * 1024,
                virtual_bytes: 1_048_576_000,
                open_fds: 0,
                max_fds: Some(1024),
                start_time_seconds: 1_764_480_000.0 + 1234.56,
            }
        );
        let unlimited = LIMITS.replace("1024                 524288", "unlimited unlimited");
        assert_eq!(parse(STAT, STATUS, BOOT, &unlimited).unwrap().max_fds, None);
        assert_eq!(parse("4242 (x) S 1", STATUS, BOOT, LIMITS), None);
        assert_eq!(parse(STAT, "Name:\tx\n", BOOT, LIMITS), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let s = ProcessStats::read().expect("/proc/self is readable");
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0);
    }
}
