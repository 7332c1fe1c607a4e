//! Symbolic proxy expressions: the tree the search builds, its text form, its canonical form,
//! its evaluation over per-layer lists of arrays, and the import of reference tree genotypes.
//!
//! # Text form
//!
//! `add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))`: inputs are bare names
//! ([`Input`]), operations are calls with one (unary, [`UnaryOp`]) or two (binary, [`BinaryOp`])
//! arguments separated by a comma. Whitespace is allowed anywhere between tokens. `softmax` is
//! both an input and a unary op: `softmax` alone is the input, `softmax(...)` the op. The
//! printer ([`fmt::Display`]) writes canonical op names and `", "` between binary arguments;
//! the parser ([`parse`], [`FromStr`]) also accepts the reference op names
//! (`element_wise_revert`, ...) and ignores ASCII case, so `parse(print(e)) == e` always holds.
//!
//! # Values
//!
//! Every input is a list of arrays (one per layer or module). A unary op maps over the items; a
//! binary op pairs items by position up to the shorter list (surplus items are dropped) and
//! combines each pair with [`apply_binary`]. The value of an expression is the mean over items of
//! each item's mean, accumulated in `f64` ([`reduce`]).
//!
//! `disconnect` is the "no value" op: a subtree with a `disconnect` on every path to its root
//! ([`Expr::is_disconnected`]) is dropped by the binary op above it, which returns its other
//! operand unchanged (also for `sub`, as in the reference). A binary op with two disconnected
//! operands, and a disconnected root, are invalid ([`EvalError`]). Disconnected branches are
//! never evaluated.
//!
//! # Reference genotypes
//!
//! The reference LPZero tree `{input_geno: [x, y], op_geno: [[u1, u2], [v1, v2], bin]}` is the
//! expression `bin(mean(u2(u1(x))), mean(v2(v1(y))))` ([`from_tree_genotype`]): each branch item is
//! reduced by its mean before the binary op, exactly like the reference's `convert_to_float`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::chain::apply_chain;
use super::ops::{apply_binary, BinaryOp, OpError, UnaryOp, UnknownName};
use crate::array::Array;
use crate::report::clip;

/// One of the five proxy inputs (spec §4.1), each a list of arrays per architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// `act`: activation outputs (BERT: every GELU output; GPT-2: every Conv1D output).
    Act,
    /// `head`: per-layer first projection output (BERT: q / `in`; GPT-2: as `act`).
    Head,
    /// `softmax`: per-layer attention-probability (softmax module) outputs.
    Softmax,
    /// `grad`: gradients of the mixer / Conv1D weights after one backward pass.
    Grad,
    /// `weight`: the mixer / Conv1D weights themselves.
    Weight,
}

impl Input {
    /// All inputs in the reference registration order (the sampler draws uniformly from it;
    /// integer genotypes index into it).
    pub const ALL: [Input; 5] = [
        Input::Act,
        Input::Head,
        Input::Softmax,
        Input::Grad,
        Input::Weight,
    ];

