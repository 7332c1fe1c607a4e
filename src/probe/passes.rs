//! Baseline proxies whose definitions need more than the probe's single forward and
//! backward: Fisher, attention confidence and the input Jacobian read gradient taps of the
//! probe's own pass; GraSP needs a Hessian-gradient product (one more forward and backward);
//! Synflow and LogSynflow need a pass of their own on the absolute-valued network.
//!
//! Deviations from the reference, on purpose (also in the README):
//! - GraSP's `H g` is a forward finite difference of gradients,
//!   `(∇ℒ(W + εg) − ∇ℒ(W)) / ε` with `ε‖g‖ = 10⁻³‖W‖` over the scored weights, instead of a
//!   double backward (candle has none). The perturbed pass reuses the probe's dropout masks.
//! - Synflow runs in f32 (sums in f64), without dropout, keeps the causal mask (the reference's
//!   `abs` of the mask buffer unmasks future tokens) and reads out FlexiBERT through
//!   `Σ Y ⊙ |r|` (the plain `Σ Y` is constant after the final LayerNorm).
//! - Jacob-Cov differentiates the probe's own backward signal with respect to the word
//!   embeddings (GPT-2: the mean NLL, not a random readout of full-vocabulary logits).

use std::time::Instant;

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::FisherWidth;
use crate::linalg;
use crate::nn::{ops, Params, Tap, TapSite};

/// Values of the extra-pass baselines of one architecture, with the time their passes took.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Σ over linears of `mult · Σ_k ½ mean_n (a_nk ∂ℒ/∂a_nk)²` (mult: the family's
    /// [`FisherWidth`], FlexiBERT `in`, GPT-2 `out`, the reference's broadcast factor).
    pub fisher: f64,
    /// Σ over every linear output of mean over (batch, channel) of the max over the sequence.
    pub attention_confidence: f64,
    /// `−Σ ln(λ + 1e−5) + 1/(λ + 1e−5)` over eigenvalues of the correlation between batch rows
    /// of `∂ℒ/∂(word embeddings)`.
    pub jacob_cov: f64,
    /// `Σ −W ⊙ (H g)` over the scored linears.
    pub grasp: f64,
    /// `Σ |W ⊙ ∇W|` over the scored linears of the absolute-valued network on an all-ones input.
    pub synflow: f64,
    /// `Σ |W| · |ln |∇W||` over the same pass (a zero gradient gives +∞).
    pub logsynflow: f64,
    /// Seconds of the GraSP pass.
    pub grasp_seconds: f64,
    /// Seconds of the Synflow pass.
    pub synflow_seconds: f64,
}

/// What one gradient tap contributes to the tap-based extras ([`from_terms`]), read as soon as
/// its gradient exists: a pass run block by block drops each block's gradients right after
/// that block's backward.
#[derive(Clone, Debug, PartialEq)]
pub enum TapTerm {
    /// A linear layer's output.
    Linear {
        /// Input width (Fisher's multiplier for [`FisherWidth::Input`]).
        in_dim: usize,
        /// Output width (Fisher's multiplier for [`FisherWidth::Output`]).
        out_dim: usize,
        /// `Σ (a ∂ℒ/∂a)²` over every entry.
        squared_sum: f64,
        /// Rows of the output (entries over the width).
        rows: usize,
        /// Mean over (batch, channel) of the max over the sequence; `None` for a 2-d output.
        confidence: Option<f64>,
    },
    /// Jacob-Cov of the word-embedding tap.
    JacobCov(f64),
}

/// The terms of `taps` (in their order) with the gradients `grads` of the backward that
/// reached them; a tap the backward did not reach gives none.
pub fn tap_terms(taps: &[Tap], grads: &GradStore) -> Result<Vec<TapTerm>> {
    let mut terms = Vec::with_capacity(taps.len());
    for tap in taps {
        if let Some(g) = tap.grad(grads)? {
            terms.push(tap_term(tap.site, &tap.value, &g)?);
        }
    }
    Ok(terms)
}

