//! The GPT-2 design space of LiteTransformerSearch (spec §5.1), with the ranges its 200 shipped
//! configs use: 2 to 16 layers, `d_model` 64, 128, 256 or 512, `d_embed` 128, 256 or 512,
//! `div_val` 1, 2 or 4, and per layer 2, 4 or 8 heads and an MLP width `d_inner` from 512 to
//! 2048. The other keys are those every shipped config has (50 264 tokens, cutoffs
//! `[19997, 39997, 199997, 50264]`, tied weights, `tie_projs [false, true, true, true]`, 192
//! positions, dropout 0.1, ...). Depths can be changed (`--depth 4..=24`).
//!
//! Written out as one `model_config.yaml` per architecture, with every key of a shipped
//! config, in the same order; lpzero's notes go in a comment on the first line.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{Record, KIND};
use crate::bench::space::{
    other, pick, resize, validated, Chosen, DesignSpace, NativeFile, SpaceOptions,
};
use crate::bench::{Arch, BenchKind};
use crate::rng::Rng;

/// The GPT-2 design space, as registered by the GPT-2 family.
pub struct Gpt2Space;

/// The GPT-2 design space.
pub static SPACE: Gpt2Space = Gpt2Space;

/// Folder of the files [`Gpt2Space::native`] writes: `top_k/<rank>_<key>/model_config.yaml`.
pub const NATIVE_DIR: &str = "top_k";

const DEPTHS: [usize; 15] = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const D_MODEL: [usize; 4] = [64, 128, 256, 512];
const D_EMBED: [usize; 3] = [128, 256, 512];
const DIV_VAL: [usize; 3] = [1, 2, 4];
const HEADS: [usize; 3] = [2, 4, 8];
const D_INNER: RangeInclusive<usize> = 512..=2048;