    /// Position in [`Input::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The input at position `i` of [`Input::ALL`], or `None` when `i > 4`.
    pub fn from_index(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// The canonical name used in expressions, files and serde.
    pub fn name(self) -> &'static str {
        match self {
            Input::Act => "act",
            Input::Head => "head",
            Input::Softmax => "softmax",
            Input::Grad => "grad",
            Input::Weight => "weight",
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Input {
    type Err = UnknownName;

    /// Accepts the canonical name, ASCII case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|i| s.eq_ignore_ascii_case(i.name()))
            .ok_or_else(|| UnknownName {
                kind: "input",
                name: s.to_string(),
            })
    }
}

impl Serialize for Input {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A proxy expression: a tree of inputs, unary ops and binary ops.
///
/// There is no separate reduction node: the `mean` unary op reduces each item to a scalar, and
/// the final value of any expression is the mean of means ([`reduce`]). Serialised (serde) as its
/// text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// One of the five input lists.
    Input(Input),
    /// A unary op applied to every item of its argument.
    Unary(UnaryOp, Box<Expr>),
    /// A binary op applied to positionally paired items of its two arguments.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The leaf `input`.
    pub fn input(input: Input) -> Self {
        Expr::Input(input)
    }

    /// `op(arg)`.
    pub fn unary(op: UnaryOp, arg: Expr) -> Self {
        Expr::Unary(op, Box::new(arg))
    }

    /// `op(left, right)`.
    pub fn binary(op: BinaryOp, left: Expr, right: Expr) -> Self {
        Expr::Binary(op, Box::new(left), Box::new(right))
    }

    /// Parses the text form (see the module docs); same as [`parse`].
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse(text)
    }

    /// True when this subtree has no value because every path from it to an input passes through
    /// `disconnect` (a `disconnect` node, or a unary op above one). A binary op is never
    /// disconnected itself: with one disconnected operand it is its other operand, with two it is
    /// invalid.
    pub fn is_disconnected(&self) -> bool {
        match self {
            Expr::Input(_) => false,
            Expr::Unary(UnaryOp::Disconnect, _) => true,
            Expr::Unary(_, x) => x.is_disconnected(),
            Expr::Binary(..) => false,
        }
    }

    /// True when every item of this expression's value is statically known to be a 0-d scalar:
    /// the result of a reduction, an element-wise (shape-keeping) op of a scalar, or a binary op
    /// of two scalars. Inputs are never considered scalar.
    pub fn is_scalar(&self) -> bool {
        match self {
            Expr::Input(_) => false,
            Expr::Unary(UnaryOp::Disconnect, _) => false,
            Expr::Unary(op, x) => op.is_reduction() || x.is_scalar(),
            Expr::Binary(_, a, b) => match (a.is_disconnected(), b.is_disconnected()) {
                (true, false) => b.is_scalar(),
                (false, true) => a.is_scalar(),
                _ => a.is_scalar() && b.is_scalar(),
            },
        }
    }

    /// Number of nodes (inputs and ops).
    pub fn size(&self) -> usize {
        match self {
            Expr::Input(_) => 1,
            Expr::Unary(_, x) => 1 + x.size(),
            Expr::Binary(_, a, b) => 1 + a.size() + b.size(),
        }
    }

    /// Number of nodes on the longest root-to-leaf path (an input alone has depth 1).
    pub fn depth(&self) -> usize {
        match self {
            Expr::Input(_) => 1,
            Expr::Unary(_, x) => 1 + x.depth(),
            Expr::Binary(_, a, b) => 1 + a.depth().max(b.depth()),
        }
    }

    /// The distinct inputs named by the leaves, in order of first appearance (left to right).
    /// Includes inputs under disconnected branches; call it on [`canonical`] to get only the
    /// inputs evaluation actually reads.
    pub fn inputs(&self) -> Vec<Input> {
        fn walk(e: &Expr, out: &mut Vec<Input>) {
            match e {
                Expr::Input(i) => {
                    if !out.contains(i) {
                        out.push(*i);
                    }
                }
                Expr::Unary(_, x) => walk(x, out),
                Expr::Binary(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

impl fmt::Display for Expr {
    /// Writes the text form, e.g. `add(mean(head), mean(neg(act)))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Input(i) => write!(f, "{i}"),
            Expr::Unary(op, x) => write!(f, "{op}({x})"),
            Expr::Binary(op, a, b) => write!(f, "{op}({a}, {b})"),
        }
    }
}

impl FromStr for Expr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A malformed expression or genotype text: where (byte offset into the text) and what was
/// expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at byte {pos}: {message}")]
pub struct ParseError {
    /// Byte offset of the offending token (the text length when the input ended too early).
    pub pos: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

fn perr(pos: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        pos,
        message: message.into(),
    }
}

/// Deepest nesting the parsers accept (guards the recursion against hostile input).
const MAX_DEPTH: usize = 256;

/// A position in a text being parsed. Whole characters are consumed (names may hold non-ASCII
/// letters, which are then reported whole as unknown names), so `pos` is always a char
/// boundary.
#[derive(Clone, Copy)]
struct Cursor<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Cursor<'s> {
    fn new(src: &'s str) -> Self {
        Self { src, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b) if b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// The character at the cursor.
    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    /// Consumes a run of letters, digits and `_` (any script, so a name such as `héad` is read
    /// whole) and returns it (possibly empty).
    fn word(&mut self) -> &'s str {
        let start = self.pos;
        while let Some(ch) = self
            .peek_char()
            .filter(|&ch| ch.is_alphanumeric() || ch == '_')
        {
            self.pos += ch.len_utf8();
        }
        &self.src[start..self.pos]
    }

    /// Describes what is at the cursor, for error messages.
    fn found(&self) -> String {
        match self.src[self.pos..].chars().next() {
            None => "end of input".to_string(),
            Some(c) => format!("`{c}`"),
        }
    }

    /// "expected WHAT, found X" at the cursor.
    fn expected(&self, what: &str) -> ParseError {
        perr(self.pos, format!("expected {what}, found {}", self.found()))
    }
}

/// Parses the expression text form (see the module docs).
///
/// Errors carry the byte offset of the problem: an unknown name (at its first byte), a missing
/// `(`, `,` or `)` (where it was expected), a wrong number of arguments (at the extra `,` or the
/// early `)`), arguments given to an input (at its `(`), trailing text after a complete
/// expression (at its first byte), or an empty text.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut c = Cursor::new(text);
    let e = parse_expr(&mut c, 0)?;
    c.skip_ws();
    if !c.at_end() {
        return Err(perr(
            c.pos,
            format!(
                "unexpected trailing input {}: expected end of input after a complete expression",
                c.found()
            ),
        ));
    }
    Ok(e)
}

fn unknown_name(pos: usize, name: &str) -> ParseError {
    let inputs: Vec<&str> = Input::ALL.iter().map(|i| i.name()).collect();
    let unary: Vec<&str> = UnaryOp::ALL.iter().map(|o| o.name()).collect();
    let binary: Vec<&str> = BinaryOp::ALL.iter().map(|o| o.name()).collect();
    perr(
        pos,
        format!(
            "unknown name `{}`: expected an input ({}), a unary op ({}) or a binary op ({})",
            clip(name),
            inputs.join(", "),
            unary.join(", "),
            binary.join(", ")
        ),
    )
}

fn parse_expr(c: &mut Cursor<'_>, depth: usize) -> Result<Expr, ParseError> {
    c.skip_ws();
    let start = c.pos;
    if depth > MAX_DEPTH {
        return Err(perr(
            start,
            format!("expression nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if !c
        .peek_char()
        .is_some_and(|ch| ch.is_alphabetic() || ch == '_')
    {
        return Err(c.expected("an input name or an op call"));
    }
    let name = c.word();
    c.skip_ws();
    if c.peek() != Some(b'(') {
        if let Ok(input) = name.parse::<Input>() {
            return Ok(Expr::Input(input));
        }
        if name.parse::<UnaryOp>().is_ok() || name.parse::<BinaryOp>().is_ok() {
            return Err(c.expected(&format!("`(` after op `{name}`")));
        }
        return Err(unknown_name(start, name));
    }
    let open = c.pos;
    c.pos += 1;
    if let Ok(op) = name.parse::<UnaryOp>() {
        let arg = parse_expr(c, depth + 1)?;
        c.skip_ws();
        return match c.peek() {
            Some(b')') => {
                c.pos += 1;
                Ok(Expr::unary(op, arg))
            }
            Some(b',') => Err(perr(
                c.pos,
                format!("unary op `{op}` takes one argument: expected `)`, found `,`"),
            )),
            _ => Err(c.expected(&format!("`)` closing `{op}(` at byte {open}"))),
        };
    }
    if let Ok(op) = name.parse::<BinaryOp>() {
        let left = parse_expr(c, depth + 1)?;
        c.skip_ws();
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b')') => {
                return Err(perr(
                    c.pos,
                    format!("binary op `{op}` takes two arguments: expected `,`, found `)`"),
                ))
            }
            _ => return Err(c.expected(&format!("`,` between the two arguments of `{op}`"))),
        }
        let right = parse_expr(c, depth + 1)?;
        c.skip_ws();
        return match c.peek() {
            Some(b')') => {
                c.pos += 1;
                Ok(Expr::binary(op, left, right))
            }
            Some(b',') => Err(perr(
                c.pos,
                format!("binary op `{op}` takes two arguments: expected `)`, found `,`"),
            )),
            _ => Err(c.expected(&format!("`)` closing `{op}(` at byte {open}"))),
        };
    }
    if let Ok(input) = name.parse::<Input>() {
        return Err(perr(
            open,
            format!("input `{input}` takes no arguments: unexpected `(`"),
        ));
    }
    Err(unknown_name(start, name))
}

// ---------------------------------------------------------------------------------------------
// Canonical form
// ---------------------------------------------------------------------------------------------

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
        }
    }
    if op.is_commutative() && a.to_string() > b.to_string() {
        return Expr::binary(op, b, a);
    }
    Expr::binary(op, a, b)
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// Where an expression reads its input lists from (a probe, a test fixture, ...).
pub trait InputSource: Sync {
    /// The list for `which`, or `None` when this source does not provide it.
    fn input(&self, which: Input) -> Option<&[Array]>;
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
    fn input(&self, which: Input) -> Option<&[Array]> {
        Some(match which {
            Input::Act => self.act,
            Input::Head => self.head,
            Input::Softmax => self.softmax,
            Input::Grad => self.grad,
            Input::Weight => self.weight,
        })
    }
}

impl InputSource for HashMap<Input, Vec<Array>> {
    fn input(&self, which: Input) -> Option<&[Array]> {
        self.get(&which).map(Vec::as_slice)
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
        Expr::Input(i) => {
            let list = inputs.input(*i).ok_or(EvalError::MissingInput(*i))?;
            if list.is_empty() {
                return Err(EvalError::EmptyInput(*i));
            }
            Ok(Cow::Borrowed(list))
        }
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
    if items.is_empty() {
        return Err(EvalError::EmptyResult);
    }
    let total: f64 = items.iter().map(Array::mean_f64).sum();
    Ok(total / items.len() as f64)
}

/// Evaluates `expr` on one architecture's inputs: [`reduce`] of [`eval_list`].
pub fn eval(expr: &Expr, inputs: &dyn InputSource) -> Result<f64, EvalError> {
    reduce(&eval_cow(expr, inputs)?)
}

// ---------------------------------------------------------------------------------------------
// Reference tree genotypes
// ---------------------------------------------------------------------------------------------

/// A reference LPZero tree genotype (spec §4.4): two inputs, a chain of unary ops per branch
/// (applied first to last), and the binary op that combines the branch means.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TreeGenotype {
    /// Branch inputs (`input_geno`).
    pub inputs: [Input; 2],
    /// Unary op chains per branch, in application order (`op_geno[0]`, `op_geno[1]`).
    pub unary: [Vec<UnaryOp>; 2],
    /// The binary op (`op_geno[2]`).
    pub binary: BinaryOp,
}

/// Names of the published genotypes known to [`builtin_genotype`].
pub const BUILTIN_GENOTYPES: [&str; 3] = ["lpzero_bert", "lpzero_csv_bert", "lpzero_gpt2"];

impl TreeGenotype {
    /// Builds a genotype from reference integers: input indices into [`Input::ALL`], HEAD unary
    /// indices per branch and the binary index. `None` when an index is out of range.
    pub fn from_indices(inputs: [usize; 2], unary: [&[usize]; 2], binary: usize) -> Option<Self> {
        let chain = |ops: &[usize]| {
            ops.iter()
                .map(|&i| UnaryOp::from_index(i))
                .collect::<Option<Vec<_>>>()
        };
        Some(Self {
            inputs: [Input::from_index(inputs[0])?, Input::from_index(inputs[1])?],
            unary: [chain(unary[0])?, chain(unary[1])?],
            binary: BinaryOp::from_index(binary)?,
        })
    }

    /// The published genotypes (spec §4.8):
    /// * `lpzero_bert`: `[head, act]`, `[[15, 3], [8, 13]]`, sum (the final BERT proxy);
    /// * `lpzero_csv_bert`: `[softmax, head]`, `[[19, 14], [8, 6]]`, sum (the BERT CSV column);
    /// * `lpzero_gpt2`: `[weight, grad]`, `[[3, 10], [11, 3]]`, sum (the final GPT-2 proxy).
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "lpzero_bert" => Self::from_indices([1, 0], [&[15, 3], &[8, 13]], 0),
            "lpzero_csv_bert" => Self::from_indices([2, 1], [&[19, 14], &[8, 6]], 0),
            "lpzero_gpt2" => Self::from_indices([4, 3], [&[3, 10], &[11, 3]], 0),
            _ => None,
        }
    }

