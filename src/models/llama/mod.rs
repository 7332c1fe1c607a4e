//! The Llama family: a Hugging Face `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU, grouped-query
//! attention), read from a model folder (`config.json` and `*.safetensors`, memory-mapped) or
//! drawn at random from a seed, and its LoNAS sub-network space (per-layer FFN widths and
//! optionally heads, sliced from the full weights).
//!
//! * [`config`]: the `config.json` keys; [`weights`]: the weight source; [`subnet`]: the
//!   sub-network space, named sub-networks and parameter counts; [`net`]: the blocks;
//!   [`stream`]: the layer-by-layer probe that keeps one layer in memory; [`streamed`]: the
//!   proxies computed on it; [`graph`]: the sub-network as one autograd graph, on which the
//!   extra passes run.
//! * [`LlamaModel`] ties a folder to its config and weights; [`score`] probes one sub-network
//!   and computes proxies, either from a whole [`Probe`] (small models: every proxy, the
//!   extra-pass ones with their passes on the [`graph::Graph`]) or streaming, layer by layer
//!   (large models: the proxies that read no linear, the sums over linears and the
//!   expressions without `total`, with the whole probe's values; see [`StreamProxy`]).
//!
//! The expression inputs are those of the reference's LLaMA support: `weight` and `grad` are
//! the seven linears of every decoder layer (q, k, v, o, gate, up, down; out × in; the LM head
//! is not among them), and the backward signal is the mean next-token NLL. `act` holds each
//! layer's SwiGLU product, `head` each layer's `q_proj` output, `softmax` the attention
//! probabilities, and the position gradient is `∂ℒ/∂(input embedding)` per position.

pub mod config;
pub mod family;
pub mod graph;
pub mod net;
pub mod stream;
pub mod streamed;
pub mod subnet;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

pub use config::LlamaConfig;
pub use family::FAMILY;
pub use streamed::{StreamProxy, STREAM_CAPTURE_BYTES};
pub use subnet::{Named, Subnet, SubnetCount, SubnetSpace};
pub use weights::WeightSource;

use crate::array::Array;
use crate::nn::{to_array, LinearRole};
use crate::probe::{as_captured, Aggregate, Batch, FisherWidth, LinearProbe, Probe, Semantics};
use crate::scoring::Proxy;
use stream::{CaptureLists, Captured, PassSummary};

/// What a Llama probe means to the proxies: `act` holds the SwiGLU products (the FFN
/// activations, one per layer), the linear sets are the attention projections (diversity,
/// head importance) and the FFN linears (saliency), and every decoder linear is an
/// expression input.
pub static SEMANTICS: Semantics = Semantics {
    ffn_activations: (0, 1),
    ffn_activation: as_captured,
    activation_distance: Aggregate::Mean,
    diversity: &[LinearRole::Mixer, LinearRole::MixerOutput],
    saliency: &[LinearRole::FfnIn, LinearRole::FfnOut],
    head_importance: &[LinearRole::Mixer],
    expression_linears: &[
        LinearRole::Mixer,
        LinearRole::MixerOutput,
        LinearRole::FfnIn,
        LinearRole::FfnOut,
    ],
    // Llama's linears are PyTorch `nn.Linear`s (out × in): the reference broadcasts a linear's
    // per-output-channel Fisher value over the `in` entries of its weight row (spec §3.3).
    fisher_width: FisherWidth::Input,
    decoder_groups: &[],
    synflow_reaches_every_linear: false,
};

/// Largest estimated size of a whole probe (weights, gradients and captures as arrays) that
/// [`score`] builds in memory; larger models are scored streaming.
pub const WHOLE_PROBE_BYTES: u64 = 2 << 30;

/// A Llama model folder: its config and its weights.
pub struct LlamaModel {
    /// The folder (or the config file's folder).
    pub dir: PathBuf,
    /// The full model's shape.
    pub config: LlamaConfig,
    /// The full model's weights.
    pub weights: WeightSource,
}

