//! The shed level: a controller that moves it, interval by interval, toward the level at
//! which the node's queue sits at its target, and gives up on a queue that shedding
//! cannot shorten.
//!
//! Shedding shortens a queue only if the work it refuses does not come straight back.
//! Requests from many independent callers (an open loop) do not: past its capacity a
//! node's queue grows without end, and shedding the excess holds it at the target. A
//! closed loop's clients send again the moment they are answered, so its queue holds
//! as many requests as it has connections whatever is shed, and a refusal costs the
//! core nearly what a cheap answer does (measured: 10 µs against 36 µs for a store
//! read on one core). Past a few hundred connections on a core, shedding every miss
//! leaves the queue over the target, and the node would serve a tenth of its capacity
//! (measured, wrk with 1,024 connections: 3,500 of 28,000 a second). So when the level
//! has stood at 0.9 or more for half a second without bringing the queue under the
//! target, the controller lets the level go and tolerates the queue it had before
//! shedding began (plus a quarter): a bounded queue is answered, not refused. It sheds
//! again if the queue grows past that (more callers: a queue without bound), and forgets
//! what it tolerated after two seconds under the target.

use std::time::Duration;

/// How much one interval's error (the standing delay over the target, in targets)
/// moves the level: at twice the target it rises by 0.3 a second.
const GAIN: f64 = 0.03;
/// How much the delay's change since the last interval (in targets) moves it: a queue
/// that appears at once is met at once, and one that shrinks because the level bit
/// stops the level from overshooting.
const DAMP: f64 = 0.05;
/// Intervals at a level of 0.9 or more with the queue still over the target (net of
/// those not) after which shedding is judged futile.
const FUTILE_AFTER: u32 = 5;
/// Intervals under the target after which a tolerated queue is forgotten.
const FORGET_AFTER: u32 = 20;

/// One interval's readings.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reading {
    /// How long probes waited for the runtime over the interval (their median): the
    /// queue in front of the node's own work (`None`: no probe was answered at all in
    /// the interval, so the runtime is stuck for at least that long).
    pub runtime: Option<Duration>,
    /// The least time a store read waited for one of the `l2.max_store_fills` permits
    /// over the interval (`None`: no store read).
    pub store: Option<Duration>,
    /// The share of the CPU time of the cores it may use that the process spent over
    /// the interval (`None`: unknown).
    pub cpu: Option<f64>,
}

/// What the controller made of an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    /// The delay it judged, in seconds: the runtime's (counted only while the process
    /// is busy) or the store permits', whichever is longer.
    pub delay: f64,
    /// The delay it sheds past, in seconds: the target, or a bounded queue it found
    /// shedding could not shorten.
    pub target: f64,
    /// The shed level now, 0 (nothing shed) to 1 (every miss shed).
    pub level: f64,
}

/// The shed level and what moves it.
#[derive(Debug)]
pub(super) struct Control {
    /// The delay it aims at, in seconds (`http.queue_target`).
    target: f64,
    /// The process's CPU share below which a runtime queue is not its own doing
    /// (`http.waiting_saturation`).
    saturation: f64,
    level: f64,
    /// The last interval's delay.
    last: f64,
    /// The delay of the last interval that began with nothing shed.
    unshed: f64,
    /// A queue found bounded: no shedding up to this delay.
    tolerated: Option<f64>,
    /// Consecutive intervals at a high level with the queue over the target.
    pinned: u32,
    /// Consecutive intervals under the target.
    calm: u32,
}

impl Control {
    pub fn new(target: Duration, saturation: f64) -> Control {
        Control {
            target: target.as_secs_f64().max(1e-6),
            saturation,
            level: 0.0,
            last: 0.0,
            unshed: 0.0,
            tolerated: None,
            pinned: 0,
            calm: 0,
        }
    }

