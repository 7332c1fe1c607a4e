//! The Llama family: a Hugging Face `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU, grouped-query
//! attention), read from a model folder (`config.json` and `*.safetensors`, memory-mapped) or
//! drawn at random from a seed, and its LoNAS sub-network space (per-layer FFN widths and
//! optionally heads, sliced from the full weights).
//!
//! * [`config`]: the `config.json` keys; [`weights`]: the weight source; [`subnet`]: the
//!   sub-network space, named sub-networks and parameter counts; [`net`]: the blocks;
//!   [`stream`]: the layer-by-layer probe that keeps one layer in memory.
//! * [`LlamaModel`] ties a folder to its config and weights; [`score`] probes one sub-network
//!   and computes proxies, either from a whole [`Probe`] (small models: every proxy that
//!   does not need extra passes) or streaming, layer by layer (large models: the proxies that
//!   add up over linears, see [`StreamProxy`]).
//!
//! The expression inputs are those of the reference's LLaMA support: `weight` and `grad` are
//! the seven linears of every decoder layer (q, k, v, o, gate, up, down; out × in; the LM head
//! is not among them), and the backward signal is the mean next-token NLL. `act` holds each
//! layer's SwiGLU product, `head` each layer's `q_proj` output, `softmax` the attention
//! probabilities, and the position gradient is `∂ℒ/∂(input embedding)` per position.

pub mod config;
pub mod family;
pub mod net;
pub mod stream;
pub mod subnet;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

pub use config::LlamaConfig;
pub use family::FAMILY;
pub use subnet::{Named, Subnet, SubnetCount, SubnetSpace};
pub use weights::WeightSource;

use crate::array::Array;
use crate::nn::{to_array, LinearRole};
use crate::probe::{as_captured, Aggregate, Batch, FisherWidth, LinearProbe, Probe, Semantics};
use crate::proxy::builtin::Builtin;
use crate::proxy::eval::{eval, Inputs};
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::UnaryOp;
use crate::scoring::Proxy;

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
    fisher_width: FisherWidth::Output,
    decoder_groups: &[],
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