    /// The expression `binary(mean(chain0(input0)), mean(chain1(input1)))`.
    pub fn to_expr(&self) -> Expr {
        from_tree_genotype(self.inputs, self.unary.clone(), self.binary)
    }

    /// Parses any of the accepted genotype forms; same as [`parse_tree_genotype`].
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_tree_genotype(text)
    }

    /// The reference dictionary `{"input_geno": [names], "op_geno": [[idx..], [idx..], bin]}`.
    pub fn reference_json(&self) -> serde_json::Value {
        let idx = |ops: &[UnaryOp]| ops.iter().map(|o| o.index()).collect::<Vec<_>>();
        serde_json::json!({
            "input_geno": [self.inputs[0].name(), self.inputs[1].name()],
            "op_geno": [idx(&self.unary[0]), idx(&self.unary[1]), self.binary.index()],
        })
    }
}

impl fmt::Display for TreeGenotype {
    /// Writes the text form `INPUT:(head, act)TREE:(neg|pow2~frobenius_norm|logsoftmax)BINARY:(add)`
    /// (ops of a branch joined by `|`, branches by `~`), which [`parse_tree_genotype`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = |ops: &[UnaryOp]| ops.iter().map(|o| o.name()).collect::<Vec<_>>().join("|");
        write!(
            f,
            "INPUT:({}, {})TREE:({}~{})BINARY:({})",
            self.inputs[0],
            self.inputs[1],
            chain(&self.unary[0]),
            chain(&self.unary[1]),
            self.binary
        )
    }
}

impl FromStr for TreeGenotype {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_tree_genotype(s)
    }
}

/// The expression of a reference tree genotype: `binary(mean(u_n(…u_1(x))), mean(v_m(…v_1(y))))`
/// with `[x, y] = inputs` and `[[u_1…u_n], [v_1…v_m]] = unary` (applied first to last). The
/// per-branch `mean` reproduces the reference's reduction of every item before the binary op.
pub fn from_tree_genotype(inputs: [Input; 2], unary: [Vec<UnaryOp>; 2], binary: BinaryOp) -> Expr {
    let [first, second] = unary;
    let branch = |input: Input, ops: Vec<UnaryOp>| {
        let chain = ops
            .into_iter()
            .fold(Expr::Input(input), |e, op| Expr::unary(op, e));
        Expr::unary(UnaryOp::Mean, chain)
    };
    Expr::binary(binary, branch(inputs[0], first), branch(inputs[1], second))
}

/// The expression of a published genotype (see [`TreeGenotype::builtin`] and
/// [`BUILTIN_GENOTYPES`]), or `None` for an unknown name.
pub fn builtin_genotype(name: &str) -> Option<Expr> {
    TreeGenotype::builtin(name).map(|g| g.to_expr())
}

/// Parses a reference tree genotype. Accepted forms (whitespace-tolerant; names are canonical
/// or reference names in any ASCII case; wherever an op or input is expected an integer index
/// is accepted too: HEAD unary index 0–20, binary index 0–3, input index 0–4 into
/// [`Input::ALL`]):
///
/// 1. Text form, as logged by the reference and printed by [`TreeGenotype`]'s `Display`:
///    `INPUT:(head, act)TREE:(...)BINARY:(add)`, with the `TREE` body one of
///    * nested lists `[[15, 3], [8, 13]]`;
///    * branches separated by `~`, ops by `|`, `-` or `,`: `neg|pow2~frobenius_norm|logsoftmax`;
///    * the reference crossover/mutation log form, ops by `-`, branches by `|`:
///      `element_wise_revert-element_wise_pow|frobenius_norm-logsoftmax`;
///    * the reference generation log form, a flat `|`- or `,`-separated list split in half:
///      `element_wise_revert|element_wise_pow|frobenius_norm|logsoftmax`.
/// 2. `key=value` pairs (`:` also works), separated by whitespace, `,` or `;`:
///    `inputs=[1,0] ops=[[15,3],[8,13]] bin=0`. Keys: `inputs`/`input`/`input_geno`,
///    `ops`/`op_geno`/`tree`, `bin`/`binary`. `ops` may carry the binary op as a third element.
/// 3. A JSON object or Python dict with the same keys:
///    `{"input_geno":["head","act"],"op_geno":[[15,3],[8,13],0]}`.
///
/// Lists may use `[...]` or `(...)`, items may be quoted with `"` or `'`.
pub fn parse_tree_genotype(text: &str) -> Result<TreeGenotype, ParseError> {
    let mut c = Cursor::new(text);
    c.skip_ws();
    let genotype = if c.peek() == Some(b'{') {
        parse_geno_dict(&mut c)?
    } else if looks_like_text_form(c) {
        parse_geno_text(&mut c)?
    } else {
        parse_geno_pairs(&mut c)?
    };
    c.skip_ws();
    if !c.at_end() {
        return Err(perr(
            c.pos,
            format!(
                "unexpected trailing input {}: expected end of the genotype",
                c.found()
            ),
        ));
    }
    Ok(genotype)
}

/// A loosely typed genotype value: a bare or quoted word, or a list, with its byte offset.
enum GVal {
    Atom(usize, String),
    List(usize, Vec<GVal>),
}

impl GVal {
    fn pos(&self) -> usize {
        match self {
            GVal::Atom(p, _) | GVal::List(p, _) => *p,
        }
    }
}

