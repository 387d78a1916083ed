//! How much CPU this process spends, against what it may spend: the guard that keeps
//! a runtime queue built by *other* processes (a busy machine, a noisy neighbour) from
//! shedding this node's lookups, which would give back nothing.

/// The CPU time this process has used (all its threads, user and kernel), and the
/// cores it may use. Process time, not the runtime's worker busy time: a worker
/// preempted by another process on its core is counted busy by tokio, so on a machine
/// busy with other work the node looked saturated and shed (docs/PERFORMANCE.md);
/// process time counts only what the node itself spent, socket writes included, which
/// is what shedding can give back.
pub(super) fn process_cpu() -> Option<(std::time::Duration, f64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let cpu = std::time::Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    Some((cpu, *CORES.get_or_init(cores)))
}

static CORES: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The CPU the process may use, in cores, read once: its affinity mask, or its
/// cgroup's CPU quota if that is less. Fractional: a container limited to 1.5 cores
/// that counted 2 (as `available_parallelism` rounds) could never use 90% of them, and
/// would never shed.
fn cores() -> f64 {
    let affinity = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let quota = read("/proc/self/cgroup").and_then(|c| cgroup_quota(&c, read));
    quota.map_or(affinity, |q| q.min(affinity))
}

/// The CPU quota, in cores, of the cgroup named in `/proc/self/cgroup`'s text, or of
/// its nearest ancestor with one: v2's `cpu.max` ("max 100000": none; "150000 100000":
/// 1.5), or v1's `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`.
fn cgroup_quota(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<f64> {
    let ratio = |q: &str, p: &str| -> Option<f64> {
        let (q, p) = (q.trim().parse::<f64>().ok()?, p.trim().parse::<f64>().ok()?);
        (q > 0.0 && p > 0.0).then(|| q / p)
    };
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let found = if v2 {
                read(&format!("/sys/fs/cgroup{dir}/cpu.max")).and_then(|m| {
                    let mut m = m.split_whitespace();
                    ratio(m.next()?, m.next()?)
                })
            } else {
                let base = format!("/sys/fs/cgroup/cpu{dir}");
                read(&format!("{base}/cpu.cfs_quota_us"))
                    .zip(read(&format!("{base}/cpu.cfs_period_us")))
                    .and_then(|(q, p)| ratio(&q, &p))
            };
            if found.is_some() {
                return found;
            }
            match dir.rfind('/') {
                Some(i) => dir.truncate(i),
                None => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_quota_is_read_in_fractional_cores_from_the_nearest_cgroup_with_one() {
        let files = |m: &'static [(&'static str, &'static str)]| {
            move |p: &str| m.iter().find(|(k, _)| *k == p).map(|(_, v)| v.to_string())
        };
        // v2: the pod's own cgroup has no quota, its parent has 1.5 cores.
        let v2 = files(&[
            ("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n"),
        ]);
        assert_eq!(cgroup_quota("0::/kubepods/pod1/c1\n", v2), Some(1.5));
        assert_eq!(cgroup_quota("0::/\n", v2), None, "no quota anywhere");
        assert_eq!(
            cgroup_quota("garbage\n0::/kubepods/pod1/c1\n", v2),
            Some(1.5),
            "a line it cannot read is skipped, not the end of the search"
        );
        // v1: the cpu controller's line, quota over period; -1 is none.
        let v1 = files(&[
            ("/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "50000\n"),
            (
                "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
            ("/sys/fs/cgroup/cpu/docker/def/cpu.cfs_quota_us", "-1\n"),
            (
                "/sys/fs/cgroup/cpu/docker/def/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        let text = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n";
        assert_eq!(cgroup_quota(text, v1), Some(0.5));
        assert_eq!(cgroup_quota("2:cpu,cpuacct:/docker/def\n", v1), None);
        assert_eq!(cgroup_quota("4:memory:/docker/abc\n", v1), None, "not cpu");
    }
}
