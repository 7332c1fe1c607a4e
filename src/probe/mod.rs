//! Probing: one forward and one backward of a randomly initialised network on a fixed batch,
//! kept as plain arrays.
//!
//! A [`Probe`] holds everything the proxies and the search read (activations, attention maps,
//! weights, gradients), as [`Array`] values with shapes, never engine tensors. Each architecture
//! is built and probed once per batch configuration; every proxy is then computed from the
//! probe.
//!
//! This module is the probing path every family shares ([`run`]): the seeded weight and dropout
//! streams, the backward pass, the capture of linears, gradients and activations, and the
//! extra passes ([`passes`]). A family contributes its batch (built from the helpers of
//! [`Batch`]), a built model that runs its forward pass and hands over its captures
//! ([`ProbeModel`]), and how the proxies read what it captured ([`Semantics`]). The families
//! themselves, and the functions that probe a benchmark, are in [`crate::models`].

pub mod memory;
pub mod passes;
pub mod spill;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::array::Array;
use crate::nn::cores::Ahead;
use crate::nn::{to_array, LayerNorm, Linear, LinearRole, Params, Taps};
use crate::proxy::eval::list_bytes;
use crate::rng::Rng;

/// Which scalar is back-propagated to obtain gradients, in families that offer a choice
/// (FlexiBERT; GPT-2 always back-propagates the mean next-token NLL, as the reference does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradSignal {
    /// The reference's loss: the sum of the last hidden state. Degenerate on the post-LN
    /// encoder (the last LayerNorm makes it constant), so gradients are rounding noise.
    Faithful,
    /// Σ ⟨last hidden, r⟩ with a fixed seeded Gaussian `r`: real gradients.
    #[default]
    Projection,
}

/// How the model sizes are chosen from a record, in families whose reference built its proxy
/// models at other sizes than the benchmark records say (FlexiBERT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeMode {
    /// The reference's sizes (FlexiBERT: H = 256 and FFN width 1024 for every record, which
    /// reproduces the reference parameter counts).
    Faithful,
    /// The sizes the record states (FlexiBERT: its `hidden_size` and per-layer
    /// `feed_forward_dimension`): the networks that were trained, and the default (every
    /// proxy ranks better on them; see results/README.md).
    #[default]
    Intended,
}

/// How a probe's expression inputs are kept once probed (see [`Probe::stored_as`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Full `f32` values, as computed.
    #[default]
    F32,
    /// bfloat16 values ([`crate::array::Array::to_bf16`]; all arrays but `position_grad`,
    /// see [`Probe::stored_as`]): half the memory, the `f32` range, a relative error of at
    /// most 2⁻⁹ per element; arithmetic on them stays `f32`/`f64`.
    Bf16,
}

impl Storage {
    /// The name used on the command line and in files (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }
}

/// Everything that determines a probe besides the architecture. A family's defaults come
/// from [`crate::models::Family::probe_options`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeOptions {
    /// Rows of the batch.
    pub batch: usize,
    /// Tokens per row (GPT-2: input tokens per row; the batch holds one more for the
    /// shifted targets).
    pub seq_len: usize,
    /// Seed of weights, synthetic batch, dropout masks and the projection vector.
    pub seed: u64,
    /// Backward signal (families with a choice only).
    pub grad_signal: GradSignal,
    /// Size mode (families with a choice only).
    pub sizes: SizeMode,
    /// Dropout on (p = 0.1, as the reference's training-mode models) or off.
    pub dropout: bool,
    /// Token ids from a file instead of the synthetic batch.
    pub corpus: Option<PathBuf>,
    /// Also run the extra passes of the baselines that need them (Fisher, GraSP, Synflow, ...;
    /// see [`passes`]); off for `score` unless such a proxy is requested.
    pub extra_passes: bool,
    /// How the probe's arrays are kept once computed ([`Probe::stored_as`]); every proxy and
    /// expression reads them as kept. bf16 halves the memory a search's fitness set holds.
    #[serde(default)]
    pub storage: Storage,
    /// How the forward and backward pass runs ([`PassMode`]): the values are the same either
    /// way, so it is not part of a run's recorded options.
    #[serde(skip)]
    pub pass: PassMode,
    /// Start `synaptic_diversity`'s terms ([`Probe::diversity_terms`], an eigenvalue problem
    /// per matrix) as soon as the weights and gradients exist, on a thread of idle priority
    /// ([`crate::nn::cores::Ahead`]), so that cores the rest of the probe leaves idle (its
    /// serial stretches, the extra passes) do that work. Jobs that compute the proxy set it;
    /// a probe starts the work only when it has cores to spare ([`crate::nn::cores::free_cores`]
    /// above 1: no other probe in flight) and keeps its arrays in full precision (with bf16
    /// the proxy reads the stored arrays). Changes no value, so it is not part of a run's
    /// recorded options.
    #[serde(skip)]
    pub diversity_ahead: bool,
}

