//! Read and writeback I/O in flight on a folio, and the parts of it each
//! command completes.
//!
//! Rule ids (R13, K18, ...) are the entries of docs/MPAGE.md.

use super::*;

/// Read I/O in flight into a locked folio. Hand out [`IoPart`]s to the
/// commands that fill it; drop the handle (or call [`ReadIo::submit`])
/// once every part is issued. The folio is unlocked when both have
/// happened and all parts have completed.
#[derive(Debug)]
pub struct ReadIo {
    pub(super) folio: Option<FolioRef>,
}

impl ReadIo {
    fn folio_ref(&self) -> &FolioRef {
        match &self.folio {
            Some(f) => f,
            None => unreachable!("ReadIo without a folio"),
        }
    }

    /// The folio being read.
    pub fn folio(&self) -> &FolioRef {
        self.folio_ref()
    }

    /// A piece of the read: the block-aligned range `[offset,
    /// offset+len)`, none of whose blocks may be uptodate (R35: only
    /// non-uptodate blocks are read, so a read never overwrites valid or
    /// dirty data).
    pub fn part(&self, offset: usize, len: usize) -> Result<IoPart> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        if len == 0 {
            return Err(f.bad(offset, len, "empty read part"));
        }
        let mut st = f.state();
        let overlaps = match &st.blocks {
            Some(b) => b.uptodate.any_in(blocks),
            None => st.flags.contains(FolioFlags::UPTODATE),
        };
        if overlaps {
            return Err(f.bad(offset, len, "covers uptodate blocks"));
        }
        if let Some(p) = st.read.as_mut() {
            p.parts += 1;
        }
        Ok(IoPart {
            folio: Some(f.clone()),
            direction: Direction::Read,
            offset,
            len,
        })
    }

    /// Zero-fills whole blocks and marks them uptodate with no I/O (holes,
    /// R13, R36).
    pub fn zero(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks);
        Ok(())
    }

    /// Marks the submission finished (same as dropping the handle).
    pub fn submit(self) {}

    /// Finishes submission, waits for every part, and keeps the folio
    /// locked: the synchronous read of write_begin (R42), which must hold
    /// the lock throughout. Returns the lock and the read's outcome.
    pub fn wait_locked(mut self) -> (LockedFolio, Result<(), Errno>) {
        let f = match self.folio.take() {
            Some(f) => f,
            None => unreachable!("ReadIo without a folio"),
        };
        let mut st = f.state();
        st.read_keeps_lock = true;
        if let Some(p) = st.read.as_mut() {
            p.submitting = false;
        }
        finish_read_if_idle(&f, &mut st);
        while st.read.is_some() {
            f.wait(&mut st);
        }
        st.read_keeps_lock = false;
        let outcome = match st.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        drop(st);
        (LockedFolio { folio: Some(f) }, outcome)
    }
}

impl Drop for ReadIo {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            let mut st = f.state();
            if let Some(p) = st.read.as_mut() {
                p.submitting = false;
            }
            finish_read_if_idle(&f, &mut st);
        }
    }
}

/// Ends the read once nothing is pending (R22, R39).
fn finish_read_if_idle(f: &Folio, st: &mut State) {
    if !st.read.as_ref().is_some_and(Pending::idle) {
        return;
    }
    let Some(p) = st.read.take() else { return };
    match p.error {
        Some(e) => {
            st.flags.insert(FolioFlags::ERROR);
            st.error = Some(e);
            st.flags.remove(FolioFlags::UPTODATE);
        }
        None => {
            if st.blocks.as_ref().is_some_and(|b| b.uptodate.is_full()) {
                st.flags.insert(FolioFlags::UPTODATE);
            }
        }
    }
    if !st.read_keeps_lock {
        st.flags.remove(FolioFlags::LOCKED);
    }
    f.changed.notify_all();
}

/// Writeback in flight from an unlocked folio. Hand out
/// [`IoPart`]s to the commands that write it; drop the handle once
/// all are issued. Writeback ends when both have happened and all parts
/// completed.
#[derive(Debug)]
pub struct WritebackIo {
    pub(super) folio: Option<FolioRef>,
    pub(super) dirty: BlockBitmap,
}

impl WritebackIo {
    fn folio_ref(&self) -> &FolioRef {
        match &self.folio {
            Some(f) => f,
            None => unreachable!("WritebackIo without a folio"),
        }
    }

    /// The folio under writeback.
    pub fn folio(&self) -> &FolioRef {
        self.folio_ref()
    }

    /// The blocks that were dirty when writeback started, as byte ranges
    /// of maximal runs, ascending: what needs writing (the per-block dirty
    /// bitmap of iomap ≥ 6.6, so only dirty blocks are written).
    pub fn dirty_ranges(&self) -> Vec<Range<usize>> {
        let bs = self.folio_ref().block.bytes();
        self.dirty
            .runs()
            .into_iter()
            .map(|r| r.start * bs..r.end * bs)
            .collect()
    }

    /// The dirty bitmap snapshot taken when writeback started.
    pub fn dirty_blocks(&self) -> &BlockBitmap {
        &self.dirty
    }

