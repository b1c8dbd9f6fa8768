//! A virtqueue's vhost-user state (rust-vmm's `VringRwLock`) plus copies
//! of its kick and call eventfds that the queue thread keeps across
//! kicks.
//!
//! The queue thread borrows the ring from the vring's state for a whole
//! batch, so it cannot use the state's own eventfds meanwhile: it needs
//! copies (to signal the guest while it keeps commands in flight, and to
//! sleep on the kick and the NVMe interrupt at once). Duplicating them at
//! every kick and closing them after cost four system calls a request;
//! here they are duplicated once, when the front end sets them.
//!
//! Identity: every `SET_VRING_KICK`/`SET_VRING_CALL` (a new front end, a
//! replaced fd, or none) and every stop (`GET_VRING_BASE` clears both)
//! goes through [`Vring::set_kick`]/[`Vring::set_call`], which replace the
//! copies after the state took the new fd, or drop them. The queue thread
//! takes the kick copy at each kick (an `Arc`, compared by pointer to the
//! one it has registered with its NVMe queue's epoll set), and looks the
//! call copy up at each signal ([`CallSlot`]), so it never signals a call
//! eventfd the front end replaced before the signal.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::worker::Notify;

/// The copies of one vring's eventfds.
#[derive(Debug, Default)]
struct Copies {
    kick: Option<Arc<EventConsumer>>,
    call: Option<Arc<EventNotifier>>,
}

/// A vring whose kick and call eventfds are also kept as copies for the
/// queue thread (see the module's documentation).
#[derive(Clone)]
pub struct Vring<M: GuestAddressSpace> {
    inner: VringRwLock<M>,
    copies: Arc<Mutex<Copies>>,
}

impl<M: GuestAddressSpace> std::fmt::Debug for Vring<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vring")
            .field("copies", &*self.copies())
            .finish()
    }
}

impl<M: GuestAddressSpace> Vring<M> {
    fn copies(&self) -> MutexGuard<'_, Copies> {
        self.copies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copy of the kick eventfd the front end set last (`None`
    /// before one was set or after the vring was stopped).
    pub fn kick(&self) -> Option<Arc<EventConsumer>> {
        self.copies().kick.clone()
    }

    /// Signals the call eventfd through the copies: see [`CallSlot`].
    pub fn call_slot(&self) -> CallSlot {
        CallSlot {
            copies: self.copies.clone(),
        }
    }
}

/// The call eventfd of a vring as it is at each signal: a [`Notify`] that
/// looks up the copy the front end set last (no system call but the
/// signal's write), and does nothing when there is none.
#[derive(Debug, Clone)]
pub struct CallSlot {
    copies: Arc<Mutex<Copies>>,
}

impl Notify for CallSlot {
    fn notify(&self) -> std::io::Result<()> {
        let call = self
            .copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .call
            .clone();
        match call {
            Some(c) => c.notify(),
            None => Ok(()),
        }
    }
}

impl<'a, M: 'a + GuestAddressSpace> VringStateGuard<'a, M> for Vring<M> {
    type G = RwLockReadGuard<'a, VringState<M>>;
}

impl<'a, M: 'a + GuestAddressSpace> VringStateMutGuard<'a, M> for Vring<M> {
    type G = RwLockWriteGuard<'a, VringState<M>>;
}

impl<M: 'static + GuestAddressSpace> VringT<M> for Vring<M> {
    fn new(mem: M, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            copies: Arc::new(Mutex::new(Copies::default())),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, M>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, M>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }

    /// Sets the state's kick eventfd, then replaces the copy (the state's
    /// lock and the copies' are never held together: the queue thread
    /// takes the copies while it holds the state).
    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file);
        let copy = self.inner.get_ref().get_kick().as_ref().and_then(|k| {
            k.try_clone()
                .map_err(|e| log::error!("copying a kick eventfd: {e}"))
                .ok()
        });
        self.copies().kick = copy.map(Arc::new);
    }

    fn read_kick(&self) -> std::io::Result<bool> {
        self.inner.read_kick()
    }

    /// [`Vring::set_kick`] for the call eventfd.
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file);
        let copy = self.inner.get_ref().get_call().as_ref().and_then(|c| {
            c.try_clone()
                .map_err(|e| log::error!("copying a call eventfd: {e}"))
                .ok()
        });
        self.copies().call = copy.map(Arc::new);
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}
