//! HdrHistogram interval logs (`.hlog`): one per run, so runs from several generator
//! machines can be merged (`loadtest merge`, or HdrHistogram's own
//! HistogramLogProcessor) and compared with full resolution rather than percentiles of
//! percentiles.
//!
//! A run's log holds, with StartTime and BaseTime at the start of its window: one
//! untagged interval per second of the window (latency in µs of the answers to sends due
//! in that second, shed ones apart), and one `Tag=shed` interval over the whole window
//! for shed answers if there were any.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::Percentiles;

#[derive(Debug, thiserror::Error)]
pub enum HlogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write the log: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("{path}: not an interval log: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: interval {index} does not decode: {detail}")]
    Decode {
        path: PathBuf,
        index: usize,
        detail: String,
    },
}

/// One interval to write: offset from the window start, length, histogram (µs).
pub struct Interval<'a> {
    pub start: Duration,
    pub length: Duration,
    pub histogram: &'a Histogram<u64>,
}

/// Writes a run's log to `path`.
pub fn write(
    path: &Path,
    window_start: SystemTime,
    comment: &str,
    seconds: &[Interval<'_>],
    shed: Option<Interval<'_>>,
) -> Result<(), HlogError> {
    let mut buf = Vec::new();
    let werr = |e: &dyn std::fmt::Display| HlogError::Write {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    {
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment(
                "latency in microseconds; untagged: answers by second due; Tag=shed: shed answers",
            )
            .with_start_time(window_start)
            .with_base_time(window_start)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut buf, &mut ser)
            .map_err(|e| werr(&e))?;
        for i in seconds {
            w.write_histogram(i.histogram, i.start, i.length, None)
                .map_err(|e| werr(&e))?;
        }
        if let Some(i) = shed {
            w.write_histogram(i.histogram, i.start, i.length, Tag::new("shed"))
                .map_err(|e| werr(&e))?;
        }
    }
    std::fs::write(path, buf).map_err(|source| HlogError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// One interval read back.
pub struct ReadInterval {
    pub tag: Option<String>,
    /// Seconds since the epoch (BaseTime + the interval's offset).
    pub start: f64,
    pub histogram: Histogram<u64>,
}

/// Reads every interval of a log.
pub fn read(path: &Path) -> Result<Vec<ReadInterval>, HlogError> {
    let bytes = std::fs::read(path).map_err(|source| HlogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut base = 0.0;
    let mut out = Vec::new();
    let mut de = Deserializer::new();
    for (index, entry) in IntervalLogIterator::new(&bytes).enumerate() {
        let entry = entry.map_err(|e| HlogError::Parse {
            path: path.to_path_buf(),
            detail: format!("{e:?}"),
        })?;
        match entry {
            LogEntry::BaseTime(t) => base = t.as_secs_f64(),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let decode = |detail: String| HlogError::Decode {
                    path: path.to_path_buf(),
                    index,
                    detail,
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .map_err(|e| decode(e.to_string()))?;
                let h: Histogram<u64> = de
                    .deserialize(&mut raw.as_slice())
                    .map_err(|e| decode(format!("{e:?}")))?;
                out.push(ReadInterval {
                    tag: i.tag().map(|t| t.as_str().to_string()),
                    start: base + i.start_timestamp().as_secs_f64(),
                    histogram: h,
                });
            }
        }
    }
    Ok(out)
}

/// Several logs merged: totals, and answers per second of wall-clock time.
#[derive(Serialize)]
pub struct Merged {
    pub files: Vec<FileSummary>,
    /// Latency of untagged intervals of all files together.
    pub latency_ms: Percentiles,
    pub shed_latency_ms: Percentiles,
    /// Per second from the earliest interval start: answers recorded by all files.
    pub timeline: Vec<MergedSecond>,
}

#[derive(Serialize)]
pub struct FileSummary {
    pub path: String,
    pub intervals: usize,
    pub latency_ms: Percentiles,
}

#[derive(Serialize)]
pub struct MergedSecond {
    pub t: usize,
    pub answers: u64,
    pub p99_ms: f64,
}

pub fn merge(paths: &[PathBuf]) -> Result<Merged, HlogError> {
    // Auto-resizing: logs from other tools may record beyond this tool's 60 s bound.
    let new = || {
        let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
        h.auto(true);
        h
    };
    let mut total = new();
    let mut shed = new();
    let mut files = Vec::new();
    let mut all = Vec::new();
    for p in paths {
        let intervals = read(p)?;
        let mut file_total = new();
        for i in &intervals {
            match i.tag.as_deref() {
                None => {
                    let _ = file_total.add(&i.histogram);
                    let _ = total.add(&i.histogram);
                }
                Some("shed") => {
                    let _ = shed.add(&i.histogram);
                }
                Some(_) => {}
            }
        }
        files.push(FileSummary {
            path: p.display().to_string(),
            intervals: intervals.len(),
            latency_ms: Percentiles::of(&file_total),
        });
        all.extend(intervals.into_iter().filter(|i| i.tag.is_none()));
    }
    let t0 = all.iter().map(|i| i.start).fold(f64::INFINITY, f64::min);
    let mut by_second: BTreeMap<usize, Histogram<u64>> = BTreeMap::new();
    for i in &all {
        let s = (i.start - t0).max(0.0).floor() as usize;
        let _ = by_second.entry(s).or_insert_with(new).add(&i.histogram);
    }
    let last = by_second.keys().next_back().copied();
    let timeline = match last {
        None => Vec::new(),
        Some(last) => (0..=last)
            .map(|t| {
                let h = by_second.get(&t);
                MergedSecond {
                    t,
                    answers: h.map_or(0, |h| h.len()),
                    p99_ms: h.map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
                }
            })
            .collect(),
    };
    Ok(Merged {
        files,
        latency_ms: Percentiles::of(&total),
        shed_latency_ms: Percentiles::of(&shed),
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::histogram;

    #[test]
    fn written_logs_read_back_and_merge() {
        let dir = std::env::temp_dir().join(format!("loadtest-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut a, mut b, mut s) = (histogram(), histogram(), histogram());
        for v in 1..=1000 {
            a.record(v).unwrap();
            b.record(v * 10).unwrap();
        }
        s.record(42).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let path = dir.join("a.hlog");
        let sec = Duration::from_secs(1);
        write(
            &path,
            start,
            "test",
            &[
                Interval {
                    start: Duration::ZERO,
                    length: sec,
                    histogram: &a,
                },
                Interval {
                    start: sec,
                    length: sec,
                    histogram: &b,
                },
            ],
            Some(Interval {
                start: Duration::ZERO,
                length: 2 * sec,
                histogram: &s,
            }),
        )
        .unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].histogram.len(), 1000);
        assert_eq!(back[1].histogram.value_at_quantile(1.0), b.max());
        assert_eq!(back[2].tag.as_deref(), Some("shed"));
        assert!((back[1].start - 1_700_000_001.0).abs() < 1e-3);
        let m = merge(&[path.clone(), path.clone()]).unwrap();
        assert_eq!(m.latency_ms.count, 4000);
        assert_eq!(m.shed_latency_ms.count, 2);
        assert_eq!(m.timeline.len(), 2);
        assert_eq!(m.timeline[1].answers, 2000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
