//! Results: what each connection recorded, and the report built from it (JSON and SVG).
//!
//! Two clocks are kept apart on purpose:
//! - by **intended send time** (the slot a send was due in, open loop; the send itself,
//!   closed loop): sends, late sends, answers and their latency belong to the stage and
//!   second they were due in, so `offered = sent + dropped` and
//!   `sent = answered + transport errors + unanswered` hold in every stage and second;
//! - by **completion time**: `completed` counts answers (of any send, warm-up ones
//!   included) that arrived inside a second or stage of the window. The achieved rate
//!   is completions inside the window ÷ the window — what the target really delivered,
//!   whatever the schedule asked for.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::expect::{Observed, Verdict};

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Counters of one stage or second of the window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Sends made (attempted) that were due here.
    pub sent: u64,
    /// … of which made later than the late bound.
    pub late: u64,
    /// … of which late with their connection free: the generator's own lateness.
    pub late_generator: u64,
    /// Answers to sends due here: 2xx/3xx, shed (503 with Retry-After), other statuses.
    pub ok: u64,
    pub shed: u64,
    pub error_status: u64,
    /// … of which arrived after the window closed, inside the grace.
    pub in_grace: u64,
    /// Sends due here that failed at the transport (connect, reset, bad answer).
    pub transport_errors: u64,
    /// Answers of any send that *completed* here (by completion time).
    pub completed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.late += o.late;
        self.late_generator += o.late_generator;
        self.ok += o.ok;
        self.shed += o.shed;
        self.error_status += o.error_status;
        self.in_grace += o.in_grace;
        self.transport_errors += o.transport_errors;
        self.completed += o.completed;
    }

    pub fn answered(&self) -> u64 {
        self.ok + self.shed + self.error_status
    }

    /// Sent, but neither answered nor failed by the end of the grace.
    pub fn unanswered(&self) -> u64 {
        self.sent
            .saturating_sub(self.answered() + self.transport_errors)
    }

    pub fn errors(&self) -> u64 {
        self.error_status + self.transport_errors + self.unanswered()
    }
}

/// A stage or a second: counters and the latency of its non-shed answers.
pub struct Bucket {
    pub counts: Counts,
    pub latency: Histogram<u64>,
    pub shed_latency: Histogram<u64>,
}

impl Bucket {
    pub fn new() -> Bucket {
        Bucket {
            counts: Counts::default(),
            latency: histogram(),
            shed_latency: histogram(),
        }
    }

    fn merge(&mut self, o: &Bucket) {
        self.counts.add(&o.counts);
        let _ = self.latency.add(&o.latency);
        let _ = self.shed_latency.add(&o.shed_latency);
    }
}

fn at(v: &mut Vec<Bucket>, i: usize) -> &mut Bucket {
    while v.len() <= i {
        v.push(Bucket::new());
    }
    &mut v[i]
}

/// Where a send belongs in the window: (stage, second).
pub type Place = (usize, usize);

/// Whether a send went out later than the late bound, and whose doing that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    No,
    /// Its connection was still waiting for the target's previous answer.
    Target,
    /// Its connection was free: the generator itself was late.
    Generator,
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Shed,
    ErrorStatus,
}

impl Outcome {
    /// 503 with `Retry-After` is the target shedding load, apart from errors.
    pub fn of(status: u16, retry_after: bool) -> Outcome {
        if (200..400).contains(&status) {
            Outcome::Ok
        } else if status == 503 && retry_after {
            Outcome::Shed
        } else {
            Outcome::ErrorStatus
        }
    }
}

