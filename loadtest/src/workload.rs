//! What to ask: the request mix, member ids drawn from a Zipf distribution, and
//! countries weighted by population (or an explicit list).

/// xorshift64*: a small, fast generator, one per connection task.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over ranks 1..=n, sampled by inverse CDF; ranks are mapped to member ids
/// by a fixed permutation so the hot members are spread over the id space (and over
/// the tier's buckets) rather than all being the smallest ids.
pub struct Zipf {
    cdf: Vec<f64>,
    n: u64,
    stride: u64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        // A stride coprime with n gives a permutation of 0..n.
        let mut stride = (n as f64 * 0.618_033_988_7) as u64 | 1;
        while gcd(stride, n) != 1 {
            stride += 2;
        }
        Zipf { cdf, n, stride }
    }

    /// A member id in 1..=n.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let rank = self.cdf.partition_point(|c| *c < u) as u64;
        (rank.min(self.n - 1) * self.stride) % self.n + 1
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Approximate populations (millions) of the largest markets; other countries weigh 1.
const POPULATION: &[(&str, f64)] = &[
    ("IN", 1430.0),
    ("US", 335.0),
    ("ID", 278.0),
    ("PK", 240.0),
    ("NG", 224.0),
    ("BR", 216.0),
    ("BD", 173.0),
    ("MX", 128.0),
    ("ET", 127.0),
    ("JP", 124.0),
    ("PH", 117.0),
    ("EG", 113.0),
    ("VN", 99.0),
    ("TR", 86.0),
    ("IR", 89.0),
    ("DE", 84.0),
    ("TH", 72.0),
    ("GB", 68.0),
    ("FR", 68.0),
    ("ZA", 60.0),
    ("IT", 59.0),
    ("KE", 55.0),
    ("CO", 52.0),
    ("KR", 52.0),
    ("ES", 48.0),
    ("AR", 46.0),
    ("PL", 38.0),
    ("CA", 39.0),
    ("AU", 27.0),
];

/// Countries to ask about, with weights.
pub struct Countries {
    codes: Vec<String>,
    cumulative: Vec<f64>,
}

impl Countries {
    /// `spec` is `population` (the table above plus every other code at weight 1) or a
    /// comma-separated list of codes (equal weights).
    pub fn new(spec: &str) -> Countries {
        let pairs: Vec<(String, f64)> = if spec == "population" {
            POPULATION
                .iter()
                .map(|(c, w)| (c.to_string(), *w))
                .collect()
        } else {
            spec.split(',')
                .map(|c| (c.trim().to_ascii_uppercase(), 1.0))
                .filter(|(c, _)| !c.is_empty())
                .collect()
        };
        let mut codes = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (c, w) in pairs {
            total += w;
            codes.push(c);
            cumulative.push(total);
        }
        Countries { codes, cumulative }
    }

    pub fn sample(&self, rng: &mut Rng) -> &str {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let u = rng.unit() * total;
        let i = self
            .cumulative
            .partition_point(|c| *c <= u)
            .min(self.codes.len() - 1);
        &self.codes[i]
    }
}

/// The kinds of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plans,
    Entitlement,
    Authorize,
}

/// Fractions of each kind.
#[derive(Debug, Clone)]
pub struct Mix {
    plans: f64,
    entitlement: f64,
}

impl Mix {
    /// `plans=0.5,entitlement=0.3,authorize=0.2` (normalised).
    pub fn parse(spec: &str) -> anyhow::Result<Mix> {
        let (mut p, mut e, mut a) = (0.0, 0.0, 0.0);
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("mix part {part:?} is not kind=fraction"))?;
            let v: f64 = v.trim().parse()?;
            match k.trim() {
                "plans" => p = v,
                "entitlement" => e = v,
                "authorize" => a = v,
                other => {
                    anyhow::bail!("unknown request kind {other:?} (plans, entitlement, authorize)")
                }
            }
        }
        let total = p + e + a;
        anyhow::ensure!(total > 0.0, "the mix is empty");
        Ok(Mix {
            plans: p / total,
            entitlement: e / total,
        })
    }

    pub fn sample(&self, rng: &mut Rng) -> Kind {
        let u = rng.unit();
        if u < self.plans {
            Kind::Plans
        } else if u < self.plans + self.entitlement {
            Kind::Entitlement
        } else {
            Kind::Authorize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            let id = z.sample(&mut rng);
            assert!((1..=1000).contains(&id));
            *counts.entry(id).or_insert(0u32) += 1;
        }
        let mut c: Vec<u32> = counts.values().copied().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        // With s = 1 over 1000 ids the hottest id takes about 13% of draws.
        assert!(c[0] > 10_000 && c[0] < 16_000, "{}", c[0]);
        assert!(counts.len() > 500);
    }

    #[test]
    fn mix_and_countries() {
        let m = Mix::parse("plans=1,entitlement=1,authorize=2").unwrap();
        let mut rng = Rng::new(1);
        let auth = (0..10_000)
            .filter(|_| m.sample(&mut rng) == Kind::Authorize)
            .count();
        assert!((4500..5500).contains(&auth));
        assert!(Mix::parse("bogus=1").is_err());
        let c = Countries::new("us,jp");
        let us = (0..1000).filter(|_| c.sample(&mut rng) == "US").count();
        assert!((400..600).contains(&us));
    }
}
