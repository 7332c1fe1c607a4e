//! The FlexiBERT design space (spec §1.2), as the benchmark's authors declared it and its 500
//! records use it: 2 or 4 encoder layers, hidden size 128 or 256, and per layer a token mixer
//! (SA with SDP or WMA attention, LT with a DFT or DCT, DSC with kernel 5 or 9), 2 or 4 heads,
//! FFN width 512 or 1024 and 1 or 3 FFN layers. Depths can be widened (`--depth 2..=6`).
//!
//! Written out as records shaped like those of `BERT_benchmark.json` (the training settings
//! the benchmark used, `hparams.model_hparam_overrides` with `hidden_size` and
//! `nas_config.encoder_layers`), without `scores` (they are not trained yet, so the benchmark
//! loader, which needs `scores.glue`, does not take the file as a benchmark); each record's
//! `hidden_size` and `encoder_layers` read back through the family's checks.

use anyhow::Result;
use serde_json::{json, Value};

use super::{Layer, Mixer, Record, KIND};
use crate::bench::space::{
    other, pick, resize, validated, Chosen, DesignSpace, NativeFile, SpaceOptions,
};
use crate::bench::{Arch, BenchKind};
use crate::rng::Rng;

/// The FlexiBERT design space, as registered by the FlexiBERT family.
pub struct FlexibertSpace;

/// The FlexiBERT design space.
pub static SPACE: FlexibertSpace = FlexibertSpace;

/// Name of the file [`FlexibertSpace::native`] writes.
pub const NATIVE_FILE: &str = "top_k.json";

const DEPTHS: [usize; 2] = [2, 4];
const HIDDEN: [usize; 2] = [128, 256];
const MIXERS: [Mixer; 6] = [
    Mixer::Sdp,
    Mixer::Wma,
    Mixer::Dft,
    Mixer::Dct,
    Mixer::Dsc { kernel: 5 },
    Mixer::Dsc { kernel: 9 },
];
const HEADS: [usize; 2] = [2, 4];
const FFN_WIDTHS: [usize; 2] = [512, 1024];
const FFN_LAYERS: [usize; 2] = [1, 3];

/// Choices of one layer that a mutation can draw again.
const LAYER_GENES: usize = 4;

/// One layer drawn from the space.
fn layer(rng: &mut Rng) -> Layer {
    Layer {
        mixer: pick(rng, &MIXERS),
        heads: pick(rng, &HEADS),
        ffn_width: pick(rng, &FFN_WIDTHS),
        ffn_layers: pick(rng, &FFN_LAYERS),
    }
}

/// A layer as the benchmark file writes it.
fn layer_json(layer: &Layer) -> Value {
    let (kind, parameter) = match layer.mixer {
        Mixer::Sdp => ("SA", json!("SDP")),
        Mixer::Wma => ("SA", json!("WMA")),
        Mixer::Dft => ("LT", json!("DFT")),
        Mixer::Dct => ("LT", json!("DCT")),
        Mixer::Dsc { kernel } => ("DSC", json!(kernel)),
    };
    json!({
        "operation_type": kind,
        "operation_parameter": parameter,
        "num_operation_heads": layer.heads,
        "feed_forward_dimension": layer.ffn_width,
        "num_feed_forward": layer.ffn_layers,
    })
}

/// The bench-file `config` of a record.
fn config_of(record: &Record) -> Value {
    json!({
        "hidden_size": record.hidden_size,
        "encoder_layers": record.layers.iter().map(layer_json).collect::<Vec<_>>(),
    })
}

impl DesignSpace for FlexibertSpace {
    fn kind(&self) -> BenchKind {
        KIND
    }

