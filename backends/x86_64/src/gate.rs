//! The gate between compiled blocks: how far a chained run may go, and the wake-up
//! flags that end it early.
//!
//! Compiled code goes on from one block into the next only while the environment's
//! instruction counter is below the gate's limit: one compare at each chained exit.
//! Raising a wake-up flag (from another thread, or from a device the guest touched)
//! also lowers the limit to 0, so the same compare sends the run back to its caller
//! at the next block boundary; the caller looks at the flags there.
//!
//! The two sides order their stores and loads sequentially consistently, which loses
//! no wake-up: the raiser stores its flag, then 0 into the limit; the run stores its
//! limit, then reads the flags and closes the gate itself if one is set. If the run's
//! read misses the flag, the raiser's store of 0 comes after the run's store of the
//! limit and is the one that stays.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Wake-up flags of a [`Gate`].
pub const FLAGS: usize = 4;

/// A chained run's limit and the wake-up flags that close it.
#[derive(Debug, Default)]
pub struct Gate {
    flags: [AtomicBool; FLAGS],
    limit: AtomicU64,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Raises flag `i` (below [`FLAGS`]) and closes the gate: a run in progress
    /// returns at its next block boundary.
    pub fn raise(&self, i: usize) {
        if let Some(f) = self.flags.get(i) {
            f.store(true, Ordering::SeqCst);
            self.limit.store(0, Ordering::SeqCst);
        }
    }

    /// Whether flag `i` is raised (a relaxed load: a hint).
    pub fn hint(&self, i: usize) -> bool {
        self.flags.get(i).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Whether flag `i` is raised (ordered with the raiser's store).
    pub fn is_raised(&self, i: usize) -> bool {
        self.flags.get(i).is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Lowers flag `i`; whether it was raised.
    pub fn take(&self, i: usize) -> bool {
        self.flags
            .get(i)
            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }

    /// Lets a run chain while the environment's counter is below `limit`, unless a
    /// flag is raised (then not at all).
    pub(crate) fn open(&self, limit: u64) {
        self.limit.store(limit, Ordering::SeqCst);
        if self.flags.iter().any(|f| f.load(Ordering::SeqCst)) {
            self.limit.store(0, Ordering::SeqCst);
        }
    }

    /// The limit compiled code compares the counter with.
    pub(crate) fn limit(&self) -> &AtomicU64 {
        &self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_flag_closes_the_gate_and_keeps_it_closed_when_opened() {
        let g = Gate::new();
        g.open(100);
        assert_eq!(g.limit().load(Ordering::SeqCst), 100);
        g.raise(1);
        assert_eq!(g.limit().load(Ordering::SeqCst), 0);
        assert!(g.hint(1) && g.is_raised(1) && !g.hint(0));
        // Opened again while the flag is up: still closed.
        g.open(100);
        assert_eq!(g.limit().load(Ordering::SeqCst), 0);
        assert!(g.take(1));
        assert!(!g.take(1));
        g.open(100);
        assert_eq!(g.limit().load(Ordering::SeqCst), 100);
        // Out-of-range flags are ignored.
        g.raise(FLAGS);
        assert_eq!(g.limit().load(Ordering::SeqCst), 100);
    }

    #[test]
    fn no_wake_up_is_lost_between_threads() {
        // Whatever the interleaving, once both sides are done either the run saw
        // the flag or the limit is 0.
        for _ in 0..2000 {
            let g = std::sync::Arc::new(Gate::new());
            let r = g.clone();
            let t = std::thread::spawn(move || r.raise(2));
            g.open(u64::MAX);
            t.join().expect("raiser");
            assert_eq!(g.limit().load(Ordering::SeqCst), 0);
            assert!(g.is_raised(2));
        }
    }
}
