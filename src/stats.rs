//! Rank statistics used to judge how well a zero-cost proxy orders architectures.
//!
//! A proxy is good when the order of its scores matches the order of the ground truth
//! (accuracy, perplexity, ...). This module provides the usual measures of that agreement,
//! computed the way `scipy.stats` does so that numbers are comparable with published ones:
//!
//! * [`ranks`]: average (1-based) ranks with ties averaged (`scipy.stats.rankdata`),
//! * [`pearson`], [`spearman`], [`kendall_tau_b`]: linear, rank and pair-order correlations,
//! * [`correlate`]: Spearman and Kendall together over the whole benchmark,
//! * [`top_k`]: the same restricted to the best architectures, plus the overlap of the top sets,
//! * [`sanitize`]: makes NaN / infinite scores rank last before any of the above.
//!
//! Throughout, "higher is better" for both truth and score; callers that have a
//! lower-is-better quantity (e.g. perplexity) should negate it first.

use std::cmp::Ordering;

/// Compares two numbers that are known not to be NaN; `-0.0` and `0.0` compare equal.
fn cmp_no_nan(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// Compares two numbers treating NaN as smaller than everything (and equal to NaN).
fn cmp_nan_low(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => cmp_no_nan(a, b),
    }
}

/// Number of unordered pairs among `t` items, `t(t-1)/2`.
fn pairs(t: u64) -> u64 {
    t * t.saturating_sub(1) / 2
}

/// Arithmetic mean, with one correction pass so that it is accurate to rounding.
///
/// Used to centre data before correlations; returns NaN for an empty slice.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let n = values.len() as f64;
    let first = values.iter().sum::<f64>() / n;
    if !first.is_finite() {
        return first;
    }
    let correction = values.iter().map(|&v| v - first).sum::<f64>() / n;
    first + correction
}

/// Median (average of the two middle values for an even length).
///
/// A robust summary of a set of scores or correlations over seeds. Returns NaN for an
/// empty slice or when any value is NaN.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| cmp_no_nan(*a, *b));
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        let (a, b) = (sorted[n / 2 - 1], sorted[n / 2]);
        a + (b - a) / 2.0
    }
}

/// Indices that order `values` from highest to lowest.
///
/// Ties keep their index order (the sort is stable) and NaN sorts last, so the first `m`
/// entries are "the `m` best" in a reproducible way. Used by [`top_k`].
pub fn argsort_desc(values: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| cmp_nan_low(values[b], values[a]));
    idx
}

/// Average ranks, 1-based, with tied values receiving the mean of the ranks they span.
///
/// This is `scipy.stats.rankdata(x, method='average')`: the smallest value gets rank 1,
/// and e.g. `[3, 1, 1]` gives `[3, 1.5, 1.5]`. Ranks are what Spearman's correlation is
/// computed on. `-0.0` and `0.0` tie. If any value is NaN every rank is NaN (like scipy's
/// default `nan_policy='propagate'`); run [`sanitize`] first to rank NaN last instead.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    if x.iter().any(|v| v.is_nan()) {
        return vec![f64::NAN; n];
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&a, &b| cmp_no_nan(x[a], x[b]));
    let mut out = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && x[idx[end]] == x[idx[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end; their mean is (start+1+end)/2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &idx[start..end] {
            out[i] = rank;
        }
        start = end;
    }
    out
}

/// The sum of the (tie-averaged) ranks of oriented columns, one value per architecture.
///
/// # Panics
/// If the columns differ in length.
pub fn rank_sum(columns: &[&[f64]]) -> Vec<f64> {
    let n = columns.first().map_or(0, |c| c.len());
    let mut out = vec![0.0; n];
    for c in columns {
        assert_eq!(c.len(), n, "rank_sum: columns differ in length");
        for (o, r) in out.iter_mut().zip(ranks(c)) {
            *o += r;
        }
    }
    out
}