    fn describe(&self) -> &'static str {
        "FlexiBERT: 2 or 4 layers, hidden size 128 or 256; per layer SA-SDP, SA-WMA, LT-DFT, \
         LT-DCT, DSC-5 or DSC-9, 2 or 4 heads, FFN width 512 or 1024, 1 or 3 FFN layers"
    }

    fn depths(&self) -> &'static [usize] {
        &DEPTHS
    }

    fn sample(&self, rng: &mut Rng, opts: &SpaceOptions, index: usize, key: &str) -> Result<Arch> {
        let depth = pick(rng, &opts.depths(&DEPTHS));
        let hidden_size = pick(rng, &HIDDEN);
        let layers = (0..depth).map(|_| layer(rng)).collect();
        let record = Record {
            id: index,
            hidden_size,
            layers,
            scores: Default::default(),
        };
        validated(KIND, &config_of(&record), index, key)
    }

    fn mutate(
        &self,
        arch: &Arch,
        rng: &mut Rng,
        opts: &SpaceOptions,
        index: usize,
        key: &str,
    ) -> Result<Arch> {
        let mut record = arch.of::<Record>()?.clone();
        let depths = opts.depths(&DEPTHS);
        let depth_genes = usize::from(depths.len() > 1);
        let gene = rng.range(0, depth_genes + 1 + LAYER_GENES * record.layers.len());
        if gene < depth_genes {
            let depth = other(rng, &depths, record.layers.len());
            resize(rng, &mut record.layers, depth, layer);
        } else if gene == depth_genes {
            record.hidden_size = other(rng, &HIDDEN, record.hidden_size);
        } else {
            let g = gene - depth_genes - 1;
            let l = &mut record.layers[g / LAYER_GENES];
            match g % LAYER_GENES {
                0 => l.mixer = other(rng, &MIXERS, l.mixer),
                1 => l.heads = other(rng, &HEADS, l.heads),
                2 => l.ffn_width = other(rng, &FFN_WIDTHS, l.ffn_width),
                _ => l.ffn_layers = other(rng, &FFN_LAYERS, l.ffn_layers),
            }
        }
        validated(KIND, &config_of(&record), index, key)
    }

    fn config(&self, arch: &Arch) -> Result<Value> {
        Ok(config_of(arch.of::<Record>()?))
    }

    /// One file, [`NATIVE_FILE`]: a JSON array of records shaped like `BERT_benchmark.json`'s
    /// (ids from 0 in rank order, the benchmark's training settings, no `scores`), each with
    /// lpzero's notes under `lpzero`.
    fn native(&self, chosen: &[Chosen]) -> Result<Vec<NativeFile>> {
        let records = chosen
            .iter()
            .enumerate()
            .map(|(id, c)| {
                let record = c.arch.of::<Record>()?;
                Ok(json!({
                    "id": id,
                    "hparams": {
                        "use_tpu": true,
                        "num_tpu_cores": 8,
                        "tpu_name": "grpc://",
                        "learning_rate": 0.0005,
                        "eval_batch_size": 128,
                        "train_batch_size": 128,
                        "num_train_steps": 100000,
                        "model_hparam_overrides": {
                            "hidden_size": record.hidden_size,
                            "nas_config": {
                                "encoder_layers":
                                    record.layers.iter().map(layer_json).collect::<Vec<_>>(),
                            },
                        },
                    },
                    "lpzero": c.notes,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(vec![NativeFile {
            path: NATIVE_FILE.into(),
            text: serde_json::to_string_pretty(&records)? + "\n",
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_records_read_back_as_the_same_architectures() {
        let mut rng = Rng::new(4);
        let opts = SpaceOptions::default();
        let archs: Vec<Arch> = (0..6)
            .map(|i| SPACE.sample(&mut rng, &opts, i, "a").unwrap())
            .collect();
        let keys: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        let chosen: Vec<Chosen> = archs
            .iter()
            .zip(&keys)
            .map(|(arch, key)| Chosen {
                key,
                arch,
                notes: json!({"rank": 1}),
            })
            .collect();
        let files = SPACE.native(&chosen).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, std::path::PathBuf::from(NATIVE_FILE));
        let records: Vec<Value> = serde_json::from_str(&files[0].text).unwrap();
        assert_eq!(records.len(), 6);
        for (i, (record, arch)) in records.iter().zip(&archs).enumerate() {
            assert_eq!(record["id"], i);
            assert_eq!(record["lpzero"]["rank"], 1);
            assert_eq!(record["hparams"]["num_train_steps"], 100000);
            let overrides = &record["hparams"]["model_hparam_overrides"];
            let config = json!({
                "hidden_size": overrides["hidden_size"],
                "encoder_layers": overrides["nas_config"]["encoder_layers"],
            });
            // The family's checks give the same architecture back.
            let back = validated(KIND, &config, i, "k").unwrap();
            let (a, b) = (back.of::<Record>().unwrap(), arch.of::<Record>().unwrap());
            assert_eq!((&a.layers, a.hidden_size), (&b.layers, b.hidden_size));
        }
    }
}
