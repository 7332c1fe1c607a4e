//! Probing: one forward and one backward of a randomly initialised network on a fixed batch,
//! kept as plain arrays.
//!
//! A [`Probe`] holds everything the proxies and the search read (activations, attention maps,
//! weights, gradients), as [`Array`] values with shapes, never engine tensors. Each architecture
//! is built and probed once per batch configuration; every proxy is then computed from the
//! probe.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::array::Array;
use crate::bench::{Arch, Benchmark, Entry};
use crate::models::flexibert::{Config, FlexiBert, SizeMode};
use crate::models::{to_array, LinearRole};
use crate::proxy::expr::{Input, InputSource};
use crate::rng::Rng;

/// Which scalar is back-propagated to obtain gradients.
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
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProbeOptions {
    /// Rows of the batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Seed of weights, synthetic batch, dropout masks and the projection vector.
    pub seed: u64,
    /// Backward signal.
    pub grad_signal: GradSignal,
    /// FlexiBERT size mode.
    pub sizes: SizeMode,
    /// Dropout on (p = 0.1, as the reference's training-mode models) or off.
    pub dropout: bool,
    /// Token ids from a file instead of the synthetic batch.
    pub corpus: Option<PathBuf>,
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
        }
    }
}

/// Default batch rows (proxies that are means do not depend on it; sums scale with it).
pub const DEFAULT_BATCH: usize = 2;
/// Default tokens per row (the reference's 512).
pub const DEFAULT_SEQ_LEN: usize = 512;

/// A fixed batch of token ids, `rows × cols`, row-major.
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

    /// The batch for a benchmark under `opts` (corpus when given, else synthetic).
    pub fn for_options(opts: &ProbeOptions) -> Result<Self> {
        if opts.seq_len > 512 {
            bail!(
                "--seq-len {} exceeds the 512 positions of the FlexiBERT models",
                opts.seq_len
            );
        }
        match &opts.corpus {
            Some(path) => Self::from_corpus(path, opts.batch, opts.seq_len, BERT_VOCAB),
            None => Self::synthetic_bert(opts.batch, opts.seq_len, opts.seed),
        }
    }

    fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.ids.clone(), (self.rows, self.cols), device)
    }
}

/// One linear layer's weight and gradient.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// Module name, e.g. `layer.0.mixer.query`.
    pub name: String,
    /// Encoder layer (None outside the layers).
    pub layer: Option<usize>,
    /// What the layer does.
    pub role: LinearRole,
    /// Weight, out × in.
    pub weight: Array,
    /// Gradient of the backward signal with respect to the weight.
    pub grad: Array,
}

/// What one forward + backward of one architecture exposes to proxies.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Architecture key.
    pub key: String,
    /// Number of trainable parameters of the built model.
    pub params: usize,
    /// Every GELU output in execution order (B × T × FFN width).
    pub act: Vec<Array>,
    /// Per layer, the first projection of the mixer (q for SA/DSC, input dense for LT).
    pub head: Vec<Array>,
    /// Per layer, the mixer's softmax output.
    pub softmax: Vec<Array>,
    /// Outputs of the mixer linears q, k, v, in, Ww (DSC: q, k, v), execution order.
    pub mixer_outputs: Vec<Array>,
    /// Every linear layer with weight and gradient, module order.
    pub linears: Vec<LinearProbe>,
    /// The expression input `weight`: mixer-linear weights in module order.
    pub weight: Vec<Array>,
    /// The expression input `grad`: mixer-linear gradients in module order.
    pub grad: Vec<Array>,
    /// Gradient of the position-embedding table (max positions × embedding width).
    pub position_grad: Array,
    /// Seconds spent building and running the model.
    pub seconds: f64,
}

impl Probe {
    /// Linears of the given roles, in module order.
    pub fn linears_with<'a>(
        &'a self,
        pred: impl Fn(&LinearProbe) -> bool + 'a,
    ) -> impl Iterator<Item = &'a LinearProbe> + 'a {
        self.linears.iter().filter(move |l| pred(l))
    }
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
    let mut weight_rng = Rng::derive(opts.seed, &[1, index as u64]);
    let model = FlexiBert::new(&config, &mut weight_rng, &device)?;
    let ids = batch.tensor(&device)?;
    let mut dropout_rng = Rng::derive(opts.seed, &[2, index as u64]);
    let fwd = model.forward(&ids, opts.dropout.then_some(&mut dropout_rng))?;
    let loss = match opts.grad_signal {
        GradSignal::Faithful => fwd.last_hidden.sum_all()?,
        GradSignal::Projection => {
            let dims = fwd.last_hidden.dims().to_vec();
            let n = dims.iter().product();
            let r = Rng::derive(opts.seed, &[3, config.hidden_size as u64]).normal_vec(n, 1.0);
            let r = Tensor::from_vec(r, dims, &device)?;
            (&fwd.last_hidden * r)?.sum_all()?
        }
    };
    let grads = loss.backward()?;
    let grad_of = |t: &Tensor| -> Result<Array> {
        match grads.get(t) {
            Some(g) => Ok(to_array(g)?),
            None => Ok(Array::full(t.dims().to_vec(), 0.0)),
        }
    };
    let convert =
        |v: &[Tensor]| -> Result<Vec<Array>> { v.iter().map(|t| Ok(to_array(t)?)).collect() };
    let mut linears = Vec::new();
    for lin in model.linears() {
        linears.push(LinearProbe {
            name: lin.name.clone(),
            layer: lin.layer,
            role: lin.role,
            weight: to_array(lin.weight.as_tensor())?,
            grad: grad_of(lin.weight.as_tensor())?,
        });
    }
    let mixers = || linears.iter().filter(|l| l.role == LinearRole::Mixer);
    let weight = mixers().map(|l| l.weight.clone()).collect();
    let grad = mixers().map(|l| l.grad.clone()).collect();
    Ok(Probe {
        key: record.id.to_string(),
        weight,
        grad,
        params: model.params().count(),
        act: convert(&fwd.act)?,
        head: convert(&fwd.head)?,
        softmax: convert(&fwd.softmax)?,
        mixer_outputs: convert(&fwd.mixer_outputs)?,
        linears,
        position_grad: grad_of(model.position_table().as_tensor())?,
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

/// Probes one benchmark entry (dispatch on its family).
pub fn probe_entry(
    entry: &Entry,
    index: usize,
    opts: &ProbeOptions,
    batch: &Batch,
) -> Result<Probe> {
    match &entry.arch {
        Arch::Flexibert(record) => probe_flexibert(record, index, opts, batch),
    }
}

/// Probes the selected architectures on `threads` worker threads (one architecture per
/// thread at a time, each single-threaded inside the engine) and maps each probe with `f` as
/// soon as it exists, so probes are never all held at once. Results come back in selection
/// order; `on_done` is called after each architecture (for progress).
pub fn probe_map<T: Send>(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    threads: usize,
    f: impl Fn(usize, Probe) -> Result<T> + Sync,
    on_done: impl Fn() + Sync,
) -> Result<Vec<T>> {
    let batch = Batch::for_options(opts)?;
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
    let batch = Batch::for_options(&opts)?;
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..reps.max(1) {
        times.push(probe_flexibert(&record, 0, &opts, &batch)?.seconds);
    }
    Ok(crate::stats::median(&times))
}
