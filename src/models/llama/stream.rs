//! The layer-by-layer probe of a Llama sub-network: memory grows with one decoder layer, not
//! with the model, so LLaMA-7B probes on a 24 GiB machine.
//!
//! 1. Forward without gradients: each layer's weights are loaded (or drawn) and sliced, the
//!    layer runs, and only its input hidden state (B × T × H) is kept; then the weights go.
//! 2. The final norm and the LM head run with the last hidden state as a variable; the
//!    next-token loss is back-propagated to it.
//! 3. Backward, last layer first: the layer's weights are loaded again as variables, the layer
//!    is recomputed from its kept input, and `Σ y ⊙ ∂ℒ/∂y` is back-propagated; this gives the
//!    weights' gradients and `∂ℒ/∂x`, which feeds the layer below. The layer is handed to a
//!    visitor ([`LayerProbe`]) and dropped; only its captures, when asked for, outlive it
//!    ([`Captured`]: at a few tokens they are small next to the weights).
//!
//! The gradients are exactly those of one backward pass through the whole network (the tests
//! check this against a pass that keeps every layer).

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};

use super::config::LlamaConfig;
use super::net::{self, LayerWeights, Rope, ROLES};
use super::subnet::Subnet;
use super::weights::{layer_name, Init, WeightSource, EMBED, FINAL_NORM, LM_HEAD};
use crate::array::Array;
use crate::nn::to_array;
use crate::probe::{Batch, LinearProbe};

/// A model to probe: its config, weights and the sub-network to activate.
pub struct Model<'a> {
    /// The full model's shape.
    pub config: &'a LlamaConfig,
    /// Where the full weights come from.
    pub weights: &'a WeightSource,
    /// The active sub-network (checked against `config` by [`probe`]).
    pub subnet: &'a Subnet,
    /// Called after each layer of each pass (for progress): `2 × layers` calls per probe,
    /// `layers` per [`Model::loss`].
    pub on_layer: Option<&'a dyn Fn()>,
}

/// What the backward pass exposes of one decoder layer.
pub struct LayerProbe {
    /// Layer index.
    pub layer: usize,
    /// Its seven linears (q, k, v, o, gate, up, down), sliced weights and their gradients.
    pub linears: Vec<LinearProbe>,
    /// Its captures, when the pass keeps them.
    pub captures: Option<LayerCaptures>,
}

/// What the proxies read of one layer's forward computation (the activations of the
/// recomputation in the backward pass, the same values as the forward's).
pub struct LayerCaptures {
    /// The SwiGLU product (B × T × width).
    pub act: Array,
    /// The `q_proj` output (B × T × heads·d).
    pub q: Array,
    /// The `k_proj` output (B × T × kv_heads·d).
    pub k: Array,
    /// The `v_proj` output (B × T × kv_heads·d).
    pub v: Array,
    /// The attention probabilities (B × heads × T × T).
    pub probs: Array,
}

/// Every layer's captures, held by layer index while the backward pass hands them over (last
/// layer first), then laid out as a probe's lists ([`Captured::into_lists`]).
pub struct Captured {
    layers: Vec<Option<LayerCaptures>>,
}

/// The probe lists made of every layer's captures, in layer order (see [`crate::probe::Probe`]
/// and the module docs of [`super`] for what each means).
pub struct CaptureLists {
    /// Per layer the SwiGLU product.
    pub act: Vec<Array>,
    /// Per layer the `q_proj` output.
    pub head: Vec<Array>,
    /// Per layer the attention probabilities.
    pub softmax: Vec<Array>,
    /// Per layer the `q_proj`, `k_proj` and `v_proj` outputs (what `head_confidence` reads).
    pub mixer_outputs: Vec<Array>,
}

impl Captured {
    /// Room for the captures of `layers` layers, none held yet.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
        }
    }

    /// Holds the captures of layer `layer`.
    pub fn insert(&mut self, layer: usize, captures: LayerCaptures) {
        self.layers[layer] = Some(captures);
    }

    /// The captures of layer `layer`, when held.
    pub fn layer(&self, layer: usize) -> Option<&LayerCaptures> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// The lists of a probe; fails when a layer's captures are missing.
    pub fn into_lists(self) -> Result<CaptureLists> {
        let mut lists = CaptureLists {
            act: Vec::with_capacity(self.layers.len()),
            head: Vec::with_capacity(self.layers.len()),
            softmax: Vec::with_capacity(self.layers.len()),
            mixer_outputs: Vec::with_capacity(3 * self.layers.len()),
        };
        for (l, layer) in self.layers.into_iter().enumerate() {
            let c = layer
                .with_context(|| format!("internal error: layer {l}'s captures were not kept"))?;
            lists.act.push(c.act);
            lists.head.push(c.q.clone());
            lists.mixer_outputs.extend([c.q, c.k, c.v]);
            lists.softmax.push(c.probs);
        }
        Ok(lists)
    }
}

