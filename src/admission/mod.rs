//! Admission of the lookups that wait (L1 misses, on HTTP and gRPC alike): shed on
//! queueing, not on being busy.
//!
//! A node at its capacity is busy, and that is not overload: a closed loop of any
//! number of clients keeps that many requests inside, however fast the node is, and
//! refusing some of them only brings them back sooner. What overload adds is a queue
//! that does not drain: requests arrive faster than they are answered, and each one
//! waits behind the ones before it. So the node measures that queue, and only that:
//!
//! - **the runtime's queue**: [`probe`] sends a stamped datagram down a socket pair
//!   into each serving runtime every 5 ms, and the delay before the runtime reads it
//!   is what a request arriving then waited before the node started on it. Counted
//!   only while the process itself keeps its cores busy (`http.waiting_saturation`):
//!   a queue other processes build is not shortened by refusing this node's work;
//! - **the store's queue**: how long store reads waited for one of the
//!   `l2.max_store_fills` permits (the store saturated by this node's own reads).
//!
//! Every 100 ms interval the *least* delay of each (CoDel's standing queue: a burst
//! that drains within the interval leaves some probe unhurried and moves nothing) is
//! compared with `http.queue_target` by [`control`], which moves a shed level between
//! 0 and 1 (the discrete PI law of PIE, RFC 8033). A miss is shed with a chance set by
//! the level, and misses of members missed moments ago go last: their fills make the
//! lookups after them cheap (a hot member of a cold cache), where a one-off id's fill
//! buys nothing. Until the level passes ½ only first misses are shed (with chance
//! 2 × level); past it, repeated ones too (2 × level − 1). So a node warms under the
//! load that keeps it busy, instead of shedding the fills that would warm it.
//!
//! Beside it the static cap: at most `http.max_waiting` lookups wait at once, past
//! which a miss is shed whatever the level (bounded memory whatever the clients do).
//! Answers from memory (plans, L1 hits) are never shed here: refusing one costs about
//! what answering it does.

mod control;
mod cpu;
mod probe;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use tokio_util::sync::CancellationToken;

use control::{Control, Reading};
use probe::{Probe, PROBE_EVERY};

/// The interval over which the standing delay is taken (CoDel's and Facebook's 100 ms).
const INTERVAL: Duration = Duration::from_millis(100);
/// Probes to an interval.
const PROBES: u32 = (INTERVAL.as_millis() / PROBE_EVERY.as_millis()) as u32;
/// How long a miss counts as "missed moments ago": the recent-miss filter's two
/// generations each cover this long.
const RECENT: Duration = Duration::from_secs(1);

/// How admission is set (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Shed on a standing queue; when false only `max_waiting` sheds.
    pub adaptive: bool,
    /// Most lookups waiting at once.
    pub max_waiting: usize,
    /// The standing delay past which misses are shed.
    pub queue_target: Duration,
    /// The process's CPU share below which a runtime queue is not its own.
    pub saturation: f64,
}

/// Which face a lookup came through, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Http,
    Grpc,
}

/// Which kind of lookup was shed, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Entitlement,
    Authorize,
    Batch,
}

/// Why a lookup was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `http.max_waiting` lookups were waiting already.
    Waiting,
    /// A standing queue: the shed level's draw.
    Queueing,
    /// A store read waited past its bound for a permit (`l2.max_store_fills`).
    Store,
}

const FACES: [(Face, &str); 2] = [(Face::Http, "http"), (Face::Grpc, "grpc")];
const PATHS: [(Path, &str); 3] = [
    (Path::Entitlement, "entitlement"),
    (Path::Authorize, "authorize"),
    (Path::Batch, "batch"),
];
const REASONS: [(Reason, &str); 3] = [
    (Reason::Waiting, "waiting"),
    (Reason::Queueing, "queueing"),
    (Reason::Store, "store"),
];

/// Admission of waiting lookups: the static cap, the shed level, and the probe that
/// sets it.
pub struct Admission {
    cfg: AdmissionConfig,
    in_flight: AtomicUsize,
    /// The chance a first miss is shed, and a repeated one, as fractions of
    /// `u64::MAX` (0: never).
    shed_first: AtomicU64,
    shed_repeat: AtomicU64,
    recent: Recent,
    probe: Probe,
    /// The least time a store read waited for its permit this interval (taken by the
    /// probe thread; `None` when there was no read).
    store_wait: Box<dyn Fn() -> Option<Duration> + Send + Sync>,
    shed: Vec<Counter>,
    /// The last interval's delay, target and level (`f64` bits), for `/metrics`:
    /// kept here and set when it renders, so each node in a process reports its own.
    last: [AtomicU64; 3],
}

