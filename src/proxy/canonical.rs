//! The canonical form of expressions: one representative per class of expressions that
//! provably have the same value, so the search can de-duplicate them ([`key`]) and the memo
//! can share their values.

use super::expr::Expr;
use super::ops::{BinaryOp, UnaryOp};

/// Returns an expression with exactly the same value as `e` (same result or error class for
/// every input, NaN included) in a normal form, so that equivalent expressions found by the
/// search can be de-duplicated ([`key`]). Idempotent: `canonical(&canonical(e)) == canonical(e)`.
///
/// Rules, applied bottom-up until none fires (`x`, `y` any subtrees, `s` a subtree that
/// [`Expr::is_scalar`], i.e. whose items are 0-d):
///
/// * Disconnect: `u(d) → d` for a disconnected `d` (it stays valueless); `bin(d, y) → y` and
///   `bin(x, d) → x` (the dropped branch is never evaluated); `bin(d, d')` is kept (invalid).
/// * `no_op(x) → x`.
/// * `neg(neg(x)) → x` (IEEE negation is exact).
/// * Sign-blind ops ignore `neg` and `abs` below them: for `u` in {`abs`, `pow2`, `abslog`,
///   `frobenius_norm`, `l1_norm`}, `u(neg(x)) → u(x)` and `u(abs(x)) → u(x)`; and
///   `std(neg(x)) → std(x)` (the f64 sums are negated exactly).
/// * `abs(u(x)) → u(x)` and `relu(u(x)) → u(x)` when `u` is non-negative
///   ([`UnaryOp::is_nonnegative`]: abs, pow2, exp, relu, sqrt, sigmoid, softmax, min_max,
///   frobenius_norm, l1_norm, std); this covers `abs(abs)`, `relu(relu)`, `abs(pow2)`, ...
/// * `sqrt(relu(x)) → sqrt(x)` (`sqrt` already maps `≤ 0` to 0).
/// * `total(total(x)) → total(x)` (a one-item list summed again is itself).
/// * Scalars: `mean(s) → s`, `sum(s) → s` and `normalized_sum(s) → s` (one element: the f64
///   mean and sum are exact and `s/(1 + 1e-9)` rounds back to `s` in f32);
///   `frobenius_norm(s) → abs(s)` and
///   `l1_norm(s) → abs(s)` (`sqrt(s²)` is exact in f64). So `mean(frobenius_norm(x))` becomes
///   `frobenius_norm(x)`.
/// * `sub(x, neg(y)) → add(x, y)`, `add(x, neg(y)) → sub(x, y)`, `add(neg(y), x) → sub(x, y)`,
///   `mul(neg(x), neg(y)) → mul(x, y)`, `matmul(neg(x), neg(y)) → matmul(x, y)`.
/// * `add` and `mul` are commutative in IEEE arithmetic (and pairing/broadcasting is symmetric):
///   their operands are ordered by their text.
///
/// Deliberately *not* folded because they are not exact under the op semantics: `log(exp(x))`
/// (the `≤ 0` rule and the 1e-9), `sqrt(pow2(x))` (overflow), `mean` at the root (it would round
/// each item's mean to f32), `softmax`/`logsoftmax`/`normalize`/`min_max`/`std` of a scalar
/// (constant only for finite values and there is no constant node).
pub fn canonical(e: &Expr) -> Expr {
    match e {
        Expr::Input(i) => Expr::Input(*i),
        Expr::Unary(op, x) => simplify_unary(*op, canonical(x)),
        Expr::Binary(op, a, b) => simplify_binary(*op, canonical(a), canonical(b)),
    }
}

/// The canonical text of `e` (`canonical(e).to_string()`): equal keys mean equal values.
pub fn key(e: &Expr) -> String {
    canonical(e).to_string()
}

/// `op(x)` for a canonical `x`, with the rules of [`canonical`] applied at the top.
fn simplify_unary(op: UnaryOp, x: Expr) -> Expr {
    use UnaryOp::*;
    if x.is_disconnected() {
        return x;
    }
    if op == NoOp {
        return x;
    }
    if let Expr::Unary(inner, y) = &x {
        let inner = *inner;
        match (op, inner) {
            (Neg, Neg) => return (**y).clone(),
            (Abs | Pow2 | AbsLog | FrobeniusNorm | L1Norm, Neg | Abs) | (Std, Neg) => {
                return simplify_unary(op, (**y).clone());
            }
            (Abs | Relu, _) if inner.is_nonnegative() => return x,
            (Sqrt, Relu) => return simplify_unary(Sqrt, (**y).clone()),
            _ => {}
        }
    }
    if op == Total {
        if let Expr::Unary(Total, _) = &x {
            // A one-item list summed again is itself.
            return x;
        }
    }
    if x.is_scalar() {
        match op {
            Mean | NormalizedSum | Sum => return x,
            FrobeniusNorm | L1Norm => return simplify_unary(Abs, x),
            _ => {}
        }
    }
    Expr::unary(op, x)
}

/// If `e` is `neg(y)`, returns `y`.
fn strip_neg(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Unary(UnaryOp::Neg, y) => Some(y),
        _ => None,
    }
}

/// `op(a, b)` for canonical `a`, `b`, with the rules of [`canonical`] applied at the top.
fn simplify_binary(op: BinaryOp, a: Expr, b: Expr) -> Expr {
    match (a.is_disconnected(), b.is_disconnected()) {
        (true, true) => return Expr::binary(op, a, b),
        (true, false) => return b,
        (false, true) => return a,
        (false, false) => {}
    }
    match op {
        BinaryOp::Sub => {
            if let Some(y) = strip_neg(&b) {
                return simplify_binary(BinaryOp::Add, a, y.clone());
            }
        }
        BinaryOp::Add => {
            if let Some(y) = strip_neg(&b) {
                return simplify_binary(BinaryOp::Sub, a, y.clone());
            }
            if let Some(y) = strip_neg(&a) {
                return simplify_binary(BinaryOp::Sub, b, y.clone());
            }
        }
        BinaryOp::Mul | BinaryOp::Matmul => {
            if let (Some(x), Some(y)) = (strip_neg(&a), strip_neg(&b)) {
                return simplify_binary(op, x.clone(), y.clone());
            }
        } // Ranks are not signs: `rank_add(neg(a), b)` is not `rank_add(a, b)` negated.
        BinaryOp::RankAdd => {}
    }
    if op.is_commutative() && a.to_string() > b.to_string() {
        return Expr::binary(op, b, a);
    }
    Expr::binary(op, a, b)
}