/// Bytes of every layer's captures of `subnet` on `batch` as a probe's lists hold them
/// ([`CaptureLists`], `f32`; the `q_proj` output twice, as `head` and among the mixer
/// outputs): what a pass that keeps them holds at its end. `subnet` must fit `config`
/// ([`Subnet::check`]).
pub fn capture_bytes(config: &LlamaConfig, subnet: &Subnet, batch: &Batch) -> u64 {
    let (b, t) = (batch.rows as u64, batch.cols.saturating_sub(1) as u64);
    let d = config.head_dim() as u64;
    let floats: u64 = (0..config.num_hidden_layers)
        .map(|l| {
            let heads = subnet.heads_of(config, l) as u64;
            let kv = subnet.kv_heads_of(config, l) as u64;
            let width = subnet.ffn_widths[l] as u64;
            b * t * (width + (2 * heads + 2 * kv) * d) + b * heads * t * t
        })
        .sum();
    4 * floats
}

/// What a whole pass gives besides the layers.
pub struct PassSummary {
    /// The mean next-token NLL.
    pub loss: f64,
    /// `∂ℒ/∂(input embedding)` summed over the batch rows: T × H.
    pub position_grad: Tensor,
}

impl Model<'_> {
    /// The weights of layer `l`, sliced to the sub-network: leading heads of q/k/v (rows) and
    /// o (columns), leading FFN rows of gate/up and columns of down.
    pub fn layer_weights(&self, l: usize) -> Result<LayerWeights> {
        let c = self.config;
        let (h, d, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (heads, kv) = (self.subnet.heads_of(c, l), self.subnet.kv_heads_of(c, l));
        let w = self.subnet.ffn_widths[l];
        let src = self.weights;
        let get =
            |module: &str, shape: &[usize], init| src.load(&layer_name(l, module), shape, init);
        let rows = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.narrow(0, 0, n)?.contiguous()?) };
        let cols = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.narrow(1, 0, n)?.contiguous()?) };
        Ok(LayerWeights {
            attn_norm: get("input_layernorm", &[h], Init::Ones)?,
            q: rows(
                get(
                    "self_attn.q_proj",
                    &[c.num_attention_heads * d, h],
                    Init::Normal,
                )?,
                heads * d,
            )?,
            k: rows(
                get("self_attn.k_proj", &[c.kv_heads() * d, h], Init::Normal)?,
                kv * d,
            )?,
            v: rows(
                get("self_attn.v_proj", &[c.kv_heads() * d, h], Init::Normal)?,
                kv * d,
            )?,
            o: cols(
                get(
                    "self_attn.o_proj",
                    &[h, c.num_attention_heads * d],
                    Init::Normal,
                )?,
                heads * d,
            )?,
            ffn_norm: get("post_attention_layernorm", &[h], Init::Ones)?,
            gate: rows(get("mlp.gate_proj", &[i, h], Init::Normal)?, w)?,
            up: rows(get("mlp.up_proj", &[i, h], Init::Normal)?, w)?,
            down: cols(get("mlp.down_proj", &[h, i], Init::Normal)?, w)?,
        })
    }

    /// The embedding table (V × H).
    pub fn embedding(&self) -> Result<Tensor> {
        let c = self.config;
        self.weights
            .load(EMBED, &[c.vocab_size, c.hidden_size], Init::Normal)
    }

    /// The LM head (V × H; the embedding when tied).
    pub fn lm_head(&self) -> Result<Tensor> {
        let c = self.config;
        if c.tie_word_embeddings {
            return self.embedding();
        }
        self.weights
            .load(LM_HEAD, &[c.vocab_size, c.hidden_size], Init::Normal)
    }

    /// The final norm's scale (H).
    pub fn final_norm(&self) -> Result<Tensor> {
        self.weights
            .load(FINAL_NORM, &[self.config.hidden_size], Init::Ones)
    }

    /// Reports one finished layer ([`Model::on_layer`]).
    fn tick(&self) {
        if let Some(f) = self.on_layer {
            f();
        }
    }

    /// `(heads, kv_heads, head size)` of layer `l`.
    pub fn attn_shape(&self, l: usize) -> (usize, usize, usize) {
        let c = self.config;
        (
            self.subnet.heads_of(c, l),
            self.subnet.kv_heads_of(c, l),
            c.head_dim(),
        )
    }

    /// The input embeddings of `ids` (`rows × cols`): B × T × H.
    pub fn embed(&self, ids: &[u32], rows: usize, cols: usize) -> Result<Tensor> {
        let table = self.embedding()?;
        let idx = Tensor::from_vec(ids.to_vec(), rows * cols, table.device())?;
        Ok(table
            .index_select(&idx, 0)?
            .reshape((rows, cols, self.config.hidden_size))?)
    }

    /// The logits of the last hidden state `x` (B × T × H): N × V, N = B·T.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (norm, head) = (self.final_norm()?, self.lm_head()?);
        Ok(net::logits(x, &norm, &head, self.config.rms_norm_eps)?)
    }

    /// Forward only: the mean next-token NLL of `batch` (each row: inputs then the shifted
    /// targets), one layer's weights in memory at a time.
    pub fn loss(&self, batch: &Batch) -> Result<f64> {
        self.subnet.check(self.config)?;
        let (inputs, targets) = batch.shifted();
        let t = batch.cols - 1;
        let rope = Rope::new(
            t,
            self.config.head_dim(),
            self.config.rope_theta,
            &candle_core::Device::Cpu,
        )?;
        let mut x = self.embed(&inputs, batch.rows, t)?;
        for l in 0..self.config.num_hidden_layers {
            let w = self.layer_weights(l)?;
            x = net::layer(&x, &w, self.attn_shape(l), self.config.rms_norm_eps, &rope)?.y;
            self.tick();
        }
        let logits = self.logits(&x)?;
        Ok(net::nll(&logits, &targets)?.to_scalar::<f32>()? as f64)
    }
}

