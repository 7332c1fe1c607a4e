//! Evaluation of proxy expressions over the input lists of one architecture, and its memo
//! over many architectures.
//!
//! # Evaluation
//!
//! [`eval`] is the plain evaluator: inputs come from an [`InputSource`] (a probe, a test
//! fixture), a run of unary ops streams through each item ([`super::chain`]), a binary op pairs
//! items by position ([`apply_binary_list`]), a disconnected operand is dropped, and the value
//! is the mean over items of each item's mean in `f64` ([`reduce`]). An expression without a
//! value for an architecture gives an [`EvalError`] (the reference's "−1").
//!
//! # Memo
//!
//! A proxy value is a pure function of (probe, expression), and the search evaluates thousands
//! of expressions that share sub-expressions (a child shares most of its tree with its parents;
//! the graph structure repeats node states inside one expression). [`Memo`] keeps the value of
//! every evaluated sub-expression per architecture, keyed by
//! `(architecture index, sub-expression text)`, for the life of one search.
//!
//! * Expressions are brought to their canonical form ([`canonical`]) first, so equivalent
//!   sub-expressions (`neg(neg(x))` and `x`, `add(a, b)` and `add(b, a)`) share one entry. The
//!   key of a node is the text of the canonical node, i.e. [`crate::proxy::canonical::key`] of it.
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
//!   recomputed when needed. Input lists are never stored in the memo: they are read from the
//!   [`InputSource`] (borrowed from a probe in memory, loaded from a spilled one).
//!
//! The memo is only a cache: [`Memo::value`] returns exactly what
//! [`eval`] returns (same number, same error), which the tests check.
//! The caller must use one consistent architecture indexing per memo (index `i` always means the
//! same probe).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::canonical::canonical;
use super::chain::apply_chain;
use super::expr::{Expr, Input};
use super::ops::{apply_binary, BinaryOp, OpError, UnaryOp};
use crate::array::Array;
use crate::probe::Probe;

/// Where an expression reads its input lists from (a probe, a test fixture, a probe kept on
/// disk, ...).
pub trait InputSource: Sync {
    /// The list for `which`, or `None` when this source does not provide it (or, for a source
    /// that loads its lists, could not load it: such a source keeps the reason for its owner).
    fn input(&self, which: Input) -> Option<InputList<'_>>;

    /// True when `head` and `act` are one and the same list (GPT-2 probes), so that an
    /// evaluator may read `head` as `act` and share work between the two spellings. By default:
    /// both lists are borrowed and are the same slice.
    fn serves_head_as_act(&self) -> bool {
        match (self.input(Input::Head), self.input(Input::Act)) {
            (Some(InputList::Borrowed(head)), Some(InputList::Borrowed(act))) => {
                std::ptr::eq(head, act)
            }
            _ => false,
        }
    }
}

/// An input list as a source serves it, or a computed list during evaluation: borrowed from
/// the source, or shared (loaded for this read, or held by a [`Memo`]).
#[derive(Debug, Clone)]
pub enum InputList<'a> {
    /// A list the source holds.
    Borrowed(&'a [Array]),
    /// A list made for the reader (loaded from storage, or computed), shared without copying.
    Shared(Arc<Vec<Array>>),
}

impl std::ops::Deref for InputList<'_> {
    type Target = [Array];

    fn deref(&self) -> &[Array] {
        match self {
            InputList::Borrowed(s) => s,
            InputList::Shared(v) => v,
        }
    }
}

impl<'a> InputList<'a> {
    /// The list as a copy-on-write slice: borrowed when the source holds it, else the shared
    /// arrays (cloning an [`Array`] shares its values, so this copies no values).
    pub fn into_cow(self) -> Cow<'a, [Array]> {
        match self {
            InputList::Borrowed(s) => Cow::Borrowed(s),
            InputList::Shared(v) => Cow::Owned(Arc::unwrap_or_clone(v)),
        }
    }
}

/// The five input lists of one architecture, borrowed. A list that was not computed can be left
/// empty (evaluating an expression that reads it is then an [`EvalError::EmptyInput`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// The `act` list.
    pub act: &'a [Array],
    /// The `head` list.
    pub head: &'a [Array],
    /// The `softmax` list.
    pub softmax: &'a [Array],
    /// The `grad` list.
    pub grad: &'a [Array],
    /// The `weight` list.
    pub weight: &'a [Array],
}

impl InputSource for Inputs<'_> {
    fn input(&self, which: Input) -> Option<InputList<'_>> {
        Some(InputList::Borrowed(match which {
            Input::Act => self.act,
            Input::Head => self.head,
            Input::Softmax => self.softmax,
            Input::Grad => self.grad,
            Input::Weight => self.weight,
        }))
    }
}

