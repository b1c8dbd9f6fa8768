//! fsync (X1, X2): write back and wait, send an NVMe Flush, and report
//! writeback errors once per open file description.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::Mutex;
use std::sync::Arc;

use pagecache::{ErrSeqSample, FolioFlags};

use crate::device::{Bio, BlockDevice, DeviceError};
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::io;
use crate::writeback::{SyncMode, writepages};

/// An open file description: what it has seen of the file's writeback
/// errors (errseq sample taken at open, X1).
#[derive(Debug)]
pub struct OpenFile {
    sample: ErrSeqSample,
}

impl OpenFile {
    /// Opens `ino`: samples its writeback error sequence, so an error
    /// nobody has seen yet is reported to this description too.
    pub fn open(ino: &Inode) -> Result<Self> {
        let wb = ino
            .cache
            .wb_err(ino.file)
            .map_err(Error::cache("writeback error sequence"))?;
        Ok(OpenFile {
            sample: wb.sample(),
        })
    }
}

/// Waits until no folio of the file that was under writeback when called
/// still is (also writeback another thread's queue carries, see
/// [`io::wait_folio`]).
pub fn wait_writeback(dev: &mut dyn BlockDevice, ino: &Inode) -> Result<()> {
    let busy: Vec<_> = ino
        .cache
        .all_folios(ino.file)
        .map_err(Error::cache("listing folios"))?
        .into_iter()
        .filter(|f| f.is_writeback())
        .collect();
    for f in &busy {
        io::wait_folio(dev, f, FolioFlags::WRITEBACK, "writeback")?;
    }
    Ok(())
}

/// Sends an NVMe Flush and waits for it.
pub fn flush(dev: &mut dyn BlockDevice) -> Result<()> {
    let outcome: Arc<Mutex<Option<std::result::Result<(), DeviceError>>>> =
        Arc::new(Mutex::new(None));
    let slot = outcome.clone();
    let bio = Bio::flush().with_end_io(Box::new(move |r| {
        *slot.lock() = Some(r.clone());
    }));
    io::submit(dev, bio)?;
    let done = || outcome.lock().is_some();
    io::wait_until(dev, "flush", done)?;
    let result = outcome.lock().take();
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(source)) => Err(Error::Device {
            context: "flush",
            source,
        }),
        None => Err(Error::Timeout("flush")),
    }
}

/// fsync: writes back every dirty folio (WB_SYNC_ALL), waits for all
/// writeback of the file, sends an NVMe Flush (writes are never FUA, R6,
/// X2), then reports the newest writeback error recorded since this
/// description last looked (once per description, X1). A failed flush is
/// reported when there is no writeback error.
pub fn fsync(dev: &mut dyn BlockDevice, ino: &Inode, handle: &mut OpenFile) -> Result<()> {
    // Mapping errors are recorded on the file by writepages; device
    // failures of the queue itself are returned as they are.
    match writepages(dev, ino, 0..u64::MAX, SyncMode::All) {
        Ok(_) | Err(Error::Map { .. } | Error::Io(_)) => {}
        Err(e) => return Err(e),
    }
    wait_writeback(dev, ino)?;
    let flushed = flush(dev);
    let wb = ino
        .cache
        .wb_err(ino.file)
        .map_err(Error::cache("writeback error sequence"))?;
    wb.check_and_advance(&mut handle.sample)
        .map_err(Error::Io)?;
    flushed
}