    /// A piece of the writeback: the block-aligned range `[offset,
    /// offset+len)`, which must be uptodate (R53 skips non-uptodate
    /// blocks; writing them would put stale memory on the device).
    pub fn part(&self, offset: usize, len: usize) -> Result<IoPart> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        if len == 0 {
            return Err(f.bad(offset, len, "empty writeback part"));
        }
        let mut st = f.state();
        if !range_uptodate(&st, blocks) {
            return Err(Error::NotUptodate { offset, len });
        }
        if let Some(p) = st.writeback.as_mut() {
            p.parts += 1;
        }
        Ok(IoPart {
            folio: Some(f.clone()),
            direction: Direction::Writeback,
            offset,
            len,
        })
    }

    /// Marks the submission finished (same as dropping the handle).
    pub fn submit(self) {}
}

impl Drop for WritebackIo {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            let mut st = f.state();
            if let Some(p) = st.writeback.as_mut() {
                p.submitting = false;
            }
            finish_writeback_if_idle(&f, &mut st);
        }
    }
}

/// Ends writeback once nothing is pending (R31, R56, R58, R61).
fn finish_writeback_if_idle(f: &Folio, st: &mut State) {
    if !st.writeback.as_ref().is_some_and(Pending::idle) {
        return;
    }
    let Some(p) = st.writeback.take() else { return };
    if let Some(e) = p.error {
        // R31/R58: error mark and mapping error; R61: never re-dirtied,
        // the data stays uptodate in the cache.
        st.flags.insert(FolioFlags::ERROR);
        st.error = Some(e);
        f.wb_err.set(e);
        log::warn!("writeback error {e} on {:?} page {}", f.file, f.index);
    }
    st.flags.remove(FolioFlags::WRITEBACK);
    f.counters.sub_writeback(f.size() as u64);
    f.changed.notify_all();
}

/// Which way an [`IoPart`]'s bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device writes the folio (a read command, [`ReadIo::part`]).
    Read,
    /// The device reads the folio (a write command, [`WritebackIo::part`]).
    Writeback,
}

/// One command's share of a folio's read or writeback: the device writes
/// (read) or reads (writeback) bytes `[offset, offset+len)` of the folio
/// at [`IoPart::iova`]. Complete it exactly once; dropping it uncompleted
/// counts as a failure (EIO), so a lost command never leaves the folio
/// locked or under writeback.
#[derive(Debug)]
pub struct IoPart {
    pub(super) folio: Option<FolioRef>,
    pub(super) direction: Direction,
    pub(super) offset: usize,
    pub(super) len: usize,
}

impl IoPart {
    /// Which way the bytes move.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Byte range inside the folio.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Device address of the part's first byte.
    pub fn iova(&self) -> u64 {
        self.folio.as_ref().map_or(0, |f| f.iova()) + self.offset as u64
    }

    /// The folio.
    pub fn folio(&self) -> Option<&FolioRef> {
        self.folio.as_ref()
    }

    /// CPU copy into a read part (software devices, inline data R37):
    /// `data` must be exactly the part's length.
    pub fn fill_from(&self, data: &[u8]) -> Result<()> {
        let Some(f) = &self.folio else {
            return Ok(());
        };
        if self.direction != Direction::Read {
            return Err(f.bad(self.offset, data.len(), "fill of a writeback part"));
        }
        if data.len() != self.len {
            return Err(f.bad(self.offset, data.len(), "length differs from the part"));
        }
        f.backing.write(self.offset, data)
    }

    /// CPU copy of a writeback part's bytes (software devices): `out`
    /// must be exactly the part's length.
    pub fn copy_out(&self, out: &mut [u8]) -> Result<()> {
        let Some(f) = &self.folio else {
            return Ok(());
        };
        if self.direction != Direction::Writeback {
            return Err(f.bad(self.offset, out.len(), "copy out of a read part"));
        }
        if out.len() != self.len {
            return Err(f.bad(self.offset, out.len(), "length differs from the part"));
        }
        f.backing.read(self.offset, out)
    }

    /// Completes the part. A read part's blocks become uptodate on
    /// success (the folio too, once every block is, R39); a failure fails
    /// the read (R22: the folio ends not uptodate with ERROR). A writeback
    /// part's error is kept for the end of writeback (also for a part
    /// failed without I/O, R57, R60 step 3).
    pub fn complete(mut self, result: Result<(), Errno>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<(), Errno>) {
        let Some(f) = self.folio.take() else { return };
        let mut st = f.state();
        match self.direction {
            Direction::Read => {
                let bs = f.block.bytes();
                match result {
                    Ok(()) => {
                        f.mark_uptodate(&mut st, self.offset / bs..(self.offset + self.len) / bs)
                    }
                    Err(e) => {
                        log::debug!("read of {:?}/{} failed: {e}", f.file, f.index);
                        if let Some(p) = st.read.as_mut() {
                            p.error.get_or_insert(e);
                        }
                    }
                }
                // The folio flag is decided when the whole read ends: a
                // failed part of this read keeps the folio not uptodate.
                if st.read.as_ref().is_some_and(|p| p.error.is_some()) {
                    st.flags.remove(FolioFlags::UPTODATE);
                }
                if let Some(p) = st.read.as_mut() {
                    p.parts -= 1;
                }
                finish_read_if_idle(&f, &mut st);
            }
            Direction::Writeback => {
                if let Some(p) = st.writeback.as_mut() {
                    if let Err(e) = result {
                        p.error.get_or_insert(e);
                    }
                    p.parts -= 1;
                }
                finish_writeback_if_idle(&f, &mut st);
            }
        }
    }
}

impl Drop for IoPart {
    fn drop(&mut self) {
        self.finish(Err(Errno::Io));
    }
}
