//! The LPZero operation table: the unary and binary operations a proxy expression is built from.
//!
//! Every operation is a pure function of [`Array`] values: it never mutates its argument (the
//! reference mutates some arguments in place; see spec §4.1/§4.2, this implementation always
//! works on copies). NaN and ±inf are ordinary values here: they flow through the operations and
//! never cause a panic; judging them is the job of the search's pruning rules.
//!
//! * [`UnaryOp`] lists the 21 unary operations of the reference HEAD table (spec §4.2) in HEAD
//!   index order, so [`UnaryOp::from_index`] / [`UnaryOp::index`] translate the published integer
//!   genotypes, followed by lpzero's own extensions (`sum`, `size`, `total`; indices 21–23, never
//!   produced by a reference genotype). Expressions and files store operations by *name*
//!   ([`UnaryOp::name`]) because the reference index table changed over the project history.
//! * The extensions exist because the reference space can only *average*: every reduction is
//!   a mean and the final value is a mean over layers, so it cannot see how deep or how wide a
//!   network is, which is what trained quality depends on most. `sum` and `size` are extensive
//!   reductions of one array; `total` sums over the items of a list (layers, modules).
//! * `disconnect` has no value: evaluating it gives `None` ([`super::chain::apply`]), and a
//!   binary operation with one disconnected operand returns the other operand unchanged (both
//!   disconnected ⇒ the expression is invalid). The expression evaluator implements that
//!   rule.
//! * [`BinaryOp`] and [`apply_binary`] are the four binary operations (spec §4.3).
//! * [`UNARY_SAMPLING_WEIGHTS`] and [`BINARY_SAMPLING_WEIGHTS`] are the reference sampling
//!   weights (spec §4.5), indexed like [`UnaryOp::ALL`] and [`BinaryOp::ALL`].
//!
//! This module names and describes the operations and evaluates the binary ones; evaluating
//! unary operations is [`super::chain`]'s job (it streams chains of them), so `chain` depends
//! on `ops` and never the other way. Numerics: element-wise operations run in `f32` like the
//! reference tensors; reductions and the statistics inside `normalize`, `min_max`, `softmax`
//! and `logsoftmax` accumulate in `f64` and round once to `f32` at the end.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::array::Array;

/// A name that is not in an operation or input table.
///
/// Returned by the `FromStr` implementations of [`UnaryOp`], [`BinaryOp`] and the expression
/// inputs, so callers can report which kind of name was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{}`", crate::report::clip(.name))]
pub struct UnknownName {
    /// What was being looked up: "unary op", "binary op" or "input".
    pub kind: &'static str,
    /// The text that matched nothing.
    pub name: String,
}

