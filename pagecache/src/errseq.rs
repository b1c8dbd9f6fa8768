//! Writeback error reporting per file: errseq semantics (X1).
//!
//! * A writeback failure records its errno (R31, R58, R60 step 5).
//! * Each open file description samples the sequence at open; an error
//!   nobody has seen yet samples as "before it", so a description opened
//!   after the failure still gets it.
//! * `check_and_advance` (fsync) reports the newest error once per
//!   description, then advances that description's sample.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::Mutex;

use crate::error::Errno;

/// A per-description sample of an [`ErrSeq`]; taken at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrSeqSample(u64);

#[derive(Debug, Default)]
struct Inner {
    /// Bumped for each error recorded after the previous one was seen.
    seq: u64,
    last: Option<Errno>,
    seen: bool,
}

/// The writeback error sequence of one file (kernel `mapping->wb_err`).
#[derive(Debug, Default)]
pub struct ErrSeq {
    inner: Mutex<Inner>,
}

impl ErrSeq {
    /// No error recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Records a writeback error (`mapping_set_error`).
    pub fn set(&self, err: Errno) {
        let mut inner = self.inner();
        // As in the kernel, an error nobody has seen yet is only
        // overwritten, not counted again.
        if inner.last.is_none() || inner.seen {
            inner.seq += 1;
        }
        inner.last = Some(err);
        inner.seen = false;
        log::debug!("writeback error {err} recorded (seq {})", inner.seq);
    }

    /// The sample a newly opened description starts from (`errseq_sample`).
    pub fn sample(&self) -> ErrSeqSample {
        let inner = self.inner();
        if inner.last.is_some() && !inner.seen {
            // Unseen: the new description sees it.
            ErrSeqSample(inner.seq - 1)
        } else {
            ErrSeqSample(inner.seq)
        }
    }

    /// The newest error if it was recorded after `since`, marking it seen
    /// and advancing `since` (`errseq_check_and_advance`, used by fsync).
    pub fn check_and_advance(&self, since: &mut ErrSeqSample) -> Result<(), Errno> {
        let mut inner = self.inner();
        match inner.last {
            Some(err) if since.0 != inner.seq => {
                inner.seen = true;
                since.0 = inner.seq;
                Err(err)
            }
            _ => Ok(()),
        }
    }

    /// The last error recorded, seen or not.
    pub fn last(&self) -> Option<Errno> {
        self.inner().last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T16's fsync pattern: A opened before the failure, B after it, C
    /// after A's fsync.
    #[test]
    fn t16_errors_reach_each_description_once() {
        let wb = ErrSeq::new();
        let mut a = wb.sample();
        assert_eq!(wb.check_and_advance(&mut a), Ok(()));
        wb.set(Errno::Io);
        let mut b = wb.sample();
        assert_eq!(wb.check_and_advance(&mut a), Err(Errno::Io));
        assert_eq!(wb.check_and_advance(&mut a), Ok(()));
        let mut c = wb.sample();
        assert_eq!(wb.check_and_advance(&mut b), Err(Errno::Io));
        assert_eq!(wb.check_and_advance(&mut b), Ok(()));
        assert_eq!(wb.check_and_advance(&mut c), Ok(()));
    }

    #[test]
    fn newer_error_is_reported_after_an_old_one_was_seen() {
        let wb = ErrSeq::new();
        let mut a = wb.sample();
        wb.set(Errno::Io);
        assert_eq!(wb.check_and_advance(&mut a), Err(Errno::Io));
        wb.set(Errno::NoSpace);
        assert_eq!(wb.check_and_advance(&mut a), Err(Errno::NoSpace));
        assert_eq!(wb.last(), Some(Errno::NoSpace));
    }

    #[test]
    fn unseen_errors_are_not_counted_twice() {
        let wb = ErrSeq::new();
        let mut a = wb.sample();
        wb.set(Errno::Io);
        wb.set(Errno::NoSpace);
        // One report, with the newest errno.
        assert_eq!(wb.check_and_advance(&mut a), Err(Errno::NoSpace));
        assert_eq!(wb.check_and_advance(&mut a), Ok(()));
    }
}
