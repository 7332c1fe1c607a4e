//! Plain n-dimensional f32 arrays: the currency between the model engine and everything else.
//!
//! Probes, proxies, the search and the tests only ever see [`Array`], never an engine tensor,
//! so the engine behind a model family can be replaced without touching them.

use std::fmt;
use std::sync::Arc;

/// A dense, row-major n-dimensional array of `f32` values with its shape.
///
/// A 0-dimensional array (empty shape) holds exactly one value: a scalar. The values are
/// immutable and shared: cloning an array shares them (a probe's `weight` and `grad` lists
/// are the same values as its `linears`, not copies).
#[derive(Clone, PartialEq)]
pub struct Array {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl Array {
    /// Wraps `data` with `shape`; fails when the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(format!(
                "shape {:?} needs {} values, got {}",
                shape,
                n,
                data.len()
            ));
        }
        Ok(Self {
            shape,
            data: Arc::new(data),
        })
    }

    /// A 0-dimensional array holding `value`.
    pub fn scalar(value: f32) -> Self {
        Self {
            shape: Vec::new(),
            data: Arc::new(vec![value]),
        }
    }

    /// An array of the given shape filled with `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: Arc::new(vec![value; n]),
        }
    }

    /// The dimensions, outermost first (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions (0 for a scalar).
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the array holds no element (a zero-sized dimension).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// True for a 0-dimensional array.
    pub fn is_scalar(&self) -> bool {
        self.shape.is_empty()
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// A new array of the same shape with `f` applied to every element.
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            shape: self.shape.clone(),
            data: Arc::new(self.data.iter().map(|&x| f(x)).collect()),
        }
    }

    /// Sum of all elements, accumulated in f64.
    pub fn sum_f64(&self) -> f64 {
        self.data.iter().map(|&x| x as f64).sum()
    }

    /// Arithmetic mean of all elements, accumulated in f64 (NaN when empty).
    pub fn mean_f64(&self) -> f64 {
        if self.data.is_empty() {
            return f64::NAN;
        }
        self.sum_f64() / self.data.len() as f64
    }

    /// Views a 2-D array as (rows, cols); `None` for other ranks.
    pub fn dims2(&self) -> Option<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Some((*r, *c)),
            _ => None,
        }
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<f32> = self.data.iter().take(6).copied().collect();
        write!(f, "Array{:?}{:?}", self.shape, head)?;
        if self.data.len() > 6 {
            write!(f, "…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_data() {
        assert!(Array::new(vec![2, 3], vec![0.0; 6]).is_ok());
        let err = Array::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(err.contains("needs 6"), "{err}");
    }

    #[test]
    fn scalar_is_zero_dimensional() {
        let s = Array::scalar(2.5);
        assert!(s.is_scalar());
        assert_eq!(s.len(), 1);
        assert_eq!(s.mean_f64(), 2.5);
    }
}
