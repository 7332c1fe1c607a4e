//! Exporting a proxy expression for use outside lpzero: a self-contained PyTorch function
//! ([`python`]) and a LaTeX formula ([`latex`]), plus a file format for one architecture's
//! input lists ([`inputs`]) so that an exported function can be checked against lpzero.
//!
//! Both exports start from [`lower`], which resolves the parts of an expression that do not
//! depend on the inputs, exactly as evaluation ([`crate::proxy::eval::eval`]) does: a branch
//! that passes through `disconnect` is dropped by the binary op above it, and a run of unary
//! ops is kept apart from the list-level `total`. An expression that always has no value (a
//! disconnected root, a binary op with two disconnected operands) cannot be exported.

pub mod inputs;
pub mod latex;
pub mod python;

use anyhow::{bail, Result};

use crate::proxy::eval::unary_chain;
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::{BinaryOp, UnaryOp};
use crate::report::clip;
use crate::scoring::Proxy;

/// What an expression is exported to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A Python module defining `proxy(act, head, softmax, grad, weight)` with PyTorch.
    Python,
    /// A LaTeX formula.
    Latex,
}

/// The text of `expr` exported to `target`.
pub fn export(expr: &Expr, target: Target) -> Result<String> {
    if let Some([a, b]) = crate::proxy::set::rank_join(expr) {
        bail!(
            "`{}` is a rank join: its value is a sum of ranks across the architectures scored \
             together, so it is not a function of one network; export its two operands (`{}` and \
             `{}`) and add their ranks over the set you score",
            clip(&expr.to_string()),
            clip(&a.to_string()),
            clip(&b.to_string())
        );
    }
    let node = lower(expr)?;
    Ok(match target {
        Target::Python => python::module(expr, &node),
        Target::Latex => latex::formula(expr, &node),
    })
}

/// Resolves what `lpzero export` accepts: an expression text or a published genotype name
/// (`lpzero_bert`, ...), as `score --proxy` reads them; a built-in proxy is refused (it is
/// Rust code, not an expression).
pub fn resolve(text: &str) -> Result<Expr> {
    match Proxy::parse(text.trim())? {
        Proxy::Expr { expr, .. } => Ok(expr),
        Proxy::Builtin(b) => bail!(
            "`{}` is a built-in proxy, not an expression; only expressions and the published \
             genotypes (lpzero_bert, lpzero_csv_bert, lpzero_gpt2) can be exported",
            b.name
        ),
    }
}

/// An expression as evaluation sees it: disconnected branches dropped, runs of item-wise
/// unary ops gathered, `total` on its own.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// An input list.
    Input(Input),
    /// Item-wise unary ops, applied first to last (never `disconnect`, never `total`).
    Chain(Vec<UnaryOp>, Box<Node>),
    /// The list-level `total`.
    Total(Box<Node>),
    /// A binary op on positionally paired items.
    Binary(BinaryOp, Box<Node>, Box<Node>),
}

impl Node {
    /// True when every item is a 0-d scalar (after a reduction, or an op of scalars).
    pub fn is_scalar(&self) -> bool {
        match self {
            Node::Input(_) => false,
            Node::Chain(ops, x) => ops.iter().any(|o| o.is_reduction()) || x.is_scalar(),
            Node::Total(_) => true,
            Node::Binary(_, a, b) => a.is_scalar() && b.is_scalar(),
        }
    }

    /// The expression text of this node (with dropped branches left out).
    pub fn text(&self) -> String {
        match self {
            Node::Input(i) => i.name().to_string(),
            Node::Chain(ops, x) => ops
                .iter()
                .fold(x.text(), |inner, op| format!("{op}({inner})")),
            Node::Total(x) => format!("total({})", x.text()),
            Node::Binary(op, a, b) => format!("{op}({}, {})", a.text(), b.text()),
        }
    }
}

/// Lowers `expr` as evaluation does (see the module docs); fails when it has no value on any
/// input, with the reason.
pub fn lower(expr: &Expr) -> Result<Node> {
    match expr {
        Expr::Input(i) => Ok(Node::Input(*i)),
        Expr::Unary(op, x) if op.is_list_level() => Ok(Node::Total(Box::new(lower(x)?))),
        Expr::Unary(..) => {
            let (ops, base) =
                unary_chain(expr).map_err(|_| valueless(expr, "it passes through `disconnect`"))?;
            let base = lower(base)?;
            let ops: Vec<UnaryOp> = ops.into_iter().filter(|&o| o != UnaryOp::NoOp).collect();
            Ok(if ops.is_empty() {
                base
            } else {
                Node::Chain(ops, Box::new(base))
            })
        }
        Expr::Binary(op, a, b) => match (a.is_disconnected(), b.is_disconnected()) {
            (true, true) => Err(valueless(
                expr,
                &format!("both operands of `{op}` pass through `disconnect`"),
            )),
            (true, false) => lower(b),
            (false, true) => lower(a),
            (false, false) => Ok(Node::Binary(*op, Box::new(lower(a)?), Box::new(lower(b)?))),
        },
    }
}

/// The error for a part of an expression that never has a value.
fn valueless(part: &Expr, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{}` has no value ({why}), so the expression is NaN on every architecture and there \
         is nothing to export",
        clip(&part.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low(text: &str) -> Result<Node> {
        lower(&Expr::parse(text).unwrap())
    }

    #[test]
    fn lowering_drops_disconnected_branches_and_no_ops() {
        let n = low("add(mean(disconnect(act)), no_op(pow2(total(head))))").unwrap();
        assert_eq!(n.text(), "pow2(total(head))");
        assert!(n.is_scalar());
        let n = low("sub(abs(grad), neg(disconnect(weight)))").unwrap();
        assert_eq!(
            n,
            Node::Chain(vec![UnaryOp::Abs], Box::new(Node::Input(Input::Grad)))
        );
        assert!(!n.is_scalar());
        let e = format!("{:#}", low("mean(disconnect(act))").unwrap_err());
        assert!(e.contains("passes through `disconnect`"), "{e}");
        let e = format!(
            "{:#}",
            low("mul(disconnect(act), total(disconnect(head)))").unwrap_err()
        );
        assert!(e.contains("both operands of `mul`"), "{e}");
    }

    #[test]
    fn resolve_accepts_expressions_and_genotypes_only() {
        assert_eq!(
            resolve("lpzero_bert").unwrap().to_string(),
            "add(mean(pow2(neg(head))), mean(logsoftmax(frobenius_norm(act))))"
        );
        assert!(resolve("mean(act)").is_ok());
        let e = resolve("snip").unwrap_err().to_string();
        assert!(e.contains("built-in proxy"), "{e}");
        assert!(resolve("mean(act").is_err());
    }
}
