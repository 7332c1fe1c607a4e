//! Expressions over a set of architectures: the rank join.
//!
//! Every expression but one kind has a value per architecture ([`super::eval`]). The exception
//! is `rank_add(a, b)` ([`super::ops::BinaryOp::RankAdd`]): the sum of the ranks of `a` and of `b` across
//! the architectures scored together, as in a rank-sum ensemble of two proxies. Two signals of
//! unrelated scales then count equally, which no value-level join can do (`add(log(a),
//! log(b))` ranks like `a · b`, where one large factor dominates). A rank depends on the whole
//! set, so a rank join is only ever the root of an expression (the parser and the search put it
//! nowhere else), and whoever scores a set computes its two operands on every architecture like
//! any expression and then joins them: [`SetPlan`] does both for a list of expressions.
//!
//! Ranks average ties; a value that is not finite (an operand without a value on that
//! architecture) ties with the other such values below every finite one, as in the rank-sum
//! ensembles of [`crate::compare`], and the join has no value there (NaN).

use std::ops::Range;

use super::eval::{eval, InputSource};
use super::expr::Expr;
use crate::stats;

/// The operands of `expr` when it is a rank join (`rank_add(a, b)` at its root); `None` for an
/// expression with a value per architecture. A join with a disconnected operand is its other
/// operand (the same ranking, and what its canonical form is), which has a value per
/// architecture: `None` too.
pub fn rank_join(expr: &Expr) -> Option<[&Expr; 2]> {
    match expr {
        Expr::Binary(op, a, b)
            if op.is_set_level() && !a.is_disconnected() && !b.is_disconnected() =>
        {
            Some([a, b])
        }
        _ => None,
    }
}

/// True when `expr` holds a rank join anywhere (only the root may: see the module docs).
pub fn has_rank_join(expr: &Expr) -> bool {
    match expr {
        Expr::Input(_) => false,
        Expr::Unary(_, x) => has_rank_join(x),
        Expr::Binary(op, a, b) => op.is_set_level() || has_rank_join(a) || has_rank_join(b),
    }
}

/// The rank join of two operands' values over one set: per architecture, its rank by `a` plus
/// its rank by `b` (ties averaged; a non-finite value ranks below every finite one), and NaN
/// where either operand has no finite value (like any expression whose operand has none; the
/// scorers then rank it last and count it as non-finite).
///
/// # Panics
/// If the two slices differ in length.
pub fn rank_add(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = stats::rank_sum(&[&stats::sanitize(a).0, &stats::sanitize(b).0]);
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        if !(x.is_finite() && y.is_finite()) {
            *o = f64::NAN;
        }
    }
    out
}

/// What is computed on every architecture for `expr`: the two operands of a rank join, else
/// `expr` itself. [`join`] makes `expr`'s values from theirs.
pub fn operands(expr: &Expr) -> Vec<&Expr> {
    match rank_join(expr) {
        Some(pair) => pair.to_vec(),
        None => vec![expr],
    }
}

/// An expression's values over a set from those of its [`operands`], one column per operand in
/// their order: the rank join of two columns ([`rank_add`]), one column as it is.
///
/// # Panics
/// If there are not one or two columns, or two columns differ in length.
pub fn join(columns: &[Vec<f64>]) -> Vec<f64> {
    match columns {
        [v] => v.clone(),
        [a, b] => rank_add(a, b),
        _ => panic!(
            "an expression's values join one or two operand columns, got {}",
            columns.len()
        ),
    }
}