impl Admission {
    /// `store_wait` gives (and resets) the least time a store read waited for its
    /// permit since it was last asked.
    pub fn new(
        cfg: AdmissionConfig,
        store_wait: impl Fn() -> Option<Duration> + Send + Sync + 'static,
    ) -> Admission {
        metrics::describe_counter!(
            "readtier_shed_total",
            "Lookups refused with 503 / UNAVAILABLE instead of waiting, by face, route and reason (waiting: http.max_waiting; queueing: a standing queue; store: no store permit in time); connections refused past their cap count with route=\"connection\""
        );
        let mut shed = Vec::with_capacity(FACES.len() * PATHS.len() * REASONS.len());
        for (_, face) in FACES {
            for (_, path) in PATHS {
                for (_, reason) in REASONS {
                    shed.push(metrics::counter!("readtier_shed_total", "face" => face, "route" => path, "reason" => reason));
                }
            }
        }
        Admission {
            cfg: AdmissionConfig {
                max_waiting: cfg.max_waiting.max(1),
                ..cfg
            },
            in_flight: AtomicUsize::new(0),
            shed_first: AtomicU64::new(0),
            shed_repeat: AtomicU64::new(0),
            recent: Recent::new(),
            probe: Probe::new(),
            store_wait: Box::new(store_wait),
            shed,
            last: [
                AtomicU64::new(0),
                AtomicU64::new(cfg.queue_target.as_secs_f64().to_bits()),
                AtomicU64::new(0),
            ],
        }
    }

    /// Admits one lookup of `member` (a batch: any of its missing ids) that will wait,
    /// or sheds it, counted under `face` and `path`. An admitted lookup holds its
    /// place until [`Admission::release`].
    #[inline]
    pub fn admit(&self, member: u64, face: Face, path: Path) -> Result<(), Reason> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let verdict = if before >= self.cfg.max_waiting {
            Err(Reason::Waiting)
        } else if self.draw(member) {
            Err(Reason::Queueing)
        } else {
            return Ok(());
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Err(reason) = verdict {
            self.count(face, path, reason);
        }
        verdict
    }

    /// Ends an admitted lookup.
    #[inline]
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a lookup shed elsewhere (a store read that found no permit in time).
    pub fn count(&self, face: Face, path: Path, reason: Reason) {
        let i = (face as usize * PATHS.len() + path as usize) * REASONS.len() + reason as usize;
        if let Some(c) = self.shed.get(i) {
            c.increment(1);
        }
    }

    /// Whether the shed level's draw refuses this miss: never while the level is 0,
    /// else by the chance of a first or a repeated miss.
    #[inline]
    fn draw(&self, member: u64) -> bool {
        // Marked whatever the level, so the first interval that sheds knows the
        // members missed before it (a miss costs tens of microseconds; this, ~50 ns).
        let repeat = self.recent.seen_then_mark(member);
        let first = self.shed_first.load(Ordering::Relaxed);
        if first == 0 {
            return false;
        }
        let chance = if repeat {
            self.shed_repeat.load(Ordering::Relaxed)
        } else {
            first
        };
        chance != 0 && random() <= chance
    }

    /// Appends this node's gauges to `/metrics`: lookups waiting, and the last
    /// interval's queue delay, target and shed level. Rendered from the node's own
    /// state, not set on the process-wide recorder, so two nodes in one process (the
    /// tests) each report their own.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let [delay, target, level] = self
            .last
            .each_ref()
            .map(|v| f64::from_bits(v.load(Ordering::Relaxed)));
        for (name, help, value) in [
            ("readtier_http_waiting", "Lookups waiting on Redis or the store (HTTP and gRPC), at most http.max_waiting", self.in_flight() as f64),
            ("readtier_queue_delay_seconds", "The queue the last 100 ms interval judged: the median delay of a probe through the serving runtime (while the process is busy), or the least wait of a store read for its permit, whichever is longer", delay),
            ("readtier_queue_target_seconds", "The queue delay past which misses are shed: http.queue_target, or a bounded queue (a closed loop) that shedding every miss did not bring under it", target),
            ("readtier_shed_level", "How much of the misses a queue past its target has the node shed: 0 none, 0.5 every first miss, 1 every miss", level),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
    }