/// How a probe runs its one forward and backward pass. Both give the same values, bit for bit;
/// they differ in memory and time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PassMode {
    /// Block by block where the family has such a pass ([`ProbeModel::forward_backward`];
    /// without dropout), else whole. GPT-2: the forward keeps only each block's input and the
    /// captures; the backward replays each block from them (or runs it again, when nothing
    /// is captured) and differentiates it by hand, one at a time; at 16 × 192 this halves a
    /// probe's peak memory and is faster than the whole graph. FlexiBERT: layer by layer,
    /// SA-SDP layers differentiated by hand, nothing run twice.
    #[default]
    ByBlocks,
    /// The whole network's graph at once.
    Whole,
}

/// Most rows a probe batch may have (far beyond any useful probe; the memory check of
/// [`memory`] usually stops a large batch first).
pub const MAX_BATCH: usize = 1 << 16;
/// Most worker threads probing (and a search's evaluation) may use.
pub const MAX_THREADS: usize = 1024;

/// A fixed batch of token ids, `rows × cols`, row-major.
///
/// For a decoder each row holds `seq_len + 1` tokens: the inputs are the first `seq_len`, the
/// targets the last `seq_len` (see [`Batch::shifted`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Number of rows (B).
    pub rows: usize,
    /// Tokens per row (T).
    pub cols: usize,
}

impl Batch {
    /// Reads whitespace-separated token ids from `path` and takes the first `rows × cols`;
    /// every id must be below `vocab`.
    pub fn from_corpus(path: &Path, rows: usize, cols: usize, vocab: u32) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the corpus", path.display()))?;
        let need = rows * cols;
        let mut ids = Vec::with_capacity(need);
        for (i, word) in text.split_whitespace().take(need).enumerate() {
            let id: u32 = word.parse().map_err(|_| {
                anyhow!(
                    "{}: token {i} is `{word}`, expected a non-negative integer id",
                    path.display()
                )
            })?;
            if id >= vocab {
                bail!(
                    "{}: token {i} is {id}, expected an id below the vocabulary size {vocab}",
                    path.display()
                );
            }
            ids.push(id);
        }
        if ids.len() < need {
            bail!(
                "{}: holds {} token ids, expected at least {need} ({rows} rows × {cols} tokens)",
                path.display(),
                ids.len()
            );
        }
        Ok(Self { ids, rows, cols })
    }

    /// The synthetic decoder batch of spec §5.4: `rows × cols` ids drawn i.i.d. from a Zipf(1)
    /// law over `0..vocab` (probability ∝ 1/(id + 1)); the vocabulary is sorted by corpus
    /// frequency, so this mimics real text's cluster occupancy in an adaptive softmax.
    pub fn synthetic_zipf(rows: usize, cols: usize, vocab: u32, seed: u64) -> Result<Self> {
        if rows == 0 || cols < 2 || vocab == 0 {
            bail!("the Zipf batch needs ≥ 1 row, ≥ 2 tokens per row and a vocabulary, got {rows} × {cols} over {vocab}");
        }
        let mut cdf = Vec::with_capacity(vocab as usize);
        let mut acc = 0f64;
        for id in 0..vocab {
            acc += 1.0 / (id as f64 + 1.0);
            cdf.push(acc);
        }
        let mut rng = Rng::derive(seed, &[0]);
        let ids = (0..rows * cols)
            .map(|_| {
                let u = rng.uniform() * acc;
                cdf.partition_point(|&c| c <= u).min(vocab as usize - 1) as u32
            })
            .collect();
        Ok(Self { ids, rows, cols })
    }

    /// Next-token inputs and targets, each `rows × (cols − 1)` row-major: inputs are the first
    /// `cols − 1` ids of each row, targets the last `cols − 1`.
    pub fn shifted(&self) -> (Vec<u32>, Vec<u32>) {
        let t = self.cols.saturating_sub(1);
        let mut inputs = Vec::with_capacity(self.rows * t);
        let mut targets = Vec::with_capacity(self.rows * t);
        for row in self.ids.chunks_exact(self.cols) {
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        (inputs, targets)
    }

    /// The ids as a `rows × cols` u32 tensor.
    pub fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.ids.clone(), (self.rows, self.cols), device)
    }
}

/// One linear layer's weight and gradient.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// Module name, e.g. `layer.0.mixer.query` or `h.0.attn.c_attn`.
    pub name: String,
    /// Encoder/decoder layer (None outside the layers).
    pub layer: Option<usize>,
    /// What the layer does.
    pub role: LinearRole,
    /// Weight as the model stores it: out × in for FlexiBERT's linears; **in × out** for
    /// GPT-2's Conv1D layers (roles with [`LinearRole::is_conv1d`]), as in the reference.
    pub weight: Array,
    /// Gradient of the backward signal with respect to the weight.
    pub grad: Array,
}

/// The linears of `linears` whose role is among `roles`, in their order.
fn linears_in<'a>(
    linears: &'a [LinearProbe],
    roles: &'static [LinearRole],
) -> impl Iterator<Item = &'a LinearProbe> + 'a {
    linears.iter().filter(move |l| roles.contains(&l.role))
}

