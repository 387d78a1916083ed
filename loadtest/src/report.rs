//! Results: latency histograms, throughput over time, errors, the `x-served-from`
//! distribution, freshness; written as JSON and drawn as an SVG.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one connection task recorded.
pub struct Recorder {
    /// Latency in microseconds, from the intended send time (open loop) or the send.
    pub latency: Histogram<u64>,
    /// Per second since the start of measurement: (requests, latency histogram).
    pub seconds: Vec<(u64, Histogram<u64>)>,
    pub statuses: BTreeMap<u16, u64>,
    pub served_from: BTreeMap<String, u64>,
    pub transport_errors: u64,
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            latency: histogram(),
            seconds: Vec::new(),
            statuses: BTreeMap::new(),
            served_from: BTreeMap::new(),
            transport_errors: 0,
        }
    }

    pub fn record(&mut self, second: usize, micros: u64, status: u16, served_from: Option<&str>) {
        let micros = micros.clamp(1, 60_000_000);
        let _ = self.latency.record(micros);
        while self.seconds.len() <= second {
            self.seconds.push((0, histogram()));
        }
        self.seconds[second].0 += 1;
        let _ = self.seconds[second].1.record(micros);
        *self.statuses.entry(status).or_insert(0) += 1;
        if let Some(f) = served_from {
            *self.served_from.entry(f.to_string()).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        let _ = self.latency.add(&other.latency);
        for (i, (n, h)) in other.seconds.into_iter().enumerate() {
            while self.seconds.len() <= i {
                self.seconds.push((0, histogram()));
            }
            self.seconds[i].0 += n;
            let _ = self.seconds[i].1.add(&h);
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.served_from {
            *self.served_from.entry(k).or_insert(0) += v;
        }
        self.transport_errors += other.transport_errors;
    }
}

#[derive(Serialize)]
pub struct Percentiles {
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
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Serialize)]
pub struct Second {
    pub t: usize,
    pub requests: u64,
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
}

#[derive(Serialize)]
pub struct Report {
    pub mode: String,
    pub targets: Vec<String>,
    pub connections: usize,
    pub target_rate: Option<f64>,
    pub measured_seconds: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub latency_ms: Percentiles,
    pub statuses: BTreeMap<u16, u64>,
    pub non_2xx: u64,
    pub transport_errors: u64,
    pub served_from: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
    pub freshness: Option<Freshness>,
}

impl Report {
    /// An SVG with throughput and p50/p99 over time, and the latency percentiles.
    pub fn svg(&self, rec: &Recorder) -> String {
        let (w, h) = (900.0, 640.0);
        let mut s = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
             <rect width='100%' height='100%' fill='white'/>\
             <text x='20' y='24' font-size='15'>readtier loadtest: {} mode, {} connections, {:.0} req/s, p99 {:.2} ms, {} non-2xx</text>",
            self.mode, self.connections, self.throughput_rps, self.latency_ms.p99, self.non_2xx
        );
        // Panel 1: throughput over time.
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
        let line = |vals: &[f64], y0: f64, color: &str, s: &mut String| {
            let max = vals.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
            let pts: Vec<String> = vals
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y0 + 160.0 - 150.0 * v / max))
                .collect();
            s.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
                pts.join(" ")
            ));
            s.push_str(&format!(
                "<text x='5' y='{:.0}' fill='{color}'>{max:.3}</text>",
                y0 + 14.0
            ));
        };
        panel(60.0, "requests per second, by second of the run", &mut s);
        let rps: Vec<f64> = self.timeline.iter().map(|t| t.requests as f64).collect();
        line(&rps, 60.0, "#1f77b4", &mut s);
        panel(
            270.0,
            "latency (ms) by second: p50 (green), p99 (red)",
            &mut s,
        );
        let p99: Vec<f64> = self.timeline.iter().map(|t| t.p99_ms).collect();
        let p50: Vec<f64> = self.timeline.iter().map(|t| t.p50_ms).collect();
        line(&p99, 270.0, "#d62728", &mut s);
        let max99 = p99.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
        let pts: Vec<String> = p50
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), 270.0 + 160.0 - 150.0 * v / max99))
            .collect();
        s.push_str(&format!(
            "<polyline fill='none' stroke='#2ca02c' stroke-width='2' points='{}'/>",
            pts.join(" ")
        ));
        // Panel 3: latency by percentile (log-spaced: 50, 90, 99, 99.9, 99.99, max).
        panel(
            480.0,
            "latency (ms) by percentile: 50, 90, 99, 99.9, 99.99, max",
            &mut s,
        );
        let qs = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];
        let vals: Vec<f64> = qs
            .iter()
            .map(|q| rec.latency.value_at_quantile(*q) as f64 / 1000.0)
            .collect();
        let max = vals.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
        for (i, v) in vals.iter().enumerate() {
            let bx = 80.0 + i as f64 * 130.0;
            let bh = 150.0 * v / max;
            s.push_str(&format!(
                "<rect x='{bx}' y='{:.1}' width='90' height='{bh:.1}' fill='#9467bd'/><text x='{bx}' y='{:.1}'>{:.3}</text>",
                480.0 + 160.0 - bh,
                480.0 + 160.0 - bh - 4.0,
                v
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}
