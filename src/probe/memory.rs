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
/// system (glibc: no `mmap` for blocks under 32 MiB, no trimming of the heap top, one arena
/// for every thread).
///
/// A probe allocates a fresh buffer for almost every engine operation; by default glibc maps
/// each large one anew and unmaps it on free, so every operation paid for page faults and for
/// the kernel clearing its pages (about a fifth of a probe's time). Reusing the freed memory
/// made the calibration probe about 20 % faster; the peak resident size is unchanged (the
/// memory kept is what the previous operation freed).
///
/// One arena: by default each thread allocates from an arena of its own, which keeps what
/// that thread freed for that thread alone (with two workers and large probes each kept as
/// much as its largest probe ever needed) and unmaps a heap of it whenever the heap empties,
/// so the next buffer was mapped and cleared again. Sharing the main arena, what one probe
/// frees any thread's next probe reuses, the resident size is the most that probes held at
/// once, and nothing needs handing back between probes ([`release_freed_memory_within`]): the
/// 31 largest GPT-2 decoders' baselines took 134 s instead of 147–149 s on two threads,
/// at the same peak (2.9 GB). A process-wide setting: the binary calls it once at start.
/// Does nothing on other C libraries.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // starts, and a refused value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the memory freed so far back to the system (glibc `malloc_trim`) when the process
/// holds more than the [`MemoryLimit`] allows; called before each probe.
///
/// With [`reuse_freed_memory`]'s one arena, the memory the process keeps is what its probes
/// held at the same time, which a [`Gate`] keeps within the limit; what a finished probe
/// freed is reused by the next one, on whichever thread. Handing it back before every probe
/// (as was done while each thread had an arena of its own) made every probe fault in and
/// clear its pages again: 11 % of the time of the largest GPT-2 decoders' baselines. So
/// memory is handed back only when the process holds more than the limit (the limit is an
/// estimate's and the allocator's pieces can be scattered). Does nothing on other C
/// libraries or where the resident size cannot be read.
pub fn release_freed_memory() {
    release_freed_memory_within(MemoryLimit::current().ok().flatten().as_ref());
}

/// [`release_freed_memory`] under a given limit (a caller's own, such as a search's budget);
/// `None`: no limit, nothing handed back.
pub fn release_freed_memory_within(limit: Option<&MemoryLimit>) {
    if crate::report::rss_mib().is_some_and(|mib| holds_more_than(mib, limit)) {
        release_all_freed_memory();
    }
}

/// Whether a process resident at `rss_mib` MiB holds more than `limit` (never without one).
fn holds_more_than(rss_mib: f64, limit: Option<&MemoryLimit>) -> bool {
    limit.is_some_and(|l| rss_mib * (1u64 << 20) as f64 > l.bytes)
}

/// Hands every freed piece of memory back to the system now (glibc `malloc_trim`), whatever
/// the process holds: before the resident size is read as what the process needs (a
/// [`Gate`]'s reserve). Does nothing on other C libraries.
pub fn release_all_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe (it locks
    // each arena in turn).
    unsafe {
        libc::malloc_trim(0);
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
    /// A command's memory budget (`--memory-budget` of a search, [`crate::search::budget`], or
    /// of `score` and `baselines`).
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
                "{} (the memory budget; --memory-budget chooses another)",
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
/// `PLAIN_PROBE_SHARE` of it without the extra passes.
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

/// Hands out the architectures to probe so that probes run at the same time only while their
/// estimated needs ([`probe_bytes`]) fit together in the limit less the memory the process
/// held when the gate was made (its own data, outside every probe). The estimates need no
/// margin: measured whole-process peaks of single GPT-2 probes with every extra pass were
/// below them (`config_0_j0` 1.19 GiB of 1.49, `config_4_j9` 3.15 of 3.54), and the whole
/// GPT-2 baseline suite on two threads within 4 GB peaked at 3.68 GiB.
///
/// Under a limit the largest waiting probe goes first and a worker takes the largest one that
/// fits beside those in flight, waiting only when none does; so large probes pair with small
/// ones instead of waiting in line for each other. One probe may always run alone (a probe
/// larger than the limit alone is refused before, by [`check_fits`]). Without a limit probes
/// go in order and nobody waits. Which probes overlap, and in what order they
/// run, changes no value: each probe depends only on its architecture and the options.
pub struct Gate {
    /// Bytes that may be in flight at once (`None`: no limit known, nobody waits).
    limit: Option<u64>,
    /// The limit the gate was made for, for [`release_freed_memory_within`].
    whole: Option<MemoryLimit>,
    state: std::sync::Mutex<GateState>,
    freed: std::sync::Condvar,
}

/// What a [`Gate`] counts: bytes and probes in flight, and the items not yet handed out
/// with their counted bytes, in the order they are offered.
struct GateState {
    held: u64,
    in_flight: usize,
    waiting: Vec<(usize, u64)>,
}

/// An item let through a [`Gate`]; what it was counted at is given back when dropped.
pub struct Pass<'a> {
    gate: &'a Gate,
    bytes: u64,
    item: usize,
}

impl Pass<'_> {
    /// The item to probe: an index into the `needs` the gate was made with.
    pub fn item(&self) -> usize {
        self.item
    }
}