impl LinearProbe {
    /// `synaptic_diversity`'s term of this layer: the product of the nuclear norms (sums of
    /// singular values) of its weight and of its gradient.
    pub fn diversity_term(&self) -> f64 {
        let nuclear = |a: &Array| {
            let (r, c) = a.dims2().expect("linear weights are matrices");
            crate::linalg::nuclear_norm(&a.data(), r, c)
        };
        nuclear(&self.weight) * nuclear(&self.grad)
    }

    /// The probe of one linear layer: its weight and that weight's gradient in `grads`.
    fn new(grads: &GradStore, lin: &Linear) -> Result<Self> {
        Ok(Self {
            name: lin.name.clone(),
            layer: lin.layer,
            role: lin.role,
            weight: to_array(lin.weight.as_tensor())?,
            grad: grad_array(grads, lin.weight.as_tensor())?,
        })
    }
}

/// The gradient of `t` in `grads` as an array; zeros of `t`'s shape when none reached it.
fn grad_array(grads: &GradStore, t: &Tensor) -> Result<Array> {
    match grads.get(t) {
        Some(g) => Ok(to_array(g)?),
        None => Ok(Array::full(t.dims().to_vec(), 0.0)),
    }
}

/// Engine tensors as arrays, converted one at a time (each tensor is freed as soon as it is
/// converted).
fn to_arrays(tensors: Vec<Tensor>) -> Result<Vec<Array>> {
    tensors.into_iter().map(|t| Ok(to_array(&t)?)).collect()
}

/// How one statistic of a family-dependent proxy is aggregated over the items of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// The mean over the items.
    Mean,
    /// The sum over the items.
    Sum,
}

/// Which width of a linear layer multiplies its Fisher term (the reference's broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherWidth {
    /// The input width.
    Input,
    /// The output width.
    Output,
}

/// An FFN activation value as captured (for families that capture activation outputs).
pub fn as_captured(v: f32) -> f64 {
    v as f64
}

/// What a family's probe means to the proxies whose definition differs between families
/// (spec §3.2 for FlexiBERT, §3.3 for GPT-2): which captured activations are the FFN
/// activations, which linears each linear-set proxy reads, and the family's variants of a few
/// formulas. A family declares one (`models::<family>::SEMANTICS`); proxies read it through the
/// accessors of [`Probe`], never by naming the family.
#[derive(Debug)]
pub struct Semantics {
    /// The `act` entries that are FFN activations (`jacob_cov_relu`, `w_pca`): every
    /// `.1`-th entry from entry `.0`.
    pub ffn_activations: (usize, usize),
    /// Applied to an FFN activation value before its principal components are counted
    /// (`w_pca`): [`as_captured`] when `act` holds activation outputs, the activation function
    /// when it holds pre-activations.
    pub ffn_activation: fn(f32) -> f64,
    /// How `activation_distance` aggregates over the `act` entries.
    pub activation_distance: Aggregate,
    /// Roles of the linears `synaptic_diversity` reads.
    pub diversity: &'static [LinearRole],
    /// Roles of the linears `synaptic_saliency` reads.
    pub saliency: &'static [LinearRole],
    /// Roles of the linears `head_importance` reads (those whose stored weight has at least
    /// 128 rows).
    pub head_importance: &'static [LinearRole],
    /// Roles of the linears whose weights and gradients are the `weight` and `grad` inputs.
    pub expression_linears: &'static [LinearRole],
    /// Which width multiplies a layer's Fisher term.
    pub fisher_width: FisherWidth,
    /// The parameter groups that make up the decoder parameters (`decoder_params`); empty
    /// when the family has none (the proxy is then NaN and not listed for it).
    pub decoder_groups: &'static [&'static str],
    /// True when Synflow's all-ones input reaches every linear with a gradient. False for a
    /// family whose positions enter only through rotary embeddings (Llama): the all-ones rows
    /// stay identical, attention mixes identical values, and the q and k projections get no
    /// Synflow gradient, so `logsynflow` (a log of each gradient) is undefined there: NaN, and
    /// not listed for the family. `synflow` itself is well defined (those terms are zero).
    pub synflow_reaches_every_linear: bool,
}