fn parse_gval(c: &mut Cursor<'_>, depth: usize) -> Result<GVal, ParseError> {
    c.skip_ws();
    let start = c.pos;
    if depth > MAX_DEPTH {
        return Err(perr(start, "genotype nested too deeply"));
    }
    match c.peek() {
        Some(open @ (b'[' | b'(')) => {
            let close = if open == b'[' { b']' } else { b')' };
            c.pos += 1;
            let mut items = Vec::new();
            loop {
                c.skip_ws();
                match c.peek() {
                    Some(b) if b == close => {
                        c.pos += 1;
                        return Ok(GVal::List(start, items));
                    }
                    Some(b',') => c.pos += 1,
                    None => {
                        return Err(c.expected(&format!(
                            "`{}` closing the list opened at byte {start}",
                            close as char
                        )))
                    }
                    _ => items.push(parse_gval(c, depth + 1)?),
                }
            }
        }
        Some(quote @ (b'"' | b'\'')) => {
            c.pos += 1;
            let body_start = c.pos;
            match c.src[body_start..].find(quote as char) {
                Some(len) => {
                    c.pos = body_start + len + 1;
                    Ok(GVal::Atom(
                        start,
                        c.src[body_start..body_start + len].trim().to_string(),
                    ))
                }
                None => Err(perr(
                    c.src.len(),
                    format!(
                        "expected a closing {} for the quote at byte {start}",
                        quote as char
                    ),
                )),
            }
        }
        _ => {
            let w = c.word();
            if w.is_empty() {
                return Err(c.expected("a name, an index or a list"));
            }
            Ok(GVal::Atom(start, w.to_string()))
        }
    }
}

/// The text of an atom; a list is an error naming `what` was expected.
fn atom<'v>(v: &'v GVal, what: &str) -> Result<&'v str, ParseError> {
    match v {
        GVal::Atom(_, s) => Ok(s),
        GVal::List(p, _) => Err(perr(*p, format!("expected {what}, found a list"))),
    }
}

/// The items of a list with exactly `n` items (`n = None`: any length).
fn list<'v>(v: &'v GVal, what: &str, n: Option<usize>) -> Result<&'v [GVal], ParseError> {
    match v {
        GVal::List(p, items) => match n {
            Some(n) if items.len() != n => Err(perr(
                *p,
                format!(
                    "expected {what} ({n} items), found a list of {} items",
                    items.len()
                ),
            )),
            _ => Ok(items),
        },
        GVal::Atom(p, s) => Err(perr(*p, format!("expected {what}, found `{}`", clip(s)))),
    }
}

fn index_of(s: &str) -> Option<usize> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn gval_input(v: &GVal) -> Result<Input, ParseError> {
    let s = atom(v, "an input")?;
    let found = match index_of(s) {
        Some(i) => Input::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown input `{}`: expected act, head, softmax, grad, weight or an index 0-4",
                clip(s)
            ),
        )
    })
}

fn gval_unary(v: &GVal) -> Result<UnaryOp, ParseError> {
    let s = atom(v, "a unary op")?;
    let found = match index_of(s) {
        Some(i) => UnaryOp::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown unary op `{}`: expected a unary op name or an index 0-20",
                clip(s)
            ),
        )
    })
}

fn gval_binary(v: &GVal) -> Result<BinaryOp, ParseError> {
    // A one-item list such as `(0)` or `[add]` is accepted as its item.
    let mut v = v;
    while let GVal::List(_, items) = v {
        if items.len() != 1 {
            break;
        }
        v = &items[0];
    }
    let s = atom(v, "a binary op")?;
    let found = match index_of(s) {
        Some(i) => BinaryOp::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown binary op `{}`: expected add, sub, mul, matmul or an index 0-3",
                clip(s)
            ),
        )
    })
}

fn gval_inputs(v: &GVal) -> Result<[Input; 2], ParseError> {
    let items = list(v, "a list of two inputs", Some(2))?;
    Ok([gval_input(&items[0])?, gval_input(&items[1])?])
}

fn gval_chain(v: &GVal) -> Result<Vec<UnaryOp>, ParseError> {
    list(v, "a list of unary ops", None)?
        .iter()
        .map(gval_unary)
        .collect()
}

/// The two unary chains of a genotype and, when the ops list carried it, the binary op with the
/// byte offset where it was written.
type OpsField = ([Vec<UnaryOp>; 2], Option<(BinaryOp, usize)>);

/// `[[u..], [v..]]` or `[[u..], [v..], bin]`.
fn gval_ops(v: &GVal) -> Result<OpsField, ParseError> {
    let items = list(v, "two lists of unary ops", None)?;
    if items.len() != 2 && items.len() != 3 {
        return Err(perr(
            v.pos(),
            format!(
                "expected two lists of unary ops (and optionally the binary op), found {} items",
                items.len()
            ),
        ));
    }
    let chains = [gval_chain(&items[0])?, gval_chain(&items[1])?];
    let bin = match items.get(2) {
        Some(b) => Some((gval_binary(b)?, b.pos())),
        None => None,
    };
    Ok((chains, bin))
}

/// The fields of forms 2 and 3, filled key by key.
#[derive(Default)]
struct GenoFields {
    inputs: Option<[Input; 2]>,
    ops: Option<OpsField>,
    bin: Option<(BinaryOp, usize)>,
}

impl GenoFields {
    fn set(&mut self, key_pos: usize, key: &str, value: &GVal) -> Result<(), ParseError> {
        let duplicate = || perr(key_pos, format!("key `{key}` given twice"));
        match key.to_ascii_lowercase().as_str() {
            "inputs" | "input" | "input_geno" => {
                if self.inputs.is_some() {
                    return Err(duplicate());
                }
                self.inputs = Some(gval_inputs(value)?);
            }
            "ops" | "op_geno" | "tree" => {
                if self.ops.is_some() {
                    return Err(duplicate());
                }
                self.ops = Some(gval_ops(value)?);
            }
            "bin" | "binary" => {
                if self.bin.is_some() {
                    return Err(duplicate());
                }
                self.bin = Some((gval_binary(value)?, value.pos()));
            }
            _ => {
                return Err(perr(
                    key_pos,
                    format!("unknown key `{key}`: expected inputs (input_geno), ops (op_geno) or bin (binary)"),
                ))
            }
        }
        Ok(())
    }

    fn finish(self, end: usize) -> Result<TreeGenotype, ParseError> {
        let inputs = self
            .inputs
            .ok_or_else(|| perr(end, "missing key `inputs` (or `input_geno`)"))?;
        let (unary, bin_in_ops) = self
            .ops
            .ok_or_else(|| perr(end, "missing key `ops` (or `op_geno`)"))?;
        let binary = match (self.bin, bin_in_ops) {
            (Some((a, pos)), Some((b, _))) if a != b => {
                return Err(perr(
                    pos,
                    format!("binary op `{a}` contradicts `{b}` given in the ops list"),
                ))
            }
            (Some((b, _)), _) | (None, Some((b, _))) => b,
            (None, None) => {
                return Err(perr(
                    end,
                    "missing the binary op (key `bin`, or a third item of `ops`)",
                ))
            }
        };
        Ok(TreeGenotype {
            inputs,
            unary,
            binary,
        })
    }
}

