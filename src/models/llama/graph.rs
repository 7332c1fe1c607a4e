//! A sub-network as one autograd graph, every weight a variable at once: what the extra passes
//! of [`crate::probe::passes`] need (GraSP perturbs every scored weight and runs the whole
//! network again; Synflow runs the absolute-valued network on its own input; Fisher, attention
//! confidence and Jacob-Cov read gradient taps of one whole backward) and what the
//! layer-by-layer pass of [`super::stream`] never holds. It serves models whose whole probe
//! fits in memory ([`super::Mode`]); [`Graph`] is the family's [`ProbeModel`], and
//! [`crate::probe::extra_passes`] runs the passes on it.
//!
//! Where the passes' definitions are family-specific, the Llama family does what the GPT-2
//! family does (spec §3.3; the README lists the differences from the reference):
//!
//! * the taps sit on every decoder linear's output (q, k, v, o, gate, up, down), as GPT-2's
//!   sit on every Conv1D's, and on the input embeddings (Jacob-Cov: `∂ℒ/∂(input embeddings)`
//!   of the probe's own signal, the mean next-token NLL, rows of the batch);
//! * GraSP and Synflow score those seven linears per layer (the expression linears; not the
//!   embedding table, the norms or the LM head);
//! * Synflow's readout: the input embeddings are all ones (one row of T tokens; RoPE positions
//!   as always), the decoder and the final norm run on the absolute-valued network, and the
//!   readout is the sum of the LM head's logits (no log-softmax). GPT-2 sums its head
//!   cluster's logits; a Llama's head is one linear over the whole vocabulary;
//! * no dropout (a Llama has none).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::net::{self, LayerWeights, Rope, ROLES};
use super::stream;
use super::weights::{layer_name, EMBED, FINAL_NORM, LM_HEAD};
use crate::nn::{Layout, Linear, Params, TapSite, Taps};
use crate::probe::{Batch, Captures, Network, Pass, ProbeModel};
use crate::rng::Rng;

/// A sub-network built whole for one batch (module docs).
pub struct Graph {
    /// Every weight of the sub-network (embedding table, norms, linears, LM head unless tied),
    /// sliced to it.
    params: Params,
    /// Taps on the input embeddings and on every linear's output.
    taps: Taps,
    /// The embedding table (V × H; also the LM head when tied).
    embedding: Var,
    /// Each layer's weights: the tensors of the variables in `params`.
    layers: Vec<LayerWeights>,
    /// Each layer's `(heads, kv_heads, head size)`.
    shapes: Vec<(usize, usize, usize)>,
    /// The seven linears of every layer, in the probe's order, for the network's parts.
    linears: Vec<Linear>,
    /// The final norm's scale (H).
    final_norm: Var,
    /// The LM head (V × H; the embedding table when tied).
    head: Var,
    /// A zero T × H offset added to the input embeddings: a Llama has no position table, and
    /// the gradient of this offset is the per-position gradient the whole probe holds.
    position: Var,
    /// The batch's input ids (B·T).
    inputs: Tensor,
    /// The batch's next-token targets (B·T).
    targets: Vec<u32>,
    /// Batch rows (B).
    rows: usize,
    /// Tokens per row (T).
    tokens: usize,
    /// Hidden width (H).
    hidden: usize,
    /// RMSNorm epsilon.
    eps: f64,
    /// RoPE tables for `tokens` positions.
    rope: Rope,
}

