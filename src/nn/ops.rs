//! Custom candle ops with their own backward (checked against finite differences in the
//! tests), to keep memory and time down on large probes: a dense layer with its bias (and an
//! optional gradient tap on its output), LayerNorm, `gelu_new`, the exact
//! (erf) GELU, a scaled softmax over the last axis, plain or causal (masked entries get
//! probability 0 and no gradient), and the row-wise log-sum-exp. Composed from candle primitives they kept 3–6 intermediate tensors each alive
//! for the backward pass and spent most of a probe outside matrix multiplication. CPU only:
//! none has a GPU kernel.

use std::sync::{Arc, Mutex};

use candle_core::cpu::erf::erf_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, Var};

use super::cores::{fill_rows, fill_rows_for};
use crate::simd::{erf_in_place, exp_in_place};

/// Where a dense layer's backward leaves the gradient of its output (see [`linear`]): empty
/// until the backward pass reaches the layer.
pub type GradSlot = Arc<Mutex<Option<Tensor>>>;

/// `x W + b` (N × out) for the rows of `x` (N × in), one op; `w_out_in`: `w` is stored out ×
/// in and used transposed (PyTorch `Linear`), otherwise in × out (GPT-2 `Conv1D`). The same
/// values, and the same gradients for `x`, `w` and `b`, as candle's `matmul` followed by
/// `broadcast_add` (the product is candle's own, the bias added in place, and the backward
/// makes the same calls), but the autograd graph holds the op's inputs only: composed, the
/// product before the bias stayed alive for the backward pass, as large as the output.
/// `tap`, when given, receives ∂ℒ/∂(output) during the backward pass, a gradient tap without
/// the zero variable and the sum a tap otherwise adds (two more tensors of the output's size).
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    w_out_in: bool,
    tap: Option<GradSlot>,
) -> candle_core::Result<Tensor> {
    x.apply_op3(w, b, LinearOp { w_out_in, tap })
}

/// Row-wise log-sum-exp of an N × C matrix: N values.
pub fn logsumexp_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(LogSumExpRows)
}

/// The f32 data of a custom op's input; fails (naming `op`) unless it is contiguous f32.
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
/// `γ` and `β`, as one custom op (the fast evaluation of [`super::LayerNorm`]).
pub fn layer_norm(x: &Tensor, gamma: &Var, beta: &Var, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(gamma.as_tensor(), beta.as_tensor(), LayerNormOp { eps })
}

/// `gelu_new` (GPT-2's tanh approximation) of every element, as one custom op in `f32`; its
/// definition is [`gelu_new_exact`].
pub fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GeluNew)
}

/// The exact GELU `½x(1 + erf(x/√2))` of every element, as one custom op in `f32` (the same
/// forward values as candle's `gelu_erf`, whose composed backward allocates five temporaries).
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}

/// Runs `f` on the f32 values of `t`, row-major, read in place (a contiguous copy first when
/// `t` is strided); fails naming `op` unless `t` is an f32 tensor on the CPU.
pub fn with_values<R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(contiguous_f32(s, layout, op)?),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: expects a CPU tensor"
        ))),
    }
}

