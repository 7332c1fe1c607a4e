//! GPT-2 Flex: the decoder of the GPT-2 benchmark (archai's `HfGPT2Flex`, spec §5.2).
//!
//! GPT-2 with per-layer head counts and MLP widths, pre-LN blocks, causal attention, an
//! adaptive input embedding and a projected adaptive log-softmax whose tables (and tail
//! projections) are tied to the embedding's. The forward pass returns the mean next-token
//! negative log-likelihood and what a probe records.
//!
//! Layout: every "Conv1D" weight is stored as GPT-2 does, **in × out** (`y = x W + b`), not
//! PyTorch's `Linear` out × in. Proxies rely on it: `head_importance` filters on
//! `weight.shape[0]` (the input width, the reference's quirk) and the `lpzero_gpt2` genotype
//! takes a softmax over axis 0 (the input axis).
//!
//! Four operations are custom candle ops with their own backward (checked against finite
//! differences in the tests), to keep memory and time down on the 16 × 192-token probe:
//! LayerNorm, `gelu_new`, the scaled causal softmax of the attention (masked scores are
//! *replaced* by −10⁴ in the reference, which gives them probability exactly 0 in f32; here they
//! get 0 directly and no gradient) and the row-wise log-sum-exp of the output logits (the loss is
//! `lse(logits) − logit[target]`, so the vocabulary-wide log-softmax is never materialised).
//! Composed from candle primitives they kept 3–6 intermediate tensors each alive for the
//! backward pass and spent most of the probe outside matrix multiplication.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor, Var,
};

use super::{dropout, LinearRole, Params, TapSite, Taps};
use crate::bench::gpt2::{clean_cutoffs, Record};
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