/// What one connection task recorded.
pub struct Recorder {
    pub stages: Vec<Bucket>,
    pub seconds: Vec<Bucket>,
    /// How late the generator sent when the connection was free (open loop), µs.
    pub send_lag: Histogram<u64>,
    /// How long answers waited in the socket before the generator read them, µs.
    pub read_lag: Histogram<u64>,
    /// How long requests waited for their connection task to write them, µs.
    pub write_lag: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub served_from: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            stages: Vec::new(),
            seconds: Vec::new(),
            send_lag: histogram(),
            read_lag: histogram(),
            write_lag: histogram(),
            statuses: BTreeMap::new(),
            served_from: BTreeMap::new(),
        }
    }

    /// A send due in the window was made; lateness only in open loop.
    pub fn sent(&mut self, (stage, second): Place, late: Late, lag_us: Option<u64>) {
        for b in [at(&mut self.stages, stage), at(&mut self.seconds, second)] {
            b.counts.sent += 1;
            b.counts.late += u64::from(late != Late::No);
            b.counts.late_generator += u64::from(late == Late::Generator);
        }
        if let Some(l) = lag_us {
            self.send_lag.saturating_record(l);
        }
    }

    /// The generator's own waits around a send due in the window: for its connection
    /// task to write it, and for its answer to be read.
    pub fn lags(&mut self, write_us: u64, read_us: u64) {
        self.write_lag.saturating_record(write_us);
        self.read_lag.saturating_record(read_us);
    }

    /// The answer to a send due in the window.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        (stage, second): Place,
        micros: u64,
        status: u16,
        outcome: Outcome,
        served_from: Option<&[u8]>,
        in_grace: bool,
    ) {
        let micros = micros.clamp(1, 60_000_000);
        for b in [at(&mut self.stages, stage), at(&mut self.seconds, second)] {
            match outcome {
                Outcome::Ok => b.counts.ok += 1,
                Outcome::Shed => b.counts.shed += 1,
                Outcome::ErrorStatus => b.counts.error_status += 1,
            }
            b.counts.in_grace += u64::from(in_grace);
            let h = if outcome == Outcome::Shed {
                &mut b.shed_latency
            } else {
                &mut b.latency
            };
            let _ = h.record(micros);
        }
        *self.statuses.entry(status).or_insert(0) += 1;
        if let Some(f) = served_from {
            let f = String::from_utf8_lossy(f);
            match self.served_from.get_mut(f.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    self.served_from.insert(f.into_owned(), 1);
                }
            }
        }
    }

    /// A send due in the window failed at the transport.
    pub fn transport_error(&mut self, (stage, second): Place) {
        at(&mut self.stages, stage).counts.transport_errors += 1;
        at(&mut self.seconds, second).counts.transport_errors += 1;
    }

    /// An answer (to any send) completed inside the window, in this stage and second.
    pub fn completed(&mut self, (stage, second): Place) {
        at(&mut self.stages, stage).counts.completed += 1;
        at(&mut self.seconds, second).counts.completed += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (i, b) in other.stages.iter().enumerate() {
            at(&mut self.stages, i).merge(b);
        }
        for (i, b) in other.seconds.iter().enumerate() {
            at(&mut self.seconds, i).merge(b);
        }
        let _ = self.send_lag.add(&other.send_lag);
        let _ = self.read_lag.add(&other.read_lag);
        let _ = self.write_lag.add(&other.write_lag);
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.served_from {
            *self.served_from.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// All stages together.
    pub fn total(&self) -> Bucket {
        let mut t = Bucket::new();
        for b in &self.stages {
            t.merge(b);
        }
        t
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Percentiles {
    /// Values the percentiles are taken over.
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// In milliseconds, from a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the window.
#[derive(Serialize)]
pub struct Second {
    pub t: usize,
    /// Sends due in this second (open loop).
    pub offered: Option<u64>,
    /// Sends due in this second that were made.
    pub sent: u64,
    /// Answers completed in this second (of any send): the achieved rate, second by second.
    pub completed: u64,
    /// Answers to sends due in this second: 2xx/3xx, and shed (503 with Retry-After).
    pub ok: u64,
    pub shed: u64,
    /// Latency of answers to sends due in this second (shed ones apart).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Freshness {
    pub writes: u64,
    /// Writes not seen on every node before the probe gave up.
    pub unseen: u64,
    pub commit_to_visible_ms: Percentiles,
    pub per_node: BTreeMap<String, Percentiles>,
    /// Every write's commit-to-visible on the slowest node, in milliseconds, in order
    /// of commit: the raw distribution (`loadtest/draw_freshness.py` draws it).
    pub samples_ms: Vec<f64>,
}

/// Accounting of the sends due in the window (or a stage).
#[derive(Serialize, Debug, Clone)]
pub struct Sends {
    /// Due by the schedule (open loop).
    pub offered: Option<u64>,
    /// Made before the window closed.
    pub sent: u64,
    /// Never made before the window closed (open loop): offered − sent.
    pub dropped: Option<u64>,
    /// Made later than the late bound after they were due (open loop).
    pub late: Option<u64>,
    /// … of which late although their connection was free: the generator's own doing
    /// (the rest waited for the target's previous answer on their connection).
    pub late_generator: Option<u64>,
}

/// How the sends due in the window ended.
#[derive(Serialize, Debug, Clone)]
pub struct Answers {
    pub ok: u64,
    /// 503 with Retry-After: the target shedding load (not errors).
    pub shed: u64,
    /// Any other status outside 2xx/3xx.
    pub error_status: u64,
    /// Answers (of the above) that came after the window closed, inside the grace.
    pub after_window_in_grace: u64,
    pub transport_errors: u64,
    /// Sent but not answered by the end of the grace.
    pub unanswered: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Generator {
    /// How late sends were made when their connection was free (open loop): the
    /// generator's own lateness, apart from waiting for a slow target.
    pub send_lag_ms: Option<Percentiles>,
    /// How long answers sat in the generator's socket buffers before it read them
    /// (from the kernel's receive stamps; zero where it gives none): the generator's
    /// lag on the receive side, not in the latency.
    pub read_lag_ms: Percentiles,
    /// How long requests waited, once made, for the generator's connection task to
    /// write them: the generator's lag on the send side after `send_lag`, not in the
    /// latency.
    pub write_lag_ms: Percentiles,
    /// Process CPU time over the window (Linux), and the cores it may run on. In open
    /// loop it reads high even when every send is on time (the generator spins in the
    /// last millisecond before each send): the send lag is the measure there.
    pub cpu_seconds: Option<f64>,
    pub cores: usize,
    /// cpu_seconds ÷ (window × cores).
    pub cpu_utilisation: Option<f64>,
}

#[derive(Serialize)]
pub struct StageReport {
    pub stage: usize,
    /// Seconds from the start of the window.
    pub start_s: f64,
    pub duration_s: f64,
    pub rate_from: Option<f64>,
    pub rate_to: Option<f64>,
    pub sends: Sends,
    /// Answers completed inside this stage ÷ its duration.
    pub achieved_rps: f64,
    /// Of those, answers neither shed nor errors, ÷ its duration.
    pub served_rps: f64,
    pub completed: u64,
    pub answers: Answers,
    pub errors: u64,
    pub latency_ms: Percentiles,
    pub shed_latency_ms: Percentiles,
}

#[derive(Serialize)]
pub struct Report {
    pub mode: String,
    pub targets: Vec<String>,
    pub connections: usize,
    /// The measured window, its warm-up, and the grace given to answers in flight when
    /// it closed.
    pub window_seconds: f64,
    pub warmup_seconds: f64,
    pub grace_seconds: f64,
    /// When the window opened, seconds since the Unix epoch (to line up runs from
    /// several generator machines).
    pub window_start_unix_s: f64,
    /// From the start of the process to the report; of which opening the connections,
    /// before the schedule started.
    pub wall_seconds: f64,
    pub connect_seconds: f64,
    /// Sends per second the schedule asked for over the window (open loop).
    pub offered_rps: Option<f64>,
    /// Answers completed inside the window ÷ the window (shed ones included).
    pub achieved_rps: f64,
    /// Answers neither shed (503) nor errors ÷ the window: what the target served.
    pub served_rps: f64,
    /// achieved_rps ÷ offered_rps (open loop).
    pub achieved_ratio: Option<f64>,
    pub late_bound_ms: Option<f64>,
    pub sends: Sends,
    pub answers: Answers,
    /// transport errors + error statuses + unanswered.
    pub errors: u64,
    /// Latency of answers (shed ones apart) to sends due in the window, from when each
    /// was due (open loop) or sent (closed loop).
    pub latency_ms: Percentiles,
    pub shed_latency_ms: Percentiles,
    pub statuses: BTreeMap<u16, u64>,
    pub served_from: BTreeMap<String, u64>,
    pub generator: Generator,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageReport>,
    pub timeline: Vec<Second>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<Verdict>,
    pub freshness: Option<Freshness>,
}

/// The rates of a stage as given (open loop).
#[derive(Debug, Clone, Copy)]
pub struct StagePlan {
    pub start_s: f64,
    pub duration_s: f64,
    pub from: f64,
    pub to: f64,
    /// Sends due in it.
    pub offered: u64,
}

pub fn answers(c: &Counts) -> Answers {
    Answers {
        ok: c.ok,
        shed: c.shed,
        error_status: c.error_status,
        after_window_in_grace: c.in_grace,
        transport_errors: c.transport_errors,
        unanswered: c.unanswered(),
    }
}

pub fn sends(c: &Counts, offered: Option<u64>) -> Sends {
    Sends {
        offered,
        sent: c.sent,
        dropped: offered.map(|o| o.saturating_sub(c.sent)),
        late: offered.map(|_| c.late),
        late_generator: offered.map(|_| c.late_generator),
    }
}

pub fn stage_reports(rec: &Recorder, plans: &[StagePlan]) -> Vec<StageReport> {
    let empty = Bucket::new();
    plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let b = rec.stages.get(i).unwrap_or(&empty);
            StageReport {
                stage: i,
                start_s: p.start_s,
                duration_s: p.duration_s,
                rate_from: Some(p.from),
                rate_to: Some(p.to),
                sends: sends(&b.counts, Some(p.offered)),
                achieved_rps: b.counts.completed as f64 / p.duration_s,
                served_rps: b.counts.ok as f64 / p.duration_s,
                completed: b.counts.completed,
                answers: answers(&b.counts),
                errors: b.counts.errors(),
                latency_ms: Percentiles::of(&b.latency),
                shed_latency_ms: Percentiles::of(&b.shed_latency),
            }
        })
        .collect()
}

impl Report {
    /// The figures `--expect` clauses are checked against.
    pub fn observed(&self) -> Observed {
        let l = &self.latency_ms;
        Observed {
            latency: [l.p50, l.p90, l.p99, l.p999, l.max],
            send_lag_p99: self.generator.send_lag_ms.as_ref().map(|p| p.p99),
            errors: self.errors,
            shed: self.answers.shed,
            dropped: self.sends.dropped,
            late: self.sends.late,
            sent: self.sends.sent,
            offered: self.sends.offered,
            achieved_ratio: self.achieved_ratio,
            rps: self.achieved_rps,
            served_rps: self.served_rps,
        }
    }

    /// An SVG: answers per second against the offered rate, p50/p99 over time (stages
    /// marked on both), and the latency percentiles.
    pub fn svg(&self, total: &Histogram<u64>) -> String {
        let (w, h) = (900.0, 660.0);
        let offered = self.offered_rps.map_or_else(
            || "closed loop".to_string(),
            |r| format!("offered {r:.0}/s"),
        );
        let mut s = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
             <rect width='100%' height='100%' fill='white'/>\
             <text x='20' y='22' font-size='15'>readtier loadtest: {} connections, {offered}, achieved {:.0}/s (served {:.0}/s), p99 {:.2} ms</text>\
             <text x='20' y='40'>dropped {}, late {}, errors {}, shed {}, send lag p99 {}</text>",
            self.connections,
            self.achieved_rps,
            self.served_rps,
            self.latency_ms.p99,
            self.sends.dropped.map_or("-".into(), |d| d.to_string()),
            self.sends.late.map_or("-".into(), |d| d.to_string()),
            self.errors,
            self.answers.shed,
            self.generator
                .send_lag_ms
                .as_ref()
                .map_or("-".into(), |p| format!("{:.3} ms", p.p99)),
        );
        let panel = |y0: f64, title: &str, s: &mut String| {
            s.push_str(&format!(
                "<text x='60' y='{}'>{title}</text><line x1='60' y1='{}' x2='860' y2='{}' stroke='#999'/><line x1='60' y1='{}' x2='60' y2='{}' stroke='#999'/>",
                y0 - 6.0,
                y0 + 160.0,
                y0 + 160.0,
                y0,
                y0 + 160.0
            ));
        };
        let n = self.timeline.len().max(1) as f64;
        let x = |i: usize| 60.0 + 800.0 * (i as f64 + 0.5) / n;
        let polyline = |vals: &[f64], y0: f64, max: f64, style: &str, s: &mut String| {
            let pts: Vec<String> = vals
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y0 + 160.0 - 150.0 * v / max))
                .collect();
            s.push_str(&format!(
                "<polyline fill='none' {style} stroke-width='2' points='{}'/>",
                pts.join(" ")
            ));
        };
        let stage_marks = |y0: f64, labels: bool, s: &mut String| {
            for st in &self.stages {
                let sx = 60.0 + 800.0 * st.start_s / n;
                s.push_str(&format!(
                    "<line x1='{sx:.1}' y1='{y0}' x2='{sx:.1}' y2='{}' stroke='#bbb' stroke-dasharray='4 3'/>",
                    y0 + 160.0
                ));
                if labels {
                    let rate = match (st.rate_from, st.rate_to) {
                        (Some(a), Some(b)) if a != b => format!("{a:.0}..{b:.0}/s"),
                        (Some(a), _) => format!("{a:.0}/s"),
                        _ => String::new(),
                    };
                    s.push_str(&format!(
                        "<text x='{:.1}' y='{}' fill='#777' font-size='10'>stage {}: {rate}, achieved {:.0}/s</text>",
                        sx + 3.0,
                        y0 + 10.0 + 11.0 * (st.stage % 2) as f64,
                        st.stage,
                        st.achieved_rps
                    ));
                }
            }
        };
        // Panel 1: answers completed per second against sends due per second.
        panel(
            80.0,
            "per second: answers completed (blue), sends due by the schedule (grey, dashed)",
            &mut s,
        );
        let done: Vec<f64> = self.timeline.iter().map(|t| t.completed as f64).collect();
        let due: Vec<f64> = self
            .timeline
            .iter()
            .filter_map(|t| t.offered.map(|o| o as f64))
            .collect();
        let max1 = done
            .iter()
            .chain(due.iter())
            .cloned()
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        if !due.is_empty() {
            polyline(
                &due,
                80.0,
                max1,
                "stroke='#888' stroke-dasharray='6 4'",
                &mut s,
            );
        }
        polyline(&done, 80.0, max1, "stroke='#1f77b4'", &mut s);
        s.push_str(&format!(
            "<text x='5' y='94' fill='#1f77b4'>{max1:.0}</text>"
        ));
        stage_marks(80.0, true, &mut s);
        // Panel 2: latency by second the sends were due.
        panel(
            290.0,
            "latency (ms) by second the sends were due: p50 (green), p99 (red)",
            &mut s,
        );
        let p99: Vec<f64> = self.timeline.iter().map(|t| t.p99_ms).collect();
        let p50: Vec<f64> = self.timeline.iter().map(|t| t.p50_ms).collect();
        let max99 = p99.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
        polyline(&p99, 290.0, max99, "stroke='#d62728'", &mut s);
        polyline(&p50, 290.0, max99, "stroke='#2ca02c'", &mut s);
        s.push_str(&format!(
            "<text x='5' y='304' fill='#d62728'>{max99:.3}</text>"
        ));
        stage_marks(290.0, false, &mut s);
        // Panel 3: latency by percentile (50, 90, 99, 99.9, 99.99, max).
        panel(
            500.0,
            "latency (ms) by percentile: 50, 90, 99, 99.9, 99.99, max",
            &mut s,
        );
        let qs = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];
        let vals: Vec<f64> = qs
            .iter()
            .map(|q| total.value_at_quantile(*q) as f64 / 1000.0)
            .collect();
        let max = vals.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
        for (i, v) in vals.iter().enumerate() {
            let bx = 80.0 + i as f64 * 130.0;
            let bh = 150.0 * v / max;
            s.push_str(&format!(
                "<rect x='{bx}' y='{:.1}' width='90' height='{bh:.1}' fill='#9467bd'/><text x='{bx}' y='{:.1}'>{:.3}</text>",
                500.0 + 160.0 - bh,
                500.0 + 160.0 - bh - 4.0,
                v
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::of(200, false), Outcome::Ok);
        assert_eq!(Outcome::of(304, true), Outcome::Ok);
        assert_eq!(Outcome::of(503, true), Outcome::Shed);
        assert_eq!(Outcome::of(503, false), Outcome::ErrorStatus);
        assert_eq!(Outcome::of(429, true), Outcome::ErrorStatus);
    }

    #[test]
    fn accounting_adds_up() {
        let mut a = Recorder::new();
        a.sent((0, 0), Late::No, Some(10));
        a.answer((0, 0), 500, 200, Outcome::Ok, Some(b"l1"), false);
        a.completed((0, 0));
        a.sent((1, 2), Late::Generator, Some(2000));
        a.answer((1, 2), 900, 503, Outcome::Shed, None, true);
        a.sent((1, 2), Late::Target, None);
        a.transport_error((1, 2));
        a.sent((1, 2), Late::Target, None); // never answered
        let mut b = Recorder::new();
        b.sent((1, 1), Late::No, None);
        b.answer((1, 1), 700, 500, Outcome::ErrorStatus, Some(b"l1"), false);
        b.completed((1, 1));
        a.merge(&b);
        let t = a.total().counts;
        assert_eq!((t.sent, t.late, t.late_generator), (5, 3, 1));
        assert_eq!((t.ok, t.shed, t.error_status, t.in_grace), (1, 1, 1, 1));
        assert_eq!((t.transport_errors, t.unanswered(), t.errors()), (1, 1, 3));
        assert_eq!(t.completed, 2);
        assert_eq!(a.stages[1].counts.sent, 4);
        assert_eq!(a.seconds[2].counts.sent, 3);
        assert_eq!(a.total().latency.len(), 2);
        assert_eq!(a.total().shed_latency.len(), 1);
        assert_eq!(a.served_from["l1"], 2);
        assert_eq!(a.statuses[&503], 1);
        assert_eq!(a.send_lag.len(), 2);
        let s = sends(&t, Some(9));
        assert_eq!(
            (s.dropped, s.late, s.late_generator),
            (Some(4), Some(3), Some(1))
        );
    }
}
