//! GPT-2 Flex: the decoder of the GPT-2 benchmark (archai's `HfGPT2Flex`, spec §5.2), and the
//! GPT-2 family ([`FAMILY`]): how its architectures are probed and counted and what its probes
//! mean to the proxies.
//!
//! GPT-2 with per-layer head counts and MLP widths, pre-LN blocks, causal attention, an
//! adaptive input embedding and a projected adaptive log-softmax whose tables (and tail
//! projections) are tied to the embedding's. The forward pass returns the mean next-token
//! negative log-likelihood and what a probe records.
//!
//! Layout: every "Conv1D" weight is stored as GPT-2 does, **in × out** (`y = x W + b`,
//! [`crate::nn::Layout::InOut`]), not PyTorch's `Linear` out × in. Proxies rely on it:
//! `head_importance` filters on `weight.shape[0]` (the input width, the reference's quirk) and
//! the `lpzero_gpt2` genotype takes a softmax over axis 0 (the input axis).
//!
//! LayerNorm, `gelu_new`, the scaled causal softmax of the attention (masked scores are
//! *replaced* by −10⁴ in the reference, which gives them probability exactly 0 in f32; here they
//! get 0 directly and no gradient) and the row-wise log-sum-exp of the output logits (the loss is
//! `lse(logits) − logit[target]`, so the vocabulary-wide log-softmax is never materialised) are
//! the custom ops of [`crate::nn::ops`], to keep memory and time down on the 16 × 192-token
//! probe.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::family::{Counted, Family, FamilyInfo};
use crate::bench::gpt2::{Record, KIND};
use crate::bench::Arch;
use crate::nn::{dropout, ops, Build, Init, LayerNorm, Linear, LinearRole, Params, TapSite, Taps};
use crate::probe::memory::ModelSize;
use crate::probe::{
    self, passes, Aggregate, Backward, Batch, ByHand, Captures, FisherWidth, Network, Pass,
    PassMode, Probe, ProbeModel, ProbeOptions, Semantics,
};
use crate::rng::Rng;

/// Parameter group: embedding tables, input projections and the position table.
pub const GROUP_ADA_EMB: &str = "AdaEmb";
/// Parameter group: `c_attn` and the attention `c_proj` of every block.
pub const GROUP_ATTN: &str = "Attn";
/// Parameter group: `c_fc` and the MLP `c_proj` of every block.
pub const GROUP_FFN: &str = "FFN";
/// Parameter group: every LayerNorm γ and β (two per block and the final one).
pub const GROUP_LAYER_NORM: &str = "LayerNorm";
/// Parameter group: the adaptive softmax's own parameters (cluster weight and bias, output
/// biases, the untied head projection; untied output tables when `tie_weight` is false).
pub const GROUP_ADA_SOFTMAX: &str = "AdaSoftmax";

/// The parameter-count columns besides `total`, in `params_summary.yaml` order.
pub const COLUMNS: [&str; 4] = ["AdaEmb", "Attn", "FFN", "nonembedding"];

/// LayerNorm epsilon of every block and of the final LayerNorm.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// The decoder of a benchmark record: the record itself (its shapes checked) and the cluster
/// geometry derived from it, the cleaned cutoffs and one `tie_projs` entry per cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    record: Record,
    cutoffs: Vec<usize>,
    tie_projs: Vec<bool>,
}

impl Config {
    /// The decoder of `record`; fails, naming the record and the field, when its shapes do
    /// not hold together ([`Record::check_shapes`]; every record read from a benchmark passed
    /// that check already).
    pub fn from_record(record: &Record) -> Result<Self> {
        record
            .check_shapes()
            .map_err(|e| anyhow!("{}: {}: {}", record.key, e.field, e.message))?;
        let cutoffs = record.clusters();
        Ok(Self {
            tie_projs: record.tie_projs[..cutoffs.len()].to_vec(),
            cutoffs,
            record: record.clone(),
        })
    }

    /// The record the decoder was made from.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Number of decoder layers L.
    pub fn n_layer(&self) -> usize {
        self.record.n_layer()
    }

    /// Number of clusters, the head cluster (shortlist) included.
    pub fn n_clusters(&self) -> usize {
        self.cutoffs.len()
    }

    /// Token range `[start, end)` of cluster `i`.
    pub fn cluster_range(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 { 0 } else { self.cutoffs[i - 1] };
        (start, self.cutoffs[i])
    }

    /// Width of cluster `i`'s table: E for k = 1, E / kⁱ otherwise.
    pub fn cluster_width(&self, i: usize) -> usize {
        if self.record.div_val == 1 {
            self.record.d_embed
        } else {
            self.record.d_embed / self.record.div_val.pow(i as u32)
        }
    }

    /// The cluster holding token `id`.
    pub fn cluster_of(&self, id: usize) -> usize {
        self.cutoffs.partition_point(|&end| end <= id)
    }

    /// The number of trainable parameters of the decoder (tied tensors once), from the shapes
    /// alone (equal to the count of a built model; no tensor is allocated, so it is safe on
    /// absurd sizes). An `f64` so that it never overflows.
    pub fn parameter_count(&self) -> f64 {
        let (d, e) = (self.record.d_model as f64, self.record.d_embed as f64);
        let k = self.record.div_val;
        let clusters = self.n_clusters();
        let tables: Vec<(f64, f64)> = if k == 1 {
            vec![(self.record.n_token as f64, e)]
        } else {
            (0..clusters)
                .map(|i| {
                    let (lo, hi) = self.cluster_range(i);
                    ((hi - lo) as f64, self.cluster_width(i) as f64)
                })
                .collect()
        };
        let table_sum: f64 = tables.iter().map(|(rows, width)| rows * width).sum();
        let projected = |width: f64| k > 1 || width != d;
        let emb_projs: f64 = tables
            .iter()
            .filter(|t| projected(t.1))
            .map(|t| d * t.1)
            .sum();
        let mut n = table_sum + emb_projs + self.record.tgt_len as f64 * d;
        for &inner in &self.record.d_inner {
            let inner = inner as f64;
            n += 4.0 * d + (d * 3.0 * d + 3.0 * d) + (d * d + d) + 2.0 * (d * inner) + inner + d;
        }
        n += 2.0 * d;
        if clusters > 1 {
            n += (clusters - 1) as f64 * (e + 1.0);
        }
        if !self.record.tie_weight {
            n += table_sum;
        }
        n += tables.iter().map(|t| t.0).sum::<f64>();
        for i in 0..clusters {
            let width = self.cluster_width(i) as f64;
            if !self.tie_projs[i] && projected(width) {
                n += d * width;
            }
        }
        n
    }

    /// About how many `f32` values a probe keeps alive per input token at its peak (forward
    /// activations saved for the backward pass, their gradients and the probe's copies), for
    /// `batch` rows of `seq_len` tokens: per block 20 × D, 5 × the MLP width and 4 × the
    /// attention row of every head (T values), plus the head's share: 4 × the head cluster's
    /// logits of the rows it holds at once (at most 511: `nn::ops::linear_logsumexp` runs
    /// them in chunks).
    /// Calibrated on measured peaks (4–16 rows of 192 tokens); meant to reject what cannot
    /// fit, not to predict exactly.
    pub fn activation_floats_per_token(&self, batch: usize, seq_len: usize) -> f64 {
        let blocks: f64 = self.block_graph_floats(seq_len).sum();
        blocks + self.head_floats(batch * seq_len)
    }