/// Global constants and per-layer shapes of one decoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// Vocabulary size V.
    pub n_token: usize,
    /// Hidden size D.
    pub d_model: usize,
    /// Embedding width E.
    pub d_embed: usize,
    /// Adaptive divisor k.
    pub div_val: usize,
    /// Heads per layer.
    pub n_head: Vec<usize>,
    /// MLP width per layer.
    pub d_inner: Vec<usize>,
    /// Cleaned cutoffs: the end of each cluster, the last one `n_token`.
    pub cutoffs: Vec<usize>,
    /// Output tables tied to the embedding tables.
    pub tie_weight: bool,
    /// Per cluster (same length as `cutoffs`): output projection tied to the embedding's.
    pub tie_projs: Vec<bool>,
    /// Size of the position table (the benchmark's `tgt_len`).
    pub n_positions: usize,
    /// Residual dropout probability when dropout is on.
    pub dropout: f64,
    /// Standard deviation of Conv1D weights, tables, `wpe` and the cluster weight.
    pub init_std: f64,
    /// Standard deviation of the projections.
    pub proj_init_std: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Config {
    /// The decoder of a benchmark record (cutoffs cleaned, `tie_projs` truncated to the number
    /// of clusters).
    pub fn from_record(record: &Record) -> anyhow::Result<Self> {
        let cutoffs = clean_cutoffs(&record.cutoffs, record.n_token);
        let config = Self {
            n_token: record.n_token,
            d_model: record.d_model,
            d_embed: record.d_embed,
            div_val: record.div_val,
            n_head: record.n_head.clone(),
            d_inner: record.d_inner.clone(),
            tie_projs: record
                .tie_projs
                .iter()
                .copied()
                .take(cutoffs.len())
                .collect(),
            cutoffs,
            tie_weight: record.tie_weight,
            n_positions: record.tgt_len,
            dropout: record.dropout,
            init_std: record.weight_init_std,
            proj_init_std: record.proj_init_std,
            layer_norm_eps: 1e-5,
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", record.key))?;
        Ok(config)
    }

    /// Checks that the shapes are consistent (heads divide D, cluster widths are whole, ...).
    pub fn validate(&self) -> Result<(), String> {
        let n = self.n_layer();
        if n == 0 || self.d_inner.len() != n {
            return Err(format!(
                "expected as many d_inner entries as layers (≥ 1), found {} heads and {} widths",
                n,
                self.d_inner.len()
            ));
        }
        if let Some(l) =
            (0..n).find(|&l| self.n_head[l] == 0 || !self.d_model.is_multiple_of(self.n_head[l]))
        {
            return Err(format!(
                "layer {l}: {} heads do not divide d_model = {}",
                self.n_head[l], self.d_model
            ));
        }
        if self.d_inner.contains(&0) || self.d_model == 0 || self.n_positions == 0 {
            return Err("sizes must be positive".into());
        }
        if self.cutoffs.is_empty()
            || self.cutoffs[0] == 0
            || *self.cutoffs.last().unwrap() != self.n_token
            || self.cutoffs.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!(
                "cutoffs {:?} must increase strictly and end at n_token = {}",
                self.cutoffs, self.n_token
            ));
        }
        if self.tie_projs.len() != self.cutoffs.len() {
            return Err(format!(
                "tie_projs needs one entry per cluster ({}), found {}",
                self.cutoffs.len(),
                self.tie_projs.len()
            ));
        }
        if self.div_val == 0 {
            return Err("div_val must be positive".into());
        }
        for i in 0..self.n_clusters() {
            let divisor = self.div_val.pow(i as u32);
            if self.div_val > 1 && (!self.d_embed.is_multiple_of(divisor) || self.d_embed < divisor)
            {
                return Err(format!(
                    "d_embed = {} is not divisible by div_val^{i} = {divisor}",
                    self.d_embed
                ));
            }
        }
        Ok(())
    }

    /// Number of decoder layers L.
    pub fn n_layer(&self) -> usize {
        self.n_head.len()
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
        if self.div_val == 1 {
            self.d_embed
        } else {
            self.d_embed / self.div_val.pow(i as u32)
        }
    }

    /// The cluster holding token `id`.
    pub fn cluster_of(&self, id: usize) -> usize {
        self.cutoffs.partition_point(|&end| end <= id)
    }

    /// The number of trainable parameters of the decoder (tied tensors once), from the shapes
    /// alone (equal to the count of a built model; no tensor is allocated, so it is safe on
    /// absurd sizes). An `f64` so that it never overflows. Expects a validated config.
    pub fn parameter_count(&self) -> f64 {
        let (d, e) = (self.d_model as f64, self.d_embed as f64);
        let k = self.div_val;
        let clusters = self.n_clusters();
        let tables: Vec<(f64, f64)> = if k == 1 {
            vec![(self.n_token as f64, e)]
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
        let mut n = table_sum + emb_projs + self.n_positions as f64 * d;
        for &inner in &self.d_inner {
            let inner = inner as f64;
            n += 4.0 * d + (d * 3.0 * d + 3.0 * d) + (d * d + d) + 2.0 * (d * inner) + inner + d;
        }
        n += 2.0 * d;
        if clusters > 1 {
            n += (clusters - 1) as f64 * (e + 1.0);
        }
        if !self.tie_weight {
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
    /// `seq_len` tokens per row: per block 20 × D, 5 × the MLP width and 4 × the attention row
    /// of every head (T values), plus 4 × the head cluster's logits (shortlist and one per
    /// tail cluster). Calibrated on measured peaks (4–16 rows of 192 tokens); meant to reject
    /// what cannot fit, not to predict exactly.
    pub fn activation_floats_per_token(&self, seq_len: usize) -> f64 {
        let (d, t) = (self.d_model as f64, seq_len as f64);
        let blocks: f64 = self
            .n_head
            .iter()
            .zip(&self.d_inner)
            .map(|(&h, &inner)| 20.0 * d + 5.0 * inner as f64 + 4.0 * h as f64 * t)
            .sum();
        let head_logits = (self.cutoffs[0] + self.n_clusters() - 1) as f64;
        blocks + 4.0 * head_logits
    }
}

/// A GPT-2 "Conv1D": `y = x W + b` with `W` stored in × out.
pub struct Conv1D {
    /// Module name, e.g. `h.2.attn.c_attn`.
    pub name: String,
    /// Block index.
    pub layer: usize,
    /// What the layer does.
    pub role: LinearRole,
    /// Weight, in × out.
    pub weight: Var,
    /// Bias, out.
    pub bias: Var,
}

/// Weight stream, device and registry used while building one model.
struct Builder<'a> {
    params: Params,
    rng: &'a mut Rng,
    device: &'a Device,
}

impl Builder<'_> {
    fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> candle_core::Result<Var> {
        self.params.normal(name, shape, std, self.rng, self.device)
    }

    fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> candle_core::Result<Var> {
        self.params.constant(name, shape, value, self.device)
    }

    fn conv1d(
        &mut self,
        name: String,
        layer: usize,
        role: LinearRole,
        (in_dim, out_dim): (usize, usize),
        std: f64,
    ) -> candle_core::Result<Conv1D> {
        let weight = self.normal(&format!("{name}.weight"), &[in_dim, out_dim], std)?;
        let bias = self.constant(&format!("{name}.bias"), &[out_dim], 0.0)?;
        Ok(Conv1D {
            name,
            layer,
            role,
            weight,
            bias,
        })
    }

    fn layer_norm(&mut self, name: &str, dim: usize) -> candle_core::Result<(Var, Var)> {
        self.params
            .layer_norm_pair(name, ("weight", "bias"), dim, self.device)
    }
}

