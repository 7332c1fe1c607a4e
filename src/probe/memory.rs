//! How much memory probing may use and how much a probe needs, so that a model too large for
//! the machine is refused with a clear message before it is built, instead of the process
//! being killed (or aborting on a failed allocation) halfway through.
//!
//! The limit ([`MemoryLimit`]) is `$LPZERO_PROBE_MEMORY_GB` when set (containers report the
//! host's free memory), else the memory the system has available when the check runs. The
//! need of one probe ([`probe_bytes`]) is an estimate from the architecture's shapes (its
//! [`ModelSize`], which its family computes) and the batch: four bytes per value for five
//! copies of the parameters (weights, gradients, and the probe's copies of both) and the
//! activations per token. It was calibrated against measured peaks and errs on the
//! high side; it is meant to refuse what cannot fit, not to predict exactly.

use anyhow::{bail, Context, Result};

use super::{PassMode, ProbeOptions};
use crate::bench::{Benchmark, Entry};
use crate::report::{available_memory_bytes, format_bytes};

/// Makes the C allocator keep freed memory for reuse instead of handing it back to the
/// system (glibc: no `mmap` for blocks under 32 MiB, no trimming of the heap top).
///
/// A probe allocates a fresh buffer for almost every engine operation; by default glibc maps
/// each large one anew and unmaps it on free, so every operation paid for page faults and for
/// the kernel clearing its pages (about a fifth of a probe's time). Reusing the freed memory
/// made the calibration probe about 20 % faster; the peak resident size is unchanged (the
/// memory kept is what the previous operation freed). A process-wide setting: the binary
/// calls it once at start. Does nothing on other C libraries.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // starts, and a refused value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Resident size (MiB) above which [`release_freed_memory`] hands freed memory back, at most:
/// with a limit below 8 GiB the threshold is a quarter of it.
const RELEASE_ABOVE_MIB: f64 = 2048.0;

/// Hands the memory freed so far back to the system (glibc `malloc_trim`) when the process
/// holds more than 2 GiB (or a quarter of the [`MemoryLimit`], when that is less); called
/// before each probe.
///
/// [`reuse_freed_memory`] has each worker thread keep what it freed for its next
/// allocations. With several threads and large probes (GPT-2 at 16 × 192: up to 6 GB for
/// one probe with the extra passes) every thread then kept as much as its largest probe ever
/// needed, and the peak was the sum of those, not of what ran at the same time. Returning it
/// once per probe costs page faults on the next probe's first touch, which is why small
/// processes (a FlexiBERT probe needs well under 1 GB) skip it. Under a low limit the
/// threshold follows the limit: an idle thread's kept memory is not in any estimate the
/// [`Gate`] counts. Does nothing on other C libraries or where the resident size cannot be
/// read.
pub fn release_freed_memory() {
    release_freed_memory_within(MemoryLimit::current().ok().flatten().as_ref());
}

/// [`release_freed_memory`] under a given limit (a caller's own, such as a search's budget);
/// `None`: no limit, the 2 GiB threshold.
pub fn release_freed_memory_within(limit: Option<&MemoryLimit>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let limit_mib = limit.map_or(f64::INFINITY, |l| l.bytes / (1u64 << 20) as f64);
        let above = RELEASE_ABOVE_MIB.min(limit_mib / 4.0);
        if crate::report::rss_mib().is_some_and(|mib| mib > above) {
            // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe
            // (it locks each arena in turn).
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Environment variable that sets the memory probing may use, in GB (10⁹ bytes).
pub const MEMORY_ENV: &str = "LPZERO_PROBE_MEMORY_GB";

/// Bytes of one stored value (`f32`).
const VALUE_BYTES: f64 = 4.0;

/// Copies of the parameters a probe holds: weights, gradients, and the probe's copies of both.
const PARAMETER_COPIES: f64 = 5.0;

/// Where a memory limit comes from (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// `$LPZERO_PROBE_MEMORY_GB`.
    Environment,
    /// The memory the system reported available.
    Available,
    /// A search's memory budget (`--memory-budget`, [`crate::search::budget`]).
    Budget,
}

/// The memory probing may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: f64,
    /// Where the number comes from.
    pub source: LimitSource,
}

