//! Small dense linear algebra in f64 for proxies: Gram matrices, symmetric eigenvalues,
//! nuclear norms and correlation matrices.

use nalgebra::DMatrix;

/// `A Aᵀ` of a row-major `rows × cols` f32 matrix, accumulated in f64.
pub fn gram_rows(data: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
    let a: Vec<f64> = data.iter().map(|&x| x as f64).collect();
    let g = gram(&a, rows, cols);
    DMatrix::from_row_slice(rows, rows, &g)
}

/// `A Aᵀ` (row-major `rows × rows`) of a row-major `rows × cols` matrix, by a blocked matrix
/// product; exact for small-integer f32 entries (0/1 and sign matrices) as long as the sums stay
/// below 2²⁴.
pub fn gram<T: Copy + Default + 'static + GemmScalar>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    assert_eq!(
        a.len(),
        rows * cols,
        "gram: data does not match {rows} × {cols}"
    );
    let mut out = vec![T::default(); rows * rows];
    gram_rows_into(a, rows, cols, 0..rows, rows, &mut out);
    out
}

/// The lower triangle and diagonal of [`gram`] (what [`psd_log_det`] reads); most entries
/// above the diagonal are left 0. Computed in bands of `GRAM_BAND` rows, each only against
/// the rows up to its own last one: about half the products of the whole matrix. Exact for the
/// same small-integer entries as [`gram`], where it gives the same values.
pub fn gram_lower(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        a.len(),
        rows * cols,
        "gram_lower: data does not match {rows} × {cols}"
    );
    let mut out = vec![0f32; rows * rows];
    for start in (0..rows).step_by(GRAM_BAND) {
        let end = (start + GRAM_BAND).min(rows);
        gram_rows_into(a, rows, cols, start..end, end, &mut out);
    }
    out
}

/// Rows per band of [`gram_lower`].
const GRAM_BAND: usize = 256;

/// Writes `(A Aᵀ)[i][j]` for the rows `i` in `band` and the columns `j < upto` into the
/// row-major `rows × rows` matrix `out`.
fn gram_rows_into<T: Copy + Default + 'static + GemmScalar>(
    a: &[T],
    rows: usize,
    cols: usize,
    band: std::ops::Range<usize>,
    upto: usize,
    out: &mut [T],
) {
    assert!(band.end <= rows && upto <= rows && out.len() == rows * rows);
    if band.is_empty() || upto == 0 || cols == 0 {
        return;
    }
    // SAFETY: lhs is rows `band` of A (`band.len() × cols` from row `band.start`), rhs the
    // transpose view of its first `upto` rows, dst the `band.len() × upto` block of `out` at
    // row `band.start` with row stride `rows`; all inside their slices (checked above), no
    // aliasing between dst and the inputs.
    unsafe {
        gemm::gemm(
            band.len(),
            upto,
            cols,
            out.as_mut_ptr().add(band.start * rows),
            1,
            rows as isize,
            false,
            a.as_ptr().add(band.start * cols),
            1,
            cols as isize,
            a.as_ptr(),
            cols as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Scalars [`gram`] multiplies.
pub trait GemmScalar {
    /// Additive identity.
    fn zero() -> Self;
    /// Multiplicative identity.
    fn one() -> Self;
}

impl GemmScalar for f32 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
}

impl GemmScalar for f64 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
}

/// `ln det A` of a symmetric positive semi-definite row-major `n × n` matrix (Cholesky in
/// f64). A singular matrix (a pivot at or below 10⁻¹² of its diagonal entry) gives −∞, what
/// `slogdet` reports as `ln|det|` for a zero determinant. Only the lower triangle and the
/// diagonal of `a` are read.
///
/// Row by row (L's row j from the rows above it), taken `CHOLESKY_ROWS` rows at a time: the
/// block's rows meet each finished row above in turn, so a finished row is read from memory
/// once per block instead of once per row (the whole factor of a 3 072 × 3 072 matrix is far
/// larger than the caches). Every entry is the same `dot` of the same operands as in the
/// plain row-by-row order, so the result is bit for bit the plain algorithm's.
pub fn psd_log_det(mut a: Vec<f64>, n: usize) -> f64 {
    assert_eq!(a.len(), n * n, "psd_log_det: data does not match {n} × {n}");
    let mut log_det = 0f64;
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + CHOLESKY_ROWS).min(n);
        let (done, rest) = a.split_at_mut(j0 * n);
        let block = &mut rest[..(j1 - j0) * n];
        // The block's columns left of it, against the finished rows above, four rows at once.
        let mut rows: Vec<&mut [f64]> = block.chunks_exact_mut(n).collect();
        for k in 0..j0 {
            let (lk, lkk) = (&done[k * n..k * n + k], done[k * n + k]);
            let mut fours = rows.chunks_exact_mut(DOTS);
            for g in &mut fours {
                let d = dots4([&g[0][..k], &g[1][..k], &g[2][..k], &g[3][..k]], lk);
                for (row, d) in g.iter_mut().zip(d) {
                    row[k] = (row[k] - d) / lkk;
                }
            }
            for row in fours.into_remainder() {
                row[k] = (row[k] - dot(&row[..k], lk)) / lkk;
            }
        }
        drop(rows);
        // The block's own triangle and pivots, row by row.
        for j in j0..j1 {
            let (above, row) = block.split_at_mut((j - j0) * n);
            let row = &mut row[..n];
            for k in j0..j {
                let lk = &above[(k - j0) * n..(k - j0) * n + k + 1];
                row[k] = (row[k] - dot(&row[..k], &lk[..k])) / lk[k];
            }
            let diag = row[j];
            let pivot = diag - dot(&row[..j], &row[..j]);
            if pivot.is_nan() || pivot <= 1e-12 * diag.abs() || pivot.is_infinite() {
                return f64::NEG_INFINITY;
            }
            row[j] = pivot.sqrt();
            log_det += pivot.ln();
        }
        j0 = j1;
    }
    log_det
}