/// A unary operation of the LPZero search space (reference HEAD table, spec §4.2).
///
/// The declaration order is the HEAD index order: `Log` is index 0, `Disconnect` index 20.
/// Element-wise operations keep the shape of their argument; the reductions
/// (`frobenius_norm`, `normalized_sum`, `l1_norm`, `mean`, `std`) return a 0-d scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    /// `log` (idx 0): entries `≤ 0` become 1, then `ln(x + 1e-9)`.
    Log,
    /// `abslog` (idx 1): entries `== 0` become 1, then `ln|x|`.
    AbsLog,
    /// `abs` (idx 2): `|x|`.
    Abs,
    /// `pow2` (idx 3): `x²` (overflows to +inf).
    Pow2,
    /// `exp` (idx 4): `eˣ` (overflows to +inf).
    Exp,
    /// `normalize` (idx 5): `(A − mean)/std` with the unbiased std; NaN results become 0
    /// (so a scalar or a constant array gives 0).
    Normalize,
    /// `relu` (idx 6): `max(x, 0)` (NaN stays NaN).
    Relu,
    /// `invert` (idx 7): `1/(x + 1e-9)` (no absolute value: values near −1e-9 explode).
    Invert,
    /// `frobenius_norm` (idx 8): `sqrt(Σ x²)` as a 0-d scalar.
    FrobeniusNorm,
    /// `normalized_sum` (idx 9): `Σ x / (numel + 1e-9)` as a 0-d scalar.
    NormalizedSum,
    /// `l1_norm` (idx 10): `Σ |x| / (numel + 1e-9)` as a 0-d scalar (a mean absolute value).
    L1Norm,
    /// `softmax` (idx 11): softmax along axis 0 (the first axis); 1 on a finite 0-d scalar.
    Softmax,
    /// `sigmoid` (idx 12): the logistic function.
    Sigmoid,
    /// `logsoftmax` (idx 13): log-softmax along axis 0; 0 on a finite 0-d scalar.
    LogSoftmax,
    /// `sqrt` (idx 14): `sqrt(max(x, 0))` (NaN stays NaN).
    Sqrt,
    /// `neg` (idx 15, reference "revert"): `−x`.
    Neg,
    /// `min_max` (idx 16): `(A − min)/(max − min + 1e-9)`; 0 on a finite 0-d scalar.
    MinMax,
    /// `mean` (idx 17): the arithmetic mean as a 0-d scalar.
    Mean,
    /// `std` (idx 18): the unbiased (n − 1) standard deviation as a 0-d scalar; NaN for fewer
    /// than two elements (in particular for a 0-d scalar).
    Std,
    /// `no_op` (idx 19): identity.
    NoOp,
    /// `disconnect` (idx 20): "no value". A binary operation with one disconnected operand
    /// returns the other operand; [`super::chain::apply`] returns `None`.
    Disconnect,
    /// `sum` (idx 21, lpzero extension): `Σ x` as a 0-d scalar (extensive: it grows with the
    /// size of the array, unlike `mean`).
    Sum,
    /// `size` (idx 22, lpzero extension): the number of elements as a 0-d scalar (of a weight:
    /// its parameter count).
    Size,
    /// `total` (idx 23, lpzero extension): the one **list-level** op. It turns a list of items
    /// (one per layer or module) into a one-item list holding `Σ_items mean(item)`, so that a
    /// proxy can grow with depth; every other op maps over items and the final value averages
    /// over them. On a single array (a one-item list) it is the array's mean.
    Total,
}

impl UnaryOp {
    /// All unary operations in reference HEAD index order (`ALL[i].index() == i`).
    pub const ALL: [UnaryOp; 24] = [
        UnaryOp::Log,
        UnaryOp::AbsLog,
        UnaryOp::Abs,
        UnaryOp::Pow2,
        UnaryOp::Exp,
        UnaryOp::Normalize,
        UnaryOp::Relu,
        UnaryOp::Invert,
        UnaryOp::FrobeniusNorm,
        UnaryOp::NormalizedSum,
        UnaryOp::L1Norm,
        UnaryOp::Softmax,
        UnaryOp::Sigmoid,
        UnaryOp::LogSoftmax,
        UnaryOp::Sqrt,
        UnaryOp::Neg,
        UnaryOp::MinMax,
        UnaryOp::Mean,
        UnaryOp::Std,
        UnaryOp::NoOp,
        UnaryOp::Disconnect,
        UnaryOp::Sum,
        UnaryOp::Size,
        UnaryOp::Total,
    ];

    /// The operations of the reference HEAD table (indices 0–20), the space of the reference
    /// search and of published genotypes.
    pub const REFERENCE: [UnaryOp; 21] = {
        let mut ops = [UnaryOp::Log; 21];
        let mut i = 0;
        while i < 21 {
            ops[i] = Self::ALL[i];
            i += 1;
        }
        ops
    };

    /// The reference HEAD index (the integer used in published genotypes).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The operation with HEAD index `i`, or `None` when `i > 20` (the extensions have no
    /// reference index: a published genotype never names them).
    pub fn from_index(i: usize) -> Option<Self> {
        Self::REFERENCE.get(i).copied()
    }