impl MemoryLimit {
    /// The limit now: [`MEMORY_ENV`] when set (a positive number of GB), else the memory the
    /// system has available; `None` when neither is known (no check is then possible). Fails
    /// on a variable that is not a positive number.
    pub fn current() -> Result<Option<Self>> {
        match std::env::var(MEMORY_ENV) {
            Ok(text) => Ok(Some(Self {
                bytes: parse_gb(&text)? * 1e9,
                source: LimitSource::Environment,
            })),
            Err(_) => Ok(available_memory_bytes().map(|b| Self {
                bytes: b as f64,
                source: LimitSource::Available,
            })),
        }
    }

    /// The limit less `reserved` bytes kept for other uses (never below zero).
    pub fn less(self, reserved: f64) -> Self {
        Self {
            bytes: (self.bytes - reserved).max(0.0),
            ..self
        }
    }

    /// Says what the limit is and where it comes from, e.g. `3.20 GB (set by
    /// LPZERO_PROBE_MEMORY_GB)` or `21.5 GB (the memory available)`.
    pub fn describe(&self) -> String {
        match self.source {
            LimitSource::Environment => {
                format!("{} (set by {MEMORY_ENV})", format_bytes(self.bytes))
            }
            LimitSource::Available => format!(
                "{} (the memory available; set {MEMORY_ENV} to choose another limit)",
                format_bytes(self.bytes)
            ),
            LimitSource::Budget => format!(
                "{} (the search's memory budget; --memory-budget chooses another)",
                format_bytes(self.bytes)
            ),
        }
    }

    /// The smaller of two limits, either of which may be unknown.
    pub fn min(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.bytes < a.bytes { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Whether the limit is for the whole process, so that what the process holds already
    /// counts against it (a set limit or a budget; the memory available leaves it out
    /// already).
    pub fn includes_the_process(&self) -> bool {
        self.source != LimitSource::Available
    }
}

/// Parses the value of [`MEMORY_ENV`]: a finite number of GB above zero.
fn parse_gb(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(gb) if gb.is_finite() && gb > 0.0 => Ok(gb),
        Ok(_) => bail!(
            "{MEMORY_ENV}={}: expected a positive number of GB (such as 16); unset it to use \
             the memory the system has available",
            crate::report::clip(text)
        ),
        Err(_) => bail!(
            "{MEMORY_ENV}: expected a number of GB, got `{}`",
            crate::report::clip(text)
        ),
    }
}

/// What is about to be done with each architecture (what [`check_fits`] estimates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Build and probe it ([`probe_bytes`]).
    Probe,
    /// Only build it, as for counting parameters ([`parameter_bytes`]).
    Build,
}

/// What decides the memory an architecture needs, from its shapes alone (no tensor is
/// allocated, so it is safe on absurd sizes); `f64` so that it never overflows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSize {
    /// Trainable parameters (equal to the count of the built model).
    pub parameters: f64,
    /// About how many `f32` values a probe keeps alive per input token at its peak (forward
    /// activations saved for the backward pass, their gradients and the probe's copies), for
    /// the batch's tokens per row; calibrated on measured peaks, meant to reject what cannot
    /// fit, not to predict exactly.
    pub activation_floats_per_token: f64,
    /// The same for a pass by blocks ([`PassMode::ByBlocks`]), whose graph is one block's;
    /// `None` when the family does not run one for these options (then it runs whole).
    pub by_blocks_floats_per_token: Option<f64>,
    /// `f32` values of the expression inputs a probe keeps once slimmed for a search's fitness
    /// set (`act`, `head` when it is a list of its own, `softmax`, `grad`, `weight` and the
    /// position gradient), from the shapes; `None` when the family does not say. What a search
    /// weighs against its memory budget (`crate::search::budget`).
    pub input_floats: Option<f64>,
}

impl ModelSize {
    /// The floats per token of a pass run as `pass` asks.
    fn floats_per_token(&self, pass: PassMode) -> f64 {
        match (pass, self.by_blocks_floats_per_token) {
            (PassMode::ByBlocks, Some(f)) => f,
            _ => self.activation_floats_per_token,
        }
    }
}

