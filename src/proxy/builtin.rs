//! The named, human-designed proxies computed from a probe: spec §3.2 (clean semantics) for
//! FlexiBERT, §3.3 (LPZero's measures) for GPT-2.
//!
//! Every function reads only the [`Probe`]; none runs a model. Clean semantics means: one
//! forward per probe (no duplicated hooks), real gradients under the default backward signal,
//! and no in-place mutation. Where a definition differs by family, the proxy asks the probe
//! (its FFN activations, the linears it reads, ...), which answers after its family's
//! [`Semantics`]; `decoder_params` applies only to families with decoder parameters (GPT-2) and
//! gives NaN on the others.

use crate::array::Array;
use crate::bench::BenchKind;
use crate::linalg;
use crate::probe::{Aggregate, Probe, Semantics};

/// Whether a higher proxy value predicts a better architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// Higher value = better architecture.
    HigherIsBetter,
    /// Lower value = better architecture.
    LowerIsBetter,
}

impl Orientation {
    /// The factor that makes a value higher-is-better: 1 or −1.
    pub fn sign(self) -> f64 {
        match self {
            Orientation::HigherIsBetter => 1.0,
            Orientation::LowerIsBetter => -1.0,
        }
    }
}

/// A named proxy: its name, orientation, which families it is defined for, and its function.
pub struct Builtin {
    /// Name used on the command line.
    pub name: &'static str,
    /// What a higher value means.
    pub orientation: Orientation,
    /// What the computation reads of the probe (an extra-pass proxy is computed by
    /// `lpzero baselines` or when named in `score`).
    pub reads: Reads,
    /// Whether the proxy is defined for a family, from the family's [`Semantics`]. On another
    /// family `compute` returns NaN (ranked last by the scorer); `lpzero score --proxy all`
    /// lists only the proxies that apply ([`for_family`]).
    pub applies: fn(&Semantics) -> bool,
    /// The computation.
    pub compute: fn(&Probe) -> f64,
}

/// What a built-in proxy reads of a probe. A probe assembled in parts (the Llama family's
/// layer-by-layer pass, which cannot hold every linear's weights and gradients at once) knows
/// from it whether and how it can compute the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Only the parameter counts.
    Counts,
    /// What the pass produced besides the linears: the captures (`act`, `head`, `softmax`,
    /// the mixer outputs), the position gradient, the loss, and the counts. No linear.
    Captures,
    /// Only the linears, as a sum of one term per linear: its value on a set of linears is the
    /// sum of its values on the parts of any split of the set.
    LinearSum,
    /// The linears all together (a sum divided by how many linears it read).
    AllLinears,
    /// The results of the extra passes ([`crate::probe::passes`]).
    Extras,
}

impl Builtin {
    /// True when the value needs the probe's extra passes ([`crate::probe::passes`]).
    pub fn extra_passes(&self) -> bool {
        self.reads == Reads::Extras
    }

    /// True when the value is a sum of [`Probe::diversity_terms`] (`synaptic_diversity` and
    /// its normalised form), which a probe can start ahead
    /// ([`crate::probe::ProbeOptions::diversity_ahead`]).
    pub fn reads_diversity_terms(&self) -> bool {
        matches!(
            self.name,
            "synaptic_diversity" | "synaptic_diversity_normalized"
        )
    }

    /// True when the proxy is defined for the registered family `kind`.
    pub fn applies_to(&self, kind: BenchKind) -> bool {
        (self.applies)(crate::models::family(kind).semantics())
    }
}

/// Defined for every family.
const ANY: fn(&Semantics) -> bool = |_| true;
/// Defined for the families with decoder parameters.
const DECODERS: fn(&Semantics) -> bool = |s| !s.decoder_groups.is_empty();

