//! The adaptive limit on requests that wait (on Redis or the store): what sheds an
//! overload instead of queueing it.
//!
//! A static cap cannot shed a CPU overload: a cap high enough for a slow store is
//! never reached while every answer waits longer and longer (docs/PERFORMANCE.md,
//! "Overload with static caps"). The limit here follows latency instead, in the manner
//! of Netflix's concurrency-limits gradient:
//!
//! - every admitted request's time in the node, admission to answer, is a sample. A
//!   store read or a Redis call completes on another thread, so the sample includes
//!   the wait for the request's connection task to be run again: the run queue a CPU
//!   overload builds up is in it, not only the store's own time. Samples are averaged
//!   over short windows (at least [`WINDOW_SAMPLES`] samples and [`WINDOW_MIN`], at
//!   most [`WINDOW_MAX`]);
//! - the **no-load latency** is the average latency of windows in which the limit
//!   held nothing back (less than half of it in use) and the core had room (under
//!   `http.waiting_saturation`), smoothed over about ten of them: what this node's
//!   waiting path normally takes at the load it normally carries. A node held at its
//!   limit does not learn from its windows (admitted requests are fast because others
//!   were shed), nor from a window slow enough to lower the limit, nor from one with
//!   the core full (a load that grew into an overload, or was one from the start,
//!   would become the normal). Until a window with room has measured it, a saturated
//!   window is judged against the CPU time an admitted request cost in it. After
//!   [`RELEARN`] with no unlimited window, the state it is in becomes the new normal:
//!   a store that got slower for good does not pin the limit at its floor for ever;
//! - `gradient = clamp(tolerance × no_load / average, ½, 1)`. At 1 (latency within
//!   `tolerance ×` the no-load latency), and with at least half the limit in use, the
//!   limit grows by √limit: a node back from an overload reaches a limit of 100 in
//!   about 20 windows. It grows the same while the core has room (under the
//!   saturation share), however slow the window: the limit is there to shed a CPU
//!   overload, and one left where an overload put it went on shedding part of a load
//!   the core could carry. Below 1 the limit first drops to what was in use in the window
//!   (a limit above it admits nothing more), then by half the gradient's shortfall
//!   (at most a quarter a window: from a few hundred in use to a few in about 15
//!   windows; a fifth, at most a tenth, took ~40 windows, two seconds in which every
//!   answer waited, docs/PERFORMANCE.md). Bounded by `http.min_waiting` and
//!   `http.max_waiting`;
//! - a slow window lowers the limit only if the process used at least
//!   `http.waiting_saturation` of the CPU time of the cores it may use (its own CPU
//!   time, threads and kernel work included, `CLOCK_PROCESS_CPUTIME_ID`): a slow Redis
//!   zone or a locked table makes requests wait with the core idle, and shedding those
//!   would fail reads the fall-through can still answer (the fault suite counts them);
//!   an overloaded core is busy. Not the runtime's worker busy time, which counts a
//!   worker preempted by another process as busy;
//! - **or the store saturated by the node's own reads**: a slow window in which store
//!   fills found all `l2.max_store_fills` permits taken and queued lowers the count
//!   limit the same way, with the core idle. The store answers a fixed number at once
//!   and the rest queue in the node, so fewer in flight is exactly what relieves it; no
//!   rate cap (that is for a core a fast read can fill). Without this a node on a
//!   PostgreSQL store driven at 3× its capacity kept its limit at 1,024 and queued
//!   every request (admitted p99 19.5 s from the schedule, 102 shed in 20 s: measured,
//!   docs/PERFORMANCE.md). A slow Redis zone does not queue fills, so its reads are
//!   still not shed;
//! - **a rate cap steered by the CPU share**: a slow window with the core saturated
//!   also caps admissions a second, below what the window admitted. Fewer in flight
//!   alone does not relieve the core (a fast store read admits thousands a second
//!   through a limit of one, and a shed costs a request's kernel work too), and once
//!   capped, latency cannot steer: admitted requests are fast because the rest were
//!   shed, while the core may still be full and every answer, shed or not, queues in
//!   its socket buffers. So from then on each window moves the cap toward a CPU share
//!   a little under the saturation share: down (by a twentieth to a quarter) while
//!   saturated; while not, and fast, up (by a twentieth, to double when the core has
//!   room), or lifted once a window sheds nothing or its load no longer reaches
//!   half the cap, and the count limit grows as usual. (Held in a band under the
//!   saturation share instead, a cap a little under the load of a node at 85% stayed
//!   there, shedding a fifth of it, long after an overload: measured.) The cap is a
//!   GCRA (the "virtual scheduling" form of a token bucket): one atomic on admission,
//!   read only while a cap is set.
//!
//! Admission is one atomic add against the current limit; the gradient is updated
//! under a lock taken only by requests that waited anyway, and a request that finds it
//! taken skips its sample rather than wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fewest samples in a window.
const WINDOW_SAMPLES: u32 = 32;
/// Shortest window: long enough that one burst of a few slow answers does not lower
/// the limit; short enough that 20 windows (a limit of 1 grown back past 100, or
/// lowered by nine tenths) take a second.
const WINDOW_MIN: Duration = Duration::from_millis(50);
/// Longest window (a window closes then with whatever samples it has).
const WINDOW_MAX: Duration = Duration::from_millis(250);
/// How long a node held at its limit keeps the no-load latency it learned before.
const RELEARN: Duration = Duration::from_secs(60);
/// The weight of one unlimited window in the no-load latency.
const LEARN: f64 = 0.1;
/// Lowest cap on admissions a second: a node that sheds nearly everything still
/// admits enough to measure whether it is fast again.
const MIN_RATE: f64 = 20.0;
/// Admissions a capped node lets through back to back (the bucket's depth).
const BURST: u64 = 4;

