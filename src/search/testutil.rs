//! Test fixtures: a synthetic benchmark whose `head` magnitude tracks the ground truth.

use crate::array::Array;
use crate::proxy::eval::{InputList, InputSource};
use crate::proxy::expr::Input;
use crate::rng::Rng;

/// One fake architecture: a list per input (indexed like [`Input::ALL`]).
pub struct FakeArch {
    lists: [Vec<Array>; 5],
}

impl InputSource for FakeArch {
    fn input(&self, which: Input) -> Option<InputList<'_>> {
        Some(InputList::Borrowed(&self.lists[which.index()]))
    }
}

/// `n` fake architectures: `head` holds 3 items of shape 2×2×3 whose scale grows with the
/// ground truth (plus noise), `act` 3 random 2×2×4 items, `grad` and `weight` 2 random 3×3
/// matrices each, and `softmax` is empty (like GPT-2's in the reference).
pub struct Synthetic {
    /// The architectures.
    pub archs: Vec<FakeArch>,
    /// Ground truth, higher = better.
    pub truth: Vec<f64>,
}

impl Synthetic {
    /// A deterministic synthetic set of `n` architectures.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut archs = Vec::with_capacity(n);
        let mut truth = Vec::with_capacity(n);
        for _ in 0..n {
            let t = rng.normal();
            let scale = (0.5 * t + 0.15 * rng.normal()).exp();
            let mut arr = |shape: &[usize], std: f64| {
                let len = shape.iter().product();
                Array::new(shape.to_vec(), rng.normal_vec(len, std)).unwrap()
            };
            let head = (0..3).map(|_| arr(&[2, 2, 3], scale)).collect();
            let act = (0..3).map(|_| arr(&[2, 2, 4], 1.0)).collect();
            let grad = (0..2).map(|_| arr(&[3, 3], 0.01)).collect();
            let weight = (0..2).map(|_| arr(&[3, 3], 0.5)).collect();
            archs.push(FakeArch {
                lists: [act, head, Vec::new(), grad, weight],
            });
            truth.push(t);
        }
        Self { archs, truth }
    }

    /// The architectures as input sources, in order.
    pub fn sources(&self) -> Vec<&dyn InputSource> {
        self.archs.iter().map(|a| a as &dyn InputSource).collect()
    }
}