/// Rows of L that [`psd_log_det`] computes together: 16 rows of a 3 072-wide matrix are
/// 384 KiB, which stay in a core's L2 cache while the rows above stream past.
const CHOLESKY_ROWS: usize = 16;

/// Lanes of [`dot`]'s partial sums.
const DOT_LANES: usize = 8;

/// `Σ x_i y_i` over the common length, in [`DOT_LANES`] partial sums indexed by position and
/// combined in a fixed order (the compiler vectorises it; a plain running sum it cannot
/// reorder). Deterministic: the same inputs always give the same bits.
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (xc, xt) = x[..n].as_chunks::<DOT_LANES>();
    let (yc, yt) = y[..n].as_chunks::<DOT_LANES>();
    let mut acc = [0f64; DOT_LANES];
    for (a, b) in xc.iter().zip(yc) {
        for i in 0..DOT_LANES {
            acc[i] += a[i] * b[i];
        }
    }
    dot_total(acc, xt, yt)
}

/// [`dot`]'s last step: its partial sums `acc` combined, plus the products of the tails `x`
/// and `y` (shorter than a lane row).
#[inline(always)]
fn dot_total(acc: [f64; DOT_LANES], x: &[f64], y: &[f64]) -> f64 {
    let tail: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
    let halves = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (halves[0] + halves[2]) + (halves[1] + halves[3]) + tail
}

/// `acc_i += a_i b_i` for every lane (one vector multiply and one add per lane row).
#[inline(always)]
fn lanes_add_products(acc: &mut [f64; DOT_LANES], a: &[f64; DOT_LANES], b: &[f64; DOT_LANES]) {
    for i in 0..DOT_LANES {
        acc[i] += a[i] * b[i];
    }
}

/// Vectors [`dots4`] takes at once.
const DOTS: usize = 4;

/// [`dot`] of each of the vectors `xs` (each at least as long as `y`) with `y`: the same
/// lanes and the same order of additions, so the same bits. The four sums do not wait on
/// each other, so the adders stay busy where one sum waits on its own previous addition, and
/// `y` is read once for all four. With AVX-512 the lanes are one vector register per sum,
/// written out ([`dots4_avx512`]): left to the compiler, the same loop came out 1.5× slower
/// in some builds of the crate and not in others.
fn dots4(xs: [&[f64]; DOTS], y: &[f64]) -> [f64; DOTS] {
    let n = y.len();
    assert!(
        xs.iter().all(|x| x.len() >= n),
        "dots4: every vector must be at least as long as y"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above) and every vector holds at
        // least `y.len()` values (asserted above).
        return unsafe { dots4_avx512(xs, y) };
    }
    dots4_lanes(xs, y)
}

