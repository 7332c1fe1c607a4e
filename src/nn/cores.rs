//! The cores a probe has to spare.
//!
//! A command probing on `--threads N` runs N architectures at once, each single-threaded in
//! the engine. When fewer probes are in flight than cores were given (a large probe running
//! alone within a memory budget, or the last probes of a run), the idle cores would wait. A
//! probe holds a [`Lease`] for the cores given to probing (`models::probe_map` takes one per
//! probe), and the work of a probe that splits into independent parts (the dense layers'
//! products, [`super::matmul`]; the proxies' per-layer maths, [`map_free`]) uses the given
//! cores shared among the probes in flight ([`free_cores`]). Each part is computed as it
//! would be on one core and the parts are put together in their order, so no value depends
//! on how many cores there were.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Probes in flight in this process (holding a [`Lease`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Cores given to the probing of this thread's current lease (1 without one).
    static GIVEN: Cell<usize> = const { Cell::new(1) };
}

/// A probe in flight on this thread, out of `cores` given to probing: while it lives, the
/// thread's work may use the given cores that no other probe holds.
pub struct Lease {
    before: usize,
}

impl Lease {
    /// Takes a lease for a probe on this thread; `cores`: the cores given to probing (the
    /// command's `--threads`).
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

/// Cores this thread's work may use now: the cores of its lease shared among the
/// probes in flight (1 without a lease).
pub fn free_cores() -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
