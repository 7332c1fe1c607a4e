//! Chains of unary operations on one array, evaluated in cache-sized chunks.
//!
//! A proxy branch is a chain such as `mean(normalize(log(x)))` over arrays of millions of
//! values (a GPT-2 probe holds about 80 M activations per architecture). Applying the ops one
//! at a time writes and re-reads a full-size array per op; this module instead streams the
//! argument through the whole chain chunk by chunk ([`CHUNK`] values, which stay in L1/L2
//! cache), so nothing but the final result is ever allocated:
//!
//! * element-wise ops are tight loops over the chunk that the compiler vectorises (the
//!   transcendental functions are written here, branch-free, for that reason: [`exp_f32`],
//!   [`ln_f32`]);
//! * `normalize`, `min_max`, `softmax` and `logsoftmax` need statistics of their argument (mean
//!   and std, min and max, per-column max and sum); each statistic is one extra streaming pass
//!   that recomputes the prefix of the chain below it;
//! * a reduction ends the streamed part: its value becomes a 0-d array and the ops above it
//!   run on that scalar.
//!
//! **Composition is exact**: every op rounds its output to `f32`, and every sum runs over a
//! fixed number of `f64` lanes ([`LANES`]) indexed by element position, so the result of a
//! chain is bit-for-bit the result of applying its ops one at a time, whatever the chunking
//! and whatever the CPU (no fused multiply-add is ever formed). [`apply`] is the one-op
//! chain, so the memoised evaluator can split a chain anywhere and still return the
//! same bits as the plain one.
//!
//! Numerics: element-wise ops in `f32`; `exp` and `ln` are within 2 ulp of the correctly
//! rounded value (checked by the tests); sums, means and standard deviations accumulate in
//! `f64`.

use std::ops::Range;

use super::ops::UnaryOp;
use crate::array::Array;

/// Values per chunk (a multiple of [`LANES`], so lanes follow element positions).
pub const CHUNK: usize = 4096;

/// Independent `f64` accumulators in every sum: element `i` goes to lane `i % LANES`, and the
/// lanes are combined in a fixed order.
pub const LANES: usize = 8;

/// Applies `ops` to `a` in order (`ops[0]` first), or `None` when one of them is `disconnect`
/// (which has no value). The result is the same as applying them one at a time.
pub fn apply_chain(ops: &[UnaryOp], a: &Array) -> Option<Array> {
    if ops.contains(&UnaryOp::Disconnect) {
        return None;
    }
    Some(run(ops, a))
}

/// Applies one unary operation to one array and returns a new array; the argument is untouched.
///
/// Returns `None` exactly for [`UnaryOp::Disconnect`], which has no value: the caller drops a
/// disconnected branch (a binary operation then returns its other operand). Every other
/// operation returns `Some`, whatever the values (NaN and ±inf propagate, nothing panics).
pub fn apply(op: UnaryOp, a: &Array) -> Option<Array> {
    apply_chain(std::slice::from_ref(&op), a)
}

/// [`apply_chain`] without the `disconnect` check.
fn run(ops: &[UnaryOp], a: &Array) -> Array {
    let Some(r) = ops.iter().position(|o| o.is_reduction()) else {
        return materialise(&plan(ops, a), a);
    };
    let steps = plan(&ops[..r], a);
    let value = Array::scalar(reduce(&steps, ops[r], a) as f32);
    if r + 1 == ops.len() {
        value
    } else {
        run(&ops[r + 1..], &value)
    }
}

// ---------------------------------------------------------------------------------------------
// Steps: the non-reducing ops of a chain, with the statistics they need
// ---------------------------------------------------------------------------------------------

/// One non-reducing op, ready to be applied to a chunk.
enum Step {
    /// An element-wise op.
    Map(UnaryOp),
    /// `(x − mean)/std`; NaN results become 0.
    Normalize { mean: f64, std: f64 },
    /// `(x − lo)/denom`, or NaN everywhere when the argument holds a NaN.
    MinMax { lo: f64, denom: f64, nan: bool },
    /// Softmax along the first axis of an array whose other axes hold `max.len()` columns:
    /// `exp(x − max[c]) / sum[c]`, or `(x − max[c]) − ln(sum[c])` for the log version
    /// (`scale` holds `sum` or `ln(sum)`).
    Softmax {
        max: Vec<f32>,
        scale: Vec<f64>,
        log: bool,
    },
}

