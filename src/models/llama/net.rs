//! The Llama blocks, as differentiable compositions of candle primitives: RMSNorm, RoPE
//! (rotating halves, as Hugging Face does), grouped-query causal attention, the SwiGLU FFN, one
//! decoder layer, and the next-token loss. They take plain tensors (a [`candle_core::Var`]'s
//! tensor when gradients are wanted), so the same code serves the forward-only and the
//! recomputing backward passes of [`super::stream`], and the whole-network graph of
//! [`super::graph`] (which taps the linears' outputs for the extra passes).

use candle_core::{DType, Device, Tensor, D};

use crate::nn::{ops, LinearRole, TapSite, Taps};

/// The role each of a layer's seven linears plays for the proxies, in the order of
/// [`LayerWeights::linears`] (q, k, v are mixer projections, o the mixer's output dense, gate
/// and up the FFN input, down its output).
pub const ROLES: [LinearRole; 7] = [
    LinearRole::Mixer,
    LinearRole::Mixer,
    LinearRole::Mixer,
    LinearRole::MixerOutput,
    LinearRole::FfnIn,
    LinearRole::FfnIn,
    LinearRole::FfnOut,
];

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · w` (no mean subtraction, no bias).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// The RoPE angles of positions `0..t` for heads of size `head_dim`: `cos` and `sin` of
/// `p · theta^(−2i/head_dim)`, each `t × head_dim/2`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The tables for `t` positions.
    pub fn new(
        t: usize,
        head_dim: usize,
        theta: f64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for i in 0..half {
                let angle = p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (t, half), device)?,
            sin: Tensor::from_vec(sin, (t, half), device)?,
        })
    }

    /// Rotates `x` (`B × heads × T × head_dim`): with halves `x₁`, `x₂`, the result is
    /// `[x₁ cos − x₂ sin, x₂ cos + x₁ sin]`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let t = x.dim(D::Minus2)?;
        let half = d / 2;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[&a, &b], D::Minus1)
    }
}

/// `x Wᵀ` over the last axis of `x` for an out × in weight `w`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, w.dim(1)?))?.matmul(&w.t()?)?;
    *dims.last_mut().expect("x has an axis") = w.dim(0)?;
    y.reshape(dims)
}

/// SwiGLU: `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.silu()?.mul(up)
}

/// The tensors of one decoder layer (already sliced to a sub-network), out × in.
pub struct LayerWeights {
    /// `input_layernorm` scale (H).
    pub attn_norm: Tensor,
    /// `q_proj` (heads·d × H).
    pub q: Tensor,
    /// `k_proj` (kv_heads·d × H).
    pub k: Tensor,
    /// `v_proj` (kv_heads·d × H).
    pub v: Tensor,
    /// `o_proj` (H × heads·d).
    pub o: Tensor,
    /// `post_attention_layernorm` scale (H).
    pub ffn_norm: Tensor,
    /// `gate_proj` (width × H).
    pub gate: Tensor,
    /// `up_proj` (width × H).
    pub up: Tensor,
    /// `down_proj` (H × width).
    pub down: Tensor,
}

impl LayerWeights {
    /// The seven linears in module order (q, k, v, o, gate, up, down) with their names.
    pub fn linears(&self) -> [(&'static str, &Tensor); 7] {
        [
            ("self_attn.q_proj", &self.q),
            ("self_attn.k_proj", &self.k),
            ("self_attn.v_proj", &self.v),
            ("self_attn.o_proj", &self.o),
            ("mlp.gate_proj", &self.gate),
            ("mlp.up_proj", &self.up),
            ("mlp.down_proj", &self.down),
        ]
    }
}

/// One decoder layer's output and what a probe captures from it.
pub struct LayerOut {
    /// The layer's output (B × T × H).
    pub y: Tensor,
    /// The SwiGLU product `silu(gate) · up` (B × T × width): the FFN activation.
    pub act: Tensor,
    /// The `q_proj` output (B × T × heads·d).
    pub q: Tensor,
    /// The `k_proj` output (B × T × kv_heads·d).
    pub k: Tensor,
    /// The `v_proj` output (B × T × kv_heads·d).
    pub v: Tensor,
    /// The attention probabilities (B × heads × T × T).
    pub probs: Tensor,
}

/// Causal grouped-query attention of `q` (`B × T × heads·d`) over `k`, `v`
/// (`B × T × kv_heads·d`): each key/value head serves `heads / kv_heads` consecutive query
/// heads; RoPE on q and k; softmax of `q·kᵀ / sqrt(d)`. Returns the mixed values
/// (`B × T × heads·d`) and the probabilities.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (heads, kv_heads, d): (usize, usize, usize),
    rope: &Rope,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, t, _) = q.dims3()?;
    let split = |x: &Tensor, h: usize| x.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous();
    let q = rope.apply(&split(q, heads)?)?;
    let k = rope.apply(&split(k, kv_heads)?)?;
    let v = split(v, kv_heads)?;
    let group = heads / kv_heads;
    let repeat = |x: Tensor| -> candle_core::Result<Tensor> {
        if group == 1 {
            return Ok(x);
        }
        x.unsqueeze(2)?
            .broadcast_as((b, kv_heads, group, t, d))?
            .reshape((b, heads, t, d))
    };
    let k = repeat(k)?;
    let v = repeat(v)?.contiguous()?;
    let scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
    let probs = ops::causal_softmax(&scores.contiguous()?, 1.0 / (d as f32).sqrt())?;
    let mixed = probs.matmul(&v)?;
    let mixed = mixed.transpose(1, 2)?.reshape((b, t, heads * d))?;
    Ok((mixed, probs))
}

