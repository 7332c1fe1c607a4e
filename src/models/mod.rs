//! Model families: the seam through which lpzero knows a family of architectures.
//!
//! A family is a benchmark format (its bench file in [`crate::bench`], which also names it)
//! and a model file here that builds its randomly initialised networks and implements
//! [`Family`]: its probe batch, how its model is probed (the per-family part of
//! [`crate::probe::run`]: one forward pass and its captures), how its parameters are counted,
//! its default batch shape, and what its probes mean to the proxies
//! ([`crate::probe::Semantics`]). The trait and its types are in [`mod@family`]. Every other
//! part of lpzero reaches a family through [`family()`]; none names one.
//!
//! Adding a family (say Llama): a bench file `bench/llama.rs` (records, loader, a
//! [`crate::bench::BenchFormat`] and its `KIND`), a model file `models/llama.rs` (the network,
//! built from [`crate::nn`], and a [`Family`]), and one line in [`FAMILIES`].

pub mod family;
pub mod flexibert;
pub mod gpt2_flex;
pub mod llama;

pub use family::{Counted, Family, FamilyInfo, Reference};

use std::path::Path;
use std::sync::mpsc;

use anyhow::{anyhow, Context, Result};

use crate::bench::{jsonl, BenchKind, Benchmark};
use crate::probe::memory;
use crate::probe::{Probe, ProbeOptions};

/// Every family lpzero knows, in the order commands list them: the registration of a
/// family is its line here.
pub static FAMILIES: &[&dyn Family] = &[&flexibert::FAMILY, &gpt2_flex::FAMILY, &llama::FAMILY];

/// The registered family of `kind`.
///
/// # Panics
///
/// When `kind` is not registered in [`FAMILIES`]: every [`BenchKind`] comes from a bench file,
/// so this is a family that was written but not registered.
pub fn family(kind: BenchKind) -> &'static dyn Family {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.kind() == kind)
        .unwrap_or_else(|| panic!("the family {kind} is not registered in models::FAMILIES"))
}

/// Every registered family, as kinds, in [`FAMILIES`] order.
pub fn kinds() -> Vec<BenchKind> {
    FAMILIES.iter().map(|f| f.kind()).collect()
}

/// The registered family called `name`, if any.
pub fn kind_named(name: &str) -> Option<BenchKind> {
    FAMILIES.iter().map(|f| f.kind()).find(|k| k.name() == name)
}

/// Reads and validates a bench file ([`crate::bench::jsonl`]) whose records may name any
/// registered family.
pub fn load_bench_file(path: &Path) -> Result<Benchmark> {
    jsonl::load(path, &kinds())
}

/// Probes the selected architectures of `bench` on `threads` worker threads (one architecture
/// per thread at a time, each single-threaded inside the engine, except that the large
/// products of a dense layer and the proxies' per-layer maths use the cores no other probe
/// holds: [`crate::nn::cores`]) and maps each probe with `f` as soon as it exists, so probes
/// are never all held at once. Results come back in selection
/// order; `on_done` is called after each architecture (for progress).
///
/// Before anything is built, fails when an architecture needs more memory than probing may
/// use ([`memory::check_fits`]); while probing, hands the architectures out through
/// [`probe_gate`]: probes run at once only while their estimated needs fit in that limit
/// together (less what the process holds already when the limit is set), largest first, so a
/// low `$LPZERO_PROBE_MEMORY_GB` makes large architectures take turns beside small ones.
pub fn probe_map<T: Send>(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    threads: usize,
    f: impl Fn(usize, Probe) -> Result<T> + Sync,
    on_done: impl Fn() + Sync,
) -> Result<Vec<T>> {
    probe_map_within(bench, selection, opts, threads, None, f, on_done)
}

/// [`probe_map`] with the probes also taking turns within `turns` (for the whole process, such
/// as a `--memory-budget`) when that is below probing's own limit. Only the turns follow
/// it: an architecture is refused only when it cannot fit probing's limit.
pub fn probe_map_within<T: Send>(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    threads: usize,
    turns: Option<memory::MemoryLimit>,
    f: impl Fn(usize, Probe) -> Result<T> + Sync,
    on_done: impl Fn() + Sync,
) -> Result<Vec<T>> {
    let family = family(bench.kind);
    let batch = family.batch(opts)?;
    let gate = probe_gate(bench, selection, opts, turns)?;
    let (tx, rx) = mpsc::channel();
    // The cores given to probing: one per worker, or the engine's own threads when a single
    // worker keeps them (`--threads 1` leaves candle's thread count alone).
    let cores = if threads <= 1 {
        crate::nn::cores::engine_cores()
    } else {
        threads
    };
    let threads = threads.clamp(1, selection.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (batch, f, on_done, gate) = (&batch, &f, &on_done, &gate);
            scope.spawn(move || loop {
                let Some(pass) = gate.next() else {
                    break;
                };
                let pos = pass.item();
                let index = selection[pos];
                let entry = &bench.entries[index];
                // The probe's work may use the given cores no other probe holds.
                let lease = crate::nn::cores::Lease::new(cores);
                let result = family
                    .probe(&entry.arch, index, opts, batch)
                    .and_then(|p| f(index, p.stored_as(opts.storage)))
                    .with_context(|| format!("{} architecture {}", bench.kind, entry.key));
                drop(lease);
                drop(pass);
                let failed = result.is_err();
                on_done();
                if tx.send((pos, result)).is_err() || failed {
                    // Stop early on the first error: the receiver reports it.
                    gate.stop();
                    break;
                }
            });
        }
    });
    drop(tx);
    let mut out: Vec<Option<T>> = (0..selection.len()).map(|_| None).collect();
    for (pos, result) in rx {
        out[pos] = Some(result?);
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| anyhow!("internal error: an architecture was not probed")))
        .collect()
}

/// The [`memory::Gate`] through which the probes of `selection` (items are positions in it)
/// take turns: within the smaller of probing's limit ([`memory::MemoryLimit::current`]) and
/// `turns`, less what the process holds already when that limit is for the whole process.
/// Fails before anything is built when an architecture needs more memory than probing may
/// use ([`memory::check_fits`]; `turns` never refuses one: a probe larger than it runs alone).
pub fn probe_gate(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    turns: Option<memory::MemoryLimit>,
) -> Result<memory::Gate> {
    let family = family(bench.kind);
    let limit = memory::MemoryLimit::current()?;
    let size_of = |entry: &crate::bench::Entry| family.size(&entry.arch, opts);
    memory::check_fits(bench, selection, opts, limit, memory::Work::Probe, &size_of)?;
    let limit = memory::MemoryLimit::min(limit, turns);
    let own = match limit {
        Some(l) if l.includes_the_process() => {
            // What the process holds, without what it freed and keeps for reuse.
            memory::release_all_freed_memory();
            crate::report::rss_mib().map_or(0.0, |mib| mib * (1u64 << 20) as f64)
        }
        _ => 0.0,
    };
    let needs: Vec<f64> = selection
        .iter()
        .map(|&i| size_of(&bench.entries[i]).map_or(0.0, |s| memory::probe_bytes(&s, opts)))
        .collect();
    Ok(memory::Gate::new(limit.as_ref(), own, &needs))
}