    /// The canonical snake_case name used in expressions, files and serde.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Log => "log",
            UnaryOp::AbsLog => "abslog",
            UnaryOp::Abs => "abs",
            UnaryOp::Pow2 => "pow2",
            UnaryOp::Exp => "exp",
            UnaryOp::Normalize => "normalize",
            UnaryOp::Relu => "relu",
            UnaryOp::Invert => "invert",
            UnaryOp::FrobeniusNorm => "frobenius_norm",
            UnaryOp::NormalizedSum => "normalized_sum",
            UnaryOp::L1Norm => "l1_norm",
            UnaryOp::Softmax => "softmax",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::LogSoftmax => "logsoftmax",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Neg => "neg",
            UnaryOp::MinMax => "min_max",
            UnaryOp::Mean => "mean",
            UnaryOp::Std => "std",
            UnaryOp::NoOp => "no_op",
            UnaryOp::Disconnect => "disconnect",
            UnaryOp::Sum => "sum",
            UnaryOp::Size => "size",
            UnaryOp::Total => "total",
        }
    }

    /// The name of the operation in the reference Python code (`UNARY_KEYS`), accepted as an
    /// alias by `FromStr` so reference logs can be pasted in.
    pub fn reference_name(self) -> &'static str {
        match self {
            UnaryOp::Log => "element_wise_log",
            UnaryOp::AbsLog => "element_wise_abslog",
            UnaryOp::Abs => "element_wise_abs",
            UnaryOp::Pow2 => "element_wise_pow",
            UnaryOp::Exp => "element_wise_exp",
            UnaryOp::Normalize => "normalize",
            UnaryOp::Relu => "element_wise_relu",
            UnaryOp::Invert => "element_wise_invert",
            UnaryOp::FrobeniusNorm => "frobenius_norm",
            UnaryOp::NormalizedSum => "element_wise_normalized_sum",
            UnaryOp::L1Norm => "l1_norm",
            UnaryOp::Softmax => "softmax",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::LogSoftmax => "logsoftmax",
            UnaryOp::Sqrt => "element_wise_sqrt",
            UnaryOp::Neg => "element_wise_revert",
            UnaryOp::MinMax => "min_max_normalize",
            UnaryOp::Mean => "to_mean_scalar",
            UnaryOp::Std => "to_std_scalar",
            UnaryOp::NoOp => "no_op",
            UnaryOp::Disconnect => "disconnect",
            // Not in the reference: the alias is the name itself.
            UnaryOp::Sum => "sum",
            UnaryOp::Size => "size",
            UnaryOp::Total => "total",
        }
    }

    /// The reference sampling weight of this operation (spec §4.5); 0 for the extensions,
    /// which the reference space does not contain.
    pub fn sampling_weight(self) -> f64 {
        UNARY_SAMPLING_WEIGHTS
            .get(self.index())
            .copied()
            .unwrap_or(0.0)
    }

    /// True for `total`, the op that works on a whole list instead of on each item.
    pub fn is_list_level(self) -> bool {
        self == UnaryOp::Total
    }

    /// True for the operations that reduce any array to a 0-d scalar
    /// (`frobenius_norm`, `normalized_sum`, `l1_norm`, `mean`, `std`, `sum`, `size`, and
    /// `total`, which on one array is its mean).
    pub fn is_reduction(self) -> bool {
        matches!(
            self,
            UnaryOp::FrobeniusNorm
                | UnaryOp::NormalizedSum
                | UnaryOp::L1Norm
                | UnaryOp::Mean
                | UnaryOp::Std
                | UnaryOp::Sum
                | UnaryOp::Size
                | UnaryOp::Total
        )
    }

    /// True when every entry of the result is `≥ 0` (or NaN) whatever the argument.
    ///
    /// Used by the canonical form: `abs` and `relu` are the identity on such results.
    pub fn is_nonnegative(self) -> bool {
        matches!(
            self,
            UnaryOp::Abs
                | UnaryOp::Pow2
                | UnaryOp::Exp
                | UnaryOp::Relu
                | UnaryOp::FrobeniusNorm
                | UnaryOp::L1Norm
                | UnaryOp::Softmax
                | UnaryOp::Sigmoid
                | UnaryOp::Sqrt
                | UnaryOp::MinMax
                | UnaryOp::Std
                | UnaryOp::Size
        )
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for UnaryOp {
    type Err = UnknownName;

    /// Accepts the canonical name or the reference name, ASCII case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|op| {
                s.eq_ignore_ascii_case(op.name()) || s.eq_ignore_ascii_case(op.reference_name())
            })
            .ok_or_else(|| UnknownName {
                kind: "unary op",
                name: s.to_string(),
            })
    }
}

