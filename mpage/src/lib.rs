//! The mpage/iomap layer of the userspace NVMe storage stack: turns page
//! cache folios into NVMe commands and back.
//!
//! Layers, as in iomap (docs/ARCHITECTURE.md, "The iomap shape"): a
//! [`BlockMapper`] says what backs a file range ([`map`]), a [`MapIter`]
//! walks it ([`iter`]), the engines ([`read`], [`writeback`], [`sync`])
//! act on each extent, and a
//! [`BioBuilder`] ([`bio`]) accumulates pieces into commands with one
//! merge predicate. Commands go to a [`BlockDevice`] ([`device`]); the
//! [`RecordingDevice`] ([`recording`]) serves host tests, and a [`Tap`]
//! ([`tap`]) records the commands of any device. The buffered
//! write path is in [`write`](mod@write); applications use [`File`] ([`file`](mod@file)) and a
//! [`Flusher`] ([`flusher`]) for background writeback.
//! The rules this crate reproduces, cited by id (R.., X.., K.., T..)
//! throughout, are in `docs/MPAGE.md` (in the repository);
//! `docs/CONFORMANCE.md` maps them to their tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bio;
pub mod device;
pub mod error;
pub mod file;
pub mod flusher;
pub mod inode;
pub mod io;
pub mod iter;
pub mod map;
#[cfg(feature = "test-utils")]
pub mod model;
#[cfg(feature = "nvme")]
pub mod nvme;
pub mod read;
pub mod recording;
pub mod sync;
pub mod tap;
pub mod write;
pub mod writeback;

pub use bio::BioBuilder;
pub use device::{
    Bio, BioFlags, BioOp, BlockDevice, Completion, DEVICE_PAGE, DeviceError, EndIo, Geometry,
    Segment,
};
pub use error::{Error, Result};
pub use file::{File, FolioView};
pub use flusher::{FlushReport, Flusher, FlusherThread};
pub use inode::Inode;
pub use iter::MapIter;
pub use map::{
    BlockMapper, Extent, ExtentFlags, ExtentKind, ExtentMapper, IdentityMapper, MapError, MapIntent,
};
pub use read::{ReadaheadReport, read_folio, readahead};
pub use recording::{Fault, Order, RecordingDevice};
pub use sync::{OpenFile, fsync};
pub use tap::{Command, CommandLog, Tap};
pub use write::{
    buffered_write, page_mkwrite, truncate_page, truncate_pagecache, write_begin, write_end,
    zero_range,
};
pub use writeback::{SyncMode, WritebackReport, writepages};
