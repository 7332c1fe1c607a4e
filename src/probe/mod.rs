//! Probing: one forward and one backward of a randomly initialised network on a fixed batch,
//! kept as plain arrays.
//!
//! A [`Probe`] holds everything the proxies and the search read (activations, attention maps,
//! weights, gradients), as [`Array`] values with shapes, never engine tensors. Each architecture
//! is built and probed once per batch configuration; every proxy is then computed from the
//! probe.

pub mod memory;
pub mod passes;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::array::Array;
use crate::bench::{Arch, BenchKind, Benchmark, Entry};
use crate::models::flexibert::{Config, FlexiBert, SizeMode};
use crate::models::gpt2_flex::{self, Gpt2Flex};
use crate::models::{to_array, LinearRole};
use crate::proxy::expr::{Input, InputSource};
use crate::rng::Rng;

/// Which scalar is back-propagated to obtain gradients (FlexiBERT; GPT-2 always
/// back-propagates the mean next-token NLL, as the reference does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GradSignal {
    /// The reference's loss: the sum of the last hidden state. Degenerate on the post-LN
    /// encoder (the last LayerNorm makes it constant), so gradients are rounding noise.
    Faithful,
    /// Σ ⟨last hidden, r⟩ with a fixed seeded Gaussian `r`: real gradients.
    #[default]
    Projection,
}

/// Everything that determines a probe besides the architecture.
///
/// [`ProbeOptions::default`] holds the FlexiBERT defaults; [`ProbeOptions::for_bench`] gives
/// each family's own (GPT-2: 16 rows of 192 tokens).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProbeOptions {
    /// Rows of the batch.
    pub batch: usize,
    /// Tokens per row (GPT-2: input tokens per row; the batch holds one more for the
    /// shifted targets).
    pub seq_len: usize,
    /// Seed of weights, synthetic batch, dropout masks and the projection vector.
    pub seed: u64,
    /// Backward signal.
    pub grad_signal: GradSignal,
    /// FlexiBERT size mode (ignored by GPT-2).
    pub sizes: SizeMode,
    /// Dropout on (p = 0.1, as the reference's training-mode models) or off.
    pub dropout: bool,
    /// Token ids from a file instead of the synthetic batch.
    pub corpus: Option<PathBuf>,
    /// Also run the extra passes of the baselines that need them (Fisher, GraSP, Synflow, ...;
    /// see [`passes`]); off for `score` unless such a proxy is requested.
    pub extra_passes: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            seq_len: DEFAULT_SEQ_LEN,
            seed: 0,
            grad_signal: GradSignal::default(),
            sizes: SizeMode::default(),
            dropout: false,
            corpus: None,
            extra_passes: false,
        }
    }
}

impl ProbeOptions {
    /// Checks the batch shape for a family: 1..=[`MAX_BATCH`] rows, and tokens per row within
    /// 2..=512 for FlexiBERT or 1..=192 for GPT-2 (the position tables).
    pub fn validate(&self, kind: BenchKind) -> Result<()> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            bail!(
                "batch must be within 1..={MAX_BATCH} rows, got {}",
                self.batch
            );
        }
        let (min, max) = (
            if kind == BenchKind::Flexibert { 2 } else { 1 },
            max_seq_len(kind),
        );
        if !(min..=max).contains(&self.seq_len) {
            bail!(
                "seq_len must be within {min}..={max} tokens per row for {kind} (the position \
                 table), got {}",
                self.seq_len
            );
        }
        Ok(())
    }

    /// The settings that decide the values of a probe of a `kind` architecture, as a JSON
    /// object: `bench`, `batch`, `seq_len`, `seed`, `dropout`, for FlexiBERT `grad_signal`
    /// and `sizes`, and `corpus`, the corpus file's content hash (`null` for the synthetic
    /// batch; the content, not the path, decides the batch). A search records it in its
    /// checkpoints, and a resume with other settings is refused. Fails when the corpus cannot
    /// be read.
    pub fn settings(&self, kind: BenchKind) -> Result<serde_json::Value> {
        let corpus = match &self.corpus {
            None => serde_json::Value::Null,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("{}: cannot read the corpus", path.display()))?;
                format!("fnv1a64:{:016x}", crate::report::fnv1a64(&bytes)).into()
            }
        };
        let mut settings = serde_json::json!({
            "bench": kind.name(),
            "batch": self.batch,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "dropout": self.dropout,
            "corpus": corpus,
        });
        if kind == BenchKind::Flexibert {
            settings["grad_signal"] = serde_json::to_value(self.grad_signal)?;
            settings["sizes"] = serde_json::to_value(self.sizes)?;
        }
        Ok(settings)
    }

    /// The defaults of a benchmark family: FlexiBERT 2 × 128 ([`DEFAULT_BATCH`],
    /// [`DEFAULT_SEQ_LEN`]), GPT-2 16 × 192 ([`GPT2_DEFAULT_BATCH`], [`GPT2_DEFAULT_SEQ_LEN`],
    /// the reference's first training batch).
    pub fn for_bench(kind: BenchKind) -> Self {
        let (batch, seq_len) = default_batch_shape(kind);
        Self {
            batch,
            seq_len,
            ..Self::default()
        }
    }
}

