//! Search spaces: the value-or-distribution fields of `[model]` and `[train]`,
//! and which way a metric is better. Pure: the policies (`search`,
//! `schedule`, `board`) and the trial table build on it and on nothing that
//! trains, talks or stores; `config` reads files into it.
//!
//! A [`Domain`] is what the user wrote for one hyperparameter; a
//! [`SearchSpace`] is an ordered list of named domains; [`Params`] is one
//! point drawn from it. Sampling is pure and driven by the caller's RNG, so
//! searchers stay deterministic and resumable.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// One concrete hyperparameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string, e.g. an optimizer name.
    Str(String),
}

impl ParamValue {
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(i) => Some(*i as f64),
            ParamValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as an integer, if it is an integer (or an integral float).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(i) => Some(*i),
            ParamValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value in full, as a program's argument or a CSV cell takes it
    /// (a float's shortest exact form; [`fmt::Display`] rounds for reading).
    pub fn exact(&self) -> String {
        match self {
            ParamValue::Float(x) => x.to_string(),
            other => other.to_string(),
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::Str(s) => Some(s),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "a boolean",
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a float",
            ParamValue::Str(_) => "a string",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => {
                if x.abs() >= 1e-3 && x.abs() < 1e5 || *x == 0.0 {
                    write!(f, "{}", (x * 1e6).round() / 1e6)
                } else {
                    write!(f, "{x:.3e}")
                }
            }
            ParamValue::Str(s) => f.write_str(s),
        }
    }
}

/// A set of hyperparameters: name → value, in a stable order.
pub type Params = BTreeMap<String, ParamValue>;

/// What the user wrote for one hyperparameter: a fixed value or a distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// A single value, not searched.
    Fixed(ParamValue),
    /// Uniform on `[low, high]`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Log-uniform on `[low, high]`, `0 < low < high`.
    LogUniform {
        /// Lower bound, positive.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Integers in `[low, high]`, uniform or (with `log`) log-uniform.
    Int {
        /// Lower bound, inclusive.
        low: i64,
        /// Upper bound, inclusive.
        high: i64,
        /// Sample on a log scale.
        log: bool,
    },
    /// One of a list of values.
    Choice(Vec<ParamValue>),
}

impl Domain {
    /// Whether the domain has more than one value (is searched).
    pub fn is_searched(&self) -> bool {
        match self {
            Domain::Fixed(_) => false,
            Domain::Choice(v) => v.len() > 1,
            Domain::Int { low, high, .. } => low != high,
            Domain::Uniform { low, high } | Domain::LogUniform { low, high } => low != high,
        }
    }

