//! `loadtest compare A.json B.json`: two reports side by side, with B ÷ A for every
//! figure, and stage by stage when both ran the same number of stages.
//!
//! Reports are read as plain JSON, so a report from before the achieved/offered split
//! (which only had `throughput_rps`, the *offered* rate in open loop) is still shown,
//! marked as such.

use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a loadtest JSON report: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

fn load(path: &Path) -> Result<Value, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CompareError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// The rows compared: label and JSON pointer.
const ROWS: &[(&str, &str)] = &[
    ("offered req/s", "/offered_rps"),
    ("achieved req/s", "/achieved_rps"),
    ("served req/s", "/served_rps"),
    ("achieved ÷ offered", "/achieved_ratio"),
    ("sends offered", "/sends/offered"),
    ("sends made", "/sends/sent"),
    ("sends dropped", "/sends/dropped"),
    ("sends late", "/sends/late"),
    ("latency p50 ms", "/latency_ms/p50"),
    ("latency p90 ms", "/latency_ms/p90"),
    ("latency p99 ms", "/latency_ms/p99"),
    ("latency p99.9 ms", "/latency_ms/p999"),
    ("latency max ms", "/latency_ms/max"),
    ("errors", "/errors"),
    ("shed", "/answers/shed"),
    ("shed p99 ms", "/shed_latency_ms/p99"),
    ("send lag p99 ms", "/generator/send_lag_ms/p99"),
    ("generator CPU", "/generator/cpu_utilisation"),
    ("wall s", "/wall_seconds"),
];

const STAGE_ROWS: &[(&str, &str)] = &[
    ("offered", "/sends/offered"),
    ("achieved req/s", "/achieved_rps"),
    ("served req/s", "/served_rps"),
    ("dropped", "/sends/dropped"),
    ("p99 ms", "/latency_ms/p99"),
    ("errors", "/errors"),
];

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.4}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:.3}", b / a),
        (Some(a), Some(b)) if a == b => "1.000".into(),
        _ => "-".into(),
    }
}

/// Older reports: `throughput_rps` was the offered rate in open loop (every send was
/// made, after the window if need be), and answers ÷ window in closed loop.
fn upgrade(v: &mut Value) -> Option<String> {
    if v.get("achieved_rps").is_some() {
        return None;
    }
    let t = v.get("throughput_rps").cloned()?;
    if v.get("mode").and_then(Value::as_str) == Some("open-loop") {
        v["offered_rps"] = t;
        return Some(
            "an older report: its open-loop throughput_rps was the offered rate; it has no achieved rate"
                .into(),
        );
    }
    v["achieved_rps"] = t;
    Some("an older report: achieved req/s is its throughput_rps".into())
}

/// The comparison as text.
pub fn compare(a_path: &Path, b_path: &Path) -> Result<String, CompareError> {
    let (mut a, mut b) = (load(a_path)?, load(b_path)?);
    let mut out = String::new();
    for (name, v) in [("A", &mut a), ("B", &mut b)] {
        if let Some(note) = upgrade(v) {
            out.push_str(&format!("note: {name} is {note}\n"));
        }
    }
    let mode = |v: &Value| {
        v.get("mode")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    out.push_str(&format!("A: {} ({})\n", a_path.display(), mode(&a)));
    out.push_str(&format!("B: {} ({})\n", b_path.display(), mode(&b)));
    let line = |out: &mut String, label: &str, x: Option<f64>, y: Option<f64>| {
        out.push_str(&format!(
            "{label:<22} {:>14} {:>14} {:>9}\n",
            cell(x),
            cell(y),
            ratio(x, y)
        ));
    };
    out.push_str(&format!(
        "{:<22} {:>14} {:>14} {:>9}\n",
        "", "A", "B", "B ÷ A"
    ));
    for (label, p) in ROWS {
        let (x, y) = (num(&a, p), num(&b, p));
        if x.is_some() || y.is_some() {
            line(&mut out, label, x, y);
        }
    }
    let stages = |v: &Value| v.get("stages").and_then(Value::as_array).cloned();
    if let (Some(sa), Some(sb)) = (stages(&a), stages(&b)) {
        if sa.len() == sb.len() {
            for (i, (x, y)) in sa.iter().zip(&sb).enumerate() {
                for (label, p) in STAGE_ROWS {
                    line(
                        &mut out,
                        &format!("stage {i} {label}"),
                        num(x, p),
                        num(y, p),
                    );
                }
            }
        } else {
            out.push_str(&format!(
                "stages differ ({} against {}): not compared stage by stage\n",
                sa.len(),
                sb.len()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_with_ratios_and_old_reports() {
        let dir = std::env::temp_dir().join(format!("loadtest-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.json");
        let b = dir.join("b.json");
        std::fs::write(
            &a,
            r#"{"mode":"open-loop","throughput_rps":300000.0,"latency_ms":{"p99":50.0}}"#,
        )
        .unwrap();
        std::fs::write(
            &b,
            r#"{"mode":"open-loop","offered_rps":300000.0,"achieved_rps":60000.0,"latency_ms":{"p99":5.0},
                "stages":[{"achieved_rps":1.0}]}"#,
        )
        .unwrap();
        let out = compare(&a, &b).unwrap();
        assert!(out.contains("A is an older report"), "{out}");
        // The old open-loop figure was the offered rate: it is shown as that.
        let row = |label: &str| out.lines().find(|l| l.starts_with(label)).unwrap();
        assert!(row("offered req/s").ends_with("1.000"), "{out}");
        let achieved: Vec<&str> = row("achieved req/s").split_whitespace().collect();
        assert_eq!(achieved[2..], ["-", "60000", "-"], "{out}");
        let p99 = out
            .lines()
            .find(|l| l.starts_with("latency p99 ms"))
            .unwrap();
        assert!(p99.ends_with("0.100"), "{p99}");
        assert!(!out.contains("stage 0"), "only B has stages: {out}");
        assert!(matches!(
            compare(&a, &dir.join("missing.json")),
            Err(CompareError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