/// What one forward + backward of one architecture exposes to proxies.
///
/// Per family (the family's model decides what is captured, its [`Semantics`] how it is read):
///
/// | field | FlexiBERT | GPT-2 |
/// |---|---|---|
/// | `act` | every GELU output, B × T × FFN | every Conv1D output (per block `c_attn`, attention `c_proj`, `c_fc` before GELU, MLP `c_proj`), B × T × out |
/// | `head` | per layer the first mixer projection | the same list as `act` (shared, not copied) |
/// | `softmax` | per layer the mixer softmax | per layer the attention probabilities, B × h × T × T |
/// | `mixer_outputs` | q/k/v/in/Ww outputs | the same list as `act` (shared) |
/// | `linears` | every linear, out × in | the 4L Conv1Ds, in × out |
/// | `weight`, `grad` | mixer linears | the 4L Conv1Ds (block order, in × out) |
/// | `position_grad` | position table (512 × 128) | `wpe` (192 × D) |
/// | backward signal | `grad_signal` | mean next-token NLL |
#[derive(Clone, Debug)]
pub struct Probe {
    /// Architecture key.
    pub key: String,
    /// How the proxies read this probe (its family's).
    pub semantics: &'static Semantics,
    /// Number of trainable parameters of the built model.
    pub params: usize,
    /// Trainable parameters by group (GPT-2: `AdaEmb`, `Attn`, `FFN`, `LayerNorm`,
    /// `AdaSoftmax`; empty for FlexiBERT).
    pub param_groups: Vec<(&'static str, usize)>,
    /// The expression input `act` (see the table above).
    pub act: Arc<Vec<Array>>,
    /// The expression input `head`.
    pub head: Arc<Vec<Array>>,
    /// The expression input `softmax`.
    pub softmax: Vec<Array>,
    /// Outputs read by `head_confidence`: FlexiBERT q, k, v, in, Ww (DSC: q, k, v), GPT-2
    /// every Conv1D; execution order.
    pub mixer_outputs: Arc<Vec<Array>>,
    /// Every linear layer with weight and gradient, module order.
    pub linears: Vec<LinearProbe>,
    /// The expression input `weight`, module order.
    pub weight: Vec<Array>,
    /// The expression input `grad`, module order.
    pub grad: Vec<Array>,
    /// Gradient of the position-embedding table (positions × width).
    pub position_grad: Array,
    /// Value of the back-propagated scalar (GPT-2: the mean NLL).
    pub loss: f64,
    /// Values of the extra-pass baselines (when [`ProbeOptions::extra_passes`] is on).
    pub extras: Option<passes::Extras>,
    /// Seconds spent building and running the model (extra passes included).
    pub seconds: f64,
    /// `synaptic_diversity`'s terms started ahead ([`ProbeOptions::diversity_ahead`]).
    pub diversity_ahead: Option<Ahead<f64>>,
}

impl Probe {
    /// Everything a proxy reads, as exact bits: the loss, the captures (each list once), every
    /// linear's weight and gradient, the position table's gradient and the extra passes'
    /// values. Two ways of probing give the same probe when these agree.
    pub fn value_bits(&self) -> Vec<u64> {
        let mut bits = vec![self.loss.to_bits()];
        let mut lists: Vec<&[Array]> = vec![&self.act];
        if !Arc::ptr_eq(&self.head, &self.act) {
            lists.push(&self.head);
        }
        if !Arc::ptr_eq(&self.mixer_outputs, &self.act)
            && !Arc::ptr_eq(&self.mixer_outputs, &self.head)
        {
            lists.push(&self.mixer_outputs);
        }
        lists.push(&self.softmax);
        let arrays = lists
            .into_iter()
            .flatten()
            .chain(self.linears.iter().flat_map(|l| [&l.weight, &l.grad]))
            .chain([&self.position_grad]);
        for a in arrays {
            bits.extend(a.data().iter().map(|x| x.to_bits() as u64));
        }
        if let Some(e) = &self.extras {
            let values = [
                e.fisher,
                e.attention_confidence,
                e.jacob_cov,
                e.grasp,
                e.synflow,
                e.logsynflow,
            ];
            bits.extend(values.iter().map(|v| v.to_bits()));
        }
        bits
    }

    /// The expression input lists, each once (`head` is left out when it is `act`'s list, as
    /// in GPT-2), with the position gradient last.
    fn input_lists(&self) -> Vec<&[Array]> {
        let mut lists: Vec<&[Array]> = vec![&self.act];
        if !Arc::ptr_eq(&self.head, &self.act) {
            lists.push(&self.head);
        }
        lists.extend([&self.softmax[..], &self.grad, &self.weight]);
        lists.push(std::slice::from_ref(&self.position_grad));
        lists
    }

    /// Bytes the expression inputs hold (values and array headers; see `Self::input_lists`):
    /// what a search keeps of a fitness probe.
    pub fn input_bytes(&self) -> u64 {
        self.input_lists().into_iter().map(list_bytes).sum()
    }

    /// Number of values of the expression inputs (what [`ModelSize::input_floats`] estimates
    /// from the shapes).
    ///
    /// [`ModelSize::input_floats`]: memory::ModelSize::input_floats
    pub fn input_values(&self) -> usize {
        self.input_lists()
            .into_iter()
            .flat_map(|l| l.iter().map(Array::len))
            .sum()
    }