/// All built-in human-designed proxies. Every one is higher-is-better against the oriented
/// ground truth (GLUE; `-valid_ppl` for GPT-2).
///
/// Where the definition differs by family the probe's semantics select it (spec §3.2 for
/// FlexiBERT, §3.3 for GPT-2, whose "linears" are the 4L Conv1D layers, weights in × out).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "params",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Counts,
        applies: ANY,
        compute: params,
    },
    Builtin {
        name: "decoder_params",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Counts,
        applies: DECODERS,
        compute: decoder_params,
    },
    Builtin {
        name: "head_confidence",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: head_confidence,
    },
    Builtin {
        name: "head_confidence_normalized",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: head_confidence_normalized,
    },
    Builtin {
        name: "head_softmax_confidence",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: head_softmax_confidence,
    },
    Builtin {
        name: "head_softmax_confidence_normalized",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: head_softmax_confidence_normalized,
    },
    Builtin {
        name: "activation_distance",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: activation_distance,
    },
    Builtin {
        name: "synaptic_diversity",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: synaptic_diversity,
    },
    Builtin {
        name: "synaptic_diversity_normalized",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::AllLinears,
        applies: ANY,
        compute: synaptic_diversity_normalized,
    },
    Builtin {
        name: "synaptic_saliency",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: synaptic_saliency,
    },
    Builtin {
        name: "synaptic_saliency_normalized",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::AllLinears,
        applies: ANY,
        compute: synaptic_saliency_normalized,
    },
    Builtin {
        name: "head_importance",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: head_importance,
    },
    Builtin {
        name: "head_importance_normalized",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::AllLinears,
        applies: ANY,
        compute: head_importance_normalized,
    },
    Builtin {
        name: "grad_norm",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: grad_norm,
    },
    Builtin {
        name: "snip",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: snip,
    },
    Builtin {
        name: "jacobian_cosine",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: jacobian_cosine,
    },
    Builtin {
        name: "jacobian_score",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: jacobian_score,
    },
    Builtin {
        name: "attention_confidence",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Extras,
        applies: ANY,
        compute: attention_confidence,
    },
    Builtin {
        name: "fisher",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Extras,
        applies: ANY,
        compute: fisher,
    },
    Builtin {
        name: "grasp",
        orientation: Orientation::LowerIsBetter,
        reads: Reads::Extras,
        applies: ANY,
        compute: grasp,
    },
    Builtin {
        name: "synflow",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Extras,
        applies: ANY,
        compute: synflow,
    },
    Builtin {
        name: "logsynflow",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Extras,
        applies: |s| s.synflow_reaches_every_linear,
        compute: logsynflow,
    },
    Builtin {
        name: "jacob_cov",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Extras,
        applies: ANY,
        compute: jacob_cov,
    },
    Builtin {
        name: "jacob_cov_relu",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: jacob_cov_relu,
    },
    Builtin {
        name: "eznas",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::LinearSum,
        applies: ANY,
        compute: eznas,
    },
    Builtin {
        name: "w_pca",
        orientation: Orientation::HigherIsBetter,
        reads: Reads::Captures,
        applies: ANY,
        compute: w_pca,
    },
];

/// Looks a built-in proxy up by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The built-in proxies defined for a family, in table order.
pub fn for_family(kind: BenchKind) -> impl Iterator<Item = &'static Builtin> {
    BUILTINS.iter().filter(move |b| b.applies_to(kind))
}

fn params(p: &Probe) -> f64 {
    p.params as f64
}

fn decoder_params(p: &Probe) -> f64 {
    p.decoder_params().map_or(f64::NAN, |n| n as f64)
}

/// Σ_j over the output's last axis of max over axis 1, averaged over (batch, channel).
fn mean_of_max_over_axis1(a: &Array) -> f64 {
    let shape = a.shape();
    if shape.len() < 2 || a.is_empty() {
        return f64::NAN;
    }
    let outer = shape[0];
    let mid = shape[1];
    let inner: usize = shape[2..].iter().product();
    let data = a.data();
    let mut total = 0f64;
    // The maxima of one outer block, row by row (each over axis 1 in its order, as a walk
    // down each column would take them, but reading the rows in place).
    let mut maxima = vec![f32::NEG_INFINITY; inner];
    for block in data.chunks_exact(mid * inner).take(outer) {
        maxima.fill(f32::NEG_INFINITY);
        for row in block.chunks_exact(inner) {
            for (m, &v) in maxima.iter_mut().zip(row) {
                *m = m.max(v);
            }
        }
        for &m in &maxima {
            total += m as f64;
        }
    }
    total / (outer * inner) as f64
}

fn head_confidence(p: &Probe) -> f64 {
    p.mixer_outputs.iter().map(mean_of_max_over_axis1).sum()
}

fn head_confidence_normalized(p: &Probe) -> f64 {
    head_confidence(p) / mixer_output_count(p)
}

/// The number of arrays `head_confidence` sums over.
fn mixer_output_count(p: &Probe) -> f64 {
    p.mixer_outputs.len() as f64
}