    /// Closes an interval of length `interval` with its readings.
    ///
    /// A runtime queue counts while the process itself keeps its cores busy: one built
    /// by other processes on the machine is not shortened by refusing this node's work.
    /// Store permits are this node's own queue, busy or not. The longer of the two is
    /// the delay; the level moves by its error against the target and by its change
    /// since the last interval (the discrete PI law of PIE, RFC 8033, in units of the
    /// target), never rises while the delay is under the target, and halves in a
    /// second interval running with the delay under half the target, so the end of an
    /// overload ends shedding within a few intervals while one lucky interval does not.
    pub fn step(&mut self, r: Reading, interval: Duration) -> Step {
        let busy = r.cpu.is_none_or(|c| c >= self.saturation);
        let runtime = if busy {
            r.runtime.unwrap_or(interval).as_secs_f64()
        } else {
            0.0
        };
        let delay = runtime.max(r.store.map_or(0.0, |d| d.as_secs_f64()));
        if self.level == 0.0 {
            self.unshed = delay;
        }
        if delay <= self.target {
            self.calm += 1;
            if self.calm >= FORGET_AFTER {
                self.tolerated = None;
            }
        } else {
            self.calm = 0;
        }
        let target = self.tolerated.map_or(self.target, |t| t.max(self.target));
        let error = ((delay - target) / target).clamp(-1.0, 3.0);
        let trend = ((delay - self.last) / target).clamp(-3.0, 3.0);
        let calm = delay * 2.0 <= target;
        let mut level = self.level + GAIN * error + DAMP * trend;
        if delay <= target {
            // Under the target the level never rises (a queue growing toward it is
            // not yet one to shed).
            level = level.min(self.level);
        }
        if calm && self.last * 2.0 <= target {
            level = level.min(self.level * 0.5);
        }
        self.last = delay;
        self.level = level.clamp(0.0, 1.0);
        // Counted up by each interval pinned at a high level over the target, down by
        // each other one: a queue served in rounds leaves an interval now and then
        // with a short median (measured at 1,024 connections), which is no sign that
        // shedding worked.
        if self.level >= 0.9 && delay > target {
            self.pinned += 1;
        } else {
            self.pinned = self.pinned.saturating_sub(1);
        }
        if self.pinned >= FUTILE_AFTER {
            // Shedding nearly every miss did not bring the queue under the target: a
            // bounded population (a closed loop, a caller's fixed pool) that comes
            // back as fast as it is refused. Answer it instead.
            self.tolerated = Some(self.unshed.max(delay) * 1.25);
            self.level = 0.0;
            self.pinned = 0;
        }
        Step {
            delay,
            target: self.tolerated.map_or(self.target, |t| t.max(self.target)),
            level: self.level,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);

    fn ms(x: u64) -> Option<Duration> {
        Some(Duration::from_millis(x))
    }

    fn busy(runtime_ms: u64) -> Reading {
        Reading {
            runtime: ms(runtime_ms),
            store: None,
            cpu: Some(1.0),
        }
    }

    fn control() -> Control {
        Control::new(Duration::from_millis(5), 0.8)
    }

    #[test]
    fn a_standing_queue_under_the_target_sheds_nothing() {
        let mut c = control();
        for _ in 0..100 {
            assert_eq!(c.step(busy(4), I).level, 0.0);
        }
    }

    #[test]
    fn a_standing_queue_past_the_target_raises_the_level_until_it_is_gone() {
        let mut c = control();
        let mut last = 0.0;
        for _ in 0..10 {
            let s = c.step(busy(10), I);
            assert!(s.level > last, "{} after {last}", s.level);
            last = s.level;
        }
        // Shedding worked: the queue is at the target; the level holds.
        let held = c.step(busy(5), I).level;
        assert!(held < last, "the drop in delay is met: {held} < {last}");
        let again = c.step(busy(5), I).level;
        assert_eq!(again, held, "at the target the level holds");
        // The queue is gone: down at once, half in the second calm interval, then
        // nothing within a few more.
        let first = c.step(busy(0), I).level;
        assert!(first < held);
        let second = c.step(busy(0), I).level;
        assert!(second <= first / 2.0, "{second} after {first}");
        let mut level = second;
        for _ in 0..6 {
            level = c.step(busy(0), I).level;
        }
        assert_eq!(level, 0.0);
    }

    #[test]
    fn a_runtime_queue_on_an_idle_process_is_not_ours_to_shed() {
        let mut c = control();
        for _ in 0..20 {
            let s = c.step(
                Reading {
                    runtime: ms(50),
                    store: None,
                    cpu: Some(0.3),
                },
                I,
            );
            assert_eq!((s.delay, s.level), (0.0, 0.0));
        }
    }

    #[test]
    fn a_store_permit_queue_counts_busy_or_not() {
        let mut c = control();
        let s = c.step(
            Reading {
                runtime: ms(0),
                store: ms(20),
                cpu: Some(0.1),
            },
            I,
        );
        assert_eq!(s.delay, 0.020);
        assert!(s.level > 0.0);
    }

    #[test]
    fn a_runtime_that_answered_no_probe_counts_as_queued_for_the_whole_interval() {
        let mut c = control();
        let s = c.step(
            Reading {
                runtime: None,
                store: None,
                cpu: None,
            },
            I,
        );
        assert_eq!(s.delay, 0.1);
        assert!(s.level > 0.2, "a stuck runtime is met at once: {}", s.level);
    }

    #[test]
    fn the_level_stays_between_nothing_and_everything() {
        let mut c = control();
        let mut most: f64 = 0.0;
        for _ in 0..200 {
            let level = c.step(busy(500), I).level;
            assert!((0.0..=1.0).contains(&level));
            most = most.max(level);
        }
        assert_eq!(most, 1.0);
        for _ in 0..200 {
            assert!(c.step(busy(0), I).level >= 0.0);
        }
    }

    #[test]
    fn a_queue_that_shedding_everything_leaves_over_the_target_is_tolerated() {
        let mut c = control();
        // A closed loop of 1,024 on one core: 40 ms unshed, 30 ms shedding every miss.
        let mut s = c.step(busy(40), I);
        let mut steps = 1;
        while s.level < 0.9 {
            s = c.step(busy(35), I);
            steps += 1;
            assert!(steps < 100, "the level reaches 0.9");
        }
        // The interval that reached 0.9 was the first of FUTILE_AFTER.
        for _ in 0..FUTILE_AFTER - 2 {
            s = c.step(busy(30), I);
            assert!(s.level >= 0.9);
        }
        s = c.step(busy(30), I);
        assert_eq!(s.level, 0.0, "futile: let go");
        assert_eq!(s.target, 0.050, "the unshed 40 ms and a quarter tolerated");
        // Back to its unshed queue: answered in full.
        for _ in 0..50 {
            assert_eq!(c.step(busy(40), I).level, 0.0);
        }
        // More callers: the queue grows past what was tolerated, and is shed again.
        assert!(c.step(busy(80), I).level > 0.0);
    }

    #[test]
    fn a_tolerated_queue_is_forgotten_after_two_seconds_under_the_target() {
        let mut c = control();
        c.tolerated = Some(0.05);
        for _ in 0..FORGET_AFTER - 1 {
            c.step(busy(1), I);
        }
        assert_eq!(c.step(busy(1), I).target, 0.005);
        assert!(
            c.step(busy(10), I).level > 0.0,
            "10 ms is over the target again"
        );
    }
}
