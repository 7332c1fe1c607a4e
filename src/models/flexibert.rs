//! FlexiBERT: the ELECTRA-style encoder of the FlexiBERT benchmark (spec §1), and the
//! FlexiBERT family ([`FAMILY`]): how its architectures are probed and counted and what its
//! probes mean to the proxies.
//!
//! Embeddings (word + position + type, LayerNorm, projection to the hidden size), then one
//! layer per benchmark entry: a token mixer (SA-SDP, SA-WMA, LT-DFT, LT-DCT or DSC) and a
//! stack of GELU FFN denses. SA and DSC mixers get an output dense with a residual and
//! LayerNorm; LT mixers have none (their raw transform feeds the FFN, as in the reference).

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var, D};

use super::family::{Counted, Family, FamilyInfo, Reference};
use crate::bench::flexibert::{Layer, Mixer, Record, KIND, REFERENCE_FILE};
use crate::bench::Arch;
use crate::nn::{
    dropout, ops, Build, Init, LayerNorm, Linear, LinearRole, Params, Tap, TapSite, Taps,
};
use crate::probe::memory::ModelSize;
use crate::probe::{
    self, passes, Aggregate, Backward, Batch, ByHand, Captures, FisherWidth, GradSignal, Network,
    Pass, PassMode, Probe, ProbeModel, ProbeOptions, Semantics,
};
use crate::rng::Rng;

pub use crate::probe::SizeMode;

/// Global constants and per-layer shapes of one encoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// Vocabulary size (BERT uncased WordPiece).
    pub vocab_size: usize,
    /// Width of the embedding tables.
    pub embedding_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Size of the position table.
    pub max_positions: usize,
    /// Number of token types.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Standard deviation of every weight at initialisation.
    pub init_std: f64,
    /// Dropout probability (hidden and attention) when dropout is on.
    pub dropout: f64,
    /// Encoder layers.
    pub layers: Vec<LayerConfig>,
}

/// Shape of one encoder layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerConfig {
    /// Token mixer.
    pub mixer: Mixer,
    /// Number of heads.
    pub heads: usize,
    /// Width of the FFN hidden layers.
    pub ffn_width: usize,
    /// Number of GELU-activated FFN layers.
    pub ffn_layers: usize,
}

impl Config {
    /// The encoder for a benchmark record under the given size mode; fails with a message
    /// naming the record and layer when the shapes are inconsistent (heads not dividing H,
    /// odd head count for DSC).
    pub fn from_record(record: &Record, sizes: SizeMode) -> anyhow::Result<Self> {
        let hidden = match sizes {
            SizeMode::Faithful => 256,
            SizeMode::Intended => record.hidden_size,
        };
        let mut layers = Vec::with_capacity(record.layers.len());
        for (l, layer) in record.layers.iter().enumerate() {
            if hidden % layer.heads != 0 {
                anyhow::bail!(
                    "record id {}: layer {l}: {} heads do not divide the hidden size {hidden}",
                    record.id,
                    layer.heads
                );
            }
            if matches!(layer.mixer, Mixer::Dsc { .. }) && layer.heads % 2 != 0 {
                anyhow::bail!(
                    "record id {}: layer {l}: DSC needs an even head count (conv head ratio 2), found {}",
                    record.id,
                    layer.heads
                );
            }
            layers.push(LayerConfig {
                mixer: layer.mixer,
                heads: layer.heads,
                ffn_width: match sizes {
                    SizeMode::Faithful => 1024,
                    SizeMode::Intended => layer.ffn_width,
                },
                ffn_layers: layer.ffn_layers,
            });
        }
        Ok(Self {
            vocab_size: 30522,
            embedding_size: 128,
            hidden_size: hidden,
            max_positions: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            init_std: 0.02,
            dropout: 0.1,
            layers,
        })
    }
}

impl Config {
    /// The number of trainable parameters of the encoder, from the shapes alone (equal to the
    /// count of a built model; no tensor is allocated, so it is safe on absurd sizes). An
    /// `f64` so that it never overflows.
    pub fn parameter_count(&self) -> f64 {
        let (v, e, h) = (
            self.vocab_size as f64,
            self.embedding_size as f64,
            self.hidden_size as f64,
        );
        let p = self.max_positions as f64;
        let linear = |i: f64, o: f64| i * o + o;
        let mut n = (v + p + self.type_vocab_size as f64) * e + 2.0 * e;
        if self.embedding_size != self.hidden_size {
            n += linear(e, h);
        }
        for l in &self.layers {
            let heads = l.heads.max(1) as f64;
            n += match l.mixer {
                Mixer::Sdp => 3.0 * linear(h, h),
                Mixer::Wma => 3.0 * linear(h, h) + h * h,
                Mixer::Dft | Mixer::Dct => linear(h, h),
                Mixer::Dsc { kernel } => {
                    let k = kernel as f64;
                    let heads_a = (l.heads / 2).max(1) as f64;
                    let a = heads_a * (h / heads).floor();
                    4.0 * linear(h, a) + h * k + a * h + a + linear(a, heads_a * k)
                }
            };
            if l.mixer.has_output_block() {
                n += linear(h, h) + 2.0 * h;
            }
            let f = l.ffn_width as f64;
            let hidden_ffn = l.ffn_layers.saturating_sub(1) as f64;
            n += linear(h, f) + hidden_ffn * linear(f, f) + linear(f, h) + 2.0 * h;
        }
        n
    }

    /// About how many `f32` values a probe keeps alive per input token at its peak (forward
    /// activations saved for the backward pass, their gradients and the probe's copies), for
    /// `seq_len` tokens per row: per layer 20 × H, 5 × each FFN width and 4 × the attention
    /// row of every head (T values). Calibrated on measured peaks (2–8 rows of 512 tokens);
    /// meant to reject what cannot fit, not to predict exactly.
    pub fn activation_floats_per_token(&self, seq_len: usize) -> f64 {
        let (h, t) = (self.hidden_size as f64, seq_len as f64);
        self.layers
            .iter()
            .map(|l| {
                let mixer = match l.mixer {
                    Mixer::Dft | Mixer::Dct => h,
                    _ => l.heads as f64 * t,
                };
                20.0 * h + 5.0 * (l.ffn_width * l.ffn_layers) as f64 + 4.0 * mixer
            })
            .sum()
    }
}

/// Token mixer parameters of one layer.
enum MixerParams {
    /// SA-SDP and SA-WMA (`ww` present for WMA).
    Attention {
        q: Linear,
        k: Linear,
        v: Linear,
        ww: Option<Linear>,
    },
    /// LT-DFT / LT-DCT: one input dense, then a fixed transform.
    Transform { input: Linear, dct: bool },
    /// DSC: ConvBERT-style mixed attention.
    Dsc {
        q: Linear,
        k: Linear,
        v: Linear,
        depthwise: Var,
        pointwise: Var,
        sep_bias: Var,
        kernel_layer: Linear,
        conv_out: Linear,
        kernel: usize,
    },
}

/// One encoder layer: its mixer, output block and FFN.
struct EncoderLayer {
    heads: usize,
    mixer: MixerParams,
    /// Output dense and its LayerNorm (SA and DSC only).
    output: Option<(Linear, LayerNorm)>,
    ffn: Vec<Linear>,
    ffn_out: Linear,
    ffn_ln: LayerNorm,
}