/// Default FlexiBERT batch rows (proxies that are means do not depend on it; sums scale with
/// it).
pub const DEFAULT_BATCH: usize = 2;
/// Default FlexiBERT tokens per row. The reference used 512; 128 ranks architectures as well
/// (every baseline within ±0.01 ρ, the search better) at a quarter of the probe cost, see
/// results/README.md.
pub const DEFAULT_SEQ_LEN: usize = 128;
/// Default GPT-2 batch rows (the reference's batch of 16).
pub const GPT2_DEFAULT_BATCH: usize = 16;
/// Default GPT-2 input tokens per row (the benchmark's `tgt_len`).
pub const GPT2_DEFAULT_SEQ_LEN: usize = 192;
/// GPT-2 vocabulary size (ids must stay below it).
pub const GPT2_VOCAB: u32 = 50264;
/// Most rows a probe batch may have (far beyond any useful probe; the memory check of
/// [`memory`] usually stops a large batch first).
pub const MAX_BATCH: usize = 1 << 16;
/// Most worker threads probing (and a search's evaluation) may use.
pub const MAX_THREADS: usize = 1024;

/// `(batch rows, tokens per row)` defaults of a family.
pub fn default_batch_shape(kind: BenchKind) -> (usize, usize) {
    match kind {
        BenchKind::Flexibert => (DEFAULT_BATCH, DEFAULT_SEQ_LEN),
        BenchKind::Gpt2 => (GPT2_DEFAULT_BATCH, GPT2_DEFAULT_SEQ_LEN),
    }
}

/// The largest `--seq-len` of a family (its position table): FlexiBERT 512, GPT-2 192.
pub fn max_seq_len(kind: BenchKind) -> usize {
    match kind {
        BenchKind::Flexibert => 512,
        BenchKind::Gpt2 => GPT2_DEFAULT_SEQ_LEN,
    }
}

/// A fixed batch of token ids, `rows × cols`, row-major.
///
/// For GPT-2 each row holds `seq_len + 1` tokens: the inputs are the first `seq_len`, the
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

/// FlexiBERT vocabulary size (ids must stay below it).
const BERT_VOCAB: u32 = 30522;

