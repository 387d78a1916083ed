//! The adaptive limit on requests that wait (on Redis or the store): what sheds an
//! overload instead of queueing it.
//!
//! A static cap cannot shed a CPU overload: the queue forms in front of the node
//! (socket buffers, the runtime's run queue), not among requests it has admitted, so a
//! cap high enough for a slow store is never reached while every answer waits longer
//! and longer (docs/PERFORMANCE.md, "Overload with static caps"). The limit here
//! follows latency instead, in the manner of Netflix's concurrency-limits gradient:
//!
//! - every admitted request's time in the node (admission to answer) is a sample;
//!   samples are averaged over short windows (at least [`WINDOW_SAMPLES`] samples and
//!   [`WINDOW_MIN`], at most [`WINDOW_MAX`]);
//! - the **no-load latency** is learned only from windows in which the node was not
//!   using half its limit: a lower average replaces it at once, a higher one moves it
//!   5% of the way (the store got slower for everyone). A node held at its limit
//!   through a long overload keeps the baseline it learned before, instead of
//!   drifting up with the overload's own latency;
//! - in a window at the limit, `gradient = clamp(tolerance × no_load / average, ½, 1)`
//!   and the new limit is `limit × gradient + √limit` (room for a short queue), blended
//!   in at one fifth a window, bounded by `http.min_waiting` and `http.max_waiting`.
//!   Latency within `tolerance ×` the no-load latency lets the limit grow by √limit;
//!   beyond it the limit shrinks by up to a tenth a window.
//!
//! Admission is one atomic add against the current limit; the gradient is updated
//! under a lock taken only by requests that waited anyway, and a request that finds it
//! taken skips its sample rather than wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fewest samples in a window.
const WINDOW_SAMPLES: u32 = 16;
/// Shortest window.
const WINDOW_MIN: Duration = Duration::from_millis(10);
/// Longest window (a window closes then with whatever samples it has).
const WINDOW_MAX: Duration = Duration::from_millis(100);

/// How the limit is set (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    /// Follow latency; when false the limit is `max` always.
    pub adaptive: bool,
    pub min: usize,
    pub max: usize,
    /// How many times the no-load latency a window may average before the limit falls.
    pub tolerance: f64,
}

/// Requests admitted to wait, against a limit that follows their latency.
pub struct WaitLimit {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    gradient: Option<Mutex<Gradient>>,
}

impl WaitLimit {
    pub fn new(cfg: LimitConfig) -> WaitLimit {
        let max = cfg.max.max(1);
        let min = cfg.min.clamp(1, max);
        // Start at the ceiling: a node that has measured nothing admits what the
        // static cap admits, and learns its no-load latency while below half of it.
        let start = max;
        WaitLimit {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(start),
            gradient: cfg.adaptive.then(|| {
                Mutex::new(Gradient::new(
                    start as f64,
                    min as f64,
                    max as f64,
                    cfg.tolerance,
                ))
            }),
        }
    }