/// A randomly initialised FlexiBERT encoder.
pub struct FlexiBert {
    config: Config,
    params: Params,
    word: Var,
    position: Var,
    token_type: Var,
    emb_ln: LayerNorm,
    projection: Option<Linear>,
    layers: Vec<EncoderLayer>,
    taps: Taps,
}

/// What one forward pass exposes to a probe (engine tensors; the probe converts them).
pub struct Forward {
    /// `last_hidden_state`, B × T × H.
    pub last_hidden: Tensor,
    /// Every GELU output in execution order, B × T × FFN width.
    pub act: Vec<Tensor>,
    /// Per layer, the first projection of the mixer (q for SA/DSC, the input dense for LT).
    pub head: Vec<Tensor>,
    /// Per layer, the mixer's softmax output (attention probabilities; for LT the discarded
    /// softmax over the last (within-head) axis of the transform, B × h × T × d).
    pub softmax: Vec<Tensor>,
    /// Outputs of the mixer linears named q, k, v, in and Ww (DSC: q, k, v), execution order.
    pub mixer_outputs: Vec<Tensor>,
}

/// Name suffixes of a LayerNorm's γ and β.
const LN_SUFFIXES: (&str, &str) = ("gamma", "beta");

impl Build for FlexiBert {
    type Config = Config;

