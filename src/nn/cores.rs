//! The cores a probe has to spare.
//!
//! A command probing on `--threads N` runs N architectures at once, each single-threaded in
//! the engine. When fewer probes are in flight than cores were given (a large probe running
//! alone within a memory budget, or the last probes of a run), the idle cores would wait. A
//! probe holds a [`Lease`] for the cores given to probing (`models::probe_map` takes one per
//! probe: `--threads`, or the engine's own cores, [`engine_cores`], for a single worker), and
//! the work of a probe that splits into independent parts uses the given cores shared among
//! the probes in flight ([`free_cores`]): the dense layers' products and the attention's
//! batched ones ([`super::matmul`]), the
//! element-wise and row-wise passes of the engine's own ops ([`fill_rows`], [`for_rows`]:
//! GELU, LayerNorm, softmax, log-sum-exp, their gradients, the dense layer's bias), the
//! weights' Box–Muller transform (`Rng::normal_vec_in`) and the proxies' per-layer maths
//! ([`map_free`]). Each part is computed as it would be on one core and the parts are put
//! together in their order, so no value depends on how many cores there were.
//!
//! Even a probe alone keeps its cores busy only part of the time (its serial stretches leave
//! the other cores idle); work whose inputs exist before it is needed can start [`Ahead`] on a
//! thread of idle priority, which the system runs only on a core that would otherwise wait.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Probes in flight in this process (holding a [`Lease`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Cores given to the probing of this thread's current lease (1 without one).
    static GIVEN: Cell<usize> = const { Cell::new(1) };
    /// Tests only: what [`free_cores`] says on this thread, whatever the leases in flight
    /// (other tests hold leases at the same time).
    #[cfg(test)]
    static FORCED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A probe in flight on this thread, out of `cores` given to probing: while it lives, the
/// thread's work may use the given cores that no other probe holds.
pub struct Lease {
    before: usize,
}

impl Lease {
    /// Takes a lease for a probe on this thread; `cores`: the cores given to probing (the
    /// command's `--threads`, or [`engine_cores`] for a single worker).
    pub fn new(cores: usize) -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let before = GIVEN.with(|g| g.replace(cores.max(1)));
        Self { before }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        GIVEN.with(|g| g.set(self.before));
    }
}

/// The cores the engine itself uses inside one model: candle's thread count (the
/// `RAYON_NUM_THREADS` setting, or else the cores this process may run on; the commands set
/// it to 1 when they probe side by side). A single worker is given these ([`Lease::new`]).
pub fn engine_cores() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Cores this thread's work may use now: the cores of its lease shared among the
/// probes in flight (1 without a lease).
pub fn free_cores() -> usize {
    #[cfg(test)]
    if let Some(cores) = FORCED.with(Cell::get) {
        return cores;
    }
    let given = GIVEN.with(Cell::get);
    if given <= 1 {
        return 1;
    }
    (given / IN_FLIGHT.load(Ordering::SeqCst).max(1)).max(1)
}

/// `f` of every item, in the items' order, computed on up to [`free_cores`] threads (the
/// calling one among them), each taking the next item not yet taken. The results are those
/// of `items.iter().map(f)`; only the threads differ.
pub fn map_free<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = free_cores().min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                break done;
            };
            done.push((i, f(item)));
        }
    };
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mine = work();
        for (i, r) in helpers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .chain(mine)
        {
            results[i] = Some(r);
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every item was taken once"))
        .collect()
}

/// A list of independent items of work started before anyone needs it: a thread of idle
/// priority (Linux `SCHED_IDLE`) computes the items in order, one at a time, from the
/// moment the list is made, and [`Ahead::results`] computes on the [`free_cores`] whatever it
/// has not finished by then (an item in progress on the idle thread too: nobody waits on a
/// thread that may not get a core). Each item's result is `job(i)` whichever thread
/// computes it, so nothing depends on how far the work got ahead. Once the results are read,
/// or the last handle is dropped, the thread stops after its current item.
#[derive(Clone)]
pub struct Ahead<R> {
    /// Dropped with the last handle, which stops the thread.
    owner: Arc<AheadOwner<R>>,
}

