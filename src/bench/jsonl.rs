//! Bench files: your own architectures, in JSON Lines, one record per line.
//!
//! ```text
//! {"id": "small_sa", "family": "flexibert", "config": {"hidden_size": 256, "encoder_layers": [
//!   {"operation_type": "SA", "operation_parameter": "SDP", "num_operation_heads": 4,
//!    "feed_forward_dimension": 1024, "num_feed_forward": 1}]}, "truth": 71.2, "higher_is_better": true}
//! ```
//!
//! (one line in the file). The fields of a record:
//!
//! * `id`: a name for the architecture (a string, or a non-negative integer), unique in the
//!   file; outputs use it as the architecture key.
//! * `family`: the name of a registered family (`"flexibert"` or `"gpt2"`); every record of a
//!   file has the same family.
//! * `config`: the architecture, in the fields of that family's shipped benchmark:
//!   FlexiBERT `{"hidden_size", "encoder_layers"}` (the layers exactly as in
//!   `BERT_benchmark.json`); GPT-2 the keys of a benchmark model config (`n_token`, `n_layer`,
//!   `d_model`, `d_embed`, `div_val`, `n_head`, `d_inner`, `cutoffs`, `tie_weight`,
//!   `tie_projs`, `adaptive`, `tgt_len`, `dropout`, `dropatt`, `weight_init_std`,
//!   `proj_init_std`; other keys are ignored). The config gets the checks of the shipped
//!   benchmark.
//! * `truth` (optional): the architecture's trained quality, a number.
//! * `higher_is_better`: `true` when a larger `truth` is better (accuracy, GLUE), `false` when
//!   a smaller one is (perplexity, loss); required with `truth`, and the same on every record.
//!   lpzero negates a lower-is-better truth so that, as everywhere in the tool, the truth it
//!   correlates with is higher-is-better.
//!
//! Either every record has a `truth` or none has: without it, proxies can be computed but not
//! correlated. Blank lines are skipped. A field given twice, an unknown field or a bad value
//! is an error naming the file, the line and the field.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use super::{describe, json, BenchKind, Benchmark, Entry, FieldError};

/// The fields a record may have, in the order the documentation lists them.
pub const FIELDS: [&str; 5] = ["id", "family", "config", "truth", "higher_is_better"];

/// Reads and validates the bench file at `path`, whose records may name the families of
/// `kinds` (the registered ones: [`crate::models::kinds`]).
pub fn load(path: &Path, kinds: &[BenchKind]) -> Result<Benchmark> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the bench file", path.display()))?;
    parse(&text, path, kinds)
}

/// The record-level fields of one line, before the family's checks of `config`.
struct Line {
    id: String,
    kind: BenchKind,
    config: Value,
    truth: Option<f64>,
    higher_is_better: Option<bool>,
}

/// What the first record fixed for the whole file.
struct First {
    line: usize,
    kind: BenchKind,
    has_truth: bool,
    higher_is_better: Option<bool>,
}

/// Parses bench-file text whose records may name the families of `kinds`; `path` only names
/// the file in errors.
pub fn parse(text: &str, path: &Path, kinds: &[BenchKind]) -> Result<Benchmark> {
    let file = path.display();
    let mut entries = Vec::new();
    let mut first: Option<First> = None;
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (index, text_line) in text.lines().enumerate() {
        let n = index + 1;
        if text_line.trim().is_empty() {
            continue;
        }
        let value = json::parse(text_line).map_err(|e| {
            let what = if e.is_data() {
                json::message(&e)
            } else {
                format!(
                    "not valid JSON ({}); expected one JSON object per line",
                    json::message(&e)
                )
            };
            anyhow!("{file}: line {n}, column {}: {what}", e.column())
        })?;
        let at = |e: FieldError| anyhow!("{file}: line {n}: field `{}`: {}", e.field, e.message);
        let line = read_line(value, kinds).map_err(at)?;
        let fixed = first.get_or_insert(First {
            line: n,
            kind: line.kind,
            has_truth: line.truth.is_some(),
            higher_is_better: line.higher_is_better,
        });
        check_consistent(&line, fixed).map_err(at)?;
        if let Some(earlier) = ids.insert(line.id.clone(), n) {
            return Err(at(FieldError::new(
                "id",
                format!(
                    "`{}` is also the id of line {earlier}; expected each id once",
                    line.id
                ),
            )));
        }
        let read = line.kind.format().record_from_config;
        let arch =
            read(&line.config, entries.len(), &line.id).map_err(|e| at(e.within("config")))?;
        let truth = match (line.truth, line.higher_is_better) {
            (Some(t), Some(false)) => -t,
            (Some(t), _) => t,
            (None, _) => f64::NAN,
        };
        entries.push(Entry {
            key: line.id,
            truth,
            arch,
        });
    }
    let Some(first) = first else {
        return Err(anyhow!(
            "{file}: holds no record; expected one JSON object per line, each with the fields {}",
            FIELDS.join(", ")
        ));
    };
    let (truth_name, sign) = match (first.has_truth, first.higher_is_better) {
        (false, _) => ("none (the records have no `truth`)", 1.0),
        (true, Some(false)) => (
            "negated `truth` (the file's truth is lower-is-better)",
            -1.0,
        ),
        (true, _) => ("`truth`, higher is better", 1.0),
    };
    Ok(Benchmark {
        kind: first.kind,
        source: path.to_path_buf(),
        data: None,
        entries,
        truth_name,
        raw_truth: ("truth", sign),
    })
}