    /// Builds the encoder (N(0, 0.02²) weights, zero biases, padding row of the word table
    /// zero, LayerNorm γ = 1, β = 0).
    fn build(
        config: &Config,
        mut params: Params,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (e, h) = (config.embedding_size, config.hidden_size);
        // Padding row (id 0) starts at zero.
        let word = params.lookup_table(
            "embeddings.word",
            (config.vocab_size, e),
            config.init_std,
            Some(0),
            rng,
            device,
        )?;
        let position = params.normal(
            "embeddings.position",
            &[config.max_positions, e],
            config.init_std,
            rng,
            device,
        )?;
        let token_type = params.normal(
            "embeddings.token_type",
            &[config.type_vocab_size, e],
            config.init_std,
            rng,
            device,
        )?;
        let emb_ln = LayerNorm::new(
            &mut params,
            "embeddings.layer_norm",
            LN_SUFFIXES,
            e,
            config.layer_norm_eps,
            device,
        )?;
        let mut init = Init {
            params: &mut params,
            rng,
            device,
            std: config.init_std,
        };
        let projection = if e != h {
            Some(Linear::new(
                &mut init,
                "embeddings.project",
                None,
                LinearRole::EmbeddingProjection,
                e,
                h,
                true,
            )?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(config.layers.len());
        for (l, lc) in config.layers.iter().enumerate() {
            layers.push(Self::new_layer(&mut init, l, lc, h, config.layer_norm_eps)?);
        }
        Ok(Self {
            config: config.clone(),
            params,
            word,
            position,
            token_type,
            emb_ln,
            projection,
            layers,
            taps: Taps::default(),
        })
    }
}

impl FlexiBert {
    /// Builds encoder layer `l` of width `h`.
    fn new_layer(
        init: &mut Init<'_>,
        l: usize,
        lc: &LayerConfig,
        h: usize,
        eps: f64,
    ) -> candle_core::Result<EncoderLayer> {
        let p = format!("layer.{l}");
        let mixer_lin = |init: &mut Init<'_>, name: &str, i: usize, o: usize, bias: bool| {
            Linear::new(
                init,
                &format!("{p}.mixer.{name}"),
                Some(l),
                LinearRole::Mixer,
                i,
                o,
                bias,
            )
        };
        let mixer = match lc.mixer {
            Mixer::Sdp | Mixer::Wma => {
                let q = mixer_lin(init, "query", h, h, true)?;
                let k = mixer_lin(init, "key", h, h, true)?;
                let v = mixer_lin(init, "value", h, h, true)?;
                let ww = if lc.mixer == Mixer::Wma {
                    Some(mixer_lin(init, "wma", h, h, false)?)
                } else {
                    None
                };
                MixerParams::Attention { q, k, v, ww }
            }
            Mixer::Dft | Mixer::Dct => MixerParams::Transform {
                input: mixer_lin(init, "input", h, h, true)?,
                dct: lc.mixer == Mixer::Dct,
            },
            Mixer::Dsc { kernel } => {
                let heads_a = (lc.heads / 2).max(1);
                let a = heads_a * (h / lc.heads);
                let q = mixer_lin(init, "query", h, a, true)?;
                let k = mixer_lin(init, "key", h, a, true)?;
                let v = mixer_lin(init, "value", h, a, true)?;
                let std = init.std;
                let depthwise = init.params.normal(
                    &format!("{p}.mixer.depthwise"),
                    &[h, kernel],
                    std,
                    init.rng,
                    init.device,
                )?;
                let pointwise = init.params.normal(
                    &format!("{p}.mixer.pointwise"),
                    &[a, h],
                    std,
                    init.rng,
                    init.device,
                )?;
                let sep_bias = init.params.constant(
                    &format!("{p}.mixer.separable_bias"),
                    &[a],
                    0.0,
                    init.device,
                )?;
                let kernel_layer = mixer_lin(init, "conv_kernel", a, heads_a * kernel, true)?;
                let conv_out = mixer_lin(init, "conv_out", h, a, true)?;
                MixerParams::Dsc {
                    q,
                    k,
                    v,
                    depthwise,
                    pointwise,
                    sep_bias,
                    kernel_layer,
                    conv_out,
                    kernel,
                }
            }
        };
        let output = if lc.mixer.has_output_block() {
            let dense = Linear::new(
                init,
                &format!("{p}.output.dense"),
                Some(l),
                LinearRole::MixerOutput,
                h,
                h,
                true,
            )?;
            let ln = LayerNorm::new(
                init.params,
                &format!("{p}.output.layer_norm"),
                LN_SUFFIXES,
                h,
                eps,
                init.device,
            )?;
            Some((dense, ln))
        } else {
            None
        };
        let mut ffn = Vec::with_capacity(lc.ffn_layers);
        for i in 0..lc.ffn_layers {
            let (role, in_dim) = if i == 0 {
                (LinearRole::FfnIn, h)
            } else {
                (LinearRole::FfnHidden, lc.ffn_width)
            };
            ffn.push(Linear::new(
                init,
                &format!("{p}.ffn.{i}"),
                Some(l),
                role,
                in_dim,
                lc.ffn_width,
                true,
            )?);
        }
        let ffn_out = Linear::new(
            init,
            &format!("{p}.ffn.out"),
            Some(l),
            LinearRole::FfnOut,
            lc.ffn_width,
            h,
            true,
        )?;
        let ffn_ln = LayerNorm::new(
            init.params,
            &format!("{p}.ffn.layer_norm"),
            LN_SUFFIXES,
            h,
            eps,
            init.device,
        )?;
        Ok(EncoderLayer {
            heads: lc.heads,
            mixer,
            output,
            ffn,
            ffn_out,
            ffn_ln,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The position-embedding table (its gradient feeds the Jacobian proxies).
    pub fn position_table(&self) -> &Var {
        &self.position
    }

    /// The parts a probe reads: parameters, taps, every linear, the position table.
    pub fn network(&self) -> Network<'_> {
        Network {
            params: &self.params,
            taps: &self.taps,
            linears: self.linears(),
            position_table: &self.position,
        }
    }

    /// Every linear layer in module order: embedding projection, then per layer the mixer
    /// linears in registration order (SDP q,k,v; WMA q,k,v,Ww; LT in; DSC q,k,v,kernel,conv-out),
    /// the output dense, the FFN denses.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out: Vec<&Linear> = self.projection.iter().collect();
        for layer in &self.layers {
            match &layer.mixer {
                MixerParams::Attention { q, k, v, ww } => {
                    out.extend([q, k, v]);
                    out.extend(ww.iter());
                }
                MixerParams::Transform { input, .. } => out.push(input),
                MixerParams::Dsc {
                    q,
                    k,
                    v,
                    kernel_layer,
                    conv_out,
                    ..
                } => out.extend([q, k, v, kernel_layer, conv_out]),
            }
            if let Some((dense, _)) = &layer.output {
                out.push(dense);
            }
            out.extend(layer.ffn.iter());
            out.push(&layer.ffn_out);
        }
        out
    }

    /// One forward pass over token ids `ids` (B × T, u32; token types 0, no mask, as the
    /// reference). `dropout_rng` switches dropout on (p = 0.1) with masks from that stream.
    pub fn forward(
        &self,
        ids: &Tensor,
        dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<Forward> {
        self.forward_words(self.words(ids)?, dropout_rng)
    }

    /// The word embeddings of `ids` (B × T), outside the autograd graph: the word table gets
    /// no gradient. No proxy reads one (they read the linears and the position table), and
    /// with 30 522 rows it was the largest tensor of the backward pass (zero-filled, scattered
    /// into, then added). Every other gradient is unchanged.
    fn words(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.word
            .as_tensor()
            .detach()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.embedding_size))
    }

    /// The forward pass from word embeddings `words` (B × T × embedding width) instead of
    /// ids: position and token-type embeddings are added as usual (Synflow feeds all ones).
    pub fn forward_words(
        &self,
        words: Tensor,
        mut dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<Forward> {
        let mut x = self.embed(words, dropout_rng.as_deref_mut())?;
        let mut fwd = Forward {
            last_hidden: x.clone(),
            act: Vec::new(),
            head: Vec::new(),
            softmax: Vec::new(),
            mixer_outputs: Vec::new(),
        };
        for layer in &self.layers {
            x = self
                .layer_forward(layer, &x, &mut fwd, dropout_rng.as_deref_mut())?
                .0;
        }
        fwd.last_hidden = x;
        Ok(fwd)
    }

    /// The embeddings below the first layer, from word embeddings `words`: positions and
    /// token types added, LayerNorm, dropout, the projection to the hidden size when there is
    /// one.
    fn embed(&self, words: Tensor, dropout_rng: Option<&mut Rng>) -> candle_core::Result<Tensor> {
        let (_, t, _) = words.dims3()?;
        let words = self.taps.tap(TapSite::Embedding, words)?;
        let pos = self.position.as_tensor().narrow(0, 0, t)?;
        let typ = self.token_type.as_tensor().narrow(0, 0, 1)?;
        let e = words.broadcast_add(&pos.broadcast_add(&typ)?)?;
        let e = self.emb_ln.forward(&e)?;
        let e = dropout(&e, self.config.dropout, dropout_rng)?;
        match &self.projection {
            Some(proj) => self.taps.linear(proj, &e),
            None => Ok(e),
        }
    }

    /// One encoder layer on `x` (B × T × H): its output, with its captures appended to `fwd`
    /// and what its backward by hand reads.
    fn layer_forward(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        fwd: &mut Forward,
        mut dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<(Tensor, LayerTape)> {
        let p = self.config.dropout;
        let (mixed, attention) = self.mixer_forward(layer, x, fwd, dropout_rng.as_deref_mut())?;
        let (a, output) = match &layer.output {
            Some((dense, ln)) => {
                let y = self.taps.linear(dense, &mixed)?;
                let s = (dropout(&y, p, dropout_rng.as_deref_mut())? + x)?;
                (ln.forward(&s)?, Some((y, s)))
            }
            None => (mixed.clone(), None),
        };
        let mut z = a.clone();
        let mut ffn = Vec::with_capacity(layer.ffn.len());
        for dense in &layer.ffn {
            let f = self.taps.linear(dense, &z)?;
            z = ops::gelu_erf(&f)?;
            fwd.act.push(z.clone());
            ffn.push((f, z.clone()));
        }
        let y = self.taps.linear(&layer.ffn_out, &z)?;
        let s = (dropout(&y, p, dropout_rng)? + &a)?;
        let out = layer.ffn_ln.forward(&s)?;
        let tape = LayerTape {
            attention,
            mixed,
            output,
            a,
            ffn,
            ffn_out: (y, s),
        };
        Ok((out, tape))
    }

    /// The backward of one SA-SDP layer without dropout ([`LayerTape::attention`] and an
    /// output dense present), by hand: from its forward `tape` on `x` and ∂ℒ/∂(output)
    /// `upstream`, ∂ℒ/∂x and the gradients of the layer's parameters. Each step makes the
    /// calls candle's backward makes through the layer's graph, and the four gradients `x`
    /// receives (its residual, then v, k and q's dense layers) are summed in the order
    /// candle's backward adds them, so the values are the same bit for bit; what it skips is
    /// candle's bookkeeping (a zero-filled tensor and a sum for every node a gradient
    /// reaches). Each of the tape's tensors is dropped once read. When `terms` is given, the
    /// gradient taps' terms of the layer's linears are appended to it in forward order.
    fn sdp_backward(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        tape: LayerTape,
        upstream: &Tensor,
        terms: Option<&mut Vec<passes::TapTerm>>,
    ) -> Result<(Tensor, GradStore)> {
        let (
            MixerParams::Attention { q, k, v, ww: None },
            Some((dense, ln)),
            Some(([qo, ko, vo], attention)),
            Some((y, s1)),
        ) = (&layer.mixer, &layer.output, tape.attention, tape.output)
        else {
            bail!("internal error: a backward by hand of a layer that is not SA-SDP");
        };
        let mut by_hand = ByHand::new(terms.is_some());
        // out = ffn_ln(s2), s2 = ffn_out(z) + a, z = the GELU FFN stack on a.
        let (y2, s2) = tape.ffn_out;
        let ds2 = by_hand.layer_norm(&layer.ffn_ln, &s2, upstream)?;
        drop(s2);
        let mut ffn = tape.ffn;
        let last = ffn.last().map_or(&tape.a, |(_, z)| z);
        let mut dz = by_hand.linear(&layer.ffn_out, last, y2, &ds2)?;
        while let Some((f, z)) = ffn.pop() {
            let dense = &layer.ffn[ffn.len()];
            let df = ops::gelu_erf_grad(&f, &z, &dz)?;
            drop((z, dz));
            let input = ffn.last().map_or(&tape.a, |(_, z)| z);
            dz = by_hand.linear(dense, input, f, &df)?;
        }
        drop(tape.a);
        let da = (ds2 + dz)?;
        // a = ln(s1), s1 = dense(ctx) + x, ctx = attention(q(x), k(x), v(x)).
        let ds1 = by_hand.layer_norm(ln, &s1, &da)?;
        drop((da, s1));
        let d_ctx = by_hand.linear(dense, &tape.mixed, y, &ds1)?;
        drop(tape.mixed);
        let [dq, dk, dv] = attention_backward(&attention, &d_ctx)?;
        drop((d_ctx, attention));
        let dv_x = by_hand.linear(v, x, vo, &dv)?;
        let dk_x = by_hand.linear(k, x, ko, &dk)?;
        let dq_x = by_hand.linear(q, x, qo, &dq)?;
        let dx = (((ds1 + dv_x)? + dk_x)? + dq_x)?;
        Ok((dx, by_hand.finish(terms)))
    }

    /// One forward and one backward pass layer by layer, without dropout: the same loss
    /// (`loss_of` the last hidden state), captures and gradients as a backward of
    /// [`FlexiBert::forward`], bit for bit, faster.
    ///
    /// The forward runs each layer on its input and keeps what its backward reads: an SA-SDP
    /// layer its tape, any other its graph (from a leaf on its input, with the taps it
    /// recorded). The loss is differentiated from a leaf on the last layer's output; then,
    /// from the top, each layer is differentiated: an SA-SDP layer by hand
    /// (`FlexiBert::sdp_backward`), any other through candle's backward of its graph and
    /// `Σ out ⊙ ∂ℒ/∂out` (whose gradient with respect to `out` is `∂ℒ/∂out` exactly); its
    /// input's gradient goes to the layer below, and the embeddings below the first layer
    /// keep their small graph. The taps' terms are handed over in forward order. Nothing runs
    /// twice, and the memory is at most the whole pass's.
    pub fn forward_backward_by_layers(
        &self,
        ids: &Tensor,
        loss_of: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
        captures: bool,
    ) -> Result<Backward> {
        /// What the forward keeps of one layer for its backward.
        enum Kept {
            /// An SA-SDP layer's input and tape.
            ByHand(Tensor, LayerTape),
            /// Any other layer's input (a leaf), output (with its graph) and taps.
            Graph(Var, Tensor, Vec<Tap>),
        }
        let taps_on = self.taps.is_enabled();
        let mut params_grads = GradStore::default();
        let x0 = self.embed(self.words(ids)?, None)?;
        let bottom_taps = self.taps.take();
        let mut fwd = Forward {
            last_hidden: x0.clone(),
            act: Vec::new(),
            head: Vec::new(),
            softmax: Vec::new(),
            mixer_outputs: Vec::new(),
        };
        let mut kept = Vec::with_capacity(self.layers.len());
        let mut x = x0.detach();
        for layer in &self.layers {
            let by_hand = matches!(layer.mixer, MixerParams::Attention { ww: None, .. })
                && layer.output.is_some();
            if by_hand {
                self.taps.set_enabled(false);
                let (out, tape) = self.layer_forward(layer, &x, &mut fwd, None)?;
                kept.push(Kept::ByHand(x, tape));
                x = out.detach();
            } else {
                let input = Var::from_tensor(&x)?;
                self.taps.set_enabled(taps_on);
                let out = self.layer_forward(layer, input.as_tensor(), &mut fwd, None);
                let recorded = self.taps.take();
                let out = out?.0;
                x = out.detach();
                kept.push(Kept::Graph(input, out, recorded));
            }
        }
        self.taps.set_enabled(false);
        let captured = captures.then(|| {
            Captures {
                act: std::mem::take(&mut fwd.act),
                head: Some(std::mem::take(&mut fwd.head)),
                softmax: std::mem::take(&mut fwd.softmax),
                mixer_outputs: Some(std::mem::take(&mut fwd.mixer_outputs)),
            }
            .detached()
        });
        drop(fwd);
        // The head: the loss and the gradient of the last layer's output.
        let top = Var::from_tensor(&x)?;
        drop(x);
        let loss = loss_of(top.as_tensor())?;
        let loss_value = loss.to_scalar::<f32>()?;
        let head_grads = loss.backward()?;
        drop(loss);
        let mut upstream = head_grads
            .get(top.as_tensor())
            .context("internal error: the backward did not reach the last layer")?
            .detach();
        drop(head_grads);
        // Backward, from the top layer down.
        let mut layer_terms = Vec::with_capacity(self.layers.len());
        for (layer, kept) in self.layers.iter().zip(kept).rev() {
            let mut terms = Vec::new();
            match kept {
                Kept::ByHand(input, tape) => {
                    let (dx, grads) = self.sdp_backward(
                        layer,
                        &input,
                        tape,
                        &upstream,
                        taps_on.then_some(&mut terms),
                    )?;
                    self.params.add_grads(&mut params_grads, &grads)?;
                    upstream = dx;
                }
                Kept::Graph(input, out, recorded) => {
                    let grads = (out * &upstream)?.sum_all()?.backward()?;
                    terms = passes::tap_terms(&recorded, &grads)?;
                    drop(recorded);
                    self.params.add_grads(&mut params_grads, &grads)?;
                    upstream = grads
                        .get(input.as_tensor())
                        .context("internal error: the backward did not reach a layer's input")?
                        .detach();
                }
            }
            layer_terms.push(terms);
        }
        // The embeddings.
        let grads = (x0 * &upstream)?.sum_all()?.backward()?;
        let mut terms = passes::tap_terms(&bottom_taps, &grads)?;
        drop(bottom_taps);
        self.params.add_grads(&mut params_grads, &grads)?;
        drop(grads);
        terms.extend(layer_terms.into_iter().rev().flatten());
        self.taps.set_enabled(taps_on);
        Ok(Backward {
            loss: loss_value,
            captures: captured,
            grads: params_grads,
            taps: taps_on.then_some(terms),
        })
    }

    fn mixer_forward(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        fwd: &mut Forward,
        mut dropout_rng: Option<&mut Rng>,
    ) -> candle_core::Result<(Tensor, Option<SdpTape>)> {
        let p = self.config.dropout;
        let heads = layer.heads;
        match &layer.mixer {
            MixerParams::Attention { q, k, v, ww } => {
                let qo = self.taps.linear(q, x)?;
                fwd.head.push(qo.clone());
                fwd.mixer_outputs.push(qo.clone());
                let query = match ww {
                    Some(ww) => {
                        let w = self.taps.linear(ww, &qo)?;
                        fwd.mixer_outputs.push(w.clone());
                        w
                    }
                    None => qo.clone(),
                };
                let ko = self.taps.linear(k, x)?;
                let vo = self.taps.linear(v, x)?;
                fwd.mixer_outputs.push(ko.clone());
                fwd.mixer_outputs.push(vo.clone());
                let att = attention(&query, &ko, &vo, heads, p, dropout_rng.as_deref_mut())?;
                fwd.softmax.push(att.probs.clone());
                let ctx = att.ctx.clone();
                // The tape of an SA-SDP mixer (SA-WMA's query is not q's output).
                let tape = ww.is_none().then_some(([qo, ko, vo], att));
                Ok((ctx, tape))
            }
            MixerParams::Transform { input, dct } => {
                let u = self.taps.linear(input, x)?;
                fwd.head.push(u.clone());
                fwd.mixer_outputs.push(u.clone());
                let (b, t, h) = u.dims3()?;
                let d = h / heads;
                // B×T×h×d → B×h×T×d
                let u = u.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?;
                let f = if *dct { dct2(&u)? } else { dft2_real(&u)? };
                fwd.softmax
                    .push(candle_nn::ops::softmax(&f.detach(), D::Minus1)?);
                Ok((f.transpose(1, 2)?.reshape((b, t, h))?, None))
            }
            MixerParams::Dsc {
                q,
                k,
                v,
                depthwise,
                pointwise,
                sep_bias,
                kernel_layer,
                conv_out,
                kernel,
            } => {
                let (b, t, h) = x.dims3()?;
                let heads_a = (heads / 2).max(1);
                let d_a = h / heads;
                let a = heads_a * d_a;
                let pad = (kernel - 1) / 2;
                let qo = self.taps.linear(q, x)?;
                let ko = self.taps.linear(k, x)?;
                let vo = self.taps.linear(v, x)?;
                fwd.head.push(qo.clone());
                fwd.mixer_outputs
                    .extend([qo.clone(), ko.clone(), vo.clone()]);
                // Span-aware key: depthwise conv over T, then pointwise to A channels.
                let xpad = x.pad_with_zeros(1, pad, pad)?;
                let mut kd = Tensor::zeros((b, t, h), x.dtype(), x.device())?;
                for u in 0..*kernel {
                    let tap = depthwise.as_tensor().narrow(1, u, 1)?.reshape(h)?;
                    kd = (kd + xpad.narrow(1, u, t)?.broadcast_mul(&tap)?)?;
                }
                let ks = kd
                    .reshape((b * t, h))?
                    .matmul(&pointwise.as_tensor().t()?)?
                    .broadcast_add(sep_bias.as_tensor())?
                    .reshape((b, t, a))?;
                let gate = (ks * &qo)?;
                let cw = self
                    .taps
                    .linear(kernel_layer, &gate)?
                    .reshape((b, t, heads_a, *kernel))?;
                let cw = ops::softmax_last(&cw, 1.0)?;
                let o = self.taps.linear(conv_out, x)?;
                let opad = o.pad_with_zeros(1, pad, pad)?;
                let mut conv = Tensor::zeros((b, t, heads_a, d_a), x.dtype(), x.device())?;
                for u in 0..*kernel {
                    let window = opad.narrow(1, u, t)?.reshape((b, t, heads_a, d_a))?;
                    conv = (conv + window.broadcast_mul(&cw.narrow(3, u, 1)?)?)?;
                }
                let conv = conv.reshape((b, t, a))?;
                let att = attention(&qo, &ko, &vo, heads_a, p, dropout_rng)?;
                fwd.softmax.push(att.probs);
                Ok((Tensor::cat(&[&att.ctx, &conv], 2)?, None))
            }
        }
    }
}

/// What one encoder layer's forward computed besides its output
/// ([`FlexiBert::layer_forward`]): what the backward by hand of an SA-SDP layer reads
/// ([`FlexiBert::sdp_backward`]).
struct LayerTape {
    /// q's, k's and v's outputs and the attention on them (SA-SDP only).
    attention: Option<SdpTape>,
    /// The mixer's output.
    mixed: Tensor,
    /// The output dense's output and the sum its LayerNorm normalises (SA and DSC).
    output: Option<(Tensor, Tensor)>,
    /// The FFN's input.
    a: Tensor,
    /// Each FFN dense's output and its GELU.
    ffn: Vec<(Tensor, Tensor)>,
    /// The FFN output dense's output and the sum its LayerNorm normalises.
    ffn_out: (Tensor, Tensor),
}

/// An SA-SDP mixer's part of a [`LayerTape`]: q's, k's and v's outputs (B × T × width each)
/// and the attention on them.
type SdpTape = ([Tensor; 3], Attention);

/// One multi-head scaled dot-product attention and what its backward reads.
struct Attention {
    /// The merged context, B × T × width.
    ctx: Tensor,
    /// The probabilities before dropout, B × h × T × T.
    probs: Tensor,
    /// q, k and v with their heads first, B × h × T × d each: views of their B × T × width
    /// arrays, not copies.
    heads: [Tensor; 3],
}

/// Multi-head scaled dot-product attention without mask.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    p: f64,
    dropout_rng: Option<&mut Rng>,
) -> candle_core::Result<Attention> {
    let (b, t, w) = q.dims3()?;
    let d = w / heads;
    // Views, no copies: the products read any strides.
    let split = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.reshape((b, t, heads, d))?.transpose(1, 2)
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let scores = ops::batched_matmul(&qh, &kh.t()?)?;
    let probs = ops::softmax_last(&scores, 1.0 / (d as f32).sqrt())?;
    let dropped = dropout(&probs, p, dropout_rng)?;
    let ctx = ops::batched_matmul(&dropped, &vh)?
        .transpose(1, 2)?
        .reshape((b, t, w))?;
    Ok(Attention {
        ctx,
        probs,
        heads: [qh, kh, vh],
    })
}

/// ∂ℒ/∂q, ∂ℒ/∂k and ∂ℒ/∂v (B × T × width each) of [`attention`] without dropout, from
/// ∂ℒ/∂(context) `d_ctx`: [`ops::attention_grads`] on the heads, then back through each split.
fn attention_backward(att: &Attention, d_ctx: &Tensor) -> candle_core::Result<[Tensor; 3]> {
    let (b, t, w) = d_ctx.dims3()?;
    let [qh, kh, vh] = &att.heads;
    let (_, heads, _, d) = qh.dims4()?;
    // Through the merge of the heads: B × T × width → B × h × T × d.
    let g = d_ctx.reshape((b, t, heads, d))?.transpose(1, 2)?;
    let [dqh, dkh, dvh] =
        ops::attention_grads([qh, kh, vh], &att.probs, &g, 1.0 / (d as f32).sqrt())?;
    drop(g);
    // Through each split of the heads.
    let merge = |x: Tensor| x.transpose(1, 2)?.contiguous()?.reshape((b, t, w));
    Ok([merge(dqh)?, merge(dkh)?, merge(dvh)?])
}

/// Applies `m` (n × n, as `out[a] = Σ_i m[a,i] x[i]`) along axis 2 (T) and `md` along axis 3
/// (d) of a B × h × T × d tensor.
fn separable(u: &Tensor, mt: &Tensor, md: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = u.dims4()?;
    // Along d: rows (B·h·T) × d times mdᵀ.
    let y = u
        .reshape((b * h * t, d))?
        .matmul(&md.t()?)?
        .reshape((b, h, t, d))?;
    // Along T: move T last.
    let y = y.transpose(2, 3)?.contiguous()?.reshape((b * h * d, t))?;
    let y = y.matmul(&mt.t()?)?.reshape((b, h, d, t))?;
    y.transpose(2, 3)?.contiguous()
}

fn matrix(
    n: usize,
    f: impl Fn(usize, usize) -> f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = (0..n * n).map(|i| f(i / n, i % n) as f32).collect();
    Tensor::from_vec(data, (n, n), device)
}

/// Real part of the 2-D DFT over (T, d) of a B × h × T × d tensor:
/// `Σ_t Σ_j U[t,j] cos(2π(a·t/T + c·j/d))` = C_T U C_d − S_T U S_d.
pub fn dft2_real(u: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, t, d) = u.dims4()?;
    let dev = u.device();
    let tau = std::f64::consts::TAU;
    let ct = matrix(t, |a, i| (tau * ((a * i) % t) as f64 / t as f64).cos(), dev)?;
    let st = matrix(t, |a, i| (tau * ((a * i) % t) as f64 / t as f64).sin(), dev)?;
    let cd = matrix(d, |a, i| (tau * ((a * i) % d) as f64 / d as f64).cos(), dev)?;
    let sd = matrix(d, |a, i| (tau * ((a * i) % d) as f64 / d as f64).sin(), dev)?;
    separable(u, &ct, &cd)? - separable(u, &st, &sd)?
}

/// Unnormalised 2-D DCT-II over (T, d) (scipy `norm=None`, factor 2 per axis):
/// `4 Σ_t Σ_j U[t,j] cos(πa(2t+1)/2T) cos(πc(2j+1)/2d)`.
pub fn dct2(u: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, t, d) = u.dims4()?;
    let dev = u.device();
    let pi = std::f64::consts::PI;
    let at = matrix(
        t,
        |a, i| 2.0 * (pi * a as f64 * (2 * i + 1) as f64 / (2 * t) as f64).cos(),
        dev,
    )?;
    let ad = matrix(
        d,
        |a, i| 2.0 * (pi * a as f64 * (2 * i + 1) as f64 / (2 * d) as f64).cos(),
        dev,
    )?;
    separable(u, &at, &ad)
}

