//! `lpzero export --to python`: a self-contained Python module (it imports only `math` and
//! `torch`) that defines `proxy(act, head, softmax, grad, weight) -> float`.
//!
//! The function evaluates the expression with lpzero's semantics, step by step: unary ops map
//! over the items of a list, binary ops pair items by position (the surplus of the longer list
//! is dropped; a one-element operand is broadcast; `matmul` multiplies 2-D items and falls back
//! to a scalar product when one side has one element), `total` turns a list into one item
//! holding the sum of the item means, and the value is the mean over items of each item's mean.
//! Element-wise arithmetic runs in float32 and every reduction, and the statistics inside
//! `normalize`, `min_max`, `softmax` and `logsoftmax`, accumulate in float64, as in
//! `proxy::chain`, so the function matches lpzero up to the rounding of float32 `exp`/`log`
//! and of summation order. Where lpzero has no value (an empty input list, items whose shapes
//! do not combine) the function returns NaN, as `lpzero score` does.
//!
//! Only the helpers the expression needs are written out, in a fixed order, so the module is
//! short and the output is deterministic (the golden files under `tests/golden/` pin it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::Node;
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::{BinaryOp, UnaryOp};

/// The Python module for `expr` (lowered to `node`).
pub fn module(expr: &Expr, node: &Node) -> String {
    let mut gen = Generator::default();
    let result = gen.emit(node);
    let mut helpers: BTreeSet<&str> = ALWAYS.iter().copied().collect();
    let mut todo: Vec<&str> = gen.used.iter().copied().collect();
    while let Some(name) = todo.pop() {
        if helpers.insert(name) {
            todo.extend(helper(name).1);
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "\"\"\"lpzero proxy, exported by `lpzero export --to python`:\n\n    {expr}\n\n{DOC}\"\"\"\n\n\
         import math\n\nimport torch\n\n#: The expression, in lpzero's text form.\n\
         EXPRESSION = \"{expr}\"\n"
    );
    for (name, code) in HELPERS {
        if !helpers.contains(name) {
            continue;
        }
        match name
            .strip_prefix('_')
            .filter(|op| ELEMENT_WISE.contains(op))
        {
            // `_add(a, b)` and its siblings differ only in the torch function they broadcast.
            Some(op) => {
                let _ = write!(
                    out,
                    "\n\ndef _{op}(a, b):\n    return _broadcast(torch.{op}, \"{op}\", a, b)\n"
                );
            }
            None => {
                let _ = write!(out, "\n\n{}\n", code.trim());
            }
        }
    }
    let _ = write!(
        out,
        "\n\ndef proxy(act, head, softmax, grad, weight):\n    \"\"\"The proxy's value on one \
         architecture's input lists (lists of tensors); NaN where\n    lpzero has none.\"\"\"\n    \
         try:\n        with torch.no_grad():\n"
    );
    for line in &gen.lines {
        let _ = writeln!(out, "            {line}");
    }
    let _ = write!(
        out,
        "            return _value({result})\n    except _NoValue:\n        return math.nan\n"
    );
    out
}

/// The module docstring after the expression.
const DOC: &str = "\
proxy(act, head, softmax, grad, weight) takes one architecture's five input lists, each a list
of tensors (one per layer or module, in lpzero's order; see lpzero's README), and returns the
proxy's value as a float, or NaN where lpzero has no value (an empty input list, items whose
shapes do not combine). Semantics are lpzero's: unary operations map over the items of a list;
binary operations pair items by position, drop the surplus of the longer list and broadcast a
one-element operand; `total` turns a list into one item, the sum of the item means; the value is
the mean over the items of each item's mean. Element-wise arithmetic runs in float32; reductions
and the statistics of normalize, min_max, softmax and logsoftmax accumulate in float64.
";

/// The binary ops that are element-wise torch functions of the same name (their helpers are
/// written from one template).
const ELEMENT_WISE: [&str; 3] = ["add", "sub", "mul"];

/// Helpers every module needs.
const ALWAYS: [&str; 5] = ["_NoValue", "_items", "_f64", "_mean64", "_value"];

/// Writes one statement per operation, in evaluation order.
#[derive(Default)]
struct Generator {
    lines: Vec<String>,
    used: BTreeSet<&'static str>,
    inputs: BTreeMap<Input, String>,
    next: usize,
}