/// The forward of an element-wise op around a function of a whole block of values: `before`
/// of every element of the contiguous f32 input, `in_place` of the block (the vector units'
/// exponential or error function), then `after(value, input)`; the elements split between the
/// cores the probe has to spare ([`fill_rows`]).
fn map_through(
    (s, l, op): (&CpuStorage, &Layout, &'static str),
    before: impl Fn(f32) -> f32 + Sync,
    in_place: fn(&mut [f32]),
    after: impl Fn(f32, f32) -> f32 + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(s, l, op)?;
    let out = fill_rows(x.len(), 1, |start, block| {
        let x = &x[start..start + block.len()];
        for (o, &v) in block.iter_mut().zip(x) {
            *o = before(v);
        }
        in_place(block);
        for (o, &v) in block.iter_mut().zip(x) {
            *o = after(*o, v);
        }
    });
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

/// The backward of an element-wise op: `f(x, y, g, out)` writes ∂ℒ/∂x of a block of
/// elements from their input `x`, the forward's result `y` and the incoming gradient `g`
/// ([`ElementGrad`]); the result is shaped as `x`. A block's values must depend only on its
/// own elements (the blocks are split between the cores the probe has to spare).
fn element_grad(
    x: &Tensor,
    res: &Tensor,
    grad: &Tensor,
    name: &'static str,
    f: ElementGradFn,
) -> candle_core::Result<Tensor> {
    let [x, res, grad] = contiguous_all([x, res, grad])?;
    x.apply_op3_no_bwd(&res, &grad, &ElementGrad { name, f })
}

/// The block function of an [`ElementGrad`]: `(x, y, g, out)`, all of one block's length.
type ElementGradFn = fn(&[f32], &[f32], &[f32], &mut [f32]);

/// The gradient op of an element-wise op ([`element_grad`]): reads the three arrays in place
/// and splits the elements between the cores the probe has to spare.
struct ElementGrad {
    name: &'static str,
    f: ElementGradFn,
}

impl CustomOp3 for ElementGrad {
    fn name(&self) -> &'static str {
        self.name
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
        let [x, y, g] = f32_inputs(self.name, [(s1, l1), (s2, l2), (s3, l3)])?;
        if y.len() != x.len() || g.len() != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "{}: input {:?}, result {:?} and gradient {:?} differ in size",
                self.name,
                l1.dims(),
                l2.dims(),
                l3.dims()
            )));
        }
        let f = self.f;
        let out = fill_rows(x.len(), 1, |start, block| {
            let span = start..start + block.len();
            f(&x[span.clone()], &y[span.clone()], &g[span], block);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The custom op of [`linear`].
struct LinearOp {
    w_out_in: bool,
    tap: Option<GradSlot>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
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
        let (rows, k) = l1.shape().dims2()?;
        let wl = if self.w_out_in {
            l2.transpose(0, 1)?
        } else {
            l2.clone()
        };
        let (k2, n) = wl.shape().dims2()?;
        let bias = contiguous_f32(s3, l3, self.name())?;
        if k2 != k || bias.len() != n {
            return Err(candle_core::Error::Msg(format!(
                "linear: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )));
        }
        if !matches!((s1, s2), (CpuStorage::F32(_), CpuStorage::F32(_))) {
            return Err(candle_core::Error::Msg("linear: expects f32".into()));
        }
        // candle's own product (what `Tensor::matmul` calls, zeros when nothing is summed),
        // on the cores the probe has to spare.
        let mut out = super::matmul::product(s1, l1, s2, &wl)?;
        if n > 0 {
            super::cores::for_rows(&mut out, n, |_, block| {
                for row in block.chunks_exact_mut(n) {
                    for (y, &bj) in row.iter_mut().zip(bias) {
                        *y += bj;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }

    /// [`linear_grads`] for the inputs in the autograd graph, and the tap's gradient.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if let Some(slot) = &self.tap {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(grad.clone());
        }
        // An input outside the autograd graph (a constant, such as a detached weight) gets no
        // gradient: nothing could read it, and the weight's is a product as large as the
        // forward's.
        let want = [x.track_op(), w.track_op(), b.track_op()];
        linear_grads(x, w, self.w_out_in, grad, want)
    }
}

/// The gradients of [`linear`] with respect to its input `x` (N × in), weight `w` and bias,
/// from ∂ℒ/∂(output) `grad` (N × out), each only where `want` (input, weight, bias) asks:
/// the calls candle's backward makes for `matmul` (through the transpose for an out × in
/// weight) and for the broadcast bias, the products on the cores the probe has to spare. The
/// weight's gradient of an out × in layer is a transposed view.
pub(crate) fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    w_out_in: bool,
    grad: &Tensor,
    [want_x, want_w, want_b]: [bool; 3],
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    use super::matmul::matmul;
    let dx = match (want_x, w_out_in) {
        (false, _) => None,
        (true, true) => Some(matmul(grad, w)?),
        (true, false) => Some(matmul(grad, &w.t()?)?),
    };
    let dw = match (want_w, w_out_in) {
        (false, _) => None,
        (true, true) => Some(matmul(&x.t()?, grad)?.t()?),
        (true, false) => Some(matmul(&x.t()?, grad)?),
    };
    let db = if want_b {
        Some(column_sums(grad)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// `a · b` for every item of the leading dimensions (the same for both, at least one; the
/// last two are the matrices, any strides): candle's `matmul` values and backward, the items
/// split between the cores the probe has to spare ([`super::matmul::batched_product`]).
/// Other tensors (another device or type, 2-D, broadcast batches) go through candle's
/// `matmul`.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let ours = a.rank() >= 3
        && a.rank() == b.rank()
        && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2]
        && a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32;
    if !ours {
        return a.matmul(b);
    }
    if a.track_op() || b.track_op() {
        a.apply_op2_arc(b, Arc::new(Box::new(BatchedMatmul)))
    } else {
        a.apply_op2_no_bwd(b, &BatchedMatmul)
    }
}

/// The op of [`batched_matmul`].
struct BatchedMatmul;

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = super::matmul::batched_product(s1, l1, s2, l2)?;
        Ok((CpuStorage::F32(out), shape))
    }

    /// The products candle's backward makes for `matmul`: ∂ℒ/∂a = g · bᵀ, ∂ℒ/∂b = aᵀ · g,
    /// each only for an input in the autograd graph.
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let da = if a.track_op() {
            Some(batched_matmul(grad, &b.t()?)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(batched_matmul(&a.t()?, grad)?)
        } else {
            None
        };
        Ok((da, db))
    }
}

/// The gradients ∂ℒ/∂q, ∂ℒ/∂k and ∂ℒ/∂v of scaled dot-product attention `probs · v`, with
/// `probs` = [`softmax_last`] or [`causal_softmax`] of `q · kᵀ` with `scale`, heads first
/// (… × T × d each, any strides), from ∂ℒ/∂(probs · v) `g` (any strides): the products
/// candle's backward makes through `q.matmul(&k.t())`, the softmax and `probs.matmul(&v)`
/// ([`batched_matmul`], whose values do not depend on the strides), and the softmax's own
/// gradient, so the same values bit for bit. The three come contiguous, heads first.
pub(crate) fn attention_grads(
    [q, k, v]: [&Tensor; 3],
    probs: &Tensor,
    g: &Tensor,
    scale: f32,
) -> candle_core::Result<[Tensor; 3]> {
    // context = probs · v.
    let d_probs = batched_matmul(g, &v.t()?)?;
    let dv = batched_matmul(&probs.t()?, g)?;
    let d_scores = softmax_grad(probs, &d_probs, scale)?;
    drop(d_probs);
    // scores = q · kᵀ (the gradient of kᵀ's own transpose is k's layout).
    let dq = batched_matmul(&d_scores, &k.t()?.t()?)?;
    // candle's backward computes (qᵀ · d_scores)ᵀ; d_scoresᵀ · q makes the same fused
    // multiply-adds in the same order (the product's depth is T in both), without the copy.
    let dk = batched_matmul(&d_scores.t()?, q)?;
    Ok([dq, dk, dv])
}

/// The sum over the rows of an N × C matrix, per column: the values of candle's
/// `sum_keepdim(0)` (each column summed over the rows in their order, from zero), read in
/// place and the columns split between the cores the probe has to spare, where candle walks
/// the elements one at a time with a division each. Any other tensor than a contiguous f32
/// one on the CPU goes through candle's.
fn column_sums(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c) = x.dims2()?;
    if !x.is_contiguous() || x.dtype() != candle_core::DType::F32 || !x.device().is_cpu() {
        return x.sum_keepdim(0)?.squeeze(0);
    }
    with_values(x, "column-sums", |v| {
        let sums = fill_rows_for(n * c, c, 1, |first, block| {
            for row in v.chunks_exact(c) {
                for (s, &e) in block.iter_mut().zip(&row[first..]) {
                    *s += e;
                }
            }
        });
        Tensor::from_vec(sums, c, x.device())
    })
}

/// The custom op of [`layer_norm`].
struct LayerNormOp {
    eps: f64,
}

impl LayerNormOp {
    /// Mean and 1/σ of one row, accumulated in f64.
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32)
    }
}

impl CustomOp3 for LayerNormOp {
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
        let out = fill_rows(x.len(), d, |first, block| {
            let x = &x[first * d..];
            for (row, o) in x.chunks_exact(d).zip(block.chunks_exact_mut(d)) {
                let (mean, rstd) = self.moments(row);
                for j in 0..d {
                    o[j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
                }
            }
        });
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
        let [dx, dgamma, dbeta] = layer_norm_grads(x, gamma, self.eps, grad)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients of [`layer_norm`] with respect to `x`, `γ` and `β` (in that order) from
/// ∂ℒ/∂(output) `grad`, shaped as `x`: what its backward computes.
pub(crate) fn layer_norm_grads(
    x: &Tensor,
    gamma: &Tensor,
    eps: f64,
    grad: &Tensor,
) -> candle_core::Result<[Tensor; 3]> {
    let op = LayerNormOp { eps };
    let name = op.name();
    let (dx, dgamma, dbeta) = with_values(x, name, |xs| {
        with_values(grad, name, |gs| {
            with_values(gamma, name, |gamma_v| Ok(op.gradients(xs, gs, gamma_v)))
        })
    })?;
    let d = dgamma.len();
    let device = x.device();
    Ok([
        Tensor::from_vec(dx, x.dims(), device)?,
        Tensor::from_vec(dgamma, d, device)?,
        Tensor::from_vec(dbeta, d, device)?,
    ])
}

impl LayerNormOp {
    /// ∂ℒ/∂x, ∂ℒ/∂γ and ∂ℒ/∂β from the input rows `xs`, the incoming gradient `gs` and `γ`.
    /// The rows' gradients are split between the cores the probe has to spare, and so are
    /// γ's and β's columns, each summed over the rows in their order, as on one core.
    fn gradients(&self, xs: &[f32], gs: &[f32], gamma: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = gamma.len();
        let rows = xs.len() / d.max(1);
        // Each row's mean and 1/σ, then (stored as rows of 2) read by both passes below.
        let moments = fill_rows_for(xs.len(), 2 * rows, 2, |first, block| {
            for (r, m) in block.chunks_exact_mut(2).enumerate() {
                let row = first + r;
                let (mean, rstd) = self.moments(&xs[row * d..(row + 1) * d]);
                (m[0], m[1]) = (mean, rstd);
            }
        });
        let dx = fill_rows(xs.len(), d, |first, block| {
            let mut xhat = vec![0f32; d];
            let mut gg = vec![0f32; d];
            for (r, out) in block.chunks_exact_mut(d).enumerate() {
                let row = first + r;
                let (x, g) = (&xs[row * d..(row + 1) * d], &gs[row * d..(row + 1) * d]);
                let (mean, rstd) = (moments[2 * row], moments[2 * row + 1]);
                let (mut a, mut b) = (0f64, 0f64);
                for j in 0..d {
                    xhat[j] = (x[j] - mean) * rstd;
                    gg[j] = g[j] * gamma[j];
                    a += gg[j] as f64;
                    b += (gg[j] * xhat[j]) as f64;
                }
                let (a, b) = ((a / d as f64) as f32, (b / d as f64) as f32);
                for j in 0..d {
                    out[j] = rstd * (gg[j] - a - xhat[j] * b);
                }
            }
        });
        // γ's and β's gradients, column by column (as rows of 2: γ, β), over every row.
        let dgamma_beta = fill_rows_for(2 * xs.len(), 2 * d, 2, |first, block| {
            let cols = first..first + block.len() / 2;
            let mut sums = vec![(0f64, 0f64); cols.len()];
            for row in 0..rows {
                let (mean, rstd) = (moments[2 * row], moments[2 * row + 1]);
                let (x, g) = (&xs[row * d..(row + 1) * d], &gs[row * d..(row + 1) * d]);
                for (s, j) in sums.iter_mut().zip(cols.clone()) {
                    let xhat = (x[j] - mean) * rstd;
                    s.0 += (g[j] * xhat) as f64;
                    s.1 += g[j] as f64;
                }
            }
            for (o, s) in block.chunks_exact_mut(2).zip(sums) {
                (o[0], o[1]) = (s.0 as f32, s.1 as f32);
            }
        });
        let dgamma = dgamma_beta.iter().step_by(2).copied().collect();
        let dbeta = dgamma_beta.iter().skip(1).step_by(2).copied().collect();
        (dx, dgamma, dbeta)
    }
}

/// `gelu_new`, GPT-2's tanh approximation of GELU, `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`,
/// evaluated in `f64`: the definition the custom op [`gelu_new`] follows in `f32`, and what a
/// proxy applies to captured pre-activations (GPT-2's `w_pca`).
pub fn gelu_new_exact(x: f32) -> f64 {
    let x = x as f64;
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
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

    /// `0.5 · v · (1 + fast_tanh(u))` with `u = GELU_K (v + GELU_C v³)`: the exponential
    /// `e^{2u}` of [`fast_tanh`] for a whole block at once ([`exp_in_place`]).
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map_through(
            (s, l, self.name()),
            |v| 2.0 * (GELU_K * (v + GELU_C * v * v * v)),
            exp_in_place,
            |e, v| 0.5 * v * (1.0 + (1.0 - 2.0 / (e + 1.0))),
        )
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        gelu_new_grad(x, res, grad).map(Some)
    }
}

/// ∂ℒ/∂x of [`gelu_new`] at `x`, from its result `res` and ∂ℒ/∂(result) `grad`: what its
/// backward computes.
pub(crate) fn gelu_new_grad(
    x: &Tensor,
    res: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    element_grad(x, res, grad, "gelu-new-grad", |x, y, g, out| {
        for (i, o) in out.iter_mut().enumerate() {
            let v = x[i];
            // The forward's tanh, recovered from y = ½x(1 + t) away from x = 0.
            let t = if v.abs() > 1e-2 {
                2.0 * y[i] / v - 1.0
            } else {
                fast_tanh(GELU_K * (v + GELU_C * v * v * v))
            };
            let slope =
                0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * v * v);
            *o = g[i] * slope;
        }
    })
}

/// Softmax over the last axis of `scale · scores` (`… × T × T`, contiguous) where entry
/// `[i, j]` with `j > i` is masked: probability exactly 0 and no gradient (the reference
/// replaces those scores by −10⁴, whose exponential underflows to 0 in f32).
pub fn causal_softmax(scores: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    scores.apply_op1(Softmax {
        scale,
        causal: true,
    })
}

/// Softmax over the last axis of `scale · x` (any shape; `scale` > 0), as one custom op: the
/// attention softmax with its `1/√d` folded in, without the four temporaries of candle's
/// composed `softmax`.
pub fn softmax_last(x: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax {
        scale,
        causal: false,
    })
}

/// The custom op of [`softmax_last`] and [`causal_softmax`].
struct Softmax {
    /// Multiplies the input (must be positive: the max is taken before scaling).
    scale: f32,
    /// Rows are the rows of `… × T × T` scores and row `i` keeps its first `i + 1` entries.
    causal: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        if self.causal {
            "causal-softmax"
        } else {
            "softmax"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dims = l.dims();
        let t = *dims.last().unwrap_or(&0);
        if t == 0 || (self.causal && (dims.len() < 2 || dims[dims.len() - 2] != t)) {
            return Err(candle_core::Error::Msg(format!(
                "{}: expects … × T × T scores (causal) or a non-empty last axis, got {dims:?}",
                self.name()
            )));
        }
        let out = fill_rows(x.len(), t, |first, block| {
            let rows = x[first * t..]
                .chunks_exact(t)
                .zip(block.chunks_exact_mut(t));
            for (r, (row, o)) in rows.enumerate() {
                let i = if self.causal { (first + r) % t } else { t - 1 };
                let window = &row[..=i];
                let max = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (oj, &xj) in o[..=i].iter_mut().zip(window) {
                    *oj = (xj - max) * self.scale;
                }
                exp_in_place(&mut o[..=i]);
                let mut sum = 0f32;
                for &oj in &o[..=i] {
                    sum += oj;
                }
                let inv = 1.0 / sum;
                for oj in &mut o[..=i] {
                    *oj *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        softmax_grad(res, grad, self.scale).map(Some)
    }
}

/// ∂ℒ/∂x of [`softmax_last`] or [`causal_softmax`] (either: masked entries have probability 0
/// and get 0) with `scale`, from its result `res` and ∂ℒ/∂(result) `grad`: what their backward
/// computes.
pub(crate) fn softmax_grad(res: &Tensor, grad: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    let [res, grad] = contiguous_all([res, grad])?;
    res.apply_op2_no_bwd(&grad, &SoftmaxGrad { scale })
}

/// The custom op of [`gelu_erf`].
struct GeluErf;

/// 1/√(2π), the standard normal density at 0.
const INV_SQRT_TAU: f32 = 0.398_942_3;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    /// `(erf(x/√2) + 1) · ½ · x`, the error functions of a block at once on the vector units
    /// ([`crate::simd::erf_in_place`], libm's bits).
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        map_through(
            (s, l, self.name()),
            |v| v * std::f32::consts::FRAC_1_SQRT_2,
            erf_in_place,
            |e, v| (e + 1.) * 0.5 * v,
        )
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        gelu_erf_grad(x, res, grad).map(Some)
    }
}

/// ∂ℒ/∂x of [`gelu_erf`] at `x`, from its result `res` and ∂ℒ/∂(result) `grad`: what its
/// backward computes.
pub(crate) fn gelu_erf_grad(
    x: &Tensor,
    res: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    // d/dx ½x(1 + erf(x/√2)) = Φ(x) + x φ(x), with Φ(x) = y/x recovered from the forward
    // away from x = 0; the density's exponentials e^{−x²/2} of a block at once.
    element_grad(x, res, grad, "gelu-erf-grad", |x, y, g, out| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = -0.5 * v * v;
        }
        exp_in_place(out);
        // Φ(x) = y/x for every value first (on the vector units), then again with the error
        // function where |x| ≤ 0.01 (a few in a hundred), from the densities kept for them.
        let near_zero: Vec<(usize, f32)> = (x.iter().enumerate())
            .filter(|(_, v)| v.abs() <= 1e-2)
            .map(|(i, _)| (i, out[i]))
            .collect();
        gelu_erf_grad_terms(x, y, g, out);
        for (i, density) in near_zero {
            let v = x[i];
            let cdf = 0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
            out[i] = g[i] * (cdf + v * INV_SQRT_TAU * density);
        }
    })
}

vectorised! {
    /// `g · (y/x + x · φ(x))` of a block, with the density `e^{−x²/2}` in `out` (its
    /// `1/√(2π)` applied here): the exact GELU's gradient away from x = 0.
    fn gelu_erf_grad_terms(x: &[f32], y: &[f32], g: &[f32], out: &mut [f32]) {
        for (((o, &v), &yv), &gv) in out.iter_mut().zip(x).zip(y).zip(g) {
            *o = gv * (yv / v + v * INV_SQRT_TAU * *o);
        }
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
        let out = fill_rows(p.len(), t, |first, block| {
            let (p, g) = (&p[first * t..], &g[first * t..]);
            for ((pr, gr), o) in p
                .chunks_exact(t)
                .zip(g.chunks_exact(t))
                .zip(block.chunks_exact_mut(t))
            {
                let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((oj, &pj), &gj) in o.iter_mut().zip(pr).zip(gr) {
                    *oj = self.scale * pj * (gj - dot);
                }
            }
        });
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
        let out = fill_rows_for(x.len(), n, 1, |first, block| {
            for (o, row) in block.iter_mut().zip(x[first * cols..].chunks_exact(cols)) {
                *o = logsumexp_row(row);
            }
        });
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
        let out = fill_rows(x.len(), cols, |first, block| {
            for (((row, o), &m), &gn) in x[first * cols..]
                .chunks_exact(cols)
                .zip(block.chunks_exact_mut(cols))
                .zip(&lse[first..])
                .zip(&g[first..])
            {
                o.copy_from_slice(row);
                logsumexp_grad_row(o, m, gn);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The log-sum-exp of one row: the maximum, plus the log of the sum of `exp(v − max)`
/// accumulated in f64 in order.
fn logsumexp_row(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut shifted = [0f32; ROW_PART];
    let mut sum = 0f64;
    for part in row.chunks(ROW_PART) {
        let shifted = &mut shifted[..part.len()];
        for (e, &v) in shifted.iter_mut().zip(part) {
            *e = v - max;
        }
        exp_in_place(shifted);
        for &e in shifted.iter() {
            sum += e as f64;
        }
    }
    max + sum.ln() as f32
}

/// Values of a row handled at a time by the row-wise passes that take exponentials
/// ([`exp_in_place`] on a stack buffer).
const ROW_PART: usize = 256;

/// The gradient of a row's log-sum-exp `lse` at each entry of `row` (overwritten), for the
/// gradient `g` of the log-sum-exp: `exp(v − lse) · g`.
fn logsumexp_grad_row(row: &mut [f32], lse: f32, g: f32) {
    for v in row.iter_mut() {
        *v -= lse;
    }
    exp_in_place(row);
    for v in row.iter_mut() {
        *v *= g;
    }
}

/// Rows of the logits [`linear_logsumexp`] holds at once: 256 rows of GPT-2's head (20 003
/// columns: the shortlist and the tail clusters) are 20 MB, where the composed ops held
/// arrays of all the batch's rows (246 MB each at 16 × 192 tokens: the logits, their gradient
/// and the sum the backward adds it to).
pub const LOGSUMEXP_CHUNK_ROWS: usize = 256;

/// A bound on the rows of logits [`linear_logsumexp`] holds at once for `n` rows: `n`, or
/// `2 · LOGSUMEXP_CHUNK_ROWS − 1`, above every chunk its chunking makes (what a memory
/// estimate counts).
pub fn linear_logsumexp_rows_held(n: usize) -> usize {
    n.min(2 * LOGSUMEXP_CHUNK_ROWS - 1)
}

/// Row-wise log-sum-exp of the logits `x wᵀ + b` (x: N × E, w: C × E, stored out × in, b: C):
/// N values, those of [`logsumexp_rows`] of [`linear`] (with `w_out_in`) bit for bit, computed
/// [`LOGSUMEXP_CHUNK_ROWS`] rows at a time, so that the N × C logits never exist at once. A
/// row's values depend on that row alone: its logits are gemm's, whose order of additions for
/// an entry depends only on the depth E, whatever the number of rows (see [`super::matmul`]).
///
/// The backward gives ∂ℒ/∂x only (`w` and `b` must be constants, as the GPT-2 head's tables
/// are in a probe): `(exp(logits − lse) · g) · w` per row, the calls the composition's backward
/// makes. `expected_grad`: the gradient ∂ℒ/∂lse every row will get, when the caller knows it
/// (a loss that is a fixed multiple of the sum of the rows): then the forward also computes
/// ∂ℒ/∂x, chunk by chunk from the logits it holds anyway, and the backward hands it over when
/// the gradient it receives is that value in every row, bit for bit; any other gradient (or
/// `None`) makes the backward compute the logits again.
pub fn linear_logsumexp(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    expected_grad: Option<f32>,
) -> candle_core::Result<Tensor> {
    x.apply_op3(
        w,
        b,
        LinearLogSumExp {
            expected: expected_grad,
            ready: Mutex::new(None),
        },
    )
}

#[cfg(test)]
thread_local! {
    /// Tests only: backward passes of [`linear_logsumexp`] on this thread that computed the
    /// logits again.
    static LOGSUMEXP_RECOMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tests only: how many backward passes of [`linear_logsumexp`] on this thread computed the
/// logits again (so far).
#[cfg(test)]
pub(crate) fn logsumexp_recomputed() -> usize {
    LOGSUMEXP_RECOMPUTED.with(std::cell::Cell::get)
}

/// The custom op of [`linear_logsumexp`].
struct LinearLogSumExp {
    expected: Option<f32>,
    /// ∂ℒ/∂x for the expected gradient, computed by the forward; taken by the backward.
    ready: Mutex<Option<Vec<f32>>>,
}

/// The inputs of a [`LinearLogSumExp`] as the chunks read them.
struct LogitsInputs<'a> {
    x: &'a CpuStorage,
    x_layout: &'a Layout,
    w: &'a CpuStorage,
    w_layout: &'a Layout,
    bias: &'a [f32],
}

impl LogitsInputs<'_> {
    /// `(N, E, C)`, checked against each other.
    fn dims(&self) -> candle_core::Result<(usize, usize, usize)> {
        let (n, e) = self.x_layout.shape().dims2()?;
        let (c, e2) = self.w_layout.shape().dims2()?;
        if e2 != e || self.bias.len() != c {
            return Err(candle_core::Error::Msg(format!(
                "linear-logsumexp: input {:?}, weight {:?} and bias of {} do not fit",
                self.x_layout.dims(),
                self.w_layout.dims(),
                self.bias.len()
            )));
        }
        if !matches!((self.x, self.w), (CpuStorage::F32(_), CpuStorage::F32(_))) {
            return Err(candle_core::Error::Msg(
                "linear-logsumexp: expects f32".into(),
            ));
        }
        Ok((n, e, c))
    }

    /// The logits of `rows` rows from `first` (rows × C): [`linear`]'s forward.
    fn logits(&self, first: usize, rows: usize) -> candle_core::Result<Vec<f32>> {
        let x_rows = self.x_layout.narrow(0, first, rows)?;
        let w_t = self.w_layout.transpose(0, 1)?;
        let mut out = super::matmul::product(self.x, &x_rows, self.w, &w_t)?;
        let c = self.bias.len();
        if c > 0 {
            super::cores::for_rows(&mut out, c, |_, block| {
                for row in block.chunks_exact_mut(c) {
                    for (y, &bj) in row.iter_mut().zip(self.bias) {
                        *y += bj;
                    }
                }
            });
        }
        Ok(out)
    }

    /// ∂ℒ/∂x of `rows` rows (rows × E) from their `logits` (overwritten by their gradient),
    /// their log-sum-exps `lse` and the gradients `g` of those: [`LogSumExpGrad`] in place,
    /// then [`linear_grads`]' product with the weight.
    fn input_grad(
        &self,
        mut logits: Vec<f32>,
        lse: &[f32],
        g: &[f32],
    ) -> candle_core::Result<Vec<f32>> {
        let c = self.bias.len();
        let rows = lse.len();
        if c > 0 {
            super::cores::for_rows(&mut logits, c, |first, block| {
                for ((row, &m), &gn) in block
                    .chunks_exact_mut(c)
                    .zip(&lse[first..])
                    .zip(&g[first..])
                {
                    logsumexp_grad_row(row, m, gn);
                }
            });
        }
        super::matmul::product(
            &CpuStorage::F32(logits),
            &Layout::contiguous((rows, c)),
            self.w,
            self.w_layout,
        )
    }

    /// The chunks of `n` rows, `(first, rows)`: `n / LOGSUMEXP_CHUNK_ROWS` chunks (one when
    /// fewer), their sizes differing by at most one row. Every chunk has at least
    /// [`LOGSUMEXP_CHUNK_ROWS`] rows unless it is the whole: gemm takes another depth blocking
    /// for products of at most 64 rows and 64 columns, so a small last chunk could change
    /// bits.
    fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
        let count = (n / LOGSUMEXP_CHUNK_ROWS).max(1);
        let (base, extra) = (n / count, n % count);
        (0..count).map(move |i| (i * base + i.min(extra), base + usize::from(i < extra)))
    }
}

impl CustomOp3 for LinearLogSumExp {
    fn name(&self) -> &'static str {
        "linear-logsumexp"
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
        let inputs = LogitsInputs {
            x: s1,
            x_layout: l1,
            w: s2,
            w_layout: l2,
            bias: contiguous_f32(s3, l3, self.name())?,
        };
        let (n, e, c) = inputs.dims()?;
        let mut lse = vec![0f32; n];
        let mut dx = self.expected.map(|_| Vec::with_capacity(n * e));
        for (first, rows) in LogitsInputs::chunks(n) {
            let logits = inputs.logits(first, rows)?;
            let lse_rows = &mut lse[first..first + rows];
            super::cores::for_rows_for(rows * c, lse_rows, 1, |start, block| {
                for (o, row) in block.iter_mut().zip(logits[start * c..].chunks_exact(c)) {
                    *o = logsumexp_row(row);
                }
            });
            if let (Some(dx), Some(g)) = (dx.as_mut(), self.expected) {
                let g = vec![g; rows];
                dx.extend(inputs.input_grad(logits, &lse[first..first + rows], &g)?);
            }
        }
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = dx;
        Ok((CpuStorage::F32(lse), Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if w.track_op() || b.track_op() {
            return Err(candle_core::Error::Msg(
                "linear-logsumexp: gives no gradient for its weight or bias; use linear and \
                 logsumexp_rows"
                    .into(),
            ));
        }
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).take();
        if !x.track_op() {
            return Ok((None, None, None));
        }
        let g = with_values(grad, self.name(), |g| Ok(g.to_vec()))?;
        let expected = self
            .expected
            .is_some_and(|e| g.iter().all(|v| v.to_bits() == e.to_bits()));
        let (n, e) = x.dims2()?;
        let dx = match ready {
            Some(dx) if expected => dx,
            _ => {
                #[cfg(test)]
                LOGSUMEXP_RECOMPUTED.with(|c| c.set(c.get() + 1));
                let lse = with_values(res, self.name(), |v| Ok(v.to_vec()))?;
                let (x_s, x_l) = x.storage_and_layout();
                let (w_s, w_l) = w.storage_and_layout();
                let (b, b_l) = b.storage_and_layout();
                let (
                    candle_core::Storage::Cpu(x_s),
                    candle_core::Storage::Cpu(w_s),
                    candle_core::Storage::Cpu(b),
                ) = (&*x_s, &*w_s, &*b)
                else {
                    return Err(candle_core::Error::Msg(
                        "linear-logsumexp: expects CPU tensors".into(),
                    ));
                };
                let inputs = LogitsInputs {
                    x: x_s,
                    x_layout: x_l,
                    w: w_s,
                    w_layout: w_l,
                    bias: contiguous_f32(b, b_l, self.name())?,
                };
                inputs.dims()?;
                let mut dx = Vec::with_capacity(n * e);
                for (first, rows) in LogitsInputs::chunks(n) {
                    let logits = inputs.logits(first, rows)?;
                    let span = first..first + rows;
                    dx.extend(inputs.input_grad(logits, &lse[span.clone()], &g[span])?);
                }
                dx
            }
        };
        Ok((Some(Tensor::from_vec(dx, (n, e), x.device())?), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// The values of a tensor as a row-major vector.
    fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

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

    /// The fused dense layer gives candle's `matmul` + `broadcast_add` bit for bit: the
    /// output and the gradients of the input, the weight (either layout) and the bias; its
    /// tap slot holds the gradient of the output.
    #[test]
    fn linear_is_matmul_plus_bias_bit_for_bit() {
        let dev = Device::Cpu;
        let (rows, k, n) = (37, 19, 23);
        let x = Var::from_vec(Rng::new(1).normal_vec(rows * k, 1.0), (rows, k), &dev).unwrap();
        let b = Var::from_vec(Rng::new(3).normal_vec(n, 0.5), n, &dev).unwrap();
        for out_in in [true, false] {
            let shape = if out_in { (n, k) } else { (k, n) };
            let w = Var::from_vec(Rng::new(2).normal_vec(n * k, 1.0), shape, &dev).unwrap();
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let composed = if out_in {
                xt.matmul(&wt.t().unwrap()).unwrap()
            } else {
                xt.matmul(wt).unwrap()
            }
            .broadcast_add(bt)
            .unwrap();
            let slot = GradSlot::default();
            let fused = linear(xt, wt, bt, out_in, Some(slot.clone())).unwrap();
            assert_eq!(values(&fused).unwrap(), values(&composed).unwrap());
            // A non-linear readout, so the output gradient differs per entry.
            let readout = |y: &Tensor| weighted_sum(&y.sqr().unwrap());
            let g_composed = readout(&composed).backward().unwrap();
            let g_fused = readout(&fused).backward().unwrap();
            for (what, t) in [("x", xt), ("w", wt), ("b", bt)] {
                let (a, c) = (g_fused.get(t).unwrap(), g_composed.get(t).unwrap());
                assert_eq!(a.dims(), c.dims(), "{what}");
                assert_eq!(
                    values(a).unwrap(),
                    values(c).unwrap(),
                    "out_in {out_in}: {what}"
                );
            }
            let tapped = slot
                .lock()
                .unwrap()
                .clone()
                .expect("the backward filled the tap");
            let expected: Vec<f32> = values(&composed)
                .unwrap()
                .iter()
                .zip(Rng::new(99).normal_vec(rows * n, 1.0))
                .map(|(y, w)| 2.0 * y * w)
                .collect();
            assert_eq!(values(&tapped).unwrap(), expected);
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
            |t| causal_softmax(&t[0], 0.7).unwrap(),
        );
        check_gradients("softmax", std::slice::from_ref(&x), &[&[6, 4]], |t| {
            softmax_last(&t[0], 0.7).unwrap()
        });
        check_gradients(
            "gelu-erf",
            &[x.iter().map(|v| 2.0 * v).collect()],
            &[&[2, 3, 4]],
            |t| gelu_erf(&t[0]).unwrap(),
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
                t[0].apply_op3(&t[1], &t[2], LayerNormOp { eps: 1e-5 })
                    .unwrap()
            },
        );
    }

    #[test]
    fn custom_ops_give_the_same_bits_on_any_number_of_cores() {
        // Large enough to be split (8 192 rows of 64, 128 blocks of 64 × 64 causal scores), in
        // blocks that do not start at a multiple of 64 rows.
        let dev = Device::Cpu;
        let (rows, d) = (128 * 64, 64);
        let run = || -> Vec<Vec<u32>> {
            let x = Var::from_vec(Rng::new(8).normal_vec(rows * d, 1.5), (rows, d), &dev).unwrap();
            let gamma = Var::from_vec(Rng::new(9).normal_vec(d, 1.0), d, &dev).unwrap();
            let beta = Var::from_vec(Rng::new(10).normal_vec(d, 1.0), d, &dev).unwrap();
            let ln = layer_norm(x.as_tensor(), &gamma, &beta, 1e-5).unwrap();
            let scores = ln.reshape((rows / d, d, d)).unwrap();
            let p = causal_softmax(&scores, 0.3)
                .unwrap()
                .reshape((rows, d))
                .unwrap();
            let outs = [
                gelu_new(&p).unwrap(),
                gelu_erf(&ln).unwrap(),
                softmax_last(&ln, 0.7).unwrap(),
                logsumexp_rows(&ln).unwrap().unsqueeze(1).unwrap(),
            ];
            let loss = outs
                .iter()
                .map(weighted_sum)
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            let grads = loss.backward().unwrap();
            let mut all: Vec<&Tensor> = outs.iter().collect();
            let g: Vec<Tensor> = [&x, &gamma, &beta]
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            all.extend(&g);
            all.iter()
                .map(|t| values(t).unwrap().iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        let alone = crate::nn::cores::with_cores(1, run);
        for cores in [2, 3] {
            assert_eq!(
                crate::nn::cores::with_cores(cores, run),
                alone,
                "{cores} cores"
            );
        }
    }

    /// The batched product is candle's `matmul` bit for bit, values and gradients, for the
    /// attention's layouts (contiguous heads, heads as views of a B × T × width array, either
    /// operand transposed, rank 3 and 4), on 1 to 3 cores; the reference is candle's product
    /// of contiguous copies (gemm's values do not depend on the strides).
    #[test]
    fn batched_matmul_is_candles_matmul_bit_for_bit() {
        let dev = Device::Cpu;
        // Large enough (2^26 multiply-adds) for the first two to split between cores.
        let (b, t, heads, d) = (4, 256, 4, 64);
        let var = |seed: u64, shape: (usize, usize, usize)| {
            let v = Rng::new(seed).normal_vec(shape.0 * shape.1 * shape.2, 1.0);
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let (q, k) = (var(1, (b, t, heads * d)), var(2, (b, t, heads * d)));
        let split = |x: &Tensor| {
            x.reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let flat = |x: &Tensor| x.reshape((b * heads, t, d)).unwrap();
        let cases: Vec<(Tensor, Tensor)> = vec![
            // Heads as views: q · kᵀ, then (q · kᵀ) · v's view.
            (split(&q), split(&k).t().unwrap()),
            (
                split(&q)
                    .contiguous()
                    .unwrap()
                    .matmul(&split(&k).contiguous().unwrap().t().unwrap())
                    .unwrap(),
                split(&k),
            ),
            // Contiguous heads, rank 3, the left operand transposed.
            (
                flat(&split(&q).contiguous().unwrap()).t().unwrap(),
                flat(&split(&k).contiguous().unwrap()),
            ),
        ];
        let bits =
            |x: &Tensor| -> Vec<u32> { values(x).unwrap().iter().map(|v| v.to_bits()).collect() };
        for (i, (x, y)) in cases.iter().enumerate() {
            let theirs = x
                .contiguous()
                .unwrap()
                .matmul(&y.contiguous().unwrap())
                .unwrap();
            let their_grads = weighted_sum(&theirs).backward().unwrap();
            for cores in [1, 2, 3] {
                let ours = crate::nn::cores::with_cores(cores, || batched_matmul(x, y).unwrap());
                assert_eq!(
                    bits(&ours),
                    bits(&theirs),
                    "case {i}, {cores} cores: values"
                );
                let our_grads =
                    crate::nn::cores::with_cores(cores, || weighted_sum(&ours).backward().unwrap());
                for input in [&q, &k] {
                    assert_eq!(
                        bits(our_grads.get(input.as_tensor()).unwrap()),
                        bits(their_grads.get(input.as_tensor()).unwrap()),
                        "case {i}, {cores} cores: gradients"
                    );
                }
            }
        }
        // Batches that differ, or a 2-D product, go through candle's matmul.
        let a = Tensor::ones((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let c = Tensor::ones((3, 4, 5), candle_core::DType::F32, &dev).unwrap();
        assert!(batched_matmul(&a, &c).is_err());
    }

    /// A bias gradient's column sums are candle's `sum_keepdim(0)` bit for bit, on any number
    /// of cores and for a strided matrix too.
    #[test]
    fn column_sums_are_candles_row_sum_bit_for_bit() {
        let dev = Device::Cpu;
        let bits =
            |t: &Tensor| -> Vec<u32> { values(t).unwrap().iter().map(|v| v.to_bits()).collect() };
        for (n, c) in [(3072, 768), (1000, 7), (5, 1000), (1, 3)] {
            let x =
                Tensor::from_vec(Rng::new(n as u64).normal_vec(n * c, 3.0), (n, c), &dev).unwrap();
            let candle = bits(&x.sum_keepdim(0).unwrap().squeeze(0).unwrap());
            for cores in [1, 2, 3] {
                let ours = crate::nn::cores::with_cores(cores, || column_sums(&x).unwrap());
                assert_eq!(bits(&ours), candle, "{n} × {c} on {cores} cores");
            }
            let xt = x.t().unwrap();
            assert_eq!(
                bits(&column_sums(&xt).unwrap()),
                bits(&xt.sum_keepdim(0).unwrap().squeeze(0).unwrap())
            );
        }
    }

    /// The head's log-sum-exps in chunks of rows are those of the composition (`linear`, then
    /// `logsumexp_rows`) bit for bit, and so is the input's gradient of a loss that is their
    /// mean: handed over from the forward when the expected gradient is the one that comes,
    /// computed again otherwise (a wrong guess, none, or a loss of another scale), on one core
    /// and on two, for a row count that splits into uneven chunks and one below a chunk.
    #[test]
    fn linear_logsumexp_is_the_composition_bit_for_bit() {
        let dev = Device::Cpu;
        let bits =
            |t: &Tensor| -> Vec<u32> { values(t).unwrap().iter().map(|v| v.to_bits()).collect() };
        let recomputed = logsumexp_recomputed;
        for (n, e, c) in [(3 * LOGSUMEXP_CHUNK_ROWS + 77, 128, 2100), (100, 40, 130)] {
            let x = Var::from_vec(Rng::new(n as u64).normal_vec(n * e, 1.0), (n, e), &dev).unwrap();
            let w = Tensor::from_vec(Rng::new(2).normal_vec(c * e, 0.3), (c, e), &dev).unwrap();
            let b = Tensor::from_vec(Rng::new(3).normal_vec(c, 0.5), c, &dev).unwrap();
            for scale in [1.0 / n as f64, 0.37] {
                let mean = |lse: &Tensor| lse.sum_all().unwrap().affine(scale, 0.0).unwrap();
                let composed =
                    logsumexp_rows(&linear(x.as_tensor(), &w, &b, true, None).unwrap()).unwrap();
                let want_grad = mean(&composed).backward().unwrap();
                let want_grad = bits(want_grad.get(x.as_tensor()).unwrap());
                for (expected, hit) in [
                    (Some((1.0 / n as f64) as f32), scale != 0.37),
                    (Some(0.5), false),
                    (None, false),
                ] {
                    for cores in [1, 2] {
                        crate::nn::cores::with_cores(cores, || {
                            let before = recomputed();
                            let ours = linear_logsumexp(x.as_tensor(), &w, &b, expected).unwrap();
                            assert_eq!(bits(&ours), bits(&composed), "{n} rows, {cores} cores");
                            let grads = mean(&ours).backward().unwrap();
                            let grad = bits(grads.get(x.as_tensor()).unwrap());
                            assert_eq!(grad, want_grad, "{n} rows, {expected:?}, {cores} cores");
                            assert_eq!(recomputed() - before, usize::from(!hit), "{expected:?}");
                        });
                    }
                }
            }
            let most = LogitsInputs::chunks(n).map(|(_, rows)| rows).max().unwrap();
            assert!(
                most <= linear_logsumexp_rows_held(n),
                "{n} rows: a chunk of {most}"
            );
            // The weight must be a constant.
            let wv = Var::from_tensor(&w).unwrap();
            let lse = linear_logsumexp(x.as_tensor(), wv.as_tensor(), &b, None).unwrap();
            let err = lse.sum_all().unwrap().backward().unwrap_err().to_string();
            assert!(err.contains("linear-logsumexp"), "{err}");
        }
    }

    /// The custom LayerNorm and GELU agree with their composed definitions.
    #[test]
    fn custom_ops_match_composed_forms() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(Rng::new(5).normal_vec(3 * 8, 2.0), (3, 8), &dev).unwrap();
        let gamma = Var::from_vec(Rng::new(6).normal_vec(8, 1.0), 8, &dev).unwrap();
        let beta = Var::from_vec(Rng::new(7).normal_vec(8, 1.0), 8, &dev).unwrap();
        let ours = values(&layer_norm(&x, &gamma, &beta, 1e-5).unwrap()).unwrap();
        let ln = super::super::LayerNorm {
            gamma,
            beta,
            eps: 1e-5,
        };
        let composed = values(&ln.forward_composed(&x).unwrap()).unwrap();
        assert!(ours
            .iter()
            .zip(&composed)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        let ours = values(&gelu_new(&x).unwrap()).unwrap();
        let candle = values(&x.gelu().unwrap()).unwrap();
        assert!(ours.iter().zip(&candle).all(|(a, b)| (a - b).abs() < 1e-5));
        let ours = values(&gelu_erf(&x).unwrap()).unwrap();
        let candle = values(&x.gelu_erf().unwrap()).unwrap();
        assert_eq!(ours, candle);
        let ours = values(&softmax_last(&x, 0.5).unwrap()).unwrap();
        let candle = values(&candle_nn::ops::softmax(&(&x * 0.5).unwrap(), 1).unwrap()).unwrap();
        assert!(ours.iter().zip(&candle).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn gelu_is_the_tanh_form() {
        let xs = [-12.0f32, -2.0, -0.5, 0.003, 0.3, 1.7, 9.0];
        let y: Vec<f32> = gelu_new(&Tensor::new(&xs, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        for (&x, y) in xs.iter().zip(y) {
            let expected = gelu_new_exact(x);
            assert!((expected - y as f64).abs() < 1e-6, "{x}: {y} vs {expected}");
        }
    }
}