    /// Whether misses are being shed now (the level is above 0).
    pub fn shedding(&self) -> bool {
        self.shed_first.load(Ordering::Relaxed) != 0
    }

    /// Lookups admitted and not yet released.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Starts the probe thread, which closes an interval every 100 ms and sets the
    /// level, until `stop` is cancelled. Nothing is started with the adaptive part
    /// off. Runtimes are measured once [`Admission::attach`]ed.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) -> std::io::Result<()> {
        if !self.cfg.adaptive {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("readtier-probe".into())
            .spawn(move || me.run(stop))?;
        Ok(())
    }

    /// Measures the runtime this is called on (each serving runtime calls it once).
    pub fn attach(&self) -> std::io::Result<()> {
        if !self.cfg.adaptive {
            return Ok(());
        }
        self.probe.attach()
    }

    /// The probe thread: a probe every 5 ms while the process is busy enough for its
    /// runtime queue to count, an interval closed every 100 ms. An idle node sends
    /// none and wakes once an interval: 200 wake-ups a second cost an idle node 6-17
    /// ms of CPU a second (docs/PERFORMANCE.md), for a reading it would not count.
    fn run(&self, stop: CancellationToken) {
        let mut control = Control::new(self.cfg.queue_target, self.cfg.saturation);
        let mut cpu_at = cpu::process_cpu().map(|(t, _)| (Instant::now(), t));
        let mut rotated = Instant::now();
        let mut ticks = 0u32;
        // Probing from the first interval: a node may start into a load.
        let mut probing = true;
        self.probe.take();
        (self.store_wait)();
        while !stop.is_cancelled() {
            if probing {
                std::thread::sleep(PROBE_EVERY);
                self.probe.send();
                ticks += 1;
                if ticks < PROBES {
                    continue;
                }
            } else {
                // One wake-up an interval, for the CPU share and the store's queue.
                std::thread::sleep(INTERVAL);
            }
            ticks = 0;
            let now = Instant::now();
            let cpu = cpu::process_cpu().and_then(|(total, cores)| {
                let (at, before) = cpu_at.replace((now, total))?;
                let wall = now.duration_since(at).as_secs_f64() * cores;
                (wall > 0.0).then(|| total.saturating_sub(before).as_secs_f64() / wall)
            });
            // Not probed: no queue of the runtime's counts (the process was not busy).
            let runtime = if probing {
                self.probe.take()
            } else {
                Some(Duration::ZERO)
            };
            // Probe in the next interval if this one came anywhere near busy.
            probing = cpu.is_none_or(|c| c >= self.cfg.saturation * 0.5);
            if !self.probe.attached() {
                continue;
            }
            let step = control.step(
                Reading {
                    runtime,
                    store: (self.store_wait)(),
                    cpu,
                },
                INTERVAL,
            );
            self.set_level(step.level);
            for (slot, v) in self.last.iter().zip([step.delay, step.target, step.level]) {
                slot.store(v.to_bits(), Ordering::Relaxed);
            }
            if now.duration_since(rotated) >= RECENT {
                self.recent.rotate();
                rotated = now;
            }
        }
    }

    /// First misses are shed with chance 2 × level, repeated ones 2 × level − 1.
    fn set_level(&self, level: f64) {
        let chance = |c: f64| (c.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        self.shed_repeat
            .store(chance(level * 2.0 - 1.0), Ordering::Relaxed);
        self.shed_first
            .store(chance(level * 2.0), Ordering::Relaxed);
    }
}

/// A uniform draw from this thread's xorshift generator (seeded per thread from the
/// clock and the thread's stack address: no syscall, no shared state).
#[inline]
fn random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let here = &x as *const u64 as u64;
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = mix(here ^ clock) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// splitmix64's finisher.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bits in each generation of the recent-miss filter (128 KiB): with a second of misses
/// at 100,000 a second in each, two bits a miss, a one-off id is taken for a repeat at
/// most ~7% of the time (~3% from each generation).
const BITS: usize = 1 << 20;

/// Which members missed within the last one or two [`RECENT`] periods: a Bloom filter
/// of two generations (TinyLFU's doorkeeper), the older cleared and made the newer at
/// each rotation.
struct Recent {
    generations: [Box<[AtomicU64]>; 2],
    /// The generation marked now (0 or 1).
    current: AtomicUsize,
}

impl Recent {
    fn new() -> Recent {
        let words = || (0..BITS / 64).map(|_| AtomicU64::new(0)).collect();
        Recent {
            generations: [words(), words()],
            current: AtomicUsize::new(0),
        }
    }

