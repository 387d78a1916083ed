//! `--expect 'p99<2ms,errors=0,achieved>=0.99'`: thresholds checked against the report
//! after the run, so a benchmark in a script or CI fails on its own (exit status 3).
//!
//! A clause is `METRIC OP VALUE`, OP one of `<`, `<=`, `>`, `>=`, `=`:
//!
//! | metric | value |
//! | --- | --- |
//! | `p50` `p90` `p99` `p999` `max` | latency of answers (shed ones apart): `2ms`, `500us`, `1s` (bare: ms) |
//! | `send_lag_p99` | how late the generator itself sent (open loop), same units |
//! | `errors` | transport errors + error statuses + sends unanswered by the end of the grace; a count, or `%` of sends |
//! | `shed` | 503 answers with `Retry-After`; count or `%` of sends |
//! | `dropped` | sends never made before the window closed (open loop); count or `%` of offered |
//! | `late` | sends made later than `--late-bound` (open loop); count or `%` of offered |
//! | `achieved` | achieved ÷ offered rate (open loop): `0.99` or `99%` |
//! | `rps` | achieved answers per second (shed ones included) |
//! | `served` | answers per second that were not shed nor errors |

use std::fmt;

/// What a clause is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    SendLagP99,
    Errors,
    Shed,
    Dropped,
    Late,
    Achieved,
    Rps,
    Served,
}

const METRICS: &[(&str, Metric)] = &[
    ("p50", Metric::P50),
    ("p90", Metric::P90),
    ("p99", Metric::P99),
    ("p999", Metric::P999),
    ("p99.9", Metric::P999),
    ("max", Metric::Max),
    ("send_lag_p99", Metric::SendLagP99),
    ("errors", Metric::Errors),
    ("shed", Metric::Shed),
    ("dropped", Metric::Dropped),
    ("late", Metric::Late),
    ("achieved", Metric::Achieved),
    ("rps", Metric::Rps),
    ("served", Metric::Served),
];

impl Metric {
    fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::P50
                | Metric::P90
                | Metric::P99
                | Metric::P999
                | Metric::Max
                | Metric::SendLagP99
        )
    }

    fn is_count(self) -> bool {
        matches!(
            self,
            Metric::Errors | Metric::Shed | Metric::Dropped | Metric::Late
        )
    }

    /// Only an open-loop run (a schedule of sends) measures it.
    pub fn needs_open_loop(self) -> bool {
        matches!(
            self,
            Metric::SendLagP99 | Metric::Dropped | Metric::Late | Metric::Achieved
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, observed: f64, bound: f64) -> bool {
        match self {
            Op::Lt => observed < bound,
            Op::Le => observed <= bound,
            Op::Gt => observed > bound,
            Op::Ge => observed >= bound,
            // Counts are whole numbers; a fraction compared with `=` is exact too.
            Op::Eq => observed == bound,
        }
    }
}

/// The unit a clause's value is in after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Count,
    /// A fraction of a base (sends, offered): written as a percentage.
    Fraction,
    Ratio,
    PerSecond,
}

impl Unit {
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Millis => format!("{v:.3} ms"),
            Unit::Count => format!("{v:.0}"),
            Unit::Fraction => format!("{:.3}%", v * 100.0),
            Unit::Ratio => format!("{v:.4}"),
            Unit::PerSecond => format!("{v:.1}/s"),
        }
    }
}

/// One threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
    pub unit: Unit,
}

/// A bad `--expect` value; each names the clause (and the part of it) it could not use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpectError {
    #[error("empty clause in {spec:?} (expected e.g. p99<2ms,errors=0,achieved>=0.99)")]
    Empty { spec: String },
    #[error("clause {clause:?} has no comparison (<, <=, >, >=, =)")]
    NoOperator { clause: String },
    #[error("clause {clause:?}: unknown metric {metric:?} (known: {known})")]
    UnknownMetric {
        clause: String,
        metric: String,
        known: String,
    },
    #[error("clause {clause:?}: {value:?} is not {expected}")]
    BadValue {
        clause: String,
        value: String,
        expected: &'static str,
    },
}

/// Parses the whole `--expect` value.
pub fn parse(spec: &str) -> Result<Vec<Clause>, ExpectError> {
    spec.split(',')
        .map(|c| parse_clause(spec, c.trim()))
        .collect()
}