/// Vocabulary size (BERT uncased WordPiece; token ids must stay below it).
pub const VOCAB: u32 = 30522;
/// Default probe batch rows (proxies that are means do not depend on it; sums scale with it).
pub const DEFAULT_BATCH: usize = 2;
/// Default tokens per row. The reference used 512; 128 ranks architectures as well (every
/// baseline within ±0.01 ρ, the search better) at a quarter of the probe cost, see
/// results/README.md.
pub const DEFAULT_SEQ_LEN: usize = 128;
/// The most tokens per row a probe accepts: the size of the position table.
pub const MAX_SEQ_LEN: usize = 512;

/// The mixer linears: what `head_importance` and the `weight` and `grad` inputs read.
const MIXER: &[LinearRole] = &[LinearRole::Mixer];

/// How the proxies read a FlexiBERT probe (spec §3.2, clean semantics): `act` holds every GELU
/// output (all of them are FFN activations, positive where the pre-activations are),
/// `synaptic_diversity` reads the mixer-block linears (mixer linears and output dense),
/// `synaptic_saliency` the FFN linears, `head_importance` the mixer linears,
/// `activation_distance` is the mean over the GELU outputs, Fisher weights a layer by its
/// input width, and there are no decoder parameters.
pub static SEMANTICS: Semantics = Semantics {
    ffn_activations: (0, 1),
    ffn_activation: probe::as_captured,
    activation_distance: Aggregate::Mean,
    diversity: &[LinearRole::Mixer, LinearRole::MixerOutput],
    saliency: &[LinearRole::FfnIn, LinearRole::FfnHidden, LinearRole::FfnOut],
    head_importance: MIXER,
    expression_linears: MIXER,
    fisher_width: FisherWidth::Input,
    decoder_groups: &[],
    synflow_reaches_every_linear: true,
};

