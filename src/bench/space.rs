//! Design spaces: new architectures of a family, drawn and varied, for `lpzero nas`.
//!
//! A family's design space lives beside its bench file (`bench/<family>/space.rs`) and is
//! registered through [`crate::models::Family::design_space`]. It draws an architecture
//! ([`DesignSpace::sample`]), mutates one ([`DesignSpace::mutate`]), both from a seeded
//! [`Rng`], and writes architectures out: as the `config` object of a bench-file record
//! ([`DesignSpace::config`], the form [`super::jsonl`] reads back) and in the benchmark's own
//! files, ready to train ([`DesignSpace::native`]).
//!
//! Every architecture a space makes passes through the family's own reader of bench-file
//! configs ([`super::BenchFormat::record_from_config`], see [`validated`]): it gets exactly
//! the checks of a shipped record or a bench-file record, so an invalid one is an error,
//! never a model that fails later.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use super::bounds::MAX_LAYERS;
use super::{Arch, BenchKind, Benchmark, Entry};
use crate::rng::Rng;

/// Choices that narrow or widen a family's published space.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpaceOptions {
    /// Depths (layers) to draw from, uniformly, instead of the family's published depths
    /// ([`DesignSpace::depths`]); mutation then moves within it too.
    pub depth: Option<RangeInclusive<usize>>,
}

impl SpaceOptions {
    /// The depths allowed under these options in a space whose published depths are
    /// `published`: the override when given, else the published ones.
    pub fn depths(&self, published: &[usize]) -> Vec<usize> {
        match &self.depth {
            Some(range) => range.clone().collect(),
            None => published.to_vec(),
        }
    }

    /// Checks the depth override: a non-empty range of at least 1 and at most
    /// [`MAX_LAYERS`] layers (the bench files' bound).
    pub fn check(&self) -> Result<()> {
        if let Some(range) = &self.depth {
            if range.is_empty() || *range.start() == 0 || *range.end() > MAX_LAYERS {
                bail!(
                    "depths {}..={}: expected a non-empty range within 1..={MAX_LAYERS} layers",
                    range.start(),
                    range.end()
                );
            }
        }
        Ok(())
    }
}

/// One file of a family's native output: its path relative to the output folder, and its
/// text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeFile {
    /// Path inside the output folder.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
}

/// One architecture to write out in the benchmark's own format, with lpzero's notes on it
/// (its rank, proxy score, parameters, latency: a JSON object the family stores where its
/// format keeps free-form data, or as a comment).
pub struct Chosen<'a> {
    /// The architecture's key (a benchmark key, or the name `lpzero nas` gave a new one).
    pub key: &'a str,
    /// The architecture.
    pub arch: &'a Arch,
    /// lpzero's notes, a JSON object.
    pub notes: serde_json::Value,
}

/// A family's design space (see the module docs).
pub trait DesignSpace: Sync {
    /// The family whose architectures this space makes.
    fn kind(&self) -> BenchKind;

    /// The space in words, for messages and the README.
    fn describe(&self) -> &'static str;

    /// The published depths (numbers of layers), in increasing order.
    fn depths(&self) -> &'static [usize];

    /// Draws one architecture; `index` and `key` become its position and id (as a bench-file
    /// record's). Passes the family's checks ([`validated`]).
    fn sample(&self, rng: &mut Rng, opts: &SpaceOptions, index: usize, key: &str) -> Result<Arch>;

    /// A mutant of `arch`: one of its choices (the depth, a global width, one layer's
    /// setting) drawn again, always different from before. Passes the family's checks.
    fn mutate(
        &self,
        arch: &Arch,
        rng: &mut Rng,
        opts: &SpaceOptions,
        index: usize,
        key: &str,
    ) -> Result<Arch>;

    /// The architecture as the `config` object of a bench-file record: the family's reader
    /// gives the same architecture back.
    fn config(&self, arch: &Arch) -> Result<serde_json::Value>;

    /// The chosen architectures, best first, in the files of the family's benchmark (ready to
    /// train).
    fn native(&self, chosen: &[Chosen]) -> Result<Vec<NativeFile>>;
}

impl std::fmt::Debug for dyn DesignSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DesignSpace({})", self.kind())
    }
}

/// A seeded draw of new architectures from a family's space: everything that decides them,
/// so that the same draw can be made again (a sharded `lpzero nas` and its merge do).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// How many architectures.
    pub n: usize,
    /// The seed of the draw.
    pub seed: u64,
    /// The space's options.
    pub opts: SpaceOptions,
}

