//! [`RcuCell`]: a value read without locks and replaced whole (read-copy-
//! update), its old versions freed by crossbeam's epoch once no reader
//! can hold them. The page cache keeps its file table in one, so a lookup
//! finds a file without the cache lock.

use std::sync::atomic::Ordering;

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};

/// A value behind an epoch-protected pointer. Readers borrow it for as
/// long as their guard is pinned; writers publish a new version.
pub(crate) struct RcuCell<T: Send + Sync + 'static> {
    ptr: Atomic<T>,
}

impl<T: Send + Sync + 'static + std::fmt::Debug> std::fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guard = epoch::pin();
        f.debug_tuple("RcuCell").field(self.load(&guard)).finish()
    }
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// A cell holding `value`.
    pub(crate) fn new(value: T) -> Self {
        RcuCell {
            ptr: Atomic::new(value),
        }
    }

    /// The current version, valid while `guard` is pinned (and the cell
    /// exists).
    pub(crate) fn load<'a>(&'a self, guard: &'a Guard) -> &'a T {
        let shared = self.ptr.load(Ordering::Acquire, guard);
        // SAFETY: the pointer is never null (set by `new`, swapped only
        // for other `Owned` values), and a version swapped out is freed by
        // `defer_destroy`, after every guard pinned before the swap (this
        // one included) is gone.
        unsafe { shared.deref() }
    }

    /// Publishes `value`; the old version is freed once no reader can
    /// hold it.
    pub(crate) fn replace(&self, value: T) {
        let guard = epoch::pin();
        let old = self.ptr.swap(Owned::new(value), Ordering::AcqRel, &guard);
        // SAFETY: `old` is unreachable from the cell now, and only this
        // call got it from the swap; readers that loaded it are pinned,
        // which the deferred free waits for. `T: Send` lets another thread
        // run the drop.
        unsafe { guard.defer_destroy(old) };
    }
}

impl<T: Send + Sync + 'static> Drop for RcuCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader can reach the cell; the pointer
        // is non-null and came from `Owned`.
        unsafe {
            let guard = epoch::unprotected();
            drop(self.ptr.load(Ordering::Relaxed, guard).into_owned());
        }
    }
}