/// The columns of the benchmark's reference proxy table ([`REFERENCE_FILE`]) that lpzero's
/// proxies are checked against (the clean "Normalized" column for activation distance; the
/// reference's "Jacobian Score Normalized" is the cosine variant).
static REFERENCE: Reference = Reference {
    file: REFERENCE_FILE,
    columns: &[
        ("params", "Number of Parameters"),
        ("synaptic_diversity", "Synaptic Diversity"),
        ("synaptic_saliency", "Synaptic Saliency"),
        ("activation_distance", "Activation Distance Normalized"),
        ("jacobian_score", "Jacobian Score"),
        ("jacobian_cosine", "Jacobian Score Normalized"),
        ("head_importance", "Head Importance"),
        ("head_confidence", "Head Confidence"),
        ("head_softmax_confidence", "Head Softmax Confidence"),
    ],
};

/// The synthetic BERT batch of spec §2.2: ids uniform in [999, 30521], `[CLS]` (101) first
/// and `[SEP]` (102) last in every row.
pub fn synthetic_batch(rows: usize, cols: usize, seed: u64) -> Result<Batch> {
    if rows == 0 || !(2..=MAX_SEQ_LEN).contains(&cols) {
        bail!(
            "batch rows must be at least 1 and tokens per row within 2..={MAX_SEQ_LEN} (the \
             position table), got {rows} × {cols}"
        );
    }
    let mut rng = Rng::derive(seed, &[0]);
    let mut ids = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        for c in 0..cols {
            ids.push(match c {
                0 => 101,
                c if c == cols - 1 => 102,
                _ => rng.range(999, VOCAB as usize) as u32,
            });
        }
    }
    Ok(Batch { ids, rows, cols })
}

