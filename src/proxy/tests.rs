//! Tests of the expression language as a whole: text form, canonical form, evaluation and
//! reference genotypes, checked against each other (round trips, equal values).

use std::collections::HashMap;

use super::canonical::{canonical, key};
use super::eval::{eval, eval_list, reduce, EvalError, Inputs};
use super::expr::{Expr, Input};
use super::genotype::{builtin_genotype, parse_tree_genotype, TreeGenotype, BUILTIN_GENOTYPES};
use super::ops::{BinaryOp, OpError, UnaryOp};
use super::parse::parse;
use crate::array::Array;

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
        parse_tree_genotype("INPUT:(softmax, head)TREE:([[19, 14], [8, 6]])BINARY:(0)").unwrap(),
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
    assert_eq!(head[0].data()[..], [1.0, -2.0]);
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
