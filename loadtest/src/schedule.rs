//! When each open-loop send is due: an optional warm-up at a fixed rate, then the
//! measured window as one stage (`--rate R --duration D`) or several
//! (`--stages 10s@20000,10s@20000..60000,10s@0`).
//!
//! The run is one sequence of send slots 0, 1, 2, … whose times follow the cumulative
//! offered count N(t): slot j is due at the first t where N(t) reaches j. Connection i
//! takes slots i, i + C, i + 2C, …, so the connections together offer exactly the
//! schedule. Which stage or second a slot belongs to is decided by its *index* against
//! boundaries computed once here (the first slot due at or after each boundary), never by
//! comparing float times again, so `offered = sent + dropped` holds exactly in every
//! stage and second of the report.

use std::time::Duration;

/// A bad `--duration`, `--warmup`, `--grace` or stage duration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("{input:?} is not a duration like 20s, 500ms or 2m")]
    NotANumber { input: String },
    #[error("{input:?}: unknown unit {unit:?} (us, ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
}

/// `20s`, `500ms`, `2m`, `1.5s`, `250us`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| DurationError::NotANumber {
        input: s.to_string(),
    })?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                input: s.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    // `num` holds only digits and dots, so `n` is finite and not negative.
    Ok(Duration::from_secs_f64(secs))
}

/// One stage of an open-loop run: `duration` at a rate going linearly from `from` to
/// `to` requests per second (equal for a constant rate; 0 offers nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub from: f64,
    pub to: f64,
}

/// A bad `--stages` value; each names the part it could not use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StagesError {
    #[error("no stages given (expected e.g. 10s@20000,10s@60000,10s@0)")]
    Empty,
    #[error("stage {part:?} is not DURATION@RATE (e.g. 10s@20000, or 10s@0..50000 for a ramp)")]
    Shape { part: String },
    #[error("stage {part:?}: {source}")]
    Duration {
        part: String,
        #[source]
        source: DurationError,
    },
    #[error("stage {part:?} lasts no time")]
    ZeroDuration { part: String },
    #[error("stage {part:?}: rate {rate:?} is not a number of requests per second (≥ 0)")]
    Rate { part: String, rate: String },
    #[error("the stages offer no requests at all")]
    NoRequests,
}

/// `10s@20000,10s@60000,10s@0`; a stage may ramp linearly: `30s@0..60000`.
pub fn parse_stages(spec: &str) -> Result<Vec<Stage>, StagesError> {
    let mut stages = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            if spec.trim().is_empty() {
                return Err(StagesError::Empty);
            }
            return Err(StagesError::Shape {
                part: part.to_string(),
            });
        }
        let (d, r) = part.split_once('@').ok_or_else(|| StagesError::Shape {
            part: part.to_string(),
        })?;
        let duration = parse_duration(d).map_err(|source| StagesError::Duration {
            part: part.to_string(),
            source,
        })?;
        if duration.is_zero() {
            return Err(StagesError::ZeroDuration {
                part: part.to_string(),
            });
        }
        let rate = |s: &str| -> Result<f64, StagesError> {
            match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(StagesError::Rate {
                    part: part.to_string(),
                    rate: s.trim().to_string(),
                }),
            }
        };
        let (from, to) = match r.split_once("..") {
            Some((a, b)) => (rate(a)?, rate(b)?),
            None => {
                let v = rate(r)?;
                (v, v)
            }
        };
        stages.push(Stage { duration, from, to });
    }
    if stages.iter().all(|s| s.from == 0.0 && s.to == 0.0) {
        return Err(StagesError::NoRequests);
    }
    Ok(stages)
}

/// A stretch of the run with a linear rate, `t0 .. t0 + dur` seconds from the start.
#[derive(Debug, Clone)]
struct Seg {
    t0: f64,
    dur: f64,
    /// N(t0 + x) = n0 + b·x + a·x²
    n0: f64,
    a: f64,
    b: f64,
    /// Slots j0 .. j1 are due in this segment.
    j0: u64,
    j1: u64,
}

/// Integer slots in [0, n): ceil(n), with n that is an integer up to float error (a
/// rate times a duration, say 300000 × 5.0) counted as that integer.
fn slots_below(n: f64) -> u64 {
    let r = n.round();
    if (n - r).abs() <= 1e-9 * r.abs().max(1.0) {
        r.max(0.0) as u64
    } else {
        n.ceil().max(0.0) as u64
    }
}

/// The open-loop schedule of a whole run (warm-up and window).
#[derive(Debug, Clone)]
pub struct Schedule {
    segs: Vec<Seg>,
    /// First slot of the measured window.
    pub measure_j: u64,
    /// One past the last slot of the run.
    pub end_j: u64,
    /// First slot of each stage, and `end_j` last (stages + 1 entries).
    pub stage_j: Vec<u64>,
    /// First slot of each second of the window, and `end_j` last (seconds + 1 entries).
    pub second_j: Vec<u64>,
    /// Stage start times, seconds from the start of the window, and its length last.
    pub stage_t: Vec<f64>,
}