    /// The probe with its arrays stored as `storage` says ([`ProbeOptions::storage`]): with
    /// [`Storage::Bf16`] each array of `act`, `head`, `softmax`, `mixer_outputs`, `linears`,
    /// `weight` and `grad` is rounded to bfloat16, and arrays or lists that shared their
    /// values (`weight` with `linears`; `head` with `act` in GPT-2) still do.
    /// `position_grad` stays `f32`: it is small (positions × width) and the log-determinant
    /// of `jacobian_score` amplifies its rounding (agreement with f32 fell to ρ 0.91 on
    /// GPT-2 when it was rounded). Extra-pass values are scalars computed before and stay as
    /// they are. [`Storage::F32`] returns the probe unchanged.
    pub fn stored_as(mut self, storage: Storage) -> Probe {
        if storage == Storage::F32 {
            return self;
        }
        // Keyed by the identity of the f32 values: every key is an array the probe held at the
        // start, when all of them were alive at once, so distinct values never share a key.
        let mut done: std::collections::HashMap<usize, Array> = Default::default();
        let mut compact = |a: &Array| {
            done.entry(a.values_id())
                .or_insert_with(|| a.to_bf16())
                .clone()
        };
        let mut list = |l: &[Array]| l.iter().map(&mut compact).collect::<Vec<_>>();
        // `act`, `head` and `mixer_outputs` may be one shared list (GPT-2): keep it one.
        let mut shared: Vec<(*const Vec<Array>, Arc<Vec<Array>>)> = Vec::new();
        let mut shared_list = |l: &Arc<Vec<Array>>| {
            let key = Arc::as_ptr(l);
            if let Some((_, done)) = shared.iter().find(|(k, _)| *k == key) {
                return done.clone();
            }
            let done = Arc::new(list(l));
            shared.push((key, done.clone()));
            done
        };
        self.act = shared_list(&self.act);
        self.head = shared_list(&self.head);
        self.mixer_outputs = shared_list(&self.mixer_outputs);
        self.softmax = list(&self.softmax);
        self.grad = list(&self.grad);
        self.weight = list(&self.weight);
        for lin in &mut self.linears {
            lin.weight = compact(&lin.weight);
            lin.grad = compact(&lin.grad);
        }
        // Terms started ahead read the full-precision arrays.
        self.diversity_ahead = None;
        self
    }

    /// Trainable parameters of the group `name` (0 when the family has no such group).
    pub fn param_group(&self, name: &str) -> usize {
        self.param_groups
            .iter()
            .filter(|(g, _)| *g == name)
            .map(|(_, n)| n)
            .sum()
    }

    /// The decoder parameters (the family's decoder groups, [`Semantics::decoder_groups`]),
    /// or `None` when the family has none.
    pub fn decoder_params(&self) -> Option<usize> {
        let groups = self.semantics.decoder_groups;
        (!groups.is_empty()).then(|| groups.iter().map(|g| self.param_group(g)).sum())
    }

    /// The FFN activations among `act` ([`Semantics::ffn_activations`]), in order.
    pub fn ffn_activations(&self) -> Vec<&Array> {
        let (first, step) = self.semantics.ffn_activations;
        self.act.iter().skip(first).step_by(step.max(1)).collect()
    }

    /// Linears whose role is among `roles`, in module order.
    fn linears_in<'a>(
        &'a self,
        roles: &'static [LinearRole],
    ) -> impl Iterator<Item = &'a LinearProbe> + 'a {
        linears_in(&self.linears, roles)
    }

    /// The linears `synaptic_diversity` reads ([`Semantics::diversity`]).
    pub fn diversity_linears(&self) -> impl Iterator<Item = &LinearProbe> + '_ {
        self.linears_in(self.semantics.diversity)
    }

    /// CPU seconds spent on [`Probe::diversity_terms`] ahead of need (0 when nothing was
    /// started ahead): with the time the terms take once asked for, their whole cost.
    pub fn diversity_seconds_ahead(&self) -> f64 {
        self.diversity_ahead
            .as_ref()
            .map_or(0.0, Ahead::seconds_ahead)
    }

    /// `synaptic_diversity`'s term of each of [`Probe::diversity_linears`], in order
    /// ([`LinearProbe::diversity_term`]): what was started ahead, finished now, or else
    /// computed now on the cores the probe has to spare.
    pub fn diversity_terms(&self) -> Vec<f64> {
        match &self.diversity_ahead {
            Some(ahead) => ahead.results(),
            None => {
                let linears: Vec<_> = self.diversity_linears().collect();
                crate::nn::cores::map_free(&linears, |l| l.diversity_term())
            }
        }
    }

    /// The linears `synaptic_saliency` reads ([`Semantics::saliency`]).
    pub fn saliency_linears(&self) -> impl Iterator<Item = &LinearProbe> + '_ {
        self.linears_in(self.semantics.saliency)
    }

    /// The linears `head_importance` reads: those of [`Semantics::head_importance`] whose
    /// stored weight has at least 128 rows (`weight.shape[0] ≥ 128`: 128 outputs for an out ×
    /// in weight, 128 *inputs* for GPT-2's in × out Conv1Ds, the reference's quirk).
    pub fn head_importance_linears(&self) -> impl Iterator<Item = &LinearProbe> + '_ {
        self.linears_in(self.semantics.head_importance)
            .filter(|l| l.weight.shape()[0] >= 128)
    }
}

