//! Small dense linear algebra in f64 for proxies: Gram matrices, symmetric eigenvalues,
//! nuclear norms and correlation matrices.

use nalgebra::DMatrix;

/// `A Aᵀ` of a row-major `rows × cols` f32 matrix, accumulated in f64.
pub fn gram_rows(data: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
    let a: Vec<f64> = data.iter().map(|&x| x as f64).collect();
    let mut g = DMatrix::<f64>::zeros(rows, rows);
    for i in 0..rows {
        let ri = &a[i * cols..(i + 1) * cols];
        for j in 0..=i {
            let rj = &a[j * cols..(j + 1) * cols];
            let s: f64 = ri.iter().zip(rj).map(|(x, y)| x * y).sum();
            g[(i, j)] = s;
            g[(j, i)] = s;
        }
    }
    g
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
