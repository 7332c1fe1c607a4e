//! Times one proxy branch at a time over an `act`-sized list: 48 arrays of 3 072 × 520 random
//! values (77 M in all, the size of one 16-row GPT-2 probe's `act`).
//!
//! `cargo run --release --example chain_speed`

use std::collections::HashMap;
use std::time::Instant;

use lpzero::array::Array;
use lpzero::proxy::eval::Memo;
use lpzero::proxy::expr::Input;
use lpzero::proxy::parse::parse;
use lpzero::rng::Rng;

fn main() {
    let mut rng = Rng::new(0);
    let act: Vec<Array> = (0..48)
        .map(|_| Array::new(vec![3072, 520], rng.normal_vec(3072 * 520, 0.3)).unwrap())
        .collect();
    let src = HashMap::from([(Input::Act, act)]);
    for text in [
        "mean(abs(act))",
        "mean(pow2(neg(act)))",
        "mean(log(abs(act)))",
        "mean(exp(sigmoid(act)))",
        "mean(normalize(act))",
        "mean(softmax(act))",
        "std(act)",
        "mean(min_max(act))",
        "l1_norm(abslog(act))",
    ] {
        let e = parse(text).unwrap();
        let mut memo = Memo::new(); // a fresh memo: nothing is cached
        let start = Instant::now();
        let v = memo.value(0, &e, &src).unwrap();
        println!(
            "{text:<28} {:>7.3} s   value {v:.6}",
            start.elapsed().as_secs_f64()
        );
    }
}