/// What one forward pass of a family's model hands to the probe: the scalar to
/// back-propagate and the captured activations.
pub struct Pass {
    /// The backward signal (a scalar).
    pub loss: Tensor,
    /// The activations the probe keeps.
    pub captures: Captures,
}

/// Activations captured by one forward pass, in execution order (engine tensors; the probe
/// detaches and converts them). What each list holds is the family's choice (see [`Probe`]).
pub struct Captures {
    /// The `act` input.
    pub act: Vec<Tensor>,
    /// The `head` input; `None` when it is the same list as `act` (shared, not copied).
    pub head: Option<Vec<Tensor>>,
    /// The `softmax` input.
    pub softmax: Vec<Tensor>,
    /// The outputs `head_confidence` reads; `None` when they are the `act` list.
    pub mixer_outputs: Option<Vec<Tensor>>,
}

impl Captures {
    /// The same captures detached from the autograd graph (sharing their storage).
    pub fn detached(self) -> Self {
        let detach = |ts: Vec<Tensor>| -> Vec<Tensor> { ts.iter().map(Tensor::detach).collect() };
        Self {
            act: detach(self.act),
            head: self.head.map(detach),
            softmax: detach(self.softmax),
            mixer_outputs: self.mixer_outputs.map(detach),
        }
    }
}

/// The parts of a built network the probe reads.
pub struct Network<'a> {
    /// Every trainable tensor.
    pub params: &'a Params,
    /// The network's gradient taps (switched on for the extra passes).
    pub taps: &'a Taps,
    /// Every linear layer, module order: what `linears` holds and what GraSP and Synflow
    /// score.
    pub linears: Vec<&'a Linear>,
    /// The position-embedding table (its gradient feeds the Jacobian proxies). A family
    /// without one (Llama) gives a zero offset added to the input embeddings per position,
    /// whose gradient is the same per-position gradient.
    pub position_table: &'a Var,
}

/// What a block differentiated by hand gathers on its way down (a family's pass by blocks):
/// its parameters' gradients and, when the taps are on, its linears' tap terms, met from the
/// top and handed over in forward order ([`ByHand::finish`]).
pub struct ByHand {
    grads: GradStore,
    taps: bool,
    reversed: Vec<passes::TapTerm>,
}

impl ByHand {
    /// Nothing gathered yet; `taps`: whether the linears' tap terms are read.
    pub fn new(taps: bool) -> Self {
        Self {
            grads: GradStore::default(),
            taps,
            reversed: Vec::new(),
        }
    }

    /// Back through `lin` applied to `x`, whose output `out` has the gradient `grad`: the
    /// tap's term (when the taps are on; `out` is dropped once read), the weight's and the
    /// bias's gradients kept ([`Linear::backward`]); returns ∂ℒ/∂x.
    pub fn linear(
        &mut self,
        lin: &Linear,
        x: &Tensor,
        out: Tensor,
        grad: &Tensor,
    ) -> Result<Tensor> {
        if self.taps {
            self.reversed
                .push(passes::tap_term(lin.tap_site(), &out, grad)?);
        }
        drop(out);
        let g = lin.backward(x, grad)?;
        self.grads.insert(lin.weight.as_tensor(), g.weight);
        if let Some(b) = &lin.bias {
            self.grads.insert(b.as_tensor(), g.bias);
        }
        Ok(g.input)
    }

    /// Back through `ln` applied to `x`, whose output has the gradient `grad`: γ's and β's
    /// gradients kept ([`LayerNorm::backward`]); returns ∂ℒ/∂x.
    pub fn layer_norm(&mut self, ln: &LayerNorm, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let [dx, d_gamma, d_beta] = ln.backward(x, grad)?;
        self.grads.insert(ln.gamma.as_tensor(), d_gamma);
        self.grads.insert(ln.beta.as_tensor(), d_beta);
        Ok(dx)
    }

    /// The gradients gathered; the tap terms are appended to `terms` in forward order.
    pub fn finish(self, terms: Option<&mut Vec<passes::TapTerm>>) -> GradStore {
        if let Some(terms) = terms {
            terms.extend(self.reversed.into_iter().rev());
        }
        self.grads
    }
}

/// What one forward and backward pass hands to the probe.
pub struct Backward {
    /// The loss's value.
    pub loss: f32,
    /// The forward pass's captures (detached), when asked for.
    pub captures: Option<Captures>,
    /// The gradients of every parameter the backward reached (a whole pass's store also holds
    /// the taps' and still references the forward graph: [`run`] keeps only the parameters').
    pub grads: GradStore,
    /// The terms of the gradient taps the pass recorded, in forward order; `None` when it
    /// recorded none (taps off).
    pub taps: Option<Vec<passes::TapTerm>>,
}

/// The family-specific part of a probe: a model built for one architecture and one batch,
/// which names its parts and runs its forward pass. Everything else (streams, backward,
/// capture, extra passes) is [`run`]'s.
pub trait ProbeModel {
    /// The network's parts.
    fn network(&self) -> Network<'_>;