    /// Per block, the floats per token [`Config::activation_floats_per_token`] counts for its
    /// graph: 20 × D, 5 × the MLP width and 4 × the attention row of every head (T values).
    fn block_graph_floats(&self, seq_len: usize) -> impl Iterator<Item = f64> + '_ {
        let (d, t) = (self.record.d_model as f64, seq_len as f64);
        self.record
            .n_head
            .iter()
            .zip(&self.record.d_inner)
            .map(move |(&h, &inner)| 20.0 * d + 5.0 * inner as f64 + 4.0 * h as f64 * t)
    }

    /// The head's floats per token, for `tokens` in the batch: 4 × the head cluster's logits
    /// (shortlist and one per tail cluster) of the rows it holds at once
    /// (`ops::linear_logsumexp` runs the rows in chunks).
    fn head_floats(&self, tokens: usize) -> f64 {
        let held = ops::linear_logsumexp_rows_held(tokens);
        4.0 * (self.cutoffs[0] + self.n_clusters() - 1) as f64 * held as f64 / tokens.max(1) as f64
    }

    /// The `f32` values of a probe's expression inputs for `batch` rows of `seq_len` tokens
    /// (exact, from the shapes): per block the Conv1D outputs (`act`, which `head` shares:
    /// 3D, D, the MLP width and D per token), the attention probabilities (`softmax`: T per
    /// head and token) and the four Conv1D weights twice (`weight` and `grad`), plus the
    /// position table's gradient.
    pub fn input_floats(&self, batch: usize, seq_len: usize) -> f64 {
        let (d, t) = (self.record.d_model as f64, seq_len as f64);
        let tokens = batch as f64 * t;
        let blocks: f64 = (self.record.n_head.iter().zip(&self.record.d_inner))
            .map(|(&h, &inner)| {
                let inner = inner as f64;
                tokens * (5.0 * d + inner + h as f64 * t) + 2.0 * (4.0 * d * d + 2.0 * d * inner)
            })
            .sum();
        blocks + self.record.tgt_len as f64 * d
    }

    /// The same for a pass by blocks ([`Gpt2Flex::forward_backward_by_blocks`]): 1.25 × the
    /// captures of every block (kept, then converted), the largest block's graph as
    /// [`Config::activation_floats_per_token`] counts a block, each block's input and the
    /// head's share (as [`Config::activation_floats_per_token`] counts it). At 16 × 192 with the extra passes (whole-process
    /// peak, one worker) the largest benchmark decoder (`config_4_j9`) peaked at 2.34 GB
    /// against an estimate of 2.98 GB, `config_15_j0` at 1.50 of 1.86, `config_0_j0` at 0.44
    /// of 0.78.
    pub fn by_blocks_floats_per_token(&self, batch: usize, seq_len: usize) -> f64 {
        let (d, t) = (self.record.d_model as f64, seq_len as f64);
        let captures: f64 = (self.record.n_head.iter().zip(&self.record.d_inner))
            .map(|(&h, &inner)| 5.0 * d + inner as f64 + h as f64 * t)
            .sum();
        let block = self.block_graph_floats(seq_len).fold(0.0, f64::max);
        1.25 * captures + block + d * self.n_layer() as f64 + self.head_floats(batch * seq_len)
    }
}

/// One pre-LN decoder block.
struct Block {
    heads: usize,
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A randomly initialised GPT-2 Flex decoder.
pub struct Gpt2Flex {
    config: Config,
    params: Params,
    /// Embedding tables: one V × E table (k = 1) or one `size_i × e_i` table per cluster.
    emb_tables: Vec<Var>,
    /// Embedding projections D × e_i, one per table (k = 1: present iff E ≠ D).
    emb_projs: Vec<Option<Var>>,
    wpe: Var,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `(n_clusters − 1) × E` weight and bias of the tail-cluster logits in the head.
    cluster: Option<(Var, Var)>,
    /// Output tables of their own (only when `tie_weight` is false), laid out as `emb_tables`.
    out_tables: Vec<Var>,
    /// Output biases: one V vector (k = 1) or one per cluster.
    out_biases: Vec<Var>,
    /// Per cluster, an output projection of its own (untied clusters that need one).
    out_projs: Vec<Option<Var>>,
    taps: Taps,
    /// Whether a backward pass computes the gradients of the adaptive embedding and softmax
    /// parameters (see [`Gpt2Flex::without_table_gradients`]).
    table_gradients: bool,
}

/// What one forward pass exposes to a probe (engine tensors; the probe converts them).
pub struct Forward {
    /// Mean next-token negative log-likelihood over the B·T positions (a scalar).
    pub loss: Tensor,
    /// Output of the final LayerNorm, B × T × D.
    pub hidden: Tensor,
    /// Every Conv1D output in execution order (per block: `c_attn`, attention `c_proj`,
    /// `c_fc` before the activation, MLP `c_proj`), B × T × out; detached (same storage, no
    /// graph), so holding them does not keep the autograd graph alive.
    pub conv_outputs: Vec<Tensor>,
    /// Attention probabilities of every block, B × heads × T × T (rows sum to 1 over the
    /// causal window; attention dropout is 0 in this benchmark); detached.
    pub attention: Vec<Tensor>,
}

impl Build for Gpt2Flex {
    type Config = Config;

    /// Builds the decoder (spec §5.2 initialisation).
    fn build(
        config: &Config,
        params: Params,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let c = config;
        let (d, e, k) = (c.record.d_model, c.record.d_embed, c.record.div_val);
        let n_layer = c.n_layer();
        let mut params = params;
        let mut b = Init {
            params: &mut params,
            rng,
            device,
            std: c.record.weight_init_std,
        };
        // Tables per cluster (k > 1) or one table (k = 1); their shapes.
        let table_shapes: Vec<(usize, usize)> = if k == 1 {
            vec![(c.record.n_token, e)]
        } else {
            (0..c.n_clusters())
                .map(|i| {
                    let (lo, hi) = c.cluster_range(i);
                    (hi - lo, c.cluster_width(i))
                })
                .collect()
        };
        let suffix = |i: usize| {
            if k == 1 {
                String::new()
            } else {
                format!(".{i}")
            }
        };
        // One table per entry of `table_shapes`, named `{name}` (k = 1) or `{name}.{i}`.
        let tables = |b: &mut Init, name: &str| -> candle_core::Result<Vec<Var>> {
            table_shapes
                .iter()
                .enumerate()
                .map(|(i, &(rows, width))| {
                    b.normal(
                        &format!("{name}{}", suffix(i)),
                        &[rows, width],
                        c.record.weight_init_std,
                    )
                })
                .collect()
        };

        b.params.set_group(GROUP_ADA_EMB);
        let emb_tables = tables(&mut b, "word_emb.table")?;
        let mut emb_projs = Vec::new();
        for (i, &(_, width)) in table_shapes.iter().enumerate() {
            emb_projs.push(if k > 1 || width != d {
                Some(b.normal(
                    &format!("word_emb.proj{}", suffix(i)),
                    &[d, width],
                    c.record.proj_init_std,
                )?)
            } else {
                None
            });
        }
        let wpe = b.normal("wpe", &[c.record.tgt_len, d], c.record.weight_init_std)?;

        // Both c_proj weights are drawn with the GPT-2 residual scaling 0.02/√(2L).
        let proj_std = c.record.weight_init_std / ((2 * n_layer) as f64).sqrt();
        let mut blocks = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            b.params.set_group(GROUP_LAYER_NORM);
            let ln_1 = layer_norm(&mut b, &format!("h.{l}.ln_1"), d)?;
            b.params.set_group(GROUP_ATTN);
            let c_attn = Linear::conv1d(
                &mut b,
                format!("h.{l}.attn.c_attn"),
                l,
                LinearRole::AttnQkv,
                (d, 3 * d),
                c.record.weight_init_std,
            )?;
            let attn_proj = Linear::conv1d(
                &mut b,
                format!("h.{l}.attn.c_proj"),
                l,
                LinearRole::AttnProj,
                (d, d),
                proj_std,
            )?;
            b.params.set_group(GROUP_LAYER_NORM);
            let ln_2 = layer_norm(&mut b, &format!("h.{l}.ln_2"), d)?;
            b.params.set_group(GROUP_FFN);
            let c_fc = Linear::conv1d(
                &mut b,
                format!("h.{l}.mlp.c_fc"),
                l,
                LinearRole::MlpFc,
                (d, c.record.d_inner[l]),
                c.record.weight_init_std,
            )?;
            let mlp_proj = Linear::conv1d(
                &mut b,
                format!("h.{l}.mlp.c_proj"),
                l,
                LinearRole::MlpProj,
                (c.record.d_inner[l], d),
                proj_std,
            )?;
            blocks.push(Block {
                heads: c.record.n_head[l],
                ln_1,
                c_attn,
                attn_proj,
                ln_2,
                c_fc,
                mlp_proj,
            });
        }
        b.params.set_group(GROUP_LAYER_NORM);
        let ln_f = layer_norm(&mut b, "ln_f", d)?;