/// The FlexiBERT backward signal on the last hidden state `y`: `Σ y` (faithful) or `Σ y ⊙ r`
/// with the seeded Gaussian `r` (projection); `positive` uses `|r|` (Synflow's readout, whose
/// network has only non-negative weights).
fn signal(
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

/// The FlexiBERT family: 500 FlexiBERT encoders with GLUE scores.
///
/// Probe inputs: `act` is every GELU output, `head` the first projection of each mixer (q for
/// SA and DSC, the input dense for LT), `softmax` the softmax output of each mixer, `grad`
/// and `weight` the mixer linears in module order. The backward signal is chosen by
/// [`ProbeOptions::grad_signal`]; [`ProbeOptions::sizes`] chooses the sizes.
pub struct FlexibertFamily;

/// The FlexiBERT family, as registered in [`crate::models::FAMILIES`].
pub static FAMILY: FlexibertFamily = FlexibertFamily;

/// The FlexiBERT family as data.
static INFO: FamilyInfo = FamilyInfo {
    kind: KIND,
    default_batch_shape: (DEFAULT_BATCH, DEFAULT_SEQ_LEN),
    seq_len_range: 2..=MAX_SEQ_LEN,
    option_names: &["grad_signal", "sizes"],
    semantics: &SEMANTICS,
    genotypes: &["lpzero_bert", "lpzero_csv_bert"],
    reference: Some(&REFERENCE),
    design_space: Some(&crate::bench::flexibert::space::SPACE),
};

impl Family for FlexibertFamily {
    fn info(&self) -> &'static FamilyInfo {
        &INFO
    }

    /// `batch × seq_len` ids: the corpus's first ids, or [`synthetic_batch`].
    fn build_batch(&self, opts: &ProbeOptions) -> Result<Batch> {
        match &opts.corpus {
            Some(path) => Batch::from_corpus(path, opts.batch, opts.seq_len, VOCAB),
            None => synthetic_batch(opts.batch, opts.seq_len, opts.seed),
        }
    }

    fn probe(
        &self,
        arch: &Arch,
        index: usize,
        opts: &ProbeOptions,
        batch: &Batch,
    ) -> Result<Probe> {
        let record = arch.of::<Record>()?;
        let config = Config::from_record(record, opts.sizes)?;
        probe::run(record.id.to_string(), index, opts, &SEMANTICS, |rng| {
            Probed::build(&config, rng, opts, batch)
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
        let config = Config::from_record(arch.of::<Record>()?, opts.sizes)?;
        probe::time_forward(index, opts, repeats, |rng| {
            Probed::build(&config, rng, opts, batch)
        })
    }

    /// The total only, counted from the tensors of a shapes-only model.
    fn count_params(&self, arch: &Arch, opts: &ProbeOptions) -> Result<Counted> {
        let config = Config::from_record(arch.of::<Record>()?, opts.sizes)?;
        Ok(Counted {
            total: FlexiBert::shapes_only(&config)?.network().params.count(),
            columns: Vec::new(),
        })
    }

    fn size(&self, arch: &Arch, opts: &ProbeOptions) -> Result<ModelSize> {
        let config = Config::from_record(arch.of::<Record>()?, opts.sizes)?;
        Ok(ModelSize {
            parameters: config.parameter_count(),
            activation_floats_per_token: config.activation_floats_per_token(opts.seq_len),
            by_blocks_floats_per_token: None,
            input_floats: None,
        })
    }
}

/// An encoder ready to be probed on one batch.
struct Probed<'a> {
    model: FlexiBert,
    ids: Tensor,
    opts: &'a ProbeOptions,
    cols: usize,
}

impl<'a> Probed<'a> {
    /// The model of `config` from the weight stream `rng`, with `batch` on the CPU.
    fn build(
        config: &Config,
        rng: &mut Rng,
        opts: &'a ProbeOptions,
        batch: &Batch,
    ) -> Result<Self> {
        let device = Device::Cpu;
        Ok(Probed {
            // The probe reads the word table only through this batch's lookups.
            model: FlexiBert::build(config, Params::reading_rows(&batch.ids), rng, &device)?,
            ids: batch.tensor(&device)?,
            opts,
            cols: batch.cols,
        })
    }
}

impl ProbeModel for Probed<'_> {
    fn network(&self) -> Network<'_> {
        self.model.network()
    }

    fn forward(&self, dropout: Option<&mut Rng>) -> candle_core::Result<Pass> {
        let f = self.model.forward(&self.ids, dropout)?;
        let hidden = self.model.config().hidden_size;
        Ok(Pass {
            loss: signal(&f.last_hidden, self.opts, hidden, false)?,
            captures: Captures {
                act: f.act,
                head: Some(f.head),
                softmax: f.softmax,
                mixer_outputs: Some(f.mixer_outputs),
            },
        })
    }

    /// Layer by layer ([`FlexiBert::forward_backward_by_layers`]) unless the whole pass is
    /// asked for or dropout is on.
    fn forward_backward(
        &self,
        dropout: Option<&mut Rng>,
        mode: PassMode,
        captures: bool,
    ) -> Result<Backward> {
        match (mode, dropout) {
            (PassMode::ByBlocks, None) => {
                let hidden = self.model.config().hidden_size;
                self.model.forward_backward_by_layers(
                    &self.ids,
                    |top| signal(top, self.opts, hidden, false),
                    captures,
                )
            }
            (_, dropout) => probe::whole_pass(self, dropout, captures),
        }
    }

    /// The positive projection signal of the encoder on an all-ones row of word embeddings.
    fn readout(&self) -> candle_core::Result<Tensor> {
        let config = self.model.config();
        let (t, e) = (self.cols, config.embedding_size);
        let ones = Tensor::ones((1, t, e), candle_core::DType::F32, &Device::Cpu)?;
        let f = self.model.forward_words(ones, None)?;
        signal(&f.last_hidden, self.opts, config.hidden_size, true)
    }
}

