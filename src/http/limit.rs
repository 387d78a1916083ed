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
//!   held nothing back (less than half of it in use), smoothed over about ten of them:
//!   what this node's waiting path normally takes at the load it normally carries. A
//!   node held at its limit does not learn from its windows (admitted requests are
//!   fast because others were shed), nor from a window slow enough to lower the limit. After [`RELEARN`] with no unlimited window, the
//!   state it is in becomes the new normal: a store that got slower for good does not
//!   pin the limit at its floor for ever;
//! - `gradient = clamp(tolerance × no_load / average, ½, 1)`. At 1 (latency within
//!   `tolerance ×` the no-load latency), and with at least half the limit in use, the
//!   limit grows by √limit: a node back from an overload reaches a limit of 100 in
//!   about 20 windows. Below 1 the limit first drops to what was in use in the window
//!   (a limit above it admits nothing more), then by half the gradient's shortfall
//!   (at most a quarter a window: from a few hundred in use to a few in about 15
//!   windows; a fifth, at most a tenth, took ~40 windows, two seconds in which every
//!   answer waited, docs/PERFORMANCE.md). Bounded by `http.min_waiting` and
//!   `http.max_waiting`;
//! - a slow window lowers the limit only if the runtime's workers were busy for at
//!   least `http.waiting_saturation` of it (tokio's worker busy time): a slow Redis
//!   zone or a locked table makes requests wait with the workers idle, and shedding
//!   those would fail reads the fall-through can still answer (the fault suite counts
//!   them); an overloaded core keeps its workers busy.
//!
//! - **below a few in flight**: a limit of one still admits as fast as one request
//!   completes, and a fast store (50 µs a read) is 20,000 admissions a second: more
//!   than a core has left once it also sheds three times its capacity. So a slow,
//!   saturated window that leaves the limit at [`RATE_BELOW`] or less also caps the
//!   rate of admissions, at the window's admitted rate times the same factor; fast windows
//!   raise the cap by a quarter each (86× a second), and it is lifted once the load
//!   no longer reaches half of it. The cap is a GCRA (the "virtual scheduling" form of
//!   a token bucket): one atomic on admission, read only while a cap is set.
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
/// A limit at or below this no longer bounds the load by itself (each admitted
/// request is fast; a few in flight admit thousands a second): slow, saturated
/// windows then cap the rate too. Measured: at 3× capacity the limit held at 2-4 with
/// the core still saturated (docs/PERFORMANCE.md).
const RATE_BELOW: f64 = 4.0;
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
    /// The share of the runtime's worker time spent busy, over the window, at or above
    /// which a slow window lowers the limit (0: any slow window does).
    pub saturation: f64,
}

/// Requests admitted to wait, against a limit that follows their latency.
pub struct WaitLimit {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Nanoseconds between admissions while a rate cap is set; 0: no cap.
    interval_ns: AtomicU64,
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