impl Generator {
    /// A new variable name.
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("t{}", self.next)
    }

    /// Writes the statements computing `node` and returns the variable holding its list.
    fn emit(&mut self, node: &Node) -> String {
        match node {
            Node::Input(i) => {
                if let Some(var) = self.inputs.get(i) {
                    return var.clone();
                }
                let var = format!("{}_items", i.name());
                self.lines
                    .push(format!("{var} = _items(\"{0}\", {0})", i.name()));
                self.inputs.insert(*i, var.clone());
                var
            }
            Node::Chain(ops, x) => {
                let mut var = self.emit(x);
                let mut text = x.text();
                for op in ops {
                    let f = unary_helper(*op);
                    self.used.insert(f);
                    self.used.insert("_each");
                    text = format!("{op}({text})");
                    let t = self.fresh();
                    self.lines
                        .push(format!("{t} = _each({f}, {var})  # {text}"));
                    var = t;
                }
                var
            }
            Node::Total(x) => {
                let v = self.emit(x);
                self.used.insert("_total");
                let t = self.fresh();
                self.lines
                    .push(format!("{t} = _total({v})  # {}", node.text()));
                t
            }
            Node::Binary(op, a, b) => {
                let va = self.emit(a);
                let vb = self.emit(b);
                let f = binary_helper(*op);
                self.used.insert(f);
                self.used.insert("_pair");
                let t = self.fresh();
                self.lines
                    .push(format!("{t} = _pair({f}, {va}, {vb})  # {}", node.text()));
                t
            }
        }
    }
}

/// The helper implementing a unary op on one item.
fn unary_helper(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Log => "_log",
        UnaryOp::AbsLog => "_abslog",
        UnaryOp::Abs => "_abs",
        UnaryOp::Pow2 => "_pow2",
        UnaryOp::Exp => "_exp",
        UnaryOp::Normalize => "_normalize",
        UnaryOp::Relu => "_relu",
        UnaryOp::Invert => "_invert",
        UnaryOp::FrobeniusNorm => "_frobenius_norm",
        UnaryOp::NormalizedSum => "_normalized_sum",
        UnaryOp::L1Norm => "_l1_norm",
        UnaryOp::Softmax => "_softmax",
        UnaryOp::Sigmoid => "_sigmoid",
        UnaryOp::LogSoftmax => "_logsoftmax",
        UnaryOp::Sqrt => "_sqrt",
        UnaryOp::Neg => "_neg",
        UnaryOp::MinMax => "_min_max",
        UnaryOp::Mean => "_mean",
        UnaryOp::Std => "_std",
        UnaryOp::Sum => "_sum",
        UnaryOp::Size => "_size",
        // Lowering removes these three: `no_op` is the identity, `disconnect` is dropped or
        // refused, `total` is a list-level node.
        UnaryOp::NoOp | UnaryOp::Disconnect | UnaryOp::Total => "_unreachable",
    }
}

/// The helper implementing a binary op on one pair of items.
fn binary_helper(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "_add",
        BinaryOp::Sub => "_sub",
        BinaryOp::Mul => "_mul",
        BinaryOp::Matmul => "_matmul",
        // `export` refuses a rank join before lowering (it is not a per-network function).
        BinaryOp::RankAdd => "_unreachable",
    }
}

/// The code of a helper and the helpers it calls.
fn helper(name: &str) -> (&'static str, &'static [&'static str]) {
    let code = HELPERS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, c)| c);
    let deps: &'static [&'static str] = match name {
        "_normalize" => &["_std64"],
        "_std" => &["_std64", "_scalar"],
        "_softmax" | "_logsoftmax" => &["_softmax_along_0"],
        "_frobenius_norm" | "_normalized_sum" | "_l1_norm" | "_mean" | "_sum" | "_size" => {
            &["_scalar"]
        }
        "_total" => &["_scalar"],
        "_add" | "_sub" | "_mul" | "_matmul" => &["_broadcast"],
        _ => &[],
    };
    (code, deps)
}