/// How the limit is set (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    /// Follow latency; when false the limit is `max` always.
    pub adaptive: bool,
    pub min: usize,
    pub max: usize,
    /// How many times the no-load latency a window may average before the limit falls.
    pub tolerance: f64,
    /// The share of the CPU time of the cores it may use the process spent, over the
    /// window, at or above which a slow window lowers the limit (0: any slow window
    /// does).
    pub saturation: f64,
}

/// Requests admitted to wait, against a limit that follows their latency.
pub struct WaitLimit {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Nanoseconds between admissions while a rate cap is set; 0: no cap.
    interval_ns: AtomicU64,
    /// Requests shed so far (a window that shed none does not need its rate cap).
    shed: AtomicU64,
    /// The GCRA's theoretical arrival time, in nanoseconds since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
    gradient: Option<Mutex<Gradient>>,
}

impl WaitLimit {
    pub fn new(cfg: LimitConfig) -> WaitLimit {
        let max = cfg.max.max(1);
        let min = cfg.min.clamp(1, max);
        // Start at the ceiling: a node that has measured nothing admits what the
        // static cap admits; the first slow window brings it down to what is in use.
        WaitLimit {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(max),
            interval_ns: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
            gradient: cfg.adaptive.then(|| {
                let mut g = Gradient::new(max as f64, min as f64, max as f64, cfg.tolerance);
                g.saturation = cfg.saturation;
                Mutex::new(g)
            }),
        }
    }

