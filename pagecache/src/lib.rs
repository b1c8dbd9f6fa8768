//! The page cache of the userspace NVMe storage stack: state and policy,
//! no I/O.
//!
//! Folios of 4 KiB up to 2 MiB live in DMA-capable memory
//! ([`FolioMemory`]), so the device reads into and writes from the cache
//! itself; the I/O layer (the `mpage` crate) builds commands from
//! [`Folio::iova`] and drives the folio through the transitions below.
//!
//! Modules, named after the mm concept they hold:
//!
//! * [`memory`]: where folio memory comes from (trait + heap provider);
//! * [`folio`]: folios, flags, lock token, read and writeback handles;
//! * [`folio_state`]: per-block uptodate and dirty bitmaps (iomap_folio_state);
//! * `index`: per-file page offset → folio map;
//! * `xarray`: its lock-free half, read by lookups under an epoch guard;
//! * `rcu`: a value read without locks and replaced whole (the file
//!   table);
//! * `lru`: the eviction clock;
//! * [`dirty`]: dirty/writeback accounting, thresholds, throttle decision;
//! * [`readahead`]: the readahead window policy;
//! * [`errseq`]: per-file writeback error reporting (X1);
//! * [`cache`]: the [`PageCache`] facade tying them together.
//!
//! # Folio states
//!
//! ```text
//!  grab() ──► [LOCKED, !UPTODATE] ──start_read()──► (read parts in flight, still LOCKED)
//!                 │      │                              │ all parts done, handle dropped
//!                 │      │ write()/zero_blocks()        ├─ ok ────► UPTODATE (if every block is), unlocked
//!                 │      ▼                              └─ error ─► ERROR, !UPTODATE, unlocked   (R22, R39)
//!                 │  [LOCKED, blocks uptodate/dirty]
//!                 ▼ drop(LockedFolio) = unlock
//!  [UPTODATE, clean] ◄──────────── writeback ends ok ──────────────┐
//!        │ lock() + write()                                         │
//!        ▼                                                          │
//!  [UPTODATE, DIRTY] ──lock() + start_writeback()──► [WRITEBACK, clean, unlocked]
//!        ▲                                                │ write() meanwhile re-dirties (X3)
//!        └────────────── (only by a new write) ───────────┤
//!                                                         └─ error ─► ERROR, clean, UPTODATE,
//!                                                            file errseq set; never re-dirtied (R31, R61)
//!  [DIRTY, LOCKED] ──discard(err)──► clean, !UPTODATE, bitmaps cleared, ERROR (R60, K18)
//!
//!  evictable ⇔ clean ∧ ¬LOCKED ∧ ¬WRITEBACK ∧ unpinned (no FolioRef besides the index's)
//! ```
//!
//! The lock is an owned token ([`LockedFolio`]); starting I/O consumes it,
//! so a folio cannot have two reads or two writebacks in flight, and the
//! I/O handles ([`ReadIo`], [`WritebackIo`], each handing out [`IoPart`]s)
//! finish the I/O exactly once, also when dropped on an error path (an
//! uncompleted part counts as EIO). Per-block state exists only for folios
//! holding more than one block, and is created when first needed (R34);
//! invariant: folio UPTODATE ⇔ every block uptodate.
//!
//! Still to come (other crates/issues): the `mpage` I/O layer (block
//! mapping, run building, command submission), the file API (`read_at`,
//! `write_at`, `set_len`, `fsync`) and the flusher thread that acts on
//! [`PageCache::dirty_pressure`].
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

// Unsafe code lives in `xarray` and `rcu` only (epoch-protected pointers).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod dirty;
pub mod error;
pub mod errseq;
pub mod folio;
pub mod folio_state;
mod index;
mod lru;
pub mod memory;
#[allow(unsafe_code)]
mod rcu;
pub mod readahead;
pub mod units;
#[allow(unsafe_code)]
mod xarray;

pub use cache::{Grab, Invalidated, PageCache};
pub use dirty::{DirtyLimits, DirtyPressure};
pub use error::{Errno, Error, Result};
pub use errseq::{ErrSeq, ErrSeqSample};
pub use folio::{Direction, Folio, FolioFlags, FolioRef, IoPart, LockedFolio, ReadIo, WritebackIo};
pub use folio_state::BlockBitmap;
pub use memory::{FolioBacking, FolioMemory, VecBacking, VecMemory};
pub use readahead::{RaPlan, RaState};
pub use units::{BlockSize, FolioOrder, MAX_ORDER, PAGE_SHIFT, PAGE_SIZE};

/// A file known to a [`PageCache`] ([`PageCache::add_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);
