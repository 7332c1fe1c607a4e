//! Symbolic proxy expressions: the five inputs and the expression tree the search builds.
//!
//! This module holds the data types and their printer; the rest of the expression language
//! sits next to it, each part in its own module:
//!
//! * [`super::parse`]: the text form, read back (`parse(print(e)) == e` always holds);
//! * [`super::canonical`]: the canonical form, for de-duplicating equivalent expressions;
//! * [`super::eval`]: the value of an expression over per-layer lists of arrays, and its memo;
//! * [`super::genotype`]: the reference LPZero tree genotypes and their import.
//!
//! # Text form
//!
//! `add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))`: inputs are bare names
//! ([`Input`]), operations are calls with one (unary, [`UnaryOp`]) or two (binary, [`BinaryOp`])
//! arguments separated by a comma. Whitespace is allowed anywhere between tokens. `softmax` is
//! both an input and a unary op: `softmax` alone is the input, `softmax(...)` the op. The
//! printer ([`fmt::Display`]) writes canonical op names and `", "` between binary arguments;
//! the parser also accepts the reference op names (`element_wise_revert`, ...) and ignores
//! ASCII case.
//!
//! # Values
//!
//! Every input is a list of arrays (one per layer or module). A unary op maps over the items; a
//! binary op pairs items by position up to the shorter list (surplus items are dropped). The
//! value of an expression is the mean over items of each item's mean, accumulated in `f64`.
//!
//! `disconnect` is the "no value" op: a subtree with a `disconnect` on every path to its root
//! ([`Expr::is_disconnected`]) is dropped by the binary op above it, which returns its other
//! operand unchanged (also for `sub`, as in the reference). A binary op with two disconnected
//! operands, and a disconnected root, are invalid. Disconnected branches are never evaluated.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ops::{BinaryOp, UnaryOp, UnknownName};

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
/// the final value of any expression is the mean of means ([`super::eval::reduce`]). Serialised
/// (serde) as its text form (read back by [`super::parse`]).
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
    /// Includes inputs under disconnected branches; call it on the canonical form
    /// ([`super::canonical::canonical`]) to get only the inputs evaluation actually reads.
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

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