/// The steps for the non-reducing `ops`, computing each statistic from the steps before it.
fn plan(ops: &[UnaryOp], a: &Array) -> Vec<Step> {
    let mut steps = Vec::with_capacity(ops.len());
    for &op in ops {
        let step = match op {
            UnaryOp::NoOp => continue,
            UnaryOp::Normalize => {
                let (mean, std) = mean_std(&steps, a);
                Step::Normalize { mean, std }
            }
            UnaryOp::MinMax => {
                let (nan, lo, hi) = min_max_stats(&steps, a);
                Step::MinMax {
                    lo,
                    denom: hi - lo + 1e-9,
                    nan,
                }
            }
            UnaryOp::Softmax | UnaryOp::LogSoftmax => {
                let cols = columns(a);
                if cols == 0 {
                    continue; // no element: nothing to do
                }
                let log = op == UnaryOp::LogSoftmax;
                let max = column_max(&steps, a, cols);
                let sum = column_exp_sum(&steps, a, &max);
                let scale = if log {
                    sum.iter().map(|s| s.ln()).collect()
                } else {
                    sum
                };
                Step::Softmax { max, scale, log }
            }
            _ => Step::Map(op),
        };
        steps.push(step);
    }
    steps
}

/// Columns of `a` for a softmax along its first axis (a 0-d array is one row of one column).
fn columns(a: &Array) -> usize {
    let rows = a.shape().first().copied().unwrap_or(1);
    a.len().checked_div(rows).unwrap_or(0)
}

/// Streams `a` through `steps` and hands every transformed chunk, with the position of its
/// first element, to `sink`.
/// A compact (bfloat16) array is decoded one chunk at a time on the way.
fn stream(steps: &[Step], a: &Array, mut sink: impl FnMut(usize, &[f32])) {
    if steps.is_empty() {
        a.for_each_chunk(CHUNK, sink);
        return;
    }
    let mut buf = vec![0.0_f32; CHUNK.min(a.len())];
    a.for_each_chunk(CHUNK, |at, chunk| {
        let b = &mut buf[..chunk.len()];
        b.copy_from_slice(chunk);
        transform(steps, b, at);
        sink(at, b);
    });
}

vectorised! {
    /// Applies every step to a chunk whose first element has position `offset`.
    fn transform(steps: &[Step], b: &mut [f32], offset: usize) {
        for s in steps {
            apply_step(s, b, offset);
        }
    }
}

/// Applies one step to a chunk whose first element has position `offset`.
#[inline(always)]
fn apply_step(step: &Step, b: &mut [f32], offset: usize) {
    match step {
        Step::Map(op) => map_in_place(*op, b),
        &Step::Normalize { mean, std } => b.iter_mut().for_each(|x| {
            let c = ((*x as f64 - mean) / std) as f32;
            *x = if c.is_nan() { 0.0 } else { c };
        }),
        &Step::MinMax { nan: true, .. } => b.fill(f32::NAN),
        &Step::MinMax { lo, denom, .. } => b
            .iter_mut()
            .for_each(|x| *x = ((*x as f64 - lo) / denom) as f32),
        Step::Softmax { max, scale, log } => {
            for (run, cols) in column_runs(b.len(), offset, max.len()) {
                let (seg, m, s) = (&mut b[run], &max[cols.clone()], &scale[cols]);
                if *log {
                    for ((x, &m), &s) in seg.iter_mut().zip(m).zip(s) {
                        *x = ((*x - m) as f64 - s) as f32;
                    }
                } else {
                    for ((x, &m), &s) in seg.iter_mut().zip(m).zip(s) {
                        *x = (exp_f32(*x - m) as f64 / s) as f32;
                    }
                }
            }
        }
    }
}

/// Splits a chunk of `len` values that starts at element position `offset` of a `cols`-column
/// layout into runs of consecutive columns: `(positions in the chunk, columns)` per run.
#[inline(always)]
fn column_runs(
    len: usize,
    offset: usize,
    cols: usize,
) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        (pos < len).then(|| {
            let c = (offset + pos) % cols;
            let n = (cols - c).min(len - pos);
            pos += n;
            (pos - n..pos, c..c + n)
        })
    })
}