    /// Checks bounds; the message says what is expected.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Domain::Fixed(ParamValue::Float(x)) if !x.is_finite() => Err(format!("expected a finite number, got {x}")),
            Domain::Fixed(_) => Ok(()),
            Domain::Uniform { low, high } => {
                if !(low.is_finite() && high.is_finite()) {
                    Err("expected finite bounds, as { uniform = [low, high] }".into())
                } else if !(high - low).is_finite() {
                    // A draw is low + (high - low) * u: the width must be a number too.
                    Err(format!("uniform = [{low}, {high}] is wider than a float holds; narrow it"))
                } else if low > high {
                    Err(format!("empty range: uniform = [{low}, {high}] needs low <= high"))
                } else {
                    Ok(())
                }
            }
            Domain::LogUniform { low, high } => {
                if !(low.is_finite() && high.is_finite()) || *low <= 0.0 {
                    Err(format!("loguniform = [{low}, {high}] needs 0 < low <= high"))
                } else if low > high {
                    Err(format!("empty range: loguniform = [{low}, {high}] needs low <= high"))
                } else {
                    Ok(())
                }
            }
            Domain::Int { low, high, log } => {
                if low > high {
                    Err(format!("empty range: int = [{low}, {high}] needs low <= high"))
                } else if *log && *low <= 0 {
                    Err(format!("int = [{low}, {high}] with log = true needs low >= 1"))
                } else {
                    Ok(())
                }
            }
            Domain::Choice(values) => {
                if values.is_empty() {
                    return Err("empty choice: give at least one value".into());
                }
                if let Some(x) = values.iter().find_map(|v| match v {
                    ParamValue::Float(x) if !x.is_finite() => Some(*x),
                    _ => None,
                }) {
                    return Err(format!("choice holds {x}: expected finite numbers"));
                }
                let first = values[0].type_name();
                match values.iter().find(|v| v.type_name() != first && !both_numeric(v, &values[0])) {
                    Some(other) => {
                        Err(format!("choice mixes {first} and {}: give values of one type", other.type_name()))
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// Draws one value.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> ParamValue {
        match self {
            Domain::Fixed(v) => v.clone(),
            Domain::Uniform { low, high } => ParamValue::Float(lerp(*low, *high, rng.random())),
            Domain::LogUniform { low, high } => {
                ParamValue::Float(lerp(low.ln(), high.ln(), rng.random()).exp().clamp(*low, *high))
            }
            Domain::Int { low, high, log: false } => ParamValue::Int(rng.random_range(*low..=*high)),
            Domain::Int { low, high, log: true } => {
                let (l, h) = ((*low as f64 - 0.4999).ln(), (*high as f64 + 0.4999).ln());
                let x = lerp(l, h, rng.random()).exp().round() as i64;
                ParamValue::Int(x.clamp(*low, *high))
            }
            Domain::Choice(values) => values[rng.random_range(0..values.len())].clone(),
        }
    }

    /// The value at `u` of the unit interval, by the inverse of the
    /// distribution [`Domain::sample`] draws from: `u` uniform in [0, 1)
    /// gives the same distribution. Log ranges map in log space; integers
    /// and choices take equal slices.
    pub fn at_unit(&self, u: f64) -> ParamValue {
        let u = u.clamp(0.0, 1.0);
        let slice = |n: u64| ((u * n as f64) as u64).min(n.saturating_sub(1));
        match self {
            Domain::Fixed(v) => v.clone(),
            Domain::Uniform { low, high } => ParamValue::Float(lerp(*low, *high, u)),
            Domain::LogUniform { low, high } => {
                ParamValue::Float(lerp(low.ln(), high.ln(), u).exp().clamp(*low, *high))
            }
            Domain::Int { low, high, log: false } => {
                let n = (i128::from(*high) - i128::from(*low) + 1).min(i128::from(u64::MAX)) as u64;
                ParamValue::Int((i128::from(*low) + i128::from(slice(n))).min(i128::from(*high)) as i64)
            }
            Domain::Int { low, high, log: true } => {
                let (l, h) = ((*low as f64 - 0.4999).ln(), (*high as f64 + 0.4999).ln());
                ParamValue::Int((lerp(l, h, u).exp().round() as i64).clamp(*low, *high))
            }
            Domain::Choice(values) => values[slice(values.len() as u64) as usize].clone(),
        }
    }

    /// The values a grid search visits: every choice, every integer of a
    /// small range, or `points` evenly spaced values of a continuous range
    /// (log-spaced for log domains).
    pub fn grid(&self, points: usize) -> Vec<ParamValue> {
        let points = points.max(1);
        let spaced = |lo: f64, hi: f64| -> Vec<f64> {
            if points == 1 || lo == hi {
                return vec![(lo + hi) / 2.0];
            }
            (0..points).map(|i| lerp(lo, hi, i as f64 / (points - 1) as f64)).collect()
        };
        match self {
            Domain::Fixed(v) => vec![v.clone()],
            Domain::Choice(values) => values.clone(),
            Domain::Uniform { low, high } => spaced(*low, *high).into_iter().map(ParamValue::Float).collect(),
            Domain::LogUniform { low, high } => {
                let mut xs: Vec<f64> = spaced(low.ln(), high.ln()).into_iter().map(f64::exp).collect();
                if xs.len() > 1 {
                    // Exact endpoints, not exp(ln(x)).
                    let last = xs.len() - 1;
                    (xs[0], xs[last]) = (*low, *high);
                }
                xs.into_iter().map(ParamValue::Float).collect()
            }
            Domain::Int { low, high, log } => {
                let count = i128::from(*high) - i128::from(*low) + 1;
                if count <= points as i128 {
                    return (*low..=*high).map(ParamValue::Int).collect();
                }
                let xs = if *log {
                    spaced((*low as f64).ln(), (*high as f64).ln()).into_iter().map(f64::exp).collect()
                } else {
                    spaced(*low as f64, *high as f64)
                };
                let mut ints: Vec<i64> = xs.into_iter().map(|x| (x.round() as i64).clamp(*low, *high)).collect();
                ints.dedup();
                ints.into_iter().map(ParamValue::Int).collect()
            }
        }
    }
}

fn both_numeric(a: &ParamValue, b: &ParamValue) -> bool {
    a.as_f64().is_some() && b.as_f64().is_some()
}

fn lerp(low: f64, high: f64, t: f64) -> f64 {
    low + (high - low) * t
}

/// Named domains in a fixed order: the space a searcher explores.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SearchSpace {
    dims: Vec<(String, Domain)>,
}

impl SearchSpace {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a named domain.
    pub fn with(mut self, name: impl Into<String>, domain: Domain) -> Self {
        self.insert(name, domain);
        self
    }