    /// Ends an admitted request that took `rtt` in the node.
    pub fn release(&self, rtt: Duration) {
        let in_flight = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(g) = &self.gradient else { return };
        // Contended only when two waited requests end at the same instant; the sample
        // is worth less than the wait.
        let Ok(mut g) = g.try_lock() else { return };
        if let Some(d) = g.sample(rtt, in_flight, Instant::now(), runtime_busy) {
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

/// The runtime's workers' busy time so far, summed, and how many workers there are
/// (tokio's stable runtime metrics: a few atomic loads, read once a window).
fn runtime_busy() -> Option<(Duration, usize)> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let m = handle.metrics();
    let n = m.num_workers();
    let busy = (0..n).map(|w| m.worker_total_busy_duration(w)).sum();
    Some((busy, n))
}

/// The gradient's state: the limit as a real number, the no-load latency, the window.
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
    /// The workers' busy time when the last window closed, and when that was.
    busy: Option<(Instant, Duration)>,
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
            busy: None,
            rate: None,
        }
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
        now: Instant,
        busy: impl FnOnce() -> Option<(Duration, usize)>,
    ) -> Option<Decision> {
        let start = *self.window_start.get_or_insert(now);
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
        // Was the core the bottleneck? Workers busy for at least `saturation` of the
        // window. Without runtime metrics, yes; in the first window measured, no (it
        // has nothing to compare with, and holding is the safe side).
        let saturated = match busy() {
            Some((total, workers)) => {
                let was = self.busy.replace((now, total));
                match was {
                    Some((at, before)) if now > at && workers > 0 => {
                        let wall = now.duration_since(at).as_secs_f64() * workers as f64;
                        total.saturating_sub(before).as_secs_f64() / wall >= self.saturation
                    }
                    _ => false,
                }
            }
            None => true,
        };
        self.window_start = Some(now);
        self.count = 0;
        self.sum = 0.0;
        self.peak = 0;

        let limited = used * 2.0 >= self.estimate;
        let stale = self
            .unlimited_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RELEARN);
        let known = match self.no_load {
            Some(b) if !stale => b,
            // Nothing known, or a minute held at the limit: this is the normal now.
            _ => average,
        };
        let gradient = (self.tolerance * known / average.max(1e-9)).clamp(0.5, 1.0);
        // Learned from unlimited windows within the tolerance only: the first slow
        // window of an overload is not normal.
        self.no_load = Some(if !limited && gradient >= 1.0 {
            known + (average - known) * LEARN
        } else {
            known
        });
        if (!limited && gradient >= 1.0) || stale {
            self.unlimited_at = Some(now);
        }

        let next = if gradient >= 1.0 {
            if let Some(rate) = self.rate {
                // Capped and fast: raise the cap, and lift it once the load no longer
                // reaches half of it; the count limit grows only after that.
                self.rate = (admitted * 2.0 >= rate).then_some(rate * 1.25);
                return Some(self.decision());
            }
            if !limited {
                // Below half the limit a fast window says nothing about a higher one.
                return None;
            }
            self.estimate + self.estimate.sqrt()
        } else {
            if !saturated {
                // Slow, but the workers were not: a dependency is slow (a Redis zone
                // down, a locked table), not the core. Shedding would fail reads the
                // fall-through can still answer; the static caps bound the waiting.
                return None;
            }
            let base = self.estimate.min(used.max(self.min));
            let next = (base * (0.5 + 0.5 * gradient)).clamp(self.min, self.max);
            if next <= RATE_BELOW {
                // A few in flight and still too slow: what they admit is too much.
                // Cap the rate below what this window admitted.
                let base = self.rate.map_or(admitted, |r| r.min(admitted));
                self.rate = Some((base * (0.5 + 0.5 * gradient)).max(MIN_RATE));
            }
            next
        };
        self.estimate = next.clamp(self.min, self.max);
        Some(self.decision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-12
    }

    /// Feeds `k` windows of samples of `rtt_us` with `in_flight` requests in flight,
    /// just over [`WINDOW_MIN`] a window.
    fn windows(g: &mut Gradient, t: &mut Instant, k: usize, rtt_us: u64, in_flight: usize) {
        for _ in 0..k {
            for _ in 0..WINDOW_SAMPLES {
                // Rounded up: the window closes at its last sample, not one after.
                *t += WINDOW_MIN / (WINDOW_SAMPLES - 1) + Duration::from_micros(100);
                g.sample(Duration::from_micros(rtt_us), in_flight, *t, || None);
            }
        }
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
        l.release(Duration::from_millis(1));
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
        let mut g = Gradient::new(256.0, 1.0, 256.0, 2.0);
        let mut t = Instant::now();
        windows(&mut g, &mut t, 1, 100, 1);
        // Unlimited windows at 200 µs: a tenth of the way each.
        windows(&mut g, &mut t, 1, 200, 1);
        assert!(near(g.no_load.unwrap(), 110e-6), "{:?}", g.no_load);
        windows(&mut g, &mut t, 100, 200, 1);
        assert!(
            (g.no_load.unwrap() - 200e-6).abs() < 1e-7,
            "{:?}",
            g.no_load
        );
        // Held at its floor by a store 25× slower for good: the limit stays down for
        // a minute, then the slower store is the new normal and the limit grows again.
        windows(&mut g, &mut t, 200, 5_000, 300);
        assert_eq!(g.estimate, 1.0);
        assert!(near(
            g.no_load.unwrap(),
            g.no_load.unwrap().min(200e-6 + 1e-7)
        ));
        windows(&mut g, &mut t, 70_000 / 50, 5_000, 300);
        assert!(near(g.no_load.unwrap(), 5_000e-6), "{:?}", g.no_load);
        assert!(g.estimate > 100.0, "{}", g.estimate);
    }

    #[test]
    fn a_slow_window_with_idle_workers_holds_the_limit() {
        let mut g = Gradient::new(64.0, 1.0, 256.0, 2.0);
        g.saturation = 0.9;
        let mut t = Instant::now();
        let mut busy = Duration::ZERO;
        // Teach 100 µs with idle workers.
        windows(&mut g, &mut t, 2, 100, 1);
        // 10× slower, all 64 in use, but the two workers busy a tenth of the time.
        for _ in 0..10 {
            for _ in 0..WINDOW_SAMPLES {
                t += WINDOW_MIN / (WINDOW_SAMPLES - 1) + Duration::from_micros(100);
                busy += (WINDOW_MIN / (WINDOW_SAMPLES - 1)) / 5;
                g.sample(Duration::from_micros(1_000), 64, t, || Some((busy, 2)));
            }
        }
        assert_eq!(g.estimate, 64.0, "a slow dependency is not shed");
        // The same windows with the workers busy all the time: the limit falls.
        for _ in 0..3 {
            for _ in 0..WINDOW_SAMPLES {
                let step = WINDOW_MIN / (WINDOW_SAMPLES - 1) + Duration::from_micros(100);
                t += step;
                busy += step * 2;
                g.sample(Duration::from_micros(1_000), 64, t, || Some((busy, 2)));
            }
        }
        assert!(g.estimate < 64.0, "{}", g.estimate);
    }

    #[test]
    fn a_few_in_flight_and_slow_caps_the_rate_and_fast_windows_lift_it() {
        let mut g = Gradient::new(64.0, 1.0, 256.0, 2.0);
        let mut t = Instant::now();
        windows(&mut g, &mut t, 2, 100, 1);
        assert_eq!(g.rate, None, "fast: no cap");
        // 10× slower with 32 in flight, the core saturated (no runtime metrics: taken
        // as saturated): the count limit falls to what is in use, no cap yet.
        windows(&mut g, &mut t, 1, 1_000, 32);
        assert_eq!((g.estimate, g.rate), (32.0 * 0.75, None));
        // Slow with 3 in flight: the limit falls to 2.25, and the rate is capped too:
        // the window admitted 32 in ~52 ms (~585/s), the cap goes below that by the
        // gradient's factor (½ → 0.75).
        windows(&mut g, &mut t, 1, 1_000, 3);
        let first = g.rate.expect("capped");
        assert!((400.0..460.0).contains(&first), "{first}");
        // More slow windows: down, never below MIN_RATE, nor the count limit below 1.
        windows(&mut g, &mut t, 100, 1_000, 1);
        assert_eq!(g.rate, Some(MIN_RATE));
        assert_eq!(g.estimate, 1.0);
        // Fast again and the load still reaches the cap: up by a quarter a window.
        g.rate = Some(400.0);
        windows(&mut g, &mut t, 1, 100, 1);
        assert_eq!(g.rate, Some(500.0));
        // The load (~620/s) no longer reaches half the cap: lifted; then the count
        // limit grows as before.
        g.rate = Some(2_000.0);
        windows(&mut g, &mut t, 1, 100, 1);
        assert_eq!(g.rate, None);
        windows(&mut g, &mut t, 1, 100, 1);
        assert_eq!(g.estimate, 2.0, "1 + √1");
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
        assert_eq!(l.rate(), Some(0.1));
        l.interval_ns.store(0, Ordering::Relaxed);
        assert!(l.try_acquire(), "no cap: only the count limit");
    }

    #[test]
    fn a_long_quiet_gap_closes_a_window_with_what_it_has() {
        let mut g = Gradient::new(8.0, 4.0, 256.0, 2.0);
        let t = Instant::now();
        assert_eq!(g.sample(Duration::from_micros(100), 8, t, || None), None);
        let r = g.sample(Duration::from_micros(100), 8, t + WINDOW_MAX, || None);
        assert_eq!(r.map(|d| d.limit), Some(11), "fast, at the limit: 8 + √8");
    }
}