impl Serialize for UnaryOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for UnaryOp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reference sampling weights of the unary operations, indexed like [`UnaryOp::REFERENCE`]:
/// 0.1 for each of the first 20 and 0.2 for `disconnect` (spec §4.5). Not normalised.
pub const UNARY_SAMPLING_WEIGHTS: [f64; 21] = [
    0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
    0.1, 0.2,
];

/// A binary operation of the LPZero search space (spec §4.3), in reference index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    /// `add` (idx 0, reference `element_wise_sum`): `a + b`.
    Add,
    /// `sub` (idx 1, reference `element_wise_difference`): `a − b`.
    Sub,
    /// `mul` (idx 2, reference `element_wise_product`): `a · b` element-wise.
    Mul,
    /// `matmul` (idx 3, reference `matrix_multiplication`): the matrix product of 2-D arrays;
    /// a one-element operand multiplies like a scalar.
    Matmul,
    /// `rank_add` (lpzero's, not in the reference space; index 4): a *set-level* join, the sum
    /// of the two operands' ranks across the architectures scored together (the rank sum of a
    /// pair ensemble, inside one expression). It has no value on one architecture alone, so
    /// it may only be the root of an expression ([`crate::proxy::set::rank_join`]);
    /// [`apply_binary`] refuses it.
    RankAdd,
}

impl BinaryOp {
    /// All binary operations in reference index order (`ALL[i].index() == i`).
    pub const ALL: [BinaryOp; 4] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Matmul,
    ];

    /// The reference index (the integer used in published genotypes).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The operation with reference index `i`, or `None` when `i > 3`.
    pub fn from_index(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// The canonical name used in expressions, files and serde.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Matmul => "matmul",
            BinaryOp::RankAdd => "rank_add",
        }
    }

    /// The name in the reference Python code (`BINARY_KEYS`), accepted as an alias by `FromStr`.
    pub fn reference_name(self) -> &'static str {
        match self {
            BinaryOp::Add => "element_wise_sum",
            BinaryOp::Sub => "element_wise_difference",
            BinaryOp::Mul => "element_wise_product",
            BinaryOp::Matmul => "matrix_multiplication",
            BinaryOp::RankAdd => "rank_add",
        }
    }

    /// The reference sampling weight of this operation (spec §4.5; 0 for `rank_add`, which the
    /// reference space does not have).
    pub fn sampling_weight(self) -> f64 {
        BINARY_SAMPLING_WEIGHTS
            .get(self.index())
            .copied()
            .unwrap_or(0.0)
    }

    /// True when `op(a, b)` equals `op(b, a)` exactly (`add`, `mul` and `rank_add`).
    pub fn is_commutative(self) -> bool {
        matches!(self, BinaryOp::Add | BinaryOp::Mul | BinaryOp::RankAdd)
    }

    /// True for a join that ranks across a set of architectures (`rank_add`): it has no value
    /// on one architecture.
    pub fn is_set_level(self) -> bool {
        matches!(self, BinaryOp::RankAdd)
    }

    /// Every operation a text may name: [`Self::ALL`] and `rank_add`.
    pub const NAMED: [BinaryOp; 5] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Matmul,
        BinaryOp::RankAdd,
    ];
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BinaryOp {
    type Err = UnknownName;

    /// Accepts the canonical name or the reference name, ASCII case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::NAMED
            .iter()
            .copied()
            .find(|op| {
                s.eq_ignore_ascii_case(op.name()) || s.eq_ignore_ascii_case(op.reference_name())
            })
            .ok_or_else(|| UnknownName {
                kind: "binary op",
                name: s.to_string(),
            })
    }
}