    /// One forward pass on the model's batch, with dropout masks from `dropout` when given.
    fn forward(&self, dropout: Option<&mut Rng>) -> candle_core::Result<Pass>;

    /// One forward and one backward pass, keeping the captures when `captures`. `mode` asks
    /// for a pass by blocks ([`PassMode::ByBlocks`]), which a family may run (with the same
    /// values) or not; the default runs [`whole_pass`].
    fn forward_backward(
        &self,
        dropout: Option<&mut Rng>,
        _mode: PassMode,
        captures: bool,
    ) -> Result<Backward> {
        whole_pass(self, dropout, captures)
    }

    /// Synflow's readout: the scalar to differentiate after a forward pass on an all-ones
    /// input row (the network's parameters are absolute-valued by then).
    fn readout(&self) -> candle_core::Result<Tensor>;
}

/// [`ProbeModel::forward_backward`] on the whole graph: `model`'s forward pass, its captures
/// detached (they share their storage but not the autograd graph, which the loss alone then
/// holds), one backward from the loss, and the terms of the taps the pass recorded.
pub fn whole_pass<M: ProbeModel + ?Sized>(
    model: &M,
    dropout: Option<&mut Rng>,
    captures: bool,
) -> Result<Backward> {
    let Pass {
        loss,
        captures: taken,
    } = model.forward(dropout)?;
    let captures = captures.then(|| taken.detached());
    let value = loss.to_scalar::<f32>()?;
    let grads = loss.backward()?;
    drop(loss);
    let recorded = model.network().taps.take();
    let taps = if recorded.is_empty() {
        None
    } else {
        Some(passes::tap_terms(&recorded, &grads)?)
    };
    Ok(Backward {
        loss: value,
        captures,
        grads,
        taps,
    })
}

/// The weight and dropout streams of the architecture at `index`: derived from the seed and
/// the index alone, so a probe never depends on which other architectures run.
fn arch_streams(opts: &ProbeOptions, index: usize) -> (Rng, Rng) {
    let stream = |label: u64| Rng::derive(opts.seed, &[label, index as u64]);
    (stream(1), stream(2))
}