/// Reads the record-level fields of one parsed line (`kinds`: the families it may name).
fn read_line(value: Value, kinds: &[BenchKind]) -> Result<Line, FieldError> {
    let Value::Object(mut obj) = value else {
        return Err(FieldError::new(
            ".",
            format!(
                "expected a JSON object with the fields {}, found {}",
                FIELDS.join(", "),
                describe(&value)
            ),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FieldError::new(
            unknown,
            format!("unknown field; expected only {}", FIELDS.join(", ")),
        ));
    }
    let id_expected = "a non-empty string or a non-negative integer naming the architecture";
    let id = take(&mut obj, "id", id_expected, |v| match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        other => Err(other),
    })?;
    let names: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
    let family_expected = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "a registered family".to_string(),
    };
    let family_expected = family_expected.as_str();
    let kind = take(&mut obj, "family", family_expected, |v| match &v {
        Value::String(s) => kinds.iter().copied().find(|k| k.name() == s).ok_or(v),
        _ => Err(v),
    })?;
    let kind = required(kind, "family", family_expected)?;
    let config_expected = format!("an object with the {kind} architecture fields");
    let config = take(&mut obj, "config", &config_expected, |v| match v {
        Value::Object(_) => Ok(v),
        other => Err(other),
    })?;
    let truth = take(&mut obj, "truth", "a number", |v| v.as_f64().ok_or(v))?;
    let higher_is_better = take(&mut obj, "higher_is_better", "true or false", |v| {
        v.as_bool().ok_or(v)
    })?;
    if truth.is_some() && higher_is_better.is_none() {
        return Err(FieldError::new(
            "higher_is_better",
            "missing; expected true or false to say how `truth` is oriented (true for \
             accuracy-like scores, false for perplexity or loss)",
        ));
    }
    Ok(Line {
        id: required(id, "id", id_expected)?,
        kind,
        config: required(config, "config", &config_expected)?,
        truth,
        higher_is_better,
    })
}

/// Takes `field` out of a record: `None` when absent or null, the value `convert` makes of it,
/// or an error saying what was `expected` when `convert` hands the value back.
fn take<T>(
    obj: &mut serde_json::Map<String, Value>,
    field: &str,
    expected: &str,
    convert: impl FnOnce(Value) -> Result<T, Value>,
) -> Result<Option<T>, FieldError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => convert(v).map(Some).map_err(|v| {
            FieldError::new(
                field,
                format!("expected {expected}, found {}", describe(&v)),
            )
        }),
    }
}

/// A field that must be given.
fn required<T>(value: Option<T>, field: &str, expected: &str) -> Result<T, FieldError> {
    value.ok_or_else(|| FieldError::new(field, format!("missing; expected {expected}")))
}

/// Checks that a record agrees with the first one on family, truth and orientation.
fn check_consistent(line: &Line, first: &First) -> Result<(), FieldError> {
    if line.kind != first.kind {
        return Err(FieldError::new(
            "family",
            format!(
                "\"{}\", but line {} is \"{}\"; expected one family per file",
                line.kind, first.line, first.kind
            ),
        ));
    }
    if line.truth.is_some() != first.has_truth {
        let (this, that) = if first.has_truth {
            ("missing", "has one")
        } else {
            ("given", "has none")
        };
        return Err(FieldError::new(
            "truth",
            format!(
                "{this}, but line {} {that}; expected a truth on every record or on none",
                first.line
            ),
        ));
    }
    if first.has_truth && line.higher_is_better != first.higher_is_better {
        return Err(FieldError::new(
            "higher_is_better",
            format!(
                "{}, but line {} says {}; expected one orientation per file",
                line.higher_is_better.unwrap_or_default(),
                first.line,
                first.higher_is_better.unwrap_or_default()
            ),
        ));
    }
    Ok(())
}