    /// Admits one more request, or `false` when the limit is reached (shed it).
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit.load(Ordering::Relaxed) || !self.within_rate() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes one admission from the rate cap, if one is set (GCRA: an admission is
    /// due every `interval`; up to [`BURST`] may come early).
    #[inline]
    fn within_rate(&self) -> bool {
        let interval = self.interval_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                (tat <= now + interval * (BURST - 1)).then(|| tat.max(now) + interval)
            })
            .is_ok()
    }

    /// The cap on admissions a second, if one is set.
    pub fn rate(&self) -> Option<f64> {
        match self.interval_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(1e9 / ns as f64),
        }
    }

    /// Ends an admitted request that took `rtt` in the node; `queued` is the count,
    /// since start, of store fills that queued for a permit.
    pub fn release(&self, rtt: Duration, queued: u64) {
        let in_flight = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(g) = &self.gradient else { return };
        // Contended only when two waited requests end at the same instant; the sample
        // is worth less than the wait.
        let Ok(mut g) = g.try_lock() else { return };
        let shed = self.shed.load(Ordering::Relaxed);
        if let Some(d) = g.sample(rtt, in_flight, shed, queued, Instant::now(), process_cpu) {
            self.limit.store(d.limit, Ordering::Relaxed);
            let interval = d.rate.map_or(0, |r| (1e9 / r).max(1.0) as u64);
            self.interval_ns.store(interval, Ordering::Relaxed);
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The CPU time this process has used (all its threads, user and kernel), and the
/// cores it may use. Process time, not the runtime's worker busy time: a worker
/// preempted by another process on its core is counted busy by tokio, so on a machine
/// busy with other work the node looked saturated and shed (docs/PERFORMANCE.md);
/// process time counts only what the node itself spent, socket writes included, which
/// is what shedding can give back.
fn process_cpu() -> Option<(Duration, f64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let cpu = Duration::new(
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

#[derive(Debug)]
struct Gradient {
    estimate: f64,
    min: f64,
    max: f64,
    tolerance: f64,
    /// No-load latency in seconds, once a window has measured it.
    no_load: Option<f64>,
    /// When the last unlimited window closed.
    unlimited_at: Option<Instant>,
    window_start: Option<Instant>,
    count: u32,
    sum: f64,
    /// Most requests in flight seen in the window.
    peak: usize,
    /// See [`LimitConfig::saturation`].
    saturation: f64,
    /// The process's CPU time when the last window closed, and when that was.
    cpu_at: Option<(Instant, Duration)>,
    /// Requests shed (all time) when the last window closed.
    shed_at: u64,
    /// Store fills that queued (all time) when the last window closed.
    queued_at: u64,
    /// The cap on admissions a second, once the limit alone could not shed enough.
    rate: Option<f64>,
}

/// What a window decided.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decision {
    limit: usize,
    rate: Option<f64>,
}

impl Gradient {
    fn new(estimate: f64, min: f64, max: f64, tolerance: f64) -> Gradient {
        Gradient {
            estimate,
            min,
            max,
            tolerance,
            no_load: None,
            unlimited_at: None,
            window_start: None,
            count: 0,
            sum: 0.0,
            peak: 0,
            saturation: 0.0,
            cpu_at: None,
            shed_at: 0,
            queued_at: 0,
            rate: None,
        }
    }

    /// The limit one step up (by √limit): it was in use and the core had room.
    fn grow(&mut self) -> Decision {
        self.estimate = (self.estimate + self.estimate.sqrt()).min(self.max);
        self.decision()
    }

    /// The limit down to what was in use, then by half the gradient's shortfall.
    fn lower(&mut self, used: f64, gradient: f64) {
        let base = self.estimate.min(used.max(self.min));
        self.estimate = (base * (0.5 + 0.5 * gradient)).clamp(self.min, self.max);
    }

    fn decision(&self) -> Decision {
        Decision {
            limit: self.estimate.round().max(1.0) as usize,
            rate: self.rate,
        }
    }

    /// Adds a sample; at the end of a window, the new limit.
    fn sample(
        &mut self,
        rtt: Duration,
        in_flight: usize,
        shed: u64,
        queued: u64,
        now: Instant,
        cpu: impl Fn() -> Option<(Duration, f64)>,
    ) -> Option<Decision> {
        let start = match self.window_start {
            Some(start) => start,
            None => {
                // The first window: its CPU share is measured from here, so a node
                // overloaded from its first request knows its core is full.
                if let Some((total, _)) = cpu() {
                    self.cpu_at = Some((now, total));
                }
                *self.window_start.insert(now)
            }
        };
        self.count += 1;
        self.sum += rtt.as_secs_f64();
        self.peak = self.peak.max(in_flight);
        let age = now.saturating_duration_since(start);
        if !(age >= WINDOW_MAX || (age >= WINDOW_MIN && self.count >= WINDOW_SAMPLES)) {
            return None;
        }
        let average = self.sum / f64::from(self.count);
        let used = self.peak as f64;
        // Admissions a second over the window (each sample is one admitted request).
        let admitted = f64::from(self.count) / age.as_secs_f64().max(1e-3);
        // Was the CPU the bottleneck? The share of the cores it may use the process
        // spent over the window (and the CPU seconds). Without a clock for it, taken
        // as saturated; unknown if the clock could not be read when the window
        // opened (nothing to compare with; holding is the safe side).
        let (share, cpu_secs) = match cpu() {
            Some((total, cores)) => match self.cpu_at.replace((now, total)) {
                Some((at, before)) if now > at && cores > 0.0 => {
                    let used = total.saturating_sub(before).as_secs_f64();
                    let wall = now.duration_since(at).as_secs_f64() * cores;
                    (Some(used / wall), Some(used))
                }
                _ => (None, None),
            },
            None => (Some(1.0), None),
        };
        let saturated = share.is_some_and(|c| c >= self.saturation);
        // Room on the core (or no saturation share set): only such a window's latency
        // can be no-load. Learned from saturated windows too, a load that grew into an
        // overload, or was one from the node's first window, became the node's normal
        // and was never shed (measured: a node started into 3× its capacity answered
        // its 256 connections in seconds, shedding nothing).
        let room = !saturated || self.saturation <= 0.0;
        let samples = f64::from(self.count);
        let shed_here = shed.saturating_sub(std::mem::replace(&mut self.shed_at, shed));
        // Fills queued for a store permit in this window: the store is saturated.
        let store_full = queued > std::mem::replace(&mut self.queued_at, queued);
        self.window_start = Some(now);
        self.count = 0;
        self.sum = 0.0;
        self.peak = 0;

        let limited = used * 2.0 >= self.estimate;
        let stale = self
            .unlimited_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RELEARN);
        // Never measured with room on the core, and saturated now: what an admitted
        // request costs the core (its CPU time per sample, the window's sheds and
        // hits included) stands in, unlearned, until a window with room measures it.
        let provisional = self.no_load.is_none() && !room;
        let known = match self.no_load {
            Some(b) if !stale => b,
            None if provisional => cpu_secs.map_or(average, |c| c / samples),
            // Nothing known, or a minute held at the limit: this is the normal now.
            _ => average,
        };
        let gradient = (self.tolerance * known / average.max(1e-9)).clamp(0.5, 1.0);
        // Learned from unlimited windows within the tolerance, with room on the core,
        // only: the first slow window of an overload is not normal.
        let learn = !limited && gradient >= 1.0 && room && !store_full;
        if !provisional {
            self.no_load = Some(if learn {
                known + (average - known) * LEARN
            } else {
                known
            });
            if learn || stale {
                self.unlimited_at = Some(now);
            }
        }

        if let Some(rate) = self.rate {
            // Capped: the CPU share steers the cap. Latency cannot: admitted requests
            // are fast precisely because the rest were shed, while the sheds and the
            // admitted together still fill the core and every answer, shed or not,
            // queues in the socket buffers in front of it.
            let c = share.unwrap_or(self.saturation);
            // With no saturation share set (0: latency alone judges), latency steers
            // the cap too: down a quarter while slow, up a quarter while fast.
            let by_cpu = self.saturation > 0.0;
            // Towards a little under the saturation share: down by at most a quarter a
            // window, up by at most double (a cap at its floor of 20 a second, on a
            // core that has room again, is back to thousands within a second: at a
            // quarter a window, and windows of 250 ms at such rates, it took 7 s).
            let toward = match (by_cpu, gradient < 1.0) {
                (true, _) => (0.95 * self.saturation / c.max(1e-3)).clamp(0.75, 2.0),
                (false, true) => 0.75,
                (false, false) => 1.25,
            };
            let hot = if by_cpu { saturated } else { gradient < 1.0 };
            if hot {
                let slow = if gradient < 1.0 {
                    0.5 + 0.5 * gradient
                } else {
                    1.0
                };
                let next = rate.min(admitted) * toward.min(0.95).min(slow);
                self.rate = Some(next.max(MIN_RATE));
                if gradient < 1.0 {
                    self.lower(used, gradient);
                }
            } else if share.is_some() || !by_cpu {
                // Not saturated and fast: a cap that shed nothing, or that the load no
                // longer reaches half of (what is shed is shed by the count limit), is
                // lifted; one still in the way is raised (by at least a twentieth a
                // window). Slow with room on the core (a dependency, or an overload's
                // queue draining), the cap holds.
                if gradient >= 1.0 {
                    let binding = shed_here > 0 && admitted * 2.0 >= rate;
                    self.rate = binding.then(|| rate * toward.max(1.05));
                }
                // Either way a count limit in use grows, as it would uncapped; unless
                // slow with the store saturated (below).
                if gradient < 1.0 && store_full {
                    self.lower(used, gradient);
                } else if limited {
                    self.grow();
                }
            }
            // Otherwise (the CPU share unknown) both hold.
            return Some(self.decision());
        }
        if gradient >= 1.0 || !(saturated || store_full) {
            // Fast; or slow, but the core was not: a dependency is slow (a Redis zone
            // down, a locked table), or an overload is over and the queue it left
            // drains. Shedding would fail reads the fall-through can still answer; the
            // static caps bound the waiting. Either way a limit in use grows (left
            // where an overload put it, it shed a few percent of the load for seconds
            // after: measured, 94% served over 5 s back at 0.8 C). Below half the
            // limit a window says nothing about a higher one; nor does a slow window
            // whose CPU share is unknown.
            if !limited || (gradient < 1.0 && share.is_none()) {
                return None;
            }
            return Some(self.grow());
        }
        if !saturated {
            // Slow with the store saturated and the core not: fewer in flight relieves
            // the store, so the count limit alone falls.
            self.lower(used, gradient);
            return Some(self.decision());
        }
        // Slow with the core saturated: an overload of the CPU. Fewer in flight alone
        // does not relieve it (a fast store read admits thousands a second through a
        // limit of one), so the rate is capped too, below what this window admitted;
        // from here the CPU share steers the cap (above).
        self.rate = Some((admitted * (0.5 + 0.5 * gradient)).max(MIN_RATE));
        self.lower(used, gradient);
        Some(self.decision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-12
    }

    /// The time between samples: a window of [`WINDOW_SAMPLES`] closes just over
    /// [`WINDOW_MIN`] after it opened (rounded up: at its last sample, not one after),
    /// so a window admits ~584 a second.
    fn step() -> Duration {
        WINDOW_MIN / (WINDOW_SAMPLES - 1) + Duration::from_micros(100)
    }

    /// Feeds `k` windows of samples of `rtt_us` with `in_flight` requests in flight,
    /// with no CPU clock (taken as saturated) and nothing shed.
    fn windows(g: &mut Gradient, t: &mut Instant, k: usize, rtt_us: u64, in_flight: usize) {
        for _ in 0..k {
            for _ in 0..WINDOW_SAMPLES {
                *t += step();
                g.sample(Duration::from_micros(rtt_us), in_flight, 0, 0, *t, || None);
            }
        }
    }

    /// A node's clock, CPU time (one core) and shed count, fed window by window.
    struct Sim {
        t: Instant,
        cpu: Duration,
        shed: u64,
        /// Store fills queued for a permit, all time.
        queued: u64,
        /// Fills that queue in each window fed.
        queueing: u64,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                t: Instant::now(),
                cpu: Duration::ZERO,
                shed: 0,
                queued: 0,
                queueing: 0,
            }
        }

        /// `k` windows of samples of `rtt_us` with `in_flight` in flight, the core
        /// busy `share` of the time, `shed` requests shed in each window.
        fn windows(
            &mut self,
            g: &mut Gradient,
            k: usize,
            (rtt_us, in_flight): (u64, usize),
            share: f64,
            shed: u64,
        ) {
            for _ in 0..k {
                for i in 0..WINDOW_SAMPLES {
                    self.t += step();
                    self.cpu += step().mul_f64(share);
                    if i == 0 {
                        self.shed += shed;
                        self.queued += self.queueing;
                    }
                    let cpu = self.cpu;
                    let rtt = Duration::from_micros(rtt_us);
                    let queued = self.queued;
                    g.sample(rtt, in_flight, self.shed, queued, self.t, || {
                        Some((cpu, 1.0))
                    });
                }
            }
        }
    }

    /// A gradient from `estimate` (floor 1, ceiling `max`, tolerance 2) gated at a
    /// saturation share of 0.9, and a simulated node to feed it.
    fn gated(estimate: f64, max: f64) -> (Gradient, Sim) {
        let mut g = Gradient::new(estimate, 1.0, max, 2.0);
        g.saturation = 0.9;
        (g, Sim::new())
    }

    /// One window with the whole limit in use and nothing shed: it grows by √limit.
    fn grows_one_step_in_use(g: &mut Gradient, sim: &mut Sim, rtt_us: u64, share: f64) {
        let at = g.estimate;
        sim.windows(g, 1, (rtt_us, at as usize), share, 0);
        assert!(
            near(g.estimate, at + at.sqrt()),
            "{} after {at}",
            g.estimate
        );
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_on_release() {
        let l = WaitLimit::new(LimitConfig {
            adaptive: false,
            min: 1,
            max: 3,
            tolerance: 2.0,
            saturation: 0.9,
        });
        assert!(l.try_acquire() && l.try_acquire() && l.try_acquire());
        assert!(!l.try_acquire(), "the fourth is shed");
        assert_eq!(l.in_flight(), 3);
        l.release(Duration::from_millis(1), 0);
        assert!(l.try_acquire(), "a release makes room");
        assert_eq!(l.limit(), 3, "a static limit never moves");
    }

    #[test]
    fn latency_past_the_tolerance_shrinks_the_limit_to_its_floor() {
        let mut g = Gradient::new(256.0, 4.0, 256.0, 2.0);
        let mut t = Instant::now();
        // Light load: 100 µs with few in flight teaches the no-load latency and leaves
        // the limit alone.
        windows(&mut g, &mut t, 5, 100, 3);
        assert!(near(g.no_load.unwrap(), 100e-6), "{:?}", g.no_load);
        assert_eq!(g.estimate, 256.0);
        // 10× the no-load latency with 64 in flight: at once down to what is in use,
        // then to the floor; the no-load latency does not follow the overload up.
        windows(&mut g, &mut t, 1, 1_000, 64);
        assert!(near(g.estimate, 64.0 * 0.75), "{}", g.estimate);
        windows(&mut g, &mut t, 60, 1_000, 64);
        assert_eq!(g.estimate, 4.0);
        assert!(near(g.no_load.unwrap(), 100e-6), "{:?}", g.no_load);
    }

    #[test]
    fn latency_within_the_tolerance_grows_the_limit_back_when_it_is_in_use() {
        let mut g = Gradient::new(4.0, 4.0, 256.0, 2.0);
        let mut t = Instant::now();
        windows(&mut g, &mut t, 1, 100, 1);
        assert_eq!(
            g.estimate, 4.0,
            "a fast window with one in flight says nothing"
        );
        // At the limit and fast (1.5× no-load): grows by √limit a window, past 100
        // within 20 windows.
        let mut last = g.estimate;
        for _ in 0..20 {
            let at_limit = g.estimate as usize;
            windows(&mut g, &mut t, 1, 150, at_limit);
            assert!(near(g.estimate, (last + last.sqrt()).min(256.0)));
            last = g.estimate;
        }
        assert!(g.estimate > 100.0, "grew to {}", g.estimate);
    }

    #[test]
    fn the_no_load_latency_follows_unlimited_windows_and_relearns_after_a_minute() {
        let (mut g, mut sim) = gated(256.0, 256.0);
        sim.windows(&mut g, 1, (100, 1), 0.2, 0);
        // Unlimited windows at 200 µs: a tenth of the way each.
        sim.windows(&mut g, 1, (200, 1), 0.2, 0);
        assert!(near(g.no_load.unwrap(), 110e-6), "{:?}", g.no_load);
        sim.windows(&mut g, 100, (200, 1), 0.2, 0);
        assert!(
            (g.no_load.unwrap() - 200e-6).abs() < 1e-7,
            "{:?}",
            g.no_load
        );
        // Held at its floor (and its rate cap) by an overload, after which the store
        // stays 25× slower for good with the core idle: the limit and the cap hold for
        // a minute, then the slower store is the new normal, the cap (which sheds
        // nothing) is lifted and the limit grows again.
        sim.windows(&mut g, 200, (5_000, 300), 1.0, 100);
        assert_eq!((g.estimate, g.rate), (1.0, Some(MIN_RATE)));
        assert!(near(
            g.no_load.unwrap(),
            g.no_load.unwrap().min(200e-6 + 1e-7)
        ));
        sim.windows(&mut g, 45_000 / 55, (5_000, 300), 0.2, 0);
        assert_eq!(g.rate, Some(MIN_RATE), "the cap held");
        assert_eq!(
            g.estimate, 256.0,
            "the limit in use grew, the core having room"
        );
        sim.windows(&mut g, 25_000 / 55, (5_000, 300), 0.2, 0);
        assert_eq!(g.rate, None, "lifted");
        assert!(near(g.no_load.unwrap(), 5_000e-6), "{:?}", g.no_load);
        assert!(g.estimate > 100.0, "{}", g.estimate);
    }

    #[test]
    fn a_node_overloaded_from_its_first_window_sheds() {
        // Started into an overload: 256 connections answered in 13 ms each, the core
        // full from the first request. No latency was ever measured with room, so
        // the CPU time per request (~1.7 ms here) stands in: the first window sheds.
        let (mut g, mut sim) = gated(1024.0, 1024.0);
        sim.windows(&mut g, 1, (13_000, 256), 1.0, 0);
        assert!(g.rate.is_some(), "capped");
        assert!(near(g.estimate, 256.0 * 0.75), "{}", g.estimate);
        assert_eq!(g.no_load, None, "the stand-in is not learned");
        // Still saturated: the cap keeps falling, nothing learned.
        let first = g.rate.unwrap();
        sim.windows(&mut g, 3, (13_000, 256), 1.0, 100);
        assert!(g.rate.unwrap() < first);
        assert_eq!(g.no_load, None);
        // Room on the core, answers fast: that latency is learned as no-load.
        sim.windows(&mut g, 1, (300, 4), 0.5, 100);
        assert!(near(g.no_load.unwrap(), 300e-6), "{:?}", g.no_load);
    }

    #[test]
    fn a_latency_that_creeps_up_while_the_core_is_full_is_not_learned() {
        let (mut g, mut sim) = gated(64.0, 256.0);
        sim.windows(&mut g, 2, (100, 1), 0.5, 0);
        // 5% slower every window, the core full, few in flight: each window is within
        // twice a no-load latency that followed it (1.5×), so it was never shed and the
        // latency doubled every 14 windows. Now the no-load latency holds, and the
        // window past twice it sheds.
        let mut rtt = 100.0_f64;
        let mut shed_at = None;
        for k in 0..40 {
            rtt *= 1.05;
            sim.windows(&mut g, 1, (rtt as u64, 1), 0.95, 0);
            if g.rate.is_some() && shed_at.is_none() {
                shed_at = Some(k);
            }
        }
        assert!(near(g.no_load.unwrap(), 100e-6), "{:?}", g.no_load);
        // 100 × 1.05^15 = 207.9 µs: the first window past twice the no-load latency.
        assert_eq!(shed_at, Some(14));
    }

    #[test]
    fn a_slow_window_with_an_idle_core_never_lowers_the_limit() {
        let (mut g, mut sim) = gated(64.0, 256.0);
        // Teach 100 µs with the core mostly idle.
        sim.windows(&mut g, 2, (100, 1), 0.2, 0);
        // 10× slower, all 64 in use, but the core busy a fifth of the time: a slow
        // dependency (a Redis zone down, a locked table), not an overload. Not shed:
        // the limit in use grows by √limit a window, until it is twice what is in use
        // (64, 72, 80.5, … 119.3, 130.2), then holds.
        sim.windows(&mut g, 1, (1_000, 64), 0.2, 0);
        assert!(near(g.estimate, 72.0), "{}", g.estimate);
        sim.windows(&mut g, 9, (1_000, 64), 0.2, 0);
        assert!((g.estimate - 130.2).abs() < 0.1, "{}", g.estimate);
        assert_eq!(g.rate, None, "a slow dependency is not shed");
        // Just under the saturation share: held.
        let held = g.estimate;
        sim.windows(&mut g, 3, (1_000, 64), 0.89, 0);
        assert_eq!((g.estimate, g.rate), (held, None));
        // The same windows with the core full: the limit falls and the rate is capped.
        sim.windows(&mut g, 1, (1_000, 64), 1.0, 0);
        assert!(near(g.estimate, 64.0 * 0.75), "{}", g.estimate);
        assert!(g.rate.is_some());
    }

    /// The store saturated by the node's own reads (fills queue for a permit), the core
    /// idle: the count limit falls, with no rate cap, and grows back once fills stop
    /// queueing and latency is within the tolerance again.
    #[test]
    fn a_store_saturated_by_our_reads_lowers_the_limit_with_the_core_idle() {
        let (mut g, mut sim) = gated(1024.0, 1024.0);
        // Teach 1 ms: a store read at calm load.
        sim.windows(&mut g, 2, (1_000, 8), 0.2, 0);
        // 3x the store's capacity: 256 in flight, 50 ms each, fills queueing, the core
        // a fifth busy. The first window brings the limit down to what is in use less
        // half the gradient's shortfall (256 × 0.75), then a quarter a window.
        sim.queueing = 10;
        sim.windows(&mut g, 1, (50_000, 256), 0.2, 0);
        assert!(near(g.estimate, 192.0), "{}", g.estimate);
        sim.windows(&mut g, 8, (50_000, 256), 0.2, 0);
        assert!(g.estimate < 20.0, "{}", g.estimate);
        assert_eq!(g.rate, None, "a store overload is not rate-capped");
        // The same slow windows with no fill queued (a slow dependency): the limit in
        // use grows instead.
        sim.queueing = 0;
        let low = g.estimate;
        sim.windows(&mut g, 1, (50_000, low as usize), 0.2, 0);
        assert!(near(g.estimate, low + low.sqrt()), "{}", g.estimate);
        // Fast again and in use: it keeps growing.
        let at = g.estimate;
        sim.windows(&mut g, 3, (1_000, at as usize * 2), 0.2, 0);
        assert!(g.estimate > at, "{} after {at}", g.estimate);
    }

    #[test]
    fn a_saturated_core_caps_the_rate_and_the_cpu_share_steers_it() {
        let (mut g, mut sim) = gated(64.0, 256.0);
        sim.windows(&mut g, 2, (100, 1), 0.5, 0);
        assert_eq!(g.rate, None, "fast: no cap");
        // 10× slower with 32 in flight and the core full: the count limit falls to
        // what is in use times the gradient's factor (½ → 0.75), and admissions are
        // capped below what the window admitted (32 in ~54.8 ms, ~584/s) by the same.
        sim.windows(&mut g, 1, (1_000, 32), 1.0, 0);
        let admitted = f64::from(WINDOW_SAMPLES) / (step() * WINDOW_SAMPLES).as_secs_f64();
        let first = g.rate.expect("capped");
        assert!(near(g.estimate, 32.0 * 0.75), "{}", g.estimate);
        assert!(
            (first - admitted * 0.75).abs() < 1e-6,
            "{first} vs {admitted}"
        );
        // Capped, fast (the rest were shed), the core still full: down toward 95% of
        // the saturation share (0.855×), and latency cannot hold it up.
        sim.windows(&mut g, 1, (100, 1), 1.0, 50);
        let second = g.rate.expect("capped");
        assert!((second - first * 0.855).abs() < 1e-6, "{second} vs {first}");
        assert!(near(g.estimate, 24.0), "the count limit holds while fast");
        // Just under saturated (0.89), fast and still shedding: up by a twentieth.
        sim.windows(&mut g, 1, (100, 1), 0.89, 50);
        let third = g.rate.expect("capped");
        assert!((third / second - 1.05).abs() < 1e-9, "{third} vs {second}");
        // Room on the core: up toward the share, by at most double a window
        // (0.4 → 2×), less with less room (0.8 → 1.06875×).
        sim.windows(&mut g, 1, (100, 1), 0.4, 50);
        assert!((g.rate.unwrap() / third - 2.0).abs() < 1e-9);
        sim.windows(&mut g, 1, (100, 1), 0.8, 50);
        // (The share is measured in whole nanoseconds: equal to ~1e-8.)
        let up = g.rate.unwrap() / (third * 2.0);
        assert!((up - 1.068_75).abs() < 1e-6, "{up}");
        // Slow with the core not saturated while capped (a dependency): held.
        let held = g.rate;
        sim.windows(&mut g, 3, (5_000, 8), 0.5, 50);
        assert_eq!(g.rate, held);
        // The core full for many windows: never below MIN_RATE.
        sim.windows(&mut g, 100, (1_000, 1), 1.0, 50);
        assert_eq!(g.rate, Some(MIN_RATE));
        // Cool and nothing shed: the cap is lifted; then the count limit grows as
        // before.
        sim.windows(&mut g, 1, (100, 1), 0.5, 0);
        assert_eq!(g.rate, None);
        grows_one_step_in_use(&mut g, &mut sim, 100, 0.5);
    }

    #[test]
    fn after_an_overload_a_limit_in_use_grows_back_while_the_core_has_room() {
        let (mut g, mut sim) = gated(64.0, 256.0);
        sim.windows(&mut g, 2, (100, 1), 0.5, 0);
        // An overload: capped, the limit down to 24.
        sim.windows(&mut g, 1, (1_000, 32), 1.0, 0);
        assert!(near(g.estimate, 24.0) && g.rate.is_some());
        let cap = g.rate;
        // Over: the core at 0.8, the queue it left draining (300 µs, past twice the
        // no-load latency), the limit in use. It grows by √limit a window; the cap,
        // the answers being slow, holds.
        sim.windows(&mut g, 1, (300, 24), 0.8, 10);
        assert!(near(g.estimate, 24.0 + 24.0_f64.sqrt()), "{}", g.estimate);
        assert_eq!(g.rate, cap);
        // Lifted once fast; the limit, uncapped, keeps growing while in use.
        sim.windows(&mut g, 1, (150, 30), 0.8, 0);
        assert_eq!(g.rate, None);
        grows_one_step_in_use(&mut g, &mut sim, 300, 0.8);
    }

    #[test]
    fn with_no_saturation_share_latency_alone_steers_the_cap() {
        // `waiting_saturation = 0`: any slow window counts, whatever the core did.
        let mut g = Gradient::new(64.0, 1.0, 256.0, 2.0);
        let mut sim = Sim::new();
        sim.windows(&mut g, 2, (100, 1), 0.1, 0);
        sim.windows(&mut g, 1, (1_000, 32), 0.1, 0);
        let first = g.rate.expect("a slow window caps, the core idle or not");
        sim.windows(&mut g, 1, (1_000, 8), 0.1, 50);
        let second = g.rate.unwrap();
        assert!(
            (second / first - 0.75).abs() < 1e-9,
            "{second} after {first}"
        );
        // Fast and still shedding, with the core full: up a quarter, not down.
        sim.windows(&mut g, 1, (100, 8), 1.0, 50);
        assert!((g.rate.unwrap() / second - 1.25).abs() < 1e-9);
        // Fast and nothing shed: lifted.
        sim.windows(&mut g, 1, (100, 8), 1.0, 0);
        assert_eq!(g.rate, None);
    }

    #[test]
    fn a_rate_cap_admits_a_burst_then_one_an_interval() {
        let l = WaitLimit::new(LimitConfig {
            adaptive: true,
            min: 1,
            max: 64,
            tolerance: 2.0,
            saturation: 0.9,
        });
        // One admission every 10 s: the burst goes through, the next does not, however
        // many are in flight (none here).
        l.interval_ns.store(10_000_000_000, Ordering::Relaxed);
        for i in 0..BURST {
            assert!(l.try_acquire(), "admission {i} of the burst");
            l.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        assert!(!l.try_acquire(), "past the burst");
        assert_eq!(l.in_flight(), 0, "a refused admission holds no slot");
        assert_eq!(l.shed.load(Ordering::Relaxed), 1, "and is counted shed");
        assert_eq!(l.rate(), Some(0.1));
        l.interval_ns.store(0, Ordering::Relaxed);
        assert!(l.try_acquire(), "no cap: only the count limit");
    }

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

    #[test]
    fn a_long_quiet_gap_closes_a_window_with_what_it_has() {
        let mut g = Gradient::new(8.0, 4.0, 256.0, 2.0);
        let t = Instant::now();
        assert_eq!(
            g.sample(Duration::from_micros(100), 8, 0, 0, t, || None),
            None
        );
        let r = g.sample(Duration::from_micros(100), 8, 0, 0, t + WINDOW_MAX, || None);
        assert_eq!(r.map(|d| d.limit), Some(11), "fast, at the limit: 8 + √8");
    }
}