    /// Adds (or replaces) a named domain.
    pub fn insert(&mut self, name: impl Into<String>, domain: Domain) {
        let name = name.into();
        match self.dims.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = domain,
            None => self.dims.push((name, domain)),
        }
    }

    /// The named domains, in insertion order.
    pub fn dims(&self) -> &[(String, Domain)] {
        &self.dims
    }

    /// One dimension's domain.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.dims.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// Names of the dimensions that are actually searched.
    pub fn searched(&self) -> impl Iterator<Item = &str> {
        self.dims.iter().filter(|(_, d)| d.is_searched()).map(|(n, _)| n.as_str())
    }

    /// The parameters at a point of the unit cube: one coordinate for each
    /// searched dimension, in order ([`Domain::at_unit`]); fixed ones keep
    /// their value. Missing coordinates count as 0.5.
    pub fn at_unit(&self, point: &[f64]) -> Params {
        let mut coordinates = point.iter().copied();
        self.dims
            .iter()
            .map(|(n, d)| {
                let u = if d.is_searched() { coordinates.next().unwrap_or(0.5) } else { 0.5 };
                (n.clone(), d.at_unit(u))
            })
            .collect()
    }

    /// Draws one point.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Params {
        self.dims.iter().map(|(n, d)| (n.clone(), d.sample(rng))).collect()
    }
}

/// Reads a config field: a plain value, or a table naming a distribution
/// (`{ uniform = [a, b] }`, `{ loguniform = [a, b] }`, `{ int = [a, b], log = true }`,
/// `{ choice = [...] }`).
impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DomainVisitor)
    }
}

struct DomainVisitor;

const DISTRIBUTIONS: &[&str] = &["uniform", "loguniform", "int", "choice", "log"];