impl Serialize for BinaryOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for BinaryOp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reference sampling weights of the binary operations, indexed like [`BinaryOp::ALL`]
/// (add 0.6, sub 0.3, mul 0.05, matmul 0.05; spec §4.5).
pub const BINARY_SAMPLING_WEIGHTS: [f64; 4] = [0.6, 0.3, 0.05, 0.05];

/// Why a binary operation could not combine its operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Element-wise operation on arrays whose shapes differ and neither has one element.
    #[error("`{op}` needs equal shapes or a one-element operand, got {left:?} and {right:?}")]
    Shapes {
        /// The operation that failed.
        op: BinaryOp,
        /// Shape of the left operand.
        left: Vec<usize>,
        /// Shape of the right operand.
        right: Vec<usize>,
    },
    /// Matrix product of operands that are not (m×k)·(k×n) and not one-element.
    #[error("`matmul` needs 2-D operands (m×k)·(k×n) or a one-element operand, got {left:?} and {right:?}")]
    Matmul {
        /// Shape of the left operand.
        left: Vec<usize>,
        /// Shape of the right operand.
        right: Vec<usize>,
    },
    /// A set-level join (`rank_add`) asked for on one architecture's items.
    #[error(
        "`{0}` ranks across a set of architectures: it has no value on one architecture (it is \
         computed over a scored set, as the root of an expression)"
    )]
    SetLevel(BinaryOp),
}

/// Applies a binary operation to two arrays and returns a new array.
///
/// * `add`, `sub`, `mul`: element-wise when the shapes are equal; when one operand has exactly
///   one element (0-d or any all-ones shape) it is broadcast over the other, and the result has
///   the other operand's shape (two one-element operands give the shape with more dimensions).
///   Computed in `f32`.
/// * `matmul`: the matrix product of a `m×k` and a `k×n` array, accumulated in `f64`; when that
///   does not apply and one operand has one element, a scalar product as above.
///
/// Anything else is an [`OpError`]; nothing panics.
pub fn apply_binary(op: BinaryOp, a: &Array, b: &Array) -> Result<Array, OpError> {
    match op {
        BinaryOp::Add => broadcast(op, a, b, |x, y| x + y),
        BinaryOp::Sub => broadcast(op, a, b, |x, y| x - y),
        BinaryOp::Mul => broadcast(op, a, b, |x, y| x * y),
        BinaryOp::Matmul => {
            if let (Some((m, k)), Some((k2, n))) = (a.dims2(), b.dims2()) {
                if k == k2 {
                    return Ok(matmul(&a.data(), &b.data(), m, k, n));
                }
            }
            if a.len() == 1 || b.len() == 1 {
                return broadcast(op, a, b, |x, y| x * y);
            }
            Err(OpError::Matmul {
                left: a.shape().to_vec(),
                right: b.shape().to_vec(),
            })
        }
        BinaryOp::RankAdd => Err(OpError::SetLevel(op)),
    }
}