impl InputSource for HashMap<Input, Vec<Array>> {
    fn input(&self, which: Input) -> Option<InputList<'_>> {
        self.get(&which).map(|l| InputList::Borrowed(l))
    }
}

/// Why an expression has no value for an architecture (the reference's "−1").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The input source does not provide this input.
    #[error("input `{0}` is not available")]
    MissingInput(Input),
    /// The input list is empty (e.g. BERT `grad`, GPT-2 `softmax` in the reference).
    #[error("input `{0}` is an empty list")]
    EmptyInput(Input),
    /// A disconnected value was needed: the root, or a unary op above the root's `disconnect`.
    #[error("the expression is disconnected: its value passes through `disconnect`")]
    Disconnected,
    /// Both operands of a binary op are disconnected.
    #[error("both operands of `{0}` are disconnected")]
    BothDisconnected(BinaryOp),
    /// A binary op could not combine a pair of items.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The final list is empty (cannot happen with non-empty inputs; kept as a guard).
    #[error("the expression produced an empty list")]
    EmptyResult,
}

/// Applies a chain of unary ops (`ops[0]` first) to every item of a list (`disconnect` is an
/// error: it has no value).
pub fn apply_chain_list(ops: &[UnaryOp], items: &[Array]) -> Result<Vec<Array>, EvalError> {
    items
        .iter()
        .map(|a| apply_chain(ops, a).ok_or(EvalError::Disconnected))
        .collect()
}

/// Splits the run of item-wise unary ops at the top of `expr`: the ops in application order
/// (innermost first) and the node below them. The run stops at an input, a binary op or the
/// list-level `total` (which is evaluated as a node of its own, see [`total`]). A `disconnect`
/// anywhere in the run makes the whole run valueless ([`EvalError::Disconnected`]); the node
/// below is then never evaluated.
pub fn unary_chain(expr: &Expr) -> Result<(Vec<UnaryOp>, &Expr), EvalError> {
    let mut ops = Vec::new();
    let mut node = expr;
    while let Expr::Unary(op, x) = node {
        if op.is_list_level() {
            break;
        }
        if *op == UnaryOp::Disconnect {
            return Err(EvalError::Disconnected);
        }
        ops.push(*op);
        node = x;
    }
    ops.reverse();
    Ok((ops, node))
}

/// The list-level op `total`: a one-item list holding `Σ_items mean(item)` (each mean in `f64`,
/// the sum rounded once to `f32`).
pub fn total(items: &[Array]) -> Vec<Array> {
    let sum: f64 = items.iter().map(Array::mean_f64).sum();
    vec![Array::scalar(sum as f32)]
}

/// Applies a binary op to positionally paired items, up to the shorter list; the surplus items
/// of the longer list are dropped.
pub fn apply_binary_list(
    op: BinaryOp,
    left: &[Array],
    right: &[Array],
) -> Result<Vec<Array>, OpError> {
    left.iter()
        .zip(right)
        .map(|(a, b)| apply_binary(op, a, b))
        .collect()
}

/// The list of input `i` from `src`: an error when the source does not provide it or it is
/// empty.
fn read_input(src: &dyn InputSource, i: Input) -> Result<InputList<'_>, EvalError> {
    let list = src.input(i).ok_or(EvalError::MissingInput(i))?;
    if list.is_empty() {
        return Err(EvalError::EmptyInput(i));
    }
    Ok(list)
}

/// Evaluates `expr` to its list of arrays (one per item), without the final reduction.
///
/// Pure and recursive over the tree: inputs come from `inputs`, unary ops map over items, binary
/// ops pair items ([`apply_binary_list`]), disconnected operands are dropped (see module docs).
pub fn eval_list(expr: &Expr, inputs: &dyn InputSource) -> Result<Vec<Array>, EvalError> {
    eval_cow(expr, inputs).map(Cow::into_owned)
}

