//! Plain n-dimensional f32 arrays: the currency between the model engine and everything else.
//!
//! Probes, proxies, the search and the tests only ever see [`Array`], never an engine tensor,
//! so the engine behind a model family can be replaced without touching them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A dense, row-major n-dimensional array of `f32` values with its shape.
///
/// A 0-dimensional array (empty shape) holds exactly one value: a scalar. The values are
/// immutable and shared: cloning an array shares them (a probe's `weight` and `grad` lists
/// are the same values as its `linears`, not copies).
///
/// The values are stored either as `f32` or, in the compact form ([`Array::to_bf16`]), as
/// bfloat16: the top 16 bits of each `f32`, rounded to nearest even. Compact storage halves
/// the memory of arrays that are kept for a long time (a search's fitness probes) at a
/// relative error of at most 2⁻⁹ per element, with the range of `f32`. Every reader sees
/// `f32` values ([`Array::data`], [`Array::read`]); arithmetic stays in `f32`/`f64`.
#[derive(Clone)]
pub struct Array {
    shape: Vec<usize>,
    data: Values,
}

/// How an array's values are held.
#[derive(Clone)]
enum Values {
    /// Full precision.
    F32(Arc<Vec<f32>>),
    /// bfloat16 bit patterns (see [`to_bf16`]).
    Bf16(Arc<Vec<u16>>),
}

/// An array's values as stored ([`Array::stored`]): `f32` values or bfloat16 bit patterns.
#[derive(Clone, Copy, Debug)]
pub enum Stored<'a> {
    /// Full precision.
    F32(&'a [f32]),
    /// bfloat16 bit patterns (see [`to_bf16`]).
    Bf16(&'a [u16]),
}

/// Owned values in either stored form, to build an array with [`Array::from_stored`].
#[derive(Clone, Debug)]
pub enum StoredOwned {
    /// Full precision.
    F32(Vec<f32>),
    /// bfloat16 bit patterns (see [`to_bf16`]).
    Bf16(Vec<u16>),
}

/// The bfloat16 nearest to `x` (ties to even), as its bit pattern. Infinities stay infinite,
/// a NaN stays a NaN (quiet), and values beyond bfloat16's largest finite value become
/// infinite, as round-to-nearest prescribes.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The `f32` value of a bfloat16 bit pattern (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

impl PartialEq for Array {
    /// Same shape and the same `f32` values (whatever the storage).
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && *self.data() == *other.data()
    }
}

