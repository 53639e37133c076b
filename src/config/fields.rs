//! The keys of `[model]` and `[train]`: what each model kind declares
//! (see [`crate::trainable::kind`]), and how a section is checked against it.

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;
use crate::space::{Domain, ParamValue, SearchSpace};

/// The type and range a `[model]`/`[train]` field must have.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// `true` or `false`.
    Bool,
    /// An integer within `min..=max`.
    Int {
        /// The least.
        min: i64,
        /// The most.
        max: i64,
    },
    /// A finite number above `min` (or at it unless `min_open`), below `max`.
    Float {
        /// The bound below.
        min: f64,
        /// Whether `min` itself is refused.
        min_open: bool,
        /// The bound above, not included.
        max: Option<f64>,
    },
    /// One of these names.
    OneOf(&'static [&'static str]),
}

/// One key of a section: its name, what it takes and its default.
pub struct Field {
    /// The key.
    pub name: &'static str,
    /// What its values must be.
    pub expect: Expect,
    /// Its value when the section does not give it.
    pub default: fn() -> ParamValue,
}

/// What a section of a model kind holds.
#[derive(Clone, Copy)]
pub enum Keys {
    /// Exactly these fields, each with its type, range and default.
    Fields(&'static [Field]),
    /// Any names, passed on as written (a program's own options).
    Free,
}

/// Puts a section's fields into the space: checked against `keys`, with
/// defaults filled in. `also` are the section's other keys (`kind`,
/// `max_epochs`...), named with the fields when a key is unknown, and
/// `note` follows that list.
pub(crate) fn fill(
    space: &mut SearchSpace,
    section: &str,
    given: BTreeMap<String, Domain>,
    keys: Keys,
    also: &[&str],
    note: &str,
    file: &Path,
) -> Result<(), ConfigError> {
    match keys {
        Keys::Fields(fields) => fill_section(space, section, given, fields, also, note, file),
        Keys::Free => fill_free(space, section, given, file),
    }
}

/// Puts every field of a section into the space as the user wrote it (the
/// hyperparameters of a `command` program, which Gauntlet does not know).
fn fill_free(
    space: &mut SearchSpace,
    section: &str,
    given: BTreeMap<String, Domain>,
    file: &Path,
) -> Result<(), ConfigError> {
    for (name, domain) in given {
        let key = format!("{section}.{name}");
        // argparse and most option parsers read `--a-b` and `--a_b` as one option.
        let same = |n: &str| n.replace('-', "_") == name.replace('-', "_");
        if let Some((other, _)) = space.dims().iter().find(|(n, _)| same(n)) {
            return Err(ConfigError::invalid(
                file,
                &key,
                format!("clashes with `{other}` (given before): both become the option --{name}; give it once"),
            ));
        }
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            || name.starts_with('-')
        {
            return Err(ConfigError::invalid(
                file,
                &key,
                "a parameter name becomes `--name value`: use letters, digits, '_' and '-'",
            ));
        }
        if crate::run_dir::RESERVED_NAMES.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                file,
                &key,
                format!(
                    "`{name}` names a column of leaderboard.csv and results.jsonl already ({}); rename it",
                    crate::run_dir::RESERVED_NAMES.join(", ")
                ),
            ));
        }
        domain.check().map_err(|m| ConfigError::invalid(file, &key, m))?;
        let texts: Vec<&ParamValue> = match &domain {
            Domain::Fixed(v) => vec![v],
            Domain::Choice(vs) => vs.iter().collect(),
            _ => Vec::new(),
        };
        if texts.iter().any(|v| v.as_str().is_some_and(|s| s.contains('\0'))) {
            return Err(ConfigError::invalid(
                file,
                &key,
                "a text holds a NUL byte, which no program argument can hold",
            ));
        }
        space.insert(&name, domain);
    }
    Ok(())
}