impl Conv1D {
    /// Input width (`weight.shape[0]`).
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width (`weight.shape[1]`).
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Where a tap on this layer's output sits.
    pub fn tap_site(&self) -> TapSite {
        TapSite::Linear {
            role: self.role,
            in_dim: self.in_dim(),
            out_dim: self.out_dim(),
        }
    }

    /// Applies the layer over the last axis of `x` (any leading shape).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x
            .reshape((rows, self.in_dim()))?
            .matmul(self.weight.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?;
        *dims.last_mut().expect("Conv1D input has at least one axis") = self.out_dim();
        y.reshape(dims)
    }
}

struct Block {
    heads: usize,
    ln_1: (Var, Var),
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: (Var, Var),
    c_fc: Conv1D,
    mlp_proj: Conv1D,
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
    ln_f: (Var, Var),
    /// `(n_clusters − 1) × E` weight and bias of the tail-cluster logits in the head.
    cluster: Option<(Var, Var)>,
    /// Output tables of their own (only when `tie_weight` is false), laid out as `emb_tables`.
    out_tables: Vec<Var>,
    /// Output biases: one V vector (k = 1) or one per cluster.
    out_biases: Vec<Var>,
    /// Per cluster, an output projection of its own (untied clusters that need one).
    out_projs: Vec<Option<Var>>,
    taps: Taps,
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

impl Gpt2Flex {
    /// Builds the decoder with weights drawn from `rng` (spec §5.2 initialisation).
    pub fn new(config: &Config, rng: &mut Rng, device: &Device) -> candle_core::Result<Self> {
        Self::with_params(config, Params::default(), rng, device)
    }

    /// Builds the decoder with every tensor zero: the real shapes without the cost of drawing
    /// weights (for parameter counts).
    pub fn shapes_only(config: &Config) -> candle_core::Result<Self> {
        super::build_shapes_only(|params, rng, device| {
            Self::with_params(config, params, rng, device)
        })
    }

    fn with_params(
        config: &Config,
        params: Params,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let c = config;
        let (d, e, k) = (c.d_model, c.d_embed, c.div_val);
        let n_layer = c.n_layer();
        let mut b = Builder {
            params,
            rng,
            device,
        };
        // Tables per cluster (k > 1) or one table (k = 1); their shapes.
        let table_shapes: Vec<(usize, usize)> = if k == 1 {
            vec![(c.n_token, e)]
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
        let tables = |b: &mut Builder, name: &str| -> candle_core::Result<Vec<Var>> {
            table_shapes
                .iter()
                .enumerate()
                .map(|(i, &(rows, width))| {
                    b.normal(&format!("{name}{}", suffix(i)), &[rows, width], c.init_std)
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
                    c.proj_init_std,
                )?)
            } else {
                None
            });
        }
        let wpe = b.normal("wpe", &[c.n_positions, d], c.init_std)?;

        // Both c_proj weights are drawn with the GPT-2 residual scaling 0.02/√(2L).
        let proj_std = c.init_std / ((2 * n_layer) as f64).sqrt();
        let mut blocks = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            b.params.set_group(GROUP_LAYER_NORM);
            let ln_1 = b.layer_norm(&format!("h.{l}.ln_1"), d)?;
            b.params.set_group(GROUP_ATTN);
            let c_attn = b.conv1d(
                format!("h.{l}.attn.c_attn"),
                l,
                LinearRole::AttnQkv,
                (d, 3 * d),
                c.init_std,
            )?;
            let attn_proj = b.conv1d(
                format!("h.{l}.attn.c_proj"),
                l,
                LinearRole::AttnProj,
                (d, d),
                proj_std,
            )?;
            b.params.set_group(GROUP_LAYER_NORM);
            let ln_2 = b.layer_norm(&format!("h.{l}.ln_2"), d)?;
            b.params.set_group(GROUP_FFN);
            let c_fc = b.conv1d(
                format!("h.{l}.mlp.c_fc"),
                l,
                LinearRole::MlpFc,
                (d, c.d_inner[l]),
                c.init_std,
            )?;
            let mlp_proj = b.conv1d(
                format!("h.{l}.mlp.c_proj"),
                l,
                LinearRole::MlpProj,
                (c.d_inner[l], d),
                proj_std,
            )?;
            blocks.push(Block {
                heads: c.n_head[l],
                ln_1,
                c_attn,
                attn_proj,
                ln_2,
                c_fc,
                mlp_proj,
            });
        }
        b.params.set_group(GROUP_LAYER_NORM);
        let ln_f = b.layer_norm("ln_f", d)?;