/// Form 3: `{key: value, ...}`.
fn parse_geno_dict(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    c.pos += 1; // `{`
    let mut fields = GenoFields::default();
    loop {
        c.skip_ws();
        match c.peek() {
            Some(b'}') => {
                c.pos += 1;
                break;
            }
            Some(b',') => c.pos += 1,
            None => return Err(c.expected("`}` closing the genotype object")),
            _ => {
                let key = parse_gval(c, 0)?;
                let key_text = atom(&key, "a key")?.to_string();
                c.skip_ws();
                if !matches!(c.peek(), Some(b':' | b'=')) {
                    return Err(c.expected(&format!("`:` after key `{key_text}`")));
                }
                c.pos += 1;
                let value = parse_gval(c, 0)?;
                fields.set(key.pos(), &key_text, &value)?;
            }
        }
    }
    fields.finish(c.pos)
}

/// Form 2: `key=value key=value ...`.
fn parse_geno_pairs(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    let mut fields = GenoFields::default();
    loop {
        c.skip_ws();
        match c.peek() {
            None => break,
            Some(b',' | b';') => c.pos += 1,
            _ => {
                let key_pos = c.pos;
                let key = c.word();
                if key.is_empty() {
                    return Err(c.expected("a genotype: `INPUT:(...)TREE:(...)BINARY:(...)`, `{...}` or `key=value` pairs"));
                }
                c.skip_ws();
                if !matches!(c.peek(), Some(b'=' | b':')) {
                    return Err(c.expected(&format!("`=` after key `{key}`")));
                }
                c.pos += 1;
                let value = parse_gval(c, 0)?;
                fields.set(key_pos, key, &value)?;
            }
        }
    }
    fields.finish(c.pos)
}

/// True when the text starts with `INPUT` `:` `(` (form 1).
fn looks_like_text_form(mut c: Cursor<'_>) -> bool {
    let w = c.word();
    c.skip_ws();
    if !w.eq_ignore_ascii_case("input") || c.peek() != Some(b':') {
        return false;
    }
    c.pos += 1;
    c.skip_ws();
    c.peek() == Some(b'(')
}

/// Consumes `KEYWORD :` (case-insensitive) and leaves the cursor before the `(`.
fn expect_section(c: &mut Cursor<'_>, keyword: &str) -> Result<(), ParseError> {
    c.skip_ws();
    let start = c.pos;
    let w = c.word();
    if !w.eq_ignore_ascii_case(keyword) {
        c.pos = start;
        return Err(c.expected(&format!("`{keyword}:`")));
    }
    c.skip_ws();
    if c.peek() != Some(b':') {
        return Err(c.expected(&format!("`:` after `{keyword}`")));
    }
    c.pos += 1;
    c.skip_ws();
    if c.peek() != Some(b'(') {
        return Err(c.expected(&format!("`(` after `{keyword}:`")));
    }
    Ok(())
}

/// Form 1: `INPUT:(x, y)TREE:(...)BINARY:(b)`.
fn parse_geno_text(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    expect_section(c, "INPUT")?;
    let inputs = gval_inputs(&parse_gval(c, 0)?)?;
    expect_section(c, "TREE")?;
    let unary = parse_tree_body(c)?;
    expect_section(c, "BINARY")?;
    let binary = gval_binary(&parse_gval(c, 0)?)?;
    Ok(TreeGenotype {
        inputs,
        unary,
        binary,
    })
}