    /// Admits one more request, or `false` when the limit is reached (shed it).
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit.load(Ordering::Relaxed) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Ends an admitted request that took `rtt` in the node.
    pub fn release(&self, rtt: Duration) {
        let in_flight = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(g) = &self.gradient else { return };
        // Contended only when two waited requests end at the same instant; the sample
        // is worth less than the wait.
        let Ok(mut g) = g.try_lock() else { return };
        if let Some(limit) = g.sample(rtt, in_flight, Instant::now()) {
            self.limit.store(limit, Ordering::Relaxed);
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

/// The gradient's state: the limit as a real number, the no-load latency, the window.
#[derive(Debug)]
struct Gradient {
    estimate: f64,
    min: f64,
    max: f64,
    tolerance: f64,
    /// No-load latency in seconds, once a window has measured it.
    no_load: Option<f64>,
    window_start: Option<Instant>,
    count: u32,
    sum: f64,
    /// Most requests in flight seen in the window.
    peak: usize,
}

impl Gradient {
    fn new(estimate: f64, min: f64, max: f64, tolerance: f64) -> Gradient {
        Gradient {
            estimate,
            min,
            max,
            tolerance,
            no_load: None,
            window_start: None,
            count: 0,
            sum: 0.0,
            peak: 0,
        }
    }

    /// Adds a sample; at the end of a window, the new limit.
    fn sample(&mut self, rtt: Duration, in_flight: usize, now: Instant) -> Option<usize> {
        let start = *self.window_start.get_or_insert(now);
        self.count += 1;
        self.sum += rtt.as_secs_f64();
        self.peak = self.peak.max(in_flight);
        let age = now.saturating_duration_since(start);
        if !(age >= WINDOW_MAX || (age >= WINDOW_MIN && self.count >= WINDOW_SAMPLES)) {
            return None;
        }
        let average = self.sum / f64::from(self.count);
        let at_limit = (self.peak as f64) * 2.0 >= self.estimate;
        self.window_start = Some(now);
        self.count = 0;
        self.sum = 0.0;
        self.peak = 0;
        match self.no_load {
            None => self.no_load = Some(average),
            Some(b) if !at_limit => {
                self.no_load = Some(if average < b {
                    average
                } else {
                    b + (average - b) * 0.05
                })
            }
            Some(_) => {}
        }
        if !at_limit {
            // Below half the limit the latency says nothing about the limit.
            return None;
        }
        let no_load = self.no_load.unwrap_or(average);
        let gradient = (self.tolerance * no_load / average.max(1e-9)).clamp(0.5, 1.0);
        let target = self.estimate * gradient + self.estimate.sqrt();
        self.estimate = (self.estimate * 0.8 + target * 0.2).clamp(self.min, self.max);
        Some(self.estimate.round().max(1.0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(adaptive: bool) -> LimitConfig {
        LimitConfig {
            adaptive,
            min: 4,
            max: 256,
            tolerance: 2.0,
        }
    }

    fn near(x: Option<f64>, y: f64) -> bool {
        x.is_some_and(|x| (x - y).abs() < 1e-12)
    }

    /// Feeds windows of `n` samples of `rtt` with `in_flight` requests in flight.
    fn windows(g: &mut Gradient, t: &mut Instant, k: usize, rtt_us: u64, in_flight: usize) {
        for _ in 0..k {
            for _ in 0..WINDOW_SAMPLES {
                *t += Duration::from_millis(1);
                g.sample(Duration::from_micros(rtt_us), in_flight, *t);
            }
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_on_release() {
        let l = WaitLimit::new(LimitConfig {
            max: 3,
            ..cfg(false)
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
        // Light load: 100 µs with few in flight teaches the no-load latency.
        windows(&mut g, &mut t, 5, 100, 3);
        assert!(near(g.no_load, 100e-6), "{:?}", g.no_load);
        assert_eq!(g.estimate, 256.0, "below half the limit nothing moves");
        // At the limit, 10× the no-load latency: down near the floor within 60 windows
        // (the √limit of queue room holds it at 4 with the gradient at ½), and the
        // no-load latency does not follow the overload up.
        windows(&mut g, &mut t, 60, 1_000, 256);
        assert!((4.0..8.0).contains(&g.estimate), "{}", g.estimate);
        assert!(near(g.no_load, 100e-6), "{:?}", g.no_load);
    }

    #[test]
    fn latency_within_the_tolerance_grows_the_limit_back() {
        let mut g = Gradient::new(4.0, 4.0, 256.0, 2.0);
        let mut t = Instant::now();
        windows(&mut g, &mut t, 1, 100, 1);
        // At the limit but fast (1.5× no-load): grows, by √limit a window at most.
        let mut last = g.estimate;
        for _ in 0..40 {
            let at_limit = g.estimate as usize;
            windows(&mut g, &mut t, 1, 150, at_limit);
            assert!(g.estimate >= last, "{} < {last}", g.estimate);
            assert!(g.estimate - last <= last.sqrt() * 0.2 + 1e-9);
            last = g.estimate;
        }
        assert!(g.estimate > 16.0, "grew to {}", g.estimate);
    }

    #[test]
    fn a_lasting_slower_store_raises_the_no_load_latency_slowly() {
        let mut g = Gradient::new(256.0, 4.0, 256.0, 2.0);
        let mut t = Instant::now();
        windows(&mut g, &mut t, 1, 100, 1);
        windows(&mut g, &mut t, 1, 1_100, 1);
        let b = g.no_load.unwrap();
        assert!((b - 150e-6).abs() < 1e-9, "5% of the way: {b}");
        windows(&mut g, &mut t, 200, 1_100, 1);
        assert!(g.no_load.unwrap() > 1_000e-6, "{:?}", g.no_load);
    }

    #[test]
    fn a_long_quiet_gap_closes_a_window_with_what_it_has() {
        let mut g = Gradient::new(8.0, 4.0, 256.0, 2.0);
        let t = Instant::now();
        assert_eq!(g.sample(Duration::from_micros(100), 8, t), None);
        // One more sample after the longest window: the window closes (the first
        // window only teaches the no-load latency, at the limit or not).
        let r = g.sample(Duration::from_micros(100), 8, t + WINDOW_MAX);
        assert!(r.is_some());
    }
}
