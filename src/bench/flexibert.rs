//! The FlexiBERT benchmark: 500 BERT-like encoders, pre-trained and fine-tuned on GLUE.
//!
//! File format (`flexibert/BERT_benchmark.json`): a JSON array whose element `i` has `id == i`,
//! `scores` (GLUE task scores and their mean `glue`) and
//! `hparams.model_hparam_overrides` (`hidden_size`, `nas_config.encoder_layers`). Every field
//! the tool uses is validated; errors name the file, the record and the field. A key given
//! twice in one object is an error (JSON parsers usually keep the last one silently).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use serde::Deserialize;

use super::bounds::{self, at_most};
use super::{Arch, BenchFormat, BenchKind, Benchmark, DataSource, Entry, FieldError};

pub mod space;

/// The FlexiBERT family's benchmark format: truth `glue`, higher is better; a bench-file
/// record is numbered by its position.
const FORMAT: BenchFormat = BenchFormat {
    name: "flexibert",
    raw_truth: ("glue", 1.0),
    load,
    record_from_config: |config, index, _id| record_from_config(config, index).map(Arch::new),
};

/// The FlexiBERT family.
pub const KIND: BenchKind = BenchKind::new(&FORMAT);

/// Path of the benchmark file inside the data folder.
pub const FILE: &str = "flexibert/BERT_benchmark.json";

/// Path inside the data folder of the reference proxy values computed by the benchmark's
/// authors (optional; `lpzero baselines` compares against it when present).
pub const REFERENCE_FILE: &str = "flexibert/reference_proxy_scores.csv";

/// The token mixer of one encoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Mixer {
    /// Self-attention, scaled dot product (`SA`/`SDP`).
    Sdp,
    /// Self-attention, weighted multiplicative (`SA`/`WMA`).
    Wma,
    /// Linear transform, real part of a 2-D DFT (`LT`/`DFT`).
    Dft,
    /// Linear transform, unnormalised 2-D DCT-II (`LT`/`DCT`).
    Dct,
    /// Dynamic separable convolution with an odd kernel size (`DSC`/`K`).
    Dsc {
        /// Convolution kernel size (odd, ≥ 1).
        kernel: usize,
    },
}

impl Mixer {
    /// True for the mixers wrapped with an output dense + residual + LayerNorm (SA and DSC).
    pub fn has_output_block(self) -> bool {
        !matches!(self, Mixer::Dft | Mixer::Dct)
    }

    /// Short label such as `SA-SDP` or `DSC-9`.
    pub fn label(self) -> String {
        match self {
            Mixer::Sdp => "SA-SDP".into(),
            Mixer::Wma => "SA-WMA".into(),
            Mixer::Dft => "LT-DFT".into(),
            Mixer::Dct => "LT-DCT".into(),
            Mixer::Dsc { kernel } => format!("DSC-{kernel}"),
        }
    }
}

/// One encoder layer as described by the benchmark.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Layer {
    /// Token mixer.
    pub mixer: Mixer,
    /// `num_operation_heads`.
    pub heads: usize,
    /// `feed_forward_dimension` (used only in intended-size mode).
    pub ffn_width: usize,
    /// `num_feed_forward`: number of GELU-activated hidden FFN layers.
    pub ffn_layers: usize,
}

/// One benchmark record: the architecture and its GLUE results.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    /// Record id: its position in the benchmark file (for the shipped benchmark also its
    /// `id` field), or among the records of a bench file.
    pub id: usize,
    /// `hidden_size` from the record (used only in intended-size mode).
    pub hidden_size: usize,
    /// Encoder layers, input side first.
    pub layers: Vec<Layer>,
    /// All GLUE task scores as stored, including their mean `glue` (the ground truth); empty
    /// for a record of a bench file, whose ground truth is its `truth` field.
    pub scores: BTreeMap<String, f64>,
}

impl Record {
    /// The GLUE average, when the record carries GLUE scores.
    pub fn glue(&self) -> Option<f64> {
        self.scores.get("glue").copied()
    }
}

#[derive(Deserialize)]
struct RawRecord {
    id: usize,
    scores: BTreeMap<String, f64>,
    hparams: RawHparams,
}