impl Gate {
    /// A gate handing out items `0..needs.len()`, item `i` estimated at `needs[i]` bytes, for
    /// `limit` (`None`: in order, all at once), of which `reserved` bytes are already in use
    /// outside the probes (the process's resident size when probing starts).
    pub fn new(limit: Option<&MemoryLimit>, reserved: f64, needs: &[f64]) -> Self {
        let whole = limit.copied();
        let limit = limit.map(|l| l.less(reserved).bytes as u64);
        let mut waiting: Vec<(usize, u64)> = needs
            .iter()
            .enumerate()
            .map(|(i, &n)| (i, n.max(0.0) as u64))
            .collect();
        if limit.is_some() {
            // Largest first (a stable sort: equal needs keep their order).
            waiting.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
        }
        Self {
            limit,
            whole,
            state: std::sync::Mutex::new(GateState {
                held: 0,
                in_flight: 0,
                waiting,
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    /// The next item to probe: the first waiting one that fits beside those in flight (any
    /// when none is in flight or there is no limit), waiting until one does; `None` once every
    /// item has been handed out or the gate was stopped. First hands freed memory back if the
    /// process holds more than the limit ([`release_freed_memory_within`]).
    pub fn next(&self) -> Option<Pass<'_>> {
        release_freed_memory_within(self.whole.as_ref());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.waiting.is_empty() {
                return None;
            }
            let room = match self.limit {
                Some(limit) if state.in_flight > 0 => limit.saturating_sub(state.held),
                _ => u64::MAX,
            };
            if let Some(at) = state.waiting.iter().position(|&(_, b)| b <= room) {
                let (item, bytes) = state.waiting.remove(at);
                state.held += bytes;
                state.in_flight += 1;
                return Some(Pass {
                    gate: self,
                    bytes,
                    item,
                });
            }
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hands out nothing more (after an error): every later [`Gate::next`] returns `None`.
    pub fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting.clear();
        self.freed.notify_all();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        state.held -= self.bytes;
        state.in_flight -= 1;
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
        let gate = Gate::new(Some(&limit), 0.0, &[5.0, 5.0, 6.0, 1.0, 5.0]);
        // The largest goes first; beside it (6 of 10) only the small one fits, not the next
        // in line (5).
        let big = gate.next().unwrap();
        assert_eq!(big.item(), 2);
        let small = gate.next().unwrap();
        assert_eq!(small.item(), 3);
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let gate = &gate;
            s.spawn(move || {
                let p = gate.next().unwrap();
                tx.send(p.item()).unwrap();
            });
            // Nothing else fits beside 6 + 1: the third waits while the large one is in
            // flight...
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            drop(big);
            // ...and goes once it is done, with the largest waiting (equal needs in order).
            assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 0);
        });
        drop(small);
        // Items 1 and 4 (5 each) fit together.
        let (a, b) = (gate.next().unwrap(), gate.next().unwrap());
        assert_eq!((a.item(), b.item()), (1, 4));
        assert!(gate.next().is_none());
        // Alone, a probe over the limit still goes (check_fits refuses those before).
        let huge = Gate::new(Some(&limit), 0.0, &[50.0]);
        assert_eq!(huge.next().map(|p| p.item()), Some(0));
        // What the process held at the start is kept out of the limit.
        assert_eq!(Gate::new(Some(&limit), 2.0, &[]).limit, Some(8));
        assert_eq!(Gate::new(Some(&limit), 20.0, &[]).limit, Some(0));
        // Without a known limit the items go in order and nobody waits.
        let open = Gate::new(None, 0.0, &[1.0, 1e12, 1e12]);
        let passes: Vec<Pass> = std::iter::from_fn(|| open.next()).collect();
        let items: Vec<usize> = passes.iter().map(Pass::item).collect();
        assert_eq!(items, [0, 1, 2]);
        // A stopped gate hands out nothing more.
        let stopped = Gate::new(None, 0.0, &[1.0, 1.0]);
        let first = stopped.next().unwrap();
        stopped.stop();
        assert!(stopped.next().is_none());
        drop(first);
    }

    #[test]
    fn freed_memory_is_handed_back_only_above_the_limit() {
        let limit = MemoryLimit {
            bytes: 4e9,
            source: LimitSource::Budget,
        };
        // 3 000 MiB is 3.15 GB, under 4 GB: kept for the next probe (a quarter of the limit
        // used to be enough to hand it back), 4 000 MiB (4.19 GB) is over it.
        assert!(!holds_more_than(3000.0, Some(&limit)));
        assert!(holds_more_than(4000.0, Some(&limit)));
        // Without a limit nothing is handed back, whatever the process holds.
        assert!(!holds_more_than(1e6, None));
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