/// Probes `model` on `batch` layer by layer (module docs), handing each decoder layer to
/// `visit`, last layer first. `captures` hands over the layer's activations in its
/// [`LayerProbe`]; without it only weights and gradients are.
pub fn probe(
    model: &Model<'_>,
    batch: &Batch,
    captures: bool,
    mut visit: impl FnMut(LayerProbe) -> Result<()>,
) -> Result<PassSummary> {
    let c = model.config;
    model.subnet.check(c).context("sub-network")?;
    let (inputs, targets) = batch.shifted();
    let t = batch.cols - 1;
    let eps = c.rms_norm_eps;
    let rope = Rope::new(t, c.head_dim(), c.rope_theta, &candle_core::Device::Cpu)?;
    let mut xs = vec![model.embed(&inputs, batch.rows, t)?];
    for l in 0..c.num_hidden_layers {
        let w = model.layer_weights(l)?;
        let y = net::layer(&xs[l], &w, model.attn_shape(l), eps, &rope)?.y;
        xs.push(y);
        model.tick();
    }
    let last = Var::from_tensor(&xs.pop().expect("one state per layer and the input"))?;
    let loss = net::nll(&model.logits(last.as_tensor())?, &targets)?;
    let loss_value = loss.to_scalar::<f32>()? as f64;
    let grads = loss.backward()?;
    let mut g = grads
        .get(last.as_tensor())
        .context("internal error: no gradient reached the last hidden state")?
        .clone();
    drop(grads);
    for l in (0..c.num_hidden_layers).rev() {
        let x = Var::from_tensor(&xs.pop().expect("one input per layer"))?;
        let w = model.layer_weights(l)?;
        let vars: Vec<Var> = w
            .linears()
            .iter()
            .map(|(_, t)| Var::from_tensor(t))
            .collect::<candle_core::Result<_>>()?;
        let wv = LayerWeights {
            attn_norm: w.attn_norm.clone(),
            q: vars[0].as_tensor().clone(),
            k: vars[1].as_tensor().clone(),
            v: vars[2].as_tensor().clone(),
            o: vars[3].as_tensor().clone(),
            ffn_norm: w.ffn_norm.clone(),
            gate: vars[4].as_tensor().clone(),
            up: vars[5].as_tensor().clone(),
            down: vars[6].as_tensor().clone(),
        };
        drop(w);
        let out = net::layer(x.as_tensor(), &wv, model.attn_shape(l), eps, &rope)?;
        let surrogate = out.y.mul(&g)?.sum_all()?;
        let grads = surrogate.backward()?;
        let names = wv.linears().map(|(n, _)| n);
        let mut linears = Vec::with_capacity(7);
        for ((var, name), role) in vars.iter().zip(names).zip(ROLES) {
            let grad = match grads.get(var.as_tensor()) {
                Some(gr) => to_array(gr)?,
                None => crate::array::Array::full(var.dims().to_vec(), 0.0),
            };
            linears.push(LinearProbe {
                name: format!("model.layers.{l}.{name}"),
                layer: Some(l),
                role,
                weight: to_array(var.as_tensor())?,
                grad,
            });
        }
        g = grads
            .get(x.as_tensor())
            .context("internal error: no gradient reached a layer input")?
            .clone();
        drop(grads);
        let captures = if captures {
            Some(LayerCaptures {
                act: to_array(&out.act)?,
                q: to_array(&out.q)?,
                k: to_array(&out.k)?,
                v: to_array(&out.v)?,
                probs: to_array(&out.probs)?,
            })
        } else {
            None
        };
        drop(out);
        let layer = LayerProbe {
            layer: l,
            linears,
            captures,
        };
        visit(layer)?;
        model.tick();
    }
    let position_grad = g.sum(0)?;
    Ok(PassSummary {
        loss: loss_value,
        position_grad,
    })
}
