//! Seeded pseudo-random numbers: the one source of randomness in lpzero.
//!
//! Weights, batches, dropout masks and the search all draw from [`Rng`], seeded explicitly, so
//! a run is a pure function of its `--seed` (independent of thread scheduling, because every
//! architecture gets its own stream derived from the seed and its index).

use std::ops::Range;

/// Pairs of uniforms [`Rng::normal_vec_in`] draws before it transforms them.
const NORMAL_CHUNK_PAIRS: usize = 1 << 16;

/// Both halves of a Box–Muller pair from uniforms `u1` (above 0) and `u2`, scaled by `std`:
/// one `ln`, one `sqrt` and one `sincos`.
fn box_muller(u1: f64, u2: f64, std: f64) -> [f32; 2] {
    let r = (-2.0 * u1.ln()).sqrt() * std;
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    [(r * c) as f32, (r * s) as f32]
}

/// A xoshiro256++ generator seeded through SplitMix64.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Self { s }
    }

    /// An independent stream for a sub-task (an architecture, a purpose), derived from a base
    /// seed and labels, so that results do not depend on the order tasks run in.
    pub fn derive(seed: u64, labels: &[u64]) -> Self {
        let mut st = seed ^ 0x5851_F42D_4C95_7F2D;
        let mut acc = splitmix64(&mut st);
        for &l in labels {
            st ^= l.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(acc);
            acc = splitmix64(&mut st);
        }
        Self::new(acc)
    }

    /// True for the all-zero state, from which xoshiro only ever returns 0: never produced by
    /// seeding, so it marks a state read from a damaged or edited file.
    pub fn is_stuck(&self) -> bool {
        self.s == [0; 4]
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = (self.s[0].wrapping_add(self.s[3]))
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `lo..hi` (requires `lo < hi`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo < hi, "empty range {lo}..{hi}");
        let span = (hi - lo) as u64;
        // Rejection sampling to avoid modulo bias.
        let zone = u64::MAX - (u64::MAX % span);
        loop {
            let v = self.next_u64();
            if v < zone {
                return lo + (v % span) as usize;
            }
        }
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal sample (Box–Muller, both halves used).
    pub fn normal(&mut self) -> f64 {
        loop {
            let u1 = self.uniform();
            if u1 > 0.0 {
                let u2 = self.uniform();
                return (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            }
        }
    }

    /// `n` samples of N(0, std²) as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        self.normal_vec_in(n, std, std::slice::from_ref(&(0..n)))
    }

    /// What [`Rng::normal_vec`] returns inside the index ranges `wanted` (sorted, disjoint), and
    /// 0 outside them. The generator advances exactly as `normal_vec` would, so everything drawn
    /// afterwards is unchanged: a lookup table of which a forward pass reads a few rows costs the
    /// generator steps of its other rows, not their logarithms and sines.
    pub fn normal_vec_in(&mut self, n: usize, std: f64, wanted: &[Range<usize>]) -> Vec<f32> {
        debug_assert!(
            wanted.windows(2).all(|w| w[0].end <= w[1].start),
            "normal_vec_in: ranges must be sorted and disjoint"
        );
        let mut out = vec![0f32; n];
        let mut next = 0;
        let mut i = 0;
        // The uniforms are drawn in stream order, a chunk of pairs at a time; their logarithms
        // and sines (most of the cost) are then taken on the cores the probe has to spare.
        let mut pairs: Vec<(f64, f64)> = Vec::with_capacity(NORMAL_CHUNK_PAIRS.min(n.div_ceil(2)));
        while i < n {
            let start = i;
            pairs.clear();
            let mut read_pairs = 0;
            while i < n && pairs.len() < NORMAL_CHUNK_PAIRS {
                let u1 = self.uniform();
                if u1 <= 0.0 {
                    continue;
                }
                let u2 = self.uniform();
                // The pair fills out[i] and, when there is room, out[i + 1].
                let end = (i + 2).min(n);
                while next < wanted.len() && wanted[next].end <= i {
                    next += 1;
                }
                let read = next < wanted.len() && wanted[next].start < end;
                read_pairs += usize::from(read);
                // A pair nobody reads is marked by u1 = 0 (drawn values are above 0).
                pairs.push(if read { (u1, u2) } else { (0.0, 0.0) });
                i = end;
            }
            let chunk = &mut out[start..i];
            let whole = chunk.len() / 2 * 2;
            let (full, half) = chunk.split_at_mut(whole);
            // A pair's logarithm, root and sine-cosine cost about 16 element-wise values.
            crate::nn::cores::for_rows_for(16 * read_pairs, full, 2, |first, block| {
                for (o, &(u1, u2)) in block.chunks_exact_mut(2).zip(&pairs[first..]) {
                    if u1 > 0.0 {
                        o.copy_from_slice(&box_muller(u1, u2, std));
                    }
                }
            });
            if let (Some(o), Some(&(u1, u2))) = (half.first_mut(), pairs.get(whole / 2)) {
                if u1 > 0.0 {
                    *o = box_muller(u1, u2, std)[0];
                }
            }
        }
        out
    }

    /// An index drawn with probability proportional to `weights` (non-negative, not all 0).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.uniform() * total;
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// `k` distinct indices of `0..n` drawn uniformly (a partial Fisher–Yates shuffle), in
    /// increasing order. `k` is capped at `n`.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = self.range(i, n);
            all.swap(i, j);
        }
        let mut picked = all[..k].to_vec();
        picked.sort_unstable();
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            Rng::derive(7, &[1]).next_u64(),
            Rng::derive(7, &[2]).next_u64()
        );
    }

    #[test]
    fn normal_moments() {
        let v = Rng::new(1).normal_vec(200_000, 0.02);
        let mean: f64 = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var: f64 = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 2e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "{}", var.sqrt());
    }

    #[test]
    fn normal_vec_is_the_stream_of_box_muller_pairs_on_any_number_of_cores() {
        // More than two chunks of pairs, odd: the last pair gives one value.
        let n = 2 * (2 * NORMAL_CHUNK_PAIRS) + 2 * 37 + 1;
        let mut stream = Rng::new(5);
        let mut expected = Vec::with_capacity(n);
        while expected.len() < n {
            let u1 = stream.uniform();
            if u1 <= 0.0 {
                continue;
            }
            let u2 = stream.uniform();
            let r = (-2.0 * u1.ln()).sqrt() * 0.25;
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            expected.push((r * c) as f32);
            if expected.len() < n {
                expected.push((r * s) as f32);
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for cores in 1..=3 {
            let mut rng = Rng::new(5);
            let drawn = crate::nn::cores::with_cores(cores, || rng.normal_vec(n, 0.25));
            assert_eq!(bits(&drawn), bits(&expected), "{cores} cores");
            assert_eq!(rng, stream, "the generator ends where the pairs did");
        }
    }

    #[test]
    fn normal_vec_in_draws_the_same_values_and_advances_alike() {
        // Odd length and ranges starting and ending mid-pair.
        let n = 1001;
        let wanted = [3..4, 10..27, 400..401, 998..1001];
        let mut full_rng = Rng::new(9);
        let full = full_rng.normal_vec(n, 0.5);
        let mut part_rng = Rng::new(9);
        let part = part_rng.normal_vec_in(n, 0.5, &wanted);
        assert_eq!(part.len(), n);
        for (i, (&p, &f)) in part.iter().zip(&full).enumerate() {
            if wanted.iter().any(|r| r.contains(&i)) {
                assert_eq!(p.to_bits(), f.to_bits(), "index {i}");
            } else if p != 0.0 {
                // Outside the ranges only the other half of a wanted pair may be filled.
                let pair = i / 2 * 2;
                assert!(
                    wanted
                        .iter()
                        .any(|r| r.contains(&pair) || r.contains(&(pair + 1))),
                    "index {i} is {p}, expected 0"
                );
                assert_eq!(p.to_bits(), f.to_bits(), "index {i}");
            }
        }
        assert!(part[500] == 0.0 && full[500] != 0.0);
        assert_eq!(
            part_rng, full_rng,
            "the generators must end in the same state"
        );
        assert_eq!(Rng::new(9).normal_vec_in(n, 0.5, &[]), vec![0.0; n]);
    }

    #[test]
    fn range_and_weighted_stay_in_bounds() {
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            let x = r.range(5, 9);
            assert!((5..9).contains(&x));
            assert!(r.weighted(&[0.0, 1.0, 0.0]) == 1);
        }
    }
}