/// Share of the estimate a probe without the extra passes is counted at: since the forward
/// graph is freed after the backward (`probe::parameter_grads`), such a probe peaked at 0.64–0.72
/// of the estimate on four GPT-2 decoders at 16 × 192 (the largest 4.58 GB of 6.38) and at
/// 0.42–0.58 on three FlexiBERT encoders (whole-process peak RSS, one thread); with the extra
/// passes at about the whole estimate (GPT-2's largest 6.21 GB of 6.38).
const PLAIN_PROBE_SHARE: f64 = 0.75;

/// Estimated peak bytes of probing a model of `size` with `opts` (see the module docs):
/// [`PLAIN_PROBE_SHARE`] of it without the extra passes.
pub fn probe_bytes(size: &ModelSize, opts: &ProbeOptions) -> f64 {
    let tokens = opts.batch as f64 * opts.seq_len as f64;
    let full = VALUE_BYTES
        * (PARAMETER_COPIES * size.parameters + tokens * size.floats_per_token(opts.pass));
    if opts.extra_passes {
        full
    } else {
        PLAIN_PROBE_SHARE * full
    }
}

/// Bytes of the parameters of a model of `size` alone (what building it costs, as for counting
/// parameters).
pub fn parameter_bytes(size: &ModelSize) -> f64 {
    VALUE_BYTES * size.parameters
}

/// Share of a probe's estimate the [`Gate`] adds to it for what no estimate counts: the
/// memory allocators hold between a probe's operations and each worker's own. The estimates
/// with the extra passes are about a probe's own need, and whole-process peaks of one GPT-2
/// probe at 16 × 192 were 1.12–1.25 times them (`config_0_j0` 1.49 GiB of 1.19,
/// `config_4_j9` 3.54 of 3.15); two threads under a limit of 4 GB counting the bare
/// estimates peaked at 4.67 GB over the whole GPT-2 suite.
pub const CONCURRENT_ALLOWANCE: f64 = 0.25;

/// Lets probes run at the same time only while their estimated needs ([`probe_bytes`]), each
/// with its [`CONCURRENT_ALLOWANCE`], fit together in the limit less the memory the process
/// held when the gate was made (its own data, outside every probe): a worker about to probe
/// waits for others to finish when its probe would take the sum past it. One probe may always
/// run (a probe larger than the limit alone is refused before, by [`check_fits`]). Which probes
/// overlap changes no value: each probe depends only on its architecture and the options.
pub struct Gate {
    /// Bytes that may be in flight at once (`None`: no limit known, nobody waits).
    limit: Option<u64>,
    /// Counted bytes and number of probes in flight.
    held: std::sync::Mutex<(u64, usize)>,
    freed: std::sync::Condvar,
}

/// A probe let through a [`Gate`]; what it was counted at is given back when dropped.
pub struct Pass<'a> {
    gate: &'a Gate,
    bytes: u64,
}

