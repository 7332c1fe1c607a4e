//! Memoised evaluation of proxy expressions over many architectures.
//!
//! A proxy value is a pure function of (probe, expression), and the search evaluates thousands
//! of expressions that share sub-expressions (a child shares most of its tree with its parents;
//! the graph structure repeats node states inside one expression). [`Memo`] keeps the value of
//! every evaluated sub-expression per architecture, keyed by
//! `(architecture index, sub-expression text)`, for the life of one search.
//!
//! * Expressions are brought to their canonical form ([`canonical`]) first, so equivalent
//!   sub-expressions (`neg(neg(x))` and `x`, `add(a, b)` and `add(b, a)`) share one entry. The
//!   key of a node is the text of the canonical node, i.e. [`crate::proxy::expr::key`] of it.
//!   Caching is correct for any tree (a text determines its value), canonicalisation only
//!   raises the hit rate.
//! * A run of unary ops is computed in one streaming pass per item ([`crate::proxy::chain`]), so
//!   only the top of the run gets an entry; the bits are the same as op by op.
//! * When a source serves one list as both `head` and `act` (GPT-2), `head` is read as `act`,
//!   so the two spellings share entries.
//! * Errors ([`EvalError`]) are memoised like values: an expression that fails on an
//!   architecture fails again at the cost of one lookup.
//! * Memory: lists whose items are all 0-d scalars are always stored (they are tiny). Larger lists
//!   are stored only while the total size of stored large lists stays within a byte budget
//!   ([`Memo::with_budget`], default [`DEFAULT_BUDGET_BYTES`] = 1 GiB); past it they are
//!   recomputed when needed. Input lists are never copied into the memo: they are borrowed from
//!   the [`InputSource`].
//!
//! The memo is only a cache: [`Memo::value`] returns exactly what
//! [`crate::proxy::expr::eval`] returns (same number, same error), which the tests check.
//! The caller must use one consistent architecture indexing per memo (index `i` always means the
//! same probe).

use std::collections::HashMap;
use std::sync::Arc;

use super::expr::{
    apply_binary_list, apply_chain_list, canonical, reduce, total, unary_chain, EvalError, Expr,
    Input, InputSource,
};
use super::ops::UnaryOp;
use crate::array::Array;

/// Default byte budget for memoised non-scalar lists: 1 GiB.
pub const DEFAULT_BUDGET_BYTES: u64 = 1 << 30;

/// A memoised result: the list of item arrays (shared) or why there is none.
type Entry = Result<Arc<Vec<Array>>, EvalError>;

/// A value during evaluation: an input list borrowed from the source, or a computed list.
enum Val<'a> {
    Borrowed(&'a [Array]),
    Shared(Arc<Vec<Array>>),
}

impl Val<'_> {
    fn items(&self) -> &[Array] {
        match self {
            Val::Borrowed(s) => s,
            Val::Shared(v) => v,
        }
    }
}

/// Hit/miss and size counters of a [`Memo`] (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoStats {
    /// Lookups of a non-input sub-expression that found a stored entry.
    pub hits: u64,
    /// Lookups that found nothing, so the sub-expression was computed.
    pub misses: u64,
    /// Entries stored (values and errors).
    pub entries: u64,
    /// Bytes held by stored non-scalar lists (counted against the budget).
    pub large_bytes: u64,
    /// Non-scalar lists that were computed but not stored because of the budget.
    pub over_budget: u64,
}

/// When `src` serves one and the same list as `head` and `act` (GPT-2 probes do), `expr` with
/// every `head` read as `act`, so that both spellings share memo entries; `None` otherwise.
fn alias_head(expr: &Expr, src: &dyn InputSource) -> Option<Expr> {
    let (head, act) = (src.input(Input::Head)?, src.input(Input::Act)?);
    if !std::ptr::eq(head, act) || !expr.inputs().contains(&Input::Head) {
        return None;
    }
    fn swap(e: &Expr) -> Expr {
        match e {
            Expr::Input(Input::Head) => Expr::Input(Input::Act),
            Expr::Input(_) => e.clone(),
            Expr::Unary(op, x) => Expr::unary(*op, swap(x)),
            Expr::Binary(op, a, b) => Expr::binary(*op, swap(a), swap(b)),
        }
    }
    Some(swap(expr))
}

