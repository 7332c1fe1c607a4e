//! The FlexiBERT benchmark: 500 BERT-like encoders, pre-trained and fine-tuned on GLUE.
//!
//! File format (`flexibert/BERT_benchmark.json`): a JSON array whose element `i` has `id == i`,
//! `scores` (GLUE task scores and their mean `glue`) and
//! `hparams.model_hparam_overrides` (`hidden_size`, `nas_config.encoder_layers`). Every field
//! the tool uses is validated; errors name the file, the record and the field.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use super::bounds::{self, at_most};
use super::{Arch, BenchKind, Benchmark, Entry};

/// Path of the benchmark file inside the data directory.
pub const FILE: &str = "flexibert/BERT_benchmark.json";

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
    /// Record id (equal to its position in the file).
    pub id: usize,
    /// `hidden_size` from the record (used only in intended-size mode).
    pub hidden_size: usize,
    /// Encoder layers, input side first.
    pub layers: Vec<Layer>,
    /// All GLUE task scores as stored, including their mean `glue` (the ground truth).
    pub scores: BTreeMap<String, f64>,
}

impl Record {
    /// The ground truth: the GLUE average.
    pub fn glue(&self) -> f64 {
        self.scores["glue"]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    operation_type: String,
    operation_parameter: serde_json::Value,
    num_operation_heads: usize,
    feed_forward_dimension: usize,
    num_feed_forward: usize,
}

/// Reads and validates the benchmark file at `path`.
pub fn load(path: &Path) -> Result<Benchmark> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the FlexiBERT benchmark", path.display()))?;
    parse(&text, path)
}

/// Parses benchmark text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Benchmark> {
    let file = path.display();
    let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        let e = e.to_string();
        anyhow!(
            "{file}: expected a JSON array of records: {}",
            crate::report::clip(&e)
        )
    })?;
    let mut entries = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let record = parse_record(value, index).map_err(|e| anyhow!("{file}: {e}"))?;
        entries.push(Entry {
            key: record.id.to_string(),
            truth: record.glue(),
            arch: Arch::Flexibert(record),
        });
    }
    if entries.is_empty() {
        return Err(anyhow!("{file}: the benchmark holds no record"));
    }
    Ok(Benchmark {
        kind: BenchKind::Flexibert,
        source: path.to_path_buf(),
        entries,
        truth_name: "GLUE average (scores.glue), higher is better",
    })
}

/// Names a record in messages by its id when readable, else by its position.
fn record_label(value: &serde_json::Value, index: usize) -> String {
    match value.get("id").and_then(|v| v.as_u64()) {
        Some(id) => format!("record id {id}"),
        None => format!("record at index {index}"),
    }
}

fn parse_record(value: &serde_json::Value, index: usize) -> Result<Record, String> {
    let label = record_label(value, index);
    let raw: RawRecord = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(record)".to_string()
        } else {
            path
        };
        let inner = e.inner().to_string();
        format!(
            "{label}: field `{}`: {}",
            crate::report::clip(&field),
            crate::report::clip(&inner)
        )
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
    raw.scores
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
    let layers_field = "hparams.model_hparam_overrides.nas_config.encoder_layers";
    if overrides.hidden_size == 0 {
        return Err(field_err(
            "hparams.model_hparam_overrides.hidden_size",
            "expected a positive integer, found 0".into(),
        ));
    }
    at_most(overrides.hidden_size, bounds::MAX_WIDTH)
        .map_err(|m| field_err("hparams.model_hparam_overrides.hidden_size", m))?;
    if overrides.nas_config.encoder_layers.is_empty() {
        return Err(field_err(
            layers_field,
            "expected at least one encoder layer, found none".into(),
        ));
    }
    at_most(
        overrides.nas_config.encoder_layers.len(),
        bounds::MAX_LAYERS,
    )
    .map_err(|m| field_err(layers_field, format!("{m} layers")))?;
    let mut layers = Vec::new();
    for (l, raw_layer) in overrides.nas_config.encoder_layers.iter().enumerate() {
        let f = |name: &str| format!("{layers_field}[{l}].{name}");
        let param = &raw_layer.operation_parameter;
        let mixer = match raw_layer.operation_type.as_str() {
            "SA" => match param.as_str() {
                Some("SDP") => Mixer::Sdp,
                Some("WMA") => Mixer::Wma,
                _ => {
                    return Err(field_err(
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
                    return Err(field_err(
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
                    return Err(field_err(
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
                return Err(field_err(
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
                return Err(field_err(
                    &f(name),
                    "expected a positive integer, found 0".into(),
                ));
            }
            at_most(v, max).map_err(|m| field_err(&f(name), m))?;
        }
        layers.push(Layer {
            mixer,
            heads: raw_layer.num_operation_heads,
            ffn_width: raw_layer.feed_forward_dimension,
            ffn_layers: raw_layer.num_feed_forward,
        });
    }
    Ok(Record {
        id: raw.id,
        hidden_size: overrides.hidden_size,
        layers,
        scores: raw.scores,
    })
}