/// [`dots4`] with AVX-512: each sum's [`DOT_LANES`] lanes in one register, a product then a
/// sum per lane row (no fused multiply-add, as the portable loop), then [`dot_total`].
///
/// # Safety
/// The CPU must support AVX-512F, and every vector of `xs` must hold at least `y.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots4_avx512(xs: [&[f64]; DOTS], y: &[f64]) -> [f64; DOTS] {
    use std::arch::x86_64::{
        _mm512_add_pd, _mm512_loadu_pd, _mm512_mul_pd, _mm512_setzero_pd, _mm512_storeu_pd,
    };
    let n = y.len();
    let rows = n / DOT_LANES;
    let mut acc = [_mm512_setzero_pd(); DOTS];
    for c in 0..rows {
        let at = c * DOT_LANES;
        // SAFETY: `at + DOT_LANES ≤ n`, within `y` and (by the caller) within every `xs[r]`.
        let b = unsafe { _mm512_loadu_pd(y.as_ptr().add(at)) };
        for (sum, x) in acc.iter_mut().zip(&xs) {
            let a = unsafe { _mm512_loadu_pd(x.as_ptr().add(at)) };
            *sum = _mm512_add_pd(*sum, _mm512_mul_pd(a, b));
        }
    }
    let tail = rows * DOT_LANES;
    std::array::from_fn(|r| {
        let mut lanes = [0f64; DOT_LANES];
        // SAFETY: `lanes` holds the register's eight values.
        unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), acc[r]) };
        dot_total(lanes, &xs[r][tail..n], &y[tail..])
    })
}

vectorised! {
    /// [`dots4`] in portable code, lanes left to the compiler.
    fn dots4_lanes(xs: [&[f64]; DOTS], y: &[f64]) -> [f64; DOTS] {
        let n = y.len();
        let (yc, yt) = y.as_chunks::<DOT_LANES>();
        let split = xs.map(|x| x[..n].as_chunks::<DOT_LANES>());
        let mut acc = [[0f64; DOT_LANES]; DOTS];
        let [mut s0, mut s1, mut s2, mut s3] = acc;
        let chunks = yc
            .iter()
            .zip(split[0].0)
            .zip(split[1].0)
            .zip(split[2].0)
            .zip(split[3].0);
        for ((((b, a0), a1), a2), a3) in chunks {
            lanes_add_products(&mut s0, a0, b);
            lanes_add_products(&mut s1, a1, b);
            lanes_add_products(&mut s2, a2, b);
            lanes_add_products(&mut s3, a3, b);
        }
        acc = [s0, s1, s2, s3];
        std::array::from_fn(|r| dot_total(acc[r], split[r].1, yt))
    }
}

/// `−Σ_i ln(λ_i + 10⁻⁵) + 1/(λ_i + 10⁻⁵)` over the eigenvalues of a correlation matrix (the
/// Jacobian-covariance score). Eigenvalues are clamped at 0 (rounding can push a singular one
/// below zero, where the reference's log is NaN): a documented deviation. NaN entries give NaN.
pub fn log_eigen_score(c: &DMatrix<f64>) -> f64 {
    if c.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    const K: f64 = 1e-5;
    -symmetric_eigenvalues(c.clone())
        .iter()
        .map(|&l| {
            let x = l.max(0.0) + K;
            x.ln() + 1.0 / x
        })
        .sum::<f64>()
}

/// Eigenvalues of a symmetric matrix (symmetric solver; unordered).
pub fn symmetric_eigenvalues(m: DMatrix<f64>) -> Vec<f64> {
    m.symmetric_eigenvalues().iter().copied().collect()
}

/// Nuclear norm (sum of singular values) of a row-major `rows × cols` matrix: the square roots
/// of the eigenvalues of the smaller Gram matrix, negative rounding clamped to 0.
pub fn nuclear_norm(data: &[f32], rows: usize, cols: usize) -> f64 {
    let gram = if rows <= cols {
        gram_rows(data, rows, cols)
    } else {
        let mut t = vec![0f32; data.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = data[r * cols + c];
            }
        }
        gram_rows(&t, cols, rows)
    };
    symmetric_eigenvalues(gram)
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum()
}