/// Pearson's linear correlation coefficient of `x` and `y`.
///
/// Sums are accumulated in `f64` on mean-centred data, which keeps the result accurate
/// even for large offsets. Returns NaN when there are fewer than two points or when
/// either input is constant (the coefficient is undefined), and NaN/Inf inputs give NaN.
/// The result is clamped to `[-1, 1]` to absorb rounding.
///
/// # Panics
/// If `x` and `y` have different lengths.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: inputs differ in length");
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let constant = |v: &[f64]| v.iter().all(|&a| a == v[0]);
    if constant(x) || constant(y) {
        return f64::NAN;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxx, mut syy, mut sxy) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    let r = sxy / (sxx.sqrt() * syy.sqrt());
    if r.is_nan() {
        r
    } else {
        r.clamp(-1.0, 1.0)
    }
}

/// Spearman's rank correlation: Pearson's coefficient of the average ranks.
///
/// Matches `scipy.stats.spearmanr` (ties get averaged ranks). It measures how well the
/// order of `y` follows the order of `x`, which is what matters for ranking architectures.
/// Returns NaN for fewer than two points, a constant input, or any NaN in the inputs
/// (callers should [`sanitize`] first).
///
/// # Panics
/// If `x` and `y` have different lengths.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "spearman: inputs differ in length");
    if x.len() < 2 || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Counts strict inversions (`i < j` with `v[i] > v[j]`) while sorting `v` ascending.
///
/// Bottom-up merge sort, O(n log n); equal values are never counted. `v` must hold no NaN.
fn sort_counting_inversions(v: &mut [f64]) -> u64 {
    let n = v.len();
    let mut buf = vec![0.0; n];
    let mut inversions = 0u64;
    let mut width = 1;
    while width < n {
        let mut lo = 0;
        while lo < n {
            let mid = (lo + width).min(n);
            let hi = (lo + 2 * width).min(n);
            let (mut i, mut j, mut k) = (lo, mid, lo);
            while i < mid && j < hi {
                if v[j] < v[i] {
                    // v[j] is smaller than every remaining element of the left run.
                    inversions += (mid - i) as u64;
                    buf[k] = v[j];
                    j += 1;
                } else {
                    buf[k] = v[i];
                    i += 1;
                }
                k += 1;
            }
            buf[k..k + (mid - i)].copy_from_slice(&v[i..mid]);
            k += mid - i;
            buf[k..k + (hi - j)].copy_from_slice(&v[j..hi]);
            v[lo..hi].copy_from_slice(&buf[lo..hi]);
            lo = hi;
        }
        width *= 2;
    }
    inversions
}

/// Sum of `t(t-1)/2` over runs of equal adjacent values in an already sorted slice.
fn tied_pairs_sorted(v: &[f64]) -> u64 {
    let mut total = 0;
    let mut start = 0;
    while start < v.len() {
        let mut end = start + 1;
        while end < v.len() && v[end] == v[start] {
            end += 1;
        }
        total += pairs((end - start) as u64);
        start = end;
    }
    total
}