impl Schedule {
    /// `warmup` at `warmup_rate`, then the stages.
    pub fn new(warmup: Duration, warmup_rate: f64, stages: &[Stage]) -> Schedule {
        let mut parts: Vec<(f64, f64, f64)> = Vec::new();
        if !warmup.is_zero() {
            parts.push((warmup.as_secs_f64(), warmup_rate, warmup_rate));
        }
        parts.extend(
            stages
                .iter()
                .map(|s| (s.duration.as_secs_f64(), s.from, s.to)),
        );
        let mut segs = Vec::with_capacity(parts.len());
        let (mut t, mut n, mut j) = (0.0_f64, 0.0_f64, 0u64);
        for (dur, r0, r1) in parts {
            let n1 = n + (r0 + r1) / 2.0 * dur;
            let j1 = slots_below(n1).max(j);
            segs.push(Seg {
                t0: t,
                dur,
                n0: n,
                a: (r1 - r0) / (2.0 * dur),
                b: r0,
                j0: j,
                j1,
            });
            t += dur;
            n = n1;
            j = j1;
        }
        let warm = usize::from(!warmup.is_zero());
        let measure_j = segs.get(warm).map_or(j, |s| s.j0);
        let mut stage_j: Vec<u64> = segs[warm..].iter().map(|s| s.j0).collect();
        stage_j.push(j);
        let w = warmup.as_secs_f64();
        let mut stage_t: Vec<f64> = segs[warm..].iter().map(|s| s.t0 - w).collect();
        stage_t.push(t - w);
        let mut sched = Schedule {
            segs,
            measure_j,
            end_j: j,
            stage_j,
            second_j: Vec::new(),
            stage_t,
        };
        let window = t - w;
        let seconds = (window.ceil() as usize).max(1);
        sched.second_j = (0..seconds)
            .map(|k| sched.first_slot_at(w + k as f64).clamp(measure_j, j))
            .chain(std::iter::once(j))
            .collect();
        sched
    }

    /// Seconds from the start of the run at which slot `j` is due, or None past the end
    /// of the run. `seg` is the caller's cursor (start at 0; slots must not go back).
    pub fn slot_time(&self, j: u64, seg: &mut usize) -> Option<f64> {
        while *seg < self.segs.len() && j >= self.segs[*seg].j1 {
            *seg += 1;
        }
        let s = self.segs.get(*seg)?;
        let c = (j as f64 - s.n0).max(0.0);
        // Root of a·x² + b·x = c in the stable form; b + √… > 0 whenever the segment
        // has slots (b > 0, or b = 0 and a > 0).
        let x = if c == 0.0 {
            0.0
        } else {
            2.0 * c / (s.b + (s.b * s.b + 4.0 * s.a * c).max(0.0).sqrt())
        };
        Some(s.t0 + x.clamp(0.0, s.dur))
    }

    /// The first slot due at or after `t` seconds from the start of the run.
    fn first_slot_at(&self, t: f64) -> u64 {
        for s in &self.segs {
            if t < s.t0 + s.dur {
                let x = (t - s.t0).max(0.0);
                return slots_below(s.n0 + s.b * x + s.a * x * x).clamp(s.j0, s.j1);
            }
        }
        self.end_j
    }

    /// Slots due in the measured window.
    pub fn offered(&self) -> u64 {
        self.end_j - self.measure_j
    }
}

/// Where a connection's slots fall: a cursor over the stage and second boundaries.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    pub seg: usize,
    pub stage: usize,
    pub second: usize,
}

