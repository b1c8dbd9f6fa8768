//! Hot removal: the system taking the device back (`remove` in sysfs, a
//! hot-unplug) while the driver owns it.
//!
//! vfio-pci cannot finish removing a device that a process holds open: it
//! signals the device request interrupt (VFIO_PCI_REQ_IRQ_INDEX) and waits
//! until the device file is closed (and its BAR mappings, which hold the
//! file, are gone). A watcher thread sleeps on that interrupt's eventfd.
//! When it fires, the controller is marked removed, BAR0 is replaced by
//! all-ones memory at the same addresses (threads may still be reading
//! it; see `MmioBar::retire`), and the device file is closed
//! ([`crate::device::DeviceBacking::release`]), so the kernel's removal
//! completes. From the mark on, new requests and admin commands fail at
//! once with [`Error::DeviceRemoved`]; once the device is released, every
//! queue pair fails what it has outstanding with the same error on its
//! next poll (a released device can no longer do DMA, so their buffers
//! are safe to hand back).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::ctrl::Shared;
use crate::error::{Error, Result};

const PRESENT: u8 = 0;
/// The removal was asked for; the device is being released.
const REMOVING: u8 = 1;
/// The device was released: it does no more DMA.
const RELEASED: u8 = 2;

/// The controller's removal state, and the watcher thread's stop signal.
#[derive(Debug)]
pub(crate) struct Removal {
    state: AtomicU8,
    /// Tells the watcher thread to end (the controller is going away).
    stop: Option<EventFd>,
}

impl Removal {
    /// No watcher (the backing sends no removal requests).
    pub(crate) fn unwatched() -> Self {
        Removal {
            state: AtomicU8::new(PRESENT),
            stop: None,
        }
    }

    /// The removal was asked for (the device may not be released yet).
    #[inline]
    pub(crate) fn requested(&self) -> bool {
        self.state.load(Ordering::Acquire) != PRESENT
    }

    /// The device was released after a removal request.
    #[inline]
    pub(crate) fn released(&self) -> bool {
        self.state.load(Ordering::Acquire) == RELEASED
    }

    /// Marks the removal; false if it was marked before.
    pub(crate) fn begin(&self) -> bool {
        self.state
            .compare_exchange(PRESENT, REMOVING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the device released.
    pub(crate) fn finish(&self) {
        self.state.store(RELEASED, Ordering::Release);
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.write(1);
        }
    }
}

/// The error of every request after a removal (built out of line: the
/// submit paths check for a removal on every request).
#[cold]
#[inline(never)]
pub(crate) fn removed_error(shared: &Shared) -> Error {
    Error::DeviceRemoved {
        bdf: shared.address().to_string(),
    }
}

/// A removal state whose watcher thread is started by [`start_watcher`]
/// once the controller is shared; the eventfd is the watcher's end of the
/// stop signal, which the state sends when it is dropped.
pub(crate) fn watched() -> Result<(Removal, EventFd)> {
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::os("creating an eventfd", e))?;
    let theirs = stop
        .try_clone()
        .map_err(|e| Error::os("duplicating an eventfd", e))?;
    Ok((
        Removal {
            state: AtomicU8::new(PRESENT),
            stop: Some(stop),
        },
        theirs,
    ))
}

/// Starts the thread that waits for the removal request on `request` and
/// then releases the device. It holds the controller weakly and ends when
/// `stop` is signalled (the controller's last handle went).
pub(crate) fn start_watcher(
    shared: Weak<Shared>,
    request: Arc<EventFd>,
    stop: EventFd,
) -> Result<()> {
    let epoll = Epoll::new().map_err(|e| Error::os("epoll_create", e))?;
    for (fd, token) in [(request.as_raw_fd(), 1u64), (stop.as_raw_fd(), 2)] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| Error::os("adding an eventfd to epoll", e))?;
    }
    std::thread::Builder::new()
        .name("nvme-removal".into())
        .spawn(move || {
            let mut events = [EpollEvent::default(); 2];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!(
                            "removal watcher: epoll_wait failed: {e}; removal requests go unheard"
                        );
                        return;
                    }
                };
                if events[..n].iter().any(|e| e.data() == 2) {
                    return;
                }
                if events[..n].iter().any(|e| e.data() == 1) {
                    let _ = request.read();
                    if let Some(shared) = shared.upgrade() {
                        shared.handle_removal();
                    }
                    return;
                }
            }
        })
        .map_err(|e| Error::os("starting the removal watcher thread", e))?;
    Ok(())
}