impl<'de> Visitor<'de> for DomainVisitor {
    type Value = Domain;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or a distribution such as { uniform = [a, b] }, { loguniform = [a, b] }, { int = [a, b] } or { choice = [...] }")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Domain, E> {
        Ok(Domain::Fixed(ParamValue::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Domain, E> {
        Ok(Domain::Fixed(ParamValue::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Domain, E> {
        i64::try_from(v).map(|v| Domain::Fixed(ParamValue::Int(v))).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Domain, E> {
        Ok(Domain::Fixed(ParamValue::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Domain, E> {
        Ok(Domain::Fixed(ParamValue::Str(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Domain, A::Error> {
        Err(de::Error::custom("a bare list is ambiguous: write { choice = [...] } to search over values"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Domain, A::Error> {
        let mut kind: Option<(String, Vec<ParamValue>)> = None;
        let mut log = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "log" => log = Some(map.next_value::<bool>()?),
                "uniform" | "loguniform" | "int" | "choice" => {
                    if let Some((prev, _)) = &kind {
                        return Err(de::Error::custom(format!(
                            "both `{prev}` and `{key}` given: a field has one distribution"
                        )));
                    }
                    let values = map.next_value::<Vec<ParamValue>>()?;
                    kind = Some((key, values));
                }
                other => return Err(de::Error::unknown_field(other, DISTRIBUTIONS)),
            }
        }
        let Some((name, values)) = kind else {
            return Err(de::Error::custom(
                "a distribution table needs one of `uniform`, `loguniform`, `int`, `choice`",
            ));
        };
        if log.is_some() && name != "int" {
            return Err(de::Error::custom(format!(
                "`log` applies to `int` only; use loguniform instead of {name} with log"
            )));
        }
        let pair = |values: &[ParamValue]| -> Result<(f64, f64), A::Error> {
            match values {
                [a, b] => match (a.as_f64(), b.as_f64()) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(de::Error::custom(format!("`{name}` needs two numbers, as {name} = [low, high]"))),
                },
                _ => Err(de::Error::custom(format!(
                    "`{name}` needs exactly two numbers, as {name} = [low, high]; got {}",
                    values.len()
                ))),
            }
        };
        Ok(match name.as_str() {
            "uniform" => {
                let (low, high) = pair(&values)?;
                Domain::Uniform { low, high }
            }
            "loguniform" => {
                let (low, high) = pair(&values)?;
                Domain::LogUniform { low, high }
            }
            "int" => match values.as_slice() {
                [a, b] => match (a.as_i64(), b.as_i64()) {
                    (Some(low), Some(high)) => Domain::Int { low, high, log: log.unwrap_or(false) },
                    _ => return Err(de::Error::custom("`int` needs two integers, as int = [low, high]")),
                },
                _ => return Err(de::Error::custom("`int` needs exactly two integers, as int = [low, high]")),
            },
            _ => Domain::Choice(values),
        })
    }
}

/// Whether bigger or smaller is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bigger is better (accuracy).
    #[default]
    Max,
    /// Smaller is better (loss).
    Min,
}

impl Mode {
    /// Maps a metric value to a score where bigger is always better.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Mode::Max => value,
            Mode::Min => -value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn samples_stay_in_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let lu = Domain::LogUniform { low: 1e-4, high: 1e-1 };
        let int_log = Domain::Int { low: 32, high: 512, log: true };
        for _ in 0..10_000 {
            let x = lu.sample(&mut rng).as_f64().unwrap();
            assert!((1e-4..=1e-1).contains(&x), "{x}");
            let n = int_log.sample(&mut rng).as_i64().unwrap();
            assert!((32..=512).contains(&n), "{n}");
        }
    }

    #[test]
    fn log_int_sampling_favours_small_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let d = Domain::Int { low: 1, high: 1000, log: true };
        let small = (0..10_000).filter(|_| d.sample(&mut rng).as_i64().unwrap() <= 31).count();
        // On a log scale half the mass lies below sqrt(1000) ~ 31.6.
        assert!((4_500..5_500).contains(&small), "{small}");
    }

    #[test]
    fn uniform_mean_is_central() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = Domain::Uniform { low: 2.0, high: 4.0 };
        let mean: f64 = (0..20_000).map(|_| d.sample(&mut rng).as_f64().unwrap()).sum::<f64>() / 20_000.0;
        assert!((mean - 3.0).abs() < 0.02, "{mean}");
    }

    #[test]
    fn grid_points_cover_the_range() {
        let d = Domain::LogUniform { low: 1e-4, high: 1e-2 };
        let g: Vec<f64> = d.grid(3).iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(g.len(), 3);
        assert!((g[0] - 1e-4).abs() < 1e-12 && (g[1] - 1e-3).abs() < 1e-9 && (g[2] - 1e-2).abs() < 1e-9);
        assert_eq!(Domain::Int { low: 1, high: 3, log: false }.grid(5).len(), 3);
    }

    #[test]
    fn checks_reject_empty_and_inverted_ranges() {
        assert!(Domain::Uniform { low: 1.0, high: 0.0 }.check().is_err());
        assert!(Domain::LogUniform { low: 0.0, high: 1.0 }.check().is_err());
        assert!(Domain::Choice(vec![]).check().is_err());
        assert!(Domain::Int { low: 0, high: 4, log: true }.check().is_err());
        assert!(Domain::Choice(vec![ParamValue::Int(1), ParamValue::Str("a".into())]).check().is_err());
        assert!(Domain::Choice(vec![ParamValue::Int(1), ParamValue::Float(0.5)]).check().is_ok());
    }
}