fn parse_clause(spec: &str, text: &str) -> Result<Clause, ExpectError> {
    if text.is_empty() {
        return Err(ExpectError::Empty {
            spec: spec.to_string(),
        });
    }
    let at = text
        .find(['<', '>', '='])
        .ok_or_else(|| ExpectError::NoOperator {
            clause: text.to_string(),
        })?;
    let (key, rest) = text.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix("==") {
        (Op::Eq, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Gt, v)
    } else {
        (Op::Eq, &rest[1..])
    };
    let key = key.trim();
    let metric = METRICS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, m)| *m)
        .ok_or_else(|| ExpectError::UnknownMetric {
            clause: text.to_string(),
            metric: key.to_string(),
            known: METRICS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let value = value.trim();
    let bad = |expected| ExpectError::BadValue {
        clause: text.to_string(),
        value: value.to_string(),
        expected,
    };
    let number = |s: &str, expected| -> Result<f64, ExpectError> {
        match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(bad(expected)),
        }
    };
    let (value, unit) = if metric.is_latency() {
        const E: &str = "a latency like 2ms, 500us or 1s";
        let split = value
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(value.len());
        let n = number(&value[..split], E)?;
        let ms = match &value[split..] {
            "" | "ms" => n,
            "us" | "µs" => n / 1e3,
            "s" => n * 1e3,
            _ => return Err(bad(E)),
        };
        (ms, Unit::Millis)
    } else if metric.is_count() {
        const E: &str = "a count like 0, or a percentage like 0.1%";
        match value.strip_suffix('%') {
            Some(p) => (number(p, E)? / 100.0, Unit::Fraction),
            None => (number(value, E)?, Unit::Count),
        }
    } else if metric == Metric::Achieved {
        const E: &str = "a ratio like 0.99 or a percentage like 99%";
        match value.strip_suffix('%') {
            Some(p) => (number(p, E)? / 100.0, Unit::Ratio),
            None => (number(value, E)?, Unit::Ratio),
        }
    } else {
        (
            number(value, "a number of answers per second")?,
            Unit::PerSecond,
        )
    };
    Ok(Clause {
        text: text.to_string(),
        metric,
        op,
        value,
        unit,
    })
}

/// What the run measured, in the units clauses are written in.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// p50, p90, p99, p999, max of answers, ms.
    pub latency: [f64; 5],
    pub send_lag_p99: Option<f64>,
    pub errors: u64,
    pub shed: u64,
    pub dropped: Option<u64>,
    pub late: Option<u64>,
    /// Sends made in the window (the base of `errors` and `shed` percentages).
    pub sent: u64,
    /// Sends due in the window (the base of `dropped` and `late` percentages).
    pub offered: Option<u64>,
    pub achieved_ratio: Option<f64>,
    pub rps: f64,
    pub served_rps: f64,
}

/// A clause checked against a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub clause: String,
    /// The measured value, in the clause's unit (null: not measured in this mode).
    pub observed: Option<f64>,
    pub shown: String,
    pub passed: bool,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: measured {}",
            if self.passed { "ok    " } else { "MISSED" },
            self.clause,
            self.shown
        )
    }
}

fn fraction(n: u64, base: u64) -> f64 {
    if base == 0 {
        0.0
    } else {
        n as f64 / base as f64
    }
}