/// Median seconds of one forward + backward of the calibration encoder (4 SA-SDP layers with
/// 4 heads, B = 32, T = 128, H = 256, FFN 1024, vocabulary 30 522) over `reps` runs, for
/// comparison with other engines on the same machine.
pub fn calibration_seconds(reps: usize) -> Result<f64> {
    let layer = Layer {
        mixer: Mixer::Sdp,
        heads: 4,
        ffn_width: 1024,
        ffn_layers: 1,
    };
    let arch = Arch::new(Record {
        id: 0,
        hidden_size: 256,
        layers: vec![layer; 4],
        scores: Default::default(),
    });
    let opts = ProbeOptions {
        batch: 32,
        seq_len: 128,
        ..FAMILY.probe_options()
    };
    let batch = FAMILY.batch(&opts)?;
    // One probe at a time, on every core the engine has.
    let _lease = crate::nn::cores::Lease::new(crate::nn::cores::engine_cores());
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..reps.max(1) {
        times.push(FAMILY.probe(&arch, 0, &opts, &batch)?.seconds);
    }
    Ok(crate::stats::median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    fn test_vector() -> Tensor {
        let u = [
            1.0f32, 2.0, 3.0, 4.0, 0.0, -1.0, 2.0, 1.0, 3.0, 0.0, 0.0, 1.0,
        ];
        Tensor::from_vec(u.to_vec(), (1, 1, 3, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn parameter_count_from_shapes_equals_the_built_model() {
        let layer = |mixer, heads, ffn_layers| Layer {
            mixer,
            heads,
            ffn_width: 96,
            ffn_layers,
        };
        let record = Record {
            id: 0,
            hidden_size: 64,
            layers: vec![
                layer(Mixer::Sdp, 4, 1),
                layer(Mixer::Wma, 2, 3),
                layer(Mixer::Dft, 4, 2),
                layer(Mixer::Dct, 2, 1),
                layer(Mixer::Dsc { kernel: 9 }, 4, 1),
                layer(Mixer::Dsc { kernel: 5 }, 2, 3),
            ],
            scores: Default::default(),
        };
        for sizes in [SizeMode::Faithful, SizeMode::Intended] {
            let config = Config::from_record(&record, sizes).unwrap();
            let built = FlexiBert::shapes_only(&config)
                .unwrap()
                .network()
                .params
                .count();
            assert_eq!(config.parameter_count(), built as f64, "{sizes:?}");
            assert!(config.activation_floats_per_token(16) > 0.0);
        }
    }

    #[test]
    fn word_rows_drawn_for_one_batch_give_the_same_model_and_stream() {
        let layer = |mixer| Layer {
            mixer,
            heads: 2,
            ffn_width: 48,
            ffn_layers: 1,
        };
        let record = Record {
            id: 0,
            hidden_size: 32,
            layers: vec![layer(Mixer::Sdp), layer(Mixer::Dsc { kernel: 5 })],
            scores: Default::default(),
        };
        let config = Config::from_record(&record, SizeMode::Intended).unwrap();
        let e = config.embedding_size;
        let ids = [5u32, 17, 0, 17, 30_000, 2];
        let mut full_rng = Rng::new(3);
        let full = FlexiBert::new(&config, &mut full_rng, &Device::Cpu).unwrap();
        let mut lazy_rng = Rng::new(3);
        let lazy = FlexiBert::build(
            &config,
            Params::reading_rows(&ids),
            &mut lazy_rng,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(full_rng, lazy_rng, "the weight stream must advance alike");
        let values = |v: &Var| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (fp, lp) = (full.network().params, lazy.network().params);
        assert_eq!(fp.vars().len(), lp.vars().len());
        for ((name, f), (lname, l)) in fp.vars().iter().zip(lp.vars()) {
            assert_eq!(name, lname);
            let (f, l) = (values(f), values(l));
            if name != "embeddings.word" {
                assert_eq!(f, l, "{name}");
                continue;
            }
            for (row, (fr, lr)) in f.chunks(e).zip(l.chunks(e)).enumerate() {
                if row == 0 {
                    assert!(fr.iter().chain(lr).all(|&x| x == 0.0), "padding row");
                } else if ids.contains(&(row as u32)) {
                    assert_eq!(fr, lr, "row {row} is read and must be drawn");
                } else {
                    assert!(lr.iter().all(|&x| x == 0.0), "row {row} is not read");
                }
            }
        }
        let ids = Tensor::from_vec(ids.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let out = |m: &FlexiBert| {
            let f = m.forward(&ids, None).unwrap();
            f.last_hidden
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (fo, lo) = (out(&full), out(&lazy));
        assert!(fo.iter().zip(&lo).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn dft_matches_spec_test_vector() {
        let f = dft2_real(&test_vector())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = [
            16.0, -1.0, 2.0, -1.0, 7.0, -1.6340, -4.0, -3.3660, 7.0, -3.3660, -4.0, -1.6340,
        ];
        assert!(close(&f, &expected, 1e-4), "{f:?}");
    }

    #[test]
    fn dct_matches_spec_test_vector() {
        let f = dct2(&test_vector())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = [
            64.0, -13.5140, 11.3137, 11.7206, 20.7846, -17.3277, -9.7980, -3.4279, 20.0, 5.6746,
            5.6569, -8.4734,
        ];
        assert!(close(&f, &expected, 1e-3), "{f:?}");
    }

    #[test]
    fn gelu_is_the_erf_form() {
        let x = Tensor::new(&[-2.0f32, -0.5, 0.5, 2.0], &Device::Cpu).unwrap();
        let y = x.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            close(&y, &[-0.0455, -0.154269, 0.345731, 1.9545], 1e-5),
            "{y:?}"
        );
    }

    fn every_mixer() -> Record {
        let layer = |mixer, heads, ffn_layers| Layer {
            mixer,
            heads,
            ffn_width: 64,
            ffn_layers,
        };
        Record {
            id: 0,
            hidden_size: 64,
            layers: vec![
                layer(Mixer::Sdp, 4, 1),
                layer(Mixer::Wma, 2, 2),
                layer(Mixer::Dsc { kernel: 3 }, 4, 1),
                layer(Mixer::Dft, 2, 1),
                layer(Mixer::Dsc { kernel: 5 }, 2, 3),
                layer(Mixer::Dct, 4, 1),
                layer(Mixer::Sdp, 2, 1),
            ],
            scores: Default::default(),
        }
    }

    /// A probe run layer by layer (the default: SA-SDP layers differentiated by hand, the
    /// others through candle's backward of their own graph) holds the same values, bit for
    /// bit, as the whole pass: every mixer, with and without the extra passes (taps, GraSP's
    /// second pass, Synflow), both backward signals and both sizes (the faithful sizes add
    /// the embedding projection); with dropout it runs whole.
    #[test]
    fn a_pass_by_layers_gives_the_whole_pass_values_bit_for_bit() {
        let mut sdp = every_mixer();
        sdp.layers.retain(|l| l.mixer == Mixer::Sdp);
        sdp.layers[1].ffn_layers = 3;
        for record in [every_mixer(), sdp] {
            let arch = Arch::new(record);
            for (extra_passes, grad_signal, sizes) in [
                (false, GradSignal::Projection, SizeMode::Intended),
                (true, GradSignal::Projection, SizeMode::Intended),
                (true, GradSignal::Faithful, SizeMode::Faithful),
            ] {
                let whole = ProbeOptions {
                    batch: 2,
                    seq_len: 8,
                    extra_passes,
                    grad_signal,
                    sizes,
                    pass: PassMode::Whole,
                    ..FAMILY.probe_options()
                };
                let by_layers = ProbeOptions {
                    pass: PassMode::ByBlocks,
                    ..whole.clone()
                };
                let batch = FAMILY.batch(&whole).unwrap();
                let a = FAMILY.probe(&arch, 3, &whole, &batch).unwrap();
                let b = FAMILY.probe(&arch, 3, &by_layers, &batch).unwrap();
                assert_eq!(b.extras.is_some(), extra_passes);
                let (a, b) = (a.value_bits(), b.value_bits());
                assert_eq!(a.len(), b.len());
                let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
                assert_eq!(
                    differing, 0,
                    "extra passes {extra_passes}, {grad_signal:?}, {sizes:?}"
                );
            }
        }
        let arch = Arch::new(every_mixer());
        let dropout = ProbeOptions {
            batch: 2,
            seq_len: 8,
            dropout: true,
            pass: PassMode::Whole,
            ..FAMILY.probe_options()
        };
        let by_layers = ProbeOptions {
            pass: PassMode::ByBlocks,
            ..dropout.clone()
        };
        let batch = FAMILY.batch(&dropout).unwrap();
        assert_eq!(
            FAMILY
                .probe(&arch, 1, &dropout, &batch)
                .unwrap()
                .value_bits(),
            FAMILY
                .probe(&arch, 1, &by_layers, &batch)
                .unwrap()
                .value_bits()
        );
    }

    /// Every trainable tensor receives a non-zero gradient from the projection signal, except
    /// key biases, which softmax attention makes exactly gradient-free (shift invariance).
    /// Guards against candle ops without backward silently cutting the graph.
    #[test]
    fn every_parameter_gets_a_gradient() {
        let config = Config::from_record(&every_mixer(), SizeMode::Intended).unwrap();
        let model = FlexiBert::new(&config, &mut Rng::new(5), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(
            (0..2 * 12)
                .map(|i| 1000 + 37 * i as u32)
                .collect::<Vec<_>>(),
            (2, 12),
            &Device::Cpu,
        )
        .unwrap();
        let fwd = model.forward(&ids, Some(&mut Rng::new(1))).unwrap();
        let r = Tensor::randn(0f32, 1.0, fwd.last_hidden.dims(), &Device::Cpu).unwrap();
        let grads = (&fwd.last_hidden * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut missing = Vec::new();
        for (name, var) in model.network().params.vars() {
            let norm = crate::nn::squared_grad(&grads, var.as_tensor());
            let key_bias = name.ends_with("key.bias");
            if name == "embeddings.word" {
                // By design: the forward reads a detached word table (nothing reads its gradient).
                assert_eq!(norm, 0.0, "{name}: the word table must get no gradient");
            } else if key_bias {
                assert!(
                    norm < 1e-12,
                    "{name}: key bias gradient should vanish, got {norm}"
                );
            } else if norm <= 0.0 {
                missing.push(name.clone());
            }
        }
        assert!(missing.is_empty(), "no gradient reached: {missing:?}");
        assert_eq!(fwd.act.len(), 1 + 2 + 1 + 1 + 3 + 1 + 1);
        assert_eq!(fwd.head.len(), 7);
        assert_eq!(fwd.softmax.len(), 7);
        // q,k,v | q,Ww,k,v | q,k,v | in | q,k,v | in | q,k,v
        assert_eq!(fwd.mixer_outputs.len(), 3 + 4 + 3 + 1 + 3 + 1 + 3);
    }

    /// The reference's backward signal (sum of the last hidden state) is constant after the
    /// final LayerNorm, so its gradients are rounding noise far below the projection signal's.
    #[test]
    fn faithful_signal_is_degenerate() {
        let config = Config::from_record(&every_mixer(), SizeMode::Intended).unwrap();
        let model = FlexiBert::new(&config, &mut Rng::new(5), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(
            (0..24).map(|i| 1000 + 37 * i as u32).collect::<Vec<_>>(),
            (2, 12),
            &Device::Cpu,
        )
        .unwrap();
        let fwd = model.forward(&ids, None).unwrap();
        let total = |loss: Tensor| -> f32 {
            let grads = loss.backward().unwrap();
            let w = model.linears()[1].weight.as_tensor().clone();
            grads
                .get(&w)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let faithful = total(fwd.last_hidden.sum_all().unwrap());
        let r = Tensor::randn(0f32, 1.0, fwd.last_hidden.dims(), &Device::Cpu).unwrap();
        let projected = total((&fwd.last_hidden * r).unwrap().sum_all().unwrap());
        assert!(
            faithful < projected * 1e-6,
            "faithful {faithful} vs projection {projected}"
        );
    }

    #[test]
    fn config_rejects_inconsistent_heads() {
        let mut rec = every_mixer();
        rec.layers[0].heads = 3;
        let err = Config::from_record(&rec, SizeMode::Faithful)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record id 0") && err.contains("layer 0"),
            "{err}"
        );
    }
}