fn head_softmax_confidence(p: &Probe) -> f64 {
    p.softmax.iter().map(mean_of_max_over_axis1).sum()
}

fn head_softmax_confidence_normalized(p: &Probe) -> f64 {
    head_softmax_confidence(p) / softmax_count(p)
}

/// The number of arrays `head_softmax_confidence` sums over.
fn softmax_count(p: &Probe) -> f64 {
    p.softmax.len() as f64
}

/// `Σ_u n_u² + (T − n_u)²` for batch row 0 of a B × T × W activation, `n_u` the number of
/// positive entries of channel `u`.
fn activation_distance_one(a: &Array) -> f64 {
    let shape = a.shape();
    let (t, w) = (shape[1], shape[2]);
    let row0 = &a.data()[..t * w];
    let mut positive = vec![0u64; w];
    for tok in row0.chunks_exact(w) {
        for (n, &x) in positive.iter_mut().zip(tok) {
            *n += (x > 0.0) as u64;
        }
    }
    positive
        .iter()
        .map(|&n| (n * n + (t as u64 - n) * (t as u64 - n)) as f64)
        .sum()
}

/// The mean over the `act` entries (FlexiBERT), or their sum (GPT-2: the reference sums over
/// the hooked Conv1D outputs, its harness's `sum_arr`).
fn activation_distance(p: &Probe) -> f64 {
    let total = p.act.iter().map(activation_distance_one).sum::<f64>();
    match p.semantics.activation_distance {
        Aggregate::Mean => total / p.act.len() as f64,
        Aggregate::Sum => total,
    }
}

/// Σ ‖W‖_* ‖∇W‖_* over the linears the probe's family names: FlexiBERT mixer-block linears
/// (mixer linears and the output dense), GPT-2 every Conv1D. The terms
/// ([`Probe::diversity_terms`]: an eigenvalue problem per matrix, the costly part) may have
/// been started while the probe ran; the sum runs in the linears' order.
fn synaptic_diversity(p: &Probe) -> f64 {
    p.diversity_terms().into_iter().sum()
}

fn synaptic_diversity_normalized(p: &Probe) -> f64 {
    synaptic_diversity(p) / diversity_count(p)
}

/// The number of linears `synaptic_diversity` sums over.
fn diversity_count(p: &Probe) -> f64 {
    p.diversity_linears().count() as f64
}

/// A count read from a probe that a derived built-in divides its base's value by.
pub type Divisor = fn(&Probe) -> f64;

/// Built-ins whose value is another built-in's divided by a count read from the probe:
/// `(name, base, divisor)`, with `compute(p) == base.compute(p) / divisor(p)` bit for bit.
/// Each divisor counts linears or captured arrays, so it is a sum over any split of the layers
/// (the streaming pass of a large model adds up a sum over linears and its count layer by
/// layer; a proxy of the captures it computes at the end).
const DERIVED: &[(&str, &str, Divisor)] = &[
    (
        "head_confidence_normalized",
        "head_confidence",
        mixer_output_count,
    ),
    (
        "head_softmax_confidence_normalized",
        "head_softmax_confidence",
        softmax_count,
    ),
    (
        "synaptic_diversity_normalized",
        "synaptic_diversity",
        diversity_count,
    ),
    (
        "synaptic_saliency_normalized",
        "synaptic_saliency",
        saliency_count,
    ),
    (
        "head_importance_normalized",
        "head_importance",
        head_importance_count,
    ),
];

/// For a built-in that is another's value divided by a count (`DERIVED`): the base's name
/// and the divisor, so a caller that computes both derives this one from the base's value
/// (the same bits) instead of repeating the work (for `synaptic_diversity_normalized`, every
/// nuclear norm a second time).
pub fn derived_from(name: &str) -> Option<(&'static str, Divisor)> {
    DERIVED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, base, divisor)| (base, divisor))
}

/// Σ |W ⊙ ∇W| (accumulated in f64).
fn saliency(weight: &Array, grad: &Array) -> f64 {
    weight
        .data()
        .iter()
        .zip(grad.data().iter())
        .map(|(&w, &g)| (w as f64 * g as f64).abs())
        .sum()
}

/// Over the linears the probe's family names: FlexiBERT FFN linears, GPT-2 every Conv1D.
fn synaptic_saliency(p: &Probe) -> f64 {
    p.saliency_linears()
        .map(|l| saliency(&l.weight, &l.grad))
        .sum()
}