/// Applies an element-wise op to every value of a chunk.
#[inline(always)]
fn map_in_place(op: UnaryOp, b: &mut [f32]) {
    #[inline(always)]
    fn each(f: impl Fn(f32) -> f32, b: &mut [f32]) {
        b.iter_mut().for_each(|x| *x = f(*x));
    }
    match op {
        UnaryOp::Log => each(|x| ln_f32(if x <= 0.0 { 1.0 } else { x } + 1e-9), b),
        UnaryOp::AbsLog => each(|x| ln_f32(if x == 0.0 { 1.0 } else { x }.abs()), b),
        UnaryOp::Abs => each(f32::abs, b),
        UnaryOp::Pow2 => each(|x| x * x, b),
        UnaryOp::Exp => each(exp_f32, b),
        // `x <= 0` is false for NaN, so NaN passes through (like torch's relu).
        UnaryOp::Relu => each(|x| if x <= 0.0 { 0.0 } else { x }, b),
        UnaryOp::Invert => each(|x| 1.0 / (x + 1e-9), b),
        UnaryOp::Sigmoid => each(sigmoid_f32, b),
        UnaryOp::Sqrt => each(|x| if x <= 0.0 { 0.0 } else { x.sqrt() }, b),
        UnaryOp::Neg => each(|x| -x, b),
        UnaryOp::NoOp => {}
        _ => unreachable!("{op} is not element-wise"),
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and reductions (streaming passes)
// ---------------------------------------------------------------------------------------------

/// What a lane sum adds up.
#[derive(Clone, Copy)]
enum Term {
    /// `x`
    Value,
    /// `|x|`
    Abs,
    /// `x²`
    Square,
    /// `(x − c)²`
    Centred(f64),
}

vectorised! {
    /// Adds `term(x)` of each value to lane `i % LANES` (`b` starts at a multiple of LANES).
    fn add_lanes(acc: &mut [f64; LANES], b: &[f32], term: Term) {
        #[inline(always)]
        fn add(acc: &mut [f64; LANES], b: &[f32], f: impl Fn(f32) -> f64) {
            let mut it = b.chunks_exact(LANES);
            for c in &mut it {
                for (s, &x) in acc.iter_mut().zip(c) {
                    *s += f(x);
                }
            }
            for (s, &x) in acc.iter_mut().zip(it.remainder()) {
                *s += f(x);
            }
        }
        match term {
            Term::Value => add(acc, b, |x| x as f64),
            Term::Abs => add(acc, b, |x| (x as f64).abs()),
            Term::Square => add(acc, b, |x| (x as f64) * (x as f64)),
            Term::Centred(c) => add(acc, b, |x| (x as f64 - c) * (x as f64 - c)),
        }
    }
}

/// `Σ term(x)` over the values of `a` after `steps`, in lanes combined in a fixed order.
fn lane_sum(steps: &[Step], a: &Array, term: Term) -> f64 {
    let mut acc = [0.0_f64; LANES];
    stream(steps, a, |_, b| add_lanes(&mut acc, b, term));
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Mean and unbiased standard deviation (two passes; NaN std for fewer than two values, NaN
/// mean for none).
fn mean_std(steps: &[Step], a: &Array) -> (f64, f64) {
    let n = a.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = lane_sum(steps, a, Term::Value) / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let ss = lane_sum(steps, a, Term::Centred(mean));
    (mean, (ss / (n - 1) as f64).sqrt())
}

vectorised! {
    /// Folds a chunk into per-lane minima and maxima and a NaN flag.
    fn min_max_lanes(lo: &mut [f32; LANES], hi: &mut [f32; LANES], nan: &mut bool, b: &[f32]) {
        let mut it = b.chunks_exact(LANES);
        let mut any = false;
        for c in &mut it {
            for j in 0..LANES {
                let x = c[j];
                any |= x.is_nan();
                lo[j] = if x < lo[j] { x } else { lo[j] };
                hi[j] = if x > hi[j] { x } else { hi[j] };
            }
        }
        for &x in it.remainder() {
            any |= x.is_nan();
            lo[0] = if x < lo[0] { x } else { lo[0] };
            hi[0] = if x > hi[0] { x } else { hi[0] };
        }
        *nan |= any;
    }
}

/// Whether any value is NaN, and the min and max of the values (one pass).
fn min_max_stats(steps: &[Step], a: &Array) -> (bool, f64, f64) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    stream(steps, a, |_, b| {
        min_max_lanes(&mut lo, &mut hi, &mut nan, b)
    });
    let lo = lo.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    (nan, lo as f64, hi as f64)
}

vectorised! {
    /// Folds a run of consecutive columns into their maxima (NaN is skipped here; it poisons
    /// its column through the sum).
    fn max_columns(max: &mut [f32], b: &[f32]) {
        for (m, &x) in max.iter_mut().zip(b) {
            *m = if x > *m { x } else { *m };
        }
    }
}

vectorised! {
    /// Adds `exp(x − max)` of a run of consecutive columns to their sums.
    fn exp_sum_columns(sum: &mut [f64], max: &[f32], b: &[f32]) {
        for ((s, &m), &x) in sum.iter_mut().zip(max).zip(b) {
            *s += exp_f32(x - m) as f64;
        }
    }
}

/// Per-column max of the values.
fn column_max(steps: &[Step], a: &Array, cols: usize) -> Vec<f32> {
    let mut max = vec![f32::NEG_INFINITY; cols];
    stream(steps, a, |offset, b| {
        for (run, c) in column_runs(b.len(), offset, cols) {
            max_columns(&mut max[c], &b[run]);
        }
    });
    max
}

/// Per-column `Σ exp(x − max)` in `f64`.
fn column_exp_sum(steps: &[Step], a: &Array, max: &[f32]) -> Vec<f64> {
    let mut sum = vec![0.0_f64; max.len()];
    stream(steps, a, |offset, b| {
        for (run, c) in column_runs(b.len(), offset, max.len()) {
            exp_sum_columns(&mut sum[c.clone()], &max[c], &b[run]);
        }
    });
    sum
}

/// The value of the reduction `op` over `a` after `steps`, in `f64`.
fn reduce(steps: &[Step], op: UnaryOp, a: &Array) -> f64 {
    let n = a.len() as f64;
    match op {
        UnaryOp::Mean if a.is_empty() => f64::NAN,
        UnaryOp::Mean => lane_sum(steps, a, Term::Value) / n,
        UnaryOp::NormalizedSum => lane_sum(steps, a, Term::Value) / (n + 1e-9),
        UnaryOp::L1Norm => lane_sum(steps, a, Term::Abs) / (n + 1e-9),
        UnaryOp::FrobeniusNorm => lane_sum(steps, a, Term::Square).sqrt(),
        UnaryOp::Std => mean_std(steps, a).1,
        UnaryOp::Sum => lane_sum(steps, a, Term::Value),
        // The steps keep the element count, so nothing needs streaming.
        UnaryOp::Size => n,
        // `total` of a single array (a one-item list) is its mean.
        UnaryOp::Total if a.is_empty() => f64::NAN,
        UnaryOp::Total => lane_sum(steps, a, Term::Value) / n,
        _ => unreachable!("{op} is not a reduction"),
    }
}

/// The values of `a` after `steps`, as a new array of the same shape.
fn materialise(steps: &[Step], a: &Array) -> Array {
    let mut out = Vec::with_capacity(a.len());
    stream(steps, a, |_, b| out.extend_from_slice(b));
    Array::new(a.shape().to_vec(), out).expect("a chain keeps the element count")
}

// ---------------------------------------------------------------------------------------------
// Vectorisable f32 functions
// ---------------------------------------------------------------------------------------------

/// `eˣ` in `f32`, branch-free so that loops over it vectorise: Cody–Waite reduction
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 Taylor polynomial for `eʳ`, then a scale
/// by `2ⁿ` in two halves (so subnormal results are right). Overflows to `+inf`, underflows to
/// 0, NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n·LN2_HI is exact for |n| < 2^15
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting rounds to an integer
    let xc = x.clamp(-104.0, 89.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n as an integer, from the bits of t = 1.5·2²³ + n (in [−150, 128]; garbage for NaN,
    // which the result does not depend on).
    let ni = t.to_bits() as i32 - 0x4b40_0000;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let y = (p * s1) * s2;
    if x > 88.722_84 {
        f32::INFINITY
    } else if x < -103.972_08 {
        0.0
    } else {
        y
    }
}

/// `ln x` in `f32`, branch-free so that loops over it vectorise: `x = m·2ᵉ` with
/// `m ∈ [√½, √2)`, then `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, by its series to `s⁹`.
/// `ln 0 = −inf`, negative or NaN gives NaN, `ln inf = inf`; subnormals are exact too.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x }; // 2²³
    let bits = xs.to_bits();
    let e0 = ((bits >> 23) & 0xff) as i32 - if sub { 150 } else { 127 };
    let m0 = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    let big = m0 > std::f32::consts::SQRT_2;
    let m = if big { m0 * 0.5 } else { m0 };
    let e = (e0 + big as i32) as f32;
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let series = s * (2.0 + z * (2.0 / 3.0 + z * (2.0 / 5.0 + z * (2.0 / 7.0 + z * (2.0 / 9.0)))));
    let y = e * LN2_HI + (series + e * LN2_LO);
    if x.is_nan() | (x < 0.0) {
        f32::NAN
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::INFINITY
    } else {
        y
    }
}

/// The logistic function in `f32` from [`exp_f32`] of `−|x|` (no overflow); NaN stays NaN.
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ops::{apply_binary, BinaryOp};
    use crate::rng::Rng;

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn un(op: UnaryOp, a: &Array) -> Array {
        apply(op, a).expect("connected op")
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn assert_all_close(got: &Array, want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (&g, &w) in got.data().iter().zip(want) {
            assert!(close(g, w, 1e-6), "{got:?} vs {want:?}");
        }
    }

    /// Inputs every op is run on: scalars, vectors, matrices, zeros, negatives, huge, NaN, inf,
    /// and empty arrays.
    fn zoo() -> Vec<Array> {
        vec![
            Array::scalar(0.0),
            Array::scalar(2.5),
            Array::scalar(-3.0),
            Array::scalar(1e30),
            Array::scalar(-1e30),
            Array::scalar(f32::NAN),
            Array::scalar(f32::INFINITY),
            arr(&[4], &[1.0, -2.0, 0.0, 3.5]),
            arr(&[3], &[0.0, 0.0, 0.0]),
            arr(&[3], &[-1.0, -2.0, -3.0]),
            arr(&[2], &[1e30, -1e30]),
            arr(&[3], &[1.0, f32::NAN, 2.0]),
            arr(&[2, 3], &[1.0, 2.0, 3.0, -4.0, 5.0, -6.0]),
            arr(&[2, 2], &[f32::NEG_INFINITY, 1.0, f32::INFINITY, 2.0]),
            arr(&[1], &[7.0]),
            arr(&[1, 1], &[-7.0]),
            arr(&[2, 2, 2], &[0.5; 8]),
            arr(&[0], &[]),
            arr(&[2, 0], &[]),
        ]
    }

    #[test]
    fn every_op_on_every_input_is_pure_and_total() {
        for a in zoo() {
            let before = a.clone();
            for op in UnaryOp::ALL {
                let out = apply(op, &a);
                // The input is never mutated (compare bit patterns so NaN counts as equal).
                let same = a.shape() == before.shape()
                    && a.data()
                        .iter()
                        .zip(before.data().iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{op} mutated its input");
                match out {
                    None => assert_eq!(op, UnaryOp::Disconnect),
                    Some(out) => {
                        assert_ne!(op, UnaryOp::Disconnect);
                        if op.is_reduction() {
                            assert!(out.is_scalar(), "{op} on {a:?} gave {out:?}");
                        } else {
                            assert_eq!(out.shape(), a.shape(), "{op} on {a:?}");
                        }
                        if op.is_nonnegative() {
                            assert!(
                                out.data().iter().all(|&x| x.is_nan() || x >= 0.0),
                                "{op} on {a:?} gave {out:?}"
                            );
                        }
                    }
                }
            }
            for b in zoo() {
                for op in BinaryOp::ALL {
                    // Must not panic; errors are fine.
                    let _ = apply_binary(op, &a, &b);
                }
            }
        }
    }

    #[test]
    fn element_wise_known_values() {
        let v = arr(&[4], &[1.0, -2.0, 0.0, 3.5]);
        assert_all_close(
            &un(UnaryOp::Log, &v),
            &[1e-9_f32.ln_1p(), 0.0, 0.0, 3.5_f32.ln()],
        );
        assert_all_close(
            &un(UnaryOp::AbsLog, &v),
            &[0.0, 2.0_f32.ln(), 0.0, 3.5_f32.ln()],
        );
        assert_all_close(&un(UnaryOp::Abs, &v), &[1.0, 2.0, 0.0, 3.5]);
        assert_all_close(&un(UnaryOp::Pow2, &v), &[1.0, 4.0, 0.0, 12.25]);
        assert_all_close(
            &un(UnaryOp::Exp, &v),
            &[1.0_f32.exp(), (-2.0_f32).exp(), 1.0, 3.5_f32.exp()],
        );
        assert_all_close(&un(UnaryOp::Relu, &v), &[1.0, 0.0, 0.0, 3.5]);
        assert_all_close(&un(UnaryOp::Invert, &v), &[1.0, -0.5, 1e9, 1.0 / 3.5]);
        assert_all_close(&un(UnaryOp::Sqrt, &v), &[1.0, 0.0, 0.0, 3.5_f32.sqrt()]);
        assert_all_close(&un(UnaryOp::Neg, &v), &[-1.0, 2.0, 0.0, -3.5]);
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_all_close(&un(UnaryOp::Sigmoid, &v), &[s(1.0), s(-2.0), 0.5, s(3.5)]);
        assert_all_close(&un(UnaryOp::MinMax, &v), &[3.0 / 5.5, 0.0, 2.0 / 5.5, 1.0]);
        assert_eq!(un(UnaryOp::NoOp, &v), v);
        // Normalize: mean 0.625, unbiased std.
        let m = 0.625_f64;
        let sd = ((0.375f64.powi(2) + 2.625f64.powi(2) + 0.625f64.powi(2) + 2.875f64.powi(2))
            / 3.0)
            .sqrt();
        let want: Vec<f32> = [1.0, -2.0, 0.0, 3.5]
            .iter()
            .map(|&x: &f64| ((x - m) / sd) as f32)
            .collect();
        assert_all_close(&un(UnaryOp::Normalize, &v), &want);
    }

    #[test]
    fn reductions_known_values() {
        let v = arr(&[2, 2], &[3.0, -4.0, 0.0, 0.0]);
        assert_eq!(un(UnaryOp::FrobeniusNorm, &v), Array::scalar(5.0));
        assert!(close(un(UnaryOp::NormalizedSum, &v).data()[0], -0.25, 1e-7));
        assert!(close(un(UnaryOp::L1Norm, &v).data()[0], 1.75, 1e-7));
        assert_eq!(un(UnaryOp::Mean, &v), Array::scalar(-0.25));
        let sd = ((3.25f64.powi(2) + 3.75f64.powi(2) + 2.0 * 0.25f64.powi(2)) / 3.0).sqrt() as f32;
        assert!(close(un(UnaryOp::Std, &v).data()[0], sd, 1e-6));
        // Huge values do not overflow the f64 accumulators.
        let h = arr(&[2], &[1e30, -1e30]);
        assert!(close(
            un(UnaryOp::FrobeniusNorm, &h).data()[0],
            2f32.sqrt() * 1e30,
            1e-6
        ));
        assert_eq!(un(UnaryOp::Mean, &h), Array::scalar(0.0));
        assert!(close(
            un(UnaryOp::Std, &h).data()[0],
            2f32.sqrt() * 1e30,
            1e-6
        ));
        assert_eq!(
            un(UnaryOp::Pow2, &h).data()[..],
            [f32::INFINITY, f32::INFINITY]
        );
        // Empty arrays.
        let e = arr(&[0], &[]);
        assert_eq!(un(UnaryOp::FrobeniusNorm, &e), Array::scalar(0.0));
        assert_eq!(un(UnaryOp::L1Norm, &e), Array::scalar(0.0));
        assert!(un(UnaryOp::Mean, &e).data()[0].is_nan());
        assert!(un(UnaryOp::Std, &e).data()[0].is_nan());
    }

    #[test]
    fn scalar_behaviour() {
        for x in [0.0_f32, 2.5, -3.0, 1e30, -1e30] {
            let s = Array::scalar(x);
            assert_eq!(un(UnaryOp::Softmax, &s), Array::scalar(1.0), "{x}");
            assert_eq!(un(UnaryOp::LogSoftmax, &s), Array::scalar(0.0), "{x}");
            assert_eq!(un(UnaryOp::Normalize, &s), Array::scalar(0.0), "{x}");
            assert_eq!(un(UnaryOp::MinMax, &s), Array::scalar(0.0), "{x}");
            assert!(un(UnaryOp::Std, &s).data()[0].is_nan(), "{x}");
            assert_eq!(un(UnaryOp::Mean, &s), s);
            assert_eq!(un(UnaryOp::NormalizedSum, &s), s, "{x}");
            assert_eq!(un(UnaryOp::L1Norm, &s), Array::scalar(x.abs()), "{x}");
            assert_eq!(
                un(UnaryOp::FrobeniusNorm, &s),
                Array::scalar(x.abs()),
                "{x}"
            );
            assert!(un(UnaryOp::Pow2, &s).is_scalar());
        }
        // One element is not enough for an unbiased std either.
        assert!(un(UnaryOp::Std, &arr(&[1], &[4.0])).data()[0].is_nan());
        // Extreme finite scalars survive the 1e-9 in the reductions' denominators.
        for x in [f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45] {
            let s = Array::scalar(x);
            assert_eq!(un(UnaryOp::NormalizedSum, &s), s, "{x}");
            assert_eq!(un(UnaryOp::L1Norm, &s), Array::scalar(x.abs()), "{x}");
            assert_eq!(
                un(UnaryOp::FrobeniusNorm, &s),
                Array::scalar(x.abs()),
                "{x}"
            );
        }
    }

    #[test]
    fn softmax_along_first_axis() {
        // Columns are (1, 3) and (2, 4): each column sums to one.
        let m = arr(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let lo = 1.0 / (1.0 + 2f32.exp());
        let hi = 1.0 - lo;
        assert_all_close(&un(UnaryOp::Softmax, &m), &[lo, lo, hi, hi]);
        assert_all_close(
            &un(UnaryOp::LogSoftmax, &m),
            &[lo.ln(), lo.ln(), hi.ln(), hi.ln()],
        );
        // A vector is one column.
        let v = arr(&[3], &[0.0, 0.0, 0.0]);
        assert_all_close(&un(UnaryOp::Softmax, &v), &[1.0 / 3.0; 3]);
        // Stable for huge values.
        let h = arr(&[2], &[1e30, -1e30]);
        assert_eq!(un(UnaryOp::Softmax, &h).data()[..], [1.0, 0.0]);
        assert_eq!(un(UnaryOp::LogSoftmax, &h).data()[..], [0.0, -2e30]);
        let big = arr(&[2], &[1000.0, 1000.0]);
        assert_all_close(&un(UnaryOp::Softmax, &big), &[0.5, 0.5]);
        // 3-D: axis 0 has length 2, every one of the 4 columns sums to one.
        let t = arr(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let out = un(UnaryOp::Softmax, &t);
        for c in 0..4 {
            assert!(close(out.data()[c] + out.data()[4 + c], 1.0, 1e-6));
        }
        // NaN poisons its column only.
        let n = arr(&[2, 2], &[f32::NAN, 1.0, 0.0, 1.0]);
        let out = un(UnaryOp::Softmax, &n);
        assert!(out.data()[0].is_nan() && out.data()[2].is_nan());
        assert_all_close(
            &Array::new(vec![2], vec![out.data()[1], out.data()[3]]).unwrap(),
            &[0.5, 0.5],
        );
    }

    #[test]
    fn nan_and_infinity_are_values() {
        let n = arr(&[3], &[1.0, f32::NAN, 2.0]);
        for op in [
            UnaryOp::Log,
            UnaryOp::AbsLog,
            UnaryOp::Abs,
            UnaryOp::Relu,
            UnaryOp::Sqrt,
            UnaryOp::Sigmoid,
        ] {
            assert!(un(op, &n).data()[1].is_nan(), "{op}");
        }
        assert!(un(UnaryOp::Mean, &n).data()[0].is_nan());
        assert!(un(UnaryOp::MinMax, &n).data().iter().all(|x| x.is_nan()));
        // Normalize maps NaN results to 0.
        assert_eq!(un(UnaryOp::Normalize, &n).data()[..], [0.0, 0.0, 0.0]);
        assert!(un(UnaryOp::Softmax, &Array::scalar(f32::NAN)).data()[0].is_nan());
        assert_eq!(
            un(UnaryOp::Exp, &Array::scalar(1e30)),
            Array::scalar(f32::INFINITY)
        );
        assert_eq!(un(UnaryOp::Exp, &Array::scalar(-1e30)), Array::scalar(0.0));
        assert_eq!(
            un(UnaryOp::Sigmoid, &Array::scalar(-1e30)),
            Array::scalar(0.0)
        );
        assert_eq!(
            un(UnaryOp::Sigmoid, &Array::scalar(1e30)),
            Array::scalar(1.0)
        );
        assert_eq!(
            un(UnaryOp::Invert, &Array::scalar(-1e-9)),
            Array::scalar(f32::INFINITY)
        );
        assert!(close(
            un(UnaryOp::Log, &Array::scalar(1e30)).data()[0],
            69.07755,
            1e-6
        ));
    }

    #[test]
    fn disconnect_has_no_value() {
        assert!(apply(UnaryOp::Disconnect, &Array::scalar(1.0)).is_none());
    }

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_within_two_ulp() {
        let mut worst = 0;
        let mut x = -103.0_f32;
        while x < 88.7 {
            let want = (x as f64).exp() as f32;
            let got = exp_f32(x);
            if want >= f32::MIN_POSITIVE {
                worst = worst.max(ulps(got, want));
            } else {
                // Subnormal results: absolute error within 2 subnormal steps.
                assert!((got - want).abs() <= 3e-45, "{x}: {got} vs {want}");
            }
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(-105.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn ln_within_two_ulp() {
        let mut worst = 0;
        let mut rng = Rng::new(7);
        // Every exponent (subnormals included) with random mantissas.
        for _ in 0..400_000 {
            let bits = (rng.next_u64() as u32) & 0x7f7f_ffff;
            let x = f32::from_bits(bits);
            if x == 0.0 {
                continue;
            }
            let want = (x as f64).ln() as f32;
            let got = ln_f32(x);
            if want == 0.0 {
                assert_eq!(got, 0.0);
            } else if want.abs() < 1e-30 {
                continue;
            } else {
                worst = worst.max(ulps(got, want));
            }
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        for x in [
            1.0_f32,
            2.0,
            0.5,
            1e-45,
            f32::MIN_POSITIVE,
            f32::MAX,
            1.000_001,
        ] {
            let want = (x as f64).ln() as f32;
            assert!(ulps(ln_f32(x), want) <= 2, "{x}");
        }
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(-1.0).is_nan());
        assert!(ln_f32(f32::NAN).is_nan());
    }

    fn bits(a: &Array) -> (Vec<usize>, Vec<u32>) {
        (
            a.shape().to_vec(),
            a.data().iter().map(|x| x.to_bits()).collect(),
        )
    }

    /// A chain gives the same bits as its ops applied one at a time, on arrays that span
    /// several chunks (with a partial last chunk and columns that straddle chunks).
    #[test]
    fn chains_compose_exactly() {
        let mut rng = Rng::new(11);
        let shapes: [&[usize]; 4] = [&[3, 5000], &[7, 3, 1001], &[CHUNK * 2 + 5], &[]];
        let ops: Vec<UnaryOp> = UnaryOp::ALL
            .into_iter()
            .filter(|&o| o != UnaryOp::Disconnect)
            .collect();
        for shape in shapes {
            let n = shape.iter().product();
            let a = Array::new(shape.to_vec(), rng.normal_vec(n, 2.0)).unwrap();
            for _ in 0..120 {
                let len = 1 + rng.range(0, 4);
                let chain: Vec<UnaryOp> = (0..len).map(|_| ops[rng.range(0, ops.len())]).collect();
                let fused = apply_chain(&chain, &a).unwrap();
                let mut one_by_one = a.clone();
                for &op in &chain {
                    one_by_one = apply_chain(&[op], &one_by_one).unwrap();
                }
                assert_eq!(bits(&fused), bits(&one_by_one), "{chain:?} on {shape:?}");
            }
        }
        assert!(apply_chain(&[UnaryOp::Abs, UnaryOp::Disconnect], &Array::scalar(1.0)).is_none());
    }

    /// Softmax over many columns and chunks: every column sums to one, and the values match
    /// an f64 computation.
    #[test]
    fn softmax_across_chunks() {
        let mut rng = Rng::new(3);
        let (rows, cols) = (3, 3001);
        let a = Array::new(vec![rows, cols], rng.normal_vec(rows * cols, 3.0)).unwrap();
        let s = apply_chain(&[UnaryOp::Softmax], &a).unwrap();
        let l = apply_chain(&[UnaryOp::LogSoftmax], &a).unwrap();
        for c in 0..cols {
            let col: Vec<f64> = (0..rows).map(|r| a.data()[r * cols + c] as f64).collect();
            let m = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = col.iter().map(|x| (x - m).exp()).sum();
            for (r, x) in col.iter().enumerate() {
                let want = (x - m).exp() / z;
                let got = s.data()[r * cols + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.max(1e-30) + 1e-12,
                    "{got} {want}"
                );
                let got = l.data()[r * cols + c] as f64;
                assert!((got - (x - m - z.ln())).abs() < 1e-5);
            }
        }
    }
}