impl Array {
    /// Wraps `data` with `shape`; fails when the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, String> {
        Self::from_stored(shape, StoredOwned::F32(data))
    }

    /// A 0-dimensional array holding `value`.
    pub fn scalar(value: f32) -> Self {
        Self {
            shape: Vec::new(),
            data: Values::F32(Arc::new(vec![value])),
        }
    }

    /// An array of the given shape filled with `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: Values::F32(Arc::new(vec![value; n])),
        }
    }

    /// The same array stored compactly as bfloat16 (see the type's docs); an array that is
    /// already compact is shared, not copied.
    pub fn to_bf16(&self) -> Self {
        let data = match &self.data {
            Values::F32(v) => Values::Bf16(Arc::new(v.iter().map(|&x| to_bf16(x)).collect())),
            Values::Bf16(_) => self.data.clone(),
        };
        Self {
            shape: self.shape.clone(),
            data,
        }
    }

    /// An identity of the stored values: equal for arrays that share them (clones), different
    /// for arrays that do not (while both are alive). For keeping shared values shared when
    /// converting many arrays.
    pub fn values_id(&self) -> usize {
        match &self.data {
            Values::F32(v) => Arc::as_ptr(v) as usize,
            Values::Bf16(v) => Arc::as_ptr(v) as usize,
        }
    }

    /// The values exactly as stored (for writing them elsewhere and reading them back with
    /// [`Array::from_stored`] without a rounding step).
    pub fn stored(&self) -> Stored<'_> {
        match &self.data {
            Values::F32(v) => Stored::F32(v),
            Values::Bf16(v) => Stored::Bf16(v),
        }
    }

    /// An array of `shape` holding values in either stored form (what [`Array::stored`] gave);
    /// fails when the element count does not match the shape.
    pub fn from_stored(shape: Vec<usize>, values: StoredOwned) -> Result<Self, String> {
        let (n, data) = match values {
            StoredOwned::F32(v) => (v.len(), Values::F32(Arc::new(v))),
            StoredOwned::Bf16(v) => (v.len(), Values::Bf16(Arc::new(v))),
        };
        let want: usize = shape.iter().product();
        if n != want {
            return Err(format!("shape {shape:?} needs {want} values, got {n}"));
        }
        Ok(Self { shape, data })
    }

    /// True when the values are stored as bfloat16.
    pub fn is_compact(&self) -> bool {
        matches!(self.data, Values::Bf16(_))
    }

    /// Bytes the values take in memory (4 per element, 2 when compact).
    pub fn value_bytes(&self) -> usize {
        match &self.data {
            Values::F32(v) => v.len() * std::mem::size_of::<f32>(),
            Values::Bf16(v) => v.len() * std::mem::size_of::<u16>(),
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
        match &self.data {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    /// True when the array holds no element (a zero-sized dimension).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a 0-dimensional array.
    pub fn is_scalar(&self) -> bool {
        self.shape.is_empty()
    }

    /// The values, row-major: borrowed when stored as `f32`, decoded into a new vector when
    /// compact (use [`Array::read`] to decode a part at a time).
    pub fn data(&self) -> Cow<'_, [f32]> {
        match &self.data {
            Values::F32(v) => Cow::Borrowed(v.as_slice()),
            Values::Bf16(v) => Cow::Owned(v.iter().map(|&h| from_bf16(h)).collect()),
        }
    }

    /// Copies the values `start..start + out.len()` into `out` (decoding compact storage).
    ///
    /// # Panics
    /// When the range is past the end (a caller's indexing bug, like slicing).
    pub fn read(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match &self.data {
            Values::F32(v) => out.copy_from_slice(&v[start..end]),
            Values::Bf16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[start..end]) {
                    *o = from_bf16(h);
                }
            }
        }
    }

    /// The values in `chunk`-sized pieces (the last one shorter), each handed to `f` with its
    /// start: slices of the array when stored as `f32`, decoded one piece at a time when
    /// compact (so no copy of the whole array is made).
    pub fn for_each_chunk(&self, chunk: usize, mut f: impl FnMut(usize, &[f32])) {
        let chunk = chunk.max(1);
        match &self.data {
            Values::F32(v) => {
                for (k, c) in v.chunks(chunk).enumerate() {
                    f(k * chunk, c);
                }
            }
            Values::Bf16(v) => {
                let mut buf = vec![0.0_f32; chunk.min(v.len())];
                for (k, c) in v.chunks(chunk).enumerate() {
                    let b = &mut buf[..c.len()];
                    for (o, &h) in b.iter_mut().zip(c) {
                        *o = from_bf16(h);
                    }
                    f(k * chunk, b);
                }
            }
        }
    }

    /// A new array of the same shape with `f` applied to every element (stored as `f32`).
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            shape: self.shape.clone(),
            data: Values::F32(Arc::new(self.data().iter().map(|&x| f(x)).collect())),
        }
    }

    /// Sum of all elements, accumulated in f64.
    pub fn sum_f64(&self) -> f64 {
        match &self.data {
            Values::F32(v) => v.iter().map(|&x| x as f64).sum(),
            Values::Bf16(v) => v.iter().map(|&h| from_bf16(h) as f64).sum(),
        }
    }

    /// Arithmetic mean of all elements, accumulated in f64 (NaN when empty).
    pub fn mean_f64(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        self.sum_f64() / self.len() as f64
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
        // The first values only (a compact array is not decoded whole for this).
        let mut head = vec![0.0_f32; self.len().min(6)];
        self.read(0, &mut head);
        write!(f, "Array{:?}{:?}", self.shape, head)?;
        if self.is_compact() {
            write!(f, "(bf16)")?;
        }
        if self.len() > 6 {
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
    fn bf16_rounds_to_nearest_even_and_keeps_the_f32_range() {
        // Exact values survive.
        for x in [
            0.0_f32,
            -0.0,
            1.0,
            -2.5,
            0.15625,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(from_bf16(to_bf16(x)).to_bits(), x.to_bits(), "{x}");
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        // 1 + 2^-8 lies half way between 1 and 1 + 2^-7: ties go to the even pattern (1).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2^-8 lies half way between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        // Just above the tie rounds up.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        // Tiny and huge magnitudes keep their exponent (unlike IEEE half precision).
        for x in [1e-30_f32, -3e-12, 7e25, 0.1, -1.0 / 3.0] {
            let y = from_bf16(to_bf16(x));
            assert!(((y - x) / x).abs() <= 2f32.powi(-9), "{x} -> {y}");
        }
        // An f32 subnormal keeps its order of magnitude (fewer digits).
        let y = from_bf16(to_bf16(1e-40));
        assert!(y > 0.9e-40 && y < 1.1e-40, "{y}");
        // Past the largest finite bfloat16 the nearest value is infinity.
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn compact_arrays_read_as_their_rounded_values() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.37).sin() * 1e-3)
            .collect();
        let a = Array::new(vec![10, 100], values.clone()).unwrap();
        let c = a.to_bf16();
        assert!(c.is_compact() && !a.is_compact());
        assert_eq!((c.shape(), c.len()), (a.shape(), a.len()));
        assert_eq!((a.value_bytes(), c.value_bytes()), (4000, 2000));
        let rounded: Vec<f32> = values.iter().map(|&x| from_bf16(to_bf16(x))).collect();
        assert_eq!(*c.data(), *rounded);
        assert_ne!(c, a, "rounding changed some values");
        assert_eq!(c, Array::new(vec![10, 100], rounded.clone()).unwrap());
        let mut part = [0.0_f32; 7];
        c.read(993, &mut part);
        assert_eq!(part, rounded[993..]);
        let mut seen = Vec::new();
        c.for_each_chunk(300, |at, xs| {
            assert_eq!(xs, &rounded[at..at + xs.len()]);
            seen.push((at, xs.len()));
        });
        assert_eq!(seen, [(0, 300), (300, 300), (600, 300), (900, 100)]);
        let s: f64 = rounded.iter().map(|&x| x as f64).sum();
        assert_eq!(c.sum_f64(), s);
        assert_eq!(c.to_bf16(), c);
        assert_eq!(c.to_bf16().values_id(), c.values_id());
        assert_eq!(a.clone().values_id(), a.values_id());
        assert_ne!(c.values_id(), a.values_id());
        assert!(c
            .map(|x| x * 2.0)
            .data()
            .iter()
            .zip(&rounded)
            .all(|(y, x)| *y == 2.0 * x));
    }

    #[test]
    fn scalar_is_zero_dimensional() {
        let s = Array::scalar(2.5);
        assert!(s.is_scalar());
        assert_eq!(s.len(), 1);
        assert_eq!(s.mean_f64(), 2.5);
    }
}