/// The `( ... )` after `TREE:` (cursor on the `(`); see [`parse_tree_genotype`] for the forms.
fn parse_tree_body(c: &mut Cursor<'_>) -> Result<[Vec<UnaryOp>; 2], ParseError> {
    let open = c.pos;
    c.pos += 1;
    c.skip_ws();
    if c.peek() == Some(b'[') {
        let v = parse_gval(c, 0)?;
        let items = list(&v, "two lists of unary ops", Some(2))?;
        let chains = [gval_chain(&items[0])?, gval_chain(&items[1])?];
        c.skip_ws();
        if c.peek() != Some(b')') {
            return Err(c.expected("`)` closing `TREE:(`"));
        }
        c.pos += 1;
        return Ok(chains);
    }
    enum Tok {
        Op(UnaryOp),
        Sep(u8, usize),
    }
    let mut toks = Vec::new();
    loop {
        c.skip_ws();
        match c.peek() {
            Some(b')') => {
                c.pos += 1;
                break;
            }
            Some(s @ (b'|' | b'-' | b'~' | b',')) => {
                toks.push(Tok::Sep(s, c.pos));
                c.pos += 1;
            }
            None => return Err(c.expected(&format!("`)` closing `TREE:(` at byte {open}"))),
            _ => {
                let start = c.pos;
                let w = c.word();
                if w.is_empty() {
                    return Err(c.expected("a unary op name or index"));
                }
                toks.push(Tok::Op(gval_unary(&GVal::Atom(start, w.to_string()))?));
            }
        }
    }
    let has = |sep: u8| {
        toks.iter()
            .any(|t| matches!(t, Tok::Sep(s, _) if *s == sep))
    };
    let branch_sep = if has(b'~') {
        Some(b'~')
    } else if has(b'|') && has(b'-') {
        Some(b'|')
    } else {
        None
    };
    match branch_sep {
        Some(sep) => {
            let mut branches: Vec<Vec<UnaryOp>> = vec![Vec::new()];
            for t in &toks {
                match t {
                    Tok::Op(op) => branches.last_mut().expect("non-empty").push(*op),
                    Tok::Sep(s, pos) if *s == sep => {
                        if branches.len() == 2 {
                            return Err(perr(
                                *pos,
                                format!(
                                    "TREE has exactly two branches: unexpected second `{}`",
                                    sep as char
                                ),
                            ));
                        }
                        branches.push(Vec::new());
                    }
                    Tok::Sep(..) => {}
                }
            }
            if branches.len() != 2 {
                return Err(perr(
                    open,
                    format!("TREE needs two branches separated by `{}`", sep as char),
                ));
            }
            let second = branches.pop().expect("two");
            let first = branches.pop().expect("two");
            Ok([first, second])
        }
        None => {
            let mut ops: Vec<UnaryOp> = toks
                .iter()
                .filter_map(|t| match t {
                    Tok::Op(op) => Some(*op),
                    Tok::Sep(..) => None,
                })
                .collect();
            if !ops.len().is_multiple_of(2) {
                return Err(perr(
                    open + 1,
                    format!(
                        "a TREE list without `~` is split in half between the branches, so it needs an even number of ops, found {}",
                        ops.len()
                    ),
                ));
            }
            let second = ops.split_off(ops.len() / 2);
            Ok([ops, second])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_sum_size_total() {
        let a = Array::new(vec![2, 2], vec![1.0, -2.0, 3.0, 4.0]).unwrap();
        let b = Array::new(vec![3], vec![0.5, 0.5, 2.0]).unwrap();
        let weight = vec![a.clone(), b.clone()];
        let src = Inputs {
            weight: &weight,
            ..Default::default()
        };
        let v = |t: &str| eval(&parse(t).unwrap(), &src).unwrap();
        // Per item, then the mean over the two items.
        assert_eq!(v("sum(weight)"), (6.0 + 3.0) / 2.0);
        assert_eq!(v("size(weight)"), (4.0 + 3.0) / 2.0);
        // `total` sums over items instead: Σ_items mean(item).
        assert_eq!(v("total(weight)"), 1.5 + 1.0);
        assert_eq!(v("total(size(weight))"), 7.0);
        assert_eq!(v("total(sum(abs(weight)))"), 10.0 + 3.0);
        assert_eq!(
            eval_list(&parse("total(weight)").unwrap(), &src)
                .unwrap()
                .len(),
            1
        );
        // Ops above `total` apply to its one scalar.
        assert_eq!(v("neg(total(size(weight)))"), -7.0);
        assert_eq!(v("sub(total(size(weight)), total(sum(weight)))"), 7.0 - 9.0);
        // Canonical folds that keep the value.
        for (text, folded) in [
            ("total(total(weight))", "total(weight)"),
            ("sum(total(weight))", "total(weight)"),
            ("mean(total(weight))", "total(weight)"),
            ("sum(mean(weight))", "mean(weight)"),
        ] {
            let e = parse(text).unwrap();
            assert_eq!(key(&e), folded, "{text}");
            assert_eq!(v(text), v(folded), "{text}");
        }
        // `total` is not a reference op: published genotypes cannot name it.
        assert_eq!(UnaryOp::from_index(UnaryOp::Total.index()), None);
    }

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn p(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// SplitMix64: a tiny seeded generator for the property tests.
    struct SplitMix(u64);

    impl SplitMix {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Ops the canonical rules talk about, drawn more often so the rules get exercised.
    const RULE_OPS: [UnaryOp; 15] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Pow2,
        UnaryOp::Relu,
        UnaryOp::Sqrt,
        UnaryOp::NoOp,
        UnaryOp::Mean,
        UnaryOp::FrobeniusNorm,
        UnaryOp::L1Norm,
        UnaryOp::NormalizedSum,
        UnaryOp::Disconnect,
        UnaryOp::AbsLog,
        UnaryOp::Std,
        UnaryOp::Exp,
        UnaryOp::Sigmoid,
    ];

    fn random_expr(rng: &mut SplitMix, depth: usize) -> Expr {
        let r = rng.below(10);
        if depth == 0 || r < 2 {
            Expr::Input(Input::ALL[rng.below(5)])
        } else if r < 4 {
            let op = BinaryOp::ALL[rng.below(4)];
            Expr::binary(op, random_expr(rng, depth - 1), random_expr(rng, depth - 1))
        } else {
            let op = if rng.below(2) == 0 {
                RULE_OPS[rng.below(RULE_OPS.len())]
            } else {
                UnaryOp::ALL[rng.below(UnaryOp::ALL.len())]
            };
            Expr::unary(op, random_expr(rng, depth - 1))
        }
    }

    fn random_value(rng: &mut SplitMix, specials: bool) -> f32 {
        match rng.below(20) {
            0 => 0.0,
            1 if specials => f32::NAN,
            2 if specials => 1e30,
            3 if specials => -1e30,
            4 => (rng.unit() * 1e-3) as f32,
            _ => (rng.unit() * 6.0 - 3.0) as f32,
        }
    }

    fn random_inputs(rng: &mut SplitMix) -> HashMap<Input, Vec<Array>> {
        const SHAPES: [&[usize]; 6] = [&[], &[1], &[3], &[2, 3], &[3, 2], &[2, 2]];
        // Half of the time all items share one shape so binary ops mostly succeed.
        let common = if rng.below(2) == 0 {
            Some(SHAPES[rng.below(SHAPES.len())])
        } else {
            None
        };
        // NaN and huge values in half of the input sets only, so that many results are finite.
        let specials = rng.below(2) == 0;
        let mut map = HashMap::new();
        for input in Input::ALL {
            let n = 1 + rng.below(3);
            let items = (0..n)
                .map(|_| {
                    let shape = common.unwrap_or_else(|| SHAPES[rng.below(SHAPES.len())]);
                    let len: usize = shape.iter().product();
                    let data = (0..len).map(|_| random_value(rng, specials)).collect();
                    Array::new(shape.to_vec(), data).unwrap()
                })
                .collect();
            map.insert(input, items);
        }
        map
    }

    fn same_result(a: &Result<f64, EvalError>, b: &Result<f64, EvalError>) -> bool {
        match (a, b) {
            (Ok(x), Ok(y)) => x == y || (x.is_nan() && y.is_nan()),
            (Err(_), Err(_)) => true,
            _ => false,
        }
    }

    #[test]
    fn lpzero_bert_prints_as_published() {
        let e = builtin_genotype("lpzero_bert").unwrap();
        assert_eq!(
            e.to_string(),
            "add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))"
        );
        assert_eq!(p(&e.to_string()), e);
    }

    #[test]
    fn published_genotypes() {
        let gpt2 = builtin_genotype("lpzero_gpt2").unwrap();
        assert_eq!(
            gpt2.to_string(),
            "add(mean(l1_norm(pow2(weight))), mean(pow2(softmax(grad))))"
        );
        let csv = builtin_genotype("lpzero_csv_bert").unwrap();
        assert_eq!(
            csv.to_string(),
            "add(mean(sqrt(no_op(softmax))), mean(relu(frobenius_norm(head))))"
        );
        assert!(builtin_genotype("nope").is_none());
        for name in BUILTIN_GENOTYPES {
            let g = TreeGenotype::builtin(name).unwrap();
            assert_eq!(builtin_genotype(name), Some(g.to_expr()));
            assert_eq!(TreeGenotype::parse(&g.to_string()).unwrap(), g, "{name}");
            assert_eq!(
                TreeGenotype::parse(&g.reference_json().to_string()).unwrap(),
                g,
                "{name}"
            );
            let json = serde_json::to_string(&g).unwrap();
            assert_eq!(serde_json::from_str::<TreeGenotype>(&json).unwrap(), g);
        }
        assert_eq!(
            TreeGenotype::builtin("lpzero_bert")
                .unwrap()
                .reference_json(),
            serde_json::json!({"input_geno": ["head", "act"], "op_geno": [[15, 3], [8, 13], 0]})
        );
        // Canonical forms drop the no-op and the redundant sign/means.
        assert_eq!(key(&csv), "add(frobenius_norm(head), mean(sqrt(softmax)))");
        assert_eq!(
            key(&builtin_genotype("lpzero_bert").unwrap()),
            "add(logsoftmax(frobenius_norm(act)), mean(pow2(head)))"
        );
    }

    #[test]
    fn genotype_forms_are_accepted() {
        let bert = TreeGenotype::builtin("lpzero_bert").unwrap();
        let forms = [
            "INPUT:(head, act)TREE:([[15, 3], [8, 13]])BINARY:(0)",
            "INPUT:(head, act)TREE:(neg|pow2~frobenius_norm|logsoftmax)BINARY:(add)",
            "  input : ( head , act ) tree : ( neg | pow2 ~ frobenius_norm | logsoftmax ) binary : ( add )  ",
            "INPUT:(head, act)TREE:(element_wise_revert|element_wise_pow|frobenius_norm|logsoftmax)BINARY:(element_wise_sum)",
            "INPUT:(head, act)TREE:(element_wise_revert-element_wise_pow|frobenius_norm-logsoftmax)BINARY:(element_wise_sum)",
            "INPUT:(head, act)TREE:(15|3|8|13)BINARY:(0)",
            "INPUT:(1, 0)TREE:(15, 3 ~ 8, 13)BINARY:([0])",
            "inputs=[1,0] ops=[[15,3],[8,13]] bin=0",
            "inputs = [head, act], ops = [[neg, pow2], [frobenius_norm, logsoftmax]], bin = add",
            "inputs=[1,0] ops=[[15,3],[8,13],0]",
            r#"{"input_geno":["head","act"],"op_geno":[[15,3],[8,13],0]}"#,
            "{'input_geno': ['head', 'act'], 'op_geno': [[15, 3], [8, 13], 0]}",
            r#"{"input_geno": ["head", "act"], "op_geno": [[15, 3], [8, 13]], "binary": "add"}"#,
        ];
        for f in forms {
            assert_eq!(
                parse_tree_genotype(f).unwrap_or_else(|e| panic!("{f}: {e}")),
                bert,
                "{f}"
            );
        }
        let gpt2 = TreeGenotype::builtin("lpzero_gpt2").unwrap();
        assert_eq!(
            parse_tree_genotype(r#"{"input_geno":["weight","grad"],"op_geno":[[3,10],[11,3],0]}"#)
                .unwrap(),
            gpt2
        );
        let csv = TreeGenotype::builtin("lpzero_csv_bert").unwrap();
        assert_eq!(
            parse_tree_genotype("INPUT:(softmax, head)TREE:([[19, 14], [8, 6]])BINARY:(0)")
                .unwrap(),
            csv
        );
        // Branches of other lengths, including empty ones, survive the text form.
        let odd = TreeGenotype {
            inputs: [Input::Grad, Input::Weight],
            unary: [vec![UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Mean], vec![]],
            binary: BinaryOp::Sub,
        };
        assert_eq!(parse_tree_genotype(&odd.to_string()).unwrap(), odd);
        assert_eq!(
            odd.to_expr().to_string(),
            "sub(mean(mean(exp(neg(grad)))), mean(weight))"
        );
    }

    #[test]
    fn genotype_errors_have_positions() {
        let cases: [(&str, usize); 10] = [
            ("INPUT:(head, act)TREE:([[15, 3], [8, 99]])BINARY:(0)", 37),
            ("INPUT:(head, bogus)TREE:([[15, 3], [8, 13]])BINARY:(0)", 13),
            ("INPUT:(head, act)TREE:(neg|pow2|exp)BINARY:(add)", 23),
            ("INPUT:(head, act)TREE:(neg~pow2~exp)BINARY:(add)", 31),
            ("INPUT:(head, act)TREE:(neg~pow2)BINARY:(7)", 40),
            ("INPUT:(head, act)TREE:(neg~pow2)", 32),
            ("inputs=[1,0] ops=[[15,3],[8,13]]", 32),
            ("inputs=[1,0] ops=[[15,3],[8,13],0] bin=1", 39),
            ("inputs=[1,0] colour=[[15,3],[8,13]] bin=1", 13),
            (
                r#"{"input_geno":["head","act"],"op_geno":[[15,3],[8,13],0]} x"#,
                58,
            ),
        ];
        for (text, pos) in cases {
            let err = parse_tree_genotype(text).unwrap_err();
            assert_eq!(err.pos, pos, "{text}: {err}");
        }
    }

    #[test]
    fn round_trip_examples() {
        let texts = [
            "head",
            "softmax",
            "softmax(softmax)",
            "neg(act)",
            "add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))",
            "matmul(weight, grad)",
            "sub(disconnect(grad), no_op(weight))",
            "mul(std(min_max(act)), sigmoid(invert(exp(abslog(log(relu(sqrt(normalize(l1_norm(normalized_sum(head)))))))))))",
        ];
        for t in texts {
            let e = p(t);
            assert_eq!(e.to_string(), t);
            assert_eq!(p(&e.to_string()), e);
        }
        // Whitespace, case and reference names are accepted; printing is canonical.
        let e = p("  ADD ( mean ( element_wise_pow(element_wise_revert( Head ))) ,\n\tto_mean_scalar(act) )  ");
        assert_eq!(e.to_string(), "add(mean(pow2(neg(head))), mean(act))");
        assert_eq!(p("element_wise_sum(head,act)"), p("add(head, act)"));
        // serde uses the text form.
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, "\"add(mean(pow2(neg(head))), mean(act))\"");
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
        assert!(serde_json::from_str::<Expr>("\"add(head\"").is_err());
    }

    #[test]
    fn parse_errors_have_exact_positions() {
        let cases: [(&str, usize, &str); 15] = [
            (
                "",
                0,
                "expected an input name or an op call, found end of input",
            ),
            ("   ", 3, "expected an input name or an op call"),
            ("foo(head)", 0, "unknown name `foo`"),
            ("neg(bogus)", 4, "unknown name `bogus`"),
            (
                "neg(head",
                8,
                "expected `)` closing `neg(` at byte 3, found end of input",
            ),
            ("add(head)", 8, "`add` takes two arguments: expected `,`"),
            (
                "add(head act)",
                9,
                "expected `,` between the two arguments of `add`, found `a`",
            ),
            ("neg(head, act)", 8, "`neg` takes one argument"),
            (
                "add(head, act, grad)",
                13,
                "`add` takes two arguments: expected `)`",
            ),
            ("neg(head) x", 10, "unexpected trailing input `x`"),
            ("neg(head))", 9, "unexpected trailing input `)`"),
            ("head(act)", 4, "input `head` takes no arguments"),
            ("neg", 3, "expected `(` after op `neg`, found end of input"),
            (
                "add(head, )",
                10,
                "expected an input name or an op call, found `)`",
            ),
            (
                "neg(1)",
                4,
                "expected an input name or an op call, found `1`",
            ),
        ];
        for (text, pos, msg) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.pos, pos, "{text}: {err}");
            assert!(err.message.contains(msg), "{text}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("parse error at byte {pos}: ")),
                "{err}"
            );
        }
        // Non-ASCII input is reported, not a panic.
        let err = parse("neg(héad)").unwrap_err();
        assert_eq!(err.pos, 4);
        let err = parse("neg(head)é").unwrap_err();
        assert_eq!(err.pos, 9);
        assert!(err.message.contains("`é`"), "{err}");
        // Hostile nesting is an error, not a stack overflow.
        let deep = format!("{}head{}", "neg(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn random_round_trip_and_canonical_properties() {
        let mut rng = SplitMix(0x5EED_1234);
        let mut ok = 0;
        let mut changed = 0;
        let trials = 3000;
        for _ in 0..trials {
            let e = random_expr(&mut rng, 6);
            let text = e.to_string();
            assert_eq!(parse(&text).unwrap(), e, "{text}");
            let c = canonical(&e);
            assert_eq!(canonical(&c), c, "not idempotent: {text} -> {c}");
            assert!(c.size() <= e.size(), "{text} -> {c}");
            if c != e {
                changed += 1;
            }
            for _ in 0..2 {
                let inputs = random_inputs(&mut rng);
                let a = eval(&e, &inputs);
                let b = eval(&c, &inputs);
                assert!(
                    same_result(&a, &b),
                    "{text} = {a:?} but canonical {c} = {b:?}"
                );
                if matches!(a, Ok(v) if v.is_finite()) {
                    ok += 1;
                }
            }
        }
        // The test is only meaningful when many evaluations succeed and many rules fire.
        assert!(ok > trials / 2, "only {ok} finite evaluations");
        assert!(changed > trials / 4, "only {changed} expressions changed");
    }

    #[test]
    fn canonical_rules() {
        let cases = [
            ("no_op(head)", "head"),
            ("neg(neg(head))", "head"),
            ("neg(neg(neg(head)))", "neg(head)"),
            ("abs(abs(head))", "abs(head)"),
            ("abs(neg(head))", "abs(head)"),
            ("relu(relu(head))", "relu(head)"),
            ("pow2(neg(head))", "pow2(head)"),
            ("pow2(abs(neg(head)))", "pow2(head)"),
            ("abs(pow2(head))", "pow2(head)"),
            ("relu(sigmoid(head))", "sigmoid(head)"),
            ("sqrt(relu(head))", "sqrt(head)"),
            ("abslog(neg(head))", "abslog(head)"),
            ("frobenius_norm(abs(head))", "frobenius_norm(head)"),
            ("std(neg(head))", "std(head)"),
            ("mean(frobenius_norm(act))", "frobenius_norm(act)"),
            ("mean(mean(act))", "mean(act)"),
            ("normalized_sum(mean(act))", "mean(act)"),
            ("frobenius_norm(mean(act))", "abs(mean(act))"),
            ("l1_norm(std(act))", "std(act)"),
            ("add(disconnect(head), act)", "act"),
            ("sub(disconnect(head), act)", "act"),
            ("mul(act, neg(disconnect(head)))", "act"),
            ("neg(disconnect(head))", "disconnect(head)"),
            ("sub(act, neg(head))", "add(act, head)"),
            ("add(neg(head), act)", "sub(act, head)"),
            ("mul(neg(head), neg(act))", "mul(act, head)"),
            ("add(mean(head), mean(act))", "add(mean(act), mean(head))"),
            // Not exact, so not folded.
            ("log(exp(head))", "log(exp(head))"),
            ("sqrt(pow2(head))", "sqrt(pow2(head))"),
            ("mean(head)", "mean(head)"),
            ("softmax(mean(head))", "softmax(mean(head))"),
            ("sub(mean(head), mean(act))", "sub(mean(head), mean(act))"),
            ("mean(neg(head))", "mean(neg(head))"),
            ("std(abs(head))", "std(abs(head))"),
        ];
        for (from, to) in cases {
            assert_eq!(key(&p(from)), to, "{from}");
        }
        // Equivalent expressions share a key.
        assert_eq!(
            key(&p("add(mean(pow2(neg(head))), mean(act))")),
            key(&p("add(mean(act), mean(pow2(abs(head))))"))
        );
    }

    #[test]
    fn eval_lpzero_bert_by_hand() {
        let head = vec![arr(&[2], &[1.0, -2.0]), arr(&[1, 1], &[3.0])];
        let act = vec![
            arr(&[2, 2], &[0.5, 1.0, -1.0, 2.0]),
            arr(&[3], &[4.0, 5.0, 6.0]),
            arr(&[1], &[7.0]),
        ];
        let inputs = Inputs {
            act: &act,
            head: &head,
            ..Inputs::default()
        };
        let e = builtin_genotype("lpzero_bert").unwrap();
        // Branch 2 is logsoftmax of a scalar = 0; pairs = min(2, 3) = 2 items of mean(h²).
        let want = (2.5 + 9.0) / 2.0;
        assert_eq!(eval(&e, &inputs).unwrap(), want);
        let items = eval_list(&e, &inputs).unwrap();
        assert_eq!(items, vec![Array::scalar(2.5), Array::scalar(9.0)]);
        assert_eq!(eval(&canonical(&e), &inputs).unwrap(), want);
        // Branch 2 alone is exactly zero.
        let b2 = p("mean(logsoftmax(frobenius_norm(act)))");
        assert_eq!(eval(&b2, &inputs).unwrap(), 0.0);
        // Inputs are untouched.
        assert_eq!(head[0].data(), &[1.0, -2.0]);
    }

    #[test]
    fn eval_pairs_positionally_and_reports_errors() {
        let a = vec![
            arr(&[2], &[1.0, 2.0]),
            arr(&[2], &[3.0, 4.0]),
            arr(&[2], &[100.0, 100.0]),
        ];
        let b = vec![Array::scalar(10.0), arr(&[2], &[1.0, 1.0])];
        let c = vec![arr(&[3], &[1.0, 2.0, 3.0])];
        let inputs = Inputs {
            act: &a,
            head: &b,
            weight: &c,
            ..Inputs::default()
        };
        // Items: [11, 12] (mean 11.5) and [4, 5] (mean 4.5); the third act item is dropped.
        assert_eq!(eval(&p("add(act, head)"), &inputs).unwrap(), 8.0);
        assert_eq!(eval(&p("act"), &inputs).unwrap(), (1.5 + 3.5 + 100.0) / 3.0);
        assert!(matches!(
            eval(&p("add(act, weight)"), &inputs),
            Err(EvalError::Op(OpError::Shapes { .. }))
        ));
        assert_eq!(
            eval(&p("neg(grad)"), &inputs),
            Err(EvalError::EmptyInput(Input::Grad))
        );
        assert_eq!(
            eval(&p("disconnect(act)"), &inputs),
            Err(EvalError::Disconnected)
        );
        assert_eq!(
            eval(&p("mean(disconnect(act))"), &inputs),
            Err(EvalError::Disconnected)
        );
        assert_eq!(
            eval(&p("sub(disconnect(act), mean(disconnect(head)))"), &inputs),
            Err(EvalError::BothDisconnected(BinaryOp::Sub))
        );
        // A disconnected branch is dropped without being evaluated (grad is empty).
        assert_eq!(
            eval(&p("sub(mean(disconnect(grad)), act)"), &inputs).unwrap(),
            eval(&p("act"), &inputs).unwrap()
        );
        let map: HashMap<Input, Vec<Array>> = HashMap::from([(Input::Act, a.clone())]);
        assert_eq!(
            eval(&p("head"), &map),
            Err(EvalError::MissingInput(Input::Head))
        );
        assert_eq!(reduce(&[]), Err(EvalError::EmptyResult));
        // NaN is a value.
        let n = vec![Array::scalar(f32::NAN)];
        let nan_inputs = Inputs {
            act: &n,
            ..Inputs::default()
        };
        assert!(eval(&p("act"), &nan_inputs).unwrap().is_nan());
    }

    #[test]
    fn expr_helpers() {
        let e = p("add(mean(pow2(neg(head))), mean(disconnect(act)))");
        assert_eq!(e.size(), 8);
        assert_eq!(e.depth(), 5);
        assert_eq!(e.inputs(), vec![Input::Head, Input::Act]);
        assert_eq!(canonical(&e).inputs(), vec![Input::Head]);
        assert!(p("mean(disconnect(act))").is_disconnected());
        assert!(!e.is_disconnected());
        assert!(p("neg(mean(act))").is_scalar());
        assert!(p("add(std(act), frobenius_norm(head))").is_scalar());
        assert!(!p("add(std(act), head)").is_scalar());
        assert!(!p("act").is_scalar());
        for (i, input) in Input::ALL.iter().enumerate() {
            assert_eq!(input.index(), i);
            assert_eq!(Input::from_index(i), Some(*input));
            assert_eq!(input.name().parse::<Input>(), Ok(*input));
            let json = serde_json::to_string(input).unwrap();
            assert_eq!(serde_json::from_str::<Input>(&json).unwrap(), *input);
        }
        assert_eq!(
            Input::ALL.map(|i| i.name()),
            ["act", "head", "softmax", "grad", "weight"]
        );
    }
}
