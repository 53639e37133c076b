//! How much memory a built-in network would take to train, known before it
//! is built: a trial whose parameters describe a network past
//! [`MAX_TRAINING_BYTES`] is invalid (it fails at once, with the size in
//! its message), and a search space whose *smallest* network is past it is
//! refused before anything runs.
//!
//! The estimate: 16 bytes a parameter (the weights, their gradients and
//! Adam's two moments, as f32) plus 8 bytes for each activation of each
//! sample of a batch (kept for the backward pass, and its gradient).

use crate::config::{Domain, ParamValue, Params, SearchSpace};

/// The most memory one trial's network may need to train.
pub const MAX_TRAINING_BYTES: f64 = (8u64 << 30) as f64;

/// A network's size: parameters, and activations for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Trainable parameters.
    pub parameters: f64,
    /// Activations one sample produces on its way through (floats).
    pub activations: f64,
}

impl Footprint {
    /// The bytes training needs with mini-batches of `batch` samples.
    pub fn training_bytes(&self, batch: f64) -> f64 {
        16.0 * self.parameters + 8.0 * batch * self.activations
    }

    /// Refuses a network past [`MAX_TRAINING_BYTES`], saying how large it is.
    pub fn check(&self, batch: f64) -> Result<(), String> {
        let bytes = self.training_bytes(batch);
        if bytes <= MAX_TRAINING_BYTES {
            return Ok(());
        }
        Err(format!(
            "this network would have {} parameters and need about {} to train with batches of {batch} \
             (16 bytes a parameter for weights, gradients and Adam's moments, plus activations); \
             a trial may need at most {}",
            count(self.parameters),
            bytes_text(bytes),
            bytes_text(MAX_TRAINING_BYTES)
        ))
    }
}

/// A number of parameters in words: `1.2e9`, or exactly when small.
fn count(n: f64) -> String {
    if n < 1e6 {
        format!("{n:.0}")
    } else {
        format!("{n:.2e}")
    }
}