        b.params.set_group(GROUP_ADA_SOFTMAX);
        let cluster = if c.n_clusters() > 1 {
            Some((
                b.normal("crit.cluster_weight", &[c.n_clusters() - 1, e], c.init_std)?,
                b.constant("crit.cluster_bias", &[c.n_clusters() - 1], 0.0)?,
            ))
        } else {
            None
        };
        let out_tables = if c.tie_weight {
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
                Some(b.normal(&format!("crit.out_proj.{i}"), &[d, width], c.proj_init_std)?)
            } else {
                None
            });
        }
        Ok(Self {
            config: config.clone(),
            params: b.params,
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
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every trainable tensor (tied tensors once).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Gradient taps on every Conv1D output and on the scaled word embeddings (off by
    /// default).
    pub fn taps(&self) -> &Taps {
        &self.taps
    }

    /// `conv` applied to `x`, through a tap.
    fn conv(&self, conv: &Conv1D, x: &Tensor) -> candle_core::Result<Tensor> {
        self.taps.tap(conv.tap_site(), conv.forward(x)?)
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

    /// The 4L Conv1D layers in module order (per block: `c_attn`, attention `c_proj`, `c_fc`,
    /// MLP `c_proj`).
    pub fn conv1ds(&self) -> Vec<&Conv1D> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj])
            .collect()
    }

    /// Parameter counts by group, counted from the tensors: [`GROUP_ADA_EMB`], [`GROUP_ATTN`],
    /// [`GROUP_FFN`], [`GROUP_LAYER_NORM`], [`GROUP_ADA_SOFTMAX`] (groups without tensors are
    /// absent).
    pub fn param_groups(&self) -> Vec<(&'static str, usize)> {
        self.params.count_by_group()
    }

    /// Output projection of cluster `i` (`D × e_i`, used as `z · Q`), or `None` when the
    /// cluster has none (k = 1 with E = D).
    fn out_proj(&self, i: usize) -> Option<&Var> {
        if self.config.tie_projs[i] {
            let j = if self.config.div_val == 1 { 0 } else { i };
            self.emb_projs[j].as_ref()
        } else {
            self.out_projs[i].as_ref()
        }
    }

    /// Output table rows of cluster `i` (`size_i × e_i`).
    fn out_weight(&self, i: usize) -> candle_core::Result<Tensor> {
        let tables = if self.config.tie_weight {
            &self.emb_tables
        } else {
            &self.out_tables
        };
        if self.config.div_val == 1 {
            let (lo, hi) = self.config.cluster_range(i);
            tables[0].as_tensor().narrow(0, lo, hi - lo)
        } else {
            Ok(tables[i].as_tensor().clone())
        }
    }

    /// Output bias of cluster `i` (`size_i`).
    fn out_bias(&self, i: usize) -> candle_core::Result<Tensor> {
        if self.config.div_val == 1 {
            let (lo, hi) = self.config.cluster_range(i);
            self.out_biases[0].as_tensor().narrow(0, lo, hi - lo)
        } else {
            Ok(self.out_biases[i].as_tensor().clone())
        }
    }

    /// Head weight `[table_0 ; cluster_weight]` and bias `[b_0 ; cluster_bias]`.
    fn head_weight(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let (w0, b0) = (self.out_weight(0)?, self.out_bias(0)?);
        match &self.cluster {
            Some((cw, cb)) => Ok((
                Tensor::cat(&[&w0, cw.as_tensor()], 0)?,
                Tensor::cat(&[&b0, cb.as_tensor()], 0)?,
            )),
            None => Ok((w0, b0)),
        }
    }

    /// `z` (N × D) through the output projection of cluster `i`.
    fn project_out(&self, z: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        match self.out_proj(i) {
            Some(q) => z.matmul(q.as_tensor()),
            None => Ok(z.clone()),
        }
    }

    /// Adaptive input embedding of `ids`, times √D: N × D.
    fn embed(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let n = ids.len();
        let emb = if c.div_val == 1 {
            let idx = Tensor::from_slice(ids, n, device)?;
            let rows = self.emb_tables[0].as_tensor().index_select(&idx, 0)?;
            match &self.emb_projs[0] {
                Some(p) => rows.matmul(&p.as_tensor().t()?)?,
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
                let rows = self.emb_tables[i].as_tensor().index_select(&idx, 0)?;
                let proj = self.emb_projs[i]
                    .as_ref()
                    .expect("every cluster has a projection when div_val > 1");
                parts.push(rows.matmul(&proj.as_tensor().t()?)?);
                order.extend(positions);
            }
            let stacked = Tensor::cat(&parts, 0)?;
            let mut inverse = vec![0u32; n];
            for (row, &p) in order.iter().enumerate() {
                inverse[p] = row as u32;
            }
            stacked.index_select(&Tensor::from_vec(inverse, n, device)?, 0)?
        };
        emb.affine((c.d_model as f64).sqrt(), 0.0)
    }

    /// Sum over rows of the adaptive-softmax NLL of `targets` given final hidden states `z`
    /// (N × D): `Σ_n lse(head_n) − head_n[c_n]` plus, for tail targets,
    /// `lse(tail_n) − tail_n[y_n − start]`, where `c_n` is the target (shortlist) or its
    /// cluster's column `shortlist + i − 1`.
    fn nll_sum(&self, z: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let device = z.device();
        let shortlist = c.cutoffs[0];
        let (w_head, b_head) = self.head_weight()?;
        let hp = self.project_out(z, 0)?;
        let logits = hp.matmul(&w_head.t()?)?.broadcast_add(&b_head)?;
        let columns: Vec<u32> = targets
            .iter()
            .map(|&y| match c.cluster_of(y as usize) {
                0 => y,
                i => (shortlist + i - 1) as u32,
            })
            .collect();
        let mut total = (logsumexp_rows(&logits)?.sum_all()?
            - picked_logits(&hp, &w_head, &b_head, columns, device)?.sum_all()?)?;
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
            let li = pi.matmul(&wi.t()?)?.broadcast_add(&bi)?;
            total = (total + logsumexp_rows(&li)?.sum_all()?)?;
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
        if inputs.len() != n || targets.len() != n || n == 0 {
            return Err(candle_core::Error::Msg(format!(
                "expected {rows} × {cols} inputs and targets, got {} and {}",
                inputs.len(),
                targets.len()
            )));
        }
        if let Some(&bad) = inputs
            .iter()
            .chain(targets)
            .find(|&&t| t as usize >= c.n_token)
        {
            return Err(candle_core::Error::Msg(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.n_token
            )));
        }
        let emb = self
            .embed(inputs, &device)?
            .reshape((rows, cols, c.d_model))?;
        let Decoded {
            hidden,
            conv_outputs,
            attention,
        } = self.decode(emb, dropout_rng)?;
        let z = hidden.reshape((n, c.d_model))?;
        let loss = self.nll_sum(&z, targets)?.affine(1.0 / n as f64, 0.0)?;
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
        let c = &self.config;
        let (_, cols, _) = emb.dims3()?;
        if cols > c.n_positions {
            return Err(candle_core::Error::Msg(format!(
                "sequence length {cols} exceeds the {} positions of the model",
                c.n_positions
            )));
        }
        let p = c.dropout;
        let emb = self.taps.tap(TapSite::Embedding, emb)?;
        let pos = self.wpe.as_tensor().narrow(0, 0, cols)?;
        let mut h = emb.broadcast_add(&pos)?;
        let mut conv_outputs = Vec::with_capacity(4 * self.blocks.len());
        let mut attention = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let u = layer_norm(&h, &block.ln_1, c.layer_norm_eps)?;
            let qkv = self.conv(&block.c_attn, &u)?;
            let (ctx, probs) = causal_attention(&qkv, block.heads)?;
            let a = self.conv(&block.attn_proj, &ctx)?;
            conv_outputs.push(qkv.detach());
            attention.push(probs.detach());
            conv_outputs.push(a.detach());
            h = (h + dropout(&a, p, dropout_rng.as_deref_mut())?)?;
            let m = layer_norm(&h, &block.ln_2, c.layer_norm_eps)?;
            let f = self.conv(&block.c_fc, &m)?;
            let o = self.conv(&block.mlp_proj, &gelu_new(&f)?)?;
            conv_outputs.push(f.detach());
            conv_outputs.push(o.detach());
            h = (h + dropout(&o, p, dropout_rng.as_deref_mut())?)?;
        }
        let hidden = layer_norm(&h, &self.ln_f, c.layer_norm_eps)?;
        Ok(Decoded {
            hidden,
            conv_outputs,
            attention,
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

/// Multi-head causal self-attention on the fused q|k|v output (B × T × 3D): the merged
/// context (B × T × D) and the probabilities (B × h × T × T).
fn causal_attention(qkv: &Tensor, heads: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, t, w3) = qkv.dims3()?;
    let d = w3 / 3;
    let dh = d / heads;
    // One copy: B × T × (3 · h · dh) → 3 × B × h × T × dh.
    let heads_first = qkv
        .reshape((b, t, 3, heads, dh))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let part = |i: usize| heads_first.get(i);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let scores = q.matmul(&k.t()?)?.contiguous()?;
    let probs = scores.apply_op1(CausalSoftmax {
        scale: 1.0 / (dh as f32).sqrt(),
    })?;
    let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
    Ok((ctx, probs))
}

/// Row-wise log-sum-exp of an N × C matrix: N values.
fn logsumexp_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(LogSumExpRows)
}

fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => Err(candle_core::Error::Msg(format!(
            "{op}: expects a contiguous input"
        ))),
        _ => Err(candle_core::Error::Msg(format!("{op}: expects f32"))),
    }
}

/// The f32 data of each of a custom op's inputs `(storage, layout)`, in order; fails (naming
/// `op`) on the first one that is not contiguous f32.
fn f32_inputs<'a, const N: usize>(
    op: &'static str,
    inputs: [(&'a CpuStorage, &Layout); N],
) -> candle_core::Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (slot, (s, l)) in out.iter_mut().zip(inputs) {
        *slot = contiguous_f32(s, l, op)?;
    }
    Ok(out)
}

/// Contiguous versions of the tensors a backward pass hands to its gradient op (the op reads
/// them with [`contiguous_f32`]).
fn contiguous_all<const N: usize>(ts: [&Tensor; N]) -> candle_core::Result<[Tensor; N]> {
    let mut out = ts.map(Tensor::clone);
    for t in &mut out {
        *t = t.contiguous()?;
    }
    Ok(out)
}

/// LayerNorm over the last axis of `x` (biased variance, `eps` inside the square root) with
/// the `(γ, β)` pair, as one custom op.
fn layer_norm(x: &Tensor, (gamma, beta): &(Var, Var), eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(gamma.as_tensor(), beta.as_tensor(), LayerNorm { eps })
}