impl Graph {
    /// The sub-network of `m` with every weight loaded (or drawn) and sliced as the streaming
    /// pass slices it, for `batch` (each row: inputs, then the shifted targets).
    pub fn new(m: &stream::Model<'_>, batch: &Batch) -> Result<Self> {
        let c = m.config;
        m.subnet.check(c).context("sub-network")?;
        let (inputs, targets) = batch.shifted();
        let tokens = batch.cols.saturating_sub(1);
        let device = Device::Cpu;
        let mut params = Params::default();
        let embedding = params.register(EMBED, &m.embedding()?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        let mut linears = Vec::with_capacity(ROLES.len() * c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let w = m.layer_weights(l)?;
            let attn_norm = params.register(&layer_name(l, "input_layernorm"), &w.attn_norm)?;
            let mut vars = Vec::with_capacity(ROLES.len());
            for ((module, t), role) in w.linears().into_iter().zip(ROLES) {
                let weight = params.register(&layer_name(l, module), t)?;
                vars.push(weight.as_tensor().clone());
                linears.push(Linear {
                    name: format!("model.layers.{l}.{module}"),
                    layer: Some(l),
                    role,
                    weight,
                    bias: None,
                    layout: Layout::OutIn,
                });
            }
            let ffn_norm =
                params.register(&layer_name(l, "post_attention_layernorm"), &w.ffn_norm)?;
            let [q, k, v, o, gate, up, down]: [Tensor; 7] = vars
                .try_into()
                .map_err(|_| anyhow::anyhow!("internal error: a layer has seven linears"))?;
            layers.push(LayerWeights {
                attn_norm: attn_norm.as_tensor().clone(),
                q,
                k,
                v,
                o,
                ffn_norm: ffn_norm.as_tensor().clone(),
                gate,
                up,
                down,
            });
        }
        let final_norm = params.register(FINAL_NORM, &m.final_norm()?)?;
        let head = if c.tie_word_embeddings {
            embedding.clone()
        } else {
            params.register(LM_HEAD, &m.lm_head()?)?
        };
        Ok(Self {
            params,
            taps: Taps::default(),
            embedding,
            layers,
            shapes: (0..c.num_hidden_layers).map(|l| m.attn_shape(l)).collect(),
            linears,
            final_norm,
            head,
            position: Var::zeros((tokens, c.hidden_size), DType::F32, &device)?,
            inputs: Tensor::from_vec(inputs, batch.rows * tokens, &device)?,
            targets,
            rows: batch.rows,
            tokens,
            hidden: c.hidden_size,
            eps: c.rms_norm_eps,
            rope: Rope::new(tokens, c.head_dim(), c.rope_theta, &device)?,
        })
    }

    /// The decoder layers on the input embeddings `x` (B × T × H), every linear through its
    /// tap: the last hidden state and the probe's captures (per layer the SwiGLU product, the
    /// `q_proj` output as `head`, the attention probabilities, and q, k, v as the mixer
    /// outputs; as the whole probe lays them out).
    fn decode(&self, mut x: Tensor) -> candle_core::Result<(Tensor, Captures)> {
        let n = self.layers.len();
        let (mut act, mut head, mut softmax) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut mixer_outputs = Vec::with_capacity(3 * n);
        for (w, &shape) in self.layers.iter().zip(&self.shapes) {
            let out = net::tapped_layer(&x, w, shape, self.eps, &self.rope, &self.taps)?;
            act.push(out.act);
            head.push(out.q.clone());
            mixer_outputs.extend([out.q, out.k, out.v]);
            softmax.push(out.probs);
            x = out.y;
        }
        let captures = Captures {
            act,
            head: Some(head),
            softmax,
            mixer_outputs: Some(mixer_outputs),
        };
        Ok((x, captures))
    }

    /// The logits of the last hidden state `x`: N × V.
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        net::logits(
            x,
            self.final_norm.as_tensor(),
            self.head.as_tensor(),
            self.eps,
        )
    }
}

impl ProbeModel for Graph {
    fn network(&self) -> Network<'_> {
        Network {
            params: &self.params,
            taps: &self.taps,
            linears: self.linears.iter().collect(),
            position_table: &self.position,
        }
    }

    /// The mean next-token NLL of the batch (a Llama has no dropout: `dropout` is unused).
    fn forward(&self, _dropout: Option<&mut Rng>) -> candle_core::Result<Pass> {
        let emb = self
            .embedding
            .as_tensor()
            .index_select(&self.inputs, 0)?
            .reshape((self.rows, self.tokens, self.hidden))?;
        let emb = self.taps.tap(TapSite::Embedding, emb)?;
        let x = emb.broadcast_add(self.position.as_tensor())?;
        let (hidden, captures) = self.decode(x)?;
        let loss = net::nll(&self.logits(&hidden)?, &self.targets)?;
        Ok(Pass { loss, captures })
    }

    /// Σ of the LM head's logits of the decoder on one row of all-ones input embeddings.
    fn readout(&self) -> candle_core::Result<Tensor> {
        let ones = Tensor::ones((1, self.tokens, self.hidden), DType::F32, &Device::Cpu)?;
        let (hidden, _) = self.decode(ones)?;
        self.logits(&hidden)?.sum_all()
    }
}