/// Cache of sub-expression values per architecture (see the module docs).
#[derive(Debug)]
pub struct Memo {
    map: HashMap<(usize, String), Entry>,
    budget_bytes: u64,
    stats: MemoStats,
}

impl Default for Memo {
    fn default() -> Self {
        Self::new()
    }
}

/// Approximate heap size of a list: 4 bytes per element plus the shape and array headers.
pub fn list_bytes(items: &[Array]) -> u64 {
    items
        .iter()
        .map(|a| {
            (a.len() * std::mem::size_of::<f32>()
                + a.ndim() * std::mem::size_of::<usize>()
                + std::mem::size_of::<Array>()) as u64
        })
        .sum()
}

impl Memo {
    /// An empty memo with the default budget ([`DEFAULT_BUDGET_BYTES`]).
    pub fn new() -> Self {
        Self::with_budget(DEFAULT_BUDGET_BYTES)
    }

    /// An empty memo that stores non-scalar lists only up to `budget_bytes` in total (0 keeps
    /// only scalar lists and errors).
    pub fn with_budget(budget_bytes: u64) -> Self {
        Self {
            map: HashMap::new(),
            budget_bytes,
            stats: MemoStats::default(),
        }
    }

    /// The byte budget for non-scalar lists.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Counters so far.
    pub fn stats(&self) -> MemoStats {
        self.stats
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every entry and resets the counters (the budget stays).
    pub fn clear(&mut self) {
        self.map.clear();
        self.stats = MemoStats::default();
    }

    /// The value of `expr` on architecture `arch` whose inputs are `src`: the same result as
    /// [`crate::proxy::expr::eval`], computed through the memo after canonicalising `expr`.
    pub fn value(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &dyn InputSource,
    ) -> Result<f64, EvalError> {
        self.value_as_given(arch, &canonical(expr), src)
    }

    /// Like [`Memo::value`] but without canonicalising `expr` first (use it when the caller
    /// already holds the canonical form; any tree gives the correct value, only sharing suffers).
    pub fn value_as_given(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &dyn InputSource,
    ) -> Result<f64, EvalError> {
        let aliased;
        let expr = match alias_head(expr, src) {
            Some(e) => {
                aliased = e;
                &aliased
            }
            None => expr,
        };
        let v = self.eval_node(arch, expr, src)?;
        reduce(v.items())
    }

    /// The list of item arrays of `expr` on architecture `arch` (canonicalised first), without
    /// the final reduction: the same as [`crate::proxy::expr::eval_list`].
    pub fn list(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &dyn InputSource,
    ) -> Result<Vec<Array>, EvalError> {
        let v = self.eval_node(arch, &canonical(expr), src)?;
        Ok(v.items().to_vec())
    }

    /// Evaluates one node, looking it up first (inputs are borrowed, never stored).
    fn eval_node<'a>(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &'a dyn InputSource,
    ) -> Result<Val<'a>, EvalError> {
        match expr {
            Expr::Input(i) => {
                let list = src.input(*i).ok_or(EvalError::MissingInput(*i))?;
                if list.is_empty() {
                    return Err(EvalError::EmptyInput(*i));
                }
                Ok(Val::Borrowed(list))
            }
            // No value; nothing to compute or store.
            Expr::Unary(UnaryOp::Disconnect, _) => Err(EvalError::Disconnected),
            Expr::Binary(op, a, b) if a.is_disconnected() || b.is_disconnected() => {
                // A disconnected operand is dropped: the node is its other operand (which has
                // its own entry). Both disconnected: invalid.
                match (a.is_disconnected(), b.is_disconnected()) {
                    (true, true) => Err(EvalError::BothDisconnected(*op)),
                    (true, false) => self.eval_node(arch, b, src),
                    _ => self.eval_node(arch, a, src),
                }
            }
            _ => {
                let key = (arch, expr.to_string());
                if let Some(entry) = self.map.get(&key) {
                    self.stats.hits += 1;
                    return entry.clone().map(Val::Shared);
                }
                self.stats.misses += 1;
                let computed = self.compute(arch, expr, src);
                let entry: Entry = computed.map(Arc::new);
                self.store(key, &entry);
                entry.map(Val::Shared)
            }
        }
    }

    /// Computes a unary or binary node from its (memoised) operands.
    fn compute(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &dyn InputSource,
    ) -> Result<Vec<Array>, EvalError> {
        match expr {
            Expr::Unary(op, x) if op.is_list_level() => {
                let items = self.eval_node(arch, x, src)?;
                Ok(total(items.items()))
            }
            Expr::Unary(..) => {
                // The run of unary ops streams through each item in one go (no intermediate
                // lists; the same bits as op by op, see `proxy::chain`).
                let (ops, base) = unary_chain(expr)?;
                let items = self.eval_node(arch, base, src)?;
                apply_chain_list(&ops, items.items())
            }
            Expr::Binary(op, a, b) => {
                let left = self.eval_node(arch, a, src)?;
                let right = self.eval_node(arch, b, src)?;
                Ok(apply_binary_list(*op, left.items(), right.items())?)
            }
            Expr::Input(_) => unreachable!("inputs are not computed"),
        }
    }

    /// Stores an entry when the memory policy allows it.
    fn store(&mut self, key: (usize, String), entry: &Entry) {
        if let Ok(items) = entry {
            if !items.iter().all(Array::is_scalar) {
                let bytes = list_bytes(items);
                if self.stats.large_bytes + bytes > self.budget_bytes {
                    self.stats.over_budget += 1;
                    return;
                }
                self.stats.large_bytes += bytes;
            }
        }
        self.stats.entries += 1;
        self.map.insert(key, entry.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::expr::{eval, eval_list, parse, Input};
    use crate::rng::Rng;

    fn source(seed: u64) -> HashMap<Input, Vec<Array>> {
        let mut rng = Rng::new(seed);
        let mut arr = |shape: &[usize]| {
            let n = shape.iter().product();
            Array::new(shape.to_vec(), rng.normal_vec(n, 1.0)).unwrap()
        };
        HashMap::from([
            (Input::Act, vec![arr(&[2, 3]), arr(&[2, 3]), arr(&[2, 3])]),
            (Input::Head, vec![arr(&[2, 3]), arr(&[2, 3])]),
            (Input::Softmax, vec![]),
            (Input::Grad, vec![arr(&[3, 3]), arr(&[3, 3])]),
            (Input::Weight, vec![arr(&[3, 3]), arr(&[3, 3])]),
        ])
    }

    fn same(a: &Result<f64, EvalError>, b: &Result<f64, EvalError>) -> bool {
        match (a, b) {
            (Ok(x), Ok(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            (Err(x), Err(y)) => x == y,
            _ => false,
        }
    }

    #[test]
    fn memo_value_equals_eval() {
        let texts = [
            "add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))",
            "sub(mean(act), mean(act))",
            "matmul(weight, grad)",
            "matmul(head, weight)",
            "add(act, weight)",
            "neg(softmax)",
            "sub(disconnect(grad), no_op(weight))",
            "add(disconnect(grad), disconnect(weight))",
            "disconnect(act)",
            "mul(std(min_max(act)), sigmoid(invert(exp(abslog(log(relu(sqrt(normalize(head)))))))))",
            "add(softmax(head), neg(neg(head)))",
            "std(mean(act))",
            "total(abs(head))",
            "log(total(sum(act)))",
            "add(log(total(size(weight))), total(mean(act)))",
            "total(total(act))",
            "sub(total(act), mean(head))",
            "total(disconnect(act))",
            "mean(total(pow2(add(weight, grad))))",
        ];
        let sources = [source(1), source(2)];
        let mut memo = Memo::new();
        // Twice, so the second pass is served from the memo.
        for _ in 0..2 {
            for t in texts {
                let e = parse(t).unwrap();
                for (i, s) in sources.iter().enumerate() {
                    let want = eval(&e, s);
                    let got = memo.value(i, &e, s);
                    assert!(same(&want, &got), "{t}: {want:?} vs {got:?}");
                    if let Ok(list) = eval_list(&e, s) {
                        let got = memo.list(i, &e, s).unwrap();
                        // Bit patterns, so NaN items compare equal.
                        let bits = |l: &[Array]| -> Vec<(Vec<usize>, Vec<u32>)> {
                            l.iter()
                                .map(|a| {
                                    (
                                        a.shape().to_vec(),
                                        a.data().iter().map(|x| x.to_bits()).collect(),
                                    )
                                })
                                .collect()
                        };
                        assert_eq!(bits(&got), bits(&list), "{t}");
                    }
                }
            }
        }
        assert!(memo.stats().hits > 0);
    }

    #[test]
    fn shared_sub_expression_computed_once() {
        let s = source(3);
        let mut memo = Memo::new();
        // Both branches canonicalise to mean(pow2(head)), computed in one fused pass: root and
        // mean(pow2(head)) miss, the second branch is a hit.
        let e = parse("add(mean(pow2(head)), mean(pow2(neg(head))))").unwrap();
        let v = memo.value(0, &e, &s).unwrap();
        assert_eq!(v, eval(&e, &s).unwrap());
        assert_eq!(memo.stats().misses, 2);
        assert_eq!(memo.stats().hits, 1);
        // A new expression reusing mean(pow2(head)): root and mean(act) miss, one hit.
        let f = parse("sub(mean(pow2(head)), mean(act))").unwrap();
        memo.value(0, &f, &s).unwrap();
        assert_eq!(memo.stats().misses, 4);
        assert_eq!(memo.stats().hits, 2);
        // Same expression again: one hit at the root, nothing computed.
        memo.value(0, &f, &s).unwrap();
        assert_eq!(memo.stats().misses, 4);
        assert_eq!(memo.stats().hits, 3);
        // Another architecture is another key.
        memo.value(1, &f, &s).unwrap();
        assert_eq!(memo.stats().misses, 7);
    }

    #[test]
    fn head_read_as_act_when_they_are_one_list() {
        let s = source(6);
        let act = &s[&Input::Act];
        let shared = crate::proxy::expr::Inputs {
            act,
            head: act,
            ..Default::default()
        };
        let mut memo = Memo::new();
        let e = parse("mean(log(abs(act)))").unwrap();
        let h = parse("mean(log(abs(head)))").unwrap();
        let v = memo.value(0, &e, &shared).unwrap();
        let misses = memo.stats().misses;
        assert_eq!(memo.value(0, &h, &shared).unwrap(), v);
        assert_eq!(memo.stats().misses, misses, "head must hit act's entry");
        // Distinct lists are never aliased.
        let mut memo = Memo::new();
        memo.value(0, &e, &s).unwrap();
        let misses = memo.stats().misses;
        assert_eq!(memo.value(0, &h, &s).unwrap(), eval(&h, &s).unwrap());
        assert!(memo.stats().misses > misses);
    }

    #[test]
    fn errors_are_memoised() {
        let s = source(4);
        let mut memo = Memo::new();
        let e = parse("mean(add(act, weight))").unwrap();
        let err = memo.value(0, &e, &s).unwrap_err();
        assert!(matches!(err, EvalError::Op(_)));
        let misses = memo.stats().misses;
        assert_eq!(memo.value(0, &e, &s).unwrap_err(), err);
        assert_eq!(memo.stats().misses, misses);
    }

    #[test]
    fn budget_limits_large_lists_only() {
        let s = source(5);
        let mut memo = Memo::with_budget(0);
        let e = parse("mean(pow2(head))").unwrap();
        let v = memo.value(0, &e, &s).unwrap();
        // mean(pow2(head)) is fused (pow2(head) never materialised) and scalar: stored.
        assert_eq!(memo.stats().over_budget, 0);
        assert_eq!(memo.stats().large_bytes, 0);
        assert_eq!(memo.len(), 1);
        let p = parse("pow2(head)").unwrap();
        memo.value(0, &p, &s).unwrap();
        memo.value(0, &p, &s).unwrap();
        // pow2(head) alone is a non-scalar list: computed twice, never stored.
        assert_eq!(memo.stats().over_budget, 2);
        assert_eq!(memo.value(0, &e, &s).unwrap(), v);
        // A large budget stores it.
        let mut big = Memo::new();
        big.value(0, &p, &s).unwrap();
        assert!(big.stats().large_bytes > 0);
        big.value(0, &p, &s).unwrap();
        assert_eq!(big.stats().hits, 1);
        big.clear();
        assert!(big.is_empty());
        assert_eq!(big.stats(), MemoStats::default());
    }
}