/// CPU inference latency of one architecture: `build` makes the model from the weight stream
/// of `index` (as [`run`] does), then its forward pass runs on the model's batch `1 + repeats`
/// times without dropout and with the taps off; the first pass warms up (allocations, caches)
/// and is not counted. Returns the `repeats` timed passes in milliseconds, in order.
pub fn time_forward<M: ProbeModel>(
    index: usize,
    opts: &ProbeOptions,
    repeats: usize,
    build: impl FnOnce(&mut Rng) -> Result<M>,
) -> Result<Vec<f64>> {
    let (mut weight_rng, _) = arch_streams(opts, index);
    let model = build(&mut weight_rng)?;
    model.network().taps.set_enabled(false);
    let mut times = Vec::with_capacity(repeats);
    for pass in 0..=repeats {
        let start = Instant::now();
        let out = model.forward(None)?;
        // The loss's value is read so that every lazy step has run.
        out.loss.to_scalar::<f32>()?;
        drop(out);
        if pass > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

/// Probes one architecture: `build` makes the model from the weight stream of `index` (the
/// architecture's position in its benchmark, so a result never depends on which other
/// architectures run), then one forward with the dropout stream's masks when
/// [`ProbeOptions::dropout`] is on, one backward, the capture of every linear's weight and
/// gradient, of the position-table gradient and of the activations, and the extra passes when
/// [`ProbeOptions::extra_passes`] is on. `key` names the probe; `semantics` is the family's.
pub fn run<M: ProbeModel>(
    key: String,
    index: usize,
    opts: &ProbeOptions,
    semantics: &'static Semantics,
    build: impl FnOnce(&mut Rng) -> Result<M>,
) -> Result<Probe> {
    memory::release_freed_memory();
    let start = Instant::now();
    let (mut weight_rng, mut dropout_rng) = arch_streams(opts, index);
    let model = build(&mut weight_rng)?;
    let network = model.network();
    network.taps.set_enabled(opts.extra_passes);
    let masks = dropout_rng.clone();
    let Backward {
        loss,
        captures,
        grads,
        taps,
    } = model.forward_backward(opts.dropout.then_some(&mut dropout_rng), opts.pass, true)?;
    network.taps.set_enabled(false);
    let captures = captures.context("internal error: the forward pass handed over no captures")?;
    let tapped = taps.map(|terms| passes::from_terms(&terms, semantics.fisher_width));
    // Free the autograd graph (which the gradients' history holds) before the captures are
    // converted and before any extra pass.
    let grads = parameter_grads(grads, &network);
    let linears = network
        .linears
        .iter()
        .map(|lin| LinearProbe::new(&grads, lin))
        .collect::<Result<Vec<_>>>()?;
    // Only a probe with cores to spare starts work ahead: beside another probe no core is
    // idle, and there the idle thread's work, preempted and resumed, slowed the rest more
    // than it saved (measured on the GPT-2 baselines).
    let start_ahead =
        opts.diversity_ahead && opts.storage == Storage::F32 && crate::nn::cores::free_cores() > 1;
    let diversity_ahead = start_ahead.then(|| {
        let diversity: Vec<LinearProbe> =
            linears_in(&linears, semantics.diversity).cloned().collect();
        Ahead::start(diversity.len(), move |i| diversity[i].diversity_term())
    });
    let position_grad = grad_array(&grads, network.position_table.as_tensor())?;
    let act = Arc::new(to_arrays(captures.act)?);
    let head = match captures.head {
        Some(h) => Arc::new(to_arrays(h)?),
        None => Arc::clone(&act),
    };
    let softmax = to_arrays(captures.softmax)?;
    let mixer_outputs = match captures.mixer_outputs {
        Some(m) => Arc::new(to_arrays(m)?),
        None => Arc::clone(&act),
    };
    // The extra passes change the weights (Synflow leaves them absolute): everything above is
    // captured first.
    let extras = match tapped {
        None => None,
        Some(ex) => {
            let masks = opts.dropout.then_some(&masks);
            Some(passes_after_backward(
                &model, &network, ex, grads, masks, opts.pass,
            )?)
        }
    };
    let inputs = || {
        linears
            .iter()
            .filter(|l| semantics.expression_linears.contains(&l.role))
    };
    let weight = inputs().map(|l| l.weight.clone()).collect();
    let grad = inputs().map(|l| l.grad.clone()).collect();
    let param_groups = network.params.count_by_group();
    Ok(Probe {
        key,
        semantics,
        params: network.params.count(),
        param_groups,
        act,
        head,
        softmax,
        mixer_outputs,
        weight,
        grad,
        linears,
        position_grad,
        loss: loss as f64,
        extras,
        seconds: start.elapsed().as_secs_f64(),
        diversity_ahead,
    })
}

/// The extra passes ([`passes`]) alone, for a family whose probe is not made by [`run`] (the
/// Llama family assembles its probe from a layer-by-layer pass, which holds no graph of the
/// whole network): one forward of `model` with its taps on and without dropout, one backward,
/// then what [`run`] does after its own backward (the tapped values: Fisher with
/// `fisher_width`, attention confidence, Jacob-Cov; GraSP's pass; Synflow's pass). The model's
/// parameters end absolute-valued (Synflow's pass).
pub fn extra_passes<M: ProbeModel>(model: &M, fisher_width: FisherWidth) -> Result<passes::Extras> {
    let network = model.network();
    network.taps.set_enabled(true);
    let pass = model.forward_backward(None, PassMode::Whole, false);
    network.taps.set_enabled(false);
    let Backward { grads, taps, .. } = pass?;
    let terms =
        taps.context("internal error: the model's forward pass recorded no gradient tap")?;
    let tapped = passes::from_terms(&terms, fisher_width);
    let grads = parameter_grads(grads, &network);
    passes_after_backward(model, &network, tapped, grads, None, PassMode::Whole)
}

/// Completes the tapped values `tapped` of a pass of `model` whose gradients are `grads` with
/// GraSP's and Synflow's passes over the network's linears ([`passes::run`]); GraSP's fresh
/// pass (run as `mode` asks) draws its dropout masks from a copy of `masks` (the pass's own
/// masks), none without.
fn passes_after_backward<M: ProbeModel>(
    model: &M,
    network: &Network<'_>,
    tapped: passes::Extras,
    grads: GradStore,
    masks: Option<&Rng>,
    mode: PassMode,
) -> Result<passes::Extras> {
    let weights: Vec<&Var> = network.linears.iter().map(|l| &l.weight).collect();
    let gradients = || {
        let mut masks = masks.cloned();
        Ok(model.forward_backward(masks.as_mut(), mode, false)?.grads)
    };
    let readout = || model.readout();
    passes::run(tapped, network.params, &weights, grads, gradients, readout)
}

/// The gradients of the network's parameters (every variable, every linear's weight, the
/// position table) from `grads`, detached, in a store of their own; the rest of `grads` is
/// dropped. The store a backward pass returns keeps each gradient's own autograd history,
/// and that history references the forward pass's tensors: as long as it lives, the whole
/// forward graph does (and so do the gradients of constants, such as masks, that nothing
/// reads). Dropping it frees that memory before the captures are converted and before
/// GraSP's second forward; the values are the same tensors.
fn parameter_grads(mut grads: GradStore, network: &Network<'_>) -> GradStore {
    let mut kept = GradStore::default();
    let tensors = network
        .params
        .vars()
        .iter()
        .map(|(_, v)| v)
        .chain(network.linears.iter().map(|l| &l.weight))
        .chain(std::iter::once(network.position_table))
        .map(Var::as_tensor);
    for t in tensors {
        if let Some(g) = grads.remove(t) {
            kept.insert(t, g.detach());
        }
    }
    kept
}