/// The term of a tap at `site` on the activation `value` whose gradient is `g` (shaped as
/// `value`).
///
/// A linear's term is read in place in one pass: `Σ (a ∂ℒ/∂a)²` with each product and square
/// in f64 and the sum running over the entries in order from zero, and the confidence (the
/// maximum over axis 1, the first entry kept unless a later one is larger, then the mean of
/// the maxima in f64 as a sum times its reciprocal count): the values of the composition of
/// candle ops (conversions to f64, products, `max(1)`, `sum_all`, `mean_all`) it replaces,
/// bit for bit, without its f64 copies of every activation.
pub fn tap_term(site: TapSite, value: &Tensor, g: &Tensor) -> Result<TapTerm> {
    Ok(match site {
        TapSite::Linear {
            in_dim, out_dim, ..
        } => {
            let dims = value.dims().to_vec();
            let width = *dims.last().unwrap_or(&1);
            let (value, g) = (value.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
            let (squared_sum, confidence) = ops::with_values(&value, "tap", |v| {
                let squared_sum = ops::with_values(&g, "tap", |gs| {
                    if gs.len() != v.len() {
                        return Err(candle_core::Error::Msg(format!(
                            "tap: activation {dims:?} and gradient {:?} differ in size",
                            g.dims()
                        )));
                    }
                    let mut sum = 0f64;
                    for (&a, &b) in v.iter().zip(gs) {
                        let p = a as f64 * b as f64;
                        sum += p * p;
                    }
                    Ok(sum)
                })?;
                let confidence = (dims.len() >= 3).then(|| confidence(v, &dims));
                Ok((squared_sum, confidence))
            })?;
            TapTerm::Linear {
                in_dim,
                out_dim,
                squared_sum,
                rows: value.elem_count() / width.max(1),
                confidence,
            }
        }
        TapSite::Embedding => {
            let b = value.dims()[0];
            let j = g.flatten_all()?.to_vec1::<f32>()?;
            let cols = j.len() / b.max(1);
            TapTerm::JacobCov(linalg::log_eigen_score(&linalg::corrcoef_rows(&j, b, cols)))
        }
    })
}

/// The mean over (axis 0, axes 2…) of the maximum over axis 1 of the values `v` of an array
/// of `dims` (rank 3 or more): each maximum starts at the first entry and takes a later one
/// only when it is larger (a NaN first stays; a NaN later is passed over), the maxima are
/// summed in f64 in order from zero, and the sum is multiplied by the reciprocal of their
/// count: candle's `max(1)` then `mean_all` in f64.
fn confidence(v: &[f32], dims: &[usize]) -> f64 {
    let (outer, mid) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    if outer * mid * inner == 0 {
        return f64::NAN;
    }
    let mut sum = 0f64;
    let mut maxima = vec![0f32; inner];
    for block in v.chunks_exact(mid * inner).take(outer) {
        maxima.copy_from_slice(&block[..inner]);
        for row in block.chunks_exact(inner) {
            for (m, &x) in maxima.iter_mut().zip(row) {
                if *m < x {
                    *m = x;
                }
            }
        }
        for &m in &maxima {
            sum += m as f64;
        }
    }
    sum * (1.0 / (outer * inner) as f64) + 0.0
}

/// Fisher, attention confidence and Jacob-Cov from the terms of the probe's taps, in the
/// order the forward pass recorded them; `fisher_width` is the family's Fisher multiplier.
pub fn from_terms(terms: &[TapTerm], fisher_width: FisherWidth) -> Extras {
    let mut out = Extras::default();
    for term in terms {
        match *term {
            TapTerm::Linear {
                in_dim,
                out_dim,
                squared_sum,
                rows,
                confidence,
            } => {
                let mult = match fisher_width {
                    FisherWidth::Input => in_dim,
                    FisherWidth::Output => out_dim,
                };
                out.fisher += mult as f64 * 0.5 * squared_sum / rows.max(1) as f64;
                if let Some(c) = confidence {
                    out.attention_confidence += c;
                }
            }
            TapTerm::JacobCov(v) => out.jacob_cov = v,
        }
    }
    out
}

/// GraSP's `Σ −W ⊙ (H g)` over `weights`, with `g` their gradients in `grads` and
/// `gradients` a fresh forward and backward of the same signal (same batch, same dropout
/// masks) at the weights as they then are. Weights are restored.
///
/// Every sum reads the tensors in place, in f64, each tensor's entries in order from zero and
/// the tensors' sums added in order: the values of the composition of candle ops (f64 copies,
/// squares or products, `sum_all`, the perturbation as `affine` and a sum in f32, the
/// difference quotient as a division by ε) it replaces, bit for bit, without its f64 copies of
/// every weight and gradient.
pub fn grasp(
    weights: &[&Var],
    grads: &GradStore,
    gradients: impl FnOnce() -> Result<GradStore>,
) -> Result<f64> {
    let g: Vec<Tensor> = weights
        .iter()
        .map(|w| match grads.get(w.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => w.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    // Σ over the tensors of (Σ over a tensor's entries of x² in f64).
    let squares = |ts: &[Tensor]| -> Result<f64> {
        let mut total = 0f64;
        for t in ts {
            total += ops::with_values(t, "grasp", |a| {
                let mut s = 0f64;
                for &x in a {
                    s += x as f64 * x as f64;
                }
                Ok(s)
            })?;
        }
        Ok(total)
    };
    // Copies: setting a variable writes into its storage.
    let originals: Vec<Tensor> = weights
        .iter()
        .map(|w| w.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let w_norm = squares(&originals)?.sqrt();
    let g_norm = squares(&g)?.sqrt();
    if g_norm == 0.0 || !g_norm.is_finite() {
        return Ok(f64::NAN);
    }
    let eps = 1e-3 * w_norm / g_norm;
    let step = eps as f32;
    for ((w, orig), gi) in weights.iter().zip(&originals).zip(&g) {
        let moved = ops::with_values(orig, "grasp", |a| {
            ops::with_values(gi, "grasp", |b| {
                Ok(a.iter()
                    .zip(b)
                    .map(|(&w, &d)| w + (d * step + 0.0))
                    .collect::<Vec<_>>())
            })
        })?;
        w.set(&Tensor::from_vec(moved, orig.dims(), orig.device())?)?;
    }
    let perturbed = gradients();
    for (w, orig) in weights.iter().zip(&originals) {
        w.set(orig)?;
    }
    let g2 = perturbed?;
    let inv = 1.0 / eps;
    let mut total = 0f64;
    for ((w, gi), orig) in weights.iter().zip(&g).zip(&originals) {
        let g2i = match g2.get(w.as_tensor()) {
            Some(t) => t.clone(),
            None => gi.zeros_like()?,
        };
        // Σ W ⊙ (g₂ − g)/ε, the quotient as candle's division by ε (a product with 1/ε).
        let wh = ops::with_values(orig, "grasp", |o| {
            ops::with_values(&g2i, "grasp", |a| {
                ops::with_values(gi, "grasp", |b| {
                    let mut s = 0f64;
                    for ((&w, &p), &q) in o.iter().zip(a).zip(b) {
                        s += w as f64 * ((p as f64 - q as f64) * inv + 0.0);
                    }
                    Ok(s)
                })
            })
        })?;
        total -= wh;
    }
    Ok(total)
}

/// Synflow and LogSynflow: every parameter of `params` is replaced by its absolute value
/// (the model is left that way), `readout` runs the pass on the all-ones input and returns
/// the scalar to differentiate; the scores sum over `weights`.
pub fn synflow(
    params: &Params,
    weights: &[&Var],
    readout: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<(f64, f64)> {
    for (_, var) in params.vars() {
        var.set(&var.as_tensor().abs()?)?;
    }
    let grads = readout()?.backward()?;
    let (mut syn, mut logsyn) = (0f64, 0f64);
    for w in weights {
        let Some(g) = grads.get(w.as_tensor()) else {
            continue;
        };
        let w64 = w.as_tensor().to_dtype(DType::F64)?;
        let g64 = g.to_dtype(DType::F64)?.abs()?;
        syn += (&w64 * &g64)?.sum_all()?.to_scalar::<f64>()?;
        logsyn += (&w64 * g64.log()?.abs()?)?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok((syn, logsyn))
}

/// Completes `ex` (from [`from_terms`]) with the GraSP pass (`gradients`: a fresh forward and
/// backward of the probe's signal) and then the Synflow pass (`readout`), timing each. `grads` (the probe's)
/// are dropped between the two; the weights end absolute-valued.
pub fn run(
    mut ex: Extras,
    params: &Params,
    weights: &[&Var],
    grads: GradStore,
    gradients: impl FnOnce() -> Result<GradStore>,
    readout: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<Extras> {
    let start = Instant::now();
    ex.grasp = grasp(weights, &grads, gradients)?;
    ex.grasp_seconds = start.elapsed().as_secs_f64();
    drop(grads);
    let start = Instant::now();
    (ex.synflow, ex.logsynflow) = synflow(params, weights, readout)?;
    ex.synflow_seconds = start.elapsed().as_secs_f64();
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Taps;
    use candle_core::Device;

    #[test]
    fn grasp_is_exact_on_a_quadratic() {
        // ℒ = c/2 Σ w²: g = c w, H = c I, so Σ −W ⊙ Hg = −c² Σ w² = −0.25 · 14.
        let w = Var::from_vec(vec![1f32, -2.0, 3.0], 3, &Device::Cpu).unwrap();
        let loss = || w.as_tensor().sqr()?.sum_all()?.affine(0.25, 0.0);
        let grads = loss().unwrap().backward().unwrap();
        let v = grasp(&[&w], &grads, || Ok(loss()?.backward()?)).unwrap();
        assert!((v + 3.5).abs() < 1e-3, "{v}");
        // The weights are restored.
        assert_eq!(
            w.as_tensor().to_vec1::<f32>().unwrap(),
            vec![1.0, -2.0, 3.0]
        );
    }

    /// `Σ x²` of `t` as candle ops compose it (an f64 copy, `sqr`, `sum_all`): the reference
    /// the sums read in place are compared with.
    fn candle_square_sum(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// GraSP read in place gives the values of the candle composition it replaced (f64
    /// copies, `sum_all`, `affine`), bit for bit, and restores the weights.
    #[test]
    fn grasp_in_place_is_the_candle_composition_bit_for_bit() {
        let dev = Device::Cpu;
        let draw = |n: usize, seed: u64| crate::rng::Rng::new(seed).normal_vec(n, 0.7);
        let w1 = Var::from_vec(draw(1200, 1), (30, 40), &dev).unwrap();
        let w2 = Var::from_vec(draw(800, 2), (40, 20), &dev).unwrap();
        let x = Tensor::from_vec(draw(750, 3), (25, 30), &dev).unwrap();
        let loss = || -> candle_core::Result<Tensor> {
            let h = x.matmul(w1.as_tensor())?.tanh()?;
            h.matmul(w2.as_tensor())?.sqr()?.sum_all()
        };
        let grads = loss().unwrap().backward().unwrap();
        let ours = grasp(&[&w1, &w2], &grads, || Ok(loss()?.backward()?)).unwrap();
        // The composition, as it was written before.
        let weights = [&w1, &w2];
        let g: Vec<Tensor> = weights
            .iter()
            .map(|w| grads.get(w.as_tensor()).unwrap().clone())
            .collect();
        let sq = |ts: &mut dyn Iterator<Item = &Tensor>| -> f64 {
            let mut s = 0f64;
            for t in ts {
                s += candle_square_sum(t);
            }
            s
        };
        let w_norm = sq(&mut weights.iter().map(|w| w.as_tensor())).sqrt();
        let g_norm = sq(&mut g.iter()).sqrt();
        let eps = 1e-3 * w_norm / g_norm;
        let originals: Vec<Tensor> = weights
            .iter()
            .map(|w| w.as_tensor().copy().unwrap())
            .collect();
        for (w, gi) in weights.iter().zip(&g) {
            w.set(&(w.as_tensor() + gi.affine(eps, 0.0).unwrap()).unwrap())
                .unwrap();
        }
        let g2 = loss().unwrap().backward().unwrap();
        for (w, orig) in weights.iter().zip(&originals) {
            w.set(orig).unwrap();
        }
        let mut composed = 0f64;
        for ((w, gi), orig) in weights.iter().zip(&g).zip(&originals) {
            let g2i = g2.get(w.as_tensor()).unwrap();
            let hg = ((g2i.to_dtype(DType::F64).unwrap() - gi.to_dtype(DType::F64).unwrap())
                .unwrap()
                / eps)
                .unwrap();
            composed -= (orig.to_dtype(DType::F64).unwrap() * hg)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        assert_eq!(
            ours.to_bits(),
            composed.to_bits(),
            "{ours} against {composed}"
        );
        assert_eq!(
            w1.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            draw(1200, 1)
        );
    }

    #[test]
    fn synflow_uses_absolute_weights() {
        let mut params = Params::default();
        let t = Tensor::new(&[[1f32, -2.0], [3.0, -4.0]], &Device::Cpu).unwrap();
        let w = params.register("w", &t).unwrap();
        // R = Σ W: ∇W = 1, so synflow = Σ |W| = 10 and logsynflow = Σ |W| |ln 1| = 0.
        let (syn, logsyn) = synflow(&params, &[&w], || w.as_tensor().sum_all()).unwrap();
        assert_eq!((syn, logsyn), (10.0, 0.0));
        let abs = w.as_tensor().to_vec2::<f32>().unwrap();
        assert_eq!(abs, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    }

    /// A linear layer's fused tap and the zero-variable tap on the same output give the same
    /// gradient, the same Fisher and attention confidence, and the same input gradient.
    #[test]
    fn fused_linear_tap_is_the_zero_variable_tap() {
        use crate::nn::{Layout, Linear, LinearRole};
        use crate::rng::Rng;
        let dev = Device::Cpu;
        let x = Var::from_vec(Rng::new(5).normal_vec(2 * 5 * 3, 1.0), (2, 5, 3), &dev).unwrap();
        let lin = Linear {
            name: "l".into(),
            layer: Some(0),
            role: LinearRole::FfnIn,
            weight: Var::from_vec(Rng::new(6).normal_vec(4 * 3, 1.0), (4, 3), &dev).unwrap(),
            bias: Some(Var::from_vec(Rng::new(7).normal_vec(4, 1.0), 4, &dev).unwrap()),
            layout: Layout::OutIn,
        };
        let run = |fused: bool| {
            let taps = Taps::default();
            taps.set_enabled(true);
            let y = if fused {
                taps.linear(&lin, x.as_tensor()).unwrap()
            } else {
                taps.tap(lin.tap_site(), lin.forward(x.as_tensor()).unwrap())
                    .unwrap()
            };
            let grads = y.tanh().unwrap().sum_all().unwrap().backward().unwrap();
            let taps = taps.take();
            assert_eq!(taps.len(), 1);
            let g = taps[0]
                .grad(&grads)
                .unwrap()
                .expect("the tap has a gradient");
            assert_eq!(g.dims(), &[2, 5, 4]);
            let ex = from_terms(&tap_terms(&taps, &grads).unwrap(), FisherWidth::Output);
            let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
            (
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                ex.fisher,
                ex.attention_confidence,
                dx.to_vec1::<f32>().unwrap(),
            )
        };
        assert_eq!(run(true), run(false));
    }

    /// A linear tap's term read in place is the composition of candle ops it replaces, bit
    /// for bit: ranks 2, 3 and 4, a NaN first along axis 1 and one later.
    #[test]
    fn tap_term_is_the_candle_composition_bit_for_bit() {
        let dev = Device::Cpu;
        let site = TapSite::Linear {
            role: crate::nn::LinearRole::Mixer,
            in_dim: 3,
            out_dim: 5,
        };
        for dims in [vec![6, 5], vec![3, 7, 5], vec![2, 4, 3, 5]] {
            let n: usize = dims.iter().product();
            let mut v = crate::rng::Rng::new(n as u64).normal_vec(n, 2.0);
            let g = crate::rng::Rng::new(n as u64 + 1).normal_vec(n, 0.5);
            v[1] = f32::NAN;
            v[n - 1] = f32::NAN;
            let value = Tensor::from_vec(v, dims.as_slice(), &dev).unwrap();
            let grad = Tensor::from_vec(g, dims.as_slice(), &dev).unwrap();
            let TapTerm::Linear {
                squared_sum,
                confidence,
                rows,
                ..
            } = tap_term(site, &value, &grad).unwrap()
            else {
                panic!("a linear's tap gives a linear's term");
            };
            let prod =
                (value.to_dtype(DType::F64).unwrap() * grad.to_dtype(DType::F64).unwrap()).unwrap();
            let composed = candle_square_sum(&prod);
            assert_eq!(squared_sum.to_bits(), composed.to_bits(), "{dims:?}");
            assert_eq!(rows, n / 5);
            let composed = (dims.len() >= 3).then(|| {
                value
                    .max(1)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            });
            assert_eq!(
                confidence.map(f64::to_bits),
                composed.map(f64::to_bits),
                "{dims:?}"
            );
        }
    }

    #[test]
    fn fisher_from_a_tap() {
        let taps = Taps::default();
        taps.set_enabled(true);
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let site = TapSite::Linear {
            role: crate::nn::LinearRole::FfnIn,
            in_dim: 3,
            out_dim: 2,
        };
        let y = taps.tap(site, x).unwrap();
        // ℒ = ½ Σ y²: ∂ℒ/∂a = a, f_k = ½ mean_n a⁴ → ½ (41 + 136) summed over k.
        let grads = (y.sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        let taps = taps.take();
        let gpt2 = from_terms(&tap_terms(&taps, &grads).unwrap(), FisherWidth::Output);
        assert!((gpt2.fisher - 2.0 * 88.5).abs() < 1e-9, "{}", gpt2.fisher);
        let bert = from_terms(&tap_terms(&taps, &grads).unwrap(), FisherWidth::Input);
        assert!((bert.fisher - 3.0 * 88.5).abs() < 1e-9);
    }
}
