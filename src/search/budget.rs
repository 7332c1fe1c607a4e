//! A search's memory budget: how it keeps its fitness probes so that the whole search stays
//! near a size the user chose (`--memory-budget`, 6 GB unless told otherwise).
//!
//! A search holds the expression inputs of every fitness architecture for its whole GP loop:
//! FlexiBERT's default probe about 9 MB per architecture, GPT-2's 16 × 192 about 470 MB in
//! `f32` (about 21–24 GB for 50 architectures). Under a budget:
//!
//! - **Precision** ([`fitness_storage`]): `f32`, unless the family's estimate of the whole
//!   fitness set in `f32` is more than [`COMPACT_ABOVE`] times the budget; then bfloat16 (half
//!   the bytes; agreement with `f32` of every proxy measured at Spearman ≥ 0.9999). Decided
//!   once from the benchmark's mean architecture, so every split of a study and every resumed
//!   run gets the same, and never when the user chose `--probe-storage`.
//! - **Placement** ([`MemoryBudget::in_memory_share`]): each fitness probe stays in memory
//!   while those held fit in the budget less the memo's budget and [`PROBING_ROOM_BYTES`]; the
//!   others go to a spill file ([`crate::probe::spill`]), which returns the same values bit for
//!   bit. Where a probe lands changes no result, only how fast the GP reads it.
//! - **Turns** ([`MemoryBudget::limit`]): probes run at the same time only while their
//!   estimates fit in what the budget leaves them ([`crate::models::probe_map_within`]).

use anyhow::{bail, Result};

use crate::bench::Benchmark;
use crate::models;
use crate::probe::memory::{LimitSource, MemoryLimit};
use crate::probe::{ProbeOptions, Storage};

/// The budget a search gets unless told otherwise, in GB (10⁹ bytes): within the 6 GiB a
/// GPT-2 search at the default probe was asked to fit in.
pub const DEFAULT_BUDGET_GB: f64 = 6.0;

/// Room kept out of the fitness probes' share for probing and everything else a search holds
/// (the benchmark, the baselines' values, the engine's buffers).
pub const PROBING_ROOM_BYTES: u64 = 2 << 30;

/// A fitness set whose `f32` inputs would exceed this many times the budget is stored as
/// bfloat16: its spill file is read back at every evaluation and should stay in the memory
/// the system caches files in, which a machine sized for the budget does not have for more.
pub const COMPACT_ABOVE: f64 = 2.0;

/// Memory a search aims to stay within.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBudget {
    /// Bytes.
    pub bytes: f64,
}

impl MemoryBudget {
    /// A budget of `gb` GB (10⁹ bytes); fails unless it is a finite number above zero.
    pub fn gb(gb: f64) -> Result<Self> {
        if !(gb.is_finite() && gb > 0.0) {
            bail!("a memory budget must be a positive number of GB, got {gb}");
        }
        Ok(Self { bytes: gb * 1e9 })
    }

    /// The budget as a limit for the whole process (probes take turns within it).
    pub fn limit(&self) -> MemoryLimit {
        MemoryLimit {
            bytes: self.bytes,
            source: LimitSource::Budget,
        }
    }

    /// Bytes the fitness probes may hold in memory: the budget less the memo's
    /// `memo_budget` and [`PROBING_ROOM_BYTES`] (never below zero).
    pub fn in_memory_share(&self, memo_budget: u64) -> f64 {
        (self.bytes - memo_budget as f64 - PROBING_ROOM_BYTES as f64).max(0.0)
    }

    /// The limit probing gets while fitness probes are held beside it: the budget less their
    /// share.
    pub fn probing_limit(&self, memo_budget: u64) -> MemoryLimit {
        MemoryLimit {
            bytes: self.bytes - self.in_memory_share(memo_budget),
            ..self.limit()
        }
    }
}