impl Cursor {
    /// Stage and second of the window that slot `j` belongs to (None for warm-up).
    pub fn place(&mut self, s: &Schedule, j: u64) -> Option<(usize, usize)> {
        if j < s.measure_j || j >= s.end_j {
            return None;
        }
        while self.stage + 2 < s.stage_j.len() && j >= s.stage_j[self.stage + 1] {
            self.stage += 1;
        }
        while self.second + 2 < s.second_j.len() && j >= s.second_j[self.second + 1] {
            self.second += 1;
        }
        Some((self.stage, self.second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(d: f64, from: f64, to: f64) -> Stage {
        Stage {
            duration: Duration::from_secs_f64(d),
            from,
            to,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(matches!(
            parse_duration("5 parsecs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NotANumber { .. })
        ));
    }

    #[test]
    fn stages_parse() {
        assert_eq!(
            parse_stages("10s@20000, 10s@60000,10s@0").unwrap(),
            vec![st(10.0, 2e4, 2e4), st(10.0, 6e4, 6e4), st(10.0, 0.0, 0.0)]
        );
        assert_eq!(
            parse_stages("30s@0..60000").unwrap(),
            vec![st(30.0, 0.0, 6e4)]
        );
    }

    #[test]
    fn stages_errors_name_the_bad_part() {
        let e = |s: &str| parse_stages(s).unwrap_err();
        assert_eq!(e(""), StagesError::Empty);
        assert_eq!(e("10s@100,10s"), StagesError::Shape { part: "10s".into() });
        assert_eq!(e("10s@100,,10s@5"), StagesError::Shape { part: "".into() });
        assert!(matches!(e("10x@100"), StagesError::Duration { part, .. } if part == "10x@100"));
        assert_eq!(
            e("0s@100"),
            StagesError::ZeroDuration {
                part: "0s@100".into()
            }
        );
        assert_eq!(
            e("1s@fast"),
            StagesError::Rate {
                part: "1s@fast".into(),
                rate: "fast".into()
            }
        );
        assert_eq!(
            e("1s@-5"),
            StagesError::Rate {
                part: "1s@-5".into(),
                rate: "-5".into()
            }
        );
        assert_eq!(e("1s@0,2s@0"), StagesError::NoRequests);
        let msg = e("10s@100,oops").to_string();
        assert!(msg.contains("\"oops\""), "{msg}");
    }

    /// Every slot's time, walking them as one connection would (C = 1).
    fn times(s: &Schedule) -> Vec<f64> {
        let mut seg = 0;
        (0..)
            .map_while(|j| s.slot_time(j, &mut seg))
            .collect::<Vec<_>>()
    }

    #[test]
    fn constant_rate_matches_the_old_schedule() {
        // 300,000/s for 5 s is exactly 1.5 M slots, slot j at j / rate.
        let s = Schedule::new(Duration::ZERO, 0.0, &[st(5.0, 3e5, 3e5)]);
        assert_eq!((s.measure_j, s.end_j), (0, 1_500_000));
        assert_eq!(
            s.second_j,
            vec![0, 300_000, 600_000, 900_000, 1_200_000, 1_500_000]
        );
        let mut seg = 0;
        assert_eq!(s.slot_time(0, &mut seg), Some(0.0));
        assert!((s.slot_time(299_999, &mut seg).unwrap() - 299_999.0 / 3e5).abs() < 1e-12);
        assert_eq!(s.slot_time(1_500_000, &mut seg), None);
    }

    #[test]
    fn stages_with_warmup_ramp_and_pause() {
        let s = Schedule::new(
            Duration::from_secs(1),
            100.0,
            &[st(2.0, 0.0, 200.0), st(1.0, 0.0, 0.0), st(0.5, 50.0, 50.0)],
        );
        // warm-up 100, ramp 0→200 over 2 s = 200, pause 0, 25.
        assert_eq!(s.measure_j, 100);
        assert_eq!(s.stage_j, vec![100, 300, 300, 325]);
        assert_eq!(s.end_j, 325);
        assert_eq!(s.offered(), 225);
        assert_eq!(s.stage_t, vec![0.0, 2.0, 3.0, 3.5]);
        // Ramp: N(x) = 50·x² in its first second → 50 slots; the pause has none; the
        // last half second is seconds 3 (of the window).
        assert_eq!(s.second_j, vec![100, 150, 300, 300, 325]);
        let t = times(&s);
        assert_eq!(t.len(), 325);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "times go forward");
        // Ramp slot 100 + k is due at 1 + sqrt(k / 50).
        assert!((t[100 + 50] - 2.0).abs() < 1e-9);
        assert!((t[100 + 8] - (1.0 + (8.0_f64 / 50.0).sqrt())).abs() < 1e-9);
        // After the pause: 50/s from t = 4.
        assert!((t[300] - 4.0).abs() < 1e-9 && (t[324] - (4.0 + 24.0 / 50.0)).abs() < 1e-9);
        // Every slot's time lies in the segment its index says.
        for (j, tj) in t.iter().enumerate() {
            let j = j as u64;
            let window_t = tj - 1.0;
            if j >= 100 {
                let stage = s.stage_j.iter().rposition(|b| *b <= j).unwrap();
                assert!(window_t >= s.stage_t[stage] - 1e-9 && window_t < s.stage_t[stage + 1]);
                let sec = s.second_j[..s.second_j.len() - 1]
                    .iter()
                    .rposition(|b| *b <= j)
                    .unwrap();
                assert_eq!(window_t.floor() as usize, sec, "slot {j} at {tj}");
            }
        }
    }

    #[test]
    fn ramp_down() {
        let s = Schedule::new(Duration::ZERO, 0.0, &[st(4.0, 100.0, 0.0)]);
        assert_eq!(s.end_j, 200);
        let t = times(&s);
        assert_eq!(t.len(), 200);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(*t.last().unwrap() < 4.0);
        // First second offers 100 - 12.5 = 87.5 → slots 0..=87.
        assert_eq!(s.second_j[1], 88);
    }

    #[test]
    fn cursor_places_slots() {
        let s = Schedule::new(
            Duration::from_secs(1),
            10.0,
            &[st(1.0, 10.0, 10.0), st(1.0, 20.0, 20.0)],
        );
        let mut c = Cursor::default();
        assert_eq!(c.place(&s, 5), None);
        assert_eq!(c.place(&s, 10), Some((0, 0)));
        assert_eq!(c.place(&s, 19), Some((0, 0)));
        assert_eq!(c.place(&s, 20), Some((1, 1)));
        assert_eq!(c.place(&s, 39), Some((1, 1)));
        assert_eq!(c.place(&s, 40), None);
    }
}