/// Kendall's tau-b, the default of `scipy.stats.kendalltau`.
///
/// `tau_b = (nc - nd) / sqrt((n0 - n1) (n0 - n2))` with `nc`/`nd` the concordant and
/// discordant pairs, `n0 = n(n-1)/2`, and `n1`/`n2` the pairs tied in `x`/`y`; a pair tied
/// in either input is neither concordant nor discordant. It is the share of pairs of
/// architectures that the proxy orders correctly, corrected for ties.
///
/// Pair counts are exact integers, obtained in O(n log n) by sorting on `(x, y)` and
/// counting the inversions left in `y` (Knight's algorithm). Returns NaN when the
/// denominator is 0 (fewer than two points or a constant input) or any input is NaN.
///
/// # Panics
/// If `x` and `y` have different lengths.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "kendall_tau_b: inputs differ in length");
    let n = x.len();
    if n < 2 || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&a, &b| cmp_no_nan(x[a], x[b]).then(cmp_no_nan(y[a], y[b])));

    // Pairs tied in x (n1) and tied in both x and y (n3).
    let (mut n1, mut n3) = (0u64, 0u64);
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && x[idx[end]] == x[idx[start]] {
            end += 1;
        }
        n1 += pairs((end - start) as u64);
        let ys: Vec<f64> = idx[start..end].iter().map(|&i| y[i]).collect();
        n3 += tied_pairs_sorted(&ys);
        start = end;
    }

    // With x ascending (and y ascending within x-ties), the discordant pairs are exactly
    // the strict inversions of the y sequence.
    let mut ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
    let nd = sort_counting_inversions(&mut ys);
    let n2 = tied_pairs_sorted(&ys);

    let n0 = pairs(n as u64);
    if n0 == n1 || n0 == n2 {
        return f64::NAN;
    }
    // nc = n0 - (n1 + n2 - n3) - nd, so nc - nd = n0 - n1 - n2 + n3 - 2 nd.
    let diff = n0 as i128 - n1 as i128 - n2 as i128 + n3 as i128 - 2 * nd as i128;
    let tau = diff as f64 / ((n0 - n1) as f64).sqrt() / ((n0 - n2) as f64).sqrt();
    tau.clamp(-1.0, 1.0)
}

/// How well a proxy's scores order a set of architectures, over all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correlation {
    /// Number of architectures compared.
    pub n: usize,
    /// Spearman's rank correlation between truth and score (see [`spearman`]).
    pub spearman: f64,
    /// Kendall's tau-b between truth and score (see [`kendall_tau_b`]).
    pub kendall: f64,
}

/// Spearman and Kendall correlations between ground truth and proxy scores.
///
/// The two headline numbers reported for a zero-cost proxy. Sanitize scores first if
/// they may contain NaN/Inf; otherwise the correlations are NaN.
///
/// # Panics
/// If `truth` and `score` have different lengths.
pub fn correlate(truth: &[f64], score: &[f64]) -> Correlation {
    assert_eq!(
        truth.len(),
        score.len(),
        "correlate: inputs differ in length"
    );
    Correlation {
        n: truth.len(),
        spearman: spearman(truth, score),
        kendall: kendall_tau_b(truth, score),
    }
}

/// Agreement of truth and score among the best architectures only.
///
/// Search only cares about finding the best candidates, so a proxy is also judged on the
/// top few percent of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    /// The requested percentage of the benchmark.
    pub percent: f64,
    /// Number of architectures in the top set, `floor(percent * n / 100)`, at least 1.
    pub m: usize,
    /// Spearman correlation of (truth, score) restricted to the top `m` by truth.
    pub spearman: f64,
    /// Kendall tau-b of (truth, score) restricted to the top `m` by truth.
    pub kendall: f64,
    /// `|top m by truth ∩ top m by score| / m`, in `[0, 1]`.
    pub overlap: f64,
}

/// Top-k statistics: how a proxy does on the best `percent` % of architectures.
///
/// Higher truth and higher score both mean better. `m = floor(percent * n / 100)`, raised
/// to 1 when `n > 0` and capped at `n` (a NaN percent gives 1). The top set by truth is
/// the `m` highest truths, ties broken by lower index (likewise for scores, NaN last);
/// `spearman`/`kendall` are computed on the pairs of that set (NaN when `m < 2`), and
/// `overlap` is the fraction of it that the proxy also puts in its own top `m`.
/// For `n == 0` all statistics are NaN and `m == 0`.
///
/// # Panics
/// If `truth` and `score` have different lengths.
pub fn top_k(truth: &[f64], score: &[f64], percent: f64) -> TopK {
    assert_eq!(truth.len(), score.len(), "top_k: inputs differ in length");
    let n = truth.len();
    if n == 0 {
        return TopK {
            percent,
            m: 0,
            spearman: f64::NAN,
            kendall: f64::NAN,
            overlap: f64::NAN,
        };
    }
    let m = (percent * n as f64 / 100.0).floor().max(1.0).min(n as f64) as usize;
    let by_truth = &argsort_desc(truth)[..m];
    let by_score = &argsort_desc(score)[..m];

    let mut in_top = vec![false; n];
    for &i in by_truth {
        in_top[i] = true;
    }
    let shared = by_score.iter().filter(|&&i| in_top[i]).count();

    let t: Vec<f64> = by_truth.iter().map(|&i| truth[i]).collect();
    let s: Vec<f64> = by_truth.iter().map(|&i| score[i]).collect();
    TopK {
        percent,
        m,
        spearman: spearman(&t, &s),
        kendall: kendall_tau_b(&t, &s),
        overlap: shared as f64 / m as f64,
    }
}