/// [`eval_list`] that borrows input lists instead of copying them when a node is an input.
fn eval_cow<'a>(expr: &Expr, inputs: &'a dyn InputSource) -> Result<Cow<'a, [Array]>, EvalError> {
    match expr {
        Expr::Input(i) => Ok(read_input(inputs, *i)?.into_cow()),
        Expr::Unary(op, x) if op.is_list_level() => Ok(Cow::Owned(total(&eval_cow(x, inputs)?))),
        Expr::Unary(..) => {
            // The whole run of unary ops streams through each item at once (`proxy::chain`).
            let (ops, base) = unary_chain(expr)?;
            let items = eval_cow(base, inputs)?;
            Ok(Cow::Owned(apply_chain_list(&ops, &items)?))
        }
        Expr::Binary(op, a, b) => match (a.is_disconnected(), b.is_disconnected()) {
            (true, true) => Err(EvalError::BothDisconnected(*op)),
            (true, false) => eval_cow(b, inputs),
            (false, true) => eval_cow(a, inputs),
            (false, false) => {
                let left = eval_cow(a, inputs)?;
                let right = eval_cow(b, inputs)?;
                Ok(Cow::Owned(apply_binary_list(*op, &left, &right)?))
            }
        },
    }
}

/// The value of a list: the mean over items of each item's mean, in `f64` (the reference's
/// `convert_to_float`). NaN/inf are returned as they are; an empty list is an error.
pub fn reduce(items: &[Array]) -> Result<f64, EvalError> {
    mean_of_item_means(items.iter().map(Array::mean_f64))
}

/// The value of a list from its items' means, in item order: what [`reduce`] gives for the
/// list, bit for bit. For a caller that evaluates the items one at a time ([`item_count`]).
pub fn mean_of_item_means(means: impl IntoIterator<Item = f64>) -> Result<f64, EvalError> {
    let mut n = 0usize;
    let total: f64 = means.into_iter().inspect(|_| n += 1).sum();
    if n == 0 {
        return Err(EvalError::EmptyResult);
    }
    Ok(total / n as f64)
}

/// How many items [`eval_list`] gives for `expr` when input `i` has `len(i)` items, found
/// from the tree alone (nothing is evaluated), or the error [`eval_list`] gives for a reason
/// other than an item's values ([`EvalError::Op`] needs the values).
///
/// It follows [`eval_list`]'s rules: an input has its length (an empty one is an error), a run
/// of item-wise unary ops keeps it, `total` makes one item, a binary op pairs items up to the
/// shorter operand, and a disconnected operand is dropped.
///
/// Together with the fact that every op but `total` works item by item (a unary op maps each
/// item, a binary op combines the items at one position), this lets an expression without
/// `total` be evaluated one position at a time: item `k` of its list is the single item it
/// evaluates to on the inputs' items at position `k` alone.
pub fn item_count(expr: &Expr, len: &dyn Fn(Input) -> usize) -> Result<usize, EvalError> {
    match expr {
        Expr::Input(i) => match len(*i) {
            0 => Err(EvalError::EmptyInput(*i)),
            n => Ok(n),
        },
        Expr::Unary(op, x) if op.is_list_level() => item_count(x, len).map(|_| 1),
        Expr::Unary(..) => item_count(unary_chain(expr)?.1, len),
        Expr::Binary(op, a, b) => match (a.is_disconnected(), b.is_disconnected()) {
            (true, true) => Err(EvalError::BothDisconnected(*op)),
            (true, false) => item_count(b, len),
            (false, true) => item_count(a, len),
            (false, false) => Ok(item_count(a, len)?.min(item_count(b, len)?)),
        },
    }
}

/// Evaluates `expr` on one architecture's inputs: [`reduce`] of [`eval_list`].
pub fn eval(expr: &Expr, inputs: &dyn InputSource) -> Result<f64, EvalError> {
    reduce(&eval_cow(expr, inputs)?)
}

/// A probe is the input source of its architecture: its `act`, `head`, `softmax`, `grad` and
/// `weight` lists, whose meaning is its family's (see [`crate::probe::Probe`]).
impl InputSource for Probe {
    fn input(&self, which: Input) -> Option<InputList<'_>> {
        Some(InputList::Borrowed(match which {
            Input::Act => &self.act,
            Input::Head => &self.head,
            Input::Softmax => &self.softmax,
            Input::Grad => &self.grad,
            Input::Weight => &self.weight,
        }))
    }
}

/// Default byte budget for memoised non-scalar lists: 1 GiB.
pub const DEFAULT_BUDGET_BYTES: u64 = 1 << 30;

/// A memoised result: the list of item arrays (shared) or why there is none.
type Entry = Result<Arc<Vec<Array>>, EvalError>;

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

impl std::ops::Add for MemoStats {
    type Output = Self;

    /// Counters of two memos together (e.g. one per evaluation thread, or per restart).
    fn add(self, b: Self) -> Self {
        Self {
            hits: self.hits + b.hits,
            misses: self.misses + b.misses,
            entries: self.entries + b.entries,
            large_bytes: self.large_bytes + b.large_bytes,
            over_budget: self.over_budget + b.over_budget,
        }
    }
}