/// Every helper, in the order a module lists them (the code of the [`ELEMENT_WISE`] ones is
/// written by [`module`]).
const HELPERS: &[(&str, &str)] = &[
    (
        "_NoValue",
        r#"
class _NoValue(Exception):
    """lpzero has no value for the expression on these inputs (it reports NaN)."""
"#,
    ),
    (
        "_items",
        r#"
def _items(name, tensors):
    """An input list as float32 tensors; an empty list has no value."""
    items = [torch.as_tensor(t).detach().to(torch.float32) for t in tensors]
    if not items:
        raise _NoValue(f"input `{name}` is an empty list")
    return items
"#,
    ),
    (
        "_each",
        r#"
def _each(op, items):
    """A unary operation applied to every item of a list."""
    return [op(x) for x in items]
"#,
    ),
    (
        "_pair",
        r#"
def _pair(op, left, right):
    """A binary operation on items paired by position; the surplus of the longer list is
    dropped."""
    return [op(a, b) for a, b in zip(left, right)]
"#,
    ),
    (
        "_f64",
        r#"
def _f64(x):
    return x.to(torch.float64)
"#,
    ),
    (
        "_scalar",
        r#"
def _scalar(value, like):
    """A float64 number as a 0-d float32 tensor on the device of `like`."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device).to(torch.float32)
"#,
    ),
    (
        "_mean64",
        r#"
def _mean64(x):
    """The mean of all elements of an item, in float64 (NaN when it has none)."""
    if x.numel() == 0:
        return math.nan
    return _f64(x).sum().item() / x.numel()
"#,
    ),
    (
        "_std64",
        r#"
def _std64(x):
    """The unbiased (n - 1) standard deviation, in float64 (NaN for fewer than 2 elements)."""
    n = x.numel()
    if n < 2:
        return math.nan
    d = _f64(x)
    c = d - d.sum() / n
    return torch.sqrt((c * c).sum() / (n - 1))
"#,
    ),
    (
        "_log",
        r#"
def _log(x):
    """ln(x + 1e-9), entries <= 0 taken as 1."""
    return torch.log(torch.where(x <= 0, torch.ones_like(x), x) + 1e-9)
"#,
    ),
    (
        "_abslog",
        r#"
def _abslog(x):
    """ln|x|, entries == 0 taken as 1."""
    return torch.log(torch.where(x == 0, torch.ones_like(x), x).abs())
"#,
    ),
    (
        "_abs",
        r#"
def _abs(x):
    return x.abs()
"#,
    ),
    (
        "_pow2",
        r#"
def _pow2(x):
    return x * x
"#,
    ),
    (
        "_exp",
        r#"
def _exp(x):
    return torch.exp(x)
"#,
    ),
    (
        "_normalize",
        r#"
def _normalize(x):
    """(x - mean) / std with the unbiased std, in float64; NaN results become 0."""
    n = x.numel()
    if n == 0:
        return x.clone()
    d = _f64(x)
    z = ((d - d.sum() / n) / _std64(x)).to(torch.float32)
    return torch.where(torch.isnan(z), torch.zeros_like(z), z)
"#,
    ),
    (
        "_relu",
        r#"
def _relu(x):
    """max(x, 0); NaN stays NaN."""
    return torch.where(x <= 0, torch.zeros_like(x), x)
"#,
    ),
    (
        "_invert",
        r#"
def _invert(x):
    """1 / (x + 1e-9)."""
    y = x + 1e-9
    return torch.ones_like(y) / y
"#,
    ),
    (
        "_frobenius_norm",
        r#"
def _frobenius_norm(x):
    d = _f64(x)
    return _scalar(torch.sqrt((d * d).sum()), x)
"#,
    ),
    (
        "_normalized_sum",
        r#"
def _normalized_sum(x):
    """sum(x) / (numel + 1e-9)."""
    return _scalar(_f64(x).sum() / (x.numel() + 1e-9), x)
"#,
    ),
    (
        "_l1_norm",
        r#"
def _l1_norm(x):
    """sum(|x|) / (numel + 1e-9): a mean absolute value."""
    return _scalar(_f64(x).abs().sum() / (x.numel() + 1e-9), x)
"#,
    ),
    (
        "_softmax_along_0",
        r#"
def _softmax_along_0(x, log):
    """(Log-)softmax along the first axis (a 0-d item is one row of one column); a column's
    maximum ignores NaN, whose exponential then poisons the column."""
    if x.numel() == 0:
        return x.clone()
    rows = x.shape[0] if x.dim() > 0 else 1
    m = x.reshape(rows, -1)
    top = torch.where(torch.isnan(m), torch.full_like(m, -math.inf), m).amax(dim=0)
    shifted = m - top
    e = torch.exp(shifted)
    total = _f64(e).sum(dim=0)
    out = _f64(shifted) - torch.log(total) if log else _f64(e) / total
    return out.to(torch.float32).reshape(x.shape)
"#,
    ),
    (
        "_softmax",
        r#"
def _softmax(x):
    return _softmax_along_0(x, False)
"#,
    ),
    (
        "_sigmoid",
        r#"
def _sigmoid(x):
    e = torch.exp(-x.abs())
    one = torch.ones_like(x)
    return torch.where(x >= 0, one / (one + e), e / (one + e))
"#,
    ),
    (
        "_logsoftmax",
        r#"
def _logsoftmax(x):
    return _softmax_along_0(x, True)
"#,
    ),
    (
        "_sqrt",
        r#"
def _sqrt(x):
    """sqrt(max(x, 0)); NaN stays NaN."""
    return torch.where(x <= 0, torch.zeros_like(x), torch.sqrt(x))
"#,
    ),
    (
        "_neg",
        r#"
def _neg(x):
    return -x
"#,
    ),
    (
        "_min_max",
        r#"
def _min_max(x):
    """(x - min) / (max - min + 1e-9) in float64; all NaN when x holds a NaN."""
    if x.numel() == 0:
        return x.clone()
    if torch.isnan(x).any():
        return torch.full_like(x, math.nan)
    lo = _f64(x.min())
    hi = _f64(x.max())
    return ((_f64(x) - lo) / (hi - lo + 1e-9)).to(torch.float32)
"#,
    ),
    (
        "_mean",
        r#"
def _mean(x):
    return _scalar(_mean64(x), x)
"#,
    ),
    (
        "_std",
        r#"
def _std(x):
    return _scalar(_std64(x), x)
"#,
    ),
    (
        "_sum",
        r#"
def _sum(x):
    return _scalar(_f64(x).sum(), x)
"#,
    ),
    (
        "_size",
        r#"
def _size(x):
    """The number of elements."""
    return _scalar(float(x.numel()), x)
"#,
    ),
    (
        "_total",
        r#"
def _total(items):
    """The list-level op `total`: one item, the sum over the items of each item's mean."""
    return [_scalar(sum(_mean64(x) for x in items), items[0])]
"#,
    ),
    (
        "_broadcast",
        r#"
def _broadcast(f, name, a, b):
    """f(a, b) element-wise on equal shapes, or with a one-element operand broadcast (the result
    takes the other operand's shape; of two one-element operands, the one with more axes)."""
    if a.shape == b.shape:
        return f(a, b)
    if a.numel() == 1 and b.numel() == 1:
        shape = a.shape if a.dim() >= b.dim() else b.shape
        return f(a.reshape(()), b.reshape(())).reshape(shape)
    if a.numel() == 1:
        return f(a.reshape(()), b)
    if b.numel() == 1:
        return f(a, b.reshape(()))
    raise _NoValue(f"`{name}` needs equal shapes or a one-element operand, "
                   f"got {tuple(a.shape)} and {tuple(b.shape)}")
"#,
    ),
    ("_add", ""),
    ("_sub", ""),
    ("_mul", ""),
    (
        "_matmul",
        r#"
def _matmul(a, b):
    """The matrix product of (m x k) and (k x n) items, accumulated in float64; else a scalar
    product when one side has one element."""
    if a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]:
        return (_f64(a) @ _f64(b)).to(torch.float32)
    if a.numel() == 1 or b.numel() == 1:
        return _broadcast(torch.mul, "matmul", a, b)
    raise _NoValue(f"`matmul` needs (m x k) and (k x n) items or a one-element operand, "
                   f"got {tuple(a.shape)} and {tuple(b.shape)}")
"#,
    ),
    (
        "_value",
        r#"
def _value(items):
    """The value of a list: the mean over the items of each item's mean, in float64."""
    return sum(_mean64(x) for x in items) / len(items)
"#,
    ),
];