fn synaptic_saliency_normalized(p: &Probe) -> f64 {
    synaptic_saliency(p) / saliency_count(p)
}

/// The number of linears `synaptic_saliency` sums over.
fn saliency_count(p: &Probe) -> f64 {
    p.saliency_linears().count() as f64
}

/// Over the linears with `weight.shape[0] ≥ 128` among those the probe's family names:
/// FlexiBERT mixer linears (out × in: ≥ 128 outputs), GPT-2 Conv1Ds (in × out: ≥ 128
/// *inputs*, the reference's quirk; for d_model = 64 only the MLP `c_proj` qualifies).
fn head_importance(p: &Probe) -> f64 {
    p.head_importance_linears()
        .map(|l| saliency(&l.weight, &l.grad))
        .sum()
}

fn head_importance_normalized(p: &Probe) -> f64 {
    head_importance(p) / head_importance_count(p)
}

/// The number of linears `head_importance` sums over.
fn head_importance_count(p: &Probe) -> f64 {
    p.head_importance_linears().count() as f64
}

/// Frobenius norm accumulated in f64.
fn frobenius(a: &Array) -> f64 {
    a.data()
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

fn grad_norm(p: &Probe) -> f64 {
    p.linears.iter().map(|l| frobenius(&l.grad)).sum()
}

fn snip(p: &Probe) -> f64 {
    p.linears.iter().map(|l| saliency(&l.weight, &l.grad)).sum()
}

/// The position-table gradient as M = Jᵀ (embedding dims × positions).
fn jacobian_rows(p: &Probe) -> (Vec<f32>, usize, usize) {
    let (pos, dims) = p.position_grad.dims2().expect("position table is a matrix");
    (
        linalg::transpose(&p.position_grad.data(), pos, dims),
        dims,
        pos,
    )
}

fn jacobian_cosine(p: &Probe) -> f64 {
    let (m, n, cols) = jacobian_rows(p);
    let norms: Vec<f64> = m
        .chunks_exact(cols)
        .map(|r| r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut total = 0f64;
    for i in 0..n {
        for j in 0..i {
            let dot: f64 = m[i * cols..(i + 1) * cols]
                .iter()
                .zip(&m[j * cols..(j + 1) * cols])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let cos = dot / (norms[i] * norms[j]);
            total += cos.abs().powf(0.05);
        }
    }
    1.0 - total / (n * (n - 1)) as f64
}

fn jacobian_score(p: &Probe) -> f64 {
    let (m, n, cols) = jacobian_rows(p);
    linalg::log_eigen_score(&linalg::corrcoef_rows(&m, n, cols))
}

/// An extra-pass value, NaN when the probe ran without the extra passes.
fn extra(p: &Probe, f: impl Fn(&crate::probe::passes::Extras) -> f64) -> f64 {
    p.extras.as_ref().map_or(f64::NAN, f)
}

fn attention_confidence(p: &Probe) -> f64 {
    extra(p, |e| e.attention_confidence)
}

fn fisher(p: &Probe) -> f64 {
    extra(p, |e| e.fisher)
}

fn grasp(p: &Probe) -> f64 {
    extra(p, |e| e.grasp)
}

fn synflow(p: &Probe) -> f64 {
    extra(p, |e| e.synflow)
}

fn logsynflow(p: &Probe) -> f64 {
    if !p.semantics.synflow_reaches_every_linear {
        return f64::NAN;
    }
    extra(p, |e| e.logsynflow)
}

fn jacob_cov(p: &Probe) -> f64 {
    extra(p, |e| e.jacob_cov)
}

/// Tokens `jacob_cov_relu` uses: the first rows of the batch, at most this many tokens (at
/// least one row). The reference uses all B·T (3 072 for GPT-2); ln det of that K costs more
/// than the probe.
pub const JACOB_COV_RELU_TOKENS: usize = 512;

/// Over the FFN activations of the probe (FlexiBERT the GELU outputs, which are positive
/// exactly where the pre-activations are; GPT-2 the `c_fc` pre-activations).
fn jacob_cov_relu(p: &Probe) -> f64 {
    let acts = p.ffn_activations();
    let Some(first) = acts.first() else {
        return f64::NAN;
    };
    let shape = first.shape();
    if shape.len() < 3 {
        return f64::NAN;
    }
    let (b, t) = (shape[0], shape[1]);
    let rows = (JACOB_COV_RELU_TOKENS / t.max(1)).clamp(1, b.max(1));
    let n = rows * t;
    // Binary codes of the n tokens over every hook, concatenated.
    let mut codes: Vec<Vec<bool>> = vec![Vec::new(); n];
    for a in &acts {
        let m = *a.shape().last().unwrap_or(&0);
        if a.shape().len() < 3 || a.shape()[..2] != [b, t] || m == 0 {
            return f64::NAN;
        }
        for (tok, code) in codes.iter_mut().enumerate() {
            code.extend(a.data()[tok * m..(tok + 1) * m].iter().map(|&v| v > 0.0));
        }
    }
    // Tokens with identical codes (in a causal decoder: any repeated prefix, e.g. two rows
    // starting with the same token) make K singular by construction: count each code once.
    codes.sort_unstable();
    codes.dedup();
    let (n, m) = (codes.len(), codes[0].len());
    let x: Vec<f32> = codes.iter().flatten().map(|&c| c as u8 as f32).collect();
    let c: Vec<f64> = codes
        .iter()
        .map(|r| r.iter().filter(|&&v| v).count() as f64)
        .collect();
    // K_ij = 2 (x xᵀ)_ij + m − c_i − c_j, with c_i the positives of token i.
    let g = linalg::gram(&x, n, m);
    let mut k = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] = 2.0 * g[i * n + j] as f64 + m as f64 - c[i] - c[j];
        }
    }
    linalg::psd_log_det(k, n)
}

