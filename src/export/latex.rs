//! `lpzero export --to latex`: the proxy as a LaTeX formula (for `$…$` or an equation
//! environment), after three comment lines that give the expression and the notation.
//!
//! Notation. The input lists are `A` (act), `H` (head), `S` (softmax), `G` (grad) and `W`
//! (weight); `X_{\ell}` is item `\ell` of list `X` (an array) and `N_{X}` its number of items.
//! The value of an expression `E` over `N` items is `\frac{1}{N}\sum_{\ell=1}^{N}
//! \operatorname{mean}(E_\ell)`, with `N` the smallest of the item counts of the inputs it pairs
//! (`\min(N_A, N_H)`: binary operations pair items by position and drop the surplus); `mean` is
//! left out where `E_\ell` is already a number. `total(x)` is `\sum_{k=1}^{N}
//! \operatorname{mean}(x_k)`, a single item, so everything paired with it uses item 1.
//!
//! Operators: `\log` (entries ≤ 0 taken as 1, plus 1e-9), `\log\lvert\cdot\rvert` (abslog),
//! `\lvert\cdot\rvert`, `(\cdot)^{2}`, `\exp`, `\frac{1}{\cdot}` (invert, plus 1e-9),
//! `\lVert\cdot\rVert_F`, `\sigma` (sigmoid), `\sqrt{\cdot}` (of max(x, 0)), `-` (neg),
//! `\operatorname{softmax}_0` and `\operatorname{logsoftmax}_0` (along the first axis),
//! `+`, `-`, `\odot` (element-wise product) and `\left(a\right)\left(b\right)` (matmul); the
//! others keep their lpzero names: `\operatorname{normalize}`, `\operatorname{relu}`,
//! `\operatorname{normalized\_sum}`, `\operatorname{l1\_norm}`, `\operatorname{min\_max}`,
//! `\operatorname{mean}`, `\operatorname{std}`, `\operatorname{sum}`, `\operatorname{size}`.
//! All are defined in the README's operator table.

use super::Node;
use crate::proxy::expr::{Expr, Input};
use crate::proxy::ops::{BinaryOp, UnaryOp};

/// The LaTeX text for `expr` (lowered to `node`): three `%` comment lines and the formula.
pub fn formula(expr: &Expr, node: &Node) -> String {
    let body = match count(node) {
        Count::One => item_value(node, "1").text,
        Count::Min(inputs) => {
            let n = count_tex(&inputs);
            let term = wrap_compound(item_value(node, "\\ell"));
            format!("\\frac{{1}}{{{n}}} \\sum_{{\\ell=1}}^{{{n}}} {term}")
        }
    };
    format!(
        "% lpzero proxy: {expr}\n\
         % A, H, S, G, W: the input lists act, head, softmax, grad, weight; X_{{\\ell}} is item \\ell\n\
         % of X and N_{{X}} its number of items (operators: see lpzero's README, `lpzero export`).\n\
         {body}\n"
    )
}

/// How many items a node's list has: exactly one (after `total`), or the least of the item
/// counts of some inputs.
#[derive(Clone, Debug, PartialEq)]
enum Count {
    One,
    Min(Vec<Input>),
}

/// The item count of a node.
fn count(node: &Node) -> Count {
    match node {
        Node::Input(i) => Count::Min(vec![*i]),
        Node::Chain(_, x) => count(x),
        Node::Total(_) => Count::One,
        Node::Binary(_, a, b) => match (count(a), count(b)) {
            (Count::Min(mut x), Count::Min(y)) => {
                x.extend(y);
                x.sort();
                x.dedup();
                Count::Min(x)
            }
            _ => Count::One,
        },
    }
}

/// `N_{X}`, or `\min\left(N_{X}, N_{Y}\right)`.
fn count_tex(inputs: &[Input]) -> String {
    let names: Vec<String> = inputs
        .iter()
        .map(|i| format!("N_{{{}}}", symbol(*i)))
        .collect();
    match names.as_slice() {
        [one] => one.clone(),
        _ => format!("\\min\\left({}\\right)", names.join(", ")),
    }
}

/// The letter of an input list.
fn symbol(input: Input) -> &'static str {
    match input {
        Input::Act => "A",
        Input::Head => "H",
        Input::Softmax => "S",
        Input::Grad => "G",
        Input::Weight => "W",
    }
}

/// A piece of formula and how it binds.
struct Tex {
    text: String,
    kind: Kind,
}

/// How a piece of formula binds, to decide parentheses.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A symbol or a delimited group (`A_{\ell}`, `\lvert x\rvert`, `\lVert x\rVert_F`): takes
    /// an exponent as it is.
    Atom,
    /// A function application or a fraction: an operand as it is, parenthesised under `^2`.
    Call,
    /// A sum, difference, product, negation or `\sum`: parenthesised as an operand.
    Compound,
}

fn tex(text: String, kind: Kind) -> Tex {
    Tex { text, kind }
}

/// `\left(x\right)` when `x` is compound.
fn wrap_compound(x: Tex) -> String {
    if x.kind == Kind::Compound {
        format!("\\left({}\\right)", x.text)
    } else {
        x.text
    }
}

/// `\operatorname{mean}(x)` unless `node`'s items are numbers already.
fn mean_of(node: &Node, x: Tex) -> Tex {
    if node.is_scalar() {
        x
    } else {
        call("\\operatorname{mean}", x)
    }
}

/// `f\left(x\right)`.
fn call(f: &str, x: Tex) -> Tex {
    tex(format!("{f}\\left({}\\right)", x.text), Kind::Call)
}

/// The item `index` of `node`'s list, reduced to its mean (for the final value and `total`).
fn item_value(node: &Node, index: &str) -> Tex {
    mean_of(node, item(node, index))
}