/// The values of `expr` on every source of a set, NaN where it has none: per architecture for
/// an ordinary expression, joined across the set for a rank join.
pub fn set_values(expr: &Expr, sources: &[&dyn InputSource]) -> Vec<f64> {
    let columns: Vec<Vec<f64>> = operands(expr)
        .into_iter()
        .map(|e| {
            sources
                .iter()
                .map(|s| eval(e, *s).unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    join(&columns)
}

/// How a list of expressions is scored over a set: the per-architecture expressions to compute
/// on every architecture ([`SetPlan::parts`]: the [`operands`] of each expression of the list,
/// in order), then how their values make the list's values ([`SetPlan::join_rows`],
/// [`SetPlan::join_columns`]).
#[derive(Debug, Clone)]
pub struct SetPlan {
    parts: Vec<Expr>,
    /// The parts of each expression of the list.
    spans: Vec<Range<usize>>,
}

impl SetPlan {
    /// The plan of `exprs`.
    pub fn new(exprs: &[Expr]) -> Self {
        let mut parts = Vec::new();
        let spans = exprs
            .iter()
            .map(|e| {
                let start = parts.len();
                parts.extend(operands(e).into_iter().cloned());
                start..parts.len()
            })
            .collect();
        Self { parts, spans }
    }

    /// The expressions to compute on every architecture.
    pub fn parts(&self) -> &[Expr] {
        &self.parts
    }

    /// The parts' values on one architecture (NaN where a part has no value).
    pub fn part_values(&self, source: &dyn InputSource) -> Vec<f64> {
        self.parts
            .iter()
            .map(|e| eval(e, source).unwrap_or(f64::NAN))
            .collect()
    }

    /// The list's values from the parts' values, both as columns: `parts[k][a]` is part `k` on
    /// architecture `a`; the result's `[e][a]` is expression `e` on architecture `a`.
    pub fn join_columns(&self, parts: &[Vec<f64>]) -> Vec<Vec<f64>> {
        self.spans
            .iter()
            .map(|span| join(&parts[span.clone()]))
            .collect()
    }

    /// The same as [`SetPlan::join_columns`] with rows, one per architecture: `rows[a]` starts
    /// with the parts' values (anything after them is left as it is, after the list's values).
    pub fn join_rows(&self, rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let k = self.parts.len();
        let columns = self.join_columns(&transpose(rows, k));
        rows.iter()
            .enumerate()
            .map(|(a, row)| {
                columns
                    .iter()
                    .map(|c| c[a])
                    .chain(row[k..].iter().copied())
                    .collect()
            })
            .collect()
    }
}

/// The first `k` entries of every row, as `k` columns.
fn transpose(rows: &[Vec<f64>], k: usize) -> Vec<Vec<f64>> {
    (0..k)
        .map(|j| rows.iter().map(|r| r[j]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Array;
    use crate::proxy::expr::Input;
    use std::collections::HashMap;

    fn source(head: f32, act: f32) -> HashMap<Input, Vec<Array>> {
        let mut m = HashMap::new();
        m.insert(
            Input::Head,
            vec![Array::new(vec![2], vec![head, head]).unwrap()],
        );
        m.insert(Input::Act, vec![Array::new(vec![1], vec![act]).unwrap()]);
        m
    }

    #[test]
    fn rank_add_sums_the_ranks_with_non_finite_values_last() {
        assert_eq!(
            rank_add(&[1.0, 2.0, 3.0], &[30.0, 10.0, 20.0]),
            vec![4.0, 3.0, 5.0]
        );
        // Scale does not matter: a huge spread in one operand does not dominate.
        assert_eq!(
            rank_add(&[1.0, 2.0, 1e9], &[3.0, 2.0, 1.0]),
            vec![4.0, 4.0, 4.0]
        );
        // A missing value ranks below every finite one (two missing values tie), and the
        // join has no value where an operand has none.
        let j = rank_add(&[f64::NAN, 1.0, f64::INFINITY, 2.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!(j[0].is_nan() && j[2].is_nan(), "{j:?}");
        assert_eq!(&j[1..2], &[5.0]);
        assert_eq!(j[3], 8.0);
    }

    #[test]
    fn a_plan_joins_rank_joins_and_passes_other_expressions() {
        let exprs: Vec<Expr> = [
            "rank_add(mean(head), neg(mean(act)))",
            "mean(act)",
            "mean(softmax)",
        ]
        .iter()
        .map(|t| Expr::parse(t).unwrap())
        .collect();
        let plan = SetPlan::new(&exprs);
        assert_eq!(plan.parts().len(), 4);
        let sources = [source(1.0, 5.0), source(2.0, 7.0), source(3.0, 6.0)];
        let refs: Vec<&dyn InputSource> = sources.iter().map(|s| s as &dyn InputSource).collect();
        let rows: Vec<Vec<f64>> = refs
            .iter()
            .map(|s| {
                let mut r = plan.part_values(*s);
                r.push(42.0); // a column after the parts is kept
                r
            })
            .collect();
        let joined = plan.join_rows(&rows);
        // head ranks 1, 2, 3; −act ranks 3, 1, 2.
        assert_eq!(joined[0][0], 4.0);
        assert_eq!(joined[1][0], 3.0);
        assert_eq!(joined[2][0], 5.0);
        assert_eq!(joined[1][1], 7.0);
        assert!(joined[0][2].is_nan(), "softmax is missing");
        let missing = SetPlan::new(&[Expr::parse("rank_add(mean(head), mean(softmax))").unwrap()]);
        let rows: Vec<Vec<f64>> = refs.iter().map(|s| missing.part_values(*s)).collect();
        assert!(missing.join_rows(&rows).iter().all(|r| r[0].is_nan()));
        assert!(joined.iter().all(|r| r.len() == 4 && r[3] == 42.0));
        assert_eq!(
            set_values(&exprs[0], &refs),
            joined.iter().map(|r| r[0]).collect::<Vec<_>>()
        );
        // On one architecture a rank join has no value, and says why.
        let err = eval(&exprs[0], &sources[0]).unwrap_err().to_string();
        assert!(err.contains("rank_add") && err.contains("set"), "{err}");
        assert_eq!(SetPlan::new(&exprs[1..]).parts(), &exprs[1..]);
        // A disconnected operand leaves the other one, valued per architecture.
        let half = Expr::parse("rank_add(mean(disconnect(act)), mean(head))").unwrap();
        assert!(rank_join(&half).is_none());
        assert_eq!(set_values(&half, &refs), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_rank_join_is_only_a_root() {
        assert!(Expr::parse("rank_add(mean(head), mean(act))").is_ok());
        let err = Expr::parse("log(rank_add(mean(head), mean(act)))")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outermost"), "{err}");
        assert!(Expr::parse("rank_add(rank_add(mean(head), mean(act)), mean(act))").is_err());
        let e = Expr::parse("rank_add(mean(act), mean(head))").unwrap();
        assert!(has_rank_join(&e));
        // Canonical form orders the operands (the join is commutative) and keeps neg inside.
        let c = crate::proxy::canonical::canonical(&e);
        assert_eq!(c.to_string(), "rank_add(mean(act), mean(head))");
        let n = Expr::parse("rank_add(neg(mean(act)), neg(mean(head)))").unwrap();
        assert_eq!(
            crate::proxy::canonical::canonical(&n).to_string(),
            "rank_add(neg(mean(act)), neg(mean(head)))"
        );
    }
}