fn fill_section(
    space: &mut SearchSpace,
    section: &str,
    mut given: BTreeMap<String, Domain>,
    fields: &[Field],
    also: &[&str],
    note: &str,
    file: &Path,
) -> Result<(), ConfigError> {
    if let Some(unknown) = given.keys().find(|k| !fields.iter().any(|f| f.name == k.as_str())) {
        let known: Vec<&str> = also.iter().copied().chain(fields.iter().map(|f| f.name)).collect();
        return Err(ConfigError::invalid(
            file,
            format!("{section}.{unknown}"),
            format!("unknown key; expected one of {}{note}", known.join(", ")),
        ));
    }
    for field in fields {
        let key = format!("{section}.{}", field.name);
        let domain = given.remove(field.name).unwrap_or_else(|| Domain::Fixed((field.default)()));
        let domain = check_field(&domain, field.expect).map_err(|m| ConfigError::invalid(file, &key, m))?;
        space.insert(field.name, domain);
    }
    Ok(())
}

/// Checks a domain against what its field expects; returns it normalised
/// (integers written for float fields become floats).
fn check_field(domain: &Domain, expect: Expect) -> Result<Domain, String> {
    domain.check()?;
    let value = |v: &ParamValue| check_value(v, expect);
    Ok(match (domain, expect) {
        (Domain::Fixed(v), _) => Domain::Fixed(value(v)?),
        (Domain::Choice(vs), _) => Domain::Choice(vs.iter().map(value).collect::<Result<_, _>>()?),
        (Domain::Uniform { low, high } | Domain::LogUniform { low, high }, Expect::Float { .. }) => {
            value(&ParamValue::Float(*low))?;
            value(&ParamValue::Float(*high))?;
            domain.clone()
        }
        (Domain::Int { low, high, .. }, Expect::Int { .. }) => {
            value(&ParamValue::Int(*low))?;
            value(&ParamValue::Int(*high))?;
            domain.clone()
        }
        (_, expect) => return Err(format!("this distribution does not fit: expected {}", describe(expect))),
    })
}

fn check_value(v: &ParamValue, expect: Expect) -> Result<ParamValue, String> {
    match expect {
        Expect::Int { min, max } => match v {
            ParamValue::Int(i) if (min..=max).contains(i) => Ok(v.clone()),
            _ => Err(format!("expected {}, got {v}", describe(expect))),
        },
        Expect::Float { min, min_open, max } => {
            let Some(x) = v.as_f64() else {
                return Err(format!("expected {}, got {v}", describe(expect)));
            };
            let low_ok = if min_open { x > min } else { x >= min };
            let high_ok = max.is_none_or(|m| x < m);
            if low_ok && high_ok && x.is_finite() {
                Ok(ParamValue::Float(x))
            } else {
                Err(format!("expected {}, got {v}", describe(expect)))
            }
        }
        Expect::OneOf(names) => match v.as_str() {
            Some(s) if names.contains(&s) => Ok(v.clone()),
            _ => Err(format!("expected {}, got {v}", describe(expect))),
        },
        Expect::Bool => match v {
            ParamValue::Bool(_) => Ok(v.clone()),
            _ => Err(format!("expected {}, got {v}", describe(expect))),
        },
    }
}

fn describe(expect: Expect) -> String {
    match expect {
        Expect::Int { min, max } => {
            format!("an integer from {min} to {max} (or {{ int = [a, b] }}, {{ choice = [...] }})")
        }
        Expect::Float { min, min_open, max } => {
            let low = if min_open { format!("> {min}") } else { format!(">= {min}") };
            let high = max.map(|m| format!(" and < {m}")).unwrap_or_default();
            format!("a number {low}{high} (or {{ uniform = [a, b] }}, {{ loguniform = [a, b] }}, {{ choice = [...] }})")
        }
        Expect::OneOf(names) => format!("one of {} (or {{ choice = [...] }} of them)", names.join(", ")),
        Expect::Bool => "true or false (or { choice = [true, false] })".into(),
    }
}