fn eznas(p: &Probe) -> f64 {
    let mut total = 0f64;
    for l in &p.linears {
        let Some((rows, cols)) = l.grad.dims2() else {
            return f64::NAN;
        };
        // S Sᵀ has rank ≤ cols: with more rows it is singular, ln|det| = −∞ and σ = 0.
        if rows > cols {
            continue;
        }
        let s: Vec<f32> = l
            .grad
            .data()
            .iter()
            .map(|&g| {
                if g > 0.0 {
                    1.0
                } else if g < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            })
            .collect();
        let gram = linalg::gram_lower(&s, rows, cols);
        let log_det = linalg::psd_log_det(gram.iter().map(|&v| v as f64).collect(), rows);
        total += 1.0 / (1.0 + (-log_det).exp());
    }
    total
}

/// Principal components of the tokens of batch row 0 (T × width, after the activation
/// function) needed to reach 99 % of the variance.
fn pca_components(a: &Array, activation: impl Fn(f32) -> f64) -> usize {
    let shape = a.shape();
    if shape.len() < 3 {
        return 0;
    }
    let (t, w) = (shape[1], shape[2]);
    let mut x: Vec<f64> = a.data()[..t * w].iter().map(|&v| activation(v)).collect();
    for c in 0..w {
        let mean = (0..t).map(|r| x[r * w + c]).sum::<f64>() / t as f64;
        for r in 0..t {
            x[r * w + c] -= mean;
        }
    }
    // The covariance's non-zero eigenvalues are those of the T × T Gram of the centred rows.
    let gram = linalg::gram(&x, t, w);
    let mut ev = linalg::symmetric_eigenvalues(nalgebra::DMatrix::from_row_slice(t, t, &gram));
    ev.iter_mut().for_each(|l| *l = l.max(0.0));
    ev.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = ev.iter().sum();
    if total <= 0.0 {
        return 0;
    }
    let mut acc = 0f64;
    for (k, l) in ev.iter().enumerate() {
        acc += l;
        if acc >= 0.99 * total {
            return k + 1;
        }
    }
    ev.len()
}