/// Replaces NaN, `+Inf` and `-Inf` so that they rank last; returns the values and how
/// many were replaced.
///
/// A proxy can overflow or divide by zero on some architectures; such a score says
/// nothing good about the network, so it is treated as the worst possible score
/// (higher = better). All non-finite values get one common replacement, so they tie
/// with each other and lie strictly below every finite value. The replacement is finite
/// whenever possible (so [`pearson`] stays defined): `min - max(|min|, 1)` of the finite
/// values, or `f64::MIN` if that overflows, or `-Inf` only if `f64::MIN` itself occurs;
/// `0.0` when no value is finite.
pub fn sanitize(values: &[f64]) -> (Vec<f64>, usize) {
    let lowest = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::INFINITY, f64::min);
    let replacement = if lowest == f64::INFINITY {
        0.0
    } else {
        let below = lowest - lowest.abs().max(1.0);
        if below.is_finite() {
            below
        } else if lowest > f64::MIN {
            f64::MIN
        } else {
            f64::NEG_INFINITY
        }
    };
    let mut replaced = 0;
    let out = values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                v
            } else {
                replaced += 1;
                replacement
            }
        })
        .collect();
    (out, replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-12;

    fn close(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= TOL,
            "got {got:.17}, want {want:.17}, diff {:e}",
            (got - want).abs()
        );
    }

    fn close_all(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            close(*g, *w);
        }
    }

    /// (x, y, pearson, spearman, kendall) with values from scipy 1.17.1.
    type Fixture = (&'static [f64], &'static [f64], f64, f64, f64);

    const FIXTURES: [Fixture; 4] = [
        // Ties in x only.
        (
            &[1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 6.0, 7.0],
            &[2.5, 1.0, 3.0, 4.5, 4.0, 6.0, 5.5, 7.0, 9.0, 8.0],
            0.914_183_953_433_809_1,
            0.941_649_905_991_895_4,
            0.814_835_345_064_507_8,
        ),
        // Ties in y only.
        (
            &[0.3, 1.2, -0.5, 2.2, 3.1, 0.9, 1.7, 2.8, -1.0, 0.1],
            &[1.0, 3.0, 1.0, 4.0, 4.0, 2.0, 3.0, 5.0, 0.0, 1.0],
            0.963_006_108_695_523_7,
            0.963_128_122_549_627,
            0.895_668_589_502_960_1,
        ),
        // Ties in both.
        (
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0],
            &[2.0, 1.0, 2.0, 3.0, 3.0, 5.0, 4.0, 4.0, 5.0, 1.0],
            0.449_999_999_999_999_9,
            0.45,
            0.449_999_999_999_999_9,
        ),
        // Ties in both, n = 12, negative values, weak correlation.
        (
            &[3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0],
            &[2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0, 4.0, 5.0],
            0.239_433_892_410_277_6,
            0.243_309_999_239_553_8,
            0.233_853_586_673_371_33,
        ),
    ];

    #[test]
    fn ranks_match_scipy_rankdata() {
        let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0];
        let want = [4.5, 1.5, 6.0, 1.5, 8.0, 11.0, 3.0, 10.0, 8.0, 4.5, 8.0];
        close_all(&ranks(&x), &want);

        let y = FIXTURES[3].1;
        let want = [
            4.0, 8.0, 1.5, 10.5, 4.0, 10.5, 1.5, 10.5, 4.0, 10.5, 6.0, 7.0,
        ];
        close_all(&ranks(y), &want);
    }

    #[test]
    fn ranks_edge_cases() {
        assert!(ranks(&[]).is_empty());
        close_all(&ranks(&[7.0]), &[1.0]);
        close_all(&ranks(&[0.0, -0.0, 1.0]), &[1.5, 1.5, 3.0]);
        assert!(ranks(&[1.0, f64::NAN, 2.0]).iter().all(|r| r.is_nan()));
        close_all(
            &ranks(&[f64::INFINITY, 0.0, f64::NEG_INFINITY]),
            &[3.0, 2.0, 1.0],
        );
    }

    #[test]
    fn pearson_matches_scipy() {
        for (x, y, want, _, _) in FIXTURES {
            close(pearson(x, y), want);
        }
    }

    #[test]
    fn spearman_matches_scipy() {
        for (x, y, _, want, _) in FIXTURES {
            close(spearman(x, y), want);
        }
    }

    #[test]
    fn kendall_matches_scipy() {
        for (x, y, _, _, want) in FIXTURES {
            close(kendall_tau_b(x, y), want);
        }
    }

    /// n = 300 with heavy ties; the same formulas were evaluated in numpy/scipy.
    #[test]
    fn larger_generated_fixture_matches_scipy() {
        let x: Vec<f64> = (0..300u64).map(|i| ((i * 37) % 23) as f64).collect();
        let y: Vec<f64> = (0..300u64)
            .map(|i| ((i * 53) % 17) as f64 + 0.5 * ((i * 7) % 3) as f64)
            .collect();
        close(spearman(&x, &y), 0.016_321_835_469_305_455);
        close(kendall_tau_b(&x, &y), 0.000_277_122_054_097_091_4);
        close(pearson(&x, &y), 0.017_182_582_903_897_74);
    }

    /// Direct O(n^2) count of tau-b, used to cross-check the O(n log n) version.
    fn kendall_quadratic(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len();
        let (mut nc, mut nd, mut n1, mut n2) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..n {
            for j in i + 1..n {
                let dx = x[i].partial_cmp(&x[j]).unwrap();
                let dy = y[i].partial_cmp(&y[j]).unwrap();
                if dx == Ordering::Equal {
                    n1 += 1;
                }
                if dy == Ordering::Equal {
                    n2 += 1;
                }
                if dx != Ordering::Equal && dy != Ordering::Equal {
                    if dx == dy {
                        nc += 1;
                    } else {
                        nd += 1;
                    }
                }
            }
        }
        let n0 = (n * (n - 1) / 2) as i64;
        (nc - nd) as f64 / (((n0 - n1) as f64) * ((n0 - n2) as f64)).sqrt()
    }

    #[test]
    fn kendall_agrees_with_quadratic_count() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |k: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % k
        };
        for &(n, levels) in &[(2, 3), (5, 2), (17, 4), (64, 10), (200, 7), (333, 1000)] {
            let x: Vec<f64> = (0..n).map(|_| next(levels) as f64 - 1.0).collect();
            let y: Vec<f64> = x
                .iter()
                .map(|&v| {
                    if next(3) == 0 {
                        next(levels) as f64
                    } else {
                        v * 0.5
                    }
                })
                .collect();
            let fast = kendall_tau_b(&x, &y);
            let slow = kendall_quadratic(&x, &y);
            if slow.is_nan() {
                assert!(fast.is_nan());
            } else {
                close(fast, slow);
            }
        }
        // -0.0 and 0.0 tie.
        let x = [0.0, -0.0, 1.0, 2.0];
        let y = [1.0, 0.0, 2.0, 3.0];
        close(kendall_tau_b(&x, &y), kendall_quadratic(&x, &y));
    }

    #[test]
    fn perfect_and_inverse_orderings() {
        let x: Vec<f64> = (1..=8).map(f64::from).collect();
        let lin: Vec<f64> = x.iter().map(|v| 2.0 * v + 3.0).collect();
        let anti: Vec<f64> = x.iter().map(|v| -0.5 * v + 1.0).collect();
        let mono: Vec<f64> = x.iter().map(|v| v.exp()).collect();
        close(pearson(&x, &lin), 1.0);
        close(pearson(&x, &anti), -1.0);
        for y in [&lin, &mono] {
            close(spearman(&x, y), 1.0);
            close(kendall_tau_b(&x, y), 1.0);
        }
        close(spearman(&x, &anti), -1.0);
        close(kendall_tau_b(&x, &anti), -1.0);
        // Two points are always perfectly (anti-)correlated.
        close(pearson(&[1.0, 2.0], &[5.0, 3.0]), -1.0);
    }

    #[test]
    fn undefined_cases_are_nan() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let c = [0.1; 4];
        for (a, b) in [(&x, &c), (&c, &x), (&c, &c)] {
            assert!(pearson(a, b).is_nan());
            assert!(spearman(a, b).is_nan());
            assert!(kendall_tau_b(a, b).is_nan());
        }
        for (a, b) in [(&[][..], &[][..]), (&[1.0][..], &[2.0][..])] {
            assert!(pearson(a, b).is_nan());
            assert!(spearman(a, b).is_nan());
            assert!(kendall_tau_b(a, b).is_nan());
        }
        let y = [1.0, f64::NAN, 3.0, 2.0];
        assert!(spearman(&x, &y).is_nan());
        assert!(kendall_tau_b(&x, &y).is_nan());
        assert!(pearson(&x, &y).is_nan());
    }

    #[test]
    #[should_panic]
    fn length_mismatch_panics() {
        spearman(&[1.0, 2.0], &[1.0, 2.0, 3.0]);
    }

    #[test]
    fn correlate_collects_both() {
        let (x, y, _, sp, kt) = FIXTURES[0];
        let c = correlate(x, y);
        assert_eq!(c.n, 10);
        close(c.spearman, sp);
        close(c.kendall, kt);
    }

    const TRUTH: [f64; 20] = [
        0.91, 0.45, 0.77, 0.77, 0.12, 0.66, 0.88, 0.30, 0.77, 0.54, 0.95, 0.21, 0.60, 0.83, 0.40,
        0.70, 0.05, 0.99, 0.35, 0.58,
    ];
    const SCORE: [f64; 20] = [
        1.2, 0.3, 0.9, 1.1, -0.4, 0.2, 1.5, 0.1, 0.6, 0.7, 1.4, -0.2, 0.8, 0.5, 0.0, 1.0, -0.9,
        1.3, 0.4, 0.35,
    ];

    #[test]
    fn top_k_matches_scipy() {
        // (percent, m, spearman, kendall, overlap); the top sets were chosen with a stable
        // descending argsort in numpy and the correlations computed by scipy on them.
        let cases = [
            (25.0, 5, 0.3, 0.199_999_999_999_999_98, 0.8),
            (50.0, 10, 0.730_116_311_776_42, 0.506_048_076_851_059_7, 0.8),
            (
                100.0,
                20,
                0.891_567_276_146_508,
                0.737_423_878_729_806_2,
                1.0,
            ),
            (10.0, 2, -0.999_999_999_999_999_9, -1.0, 0.5),
            // Cut inside the three-way tie at 0.77 (indices 2, 3, 8): lower index wins.
            (
                30.0,
                6,
                0.542_857_142_857_142_9,
                0.333_333_333_333_333_3,
                4.0 / 6.0,
            ),
            (
                35.0,
                7,
                0.630_656_223_886_891_4,
                0.390_360_029_179_413_26,
                6.0 / 7.0,
            ),
        ];
        for (percent, m, sp, kt, ov) in cases {
            let t = top_k(&TRUTH, &SCORE, percent);
            assert_eq!(t.m, m, "percent {percent}");
            assert_eq!(t.percent, percent);
            close(t.spearman, sp);
            close(t.kendall, kt);
            close(t.overlap, ov);
        }
        // The full set agrees with `correlate`.
        let all = correlate(&TRUTH, &SCORE);
        let t = top_k(&TRUTH, &SCORE, 100.0);
        close(t.spearman, all.spearman);
        close(t.kendall, all.kendall);
    }

    #[test]
    fn top_k_small_sets() {
        // 3 % of 20 rounds down to 0, raised to 1: correlations undefined.
        let t = top_k(&TRUTH, &SCORE, 3.0);
        assert_eq!(t.m, 1);
        assert!(t.spearman.is_nan() && t.kendall.is_nan());
        close(t.overlap, 0.0);
        assert_eq!(top_k(&TRUTH, &SCORE, 500.0).m, 20);
        let e = top_k(&[], &[], 10.0);
        assert_eq!(e.m, 0);
        assert!(e.overlap.is_nan());
    }

    #[test]
    fn sanitize_ranks_non_finite_last() {
        let x = [
            0.5,
            f64::NAN,
            2.0,
            f64::INFINITY,
            -1.0,
            3.0,
            f64::NEG_INFINITY,
            1.5,
            0.7,
            f64::NAN,
        ];
        let y = [0.4, -2.0, 1.8, -1.5, -0.9, 2.5, -1.0, 1.0, 0.9, -3.0];
        let (s, count) = sanitize(&x);
        assert_eq!(count, 4);
        assert!(s.iter().all(|v| v.is_finite()));
        let worst = s[1];
        assert!(worst < -1.0);
        for i in [3, 6, 9] {
            assert_eq!(s[i], worst);
        }
        for i in [0, 2, 4, 5, 7, 8] {
            assert_eq!(s[i], x[i]);
        }
        // scipy: rankdata / spearmanr / kendalltau with the non-finite values set to -inf.
        close_all(
            &ranks(&s),
            &[6.0, 2.5, 9.0, 2.5, 5.0, 10.0, 2.5, 8.0, 7.0, 2.5],
        );
        close(spearman(&s, &y), 0.969_223_369_195_119_8);
        close(kendall_tau_b(&s, &y), 0.930_949_336_251_262_7);
        // Last in top-k ordering too.
        assert_eq!(&argsort_desc(&s)[6..], &[1, 3, 6, 9]);
    }

    #[test]
    fn sanitize_extremes() {
        let (s, c) = sanitize(&[1.0, 2.0]);
        assert_eq!((s, c), (vec![1.0, 2.0], 0));
        let (s, c) = sanitize(&[f64::NAN, f64::INFINITY]);
        assert_eq!(c, 2);
        assert_eq!(s, vec![0.0, 0.0]);
        let (s, _) = sanitize(&[-1e308, f64::NAN]);
        assert_eq!(s[1], f64::MIN);
        assert!(s[1] < s[0]);
        let (s, _) = sanitize(&[f64::MIN, f64::NAN]);
        assert!(s[1] < s[0]);
        let (s, c) = sanitize(&[]);
        assert!(s.is_empty() && c == 0);
    }

    #[test]
    fn mean_and_median() {
        close(mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        close(mean(&[0.1; 3]), 0.1);
        assert!(mean(&[]).is_nan());
        close(median(&[3.0, 1.0, 2.0]), 2.0);
        close(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert!(median(&[1.0, f64::NAN]).is_nan());
        assert_eq!(argsort_desc(&[1.0, f64::NAN, 3.0, 1.0]), vec![2, 0, 3, 1]);
    }
}
