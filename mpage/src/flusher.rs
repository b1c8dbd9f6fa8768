//! [`Flusher`]: background writeback (the kernel's flusher threads acting
//! on `dirty_background_ratio`).
//!
//! Files are attached with [`Flusher::attach`]. [`Flusher::run_once`] is
//! one pass on the caller's device: while the cache's dirty memory is
//! above the background limit, it writes back attached files
//! (WB_SYNC_NONE, BACKGROUND commands) and waits for that writeback, so
//! it never leaves commands in flight on its device. [`Flusher::spawn`]
//! runs passes on a thread with its own device, woken by writers that
//! cross the background limit ([`Flusher::wake`]) and at least every
//! `interval`. Writers above the hard limit are throttled in
//! [`crate::File::write_at`]; they also write back their own file, so a
//! flusher speeds writers up but is not needed for progress.

use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use pagecache::{DirtyPressure, PageCache};

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::file::{File, Shared};
use crate::sync;
use crate::writeback::{SyncMode, writepages};

#[derive(Debug, Default)]
struct Signal {
    wake: bool,
    stop: bool,
}

/// Background writeback for the files of one cache. See the module
/// documentation.
#[derive(Debug)]
pub struct Flusher {
    cache: Arc<PageCache>,
    files: Mutex<Vec<Weak<Shared>>>,
    signal: Mutex<Signal>,
    cv: Condvar,
}

/// What one [`Flusher::run_once`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Folios whose writeback was started.
    pub folios: usize,
    /// Writeback errors met (recorded on the files for fsync).
    pub errors: usize,
}

impl Flusher {
    /// A flusher for the files of `cache`.
    pub fn new(cache: Arc<PageCache>) -> Arc<Flusher> {
        Arc::new(Flusher {
            cache,
            files: Mutex::new(Vec::new()),
            signal: Mutex::new(Signal::default()),
            cv: Condvar::new(),
        })
    }

    /// Lets the flusher write `file` back, and `file`'s writers wake it.
    /// Fails if the file lives in another cache or already has a flusher.
    pub fn attach(self: &Arc<Self>, file: &File) -> Result<()> {
        let shared = file.shared();
        if !Arc::ptr_eq(&shared.ino.cache, &self.cache) {
            return Err(Error::Invalid("file belongs to another cache"));
        }
        shared
            .flusher
            .set(self.clone())
            .map_err(|_| Error::Invalid("file already has a flusher"))?;
        self.files.lock().push(Arc::downgrade(shared));
        Ok(())
    }

    /// Asks the flusher thread for a pass now.
    pub fn wake(&self) {
        self.signal.lock().wake = true;
        self.cv.notify_all();
    }

    /// One pass: while dirty memory is above the background limit, write
    /// back the attached files (one after the other, each waited for).
    pub fn run_once(&self, dev: &mut dyn BlockDevice) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        loop {
            if self.cache.dirty_pressure() == DirtyPressure::Below {
                return Ok(report);
            }
            let files: Vec<Arc<Shared>> = {
                let mut list = self.files.lock();
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let mut progress = 0;
            for f in &files {
                if self.cache.dirty_pressure() == DirtyPressure::Below {
                    break;
                }
                match writepages(dev, &f.ino, 0..u64::MAX, SyncMode::None) {
                    Ok(r) => progress += r.folios,
                    Err(Error::Map { .. } | Error::Io(_)) => report.errors += 1,
                    Err(e) => return Err(e),
                }
                sync::wait_writeback(dev, &f.ino)?;
            }
            report.folios += progress;
            if progress == 0 {
                // Nothing of ours is dirty (other files, or all in flight
                // elsewhere).
                return Ok(report);
            }
        }
    }

    /// Runs passes on a new thread with its own `dev`, on every
    /// [`Flusher::wake`] and at least every `interval`, until the returned
    /// handle is stopped or dropped.
    pub fn spawn(
        self: &Arc<Self>,
        mut dev: Box<dyn BlockDevice>,
        interval: Duration,
    ) -> Result<FlusherThread> {
        self.signal.lock().stop = false;
        let me = self.clone();
        let join = std::thread::Builder::new()
            .name("mpage-flusher".into())
            .spawn(move || {
                loop {
                    {
                        let mut sig = me.signal.lock();
                        if !sig.wake && !sig.stop {
                            me.cv.wait_for(&mut sig, interval);
                        }
                        if sig.stop {
                            return;
                        }
                        sig.wake = false;
                    }
                    if let Err(e) = me.run_once(dev.as_mut()) {
                        log::warn!("flusher pass failed: {e}");
                    }
                }
            })
            .map_err(|_| Error::Invalid("cannot start the flusher thread"))?;
        Ok(FlusherThread {
            flusher: self.clone(),
            join: Some(join),
        })
    }
}

/// A running flusher thread; stopping or dropping it ends the thread
/// after its current pass.
#[derive(Debug)]
pub struct FlusherThread {
    flusher: Arc<Flusher>,
    join: Option<JoinHandle<()>>,
}

impl FlusherThread {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.flusher.signal.lock().stop = true;
        self.flusher.cv.notify_all();
        if let Some(j) = self.join.take()
            && j.join().is_err()
        {
            log::error!("flusher thread panicked");
        }
    }
}

impl Drop for FlusherThread {
    fn drop(&mut self) {
        self.halt();
    }
}
