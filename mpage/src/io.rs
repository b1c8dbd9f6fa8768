//! Submission with back-pressure and completion pumping: the glue every
//! engine uses between the builder and the [`BlockDevice`].
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::time::{Duration, Instant};

use pagecache::{Folio, FolioFlags, FolioRef, LockedFolio};

use crate::device::{Bio, BlockDevice, Completion, DeviceError};
use crate::error::{Error, Result};

/// How long an engine waits for completions before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Submits `bio`; while the device is busy, reaps completions and
/// retries (K3: back-pressure by polling, not failure). Any other
/// rejection completes the bio with the error (its folios end in error)
/// and is returned.
pub fn submit(dev: &mut dyn BlockDevice, bio: Bio) -> Result<()> {
    let mut bio = bio;
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        match dev.submit(bio) {
            Ok(()) => return Ok(()),
            Err((back, DeviceError::Busy)) if Instant::now() < deadline => {
                bio = back;
                if reap(dev, Some(Duration::from_millis(10)))? == 0 && dev.in_flight() == 0 {
                    back_off_failed(&bio);
                    return Err(Error::Device {
                        context: "submit: device busy with nothing in flight",
                        source: DeviceError::Busy,
                    });
                }
            }
            Err((back, e)) => {
                log::error!("device rejected {back:?}: {e}");
                back.complete(Err(e.clone()));
                return Err(Error::Device {
                    context: "submit",
                    source: e,
                });
            }
        }
    }
}

fn back_off_failed(bio: &Bio) {
    log::error!("giving up on {bio:?}");
}

/// Submits every bio in order (stopping at the first failure, whose
/// remaining bios are completed with the error when dropped).
pub fn submit_all(dev: &mut dyn BlockDevice, bios: Vec<Bio>) -> Result<()> {
    for bio in bios {
        submit(dev, bio)?;
    }
    Ok(())
}

/// Ends every finished command: polls (or, with `wait`, blocks up to that
/// long for at least one) and completes each. Returns how many finished.
pub fn reap(dev: &mut dyn BlockDevice, wait: Option<Duration>) -> Result<usize> {
    let mut done: Vec<Completion> = Vec::new();
    let n = match wait {
        Some(t) => dev.wait(&mut done, t),
        None => dev.poll(&mut done),
    }
    .map_err(|source| Error::Device {
        context: "reaping completions",
        source,
    })?;
    for c in done {
        c.finish();
    }
    Ok(n)
}

/// Reaps completions until `done()` holds; fails with
/// Makes what was submitted to `dev` visible to it (one doorbell write).
pub fn commit(dev: &mut dyn BlockDevice) -> Result<()> {
    dev.commit().map_err(|source| Error::Device {
        context: "commit",
        source,
    })
}

/// [`Error::Timeout`] if it does not within [`DEFAULT_TIMEOUT`] or no
/// completion can arrive any more.
pub fn wait_until(
    dev: &mut dyn BlockDevice,
    what: &'static str,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    crate::io::commit(dev)?;
    while !done() {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout(what));
        }
        let n = reap(dev, Some((deadline - now).min(Duration::from_millis(100))))?;
        if n == 0 && !done() && dev.in_flight() == 0 {
            return Err(Error::Timeout(what));
        }
        if n == 0 && !done() {
            // Commands are in flight but none finished yet (held, slow).
            std::thread::yield_now();
            if Instant::now() >= deadline {
                return Err(Error::Timeout(what));
            }
        }
    }
    Ok(())
}

/// Waits until `folio` has none of `flags` (LOCKED: a read in flight or
/// another holder; WRITEBACK: writeback in flight). While this device has
/// commands in flight it reaps them (the I/O may be its own); otherwise
/// the I/O belongs to another queue (another thread's device, which that
/// thread reaps) and it sleeps on the folio. Fails with
/// [`Error::Timeout`] after [`DEFAULT_TIMEOUT`].
pub fn wait_folio(
    dev: &mut dyn BlockDevice,
    folio: &Folio,
    flags: FolioFlags,
    what: &'static str,
) -> Result<()> {
    wait_folio_until(dev, folio, flags, what, || false)
}

/// [`wait_folio`] that also returns as soon as `done()` holds: a reader
/// of a large folio under read waits for the blocks it needs
/// ([`Folio::is_range_uptodate`]), not for the whole folio. With the I/O
/// on another thread's queue, `done` is looked at every millisecond
/// (block completions do not wake folio waiters).
pub fn wait_folio_until(
    dev: &mut dyn BlockDevice,
    folio: &Folio,
    flags: FolioFlags,
    what: &'static str,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    crate::io::commit(dev)?;
    loop {
        if !folio.flags().intersects(flags) || done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(what));
        }
        if dev.in_flight() > 0 {
            if reap(dev, Some(Duration::from_millis(1)))? == 0 {
                std::thread::yield_now();
            }
        } else {
            folio.wait_clear(flags, Duration::from_millis(1));
        }
    }
}

/// Locks `folio`, reaping completions while it is locked by I/O in
/// flight (a read holds the lock until its commands complete); see
/// [`wait_folio`] for I/O of other queues.
pub fn lock_folio(dev: &mut dyn BlockDevice, folio: &FolioRef) -> Result<LockedFolio> {
    loop {
        if let Some(l) = folio.try_lock() {
            return Ok(l);
        }
        wait_folio(dev, folio, FolioFlags::LOCKED, "folio lock")?;
    }
}
