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
    if rows == 0 || cols == 0 {
        return out;
    }
    // SAFETY: the pointers cover `rows × cols` (lhs), its transpose view (rhs) and
    // `rows × rows` (dst) with the strides given; no aliasing between dst and the inputs.
    unsafe {
        gemm::gemm(
            rows,
            rows,
            cols,
            out.as_mut_ptr(),
            1,
            rows as isize,
            false,
            a.as_ptr(),
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
    out
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
/// `slogdet` reports as `ln|det|` for a zero determinant.
pub fn psd_log_det(mut a: Vec<f64>, n: usize) -> f64 {
    assert_eq!(a.len(), n * n, "psd_log_det: data does not match {n} × {n}");
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

/// Lanes of [`dot`]'s partial sums.
const DOT_LANES: usize = 8;

/// `Σ x_i y_i` over the common length, in [`DOT_LANES`] partial sums indexed by position and
/// combined in a fixed order (the compiler vectorises it; a plain running sum it cannot
/// reorder). Deterministic: the same inputs always give the same bits.
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let whole = n / DOT_LANES * DOT_LANES;
    let mut acc = [0f64; DOT_LANES];
    for (a, b) in x[..whole]
        .chunks_exact(DOT_LANES)
        .zip(y[..whole].chunks_exact(DOT_LANES))
    {
        for i in 0..DOT_LANES {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f64 = x[whole..n]
        .iter()
        .zip(&y[whole..n])
        .map(|(p, q)| p * q)
        .sum();
    let halves = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (halves[0] + halves[2]) + (halves[1] + halves[3]) + tail
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