/// Bytes in words: `3.2 GiB`.
pub fn bytes_text(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Finds the smallest network a search space allows, by `footprint` of
/// each combination of the candidate values of `keys` (the few values of
/// each that can be smallest: its lowest, the next one, every choice); the
/// other parameters keep their first candidate. Returns its size in bytes
/// and the values that give it.
pub fn smallest(
    space: &SearchSpace,
    keys: &[&str],
    mut footprint: impl FnMut(&Params) -> Option<f64>,
) -> Option<(f64, Params)> {
    let candidates: Vec<(String, Vec<ParamValue>)> = space
        .dims()
        .iter()
        .filter(|(name, _)| keys.contains(&name.as_str()))
        .map(|(name, domain)| (name.clone(), lowest(domain)))
        .collect();
    let mut best: Option<(f64, Params)> = None;
    // Saturating: a product that wraps (256 values in each of 8 keys) would be 0, checking nothing.
    let combos = candidates.iter().try_fold(1usize, |n, (_, v)| n.checked_mul(v.len())).unwrap_or(usize::MAX);
    for mut i in 0..combos.min(1 << 16) {
        let mut params = Params::new();
        for (name, values) in &candidates {
            params.insert(name.clone(), values[i % values.len()].clone());
            i /= values.len();
        }
        if let Some(bytes) = footprint(&params) {
            if best.as_ref().is_none_or(|(b, _)| bytes < *b) {
                best = Some((bytes, params));
            }
        }
    }
    best
}

/// Says how large the smallest network of `space` is, when even that one
/// is past [`MAX_TRAINING_BYTES`]: `bytes` sizes one combination of `keys`.
pub fn too_large(space: &SearchSpace, keys: &[&str], bytes: impl FnMut(&Params) -> Option<f64>) -> Option<String> {
    let (least, params) = smallest(space, keys, bytes)?;
    if least <= MAX_TRAINING_BYTES {
        return None;
    }
    let values: Vec<String> = params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    Some(format!(
        "even the smallest network this search space allows ({}) needs about {} to train; a trial may need \
         at most {}: lower hidden_units, hidden_layers, channels or batch_size",
        values.join(", "),
        bytes_text(least),
        bytes_text(MAX_TRAINING_BYTES)
    ))
}

/// The values of a domain among which its smallest network lies: sizes
/// grow with each parameter past its first values, except where a zero
/// (no hidden layer) or pooling shrinks them, so the lowest two values
/// of a range, the lowest two integer choices and every other distinct
/// choice (up to 64) are enough.
fn lowest(domain: &Domain) -> Vec<ParamValue> {
    match domain {
        Domain::Fixed(v) => vec![v.clone()],
        Domain::Choice(values) => {
            let mut ints: Vec<i64> =
                values.iter().filter_map(|v| if let ParamValue::Int(i) = v { Some(*i) } else { None }).collect();
            ints.sort_unstable();
            ints.dedup();
            ints.truncate(2);
            let mut out: Vec<ParamValue> = ints.into_iter().map(ParamValue::Int).collect();
            for v in values {
                if out.len() >= 64 {
                    break;
                }
                if !matches!(v, ParamValue::Int(_)) && !out.contains(v) {
                    out.push(v.clone());
                }
            }
            out
        }
        Domain::Int { low, high, .. } => {
            let span = high.saturating_sub(*low);
            if span <= 16 {
                (*low..=*high).map(ParamValue::Int).collect()
            } else {
                vec![ParamValue::Int(*low), ParamValue::Int(low + 1)]
            }
        }
        Domain::Uniform { low, .. } | Domain::LogUniform { low, .. } => vec![ParamValue::Float(*low)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_and_its_words() {
        let f = Footprint { parameters: 1e6, activations: 1000.0 };
        assert_eq!(f.training_bytes(100.0), 16e6 + 8e5);
        assert!(f.check(100.0).is_ok());
        let huge = Footprint { parameters: 7e10, activations: 1e6 };
        let e = huge.check(128.0).unwrap_err();
        assert!(e.contains("7.00e10 parameters") && e.contains("TiB") && e.contains("8.0 GiB"), "{e}");
        assert_eq!(bytes_text(512.0), "512 bytes");
        assert_eq!(bytes_text(3.5 * 1024.0 * 1024.0), "3.5 MiB");
    }

    #[test]
    fn the_smallest_network_is_found_among_few_candidates() {
        let space = SearchSpace::new()
            .with("units", Domain::Int { low: 100, high: 1 << 20, log: true })
            .with("layers", Domain::Int { low: 0, high: 4, log: false })
            .with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 });
        let mut seen = 0;
        let (bytes, params) = smallest(&space, &["units", "layers"], |p| {
            seen += 1;
            let (u, l) = (p["units"].as_f64()?, p["layers"].as_f64()?);
            Some(if l == 0.0 { 50.0 } else { u * l })
        })
        .unwrap();
        assert_eq!((bytes, params["layers"].as_i64()), (50.0, Some(0)));
        assert_eq!(seen, 2 * 5, "two unit candidates times every layer count");
        assert!(!params.contains_key("lr"), "only the named keys");
    }

    #[test]
    fn long_choices_are_cut_to_their_candidates_and_never_wrap_the_count() {
        // 256 values in each of 8 keys: 2^64 combinations, which wrapped to 0 and checked none.
        let mut space = SearchSpace::new();
        let keys: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
        for k in &keys {
            space = space.with(k, Domain::Choice(vec![ParamValue::Int(1 << 20); 256]));
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (bytes, _) = smallest(&space, &names, |_| Some(1e15)).unwrap();
        assert_eq!(bytes, 1e15);
        // The smallest of a long choice is found however far back it is written.
        let mut values = vec![ParamValue::Int(64); 65_536];
        values.push(ParamValue::Int(0));
        let space = SearchSpace::new().with("layers", Domain::Choice(values));
        let (bytes, params) = smallest(&space, &["layers"], |p| p["layers"].as_f64().map(|l| 1.0 + l)).unwrap();
        assert_eq!((bytes, params["layers"].as_i64()), (1.0, Some(0)));
    }
}