#[derive(Deserialize)]
struct RawHparams {
    model_hparam_overrides: RawOverrides,
}

#[derive(Deserialize)]
struct RawOverrides {
    hidden_size: usize,
    nas_config: RawNasConfig,
}

#[derive(Deserialize)]
struct RawNasConfig {
    encoder_layers: Vec<RawLayer>,
}

/// The architecture part of a bench-file record: `{"hidden_size", "encoder_layers"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArch {
    hidden_size: usize,
    encoder_layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    operation_type: String,
    operation_parameter: serde_json::Value,
    num_operation_heads: usize,
    feed_forward_dimension: usize,
    num_feed_forward: usize,
}

/// Reads and validates the benchmark file [`FILE`] of `data`.
pub fn load(data: &DataSource) -> Result<Benchmark> {
    let text = data.read(FILE, "the FlexiBERT benchmark")?;
    let mut bench = parse(&text, &data.name(FILE))?;
    bench.data = Some(data.clone());
    Ok(bench)
}

/// Parses benchmark text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Benchmark> {
    let file = path.display();
    let value = super::json::parse(text).map_err(|e| anyhow!("{file}: {e}"))?;
    let serde_json::Value::Array(values) = value else {
        return Err(anyhow!(
            "{file}: expected a JSON array of records, found {}",
            super::describe(&value)
        ));
    };
    let mut entries = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let (record, glue) = parse_record(value, index).map_err(|e| anyhow!("{file}: {e}"))?;
        entries.push(Entry {
            key: record.id.to_string(),
            truth: glue,
            arch: Arch::new(record),
        });
    }
    if entries.is_empty() {
        return Err(anyhow!("{file}: the benchmark holds no record"));
    }
    Ok(Benchmark {
        kind: KIND,
        source: path.to_path_buf(),
        data: None,
        entries,
        truth_name: "GLUE average (scores.glue), higher is better",
        raw_truth: KIND.raw_truth(),
    })
}

/// Names a record in messages by its id when readable, else by its position.
fn record_label(value: &serde_json::Value, index: usize) -> String {
    match value.get("id").and_then(|v| v.as_u64()) {
        Some(id) => format!("record id {id}"),
        None => format!("record at index {index}"),
    }
}

/// Parses one benchmark record; returns it with its GLUE average.
fn parse_record(value: &serde_json::Value, index: usize) -> Result<(Record, f64), String> {
    let label = record_label(value, index);
    let raw: RawRecord = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(record)".to_string()
        } else {
            path
        };
        let inner = e.inner().to_string();
        let clip = |t: &str| crate::report::clip_to(t, crate::report::MESSAGE_CHARS).into_owned();
        format!("{label}: field `{}`: {}", clip(&field), clip(&inner))
    })?;
    let field_err = |field: &str, msg: String| format!("{label}: field `{field}`: {msg}");
    if raw.id != index {
        return Err(field_err(
            "id",
            format!(
                "expected {index} (ids must be contiguous from 0 in file order), found {}",
                raw.id
            ),
        ));
    }
    let glue = *raw
        .scores
        .get("glue")
        .ok_or_else(|| field_err("scores.glue", "missing; expected the GLUE average".into()))?;
    for (task, v) in &raw.scores {
        if !v.is_finite() {
            return Err(field_err(
                &format!("scores.{task}"),
                format!("expected a finite number, found {v}"),
            ));
        }
    }
    let overrides = &raw.hparams.model_hparam_overrides;
    let layers = check_layers(
        overrides.hidden_size,
        &overrides.nas_config.encoder_layers,
        "hparams.model_hparam_overrides.hidden_size",
        "hparams.model_hparam_overrides.nas_config.encoder_layers",
    )
    .map_err(|e| field_err(&e.field, e.message))?;
    let record = Record {
        id: raw.id,
        hidden_size: overrides.hidden_size,
        layers,
        scores: raw.scores,
    };
    Ok((record, glue))
}