    /// Whether `member` was marked in either generation; marks it in the current one.
    fn seen_then_mark(&self, member: u64) -> bool {
        let h = mix(member);
        let bits = [(h as usize) % BITS, ((h >> 32) as usize) % BITS];
        let cur = self.current.load(Ordering::Relaxed) & 1;
        let has = |g: &[AtomicU64]| {
            bits.iter()
                .all(|b| g[b / 64].load(Ordering::Relaxed) & (1 << (b % 64)) != 0)
        };
        let seen = has(&self.generations[cur]) || has(&self.generations[cur ^ 1]);
        if !seen {
            for b in bits {
                self.generations[cur][b / 64].fetch_or(1 << (b % 64), Ordering::Relaxed);
            }
        }
        seen
    }

    /// The older generation cleared and made current.
    fn rotate(&self) {
        let next = (self.current.load(Ordering::Relaxed) & 1) ^ 1;
        for w in self.generations[next].iter() {
            w.store(0, Ordering::Relaxed);
        }
        self.current.store(next, Ordering::Relaxed);
    }
}

/// A place held by an admitted lookup, given back when dropped.
pub struct Admitted<A: std::ops::Deref<Target = Admission>>(pub A);

impl<A: std::ops::Deref<Target = Admission>> Drop for Admitted<A> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_waiting: usize) -> Admission {
        Admission::new(
            AdmissionConfig {
                adaptive: true,
                max_waiting,
                queue_target: Duration::from_millis(5),
                saturation: 0.8,
            },
            || None,
        )
    }

    #[test]
    fn admits_up_to_max_waiting_and_frees_on_release() {
        let a = admission(2);
        assert_eq!(a.admit(1, Face::Http, Path::Entitlement), Ok(()));
        assert_eq!(a.admit(2, Face::Grpc, Path::Authorize), Ok(()));
        assert_eq!(
            a.admit(3, Face::Http, Path::Entitlement),
            Err(Reason::Waiting)
        );
        assert_eq!(a.in_flight(), 2);
        a.release();
        assert_eq!(a.admit(3, Face::Http, Path::Batch), Ok(()));
    }

    /// Shares of 20,000 misses shed at a level: half first misses, half repeats.
    fn shed_shares(a: &Admission, level: f64, base: u64) -> (f64, f64) {
        a.set_level(level);
        let (mut first, mut repeat) = (0, 0);
        for id in base..base + 10_000 {
            // A first miss of `id`, then a repeat.
            if a.admit(id, Face::Http, Path::Entitlement).is_err() {
                first += 1;
            } else {
                a.release();
            }
            if a.admit(id, Face::Http, Path::Entitlement).is_err() {
                repeat += 1;
            } else {
                a.release();
            }
        }
        (first as f64 / 1e4, repeat as f64 / 1e4)
    }

    #[test]
    fn first_misses_are_shed_before_repeated_ones() {
        let a = admission(1024);
        assert_eq!(shed_shares(&a, 0.0, 0), (0.0, 0.0));
        let (first, repeat) = shed_shares(&a, 0.25, 100_000);
        assert!((first - 0.5).abs() < 0.03, "first {first}");
        // Shed first misses are marked too: a repeat is admitted.
        assert!(repeat < 0.01, "repeat {repeat}");
        let (first, repeat) = shed_shares(&a, 0.75, 200_000);
        assert!(first > 0.99, "first {first}");
        assert!((repeat - 0.5).abs() < 0.03, "repeat {repeat}");
        let (first, repeat) = shed_shares(&a, 1.0, 300_000);
        assert_eq!((first, repeat), (1.0, 1.0));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn a_miss_is_recent_for_one_to_two_periods() {
        let r = Recent::new();
        assert!(!r.seen_then_mark(7));
        assert!(r.seen_then_mark(7));
        r.rotate();
        assert!(r.seen_then_mark(7), "marked in the older generation");
        r.rotate();
        assert!(!r.seen_then_mark(7), "both generations rotated away");
        // Of 100,000 one-off ids in a generation, few are taken for repeats.
        let false_repeats = (1_000_000..1_100_000u64)
            .filter(|&id| r.seen_then_mark(id))
            .count();
        assert!(false_repeats < 3_000, "{false_repeats}");
    }
}