/// The formula of item `index` of `node`'s list.
fn item(node: &Node, index: &str) -> Tex {
    match node {
        Node::Input(i) => tex(format!("{}_{{{index}}}", symbol(*i)), Kind::Atom),
        Node::Chain(ops, x) => {
            // An explicit `mean` of a number is the number: left out.
            let mut scalar = x.is_scalar();
            let mut out = item(x, index);
            for &op in ops {
                if !(op == UnaryOp::Mean && scalar) {
                    out = unary(op, out);
                }
                scalar |= op.is_reduction();
            }
            out
        }
        Node::Total(x) => match count(x) {
            Count::One => item_value(x, "1"),
            Count::Min(inputs) => {
                // The summand holds no other `total` (one would make its item count one), so
                // `k` is never bound twice.
                let term = wrap_compound(item_value(x, "k"));
                tex(
                    format!("\\sum_{{k=1}}^{{{}}} {term}", count_tex(&inputs)),
                    Kind::Compound,
                )
            }
        },
        Node::Binary(op, a, b) => {
            let (a, b) = (item(a, index), item(b, index));
            let sign = match op {
                // A matrix product binds like a function application.
                BinaryOp::Matmul => {
                    let text = format!("\\left({}\\right)\\left({}\\right)", a.text, b.text);
                    return tex(text, Kind::Call);
                }
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "\\odot",
                // `export` refuses a rank join before lowering; written as a sum if it came.
                BinaryOp::RankAdd => "+",
            };
            let text = format!("{} {sign} {}", wrap_compound(a), wrap_compound(b));
            tex(text, Kind::Compound)
        }
    }
}

/// A unary op applied to the formula `x`.
fn unary(op: UnaryOp, x: Tex) -> Tex {
    let named = |name: &str| {
        call(
            &format!("\\operatorname{{{name}}}"),
            tex(x.text.clone(), x.kind),
        )
    };
    match op {
        UnaryOp::Log => call("\\log", x),
        UnaryOp::AbsLog => tex(
            format!("\\log\\left\\lvert {}\\right\\rvert", x.text),
            Kind::Call,
        ),
        UnaryOp::Abs => tex(
            format!("\\left\\lvert {}\\right\\rvert", x.text),
            Kind::Atom,
        ),
        UnaryOp::Pow2 => match x.kind {
            Kind::Atom => tex(format!("{}^{{2}}", x.text), Kind::Atom),
            _ => tex(format!("\\left({}\\right)^{{2}}", x.text), Kind::Atom),
        },
        UnaryOp::Exp => call("\\exp", x),
        UnaryOp::Invert => tex(format!("\\frac{{1}}{{{}}}", x.text), Kind::Call),
        UnaryOp::FrobeniusNorm => tex(
            format!("\\left\\lVert {}\\right\\rVert_{{F}}", x.text),
            Kind::Atom,
        ),
        UnaryOp::Sigmoid => call("\\sigma", x),
        UnaryOp::Sqrt => tex(format!("\\sqrt{{{}}}", x.text), Kind::Call),
        UnaryOp::Neg => tex(format!("-{}", wrap_compound(x)), Kind::Compound),
        UnaryOp::Softmax => call("\\operatorname{softmax}_{0}", x),
        UnaryOp::LogSoftmax => call("\\operatorname{logsoftmax}_{0}", x),
        UnaryOp::NormalizedSum => named("normalized\\_sum"),
        UnaryOp::L1Norm => named("l1\\_norm"),
        UnaryOp::MinMax => named("min\\_max"),
        // Lowering removes `no_op`, `disconnect` and `total` from chains; the rest keep their
        // names.
        UnaryOp::NoOp | UnaryOp::Disconnect | UnaryOp::Total => x,
        other => named(other.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latex(text: &str) -> String {
        let e = Expr::parse(text).unwrap();
        let f = formula(&e, &super::super::lower(&e).unwrap());
        f.lines().last().unwrap().to_string()
    }

    #[test]
    fn values_average_over_paired_items() {
        assert_eq!(
            latex("mean(act)"),
            "\\frac{1}{N_{A}} \\sum_{\\ell=1}^{N_{A}} \\operatorname{mean}\\left(A_{\\ell}\\right)"
        );
        assert_eq!(
            latex("add(pow2(head), neg(act))"),
            "\\frac{1}{\\min\\left(N_{A}, N_{H}\\right)} \\sum_{\\ell=1}^{\\min\\left(N_{A}, \
             N_{H}\\right)} \\operatorname{mean}\\left(H_{\\ell}^{2} + \\left(-A_{\\ell}\\right)\
             \\right)"
        );
    }

    #[test]
    fn total_is_a_sum_and_pins_its_partners_to_item_one() {
        assert_eq!(
            latex("sub(total(std(act)), mean(head))"),
            "\\left(\\sum_{k=1}^{N_{A}} \\operatorname{std}\\left(A_{k}\\right)\\right) - \
             \\operatorname{mean}\\left(H_{1}\\right)"
        );
        // A total inside a total: the outer one sums a single item.
        assert_eq!(
            latex("total(mul(total(act), grad))"),
            "\\operatorname{mean}\\left(\\left(\\sum_{k=1}^{N_{A}} \\operatorname{mean}\\left(\
             A_{k}\\right)\\right) \\odot G_{1}\\right)"
        );
        assert_eq!(
            latex("total(total(mul(act, total(head))))"),
            "\\operatorname{mean}\\left(A_{1} \\odot \\left(\\sum_{k=1}^{N_{H}} \\operatorname{mean}\
             \\left(H_{k}\\right)\\right)\\right)"
        );
    }
}