/// Label of the random stream that [`Sampling::draw`] uses (derived from the seed).
const SAMPLE_STREAM: u64 = 0x6e61_735f_6472_6177;

/// The key [`Sampling::draw`] gives the `i`-th architecture of a draw of `n`: `s` and the
/// number, zero-padded to the width of `n − 1`.
pub fn sample_key(i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len();
    format!("s{i:0width$}")
}

impl Sampling {
    /// Draws the architectures from `space` as a benchmark without ground truth: keys from
    /// [`sample_key`], in draw order, each passed through the family's checks. The same
    /// sampling gives the same benchmark, on any machine.
    pub fn draw(&self, space: &dyn DesignSpace) -> Result<Benchmark> {
        if self.n == 0 {
            bail!("a sample of 0 architectures: expected at least 1");
        }
        self.opts.check()?;
        let kind = space.kind();
        let mut rng = Rng::derive(self.seed, &[SAMPLE_STREAM]);
        let entries = (0..self.n)
            .map(|i| {
                let key = sample_key(i, self.n);
                let arch = space.sample(&mut rng, &self.opts, i, &key)?;
                Ok(Entry {
                    key,
                    truth: f64::NAN,
                    arch,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Benchmark {
            kind,
            source: PathBuf::from(format!("sample:{} (seed {})", self.n, self.seed)),
            data: None,
            entries,
            truth_name: "none (sampled architectures)",
            raw_truth: kind.raw_truth(),
        })
    }
}

/// The architecture that `config` describes, read by the family's own reader of bench-file
/// configs (so with the checks of the shipped benchmark); a failure is a fault of the space
/// that made the config, reported with the field and the problem.
pub fn validated(
    kind: BenchKind,
    config: &serde_json::Value,
    index: usize,
    key: &str,
) -> Result<Arch> {
    (kind.format().record_from_config)(config, index, key).map_err(|e| {
        anyhow!(
            "the {kind} design space made an invalid architecture `{key}`: field `{}`: {}",
            e.field,
            e.message
        )
    })
}

/// An element of `choices` other than `current`, drawn uniformly (`current` itself when it is
/// the only choice).
pub fn other<T: Copy + PartialEq>(rng: &mut Rng, choices: &[T], current: T) -> T {
    let others: Vec<T> = choices.iter().copied().filter(|&c| c != current).collect();
    if others.is_empty() {
        current
    } else {
        others[rng.range(0, others.len())]
    }
}

/// An element of `choices`, drawn uniformly.
///
/// # Panics
///
/// When `choices` is empty (every space has at least one value per choice).
pub fn pick<T: Copy>(rng: &mut Rng, choices: &[T]) -> T {
    choices[rng.range(0, choices.len())]
}

/// Resizes `layers` to `depth` for a mutation: new layers (made by `fresh`) are inserted at
/// random positions, surplus ones removed from random positions.
pub fn resize<L>(
    rng: &mut Rng,
    layers: &mut Vec<L>,
    depth: usize,
    mut fresh: impl FnMut(&mut Rng) -> L,
) {
    while layers.len() > depth {
        let at = rng.range(0, layers.len());
        layers.remove(at);
    }
    while layers.len() < depth {
        let at = rng.range(0, layers.len() + 1);
        let layer = fresh(rng);
        layers.insert(at, layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_overrides_are_checked_and_listed() {
        let none = SpaceOptions::default();
        assert_eq!(none.depths(&[2, 4]), vec![2, 4]);
        assert!(none.check().is_ok());
        let wide = SpaceOptions { depth: Some(2..=6) };
        assert_eq!(wide.depths(&[2, 4]), vec![2, 3, 4, 5, 6]);
        for bad in [0..=3, RangeInclusive::new(3, 2), 1..=MAX_LAYERS + 1] {
            let e = SpaceOptions { depth: Some(bad) }.check().unwrap_err();
            assert!(e.to_string().contains("expected a non-empty range"), "{e}");
        }
    }

    #[test]
    fn other_never_repeats_and_resize_reaches_the_depth() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            assert_ne!(other(&mut rng, &[1, 2, 3], 2), 2);
        }
        assert_eq!(other(&mut rng, &[5], 5), 5);
        let mut layers = vec![1, 2, 3];
        resize(&mut rng, &mut layers, 6, |_| 0);
        assert_eq!(layers.len(), 6);
        assert_eq!(layers.iter().filter(|&&l| l == 0).count(), 3);
        resize(&mut rng, &mut layers, 1, |_| 0);
        assert_eq!(layers.len(), 1);
    }
}