        b.params.set_group(GROUP_ADA_SOFTMAX);
        let cluster = if c.n_clusters() > 1 {
            Some((
                b.normal(
                    "crit.cluster_weight",
                    &[c.n_clusters() - 1, e],
                    c.record.weight_init_std,
                )?,
                b.constant("crit.cluster_bias", &[c.n_clusters() - 1], 0.0)?,
            ))
        } else {
            None
        };
        let out_tables = if c.record.tie_weight {
            Vec::new()
        } else {
            tables(&mut b, "crit.out_table")?
        };
        let mut out_biases = Vec::new();
        for (i, &(rows, _)) in table_shapes.iter().enumerate() {
            out_biases.push(b.constant(&format!("crit.out_bias{}", suffix(i)), &[rows], 0.0)?);
        }
        let mut out_projs = Vec::new();
        for i in 0..c.n_clusters() {
            let width = c.cluster_width(i);
            let needed = k > 1 || width != d;
            out_projs.push(if !c.tie_projs[i] && needed {
                Some(b.normal(
                    &format!("crit.out_proj.{i}"),
                    &[d, width],
                    c.record.proj_init_std,
                )?)
            } else {
                None
            });
        }
        Ok(Self {
            config: config.clone(),
            params,
            emb_tables,
            emb_projs,
            wpe,
            blocks,
            ln_f,
            cluster,
            out_tables,
            out_biases,
            out_projs,
            taps: Taps::default(),
            table_gradients: true,
        })
    }
}

impl Gpt2Flex {
    /// The same model whose adaptive embedding and softmax parameters (tables, projections,
    /// biases, cluster weight) enter every pass as constants: a backward pass still reaches
    /// the hidden states, the embedded tokens (through the embedding tap) and every block, with
    /// the same values, but computes no gradient for those parameters. No probe reads them
    /// (its gradients are the Conv1Ds' and the position table's), and they are the most
    /// expensive part of a small decoder's backward: the softmax weights' gradient is a
    /// product as large as the head's forward (N × E × shortlist), and each table's gradient
    /// a vocabulary-sized buffer.
    pub fn without_table_gradients(mut self) -> Self {
        self.table_gradients = false;
        self
    }