impl Gate {
    /// A gate for `limit` (`None`: every probe goes at once), of which `reserved` bytes are
    /// already in use outside the probes (the process's resident size when probing starts).
    pub fn new(limit: Option<&MemoryLimit>, reserved: f64) -> Self {
        Self {
            limit: limit.map(|l| l.less(reserved).bytes as u64),
            held: std::sync::Mutex::new((0, 0)),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits until a probe estimated at `bytes`, counted with its [`CONCURRENT_ALLOWANCE`],
    /// fits beside those in flight (or none is in flight), then counts it until the pass is
    /// dropped.
    pub fn enter(&self, bytes: f64) -> Pass<'_> {
        let bytes = (bytes.max(0.0) * (1.0 + CONCURRENT_ALLOWANCE)) as u64;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = self.limit {
            while held.1 > 0 && held.0.saturating_add(bytes) > limit {
                held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
            }
        }
        held.0 += bytes;
        held.1 += 1;
        Pass { gate: self, bytes }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut held = self.gate.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= self.bytes;
        held.1 -= 1;
        self.gate.freed.notify_all();
    }
}

/// Fails when one of the selected architectures needs more memory for `work` than `limit`
/// (the largest is named, with its estimate and what to lower); `size_of` gives an entry's
/// [`ModelSize`] (its family's). Several probes at once are kept within the limit by a
/// [`Gate`].
pub fn check_fits(
    bench: &Benchmark,
    selection: &[usize],
    opts: &ProbeOptions,
    limit: Option<MemoryLimit>,
    work: Work,
    size_of: &dyn Fn(&Entry) -> Result<ModelSize>,
) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let mut largest: Option<(usize, f64)> = None;
    for &i in selection {
        let entry = &bench.entries[i];
        let size =
            size_of(entry).with_context(|| format!("{} architecture {}", bench.kind, entry.key))?;
        let bytes = match work {
            Work::Probe => probe_bytes(&size, opts),
            Work::Build => parameter_bytes(&size),
        };
        if largest.is_none_or(|(_, b)| bytes > b) {
            largest = Some((i, bytes));
        }
    }
    let Some((i, bytes)) = largest else {
        return Ok(());
    };
    let key = &bench.entries[i].key;
    if bytes > limit.bytes {
        let (task, remedy) = match work {
            Work::Probe => (
                format!(
                    "to probe with a batch of {} × {} tokens",
                    opts.batch, opts.seq_len
                ),
                "lower the batch rows or the tokens per row (seq_len), use smaller sizes, or \
                 leave the architecture out",
            ),
            Work::Build => (
                "for its parameters alone".to_string(),
                "use smaller sizes or leave the architecture out",
            ),
        };
        bail!(
            "{} architecture {key} needs about {} {task}, more than the limit of {}: {remedy}",
            bench.kind,
            format_bytes(bytes),
            limit.describe()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_lets_probes_overlap_only_within_the_limit() {
        use std::sync::mpsc;
        use std::time::Duration;
        let limit = MemoryLimit {
            bytes: 10.0,
            source: LimitSource::Environment,
        };
        let gate = Gate::new(Some(&limit), 0.0);
        // Each probe counts at 1.25 × its estimate: 5 + 5 fit in 10 at once.
        let big = gate.enter(4.0);
        drop(gate.enter(4.0));
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let gate = &gate;
            s.spawn(move || {
                let _p = gate.enter(4.8);
                tx.send(()).unwrap();
            });
            // 5 + 6 > 10 (the bare estimates, 4 + 4.8, would fit): the second waits while
            // the first is in flight...
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            drop(big);
            // ...and goes once it is done.
            rx.recv_timeout(Duration::from_secs(30)).unwrap();
        });
        // Alone, a probe over the limit still goes (check_fits refuses those before).
        drop(gate.enter(50.0));
        // What the process held at the start is kept out of the limit.
        assert_eq!(Gate::new(Some(&limit), 2.0).limit, Some(8));
        assert_eq!(Gate::new(Some(&limit), 20.0).limit, Some(0));
        // Without a known limit nobody waits.
        let open = Gate::new(None, 0.0);
        let _a = open.enter(1e12);
        let _b = open.enter(1e12);
    }

    #[test]
    fn the_variable_must_be_a_positive_number() {
        assert_eq!(parse_gb(" 16 ").unwrap(), 16.0);
        for bad in ["0", "-1", "inf", "NaN"] {
            let e = parse_gb(bad).unwrap_err().to_string();
            assert!(e.contains("positive number"), "{bad}: {e}");
        }
        assert!(parse_gb("lots").unwrap_err().to_string().contains("`lots`"));
        let limit = MemoryLimit {
            bytes: 1000.0,
            source: LimitSource::Environment,
        };
        assert_eq!(limit.describe(), "1.00 kB (set by LPZERO_PROBE_MEMORY_GB)");
        // The smaller of two limits wins; a budget, like a set limit, covers the whole process.
        let budget = MemoryLimit {
            bytes: 600.0,
            source: LimitSource::Budget,
        };
        assert_eq!(MemoryLimit::min(Some(limit), Some(budget)), Some(budget));
        assert_eq!(MemoryLimit::min(None, Some(limit)), Some(limit));
        assert_eq!(MemoryLimit::min(None, None), None);
        assert!(budget.describe().contains("--memory-budget"));
        assert!(budget.includes_the_process() && limit.includes_the_process());
        let available = MemoryLimit {
            source: LimitSource::Available,
            ..limit
        };
        assert!(!available.includes_the_process());
        assert_eq!(limit.less(1500.0).bytes, 0.0);
    }
}