/// The estimated bytes of the expression inputs of `n` fitness architectures of `bench` in
/// `f32` under `opts`: `n` times the mean of the family's estimate
/// ([`crate::probe::memory::ModelSize::input_floats`]) over the whole benchmark (so that it
/// does not depend on which architectures a split draws); `None` when the family gives no
/// estimate.
pub fn fitness_set_bytes(bench: &Benchmark, n: usize, opts: &ProbeOptions) -> Result<Option<f64>> {
    let family = models::family(bench.kind);
    let mut total = 0.0;
    for entry in &bench.entries {
        match family.size(&entry.arch, opts)?.input_floats {
            Some(floats) => total += floats,
            None => return Ok(None),
        }
    }
    let mean = total / bench.entries.len().max(1) as f64;
    Ok(Some(4.0 * mean * n as f64))
}

/// How a search of `n` fitness architectures stores its probes when the user did not say:
/// bfloat16 when the fitness set's estimate in `f32` ([`fitness_set_bytes`]) exceeds
/// [`COMPACT_ABOVE`] times `budget`, else `f32` (also without a budget or an estimate).
pub fn fitness_storage(
    bench: &Benchmark,
    n: usize,
    opts: &ProbeOptions,
    budget: Option<MemoryBudget>,
) -> Result<Storage> {
    let Some(budget) = budget else {
        return Ok(Storage::F32);
    };
    Ok(match fitness_set_bytes(bench, n, opts)? {
        Some(bytes) if bytes > COMPACT_ABOVE * budget.bytes => Storage::Bf16,
        _ => Storage::F32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchKind, DataSource};

    fn load(kind: BenchKind) -> Benchmark {
        Benchmark::load(kind, &DataSource::Embedded).unwrap()
    }

    #[test]
    fn the_share_leaves_room_for_the_memo_and_probing() {
        let budget = MemoryBudget::gb(6.0).unwrap();
        let memo = 1u64 << 30;
        let share = budget.in_memory_share(memo);
        assert_eq!(share, 6e9 - (3u64 << 30) as f64);
        assert_eq!(budget.probing_limit(memo).bytes, (3u64 << 30) as f64);
        assert_eq!(budget.probing_limit(memo).source, LimitSource::Budget);
        // A budget below the room holds nothing in memory, and probing gets all of it.
        let small = MemoryBudget::gb(1.0).unwrap();
        assert_eq!(small.in_memory_share(memo), 0.0);
        assert_eq!(small.probing_limit(memo).bytes, 1e9);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = MemoryBudget::gb(bad).unwrap_err().to_string();
            assert!(e.contains("positive number of GB"), "{e}");
        }
    }

    #[test]
    fn only_a_fitness_set_far_over_the_budget_is_compacted() {
        let bench = load(crate::bench::gpt2::KIND);
        let family = models::family(bench.kind);
        let default = family.probe_options();
        let small = ProbeOptions {
            batch: 4,
            seq_len: 64,
            ..default.clone()
        };
        let big = fitness_set_bytes(&bench, 50, &default).unwrap().unwrap();
        let little = fitness_set_bytes(&bench, 50, &small).unwrap().unwrap();
        // About 470 MB per decoder at 16 × 192 (a search measured 10.5 GB for 50 as bf16).
        assert!((15e9..30e9).contains(&big), "{big}");
        // At 4 × 64 the weights and gradients dominate (measured 4.6–6.4 GB for 50).
        assert!((3e9..8e9).contains(&little), "{little}");
        let budget = Some(MemoryBudget::gb(6.0).unwrap());
        let storage = |opts: &ProbeOptions, budget| fitness_storage(&bench, 50, opts, budget);
        assert_eq!(storage(&default, budget).unwrap(), Storage::Bf16);
        assert_eq!(storage(&small, budget).unwrap(), Storage::F32);
        assert_eq!(storage(&default, None).unwrap(), Storage::F32);
        // FlexiBERT gives no estimate: f32 whatever the budget.
        let flexibert = load(crate::bench::flexibert::KIND);
        let opts = models::family(flexibert.kind).probe_options();
        assert_eq!(fitness_set_bytes(&flexibert, 50, &opts).unwrap(), None);
        let tiny = Some(MemoryBudget::gb(1e-6).unwrap());
        assert_eq!(
            fitness_storage(&flexibert, 50, &opts, tiny).unwrap(),
            Storage::F32
        );
    }
}