/// Over the FFN activations of the probe, after the family's activation function
/// ([`Semantics::ffn_activation`]; GPT-2 applies `gelu_new` to its pre-activations).
fn w_pca(p: &Probe) -> f64 {
    let components: usize = p
        .ffn_activations()
        .into_iter()
        .map(|a| pca_components(a, p.semantics.ffn_activation))
        .sum();
    p.params as f64 * components as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{flexibert, gpt2};
    use crate::models::{flexibert::SEMANTICS as FLEXIBERT, gpt2_flex::SEMANTICS as GPT2};
    use crate::nn::LinearRole;
    use crate::probe::LinearProbe;
    use std::sync::Arc;

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    /// The mean of the maxima over axis 1 read row by row is the walk down each column's,
    /// bit for bit (NaN and −∞ included, 3-d and 4-d).
    #[test]
    fn mean_of_max_reads_rows_and_keeps_the_column_walk_values() {
        let column_walk = |a: &Array| -> f64 {
            let shape = a.shape();
            let (outer, mid) = (shape[0], shape[1]);
            let inner: usize = shape[2..].iter().product();
            let data = a.data();
            let mut total = 0f64;
            for o in 0..outer {
                for i in 0..inner {
                    let mut m = f32::NEG_INFINITY;
                    for t in 0..mid {
                        m = m.max(data[(o * mid + t) * inner + i]);
                    }
                    total += m as f64;
                }
            }
            total / (outer * inner) as f64
        };
        for shape in [vec![3, 7, 5], vec![2, 4, 3, 6], vec![1, 1, 9]] {
            let n: usize = shape.iter().product();
            let mut data = crate::rng::Rng::new(n as u64).normal_vec(n, 2.0);
            data[n / 2] = f32::NAN;
            data[n - 1] = f32::NEG_INFINITY;
            let a = arr(&shape, &data);
            assert_eq!(
                mean_of_max_over_axis1(&a).to_bits(),
                column_walk(&a).to_bits(),
                "{shape:?}"
            );
        }
    }

    fn lin(role: LinearRole, weight: Array, grad: Array) -> LinearProbe {
        LinearProbe {
            name: "x".into(),
            layer: Some(0),
            role,
            weight,
            grad,
        }
    }

    fn probe() -> Probe {
        Probe {
            key: "0".into(),
            semantics: &FLEXIBERT,
            params: 42,
            param_groups: Vec::new(),
            act: Arc::new(vec![
                arr(
                    &[2, 3, 2],
                    &[1.0, -1.0, 2.0, 0.0, -1.0, 3.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0],
                ),
                arr(&[1, 3, 2], &[1.0; 6]),
            ]),
            head: Arc::new(vec![]),
            softmax: vec![arr(&[1, 2, 1, 2], &[0.2, 0.8, 0.6, 0.4])],
            mixer_outputs: Arc::new(vec![arr(
                &[2, 3, 2],
                &[
                    1.0, 5.0, 3.0, 2.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0,
                ],
            )]),
            linears: vec![
                lin(
                    LinearRole::Mixer,
                    arr(&[128, 1], &[1.0; 128]),
                    arr(&[128, 1], &[0.5; 128]),
                ),
                lin(
                    LinearRole::Mixer,
                    arr(&[18, 1], &[1.0; 18]),
                    arr(&[18, 1], &[1.0; 18]),
                ),
                lin(
                    LinearRole::MixerOutput,
                    arr(&[2, 2], &[3.0, 0.0, 0.0, -4.0]),
                    arr(&[2, 2], &[1.0, 0.0, 0.0, 1.0]),
                ),
                lin(
                    LinearRole::FfnIn,
                    arr(&[1, 2], &[1.0, -2.0]),
                    arr(&[1, 2], &[3.0, 4.0]),
                ),
                lin(
                    LinearRole::FfnOut,
                    arr(&[1, 1], &[2.0]),
                    arr(&[1, 1], &[-1.0]),
                ),
            ],
            weight: vec![],
            grad: vec![],
            position_grad: arr(&[4, 2], &[1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0]),
            loss: 0.0,
            extras: None,
            seconds: 0.0,
            diversity_ahead: None,
        }
    }

    fn value(name: &str) -> f64 {
        (find(name).unwrap().compute)(&probe())
    }

    #[test]
    fn forward_proxies_on_hand_computed_values() {
        assert_eq!(value("params"), 42.0);
        // Row 0 of act 0: channel 0 positive at t0, t1 (n=2 → 4+1), channel 1 at t2 (n=1 → 1+4);
        // act 1 all positive (n=3 → 9 per channel). Mean over the two activations.
        assert_eq!(value("activation_distance"), (10.0 + 18.0) / 2.0);
        // max over the sequence: b0 → [3, 5], b1 → [-1, -2]; mean = 1.25.
        assert_eq!(value("head_confidence"), 1.25);
        assert_eq!(value("head_confidence_normalized"), 1.25);
        // max over the head axis: [0.6, 0.8].
        assert!((value("head_softmax_confidence") - 0.7).abs() < 1e-7);
    }

    #[test]
    fn gradient_proxies_on_hand_computed_values() {
        // FFN: |1·3| + |−2·4| + |2·−1| = 13 over 2 linears.
        assert_eq!(value("synaptic_saliency"), 13.0);
        assert_eq!(value("synaptic_saliency_normalized"), 6.5);
        // Mixer linears with ≥ 128 outputs: only the first (128 · 0.5); the 18-output kernel
        // generator is excluded.
        assert_eq!(value("head_importance"), 64.0);
        // Mixer block: ‖1₁₂₈‖_* ‖0.5·1₁₂₈‖_* = √128 · 0.5√128 = 64; ‖1₁₈‖·‖1₁₈‖ = 18;
        // diag(3, −4) → 7 · ‖I‖_* = 14.
        assert!((value("synaptic_diversity") - (64.0 + 18.0 + 14.0)).abs() < 1e-9);
    }

    #[test]
    fn jacobian_proxies_on_orthogonal_rows() {
        // Jᵀ rows [1, −1, 1, −1] and [1, 1, −1, −1]: orthogonal, uncorrelated.
        assert!((value("jacobian_cosine") - 1.0).abs() < 1e-12);
        let x: f64 = 1.0 + 1e-5;
        assert!((value("jacobian_score") + 2.0 * (x.ln() + 1.0 / x)).abs() < 1e-9);
    }

    /// A GPT-2 probe with four Conv1Ds (in × out); only the last has ≥ 128 inputs.
    fn gpt2_probe() -> Probe {
        let conv = |role, rows: usize, cols: usize, w: f32, g: f32| LinearProbe {
            name: format!("{role:?}"),
            layer: Some(0),
            role,
            weight: Array::full(vec![rows, cols], w),
            grad: Array::full(vec![rows, cols], g),
        };
        let outputs = Arc::new(vec![
            arr(&[1, 2, 2], &[1.0, -1.0, 3.0, -2.0]),
            arr(&[1, 2, 1], &[-1.0, -1.0]),
        ]);
        let mut p = probe();
        p.semantics = &GPT2;
        p.param_groups = vec![
            ("AdaEmb", 1000),
            ("LayerNorm", 7),
            ("Attn", 30),
            ("FFN", 12),
            ("AdaSoftmax", 5),
        ];
        p.act = outputs.clone();
        p.head = outputs.clone();
        p.mixer_outputs = outputs;
        p.linears = vec![
            conv(LinearRole::AttnQkv, 64, 3, 1.0, 0.5),
            conv(LinearRole::AttnProj, 64, 1, 2.0, -1.0),
            conv(LinearRole::MlpFc, 64, 2, 1.0, 1.0),
            conv(LinearRole::MlpProj, 128, 1, -1.0, 0.25),
        ];
        p
    }

    fn gpt2_value(name: &str) -> f64 {
        (find(name).unwrap().compute)(&gpt2_probe())
    }

    #[test]
    fn gpt2_definitions() {
        assert_eq!(gpt2_value("decoder_params"), 42.0);
        assert!(value("decoder_params").is_nan());
        // Σ|W ⊙ ∇W| per Conv1D: 96, 128, 128, 32.
        assert_eq!(gpt2_value("snip"), 384.0);
        assert_eq!(gpt2_value("synaptic_saliency"), 384.0);
        assert_eq!(gpt2_value("synaptic_saliency_normalized"), 96.0);
        // Only the Conv1D with ≥ 128 rows (inputs) counts.
        assert_eq!(gpt2_value("head_importance"), 32.0);
        assert_eq!(gpt2_value("head_importance_normalized"), 32.0);
        // ‖∇W‖_F: 0.5·√192, √64, √128, 0.25·√128.
        let gn = 0.5 * 192f64.sqrt() + 8.0 + 128f64.sqrt() + 0.25 * 128f64.sqrt();
        assert!((gpt2_value("grad_norm") - gn).abs() < 1e-9);
        // Rank-one matrices: ‖c·1_{r×k}‖_* = |c|·√(rk).
        let sd = 192f64.sqrt() * 0.5 * 192f64.sqrt()
            + 2.0 * 8.0 * 8.0
            + 128f64.sqrt() * 128f64.sqrt()
            + 128f64.sqrt() * 0.25 * 128f64.sqrt();
        assert!((gpt2_value("synaptic_diversity") - sd).abs() < 1e-6);
        // Row 0, output 0: channel 0 positive at t0,t1 (n=2 → 4), channel 1 at none (n=0 → 4);
        // output 1: n=0 → 4. GPT-2 sums: 12.
        assert_eq!(gpt2_value("activation_distance"), 12.0);
        // max over the sequence: [3, −1] → mean 1; [−1] → −1.
        assert_eq!(gpt2_value("head_confidence"), 0.0);
    }

    #[test]
    fn single_pass_baselines_on_hand_computed_values() {
        let mut p = probe();
        // Gradient signs [[+, −], [+, +]] (2 × 2): S Sᵀ = [[2, 0], [0, 2]], σ(ln 4) = 0.8;
        // a 3 × 2 gradient has more rows than columns: singular, 0.
        p.linears = vec![
            lin(
                LinearRole::Mixer,
                arr(&[2, 2], &[1.0; 4]),
                arr(&[2, 2], &[0.5, -1.0, 2.0, 3.0]),
            ),
            lin(
                LinearRole::FfnIn,
                arr(&[3, 2], &[1.0; 6]),
                arr(&[3, 2], &[1.0; 6]),
            ),
        ];
        assert!((value_of(&p, "eznas") - 0.8).abs() < 1e-12);
        // One activation, row 0 has 3 tokens × 2 channels: codes [1,0], [0,1], [0,1] → two
        // distinct codes; K = [[2, 0], [0, 2]] → ln 4.
        p.act = Arc::new(vec![arr(&[1, 3, 2], &[1.0, -1.0, -1.0, 2.0, -3.0, 4.0])]);
        assert!((value_of(&p, "jacob_cov_relu") - 4f64.ln()).abs() < 1e-12);
        // Rows [1, −1], [−1, 2], [−3, 4] centred: XᵀX = [[8, −10], [−10, 114/9]], eigenvalues
        // 20.602 and 0.065: the first carries 99.7 % of the variance, so 1 component × 42
        // parameters.
        assert_eq!(value_of(&p, "w_pca"), 42.0);
        // Extra-pass proxies are NaN without the extra passes.
        for name in [
            "grasp",
            "fisher",
            "synflow",
            "logsynflow",
            "jacob_cov",
            "attention_confidence",
        ] {
            assert!(value_of(&p, name).is_nan(), "{name}");
        }
    }

    fn value_of(p: &Probe, name: &str) -> f64 {
        (find(name).unwrap().compute)(p)
    }

    #[test]
    fn families_are_declared() {
        let flex: Vec<&str> = for_family(flexibert::KIND).map(|b| b.name).collect();
        assert!(!flex.contains(&"decoder_params"));
        assert!(flex.contains(&"snip"));
        assert_eq!(for_family(gpt2::KIND).count(), BUILTINS.len());
    }

    /// `p` with the parts of a probe that `reads` does not cover emptied.
    fn only(p: &Probe, reads: Reads) -> Probe {
        let mut q = p.clone();
        if reads != Reads::Captures {
            let empty = Arc::new(Vec::new());
            (q.act, q.head, q.mixer_outputs) = (empty.clone(), empty.clone(), empty);
            q.softmax = Vec::new();
            q.position_grad = Array::full(vec![0, 0], 0.0);
        }
        if reads != Reads::LinearSum {
            q.linears = Vec::new();
        }
        q
    }

    #[test]
    fn reads_declare_what_each_proxy_reads() {
        // A proxy gives the same value on the parts of the probe it declares it reads, and a
        // linear sum is the sum of its values on the parts of a split of the linears.
        for p in [probe(), gpt2_probe()] {
            for b in BUILTINS {
                let all = (b.compute)(&p);
                match b.reads {
                    Reads::Counts | Reads::Captures => {
                        let part = (b.compute)(&only(&p, b.reads));
                        assert!(
                            part.to_bits() == all.to_bits() || (part.is_nan() && all.is_nan()),
                            "{}: {part} vs {all}",
                            b.name
                        );
                    }
                    Reads::LinearSum => {
                        let mut first = only(&p, b.reads);
                        let second = first.linears.split_off(2);
                        let rest = Probe {
                            linears: second,
                            ..first.clone()
                        };
                        let sum = (b.compute)(&first) + (b.compute)(&rest);
                        assert!((sum - all).abs() <= 1e-12 * all.abs(), "{}", b.name);
                    }
                    Reads::AllLinears => assert!(all.is_finite(), "{}", b.name),
                    Reads::Extras => assert!(b.extra_passes() && all.is_nan(), "{}", b.name),
                }
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), BUILTINS.len());
    }
}