impl Batch {
    /// The synthetic BERT batch of spec §2.2: ids uniform in [999, 30521], `[CLS]` (101) first
    /// and `[SEP]` (102) last in every row.
    pub fn synthetic_bert(rows: usize, cols: usize, seed: u64) -> Result<Self> {
        if rows == 0 || !(2..=512).contains(&cols) {
            bail!("--batch must be ≥ 1 and --seq-len within 2..=512 (the position table), got {rows} × {cols}");
        }
        let mut rng = Rng::derive(seed, &[0]);
        let mut ids = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            for c in 0..cols {
                ids.push(match c {
                    0 => 101,
                    c if c == cols - 1 => 102,
                    _ => rng.range(999, BERT_VOCAB as usize) as u32,
                });
            }
        }
        Ok(Self { ids, rows, cols })
    }

    /// Reads whitespace-separated token ids from `path` and takes the first `rows × cols`.
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
                "{}: holds {} token ids, expected at least {need} (--batch {rows} × --seq-len {cols})",
                path.display(),
                ids.len()
            );
        }
        Ok(Self { ids, rows, cols })
    }

    /// The synthetic GPT-2 batch of spec §5.4: `rows × cols` ids drawn i.i.d. from a Zipf(1)
    /// law over `0..vocab` (probability ∝ 1/(id + 1)); the vocabulary is sorted by corpus
    /// frequency, so this mimics real text's cluster occupancy in the adaptive softmax.
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

    /// The batch for a benchmark family under `opts` (corpus when given, else synthetic):
    /// FlexiBERT `batch × seq_len` ids (seq_len ≤ 512); GPT-2 `batch × (seq_len + 1)` ids
    /// (seq_len ≤ 192), Zipf-distributed or the first ids of the corpus.
    pub fn for_bench(kind: BenchKind, opts: &ProbeOptions) -> Result<Self> {
        if opts.batch > MAX_BATCH {
            bail!(
                "a batch of {} rows is more than the {MAX_BATCH} a probe accepts",
                opts.batch
            );
        }
        let max = max_seq_len(kind);
        if opts.seq_len > max {
            bail!(
                "--seq-len {} exceeds the {max} positions of the {kind} models",
                opts.seq_len
            );
        }
        match kind {
            BenchKind::Flexibert => match &opts.corpus {
                Some(path) => Self::from_corpus(path, opts.batch, opts.seq_len, BERT_VOCAB),
                None => Self::synthetic_bert(opts.batch, opts.seq_len, opts.seed),
            },
            BenchKind::Gpt2 => {
                if opts.batch == 0 || opts.seq_len == 0 {
                    bail!(
                        "--batch and --seq-len must be at least 1, got {} × {}",
                        opts.batch,
                        opts.seq_len
                    );
                }
                let cols = opts.seq_len + 1;
                match &opts.corpus {
                    Some(path) => Self::from_corpus(path, opts.batch, cols, GPT2_VOCAB),
                    None => Self::synthetic_zipf(opts.batch, cols, GPT2_VOCAB, opts.seed),
                }
            }
        }
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

    fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
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

impl LinearProbe {
    /// The probe of one linear layer: its weight and that weight's gradient in `grads`.
    fn new(
        grads: &GradStore,
        name: &str,
        layer: Option<usize>,
        role: LinearRole,
        weight: &Var,
    ) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            layer,
            role,
            weight: to_array(weight.as_tensor())?,
            grad: grad_array(grads, weight.as_tensor())?,
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

/// Engine tensors as arrays, converted one at a time (owned tensors are freed as soon as they
/// are converted).
fn to_arrays<T: Borrow<Tensor>>(tensors: impl IntoIterator<Item = T>) -> Result<Vec<Array>> {
    tensors
        .into_iter()
        .map(|t| Ok(to_array(t.borrow())?))
        .collect()
}

/// What one forward + backward of one architecture exposes to proxies.
///
/// Per family:
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
/// | backward signal | `--grad-signal` | mean next-token NLL |
#[derive(Clone, Debug)]
pub struct Probe {
    /// Architecture key.
    pub key: String,
    /// Benchmark family of the probed model (proxies whose definition differs by family
    /// dispatch on it).
    pub family: BenchKind,
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
}

impl Probe {
    /// Trainable parameters of the group `name` (0 when the family has no such group).
    pub fn param_group(&self, name: &str) -> usize {
        self.param_groups
            .iter()
            .filter(|(g, _)| *g == name)
            .map(|(_, n)| n)
            .sum()
    }

    /// Linears of the given roles, in module order.
    pub fn linears_with<'a>(
        &'a self,
        pred: impl Fn(&LinearProbe) -> bool + 'a,
    ) -> impl Iterator<Item = &'a LinearProbe> + 'a {
        self.linears.iter().filter(move |l| pred(l))
    }
}

/// The weight and dropout streams of the architecture at `index`: derived from the seed and
/// the index alone, so a probe never depends on which other architectures run.
fn arch_streams(opts: &ProbeOptions, index: usize) -> (Rng, Rng) {
    let stream = |label: u64| Rng::derive(opts.seed, &[label, index as u64]);
    (stream(1), stream(2))
}

/// Builds and probes one FlexiBERT record. `index` (the architecture's position in the
/// benchmark) selects the weight and dropout streams, so a result never depends on which
/// other architectures run.
pub fn probe_flexibert(
    record: &crate::bench::flexibert::Record,
    index: usize,
    opts: &ProbeOptions,
    batch: &Batch,
) -> Result<Probe> {
    let start = Instant::now();
    let device = Device::Cpu;
    let config = Config::from_record(record, opts.sizes)?;
    let (mut weight_rng, mut dropout_rng) = arch_streams(opts, index);
    let model = FlexiBert::new(&config, &mut weight_rng, &device)?;
    let ids = batch.tensor(&device)?;
    model.taps().set_enabled(opts.extra_passes);
    let masks = dropout_rng.clone();
    let fwd = model.forward(&ids, opts.dropout.then_some(&mut dropout_rng))?;
    let loss = flexibert_signal(&fwd.last_hidden, opts, config.hidden_size, false)?;
    let mut grads = loss.backward()?;
    let tapped = tapped_extras(model.taps(), &mut grads, BenchKind::Flexibert)?;
    let mut linears = Vec::new();
    for lin in model.linears() {
        linears.push(LinearProbe::new(
            &grads,
            &lin.name,
            lin.layer,
            lin.role,
            &lin.weight,
        )?);
    }
    let mixers = || linears.iter().filter(|l| l.role == LinearRole::Mixer);
    let weight = mixers().map(|l| l.weight.clone()).collect();
    let grad = mixers().map(|l| l.grad.clone()).collect();
    let act = Arc::new(to_arrays(&fwd.act)?);
    let head = Arc::new(to_arrays(&fwd.head)?);
    let softmax = to_arrays(&fwd.softmax)?;
    let mixer_outputs = Arc::new(to_arrays(&fwd.mixer_outputs)?);
    let position_grad = grad_array(&grads, model.position_table().as_tensor())?;
    let loss_value = loss.to_scalar::<f32>()? as f64;
    // Free the probe's autograd graph before any extra pass.
    drop((fwd, loss));
    // The extra passes change the weights (Synflow leaves them absolute): everything above is
    // captured first.
    let extras = match tapped {
        None => None,
        Some(ex) => {
            let linears = model.linears();
            let weights: Vec<&Var> = linears.iter().map(|l| &l.weight).collect();
            let loss = || {
                let mut masks = masks.clone();
                let f = model.forward(&ids, opts.dropout.then_some(&mut masks))?;
                flexibert_signal(&f.last_hidden, opts, config.hidden_size, false)
            };
            let readout = || {
                let (t, e) = (batch.cols, config.embedding_size);
                let ones = Tensor::ones((1, t, e), candle_core::DType::F32, &device)?;
                let f = model.forward_words(ones, None)?;
                flexibert_signal(&f.last_hidden, opts, config.hidden_size, true)
            };
            Some(passes::run(
                ex,
                model.params(),
                &weights,
                grads,
                loss,
                readout,
            )?)
        }
    };
    Ok(Probe {
        key: record.id.to_string(),
        family: BenchKind::Flexibert,
        weight,
        grad,
        params: model.params().count(),
        param_groups: Vec::new(),
        act,
        head,
        softmax,
        mixer_outputs,
        linears,
        position_grad,
        loss: loss_value,
        extras,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The tap-based extra values (Fisher, attention confidence, Jacob-Cov) when the model's taps
/// were on; the taps' own gradients are then removed from `grads` (they are as large as the
/// activations).
fn tapped_extras(
    taps: &crate::models::Taps,
    grads: &mut GradStore,
    family: BenchKind,
) -> Result<Option<passes::Extras>> {
    let recorded = taps.take();
    taps.set_enabled(false);
    if recorded.is_empty() {
        return Ok(None);
    }
    let ex = passes::from_taps(&recorded, grads, family)?;
    for tap in &recorded {
        grads.remove(tap.var.as_tensor());
    }
    Ok(Some(ex))
}

/// The FlexiBERT backward signal on the last hidden state `y`: `Σ y` (faithful) or `Σ y ⊙ r`
/// with the seeded Gaussian `r` (projection); `positive` uses `|r|` (Synflow's readout, whose
/// network has only non-negative weights).
fn flexibert_signal(
    y: &Tensor,
    opts: &ProbeOptions,
    hidden: usize,
    positive: bool,
) -> candle_core::Result<Tensor> {
    if opts.grad_signal == GradSignal::Faithful && !positive {
        return y.sum_all();
    }
    let dims = y.dims().to_vec();
    let n = dims.iter().product();
    let mut r = Rng::derive(opts.seed, &[3, hidden as u64]).normal_vec(n, 1.0);
    if positive {
        r.iter_mut().for_each(|x| *x = x.abs());
    }
    (y * Tensor::from_vec(r, dims, y.device())?)?.sum_all()
}

/// Builds and probes one GPT-2 config: one forward of the mean next-token NLL over
/// `batch.shifted()` and one backward. `index` selects the weight and dropout streams, as for
/// FlexiBERT. `opts.grad_signal` and `opts.sizes` do not apply (the signal is the NLL).
pub fn probe_gpt2(
    record: &crate::bench::gpt2::Record,
    index: usize,
    opts: &ProbeOptions,
    batch: &Batch,
) -> Result<Probe> {
    let start = Instant::now();
    let device = Device::Cpu;
    let config = gpt2_flex::Config::from_record(record)?;
    if batch.cols < 2 {
        bail!(
            "a GPT-2 batch needs at least 2 tokens per row (inputs and shifted targets), got {}",
            batch.cols
        );
    }
    let (inputs, targets) = batch.shifted();
    let (mut weight_rng, mut dropout_rng) = arch_streams(opts, index);
    let model = Gpt2Flex::new(&config, &mut weight_rng, &device)?;
    let shape = (batch.rows, batch.cols - 1);
    model.taps().set_enabled(opts.extra_passes);
    let masks = dropout_rng.clone();
    let fwd = model.forward(
        &inputs,
        &targets,
        shape,
        opts.dropout.then_some(&mut dropout_rng),
    )?;
    let loss = fwd.loss.to_scalar::<f32>()? as f64;
    let mut grads = fwd.loss.backward()?;
    let tapped = tapped_extras(model.taps(), &mut grads, BenchKind::Gpt2)?;
    let mut linears = Vec::new();
    for conv in model.conv1ds() {
        linears.push(LinearProbe::new(
            &grads,
            &conv.name,
            Some(conv.layer),
            conv.role,
            &conv.weight,
        )?);
    }
    let position_grad = grad_array(&grads, model.position_table().as_tensor())?;
    // The captured outputs are detached: dropping the loss and the hidden state frees the
    // autograd graph before the captures are converted and before any extra pass.
    let gpt2_flex::Forward {
        loss: loss_tensor,
        hidden,
        conv_outputs,
        attention,
    } = fwd;
    drop((loss_tensor, hidden));
    // The extra passes change the weights (Synflow leaves them absolute): the linears above
    // are captured first.
    let extras = match tapped {
        None => None,
        Some(ex) => {
            let convs = model.conv1ds();
            let weights: Vec<&Var> = convs.iter().map(|c| &c.weight).collect();
            let loss = || {
                let mut masks = masks.clone();
                let dropout = opts.dropout.then_some(&mut masks);
                Ok(model.forward(&inputs, &targets, shape, dropout)?.loss)
            };
            let readout = || {
                let (t, d) = (shape.1, config.d_model);
                let ones = Tensor::ones((1, t, d), candle_core::DType::F32, &device)?;
                let hidden = model.decode(ones, None)?.hidden;
                model.head_logits_sum(&hidden.reshape((t, d))?)
            };
            Some(passes::run(
                ex,
                model.params(),
                &weights,
                grads,
                loss,
                readout,
            )?)
        }
    };
    let outputs = Arc::new(to_arrays(conv_outputs)?);
    Ok(Probe {
        key: record.key.clone(),
        family: BenchKind::Gpt2,
        params: model.params().count(),
        param_groups: model.param_groups(),
        act: outputs.clone(),
        head: outputs.clone(),
        mixer_outputs: outputs,
        softmax: to_arrays(attention)?,
        weight: linears.iter().map(|l| l.weight.clone()).collect(),
        grad: linears.iter().map(|l| l.grad.clone()).collect(),
        linears,
        position_grad,
        loss,
        extras,
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl InputSource for Probe {
    fn input(&self, which: Input) -> Option<&[Array]> {
        Some(match which {
            Input::Act => &self.act,
            Input::Head => &self.head,
            Input::Softmax => &self.softmax,
            Input::Grad => &self.grad,
            Input::Weight => &self.weight,
        })
    }
}

/// Probes one benchmark entry (dispatch on its family). `batch` must come from
/// [`Batch::for_bench`] with the entry's family.
pub fn probe_entry(
    entry: &Entry,
    index: usize,
    opts: &ProbeOptions,
    batch: &Batch,
) -> Result<Probe> {
    match &entry.arch {
        Arch::Flexibert(record) => probe_flexibert(record, index, opts, batch),
        Arch::Gpt2(record) => probe_gpt2(record, index, opts, batch),
    }
}

/// Probes the selected architectures on `threads` worker threads (one architecture per
/// thread at a time, each single-threaded inside the engine) and maps each probe with `f` as
/// soon as it exists, so probes are never all held at once. Results come back in selection
/// order; `on_done` is called after each architecture (for progress).
///
/// Before anything is built, fails when an architecture needs more memory than probing may
/// use ([`memory::check_fits`]).
pub fn probe_map<T: Send>(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    threads: usize,
    f: impl Fn(usize, Probe) -> Result<T> + Sync,
    on_done: impl Fn() + Sync,
) -> Result<Vec<T>> {
    let batch = Batch::for_bench(bench.kind, opts)?;
    let limit = memory::MemoryLimit::current()?;
    memory::check_fits(bench, selection, opts, threads, limit, memory::Work::Probe)?;
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    let threads = threads.clamp(1, selection.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, batch, f, on_done) = (&next, &batch, &f, &on_done);
            scope.spawn(move || loop {
                let pos = next.fetch_add(1, Ordering::Relaxed);
                if pos >= selection.len() {
                    break;
                }
                let index = selection[pos];
                let entry = &bench.entries[index];
                let result = probe_entry(entry, index, opts, batch)
                    .and_then(|p| f(index, p))
                    .with_context(|| format!("{} architecture {}", bench.kind, entry.key));
                let failed = result.is_err();
                on_done();
                if tx.send((pos, result)).is_err() || failed {
                    // Stop early on the first error: the receiver reports it.
                    next.store(selection.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    drop(tx);
    let mut out: Vec<Option<T>> = (0..selection.len()).map(|_| None).collect();
    for (pos, result) in rx {
        out[pos] = Some(result?);
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| anyhow!("internal error: an architecture was not probed")))
        .collect()
}

/// Median seconds of one forward + backward of the calibration encoder (4 SA-SDP layers with
/// 4 heads, B = 32, T = 128, H = 256, FFN 1024, vocabulary 30 522) over `reps` runs, for
/// comparison with other engines on the same machine.
pub fn calibration_seconds(reps: usize) -> Result<f64> {
    use crate::bench::flexibert::{Layer, Mixer, Record};
    let layer = Layer {
        mixer: Mixer::Sdp,
        heads: 4,
        ffn_width: 1024,
        ffn_layers: 1,
    };
    let record = Record {
        id: 0,
        hidden_size: 256,
        layers: vec![layer; 4],
        scores: Default::default(),
    };
    let opts = ProbeOptions {
        batch: 32,
        seq_len: 128,
        ..ProbeOptions::default()
    };
    let batch = Batch::for_bench(BenchKind::Flexibert, &opts)?;
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..reps.max(1) {
        times.push(probe_flexibert(&record, 0, &opts, &batch)?.seconds);
    }
    Ok(crate::stats::median(&times))
}