impl LlamaModel {
    /// Opens `path`: a folder holding `config.json` (and `*.safetensors`, else the weights are
    /// drawn from `seed`), or a `config.json` file itself (drawn weights).
    pub fn open(path: &Path, seed: u64) -> Result<Self> {
        let (dir, config_path) = if path.is_dir() {
            (path.to_path_buf(), path.join("config.json"))
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, path.to_path_buf())
        };
        if !config_path.is_file() {
            bail!(
                "{}: no such file (expected a model folder holding config.json, or the file)",
                config_path.display()
            );
        }
        let config = LlamaConfig::from_file(&config_path)?;
        let weights = if path.is_dir() {
            WeightSource::open(&dir, &config, seed)?
        } else {
            WeightSource::Random {
                seed,
                std: config.initializer_range,
            }
        };
        Ok(Self {
            dir,
            config,
            weights,
        })
    }

    /// The LoNAS sub-network space of the model.
    pub fn space(&self) -> SubnetSpace {
        SubnetSpace::lonas(&self.config)
    }

    /// The model with `subnet` active (for [`stream`]).
    pub fn with<'a>(&'a self, subnet: &'a Subnet) -> stream::Model<'a> {
        stream::Model {
            config: &self.config,
            weights: &self.weights,
            subnet,
            on_layer: None,
        }
    }

    /// Resolves `--subnet`: `maximal`, `heuristic`, `minimal` (of `space`), or a JSON file.
    pub fn subnet(&self, space: &SubnetSpace, spec: &str) -> Result<Subnet> {
        let subnet = match Named::parse(spec) {
            Some(n) => space.named(n),
            None => Subnet::from_file(Path::new(spec))?,
        };
        subnet
            .check(&self.config)
            .with_context(|| format!("sub-network `{spec}`"))?;
        Ok(subnet)
    }
}

/// One sub-network's scores.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SubnetScore {
    /// Each proxy's value, in the order asked (NaN when it has none).
    pub values: Vec<f64>,
    /// The mean next-token NLL of the probe batch.
    pub loss: f64,
    /// Seconds spent probing and computing.
    pub seconds: f64,
    /// True when the model was scored streaming.
    pub streamed: bool,
}

/// How [`score`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A whole probe when its estimated size is at most [`WHOLE_PROBE_BYTES`], else streaming.
    Auto,
    /// Always a whole probe.
    Whole,
    /// Always streaming.
    Stream,
}

/// Estimated bytes of a whole probe of `subnet`: weights and gradients of every decoder
/// linear (f32), and the captures ([`stream::capture_bytes`]).
pub fn whole_probe_bytes(config: &LlamaConfig, subnet: &Subnet, batch: &Batch) -> Result<u64> {
    let count = subnet.count(config)?;
    let linears =
        count.non_embedding - (2 * config.num_hidden_layers as u64 + 1) * config.hidden_size as u64;
    Ok(4 * 2 * linears + stream::capture_bytes(config, subnet, batch))
}

/// Probes `subnet` of `model` once on `batch` and computes `proxies` (module docs). Proxies
/// that need extra passes (Fisher, GraSP, Synflow, ...) run them on the whole probe and are
/// refused, by name, on the streaming pass.
pub fn score(
    model: &LlamaModel,
    subnet: &Subnet,
    batch: &Batch,
    proxies: &[Proxy],
    mode: Mode,
) -> Result<SubnetScore> {
    score_with_progress(model, subnet, batch, proxies, mode, None)
}

/// [`score`], calling `on_layer` after each layer of each pass (`2 × layers` calls).
pub fn score_with_progress(
    model: &LlamaModel,
    subnet: &Subnet,
    batch: &Batch,
    proxies: &[Proxy],
    mode: Mode,
    on_layer: Option<&dyn Fn()>,
) -> Result<SubnetScore> {
    let start = Instant::now();
    let whole = match mode {
        Mode::Whole => true,
        Mode::Stream => false,
        Mode::Auto => whole_probe_bytes(&model.config, subnet, batch)? <= WHOLE_PROBE_BYTES,
    };
    let mut m = model.with(subnet);
    m.on_layer = on_layer;
    if whole {
        let extra_passes = proxies.iter().any(Proxy::needs_extra_passes);
        let probe = whole_probe(&m, batch, "subnet", extra_passes)?;
        let values = crate::scoring::compute_all(proxies, &probe);
        return Ok(SubnetScore {
            values,
            loss: probe.loss,
            seconds: start.elapsed().as_secs_f64(),
            streamed: false,
        });
    }
    let (values, loss) = streamed::score(&m, batch, proxies)?;
    Ok(SubnetScore {
        values,
        loss,
        seconds: start.elapsed().as_secs_f64(),
        streamed: true,
    })
}

