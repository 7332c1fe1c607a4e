//! Where a Llama model's weights come from: `*.safetensors` files, memory-mapped (one file, or
//! shards listed by `model.safetensors.index.json`), or a seeded random initialisation that
//! draws each tensor from its name alone (so a streaming pass can draw it again, identically).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use crate::rng::Rng;

/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Elements drawn per random stream: a tensor is drawn in chunks of this size, each from its
/// own stream, so the values do not depend on how many threads draw them.
const CHUNK: usize = 1 << 20;

/// What a tensor is initialised to when weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, initializer_range²) (linears and the embedding).
    Normal,
    /// All ones (RMSNorm scales).
    Ones,
}

/// The source of a model's weights.
pub enum WeightSource {
    /// Safetensors files, memory-mapped for each load and unmapped after it, so that the
    /// pages of a 7B checkpoint do not stay mapped (and counted in the resident set) as a
    /// streaming probe walks through its layers.
    Files {
        /// Which file holds each tensor.
        routing: HashMap<String, usize>,
        /// The files.
        files: Vec<PathBuf>,
    },
    /// Seeded random weights.
    Random {
        /// Seed of every tensor's stream.
        seed: u64,
        /// Standard deviation of [`Init::Normal`] tensors.
        std: f64,
    },
}

/// Hugging Face name of the token embedding.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Hugging Face name of the final norm.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Hugging Face name of the LM head.
pub const LM_HEAD: &str = "lm_head.weight";

/// Hugging Face name of a tensor of decoder layer `l`, e.g. `self_attn.q_proj` →
/// `model.layers.3.self_attn.q_proj.weight`.
pub fn layer_name(l: usize, module: &str) -> String {
    format!("model.layers.{l}.{module}.weight")
}

impl WeightSource {
    /// The weights of the model in `dir`: the shards of [`INDEX_FILE`] when it exists, else
    /// every `*.safetensors` file in `dir` (sorted), else (no file) random weights from `seed`.
    pub fn open(dir: &Path, config: &LlamaConfig, seed: u64) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("{}: cannot read", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: field `weight_map`: expected an object of tensor → file",
                        index.display()
                    )
                })?;
            let mut names = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    anyhow!(
                        "{}: field `weight_map.{tensor}`: expected a file name",
                        index.display()
                    )
                })?;
                names.insert(file.to_string());
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let mut found = Vec::new();
            if dir.is_dir() {
                for entry in std::fs::read_dir(dir)
                    .with_context(|| format!("{}: cannot list", dir.display()))?
                {
                    let path = entry?.path();
                    if path.extension().is_some_and(|e| e == "safetensors") {
                        found.push(path);
                    }
                }
            }
            found.sort();
            found
        };
        if files.is_empty() {
            return Ok(WeightSource::Random {
                seed,
                std: config.initializer_range,
            });
        }
        for f in &files {
            if !f.is_file() {
                bail!("{}: listed weight file does not exist", f.display());
            }
        }
        let mut routing = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for (name, _) in map_file(f)?.tensors() {
                routing.insert(name, i);
            }
        }
        Ok(WeightSource::Files { routing, files })
    }

    /// True for drawn weights.
    pub fn is_random(&self) -> bool {
        matches!(self, WeightSource::Random { .. })
    }

    /// The tensor `name` as f32 on the CPU, checked to have `shape`.
    pub fn load(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match self {
            WeightSource::Files { routing, files } => {
                let Some(&i) = routing.get(name) else {
                    bail!(
                        "tensor `{name}`: not found in {}",
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                let t = map_file(&files[i])?
                    .load(name, &Device::Cpu)
                    .with_context(|| format!("{}: tensor `{name}`", files[i].display()))?;
                if t.dims() != shape {
                    bail!(
                        "tensor `{name}`: expected shape {shape:?} (from config.json), found {:?}",
                        t.dims()
                    );
                }
                Ok(t.to_dtype(DType::F32)?)
            }
            WeightSource::Random { seed, std } => {
                let n: usize = shape.iter().product();
                let data = match init {
                    Init::Ones => vec![1f32; n],
                    Init::Normal => draw(*seed, name, n, *std),
                };
                Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
            }
        }
    }
}

/// `path` memory-mapped, its header read.
fn map_file(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the file is mapped read-only and only for the duration of one read; lpzero
    // never writes to it (a file changed by another process under the mapping is the
    // caller's error, as with any reader of safetensors files).
    unsafe { MmapedSafetensors::new(path) }
        .with_context(|| format!("{}: cannot map as safetensors", path.display()))
}

/// `n` values of N(0, std²) for the tensor `name`, drawn in [`CHUNK`]-sized pieces, each from
/// the stream `(seed, name, piece)`, on every available core.
fn draw(seed: u64, name: &str, n: usize, std: f64) -> Vec<f32> {
    let label = crate::report::fnv1a64(name.as_bytes());
    let mut out = vec![0f32; n];
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let pieces: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let per = pieces.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
    let mut it = pieces.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        for group in groups {
            s.spawn(move || {
                for (i, piece) in group {
                    let mut rng = Rng::derive(seed, &[label, i as u64]);
                    piece.copy_from_slice(&rng.normal_vec(piece.len(), std));
                }
            });
        }
    });
    out
}

/// Writes `tensors` as one safetensors file at `path` (through a temporary file renamed into
/// place, so a reader never sees a partial file).
pub fn save(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "{}: cannot replace it with {}",
            path.display(),
            tmp.display()
        )
    })
}

/// Every tensor of the full model of `config` in Hugging Face order: name, shape and how it
/// is initialised (the LM head only when untied).
pub fn tensor_specs(config: &LlamaConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (
        config.num_attention_heads * config.head_dim(),
        config.kv_heads() * config.head_dim(),
    );
    let mut out = vec![(EMBED.to_string(), vec![v, h], Init::Normal)];
    for l in 0..config.num_hidden_layers {
        for (module, shape, init) in [
            ("input_layernorm", vec![h], Init::Ones),
            ("self_attn.q_proj", vec![q, h], Init::Normal),
            ("self_attn.k_proj", vec![kv, h], Init::Normal),
            ("self_attn.v_proj", vec![kv, h], Init::Normal),
            ("self_attn.o_proj", vec![h, q], Init::Normal),
            ("post_attention_layernorm", vec![h], Init::Ones),
            ("mlp.gate_proj", vec![i, h], Init::Normal),
            ("mlp.up_proj", vec![i, h], Init::Normal),
            ("mlp.down_proj", vec![h, i], Init::Normal),
        ] {
            out.push((layer_name(l, module), shape, init));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![h], Init::Ones));
    if !config.tie_word_embeddings {
        out.push((LM_HEAD.to_string(), vec![v, h], Init::Normal));
    }
    out
}

/// Writes a model folder: `config.json` and `model.safetensors` holding `tensors` (both
/// written atomically).
pub fn save_model(dir: &Path, config: &LlamaConfig, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let json = serde_json::to_string_pretty(config)?;
    crate::report::write_atomic(&dir.join("config.json"), json + "\n")?;
    save(&dir.join("model.safetensors"), tensors)
}

/// Every tensor of `source` for `config` ([`tensor_specs`]), loaded (for writing a drawn model
/// to files).
pub fn materialize(config: &LlamaConfig, source: &WeightSource) -> Result<Vec<(String, Tensor)>> {
    tensor_specs(config)
        .into_iter()
        .map(|(name, shape, init)| {
            let t = source.load(&name, &shape, init)?;
            Ok((name, t))
        })
        .collect()
}