/// The keys every shipped config has that the model does not read, with their value there
/// (`mem_len` is the record's `tgt_len`, 192 in every shipped config).
fn ignored_keys(r: &Record) -> [(&'static str, Value); 14] {
    [
        ("attn_type", json!(0)),
        ("clamp_len", json!(-1)),
        ("d_head", json!(-1)),
        ("dtype", Value::Null),
        ("ext_len", json!(0)),
        ("mem_len", json!(r.tgt_len)),
        ("pre_lnorm", json!(false)),
        ("primer_conv", json!(false)),
        ("primer_square", json!(false)),
        ("same_length", json!(false)),
        ("sample_softmax", json!(-1)),
        ("use_cache", json!(false)),
        ("weight_init_range", json!(0.1)),
        ("weight_init_type", json!("normal")),
    ]
}

/// Choices of one layer that a mutation can draw again (heads, MLP width).
const LAYER_GENES: usize = 2;
/// Global choices that a mutation can draw again (`d_model`, `d_embed`, `div_val`).
const GLOBAL_GENES: usize = 3;

/// An MLP width drawn uniformly from [`D_INNER`].
fn d_inner(rng: &mut Rng) -> usize {
    rng.range(*D_INNER.start(), D_INNER.end() + 1)
}

/// One layer (heads, MLP width) drawn from the space.
fn layer(rng: &mut Rng) -> (usize, usize) {
    (pick(rng, &HEADS), d_inner(rng))
}

/// The keys of a model config that the model reads, from a record.
fn config_of(r: &Record) -> Value {
    json!({
        "n_token": r.n_token,
        "n_layer": r.n_layer(),
        "d_model": r.d_model,
        "d_embed": r.d_embed,
        "div_val": r.div_val,
        "n_head": r.n_head,
        "d_inner": r.d_inner,
        "cutoffs": r.cutoffs,
        "tie_weight": r.tie_weight,
        "tie_projs": r.tie_projs,
        "adaptive": true,
        "tgt_len": r.tgt_len,
        "dropout": r.dropout,
        "dropatt": r.dropatt,
        "weight_init_std": r.weight_init_std,
        "proj_init_std": r.proj_init_std,
    })
}

/// A record from the space's choices and the shipped configs' fixed keys.
fn record(d_model: usize, d_embed: usize, div_val: usize, layers: &[(usize, usize)]) -> Record {
    Record {
        key: String::new(),
        n_token: 50264,
        d_model,
        d_embed,
        div_val,
        n_head: layers.iter().map(|l| l.0).collect(),
        d_inner: layers.iter().map(|l| l.1).collect(),
        cutoffs: vec![19997, 39997, 199997, 50264],
        tie_weight: true,
        tie_projs: vec![false, true, true, true],
        tgt_len: 192,
        dropout: 0.1,
        dropatt: 0.0,
        weight_init_std: 0.02,
        proj_init_std: 0.01,
        ppl: None,
        params: None,
    }
}

/// `key` as a file-name part: letters, digits, `.`, `-` and `_` kept, anything else `_`.
fn file_part(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DesignSpace for Gpt2Space {
    fn kind(&self) -> BenchKind {
        KIND
    }

    fn describe(&self) -> &'static str {
        "GPT-2 (LiteTransformerSearch): 2 to 16 layers, d_model 64, 128, 256 or 512, d_embed \
         128, 256 or 512, div_val 1, 2 or 4; per layer 2, 4 or 8 heads and d_inner 512 to 2048"
    }

    fn depths(&self) -> &'static [usize] {
        &DEPTHS
    }

    fn sample(&self, rng: &mut Rng, opts: &SpaceOptions, index: usize, key: &str) -> Result<Arch> {
        let depth = pick(rng, &opts.depths(&DEPTHS));
        let (d_model, d_embed, div_val) = (
            pick(rng, &D_MODEL),
            pick(rng, &D_EMBED),
            pick(rng, &DIV_VAL),
        );
        let layers: Vec<(usize, usize)> = (0..depth).map(|_| layer(rng)).collect();
        let r = record(d_model, d_embed, div_val, &layers);
        validated(KIND, &config_of(&r), index, key)
    }

    fn mutate(
        &self,
        arch: &Arch,
        rng: &mut Rng,
        opts: &SpaceOptions,
        index: usize,
        key: &str,
    ) -> Result<Arch> {
        let mut r = arch.of::<Record>()?.clone();
        let depths = opts.depths(&DEPTHS);
        let depth_genes = usize::from(depths.len() > 1);
        let gene = rng.range(0, depth_genes + GLOBAL_GENES + LAYER_GENES * r.n_layer());
        if gene < depth_genes {
            let depth = other(rng, &depths, r.n_layer());
            let mut layers: Vec<(usize, usize)> = r
                .n_head
                .iter()
                .copied()
                .zip(r.d_inner.iter().copied())
                .collect();
            resize(rng, &mut layers, depth, layer);
            r.n_head = layers.iter().map(|l| l.0).collect();
            r.d_inner = layers.iter().map(|l| l.1).collect();
        } else if gene < depth_genes + GLOBAL_GENES {
            match gene - depth_genes {
                0 => r.d_model = other(rng, &D_MODEL, r.d_model),
                1 => r.d_embed = other(rng, &D_EMBED, r.d_embed),
                _ => r.div_val = other(rng, &DIV_VAL, r.div_val),
            }
        } else {
            let g = gene - depth_genes - GLOBAL_GENES;
            let l = g / LAYER_GENES;
            if g.is_multiple_of(LAYER_GENES) {
                r.n_head[l] = other(rng, &HEADS, r.n_head[l]);
            } else {
                let before = r.d_inner[l];
                while r.d_inner[l] == before {
                    r.d_inner[l] = d_inner(rng);
                }
            }
        }
        validated(KIND, &config_of(&r), index, key)
    }

    fn config(&self, arch: &Arch) -> Result<Value> {
        Ok(config_of(arch.of::<Record>()?))
    }

    /// One `top_k/<rank>_<key>/model_config.yaml` per architecture (rank from 1, zero-padded;
    /// the key with characters outside letters, digits, `.`, `-` and `_` replaced by `_`): every
    /// key of a shipped config, sorted as there, lpzero's notes in a first-line comment.
    fn native(&self, chosen: &[Chosen]) -> Result<Vec<NativeFile>> {
        let width = chosen.len().to_string().len().max(2);
        chosen
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let record = c.arch.of::<Record>()?;
                let mut keys: BTreeMap<&str, Value> = ignored_keys(record).into_iter().collect();
                let Value::Object(used) = config_of(record) else {
                    unreachable!("config_of makes an object")
                };
                for (k, v) in &used {
                    keys.insert(k.as_str(), v.clone());
                }
                let yaml = serde_yaml::to_string(&keys)
                    .with_context(|| format!("writing the config of `{}` as YAML", c.key))?;
                let notes = serde_json::to_string(&c.notes)?;
                Ok(NativeFile {
                    path: format!(
                        "{NATIVE_DIR}/{:0width$}_{}/model_config.yaml",
                        i + 1,
                        file_part(c.key)
                    )
                    .into(),
                    text: format!("# lpzero nas: {notes}\n{yaml}"),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn native_configs_read_back_and_have_the_shipped_keys() {
        let mut rng = Rng::new(6);
        let opts = SpaceOptions::default();
        let archs: Vec<Arch> = (0..4)
            .map(|i| SPACE.sample(&mut rng, &opts, i, "a").unwrap())
            .collect();
        let keys = ["s0", "s/1", "s2", "s3"];
        let chosen: Vec<Chosen> = archs
            .iter()
            .zip(keys)
            .map(|(arch, key)| Chosen {
                key,
                arch,
                notes: json!({"rank": 1}),
            })
            .collect();
        let files = SPACE.native(&chosen).unwrap();
        assert_eq!(files.len(), 4);
        assert_eq!(
            files[1].path,
            Path::new("top_k/02_s_1/model_config.yaml"),
            "rank, then the key with `/` replaced"
        );
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/gpt2_wt103/configs/config_0_j0.yaml");
        let shipped: serde_yaml::Mapping =
            serde_yaml::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
        let key_set = |m: &serde_yaml::Mapping| -> BTreeSet<String> {
            m.keys().map(|k| k.as_str().unwrap().to_string()).collect()
        };
        for (file, arch) in files.iter().zip(&archs) {
            assert!(file.text.starts_with("# lpzero nas: {\"rank\":1}\n"));
            let mine: serde_yaml::Mapping = serde_yaml::from_str(&file.text).unwrap();
            assert_eq!(key_set(&mine), key_set(&shipped));
            // The benchmark's own reader gives the same architecture back.
            let record = super::super::parse_config(&file.text, &file.path, "k").unwrap();
            let original = arch.of::<Record>().unwrap();
            assert_eq!(config_of(&record), config_of(original));
        }
    }
}