/// What the handles of one [`Ahead`] share; its drop stops the work left.
struct AheadOwner<R> {
    work: Arc<AheadWork<R>>,
}

/// The state of an [`Ahead`], shared with its thread.
struct AheadWork<R> {
    /// Set when nobody will read the thread's results any more.
    stopped: AtomicBool,
    /// The work of one item.
    job: Box<dyn Fn(usize) -> R + Send + Sync>,
    /// Results by item, `None` until computed.
    results: Mutex<Vec<Option<R>>>,
    /// CPU seconds the idle thread spent on the items whose results it stored.
    spent: Mutex<f64>,
}

impl<R> std::fmt::Debug for Ahead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let results = self.owner.work.lock();
        f.debug_struct("Ahead")
            .field("items", &results.len())
            .field("done", &results.iter().filter(|r| r.is_some()).count())
            .finish()
    }
}

impl<R: Send + Sync + Clone + 'static> Ahead<R> {
    /// Starts `job` on the items `0..len` on a thread of idle priority. Should the thread not
    /// start, [`Ahead::results`] does all the work.
    pub fn start(len: usize, job: impl Fn(usize) -> R + Send + Sync + 'static) -> Self {
        let work = Arc::new(AheadWork {
            stopped: AtomicBool::new(false),
            job: Box::new(job),
            results: Mutex::new((0..len).map(|_| None).collect()),
            spent: Mutex::new(0.0),
        });
        let theirs = Arc::clone(&work);
        let started = std::thread::Builder::new()
            .name("lpzero-ahead".into())
            .spawn(move || {
                lower_to_idle_priority();
                for i in 0..len {
                    if theirs.stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let start = thread_cpu_seconds();
                    let r = (theirs.job)(i);
                    let first = theirs.lock()[i].replace(r).is_none();
                    if first {
                        let spent = thread_cpu_seconds() - start;
                        *theirs.spent.lock().unwrap_or_else(|e| e.into_inner()) += spent;
                    }
                }
            });
        drop(started);
        Self {
            owner: Arc::new(AheadOwner { work }),
        }
    }

    /// Every item's result, in order: the idle thread is stopped, and the items it has not
    /// finished are computed now on up to [`free_cores`] threads ([`map_free`]).
    pub fn results(&self) -> Vec<R> {
        let work = &self.owner.work;
        work.stopped.store(true, Ordering::SeqCst);
        let missing: Vec<usize> = (work.lock().iter().enumerate())
            .filter(|(_, r)| r.is_none())
            .map(|(i, _)| i)
            .collect();
        let computed = map_free(&missing, |&i| (work.job)(i));
        let mut results = work.lock();
        for (i, r) in missing.into_iter().zip(computed) {
            results[i] = Some(r);
        }
        results
            .iter()
            .map(|r| r.clone().expect("every item was computed"))
            .collect()
    }
}