/// `gelu_new` (GPT-2's tanh approximation) `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GeluNew)
}

/// The values of a tensor as a row-major vector.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
    /// Mean and 1/σ of one row, accumulated in f64.
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32)
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, gamma, beta] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let d = gamma.len();
        if d == 0 || beta.len() != d || l1.dims().last() != Some(&d) {
            return Err(candle_core::Error::Msg(format!(
                "layer-norm: input {:?} does not end with the width of γ/β ({d})",
                l1.dims()
            )));
        }
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let (mean, rstd) = self.moments(row);
            for j in 0..d {
                o[j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xs, gs, gamma_v) = (values(x)?, values(grad)?, values(gamma)?);
        let d = gamma_v.len();
        let mut dx = vec![0f32; xs.len()];
        let mut dgamma = vec![0f64; d];
        let mut dbeta = vec![0f64; d];
        let mut xhat = vec![0f32; d];
        let mut gg = vec![0f32; d];
        for ((row, g), out) in xs
            .chunks_exact(d)
            .zip(gs.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let (mean, rstd) = self.moments(row);
            let (mut a, mut b) = (0f64, 0f64);
            for j in 0..d {
                xhat[j] = (row[j] - mean) * rstd;
                gg[j] = g[j] * gamma_v[j];
                a += gg[j] as f64;
                b += (gg[j] * xhat[j]) as f64;
                dgamma[j] += (g[j] * xhat[j]) as f64;
                dbeta[j] += g[j] as f64;
            }
            let (a, b) = ((a / d as f64) as f32, (b / d as f64) as f32);
            for j in 0..d {
                out[j] = rstd * (gg[j] - a - xhat[j] * b);
            }
        }
        let device = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), device)?),
            Some(Tensor::from_vec(to_f32(dgamma), d, device)?),
            Some(Tensor::from_vec(to_f32(dbeta), d, device)?),
        ))
    }
}

/// √(2/π), the `gelu_new` constant.
const GELU_K: f32 = 0.797_884_6;
/// The cubic coefficient of `gelu_new`.
const GELU_C: f32 = 0.044_715;

/// `tanh(u)` as `1 − 2/(e^{2u} + 1)` (faster than `f32::tanh`, exact to f32 rounding; saturates
/// cleanly at ±1).
fn fast_tanh(u: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * u).exp() + 1.0)
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let out = x
            .iter()
            .map(|&v| 0.5 * v * (1.0 + fast_tanh(GELU_K * (v + GELU_C * v * v * v))))
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, ys, gs) = (values(x)?, values(res)?, values(grad)?);
        let dx: Vec<f32> = xs
            .iter()
            .zip(&ys)
            .zip(&gs)
            .map(|((&v, &y), &g)| {
                // The forward's tanh, recovered from y = ½x(1 + t) away from x = 0.
                let t = if v.abs() > 1e-2 {
                    2.0 * y / v - 1.0
                } else {
                    fast_tanh(GELU_K * (v + GELU_C * v * v * v))
                };
                let slope = 0.5 * (1.0 + t)
                    + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * v * v);
                g * slope
            })
            .collect();
        Ok(Some(Tensor::from_vec(dx, x.dims(), x.device())?))
    }
}