/// How a proxy is computed when the model is scored streaming: quantities that add up over
/// the decoder linears, so that each layer contributes its share and is dropped.
pub enum StreamProxy {
    /// The parameter count (from the config).
    Params,
    /// A built-in proxy that is a sum over linears (`grad_norm`, `snip`,
    /// `synaptic_saliency`, `synaptic_diversity`, `head_importance`): the sum of its value on
    /// each layer's linears.
    Sum(&'static Builtin),
    /// An expression over `weight` and `grad` without a list-level op: the mean over linears
    /// of its value on each linear alone (exactly the whole-list value, a mean of per-item
    /// means).
    PerLinear(Expr),
}

/// Built-in proxies that are plain sums over the probe's linears.
pub const SUMMED_BUILTINS: &[&str] = &[
    "grad_norm",
    "snip",
    "synaptic_saliency",
    "synaptic_diversity",
    "head_importance",
];

impl StreamProxy {
    /// How `proxy` streams, or an error saying why it cannot.
    pub fn of(proxy: &Proxy) -> Result<Self> {
        match proxy {
            Proxy::Builtin(b) if b.name == "params" => Ok(StreamProxy::Params),
            Proxy::Builtin(b) if SUMMED_BUILTINS.contains(&b.name) => Ok(StreamProxy::Sum(b)),
            Proxy::Builtin(b) => bail!(
                "proxy `{}` needs the whole probe, which is too large for this model; streaming \
                 computes params, {}, and expressions over weight and grad",
                b.name,
                SUMMED_BUILTINS.join(", ")
            ),
            Proxy::Expr { name, expr, .. } => {
                let canon = crate::proxy::canonical::canonical(expr);
                let wrong = canon
                    .inputs()
                    .into_iter()
                    .find(|i| !matches!(i, Input::Grad | Input::Weight));
                if let Some(i) = wrong {
                    bail!(
                        "proxy `{name}` reads `{}`, which is too large to keep for this model; \
                         streaming computes expressions over weight and grad",
                        i.name()
                    );
                }
                if uses_op(&canon, UnaryOp::Total) {
                    bail!(
                        "proxy `{name}` uses `total`, which needs every linear at once; \
                         streaming computes expressions whose value is a mean over linears"
                    );
                }
                Ok(StreamProxy::PerLinear(canon))
            }
        }
    }
}

/// True when `op` occurs in `e`.
fn uses_op(e: &Expr, op: UnaryOp) -> bool {
    match e {
        Expr::Input(_) => false,
        Expr::Unary(o, x) => *o == op || uses_op(x, op),
        Expr::Binary(_, a, b) => uses_op(a, op) || uses_op(b, op),
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
/// linear (f32), and the captures.
pub fn whole_probe_bytes(config: &LlamaConfig, subnet: &Subnet, batch: &Batch) -> Result<u64> {
    let count = subnet.count(config)?;
    let linears =
        count.non_embedding - (2 * config.num_hidden_layers as u64 + 1) * config.hidden_size as u64;
    let tokens = (batch.rows * batch.cols) as u64;
    let per_layer = tokens * (config.intermediate_size as u64 + 3 * config.hidden_size as u64)
        + tokens * batch.cols as u64 * config.num_attention_heads as u64;
    Ok(4 * (2 * linears + per_layer * config.num_hidden_layers as u64))
}

/// Probes `subnet` of `model` once on `batch` and computes `proxies` (module docs). Proxies
/// that need extra passes (Fisher, GraSP, Synflow, ...) are refused.
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
    if let Some(p) = proxies.iter().find(|p| p.needs_extra_passes()) {
        bail!(
            "proxy `{}` needs extra passes, which the llama family does not run",
            p.name()
        );
    }
    let start = Instant::now();
    let whole = match mode {
        Mode::Whole => true,
        Mode::Stream => false,
        Mode::Auto => whole_probe_bytes(&model.config, subnet, batch)? <= WHOLE_PROBE_BYTES,
    };
    let mut m = model.with(subnet);
    m.on_layer = on_layer;
    if whole {
        let probe = whole_probe(&m, batch, "subnet")?;
        let values = proxies.iter().map(|p| p.compute(&probe)).collect();
        return Ok(SubnetScore {
            values,
            loss: probe.loss,
            seconds: start.elapsed().as_secs_f64(),
            streamed: false,
        });
    }
    let plan = proxies
        .iter()
        .map(StreamProxy::of)
        .collect::<Result<Vec<_>>>()?;
    let params = subnet.count(&model.config)?.total as f64;
    // Per proxy: running sum and number of linears.
    let mut acc = vec![(0f64, 0usize); plan.len()];
    let summary = stream::probe(&m, batch, false, |layer| {
        let part = partial_probe(layer.linears);
        for (p, (sum, n)) in plan.iter().zip(acc.iter_mut()) {
            match p {
                StreamProxy::Params => {}
                StreamProxy::Sum(b) => *sum += (b.compute)(&part),
                StreamProxy::PerLinear(expr) => {
                    for lin in &part.linears {
                        let inputs = Inputs {
                            weight: std::slice::from_ref(&lin.weight),
                            grad: std::slice::from_ref(&lin.grad),
                            ..Inputs::default()
                        };
                        *sum += eval(expr, &inputs).unwrap_or(f64::NAN);
                        *n += 1;
                    }
                }
            }
        }
        Ok(())
    })?;
    let values = plan
        .iter()
        .zip(&acc)
        .map(|(p, &(sum, n))| match p {
            StreamProxy::Params => params,
            StreamProxy::Sum(_) => sum,
            StreamProxy::PerLinear(_) => sum / n as f64,
        })
        .collect();
    Ok(SubnetScore {
        values,
        loss: summary.loss,
        seconds: start.elapsed().as_secs_f64(),
        streamed: true,
    })
}

/// A probe holding only `linears` (what the summed built-ins read).
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
    }
}

/// The whole probe of a sub-network (every layer's linears and captures kept), built by the
/// streaming pass; `key` names it.
pub fn whole_probe(m: &stream::Model<'_>, batch: &Batch, key: &str) -> Result<Probe> {
    let start = Instant::now();
    let mut layers = Vec::with_capacity(m.config.num_hidden_layers);
    let summary = stream::probe(m, batch, true, |layer| {
        layers.push(layer);
        Ok(())
    })?;
    layers.reverse();
    let mut linears = Vec::new();
    let (mut act, mut head, mut softmax, mut mixer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for layer in layers {
        let missing = || anyhow::anyhow!("internal error: a layer's captures were not kept");
        act.push(to_array(&layer.act.ok_or_else(missing)?)?);
        let q = to_array(&layer.q.ok_or_else(missing)?)?;
        let (k, v) = layer.kv.ok_or_else(missing)?;
        mixer.push(q.clone());
        mixer.push(to_array(&k)?);
        mixer.push(to_array(&v)?);
        head.push(q);
        softmax.push(to_array(&layer.probs.ok_or_else(missing)?)?);
        linears.extend(layer.linears);
    }
    let weight = linears.iter().map(|l| l.weight.clone()).collect();
    let grad = linears.iter().map(|l| l.grad.clone()).collect();
    let params = m.subnet.count(m.config)?.total as usize;
    Ok(Probe {
        key: key.to_string(),
        semantics: &SEMANTICS,
        params,
        param_groups: Vec::new(),
        act: Arc::new(act),
        head: Arc::new(head),
        softmax,
        mixer_outputs: Arc::new(mixer),
        weight,
        grad,
        linears,
        position_grad: to_array(&summary.position_grad)?,
        loss: summary.loss,
        extras: None,
        seconds: start.elapsed().as_secs_f64(),
    })
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