impl<R> Ahead<R> {
    /// CPU seconds the idle thread spent on the items whose results it delivered (what the
    /// work cost before anyone asked for it, for reporting a proxy's time in full).
    pub fn seconds_ahead(&self) -> f64 {
        *self
            .owner
            .work
            .spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// CPU seconds the calling thread has used (0 where it cannot be read).
fn thread_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid struct it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

impl<R> AheadWork<R> {
    /// The results, whatever a panicking thread left.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<R>>> {
        self.results.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<R> Drop for AheadOwner<R> {
    fn drop(&mut self) {
        self.work.stopped.store(true, Ordering::SeqCst);
    }
}

/// Gives the calling thread the system's lowest scheduling class (Linux `SCHED_IDLE`): it
/// then runs only on a core no ordinary thread wants, so work started [`Ahead`] does not
/// slow the probe it runs beside. Elsewhere, or if refused, the thread keeps its priority.
fn lower_to_idle_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread's policy; the
    // parameter is a valid, initialised struct (priority 0, the only one SCHED_IDLE takes).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// Fewest values an element-wise pass ([`fill_rows`], [`for_rows`]) splits between cores
/// for: below this a helper thread's start costs about what it saves.
pub const MIN_SPLIT_VALUES: usize = 1 << 17;

/// `f(first_row, block)` for contiguous blocks of whole rows (of `width`) of `data`, the
/// blocks on up to [`free_cores`] threads (the calling one among them) when `work` (the values
/// the pass reads and writes) is at least [`MIN_SPLIT_VALUES`].
fn split_rows<T: Send>(
    data: &mut [T],
    width: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let parts = if work >= MIN_SPLIT_VALUES {
        free_cores()
    } else {
        1
    };
    in_blocks(parts, data, width, f);
}

/// `f(first_row, block)` for `parts` contiguous blocks of whole rows (of `width`) of `data`
/// (fewer when there are fewer rows), each on its own thread, the calling one taking the
/// first: how every split pass here, and [`super::matmul`]'s split products, share out rows.
pub fn in_blocks<T: Send>(
    parts: usize,
    data: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let width = width.max(1);
    let rows = data.len() / width;
    assert_eq!(
        rows * width,
        data.len(),
        "{} values are not rows of {width}",
        data.len()
    );
    let parts = parts.min(rows).max(1);
    if parts == 1 {
        f(0, data);
        return;
    }
    let per = rows.div_ceil(parts) * width;
    std::thread::scope(|scope| {
        let mut blocks = data.chunks_mut(per).enumerate();
        let first = blocks.next().map(|(_, b)| b);
        let helpers: Vec<_> = blocks
            .map(|(i, block)| {
                let f = &f;
                scope.spawn(move || f(i * per / width, block))
            })
            .collect();
        if let Some(block) = first {
            f(0, block);
        }
        // A helper's panic goes on with its own message.
        for helper in helpers {
            helper
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
    });
}

/// Tests only: runs `f` with [`free_cores`] saying `cores` on this thread.
#[cfg(test)]
pub(crate) fn with_cores<R>(cores: usize, f: impl FnOnce() -> R) -> R {
    FORCED.with(|c| c.set(Some(cores)));
    let result = f();
    FORCED.with(|c| c.set(None));
    result
}

/// `f(first_row, block)` over `data` (whole rows of `width`) in place, block by block, on
/// the cores the probe has to spare (see [`fill_rows`]). A row's new values must depend only
/// on the row, so the result is the same on any number of cores.
pub fn for_rows(data: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let work = data.len();
    split_rows(data, width, work, f);
}

/// [`for_rows`] for a pass whose work is not the array's size: `work` (in element-wise
/// values' worth) decides the split.
pub fn for_rows_for(
    work: usize,
    data: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    split_rows(data, width, work, f);
}

/// A new array of `len` values (whole rows of `width`), filled block by block:
/// `f(first_row, block)` gets a contiguous block of whole rows, zeroed, and writes them. The
/// blocks go to up to [`free_cores`] threads (the calling one among them) when the array holds
/// at least [`MIN_SPLIT_VALUES`]. A row's values must depend only on the row (its index and
/// the inputs), never on the block, so the result is the same on any number of cores. The
/// zeroing is done by the thread that then writes the block, so it is split too (only the
/// causal softmax and the column sums of a dense layer's bias gradient rely on the zeros;
/// every other op writes each value).
pub fn fill_rows(len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    fill_rows_for(len, len, width, f)
}

/// [`fill_rows`] for a pass whose work is not its output's size: `work` values read and
/// written (a sum over many rows into a few, say) decide the split.
pub fn fill_rows_for(
    work: usize,
    len: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    use std::mem::MaybeUninit;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    split_rows(
        &mut out.spare_capacity_mut()[..len],
        width,
        work,
        |first_row, block| {
            block.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `block` was initialised just above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let block = unsafe { &mut *(block as *mut [MaybeUninit<f32>] as *mut [f32]) };
            f(first_row, block);
        },
    );
    // SAFETY: the blocks cover the spare capacity's first `len` values, each initialised
    // above; a panic in `f` propagates before this line.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work started ahead gives `job(i)` for every item in order, whether read at once or
    /// after the idle thread had time to work, and reading it never waits on an item the idle
    /// thread is stuck in: that item is computed again by the reader.
    #[test]
    fn work_ahead_gives_every_item_in_order_without_waiting_on_the_idle_thread() {
        use std::sync::atomic::AtomicBool;
        let job = |i: usize| (i * i) as f64 + 0.5;
        let want: Vec<f64> = (0..40).map(job).collect();
        assert_eq!(Ahead::start(40, job).results(), want);
        let ahead = Ahead::start(40, job);
        let again = ahead.clone();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ahead.results(), want);
        assert_eq!(again.results(), want, "read twice: the same");
        assert_eq!(Ahead::start(0, job).results(), Vec::<f64>::new());

        // The idle thread holds item 0 until released; the reader must not wait for it.
        let release = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let (r, h) = (Arc::clone(&release), Arc::clone(&held));
        let stuck = Ahead::start(3, move |i| {
            if std::thread::current().name() == Some("lpzero-ahead") && i == 0 {
                h.store(true, Ordering::SeqCst);
                let start = std::time::Instant::now();
                while !r.load(Ordering::SeqCst) && start.elapsed().as_secs() < 30 {
                    std::thread::yield_now();
                }
            }
            job(i)
        });
        while !held.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert_eq!(stuck.results(), want[..3]);
        assert!(
            !release.load(Ordering::SeqCst),
            "the results came while the idle thread still held its item"
        );
        release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn the_given_cores_are_shared_among_the_probes_in_flight() {
        assert_eq!(free_cores(), 1, "no lease, one core");
        let lease = Lease::new(4);
        // Other tests may hold leases too; alone this lease has all 4.
        assert!((1..=4).contains(&free_cores()));
        drop(lease);
        assert_eq!(free_cores(), 1);
    }

    #[test]
    fn map_free_keeps_the_order_on_any_number_of_cores() {
        let items: Vec<u64> = (0..50).collect();
        let square = |x: &u64| x * x;
        let alone: Vec<u64> = items.iter().map(square).collect();
        assert_eq!(map_free(&items, square), alone);
        let _lease = Lease::new(3);
        assert_eq!(map_free(&items, square), alone);
        assert!(map_free(&[] as &[u64], square).is_empty());
    }

    #[test]
    fn fill_rows_is_the_same_on_any_number_of_cores() {
        // Rows of 7, enough values to split; each value from its row and column only.
        let (rows, width) = (MIN_SPLIT_VALUES / 7 + 3, 7);
        let f = |first: usize, block: &mut [f32]| {
            for (r, row) in block.chunks_exact_mut(width).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = ((first + r) * 31 + j) as f32 * 0.5;
                }
            }
        };
        let alone = with_cores(1, || fill_rows(rows * width, width, f));
        assert_eq!(alone.len(), rows * width);
        assert_eq!(alone[width * 5 + 2], (5 * 31 + 2) as f32 * 0.5);
        for cores in 2..=5 {
            assert_eq!(
                with_cores(cores, || fill_rows(rows * width, width, f)),
                alone
            );
        }
        // A block that writes nothing leaves zeros; an empty array is fine.
        assert!(fill_rows(rows * width, width, |_, _| {})
            .iter()
            .all(|&v| v == 0.0));
        assert!(fill_rows(0, width, f).is_empty());
    }
}