/// One decoder layer: `x + o(attn(norm₁(x)))`, then `+ down(swiglu(gate(h), up(h)))` with
/// `h = norm₂(x)`. `heads`/`kv_heads` are the sub-network's, `d` the head size.
pub fn layer(
    x: &Tensor,
    w: &LayerWeights,
    shape: (usize, usize, usize),
    eps: f64,
    rope: &Rope,
) -> candle_core::Result<LayerOut> {
    decoder_layer(x, w, shape, eps, rope, None)
}

/// [`layer`] with each linear's output passed through `taps` (a gradient tap when they are
/// on, [`TapSite::Linear`] with the linear's role from [`ROLES`]): what Fisher and attention
/// confidence read ([`crate::probe::passes::tap_terms`]).
pub fn tapped_layer(
    x: &Tensor,
    w: &LayerWeights,
    shape: (usize, usize, usize),
    eps: f64,
    rope: &Rope,
    taps: &Taps,
) -> candle_core::Result<LayerOut> {
    decoder_layer(x, w, shape, eps, rope, Some(taps))
}

/// The decoder layer of [`layer`] and [`tapped_layer`].
fn decoder_layer(
    x: &Tensor,
    w: &LayerWeights,
    (heads, kv_heads, d): (usize, usize, usize),
    eps: f64,
    rope: &Rope,
    taps: Option<&Taps>,
) -> candle_core::Result<LayerOut> {
    // Linear `i` of the layer (the order of `ROLES`) applied to `x`, through its tap.
    let lin = |i: usize, x: &Tensor, w: &Tensor| -> candle_core::Result<Tensor> {
        let y = linear(x, w)?;
        match taps {
            None => Ok(y),
            Some(taps) => {
                let (out_dim, in_dim) = w.dims2()?;
                let site = TapSite::Linear {
                    role: ROLES[i],
                    in_dim,
                    out_dim,
                };
                taps.tap(site, y)
            }
        }
    };
    let h = rms_norm(x, &w.attn_norm, eps)?;
    let q = lin(0, &h, &w.q)?;
    let k = lin(1, &h, &w.k)?;
    let v = lin(2, &h, &w.v)?;
    let (mixed, probs) = attention(&q, &k, &v, (heads, kv_heads, d), rope)?;
    let x = (x + lin(3, &mixed, &w.o)?)?;
    let h = rms_norm(&x, &w.ffn_norm, eps)?;
    let act = swiglu(&lin(4, &h, &w.gate)?, &lin(5, &h, &w.up)?)?;
    let y = (&x + lin(6, &act, &w.down)?)?;
    Ok(LayerOut {
        y,
        act,
        q,
        k,
        v,
        probs,
    })
}

/// The logits of the last hidden state `x` (B × T × H) through the final norm's scale `norm`
/// (H) and the LM head `head` (V × H): N × V, N = B·T.
pub fn logits(x: &Tensor, norm: &Tensor, head: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let h = rms_norm(x, norm, eps)?;
    let (b, t, hd) = h.dims3()?;
    h.reshape((b * t, hd))?.matmul(&head.t()?)
}

/// Mean next-token negative log-likelihood of `logits` (N × V) against `targets` (N ids).
pub fn nll(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let n = targets.len();
    let lse = ops::logsumexp_rows(logits)?;
    let idx = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
    let picked = logits.contiguous()?.gather(&idx, 1)?.reshape(n)?;
    (lse - picked)?.mean_all()
}

/// A zero f32 tensor (helper for tests and captures).
pub fn zeros(shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::zeros(shape, DType::F32, &Device::Cpu)
}