    /// `v`'s tensor as a pass uses a table parameter: itself, or detached (a constant) when
    /// the model computes no table gradients.
    fn table_param(&self, v: &Var) -> Tensor {
        if self.table_gradients {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
        }
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Σ over rows of the head-cluster logits (shortlist and cluster columns, projection and
    /// bias, no log-softmax) of final hidden states `z` (N × D): Synflow's readout.
    pub fn head_logits_sum(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let (w_head, b_head) = self.head_weight()?;
        let hp = self.project_out(z, 0)?;
        hp.matmul(&w_head.t()?)?.broadcast_add(&b_head)?.sum_all()
    }

    /// The position table `wpe` (n_positions × D).
    pub fn position_table(&self) -> &Var {
        &self.wpe
    }

    /// The parts a probe reads: parameters, taps, the 4L Conv1Ds, the position table.
    pub fn network(&self) -> Network<'_> {
        Network {
            params: &self.params,
            taps: &self.taps,
            linears: self.linears(),
            position_table: &self.wpe,
        }
    }

    /// The 4L Conv1D layers in module order (per block: `c_attn`, attention `c_proj`, `c_fc`,
    /// MLP `c_proj`), weights in × out.
    pub fn linears(&self) -> Vec<&Linear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj])
            .collect()
    }

    /// Output projection of cluster `i` (`D × e_i`, used as `z · Q`), or `None` when the
    /// cluster has none (k = 1 with E = D).
    fn out_proj(&self, i: usize) -> Option<Tensor> {
        if self.config.tie_projs[i] {
            let j = if self.config.record.div_val == 1 {
                0
            } else {
                i
            };
            self.emb_projs[j].as_ref()
        } else {
            self.out_projs[i].as_ref()
        }
        .map(|q| self.table_param(q))
    }

    /// Output table rows of cluster `i` (`size_i × e_i`).
    fn out_weight(&self, i: usize) -> candle_core::Result<Tensor> {
        let tables = if self.config.record.tie_weight {
            &self.emb_tables
        } else {
            &self.out_tables
        };
        if self.config.record.div_val == 1 {
            let (lo, hi) = self.config.cluster_range(i);
            self.table_param(&tables[0]).narrow(0, lo, hi - lo)
        } else {
            Ok(self.table_param(&tables[i]))
        }
    }

    /// Output bias of cluster `i` (`size_i`).
    fn out_bias(&self, i: usize) -> candle_core::Result<Tensor> {
        if self.config.record.div_val == 1 {
            let (lo, hi) = self.config.cluster_range(i);
            self.table_param(&self.out_biases[0]).narrow(0, lo, hi - lo)
        } else {
            Ok(self.table_param(&self.out_biases[i]))
        }
    }

    /// Head weight `[table_0 ; cluster_weight]` and bias `[b_0 ; cluster_bias]`.
    fn head_weight(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let (w0, b0) = (self.out_weight(0)?, self.out_bias(0)?);
        match &self.cluster {
            Some((cw, cb)) => Ok((
                Tensor::cat(&[&w0, &self.table_param(cw)], 0)?,
                Tensor::cat(&[&b0, &self.table_param(cb)], 0)?,
            )),
            None => Ok((w0, b0)),
        }
    }

    /// `z` (N × D) through the output projection of cluster `i`.
    fn project_out(&self, z: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        match self.out_proj(i) {
            Some(q) => z.matmul(&q),
            None => Ok(z.clone()),
        }
    }

    /// Adaptive input embedding of `ids`, times √D: N × D.
    fn embed(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = ids.len();
        let emb = if c.record.div_val == 1 {
            let idx = Tensor::from_slice(ids, n, device)?;
            let rows = self
                .table_param(&self.emb_tables[0])
                .index_select(&idx, 0)?;
            match &self.emb_projs[0] {
                Some(p) => rows.matmul(&self.table_param(p).t()?)?,
                None => rows,
            }
        } else {
            // Gather each cluster's tokens, embed and project them, then put the rows back in
            // token order with one permutation.
            let mut parts = Vec::new();
            let mut order: Vec<usize> = Vec::with_capacity(n);
            for i in 0..c.n_clusters() {
                let (lo, hi) = c.cluster_range(i);
                let positions: Vec<usize> = (0..n)
                    .filter(|&p| (lo..hi).contains(&(ids[p] as usize)))
                    .collect();
                if positions.is_empty() {
                    continue;
                }
                let local: Vec<u32> = positions.iter().map(|&p| ids[p] - lo as u32).collect();
                let idx = Tensor::from_vec(local, positions.len(), device)?;
                let rows = self
                    .table_param(&self.emb_tables[i])
                    .index_select(&idx, 0)?;
                let proj = self.emb_projs[i]
                    .as_ref()
                    .expect("every cluster has a projection when div_val > 1");
                parts.push(rows.matmul(&self.table_param(proj).t()?)?);
                order.extend(positions);
            }
            let stacked = Tensor::cat(&parts, 0)?;
            let mut inverse = vec![0u32; n];
            for (row, &p) in order.iter().enumerate() {
                inverse[p] = row as u32;
            }
            stacked.index_select(&Tensor::from_vec(inverse, n, device)?, 0)?
        };
        let emb = emb.affine((c.record.d_model as f64).sqrt(), 0.0)?;
        if self.table_gradients {
            Ok(emb)
        } else {
            // A leaf of its own, so that the backward still reaches the embedded tokens (the
            // embedding tap reads their gradient) and stops there.
            Ok(Var::from_tensor(&emb)?.as_tensor().clone())
        }
    }

    /// Sum over rows of the adaptive-softmax NLL of `targets` given final hidden states `z`
    /// (N × D): `Σ_n lse(head_n) − head_n[c_n]` plus, for tail targets,
    /// `lse(tail_n) − tail_n[y_n − start]`, where `c_n` is the target (shortlist) or its
    /// cluster's column `shortlist + i − 1`.
    ///
    /// Without table gradients the head's log-sum-exps run a few hundred rows at a time
    /// ([`ops::linear_logsumexp`]: the N × shortlist logits never exist at once), and
    /// `expected_grad`, the gradient the caller's backward will give each of them, lets that
    /// op compute their backward while it holds the logits.
    fn nll_sum(
        &self,
        z: &Tensor,
        targets: &[u32],
        expected_grad: Option<f32>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let device = z.device();
        let shortlist = c.cutoffs[0];
        let (w_head, b_head) = self.head_weight()?;
        let hp = self.project_out(z, 0)?;
        let lse = if self.table_gradients {
            ops::logsumexp_rows(&ops::linear(&hp, &w_head, &b_head, true, None)?)?
        } else {
            ops::linear_logsumexp(&hp, &w_head, &b_head, expected_grad)?
        };
        let columns: Vec<u32> = targets
            .iter()
            .map(|&y| match c.cluster_of(y as usize) {
                0 => y,
                i => (shortlist + i - 1) as u32,
            })
            .collect();
        let mut total =
            (lse.sum_all()? - picked_logits(&hp, &w_head, &b_head, columns, device)?.sum_all()?)?;
        for i in 1..c.n_clusters() {
            let (lo, _) = c.cluster_range(i);
            let rows: Vec<u32> = (0..targets.len() as u32)
                .filter(|&r| c.cluster_of(targets[r as usize] as usize) == i)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let local: Vec<u32> = rows
                .iter()
                .map(|&r| targets[r as usize] - lo as u32)
                .collect();
            let zi = z.index_select(&Tensor::from_vec(rows.clone(), rows.len(), device)?, 0)?;
            let pi = self.project_out(&zi, i)?;
            let (wi, bi) = (self.out_weight(i)?, self.out_bias(i)?);
            let li = ops::linear(&pi, &wi, &bi, true, None)?;
            total = (total + ops::logsumexp_rows(&li)?.sum_all()?)?;
            total = (total - picked_logits(&pi, &wi, &bi, local, device)?.sum_all()?)?;
        }
        Ok(total)
    }

    /// Log-probabilities of every token of the vocabulary given final hidden states `z`
    /// (N × D): N × V. For checks; the forward pass never materialises it.
    pub fn log_probs(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        use candle_nn::ops::log_softmax;
        let c = &self.config;
        let shortlist = c.cutoffs[0];
        let (w_head, b_head) = self.head_weight()?;
        let hp = self.project_out(z, 0)?;
        let head = log_softmax(&hp.matmul(&w_head.t()?)?.broadcast_add(&b_head)?, 1)?;
        let mut parts = vec![head.narrow(1, 0, shortlist)?];
        for i in 1..c.n_clusters() {
            let pi = self.project_out(z, i)?;
            let (wi, bi) = (self.out_weight(i)?, self.out_bias(i)?);
            let tail = log_softmax(&pi.matmul(&wi.t()?)?.broadcast_add(&bi)?, 1)?;
            parts.push(tail.broadcast_add(&head.narrow(1, shortlist + i - 1, 1)?)?);
        }
        Tensor::cat(&parts, 1)
    }

    /// One forward pass: `inputs` and `targets` are `rows × cols` token ids, row-major
    /// (targets already shifted). `dropout_rng` switches residual dropout on with masks from
    /// that stream.
    pub fn forward(
        &self,
        inputs: &[u32],
        targets: &[u32],
        (rows, cols): (usize, usize),
        dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<Forward> {
        let c = &self.config;
        let device = self.wpe.device().clone();
        let n = rows * cols;
        self.check_batch(inputs, targets, (rows, cols))?;
        let emb = self
            .embed(inputs, &device)?
            .reshape((rows, cols, c.record.d_model))?;
        let Decoded {
            hidden,
            conv_outputs,
            attention,
        } = self.decode(emb, dropout_rng)?;
        let z = hidden.reshape((n, c.record.d_model))?;
        let loss = self
            .nll_sum(&z, targets, None)?
            .affine(1.0 / n as f64, 0.0)?;
        Ok(Forward {
            loss,
            hidden,
            conv_outputs,
            attention,
        })
    }

    /// The blocks and the final LayerNorm on word embeddings `emb` (B × T × D, already scaled
    /// by √D); positions are added here. Synflow feeds all ones.
    pub fn decode(
        &self,
        emb: Tensor,
        mut dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<Decoded> {
        let mut h = self.block_input(emb)?;
        let mut conv_outputs = Vec::with_capacity(4 * self.blocks.len());
        let mut attention = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (next, out) = self.block_forward(block, &h, dropout_rng.as_deref_mut())?;
            out.capture(&mut conv_outputs, &mut attention);
            h = next;
        }
        let hidden = self.ln_f.forward(&h)?;
        Ok(Decoded {
            hidden,
            conv_outputs,
            attention,
        })
    }

    /// Checks that `inputs` and `targets` hold `rows × cols` ids of the vocabulary.
    fn check_batch(
        &self,
        inputs: &[u32],
        targets: &[u32],
        (rows, cols): (usize, usize),
    ) -> candle_core::Result<()> {
        let n = rows * cols;
        if inputs.len() != n || targets.len() != n || n == 0 {
            return Err(candle_core::Error::Msg(format!(
                "expected {rows} × {cols} inputs and targets, got {} and {}",
                inputs.len(),
                targets.len()
            )));
        }
        let vocab = self.config.record.n_token;
        if let Some(&bad) = inputs.iter().chain(targets).find(|&&t| t as usize >= vocab) {
            return Err(candle_core::Error::Msg(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        Ok(())
    }

    /// The first block's input: the word embeddings `emb` (B × T × D, scaled) through the
    /// embedding tap, plus the positions; an error for more tokens per row than positions.
    fn block_input(&self, emb: Tensor) -> candle_core::Result<Tensor> {
        let cols = emb.dim(1)?;
        let positions = self.config.record.tgt_len;
        if cols > positions {
            return Err(candle_core::Error::Msg(format!(
                "sequence length {cols} exceeds the {positions} positions of the model"
            )));
        }
        let emb = self.taps.tap(TapSite::Embedding, emb)?;
        let pos = self.wpe.as_tensor().narrow(0, 0, cols)?;
        emb.broadcast_add(&pos)
    }

    /// One pre-LN block on `h` (B × T × D), residual dropout from `dropout_rng` when given.
    fn block_forward(
        &self,
        block: &Block,
        h: &Tensor,
        mut dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<(Tensor, BlockOut)> {
        let p = self.config.record.dropout;
        let u = block.ln_1.forward(h)?;
        let qkv = self.taps.linear(&block.c_attn, &u)?;
        let attention = causal_attention(&qkv, block.heads)?;
        let a = self.taps.linear(&block.attn_proj, &attention.ctx)?;
        let mid = (h + dropout(&a, p, dropout_rng.as_deref_mut())?)?;
        let m = block.ln_2.forward(&mid)?;
        let f = self.taps.linear(&block.c_fc, &m)?;
        let g = ops::gelu_new(&f)?;
        let o = self.taps.linear(&block.mlp_proj, &g)?;
        let h = (&mid + dropout(&o, p, dropout_rng)?)?;
        let out = BlockOut {
            qkv,
            a,
            f,
            o,
            u,
            attention,
            mid,
            m,
            g,
        };
        Ok((h, out))
    }

    /// What [`Gpt2Flex::block_forward`] (without dropout) computes on `x`, from its captures
    /// (`conv`: the block's four linear outputs, q|k|v, attention projection, MLP in, MLP
    /// out; `probs`: its attention probabilities) and the cheap steps between them, run
    /// again: the LayerNorms, the heads' view, the attention's context, the residual sum and
    /// `gelu_new`, the same values as the block's forward. The products of the four linears
    /// and of q·kᵀ are not made again.
    fn block_replay(
        &self,
        block: &Block,
        x: &Tensor,
        conv: &[Tensor],
        probs: &Tensor,
    ) -> Result<BlockOut> {
        let [qkv, a, f, o] = conv else {
            bail!("internal error: a block's captures are not its four linear outputs");
        };
        let u = block.ln_1.forward(x)?;
        let heads = split_heads(qkv, block.heads)?;
        let ctx = attend(probs, &heads)?;
        let mid = (x + a)?;
        let m = block.ln_2.forward(&mid)?;
        let g = ops::gelu_new(f)?;
        Ok(BlockOut {
            qkv: qkv.clone(),
            a: a.clone(),
            f: f.clone(),
            o: o.clone(),
            u,
            attention: Attention {
                ctx,
                probs: probs.clone(),
                heads,
            },
            mid,
            m,
            g,
        })
    }

    /// The backward of one block without dropout, by hand: from its forward `out` on `x` and
    /// ∂ℒ/∂(output) `upstream` (B × T × D), ∂ℒ/∂x and the gradients of the block's parameters.
    /// Each step makes the calls candle's backward makes through the block's graph (the
    /// custom ops' own gradients, the same products on the same layouts), so the values are
    /// the same bit for bit; what it skips is candle's bookkeeping: a zero-filled tensor and
    /// a sum for every node a gradient reaches, and the padded copies that carry q, k and v's
    /// gradients back to the fused q|k|v output. Each of `out`'s tensors is dropped once read
    /// (top down, as the graph holds them). When `terms` is given, the gradient taps' terms of
    /// the block's four linears are appended to it in forward order.
    fn block_backward(
        &self,
        block: &Block,
        x: &Tensor,
        out: BlockOut,
        upstream: &Tensor,
        terms: Option<&mut Vec<passes::TapTerm>>,
    ) -> Result<(Tensor, GradStore)> {
        let BlockOut {
            qkv,
            a,
            f,
            o,
            u,
            attention,
            mid,
            m,
            g,
        } = out;
        let mut by_hand = ByHand::new(terms.is_some());
        // out = mid + o, o = mlp_proj(g), g = gelu_new(f), f = c_fc(m), m = ln_2(mid).
        let dg = by_hand.linear(&block.mlp_proj, &g, o, upstream)?;
        let df = ops::gelu_new_grad(&f, &g, &dg)?;
        drop((dg, g));
        let dm = by_hand.linear(&block.c_fc, &m, f, &df)?;
        drop((df, m));
        let d_mid_ln = by_hand.layer_norm(&block.ln_2, &mid, &dm)?;
        drop((dm, mid));
        let d_mid = (upstream + d_mid_ln)?;
        // mid = x + a, a = attn_proj(ctx), ctx = attention(qkv), qkv = c_attn(u), u = ln_1(x).
        let d_ctx = by_hand.linear(&block.attn_proj, &attention.ctx, a, &d_mid)?;
        let d_qkv = causal_attention_backward(&attention, &d_ctx)?;
        drop((d_ctx, attention));
        let du = by_hand.linear(&block.c_attn, &u, qkv, &d_qkv)?;
        drop((d_qkv, u));
        let dx_ln = by_hand.layer_norm(&block.ln_1, x, &du)?;
        drop(du);
        let dx = (d_mid + dx_ln)?;
        Ok((dx, by_hand.finish(terms)))
    }

    /// One forward and one backward pass block by block, without dropout: the same loss,
    /// captures and gradients of the linears and of the position table as [`Gpt2Flex::forward`]
    /// and a backward of its loss, bit for bit, in the memory of one block's graph.
    ///
    /// The forward runs each block on its input, keeps the captures and the input, and drops
    /// the block's graph. The loss is differentiated from a leaf on the last block's output;
    /// then, from the top, each block runs again on its kept input and is differentiated by
    /// hand (`Gpt2Flex::block_backward`, the same calls as candle's backward through the
    /// block's graph, without its bookkeeping); its input's gradient goes to the block below.
    /// The gradient of a block's input is the sum of two terms (its LayerNorm and its
    /// residual), which is the same in either order, so the whole pass's values come out. Tied output
    /// tables, reached from the head and from the embedding, sum their terms in another
    /// order: no probe reads their gradients. The taps' terms are read block by block and
    /// handed over in forward order.
    pub fn forward_backward_by_blocks(
        &self,
        inputs: &[u32],
        targets: &[u32],
        (rows, cols): (usize, usize),
        captures: bool,
    ) -> Result<Backward> {
        let c = &self.config;
        let device = self.wpe.device().clone();
        let n = rows * cols;
        self.check_batch(inputs, targets, (rows, cols))?;
        let taps_on = self.taps.is_enabled();
        let mut params_grads = GradStore::default();
        // The bottom (embeddings, positions, the embedding tap) keeps its small graph.
        let emb = self
            .embed(inputs, &device)?
            .reshape((rows, cols, c.record.d_model))?;
        let h0 = self.block_input(emb)?;
        let bottom_taps = self.taps.take();
        // Forward, block by block: only the inputs and the captures stay.
        self.taps.set_enabled(false);
        let mut kept_inputs = Vec::with_capacity(self.blocks.len());
        let mut conv_outputs = Vec::with_capacity(4 * self.blocks.len());
        let mut attention = Vec::with_capacity(self.blocks.len());
        let mut h = h0.detach();
        for block in &self.blocks {
            let (next, out) = self.block_forward(block, &h, None)?;
            if captures {
                out.capture(&mut conv_outputs, &mut attention);
            }
            kept_inputs.push(h);
            h = next.detach();
        }
        // The head: the loss and the gradient of the last block's output.
        let top = Var::from_tensor(&h)?;
        drop(h);
        let hidden = self.ln_f.forward(top.as_tensor())?;
        // The loss is the mean of the rows' NLL: the backward from it gives each row's
        // log-sum-exp the gradient 1 · (1/N as f32) (the affine's backward).
        let scale = 1.0 / n as f64;
        let loss = self
            .nll_sum(
                &hidden.reshape((n, c.record.d_model))?,
                targets,
                Some(scale as f32),
            )?
            .affine(scale, 0.0)?;
        let loss_value = loss.to_scalar::<f32>()?;
        let head_grads = loss.backward()?;
        drop((loss, hidden));
        self.params.add_grads(&mut params_grads, &head_grads)?;
        let mut upstream = head_grads
            .get(top.as_tensor())
            .context("internal error: the backward did not reach the last block")?
            .detach();
        drop(head_grads);
        // Backward, from the top block down, each block recomputed with its graph.
        let mut block_terms = Vec::with_capacity(self.blocks.len());
        for (i, (block, input)) in self.blocks.iter().zip(kept_inputs).enumerate().rev() {
            // The captured outputs spare the block's products; without them it runs again.
            let out = if captures {
                self.block_replay(
                    block,
                    &input,
                    &conv_outputs[4 * i..4 * i + 4],
                    &attention[i],
                )?
            } else {
                self.block_forward(block, &input, None)?.1
            };
            let mut terms = Vec::with_capacity(4);
            let (dx, grads) =
                self.block_backward(block, &input, out, &upstream, taps_on.then_some(&mut terms))?;
            drop(input);
            block_terms.push(terms);
            self.params.add_grads(&mut params_grads, &grads)?;
            upstream = dx;
        }
        // The bottom.
        let grads = (h0 * &upstream)?.sum_all()?.backward()?;
        let mut terms = passes::tap_terms(&bottom_taps, &grads)?;
        drop(bottom_taps);
        self.params.add_grads(&mut params_grads, &grads)?;
        drop(grads);
        terms.extend(block_terms.into_iter().rev().flatten());
        self.taps.set_enabled(taps_on);
        Ok(Backward {
            loss: loss_value,
            captures: captures.then(|| Captures {
                act: conv_outputs,
                head: None,
                softmax: attention,
                mixer_outputs: None,
            }),
            grads: params_grads,
            taps: taps_on.then_some(terms),
        })
    }
}

/// The decoder's output before the softmax (see [`Gpt2Flex::decode`]).
pub struct Decoded {
    /// Output of the final LayerNorm, B × T × D.
    pub hidden: Tensor,
    /// As [`Forward::conv_outputs`].
    pub conv_outputs: Vec<Tensor>,
    /// As [`Forward::attention`].
    pub attention: Vec<Tensor>,
}

/// What one block's forward pass computed besides its output: what the probe captures of it
/// and what its backward by hand reads ([`Gpt2Flex::block_backward`]).
struct BlockOut {
    /// The fused q|k|v output of `c_attn`, B × T × 3D.
    qkv: Tensor,
    /// The attention's output projection.
    a: Tensor,
    /// `c_fc`'s output (before `gelu_new`).
    f: Tensor,
    /// The MLP's output projection.
    o: Tensor,
    /// `ln_1`'s output (the input of `c_attn`).
    u: Tensor,
    /// The attention on `qkv`.
    attention: Attention,
    /// The residual stream between the attention and the MLP.
    mid: Tensor,
    /// `ln_2`'s output (the input of `c_fc`).
    m: Tensor,
    /// `gelu_new(f)` (the input of the MLP's projection).
    g: Tensor,
}

impl BlockOut {
    /// Appends the block's captures, detached: the four Conv1D outputs (q|k|v, attention
    /// projection, MLP in, MLP out) and the attention probabilities.
    fn capture(&self, conv_outputs: &mut Vec<Tensor>, attention: &mut Vec<Tensor>) {
        conv_outputs.push(self.qkv.detach());
        attention.push(self.attention.probs.detach());
        conv_outputs.push(self.a.detach());
        conv_outputs.push(self.f.detach());
        conv_outputs.push(self.o.detach());
    }
}

/// `Σ_e x[n,e] w[c_n,e] + b[c_n]` for each row n: the logit of column `c_n`, without
/// materialising the N × C logits.
fn picked_logits(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    columns: Vec<u32>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = columns.len();
    let idx = Tensor::from_vec(columns, n, device)?;
    (x * w.index_select(&idx, 0)?)?.sum(1)? + b.index_select(&idx, 0)?
}

/// One multi-head causal self-attention and what its backward reads.
struct Attention {
    /// The merged context, B × T × D.
    ctx: Tensor,
    /// The probabilities, B × h × T × T.
    probs: Tensor,
    /// q, k and v, heads first: 3 × B × h × T × dh (a view of the q|k|v output).
    heads: Tensor,
}

impl Attention {
    /// The number of heads and the softmax's scale, 1/√dh.
    fn heads_and_scale(&self) -> candle_core::Result<(usize, f32)> {
        let (_, _, heads, _, dh) = self.heads.dims5()?;
        Ok((heads, 1.0 / (dh as f32).sqrt()))
    }
}

/// Multi-head causal self-attention on the fused q|k|v output (B × T × 3D).
fn causal_attention(qkv: &Tensor, heads: usize) -> candle_core::Result<Attention> {
    let heads = split_heads(qkv, heads)?;
    let (q, k) = (heads.get(0)?, heads.get(1)?);
    let scores = ops::batched_matmul(&q, &k.t()?)?;
    let dh = q.dim(3)?;
    let probs = ops::causal_softmax(&scores, 1.0 / (dh as f32).sqrt())?;
    let ctx = attend(&probs, &heads)?;
    Ok(Attention { ctx, probs, heads })
}

/// q, k and v of the fused q|k|v output (B × T × 3D) with their heads first, 3 × B × h × T ×
/// dh: a view of the output, no copy (the products read any strides).
fn split_heads(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, w3) = qkv.dims3()?;
    let d = w3 / 3;
    qkv.reshape((b, t, 3, heads, d / heads))?
        .permute((2, 0, 3, 1, 4))
}

/// The merged context (B × T × D) of the probabilities `probs` (B × h × T × T) over v of
/// `heads` ([`split_heads`]).
fn attend(probs: &Tensor, heads: &Tensor) -> candle_core::Result<Tensor> {
    let (_, b, h, t, dh) = heads.dims5()?;
    ops::batched_matmul(probs, &heads.get(2)?)?
        .transpose(1, 2)?
        .reshape((b, t, h * dh))
}

/// ∂ℒ/∂(q|k|v) (B × T × 3D) of [`causal_attention`] from ∂ℒ/∂(context) `d_ctx` (B × T × D):
/// [`ops::attention_grads`] on the heads, laid out as the fused output in one copy.
fn causal_attention_backward(att: &Attention, d_ctx: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, d) = d_ctx.dims3()?;
    let (heads, scale) = att.heads_and_scale()?;
    let part = |i: usize| att.heads.get(i);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    // Through the merge of the heads: B × T × D → B × h × T × dh.
    let g = d_ctx.reshape((b, t, heads, d / heads))?.transpose(1, 2)?;
    let [dq, dk, dv] = ops::attention_grads([&q, &k, &v], &att.probs, &g, scale)?;
    drop(g);
    Tensor::stack(&[dq, dk, dv], 0)?
        .permute((1, 3, 0, 2, 4))?
        .contiguous()?
        .reshape((b, t, 3 * d))
}

/// `layer_norm` registered under `name` with GPT-2's `weight`/`bias` suffixes and
/// [`LAYER_NORM_EPS`].
fn layer_norm(init: &mut Init<'_>, name: &str, dim: usize) -> candle_core::Result<LayerNorm> {
    LayerNorm::new(
        init.params,
        name,
        ("weight", "bias"),
        dim,
        LAYER_NORM_EPS,
        init.device,
    )
}

/// Default probe batch rows (the reference's batch of 16).
pub const DEFAULT_BATCH: usize = 16;
/// Default input tokens per row (the benchmark's `tgt_len`), also the most a probe accepts.
pub const DEFAULT_SEQ_LEN: usize = 192;
/// Vocabulary size of the benchmark (token ids must stay below it).
pub const VOCAB: u32 = 50264;

/// The four Conv1D roles of a block: every linear of the decoder.
const CONV1D: &[LinearRole] = &[
    LinearRole::AttnQkv,
    LinearRole::AttnProj,
    LinearRole::MlpFc,
    LinearRole::MlpProj,
];

/// How the proxies read a GPT-2 probe (spec §3.3): `act` (and `head`, the same list) holds
/// every Conv1D output, the FFN activations are the `c_fc` outputs (every fourth from the
/// third, before `gelu_new`, which `w_pca` applies), every linear proxy reads all 4L Conv1Ds,
/// `activation_distance` sums over the outputs as the reference harness does, Fisher weights a
/// layer by its output width, and the decoder parameters are the `Attn` and `FFN` groups.
pub static SEMANTICS: Semantics = Semantics {
    ffn_activations: (2, 4),
    ffn_activation: ops::gelu_new_exact,
    activation_distance: Aggregate::Sum,
    diversity: CONV1D,
    saliency: CONV1D,
    head_importance: CONV1D,
    expression_linears: CONV1D,
    fisher_width: FisherWidth::Output,
    decoder_groups: &[GROUP_ATTN, GROUP_FFN],
    synflow_reaches_every_linear: true,
};

/// The GPT-2 family: 200 GPT-2 Flex decoders with WikiText-103 perplexities.
///
/// Probe inputs: `act` and `head` are every Conv1D output (per block `c_attn`, attention
/// `c_proj`, `c_fc` before the activation, MLP `c_proj`; one list, shared), `softmax` the
/// attention probabilities of every block, `grad` and `weight` the 4L Conv1D weights (in ×
/// out). The backward signal is always the mean next-token NLL.
pub struct Gpt2Family;

/// The GPT-2 family, as registered in [`crate::models::FAMILIES`].
pub static FAMILY: Gpt2Family = Gpt2Family;

/// The GPT-2 family as data.
static INFO: FamilyInfo = FamilyInfo {
    kind: KIND,
    default_batch_shape: (DEFAULT_BATCH, DEFAULT_SEQ_LEN),
    seq_len_range: 1..=DEFAULT_SEQ_LEN,
    option_names: &[],
    semantics: &SEMANTICS,
    genotypes: &["lpzero_gpt2"],
    reference: None,
    design_space: Some(&crate::bench::gpt2::space::SPACE),
};

impl Family for Gpt2Family {
    fn info(&self) -> &'static FamilyInfo {
        &INFO
    }

    /// `batch × (seq_len + 1)` ids (inputs and the shifted targets): Zipf-distributed
    /// ([`Batch::synthetic_zipf`]) or the first ids of the corpus.
    fn build_batch(&self, opts: &ProbeOptions) -> Result<Batch> {
        if opts.batch == 0 || opts.seq_len == 0 {
            bail!(
                "batch rows and tokens per row must be at least 1, got {} × {}",
                opts.batch,
                opts.seq_len
            );
        }
        let cols = opts.seq_len + 1;
        match &opts.corpus {
            Some(path) => Batch::from_corpus(path, opts.batch, cols, VOCAB),
            None => Batch::synthetic_zipf(opts.batch, cols, VOCAB, opts.seed),
        }
    }

    /// One forward of the mean next-token NLL over `batch.shifted()` and one backward
    /// (`opts.grad_signal` and `opts.sizes` do not apply).
    fn probe(
        &self,
        arch: &Arch,
        index: usize,
        opts: &ProbeOptions,
        batch: &Batch,
    ) -> Result<Probe> {
        let record = arch.of::<Record>()?;
        let config = Config::from_record(record)?;
        probe::run(record.key.clone(), index, opts, &SEMANTICS, |rng| {
            Probed::build(&config, rng, batch)
        })
    }

    fn latency(
        &self,
        arch: &Arch,
        index: usize,
        opts: &ProbeOptions,
        batch: &Batch,
        repeats: usize,
    ) -> Result<Vec<f64>> {
        let config = Config::from_record(arch.of::<Record>()?)?;
        probe::time_forward(index, opts, repeats, |rng| {
            Probed::build(&config, rng, batch)
        })
    }

    /// The total and the columns [`COLUMNS`] of `params_summary.yaml`, counted from the
    /// tensors of a shapes-only model: `AdaEmb`, `Attn`, `FFN`, and
    /// `nonembedding = Attn + FFN + LayerNorm`.
    fn count_params(&self, arch: &Arch, _opts: &ProbeOptions) -> Result<Counted> {
        let model = Gpt2Flex::shapes_only(&Config::from_record(arch.of::<Record>()?)?)?;
        let groups = model.network().params.count_by_group();
        let group = |name: &str| {
            groups
                .iter()
                .filter(|(g, _)| *g == name)
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        let (attn, ffn) = (group(GROUP_ATTN), group(GROUP_FFN));
        Ok(Counted {
            total: model.network().params.count(),
            columns: vec![
                (COLUMNS[0], group(GROUP_ADA_EMB)),
                (COLUMNS[1], attn),
                (COLUMNS[2], ffn),
                (COLUMNS[3], attn + ffn + group(GROUP_LAYER_NORM)),
            ],
        })
    }

    fn size(&self, arch: &Arch, opts: &ProbeOptions) -> Result<ModelSize> {
        let config = Config::from_record(arch.of::<Record>()?)?;
        Ok(ModelSize {
            parameters: config.parameter_count(),
            activation_floats_per_token: config
                .activation_floats_per_token(opts.batch, opts.seq_len),
            by_blocks_floats_per_token: (!opts.dropout)
                .then(|| config.by_blocks_floats_per_token(opts.batch, opts.seq_len)),
            input_floats: Some(config.input_floats(opts.batch, opts.seq_len)),
        })
    }
}

/// A decoder ready to be probed on one batch.
struct Probed {
    model: Gpt2Flex,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    shape: (usize, usize),
}

impl Probed {
    /// The model of `config` from the weight stream `rng`, with the inputs and shifted
    /// targets of `batch` (which needs at least 2 tokens per row).
    fn build(config: &Config, rng: &mut Rng, batch: &Batch) -> Result<Self> {
        if batch.cols < 2 {
            bail!(
                "a GPT-2 batch needs at least 2 tokens per row (inputs and shifted targets), got {}",
                batch.cols
            );
        }
        let (inputs, targets) = batch.shifted();
        Ok(Probed {
            model: Gpt2Flex::new(config, rng, &Device::Cpu)?.without_table_gradients(),
            inputs,
            targets,
            shape: (batch.rows, batch.cols - 1),
        })
    }
}

impl ProbeModel for Probed {
    fn network(&self) -> Network<'_> {
        self.model.network()
    }

    fn forward(&self, dropout: Option<&mut Rng>) -> candle_core::Result<Pass> {
        let f = self
            .model
            .forward(&self.inputs, &self.targets, self.shape, dropout)?;
        Ok(Pass {
            loss: f.loss,
            captures: Captures {
                act: f.conv_outputs,
                head: None,
                softmax: f.attention,
                mixer_outputs: None,
            },
        })
    }

    /// By blocks ([`Gpt2Flex::forward_backward_by_blocks`]) unless the whole pass is asked for
    /// or dropout is on.
    fn forward_backward(
        &self,
        dropout: Option<&mut Rng>,
        mode: PassMode,
        captures: bool,
    ) -> Result<Backward> {
        match (mode, dropout) {
            (PassMode::ByBlocks, None) => self.model.forward_backward_by_blocks(
                &self.inputs,
                &self.targets,
                self.shape,
                captures,
            ),
            (_, dropout) => probe::whole_pass(self, dropout, captures),
        }
    }

    /// Σ of the head-cluster logits of the decoder on an all-ones embedding row.
    fn readout(&self) -> candle_core::Result<Tensor> {
        let (t, d) = (self.shape.1, self.model.config().record.d_model);
        let ones = Tensor::ones((1, t, d), candle_core::DType::F32, &Device::Cpu)?;
        let hidden = self.model.decode(ones, None)?.hidden;
        self.model.head_logits_sum(&hidden.reshape((t, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record of a tiny decoder: 60 tokens in clusters [0,20), [20,40), [40,60).
    fn tiny_record(div_val: usize, d_embed: usize) -> Record {
        Record {
            key: "tiny".into(),
            n_token: 60,
            d_model: 16,
            d_embed,
            div_val,
            n_head: vec![2, 4],
            d_inner: vec![24, 40],
            cutoffs: vec![20, 40, 60],
            tie_weight: true,
            tie_projs: vec![false, true, true],
            tgt_len: 12,
            dropout: 0.1,
            dropatt: 0.0,
            weight_init_std: 0.02,
            proj_init_std: 0.01,
            ppl: None,
            params: None,
        }
    }

    /// The tiny decoder of [`tiny_record`].
    fn tiny(div_val: usize, d_embed: usize) -> Config {
        Config::from_record(&tiny_record(div_val, d_embed)).unwrap()
    }

    fn batch(rows: usize, cols: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let ids: Vec<u32> = (0..rows * (cols + 1))
            .map(|_| rng.range(0, 60) as u32)
            .collect();
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        for r in ids.chunks_exact(cols + 1) {
            inputs.extend_from_slice(&r[..cols]);
            targets.extend_from_slice(&r[1..]);
        }
        (inputs, targets)
    }

    fn grad_norms(model: &Gpt2Flex, loss: &Tensor) -> Vec<(String, f32)> {
        let grads = loss.backward().unwrap();
        model
            .network()
            .params
            .vars()
            .iter()
            .map(|(name, var)| {
                let norm = crate::nn::squared_grad(&grads, var.as_tensor());
                (name.clone(), norm)
            })
            .collect()
    }

    /// Every trainable tensor receives a non-zero gradient from the NLL, except the
    /// `c_attn` bias's key slice (softmax shift invariance; checked separately) — the bias as a
    /// whole still gets gradient through q and v. Guards against ops without backward.
    #[test]
    fn parameter_count_from_shapes_equals_the_built_model() {
        for (k, e) in [(1, 16), (1, 8), (2, 16), (4, 16)] {
            for (tie_weight, tie_projs) in [(true, [false, true, true]), (false, [true; 3])] {
                let config = Config::from_record(&Record {
                    tie_weight,
                    tie_projs: tie_projs.to_vec(),
                    ..tiny_record(k, e)
                })
                .unwrap();
                let built = Gpt2Flex::shapes_only(&config)
                    .unwrap()
                    .network()
                    .params
                    .count();
                assert_eq!(config.parameter_count(), built as f64, "k {k} e {e}");
            }
        }
        let config = tiny(2, 16);
        assert!(config.activation_floats_per_token(1, 12) > 20.0 * 16.0 * 2.0);
    }

    /// The estimate a search weighs against its memory budget is the probe's exact count of
    /// input values, for both layouts of the head and a batch of other shapes.
    #[test]
    fn input_floats_from_shapes_count_the_probe_inputs() {
        for (k, e, rows, tokens) in [(1, 16, 3, 10), (2, 16, 2, 7), (1, 8, 1, 12)] {
            let record = tiny_record(k, e);
            let config = Config::from_record(&record).unwrap();
            let opts = ProbeOptions {
                batch: rows,
                seq_len: tokens,
                ..FAMILY.probe_options()
            };
            let ids = Batch::synthetic_zipf(rows, tokens + 1, 60, 4).unwrap();
            let probe = FAMILY.probe(&Arch::new(record), 0, &opts, &ids).unwrap();
            assert_eq!(
                config.input_floats(rows, tokens),
                probe.input_values() as f64,
                "k {k} e {e}, {rows} × {tokens}"
            );
            let size = FAMILY.size(&Arch::new(tiny_record(k, e)), &opts).unwrap();
            assert_eq!(size.input_floats, Some(probe.input_values() as f64));
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        for (k, e) in [(1, 16), (1, 8), (2, 16), (4, 16)] {
            let config = tiny(k, e);
            let model = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
            let (x, y) = batch(3, 10, 1);
            let fwd = model
                .forward(&x, &y, (3, 10), Some(&mut Rng::new(2)))
                .unwrap();
            let missing: Vec<String> = grad_norms(&model, &fwd.loss)
                .into_iter()
                .filter(|(_, n)| n.is_nan() || *n <= 0.0)
                .map(|(name, _)| name)
                .collect();
            assert!(
                missing.is_empty(),
                "k={k} E={e}: no gradient reached {missing:?}"
            );
        }
    }

    /// Without table gradients the embedding and softmax parameters get none, and every
    /// other parameter the same gradient, bit for bit, with the same loss.
    #[test]
    fn without_table_gradients_only_the_tables_lose_theirs() {
        for (k, e) in [(1, 16), (1, 8), (2, 16), (4, 16)] {
            let config = tiny(k, e);
            let full = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
            let lean = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu)
                .unwrap()
                .without_table_gradients();
            let (x, y) = batch(3, 10, 1);
            let pass = |m: &Gpt2Flex| {
                let loss = m.forward(&x, &y, (3, 10), None).unwrap().loss;
                (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
            };
            let ((loss_full, g_full), (loss_lean, g_lean)) = (pass(&full), pass(&lean));
            assert_eq!(loss_full.to_bits(), loss_lean.to_bits(), "k={k} E={e}");
            let vars = full.network().params.vars().iter();
            let lean_vars = lean.network().params.vars().iter();
            let mut tables = 0;
            for ((name, v_full), (_, v_lean)) in vars.zip(lean_vars) {
                let got = g_lean.get(v_lean.as_tensor());
                if name.starts_with("word_emb.") || name.starts_with("crit.") {
                    tables += 1;
                    assert!(got.is_none(), "k={k} E={e}: {name} got a gradient");
                    continue;
                }
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v.into_iter().map(f32::to_bits).collect()
                };
                let want = g_full.get(v_full.as_tensor()).expect("full gradient");
                let got = got.unwrap_or_else(|| panic!("k={k} E={e}: {name} lost its gradient"));
                assert_eq!(bits(want), bits(got), "k={k} E={e}: {name}");
            }
            assert!(tables >= 3, "k={k} E={e}: only {tables} table parameters");
        }
    }

    /// GPT-2's pass by blocks gets the head's input gradient from its forward (the gradient
    /// it expects each row's log-sum-exp to get, 1/N, is the one that comes): the head's
    /// logits are computed once; the whole pass, which expects none, computes them again in
    /// its backward. Both give the gradients of the composed ops (a model with table
    /// gradients keeps those).
    #[test]
    fn the_pass_by_blocks_computes_the_head_logits_once() {
        use crate::nn::ops::logsumexp_recomputed;
        let config = tiny(2, 16);
        let build = || Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
        let (full, lean) = (build(), build().without_table_gradients());
        let (x, y) = batch(3, 10, 1);
        let before = logsumexp_recomputed();
        let by_blocks = lean
            .forward_backward_by_blocks(&x, &y, (3, 10), false)
            .unwrap();
        assert_eq!(
            logsumexp_recomputed(),
            before,
            "the pass by blocks recomputed"
        );
        let loss = full.forward(&x, &y, (3, 10), None).unwrap().loss;
        assert_eq!(
            by_blocks.loss.to_bits(),
            loss.to_scalar::<f32>().unwrap().to_bits()
        );
        let composed = loss.backward().unwrap();
        let whole = lean
            .forward(&x, &y, (3, 10), None)
            .unwrap()
            .loss
            .backward()
            .unwrap();
        assert_eq!(
            logsumexp_recomputed(),
            before + 1,
            "the whole pass did not recompute"
        );
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        for ((lin_full, lin_lean), what) in full.linears().iter().zip(lean.linears()).zip(0..) {
            let want = bits(composed.get(lin_full.weight.as_tensor()).unwrap());
            let w = lin_lean.weight.as_tensor();
            assert_eq!(
                bits(by_blocks.grads.get(w).unwrap()),
                want,
                "linear {what}, by blocks"
            );
            assert_eq!(bits(whole.get(w).unwrap()), want, "linear {what}, whole");
        }
    }

    #[test]
    fn key_bias_gets_no_gradient() {
        let config = tiny(2, 16);
        let model = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
        let (x, y) = batch(2, 8, 4);
        let fwd = model.forward(&x, &y, (2, 8), None).unwrap();
        let grads = fwd.loss.backward().unwrap();
        let conv = model.linears()[0];
        let g = grads.get(conv.bias.as_ref().unwrap().as_tensor()).unwrap();
        let d = config.record().d_model;
        let key = g.narrow(0, d, d).unwrap().abs().unwrap().max(0).unwrap();
        let query = g.narrow(0, 0, d).unwrap().abs().unwrap().max(0).unwrap();
        let key = key.to_scalar::<f32>().unwrap();
        let query = query.to_scalar::<f32>().unwrap();
        assert!(
            key < 1e-6 * query.max(1e-30) || key < 1e-12,
            "key {key} query {query}"
        );
    }

    /// Shapes of the captures, and the shape-only model has the same parameter count.
    #[test]
    fn captures_and_shapes() {
        let config = tiny(2, 16);
        let model = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
        let (x, y) = batch(2, 7, 5);
        let fwd = model.forward(&x, &y, (2, 7), None).unwrap();
        let dims: Vec<Vec<usize>> = fwd.conv_outputs.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            vec![
                vec![2, 7, 48],
                vec![2, 7, 16],
                vec![2, 7, 24],
                vec![2, 7, 16],
                vec![2, 7, 48],
                vec![2, 7, 16],
                vec![2, 7, 40],
                vec![2, 7, 16]
            ]
        );
        assert_eq!(fwd.attention[0].dims(), &[2, 2, 7, 7]);
        assert_eq!(fwd.attention[1].dims(), &[2, 4, 7, 7]);
        let w: Vec<Vec<usize>> = model
            .linears()
            .iter()
            .map(|c| c.weight.dims().to_vec())
            .collect();
        assert_eq!(w[0], vec![16, 48]);
        assert_eq!(w[3], vec![24, 16]);
        assert_eq!(
            Gpt2Flex::shapes_only(&config)
                .unwrap()
                .network()
                .params
                .count(),
            model.network().params.count()
        );
    }

    #[test]
    fn causal_attention_rows_are_causal_distributions() {
        let config = tiny(1, 16);
        let model = Gpt2Flex::new(&config, &mut Rng::new(8), &Device::Cpu).unwrap();
        let (x, y) = batch(1, 6, 6);
        let fwd = model.forward(&x, &y, (1, 6), None).unwrap();
        let p: Vec<f32> = fwd.attention[1].flatten_all().unwrap().to_vec1().unwrap();
        for (r, row) in p.chunks_exact(6).enumerate() {
            let i = r % 6;
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "{row:?}");
            assert!(row[i + 1..].iter().all(|&v| v == 0.0), "{row:?}");
        }
    }

    #[test]
    fn clusters_and_widths() {
        let c = tiny(4, 16);
        assert_eq!(c.cluster_of(0), 0);
        assert_eq!(c.cluster_of(19), 0);
        assert_eq!(c.cluster_of(20), 1);
        assert_eq!(c.cluster_of(59), 2);
        assert_eq!(
            (0..3).map(|i| c.cluster_width(i)).collect::<Vec<_>>(),
            vec![16, 4, 1]
        );
        assert_eq!(tiny(1, 8).cluster_width(2), 8);
    }
}