/// A probe holding only `linears` (what the built-ins that sum over linears read).
fn partial_probe(linears: Vec<LinearProbe>) -> Probe {
    let empty = Arc::new(Vec::new());
    Probe {
        key: String::new(),
        semantics: &SEMANTICS,
        params: 0,
        param_groups: Vec::new(),
        act: Arc::clone(&empty),
        head: Arc::clone(&empty),
        softmax: Vec::new(),
        mixer_outputs: empty,
        weight: Vec::new(),
        grad: Vec::new(),
        linears,
        position_grad: Array::full(vec![0, 0], 0.0),
        loss: f64::NAN,
        extras: None,
        seconds: 0.0,
        diversity_ahead: None,
    }
}

/// The probe of `m` made of what a pass produced: its captures (`None` when not kept: empty
/// lists), the linears kept (all for a whole probe, none for the streaming pass's end), the
/// loss and position gradient of `summary`; `key` names it.
fn assemble(
    m: &stream::Model<'_>,
    key: &str,
    captures: Option<CaptureLists>,
    linears: Vec<LinearProbe>,
    summary: &PassSummary,
    seconds: f64,
) -> Result<Probe> {
    let lists = captures.unwrap_or(CaptureLists {
        act: Vec::new(),
        head: Vec::new(),
        softmax: Vec::new(),
        mixer_outputs: Vec::new(),
    });
    let weight = linears.iter().map(|l| l.weight.clone()).collect();
    let grad = linears.iter().map(|l| l.grad.clone()).collect();
    Ok(Probe {
        key: key.to_string(),
        semantics: &SEMANTICS,
        params: m.subnet.count(m.config)?.total as usize,
        param_groups: Vec::new(),
        act: Arc::new(lists.act),
        head: Arc::new(lists.head),
        softmax: lists.softmax,
        mixer_outputs: Arc::new(lists.mixer_outputs),
        weight,
        grad,
        linears,
        position_grad: to_array(&summary.position_grad)?,
        loss: summary.loss,
        extras: None,
        seconds,
        diversity_ahead: None,
    })
}

/// The whole probe of a sub-network (every layer's linears and captures kept), built by the
/// streaming pass; `key` names it. With `extra_passes` it also holds the values of the
/// extra-pass proxies ([`Probe::extras`]), from the passes run first on the sub-network's
/// whole graph ([`graph::Graph`], dropped before the streaming pass).
pub fn whole_probe(
    m: &stream::Model<'_>,
    batch: &Batch,
    key: &str,
    extra_passes: bool,
) -> Result<Probe> {
    let start = Instant::now();
    let extras = if extra_passes {
        let graph = graph::Graph::new(m, batch)?;
        Some(crate::probe::extra_passes(&graph, SEMANTICS.fisher_width)?)
    } else {
        None
    };
    let mut captured = Captured::new(m.config.num_hidden_layers);
    let mut layers = Vec::with_capacity(m.config.num_hidden_layers);
    let summary = stream::probe(m, batch, true, |layer| {
        let captures = layer
            .captures
            .context("internal error: a layer's captures were not kept")?;
        captured.insert(layer.layer, captures);
        layers.push(layer.linears);
        Ok(())
    })?;
    let linears = layers.into_iter().rev().flatten().collect();
    let lists = captured.into_lists()?;
    let seconds = start.elapsed().as_secs_f64();
    let probe = assemble(m, key, Some(lists), linears, &summary, seconds)?;
    Ok(Probe { extras, ..probe })
}

/// The probe batch: `rows × (seq_len + 1)` ids from `corpus` (whitespace-separated ids below
/// the vocabulary) or, without one, the seeded Zipf batch.
pub fn batch(
    config: &LlamaConfig,
    rows: usize,
    seq_len: usize,
    corpus: Option<&Path>,
    seed: u64,
) -> Result<Batch> {
    if seq_len == 0 || rows == 0 {
        bail!("the probe batch needs at least 1 row and 1 token, got {rows} × {seq_len}");
    }
    let vocab = u32::try_from(config.vocab_size).context("vocab_size above 2³²")?;
    match corpus {
        Some(path) => Batch::from_corpus(path, rows, seq_len + 1, vocab),
        None => Batch::synthetic_zipf(rows, seq_len + 1, vocab, seed),
    }
}

#[cfg(test)]
mod tests;