/// Builds the record numbered `id` from the `config` object of a bench-file record
/// (`{"hidden_size": .., "encoder_layers": [..]}`, the layers as in the benchmark file), with
/// the benchmark's checks. Field paths in errors are relative to `config`.
fn record_from_config(config: &serde_json::Value, id: usize) -> Result<Record, FieldError> {
    let raw: RawArch = serde_path_to_error::deserialize(config).map_err(FieldError::from_serde)?;
    let layers = check_layers(
        raw.hidden_size,
        &raw.encoder_layers,
        "hidden_size",
        "encoder_layers",
    )?;
    Ok(Record {
        id,
        hidden_size: raw.hidden_size,
        layers,
        scores: BTreeMap::new(),
    })
}

/// Validates an architecture (hidden size and layers) and builds its layers; `hidden_field`
/// and `layers_field` name the two fields in errors.
fn check_layers(
    hidden_size: usize,
    raw_layers: &[RawLayer],
    hidden_field: &str,
    layers_field: &str,
) -> Result<Vec<Layer>, FieldError> {
    if hidden_size == 0 {
        return Err(FieldError::new(
            hidden_field,
            "expected a positive integer, found 0",
        ));
    }
    at_most(hidden_size, bounds::MAX_WIDTH).map_err(|m| FieldError::new(hidden_field, m))?;
    if raw_layers.is_empty() {
        return Err(FieldError::new(
            layers_field,
            "expected at least one encoder layer, found none",
        ));
    }
    at_most(raw_layers.len(), bounds::MAX_LAYERS)
        .map_err(|m| FieldError::new(layers_field, format!("{m} layers")))?;
    let mut layers = Vec::new();
    for (l, raw_layer) in raw_layers.iter().enumerate() {
        let f = |name: &str| format!("{layers_field}[{l}].{name}");
        let param = &raw_layer.operation_parameter;
        let mixer = match raw_layer.operation_type.as_str() {
            "SA" => match param.as_str() {
                Some("SDP") => Mixer::Sdp,
                Some("WMA") => Mixer::Wma,
                _ => {
                    return Err(FieldError::new(
                        &f("operation_parameter"),
                        format!(
                            "expected \"SDP\" or \"WMA\" for SA, found {}",
                            crate::report::clip(&param.to_string())
                        ),
                    ))
                }
            },
            "LT" => match param.as_str() {
                Some("DFT") => Mixer::Dft,
                Some("DCT") => Mixer::Dct,
                _ => {
                    return Err(FieldError::new(
                        &f("operation_parameter"),
                        format!(
                            "expected \"DFT\" or \"DCT\" for LT, found {}",
                            crate::report::clip(&param.to_string())
                        ),
                    ))
                }
            },
            "DSC" => match param.as_u64() {
                Some(k) if k % 2 == 1 && k <= bounds::MAX_KERNEL as u64 => {
                    Mixer::Dsc { kernel: k as usize }
                }
                _ => {
                    return Err(FieldError::new(
                        &f("operation_parameter"),
                        format!(
                            "expected an odd positive integer kernel size for DSC, at most {}, \
                             found {}",
                            bounds::MAX_KERNEL,
                            crate::report::clip(&param.to_string())
                        ),
                    ))
                }
            },
            other => {
                return Err(FieldError::new(
                    &f("operation_type"),
                    format!(
                        "expected \"SA\", \"LT\" or \"DSC\", found \"{}\"",
                        crate::report::clip(other)
                    ),
                ))
            }
        };
        for (name, v, max) in [
            (
                "num_operation_heads",
                raw_layer.num_operation_heads,
                bounds::MAX_HEADS,
            ),
            (
                "feed_forward_dimension",
                raw_layer.feed_forward_dimension,
                bounds::MAX_FFN_WIDTH,
            ),
            (
                "num_feed_forward",
                raw_layer.num_feed_forward,
                bounds::MAX_FFN_LAYERS,
            ),
        ] {
            if v == 0 {
                return Err(FieldError::new(
                    &f(name),
                    "expected a positive integer, found 0",
                ));
            }
            at_most(v, max).map_err(|m| FieldError::new(&f(name), m))?;
        }
        layers.push(Layer {
            mixer,
            heads: raw_layer.num_operation_heads,
            ffn_width: raw_layer.feed_forward_dimension,
            ffn_layers: raw_layer.num_feed_forward,
        });
    }
    Ok(layers)
}