/// When `src` serves one and the same list as `head` and `act` (GPT-2 probes do), `expr` with
/// every `head` read as `act`, so that both spellings share memo entries; `None` otherwise.
fn alias_head(expr: &Expr, src: &dyn InputSource) -> Option<Expr> {
    if !expr.inputs().contains(&Input::Head) || !src.serves_head_as_act() {
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

/// Approximate heap size of a list: its values ([`Array::value_bytes`]: 4 bytes per element,
/// 2 when compact) plus the shape and array headers.
pub fn list_bytes(items: &[Array]) -> u64 {
    items
        .iter()
        .map(|a| {
            (a.value_bytes()
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
    /// [`eval`], computed through the memo after canonicalising `expr`.
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
        reduce(&v)
    }

    /// The list of item arrays of `expr` on architecture `arch` (canonicalised first), without
    /// the final reduction: the same as [`eval_list`].
    pub fn list(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &dyn InputSource,
    ) -> Result<Vec<Array>, EvalError> {
        let v = self.eval_node(arch, &canonical(expr), src)?;
        Ok(v.to_vec())
    }

    /// Evaluates one node, looking it up first (inputs are read from the source, never stored).
    fn eval_node<'a>(
        &mut self,
        arch: usize,
        expr: &Expr,
        src: &'a dyn InputSource,
    ) -> Result<InputList<'a>, EvalError> {
        match expr {
            Expr::Input(i) => read_input(src, *i),
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
                    return entry.clone().map(InputList::Shared);
                }
                self.stats.misses += 1;
                let computed = self.compute(arch, expr, src);
                let entry: Entry = computed.map(Arc::new);
                self.store(key, &entry);
                entry.map(InputList::Shared)
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
                Ok(total(&items))
            }
            Expr::Unary(..) => {
                // The run of unary ops streams through each item in one go (no intermediate
                // lists; the same bits as op by op, see `proxy::chain`).
                let (ops, base) = unary_chain(expr)?;
                let items = self.eval_node(arch, base, src)?;
                apply_chain_list(&ops, &items)
            }
            Expr::Binary(op, a, b) => {
                let left = self.eval_node(arch, a, src)?;
                let right = self.eval_node(arch, b, src)?;
                Ok(apply_binary_list(*op, &left, &right)?)
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
    use crate::proxy::expr::Input;
    use crate::proxy::parse::parse;
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
    fn item_count_and_evaluation_one_position_at_a_time() {
        let s = source(7);
        let len = |i: Input| s[&i].len();
        let texts = [
            "act",
            "neg(softmax)",
            "mean(pow2(head))",
            "add(act, head)",
            "add(mean(act), mean(weight))",
            "mul(abs(grad), weight)",
            "sub(disconnect(act), weight)",
            "add(disconnect(act), disconnect(weight))",
            "disconnect(act)",
            "total(act)",
            "add(total(act), grad)",
            "matmul(act, weight)",
        ];
        for t in texts {
            let e = parse(t).unwrap();
            let count = item_count(&e, &len);
            let list = eval_list(&e, &s);
            match (&list, &count) {
                (Ok(l), Ok(n)) => assert_eq!(l.len(), *n, "{t}"),
                (Err(EvalError::Op(_)), Ok(_)) => {}
                (Err(a), Err(b)) => assert_eq!(a, b, "{t}"),
                _ => panic!("{t}: eval_list {list:?}, item_count {count:?}"),
            }
            let (Ok(list), Ok(n), false) = (list, count, t.contains("total")) else {
                continue;
            };
            // Without `total`, item k is the one item of the inputs' items at k alone, and the
            // value is the mean of the item means.
            assert_eq!(list.len(), n, "{t}");
            let mut means = Vec::new();
            for (k, want) in list.iter().enumerate() {
                let at = |i: Input| s[&i].get(k..=k).unwrap_or(&[]);
                let one = Inputs {
                    act: at(Input::Act),
                    head: at(Input::Head),
                    softmax: at(Input::Softmax),
                    grad: at(Input::Grad),
                    weight: at(Input::Weight),
                };
                let item = eval_list(&e, &one).unwrap();
                assert_eq!(item.len(), 1, "{t}");
                assert_eq!(item[0].data(), want.data(), "{t}, item {k}");
                means.push(eval(&e, &one).unwrap());
            }
            let whole = eval(&e, &s).unwrap();
            assert_eq!(
                mean_of_item_means(means).unwrap().to_bits(),
                whole.to_bits(),
                "{t}"
            );
        }
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
        let shared = Inputs {
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