/// Softmax over the last axis of `scale ·` (`… × T × T` scores) where entry `[i, j]` with
/// `j > i` is masked: probability exactly 0 and no gradient (the reference replaces those
/// scores by −10⁴, whose exponential underflows to 0 in f32).
struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dims = l.dims();
        let t = *dims.last().unwrap_or(&0);
        if dims.len() < 2 || dims[dims.len() - 2] != t {
            return Err(candle_core::Error::Msg(format!(
                "causal-softmax: expects … × T × T scores, got {dims:?}"
            )));
        }
        let mut out = vec![0f32; x.len()];
        for (r, (row, o)) in x.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
            let i = r % t;
            let window = &row[..=i];
            let max = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (oj, &xj) in o[..=i].iter_mut().zip(window) {
                *oj = ((xj - max) * self.scale).exp();
                sum += *oj;
            }
            let inv = 1.0 / sum;
            for oj in &mut o[..=i] {
                *oj *= inv;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let [res, grad] = contiguous_all([res, grad])?;
        Ok(Some(res.apply_op2_no_bwd(
            &grad,
            &SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// Backward of `softmax(scale · x)` over the last axis: `scale · p ⊙ (g − Σ_j g_j p_j)`.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [p, g] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let t = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; p.len()];
        for ((pr, gr), o) in p
            .chunks_exact(t)
            .zip(g.chunks_exact(t))
            .zip(out.chunks_exact_mut(t))
        {
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((oj, &pj), &gj) in o.iter_mut().zip(pr).zip(gr) {
                *oj = self.scale * pj * (gj - dot);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Row-wise log-sum-exp of an N × C matrix (max-shifted, sum accumulated in f64).
struct LogSumExpRows;

impl CustomOp1 for LogSumExpRows {
    fn name(&self) -> &'static str {
        "logsumexp-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (n, cols) = l.shape().dims2()?;
        let mut out = Vec::with_capacity(n);
        for row in x.chunks_exact(cols) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
            out.push(max + sum.ln() as f32);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let [arg, res, grad] = contiguous_all([arg, res, grad])?;
        Ok(Some(arg.apply_op3_no_bwd(&res, &grad, &LogSumExpGrad)?))
    }
}

/// Backward of [`LogSumExpRows`]: `exp(x[n,c] − lse[n]) · g[n]`.
struct LogSumExpGrad;

impl CustomOp3 for LogSumExpGrad {
    fn name(&self) -> &'static str {
        "logsumexp-rows-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, lse, g] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (_, cols) = l1.shape().dims2()?;
        let mut out = vec![0f32; x.len()];
        for (((row, o), &m), &gn) in x
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .zip(lse)
            .zip(g)
        {
            for (oj, &v) in o.iter_mut().zip(row) {
                *oj = (v - m).exp() * gn;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny decoder: 60 tokens in clusters [0,20), [20,40), [40,60).
    pub(crate) fn tiny(div_val: usize, d_embed: usize) -> Config {
        Config {
            n_token: 60,
            d_model: 16,
            d_embed,
            div_val,
            n_head: vec![2, 4],
            d_inner: vec![24, 40],
            cutoffs: vec![20, 40, 60],
            tie_weight: true,
            tie_projs: vec![false, true, true],
            n_positions: 12,
            dropout: 0.1,
            init_std: 0.02,
            proj_init_std: 0.01,
            layer_norm_eps: 1e-5,
        }
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
            .params()
            .vars()
            .iter()
            .map(|(name, var)| {
                let norm = grads
                    .get(var.as_tensor())
                    .map(|g| {
                        g.sqr()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                    })
                    .unwrap_or(0.0);
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
                let config = Config {
                    tie_weight,
                    tie_projs: tie_projs.to_vec(),
                    ..tiny(k, e)
                };
                let built = Gpt2Flex::shapes_only(&config).unwrap().params().count();
                assert_eq!(config.parameter_count(), built as f64, "k {k} e {e}");
            }
        }
        let config = tiny(2, 16);
        assert!(config.activation_floats_per_token(12) > 20.0 * 16.0 * 2.0);
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

    #[test]
    fn key_bias_gets_no_gradient() {
        let config = tiny(2, 16);
        let model = Gpt2Flex::new(&config, &mut Rng::new(3), &Device::Cpu).unwrap();
        let (x, y) = batch(2, 8, 4);
        let fwd = model.forward(&x, &y, (2, 8), None).unwrap();
        let grads = fwd.loss.backward().unwrap();
        let conv = model.conv1ds()[0];
        let g = grads.get(conv.bias.as_tensor()).unwrap();
        let d = config.d_model;
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
            .conv1ds()
            .iter()
            .map(|c| c.weight.dims().to_vec())
            .collect();
        assert_eq!(w[0], vec![16, 48]);
        assert_eq!(w[3], vec![24, 16]);
        assert_eq!(
            Gpt2Flex::shapes_only(&config).unwrap().params().count(),
            model.params().count()
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

    /// Σ out ⊙ w for a fixed random `w`: a scalar whose gradient exercises every output.
    fn weighted_sum(out: &Tensor) -> Tensor {
        let w = Rng::new(99).normal_vec(out.elem_count(), 1.0);
        let w = Tensor::from_vec(w, out.dims(), out.device()).unwrap();
        (out * w).unwrap().sum_all().unwrap()
    }

    /// Checks the analytic gradient of `f` with respect to each input against central
    /// differences (f64 evaluation of an f32 op: step 1e-2, tolerance 3e-3).
    fn check_gradients(
        name: &str,
        inputs: &[Vec<f32>],
        shapes: &[&[usize]],
        f: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let dev = Device::Cpu;
        let vars: Vec<Var> = inputs
            .iter()
            .zip(shapes)
            .map(|(v, s)| Var::from_vec(v.clone(), *s, &dev).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = weighted_sum(&f(&tensors)).backward().unwrap();
        let value = |ins: &[Vec<f32>]| -> f64 {
            let ts: Vec<Tensor> = ins
                .iter()
                .zip(shapes)
                .map(|(v, s)| Tensor::from_vec(v.clone(), *s, &dev).unwrap())
                .collect();
            weighted_sum(&f(&ts)).to_scalar::<f32>().unwrap() as f64
        };
        for (a, var) in vars.iter().enumerate() {
            let g = values(
                grads
                    .get(var.as_tensor())
                    .expect("gradient reached the input"),
            )
            .unwrap();
            for i in 0..inputs[a].len() {
                let h = 1e-2f32;
                let mut up = inputs.to_vec();
                up[a][i] += h;
                let mut down = inputs.to_vec();
                down[a][i] -= h;
                let numeric = (value(&up) - value(&down)) / (2.0 * h as f64);
                assert!(
                    (numeric - g[i] as f64).abs() < 3e-3 * (1.0 + numeric.abs()),
                    "{name}: input {a} entry {i}: numeric {numeric} vs analytic {}",
                    g[i]
                );
            }
        }
    }

    /// The custom ops' backward agrees with a finite difference of their forward.
    #[test]
    fn custom_op_gradients_match_finite_differences() {
        let x = Rng::new(1).normal_vec(2 * 3 * 4, 1.0);
        let sq = Rng::new(1).normal_vec(2 * 3 * 3, 1.0);
        check_gradients(
            "causal-softmax",
            std::slice::from_ref(&sq),
            &[&[2, 3, 3]],
            |t| t[0].apply_op1(CausalSoftmax { scale: 0.7 }).unwrap(),
        );
        check_gradients("logsumexp", std::slice::from_ref(&x), &[&[6, 4]], |t| {
            logsumexp_rows(&t[0]).unwrap()
        });
        check_gradients(
            "gelu-new",
            &[x.iter().map(|v| 2.0 * v).collect()],
            &[&[2, 3, 4]],
            |t| gelu_new(&t[0]).unwrap(),
        );
        let gamma = Rng::new(3).normal_vec(4, 1.0);
        let beta = Rng::new(4).normal_vec(4, 1.0);
        check_gradients(
            "layer-norm",
            &[x, gamma, beta],
            &[&[2, 3, 4], &[4], &[4]],
            |t| {
                t[0].apply_op3(&t[1], &t[2], LayerNorm { eps: 1e-5 })
                    .unwrap()
            },
        );
    }

    /// The custom LayerNorm and GELU agree with their composed definitions.
    #[test]
    fn custom_ops_match_composed_forms() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(Rng::new(5).normal_vec(3 * 8, 2.0), (3, 8), &dev).unwrap();
        let gamma = Var::from_vec(Rng::new(6).normal_vec(8, 1.0), 8, &dev).unwrap();
        let beta = Var::from_vec(Rng::new(7).normal_vec(8, 1.0), 8, &dev).unwrap();
        let ours = values(&layer_norm(&x, &(gamma.clone(), beta.clone()), 1e-5).unwrap()).unwrap();
        let composed = values(&super::super::layer_norm(&x, &gamma, &beta, 1e-5).unwrap()).unwrap();
        assert!(ours
            .iter()
            .zip(&composed)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        let ours = values(&gelu_new(&x).unwrap()).unwrap();
        let candle = values(&x.gelu().unwrap()).unwrap();
        assert!(ours.iter().zip(&candle).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn gelu_is_the_tanh_form() {
        let xs = [-12.0f32, -2.0, -0.5, 0.003, 0.3, 1.7, 9.0];
        let y: Vec<f32> = gelu_new(&Tensor::new(&xs, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, y) in xs.iter().zip(y) {
            let x = *x as f64;
            let expected = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((expected - y as f64).abs() < 1e-6, "{x}: {y} vs {expected}");
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