/// Pearson correlation matrix between the rows of a row-major `rows × cols` matrix (NumPy
/// `corrcoef`); a constant row gives NaN entries.
pub fn corrcoef_rows(data: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
    let mut centred = vec![0f64; rows * cols];
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / cols as f64;
        for c in 0..cols {
            centred[r * cols + c] = row[c] as f64 - mean;
        }
    }
    let norms: Vec<f64> = (0..rows)
        .map(|r| {
            centred[r * cols..(r + 1) * cols]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut m = DMatrix::<f64>::zeros(rows, rows);
    for i in 0..rows {
        for j in 0..=i {
            let s: f64 = centred[i * cols..(i + 1) * cols]
                .iter()
                .zip(&centred[j * cols..(j + 1) * cols])
                .map(|(a, b)| a * b)
                .sum();
            let v = s / (norms[i] * norms[j]);
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
    m
}

/// Transpose of a row-major `rows × cols` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four dot products at once (the AVX-512 registers where the CPU has them) are
    /// `dot`'s and the portable loop's, bit for bit, for every tail length.
    #[test]
    fn dots4_is_dot_bit_for_bit() {
        for n in 0..41 {
            let draw = |seed: u64, len: usize| -> Vec<f64> {
                crate::rng::Rng::new(seed)
                    .normal_vec(len, 3.0)
                    .iter()
                    .map(|&v| v as f64 * 1.000_000_1)
                    .collect()
            };
            let y = draw(1000 + n as u64, n);
            let xs: Vec<Vec<f64>> = (0..DOTS)
                .map(|r| draw(r as u64 + 7 * n as u64, n + r))
                .collect();
            let refs = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let four = dots4(refs, &y);
            let portable = dots4_lanes(refs, &y);
            for r in 0..DOTS {
                let one = dot(&xs[r][..n], &y);
                assert_eq!(four[r].to_bits(), one.to_bits(), "n {n}, vector {r}");
                assert_eq!(portable[r].to_bits(), one.to_bits(), "n {n}, vector {r}");
            }
        }
    }

    #[test]
    fn nuclear_norm_of_known_matrices() {
        // diag(3, -4) has singular values 3 and 4.
        assert!((nuclear_norm(&[3.0, 0.0, 0.0, -4.0], 2, 2) - 7.0).abs() < 1e-12);
        // [[1, 2, 2]]: one singular value, the L2 norm 3; also as a column.
        assert!((nuclear_norm(&[1.0, 2.0, 2.0], 1, 3) - 3.0).abs() < 1e-12);
        assert!((nuclear_norm(&[1.0, 2.0, 2.0], 3, 1) - 3.0).abs() < 1e-12);
        // [[1,1],[1,1]] has singular values 2 and 0.
        assert!((nuclear_norm(&[1.0; 4], 2, 2) - 2.0).abs() < 1e-7);
    }

    #[test]
    fn gram_and_log_det() {
        let a = [1.0f64, 2.0, 0.0, 1.0, -1.0, 3.0];
        assert_eq!(gram(&a, 2, 3), vec![5.0, -1.0, -1.0, 11.0]);
        let s = [1.0f32, -1.0, 1.0, 1.0];
        assert_eq!(gram(&s, 2, 2), vec![2.0, 0.0, 0.0, 2.0]);
        // det [[5, −1], [−1, 11]] = 54.
        assert!((psd_log_det(gram(&a, 2, 3), 2) - 54f64.ln()).abs() < 1e-12);
        // Rank one: singular.
        assert_eq!(psd_log_det(vec![1.0, 1.0, 1.0, 1.0], 2), f64::NEG_INFINITY);
        assert_eq!(psd_log_det(vec![0.0], 1), f64::NEG_INFINITY);
        // Identity correlation: −n (ln(1 + k) + 1/(1 + k)).
        let x: f64 = 1.0 + 1e-5;
        let id = DMatrix::<f64>::identity(3, 3);
        assert!((log_eigen_score(&id) + 3.0 * (x.ln() + 1.0 / x)).abs() < 1e-12);
    }

    #[test]
    fn lower_gram_is_the_lower_triangle_of_the_whole_one() {
        let mut rng = crate::rng::Rng::new(2);
        for (rows, cols) in [
            (1, 3),
            (5, 2),
            (GRAM_BAND + 44, 320),
            (2 * GRAM_BAND + 1, 64),
        ] {
            let s: Vec<f32> = (0..rows * cols)
                .map(|_| [-1.0, 0.0, 1.0][rng.range(0, 3)])
                .collect();
            let (whole, lower) = (gram(&s, rows, cols), gram_lower(&s, rows, cols));
            for i in 0..rows {
                assert_eq!(
                    lower[i * rows..=i * rows + i],
                    whole[i * rows..=i * rows + i]
                );
            }
            let a: Vec<f64> = whole.iter().map(|&v| v as f64).collect();
            let b: Vec<f64> = lower.iter().map(|&v| v as f64).collect();
            let (la, lb) = (psd_log_det(a, rows), psd_log_det(b, rows));
            assert_eq!(la.to_bits(), lb.to_bits());
            // Full rank when there are more columns than rows: a real value, not −∞.
            assert_eq!(la.is_finite(), rows <= cols, "{rows} × {cols}: {la}");
        }
    }

    /// The plain row-by-row Cholesky that the blocked [`psd_log_det`] must equal bit for bit.
    fn row_by_row_log_det(mut a: Vec<f64>, n: usize) -> f64 {
        let mut log_det = 0f64;
        for j in 0..n {
            let (done, rest) = a.split_at_mut(j * n);
            let row = &mut rest[..n];
            for k in 0..j {
                let lk = &done[k * n..k * n + k + 1];
                row[k] = (row[k] - dot(&row[..k], &lk[..k])) / lk[k];
            }
            let diag = row[j];
            let pivot = diag - dot(&row[..j], &row[..j]);
            if pivot.is_nan() || pivot <= 1e-12 * diag.abs() || pivot.is_infinite() {
                return f64::NEG_INFINITY;
            }
            row[j] = pivot.sqrt();
            log_det += pivot.ln();
        }
        log_det
    }

    #[test]
    fn blocked_log_det_is_the_row_by_row_one_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(5);
        // Sizes below, at and across block boundaries; S Sᵀ of a random wide S.
        for n in [
            1,
            7,
            CHOLESKY_ROWS,
            CHOLESKY_ROWS + 1,
            3 * CHOLESKY_ROWS + 5,
            150,
        ] {
            let s: Vec<f64> = (0..n * (n + 3)).map(|_| rng.normal()).collect();
            let a = gram(&s, n, n + 3);
            let blocked = psd_log_det(a.clone(), n);
            assert!(blocked.is_finite(), "n {n}");
            assert_eq!(
                blocked.to_bits(),
                row_by_row_log_det(a, n).to_bits(),
                "n {n}"
            );
        }
        // Singular in the second block: both give −∞.
        let n = CHOLESKY_ROWS + 4;
        let mut s: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        let (first, rest) = s.split_at_mut((CHOLESKY_ROWS + 2) * n);
        rest[..n].copy_from_slice(&first[..n]);
        let a = gram(&s, n, n);
        assert_eq!(row_by_row_log_det(a.clone(), n), f64::NEG_INFINITY);
        assert_eq!(psd_log_det(a, n), f64::NEG_INFINITY);
    }

    #[test]
    fn corrcoef_matches_hand_values() {
        let m = corrcoef_rows(&[1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 1.0, 2.0, 4.0], 3, 3);
        assert!((m[(0, 1)] + 1.0).abs() < 1e-12);
        assert!((m[(0, 0)] - 1.0).abs() < 1e-12);
        // corr([1,2,3],[1,2,4]) = 0.9819805060619657 (NumPy)
        assert!((m[(0, 2)] - 0.981_980_506_061_965_7).abs() < 1e-12);
        let ev = symmetric_eigenvalues(DMatrix::from_row_slice(2, 2, &[2.0, 1.0, 1.0, 2.0]));
        let mut ev = ev;
        ev.sort_by(f64::total_cmp);
        assert!((ev[0] - 1.0).abs() < 1e-12 && (ev[1] - 3.0).abs() < 1e-12);
    }
}