/// Element-wise combination with one-element broadcasting (see [`apply_binary`]).
fn broadcast(
    op: BinaryOp,
    a: &Array,
    b: &Array,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Array, OpError> {
    if a.shape() == b.shape() {
        let data = a
            .data()
            .iter()
            .zip(b.data().iter())
            .map(|(&x, &y)| f(x, y))
            .collect();
        return Ok(Array::new(a.shape().to_vec(), data).expect("same shape"));
    }
    if a.len() == 1 && b.len() == 1 {
        let shape = if a.ndim() >= b.ndim() {
            a.shape()
        } else {
            b.shape()
        };
        let data = vec![f(a.data()[0], b.data()[0])];
        return Ok(Array::new(shape.to_vec(), data).expect("one element"));
    }
    if a.len() == 1 {
        let x = a.data()[0];
        return Ok(b.map(|y| f(x, y)));
    }
    if b.len() == 1 {
        let y = b.data()[0];
        return Ok(a.map(|x| f(x, y)));
    }
    Err(OpError::Shapes {
        op,
        left: a.shape().to_vec(),
        right: b.shape().to_vec(),
    })
}

/// Row-major `(m×k)·(k×n)` product accumulated in `f64`.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Array {
    let mut out = Vec::with_capacity(m * n);
    let mut acc = vec![0.0_f64; n];
    for i in 0..m {
        acc.iter_mut().for_each(|v| *v = 0.0);
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for (v, &y) in acc.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *v += x * y as f64;
            }
        }
        out.extend(acc.iter().map(|&v| v as f32));
    }
    Array::new(vec![m, n], out).expect("m×n values")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    #[test]
    fn index_tables_match_reference_order() {
        for (i, op) in UnaryOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
            let reference = (i < 21).then_some(*op);
            assert_eq!(UnaryOp::from_index(i), reference);
        }
        assert_eq!(UnaryOp::REFERENCE[..], UnaryOp::ALL[..21]);
        assert_eq!(UnaryOp::from_index(0), Some(UnaryOp::Log));
        assert_eq!(UnaryOp::from_index(3), Some(UnaryOp::Pow2));
        assert_eq!(UnaryOp::from_index(8), Some(UnaryOp::FrobeniusNorm));
        assert_eq!(UnaryOp::from_index(13), Some(UnaryOp::LogSoftmax));
        assert_eq!(UnaryOp::from_index(15), Some(UnaryOp::Neg));
        assert_eq!(UnaryOp::from_index(19), Some(UnaryOp::NoOp));
        assert_eq!(UnaryOp::from_index(20), Some(UnaryOp::Disconnect));
        assert_eq!(UnaryOp::from_index(21), None);
        for (i, op) in BinaryOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(BinaryOp::from_index(i), Some(*op));
        }
        assert_eq!(BinaryOp::from_index(4), None);
    }

    #[test]
    fn names_parse_and_serialize() {
        for op in UnaryOp::ALL {
            assert_eq!(op.name().parse::<UnaryOp>(), Ok(op));
            assert_eq!(op.reference_name().parse::<UnaryOp>(), Ok(op));
            assert_eq!(op.to_string(), op.name());
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{}\"", op.name()));
            assert_eq!(serde_json::from_str::<UnaryOp>(&json).unwrap(), op);
        }
        for op in BinaryOp::ALL {
            assert_eq!(op.name().parse::<BinaryOp>(), Ok(op));
            assert_eq!(op.reference_name().parse::<BinaryOp>(), Ok(op));
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<BinaryOp>(&json).unwrap(), op);
        }
        assert_eq!("MEAN".parse::<UnaryOp>(), Ok(UnaryOp::Mean));
        let err = "bogus".parse::<UnaryOp>().unwrap_err();
        assert_eq!(err.to_string(), "unknown unary op `bogus`");
        assert!("add".parse::<UnaryOp>().is_err());
        assert!("neg".parse::<BinaryOp>().is_err());
        assert!(serde_json::from_str::<UnaryOp>("\"nope\"").is_err());
    }

    #[test]
    fn sampling_weights() {
        assert_eq!(UNARY_SAMPLING_WEIGHTS.len(), UnaryOp::REFERENCE.len());
        assert_eq!(UnaryOp::Disconnect.sampling_weight(), 0.2);
        assert_eq!(UnaryOp::Total.sampling_weight(), 0.0);
        assert_eq!(UnaryOp::Log.sampling_weight(), 0.1);
        let total: f64 = UNARY_SAMPLING_WEIGHTS.iter().sum();
        assert!((total - 2.2).abs() < 1e-12);
        assert_eq!(BINARY_SAMPLING_WEIGHTS, [0.6, 0.3, 0.05, 0.05]);
        assert_eq!(BinaryOp::Sub.sampling_weight(), 0.3);
    }

    #[test]
    fn binary_element_wise_and_broadcast() {
        let a = arr(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = arr(&[2, 2], &[10.0, 20.0, 30.0, 40.0]);
        assert_eq!(
            apply_binary(BinaryOp::Add, &a, &b).unwrap().data()[..],
            [11.0, 22.0, 33.0, 44.0]
        );
        assert_eq!(
            apply_binary(BinaryOp::Sub, &a, &b).unwrap().data()[..],
            [-9.0, -18.0, -27.0, -36.0]
        );
        assert_eq!(
            apply_binary(BinaryOp::Mul, &a, &b).unwrap().data()[..],
            [10.0, 40.0, 90.0, 160.0]
        );
        let s = Array::scalar(2.0);
        let left = apply_binary(BinaryOp::Sub, &s, &a).unwrap();
        assert_eq!(left.shape(), &[2, 2]);
        assert_eq!(left.data()[..], [1.0, 0.0, -1.0, -2.0]);
        let right = apply_binary(BinaryOp::Sub, &a, &arr(&[1, 1], &[2.0])).unwrap();
        assert_eq!(right.data()[..], [-1.0, 0.0, 1.0, 2.0]);
        let ss = apply_binary(BinaryOp::Add, &Array::scalar(1.0), &Array::scalar(2.0)).unwrap();
        assert_eq!(ss, Array::scalar(3.0));
        let mixed =
            apply_binary(BinaryOp::Add, &Array::scalar(1.0), &arr(&[1, 1], &[2.0])).unwrap();
        assert_eq!(mixed.shape(), &[1, 1]);
        let err = apply_binary(BinaryOp::Add, &a, &arr(&[3], &[1.0, 2.0, 3.0])).unwrap_err();
        assert_eq!(
            err,
            OpError::Shapes {
                op: BinaryOp::Add,
                left: vec![2, 2],
                right: vec![3]
            }
        );
        assert!(err.to_string().contains("`add`"), "{err}");
        // NaN and overflow are values.
        let n = apply_binary(BinaryOp::Mul, &Array::scalar(f32::NAN), &a).unwrap();
        assert!(n.data().iter().all(|x| x.is_nan()));
        let o = apply_binary(BinaryOp::Mul, &Array::scalar(1e30), &Array::scalar(1e30)).unwrap();
        assert_eq!(o, Array::scalar(f32::INFINITY));
    }

    #[test]
    fn binary_matmul() {
        let a = arr(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = arr(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let c = apply_binary(BinaryOp::Matmul, &a, &b).unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        assert_eq!(c.data()[..], [58.0, 64.0, 139.0, 154.0]);
        let s = apply_binary(BinaryOp::Matmul, &Array::scalar(2.0), &a).unwrap();
        assert_eq!(s.data()[..], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        let s = apply_binary(BinaryOp::Matmul, &Array::scalar(2.0), &Array::scalar(3.0)).unwrap();
        assert_eq!(s, Array::scalar(6.0));
        assert!(matches!(
            apply_binary(BinaryOp::Matmul, &a, &a),
            Err(OpError::Matmul { .. })
        ));
        let v = arr(&[3], &[1.0, 2.0, 3.0]);
        assert!(apply_binary(BinaryOp::Matmul, &v, &v).is_err());
        let e = apply_binary(BinaryOp::Matmul, &arr(&[2, 0], &[]), &arr(&[0, 3], &[])).unwrap();
        assert_eq!(e.data()[..], [0.0; 6]);
    }
}