impl Clause {
    pub fn check(&self, o: &Observed) -> Verdict {
        let count = |n: Option<u64>, base: Option<u64>| -> Option<f64> {
            let n = n?;
            match self.unit {
                Unit::Fraction => Some(fraction(n, base?)),
                _ => Some(n as f64),
            }
        };
        let observed = match self.metric {
            Metric::P50 => Some(o.latency[0]),
            Metric::P90 => Some(o.latency[1]),
            Metric::P99 => Some(o.latency[2]),
            Metric::P999 => Some(o.latency[3]),
            Metric::Max => Some(o.latency[4]),
            Metric::SendLagP99 => o.send_lag_p99,
            Metric::Errors => count(Some(o.errors), Some(o.sent)),
            Metric::Shed => count(Some(o.shed), Some(o.sent)),
            Metric::Dropped => count(o.dropped, o.offered),
            Metric::Late => count(o.late, o.offered),
            Metric::Achieved => o.achieved_ratio,
            Metric::Rps => Some(o.rps),
            Metric::Served => Some(o.served_rps),
        };
        Verdict {
            clause: self.text.clone(),
            observed,
            shown: observed.map_or_else(
                || "nothing (not measured in closed loop)".to_string(),
                |v| self.unit.show(v),
            ),
            passed: observed.is_some_and(|v| self.op.holds(v, self.value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_example() {
        let c = parse("p99<2ms,errors=0,achieved>=0.99").unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].metric, c[0].op, c[0].value, c[0].unit),
            (Metric::P99, Op::Lt, 2.0, Unit::Millis)
        );
        assert_eq!(
            (c[1].metric, c[1].op, c[1].value, c[1].unit),
            (Metric::Errors, Op::Eq, 0.0, Unit::Count)
        );
        assert_eq!(
            (c[2].metric, c[2].op, c[2].value, c[2].unit),
            (Metric::Achieved, Op::Ge, 0.99, Unit::Ratio)
        );
        assert_eq!(c[2].text, "achieved>=0.99");
    }

    #[test]
    fn units_and_operators() {
        let one = |s: &str| parse(s).unwrap().remove(0);
        assert_eq!(one("p50 <= 500us").value, 0.5);
        assert_eq!(one("max<1s").value, 1000.0);
        assert_eq!(one("p999<3").value, 3.0);
        assert_eq!(one("p99.9<3ms").metric, Metric::P999);
        assert_eq!(one("send_lag_p99<1ms").metric, Metric::SendLagP99);
        let d = one("dropped<0.5%");
        assert_eq!((d.value, d.unit), (0.005, Unit::Fraction));
        assert_eq!(one("achieved>99%").value, 0.99);
        assert_eq!(one("rps>=50000").unit, Unit::PerSecond);
        assert_eq!(one("served>=50000").metric, Metric::Served);
        assert_eq!(one("served>=50000").unit, Unit::PerSecond);
        assert_eq!(one("shed==0").op, Op::Eq);
        assert_eq!(one("late>3").op, Op::Gt);
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(
            e("p99<2ms,,errors=0"),
            ExpectError::Empty {
                spec: "p99<2ms,,errors=0".into()
            }
        );
        assert_eq!(
            e("p99"),
            ExpectError::NoOperator {
                clause: "p99".into()
            }
        );
        assert!(
            matches!(e("p98<2ms"), ExpectError::UnknownMetric { metric, .. } if metric == "p98")
        );
        assert!(
            matches!(e("p99<<2ms"), ExpectError::BadValue { clause, value, .. } if clause == "p99<<2ms" && value == "<2ms")
        );
        assert!(matches!(e("p99<2 parsecs"), ExpectError::BadValue { .. }));
        assert!(matches!(e("errors=none"), ExpectError::BadValue { .. }));
        assert!(matches!(e("achieved>=-1"), ExpectError::BadValue { .. }));
        let msg = e("errors=0,p99<fast").to_string();
        assert!(
            msg.contains("\"p99<fast\"") && msg.contains("\"fast\""),
            "{msg}"
        );
    }

    #[test]
    fn checks() {
        let o = Observed {
            latency: [0.5, 1.0, 1.9, 4.0, 9.0],
            send_lag_p99: Some(0.02),
            errors: 0,
            shed: 10,
            dropped: Some(5),
            late: Some(0),
            sent: 1000,
            offered: Some(1005),
            achieved_ratio: Some(0.995),
            rps: 1000.0,
            served_rps: 990.0,
        };
        let pass = |s: &str| parse(s).unwrap()[0].check(&o).passed;
        assert!(pass("p99<2ms"));
        assert!(!pass("p99<1.9ms"));
        assert!(pass("p99<=1.9ms"));
        assert!(pass("errors=0"));
        assert!(
            pass("served>=990") && !pass("served>990"),
            "served, not achieved"
        );
        assert!(!pass("shed=0"));
        assert!(pass("shed<=1%"));
        assert!(!pass("shed<1%"));
        assert!(pass("dropped<0.5%"));
        assert!(pass("achieved>=0.99"));
        assert!(!pass("achieved>=99.6%"));
        assert!(pass("send_lag_p99<1ms"));
        assert!(pass("rps>999"));
        let closed = Observed {
            achieved_ratio: None,
            ..o
        };
        let v = parse("achieved>=0.5").unwrap()[0].check(&closed);
        assert!(!v.passed && v.observed.is_none());
    }
}
