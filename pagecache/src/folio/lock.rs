//! The folio lock as an owned token, and the transitions that hold it.
//!
//! Rule ids (R13, K18, ...) are the entries of docs/MPAGE.md.

use super::*;

/// The folio lock, held. Dropping it unlocks the folio.
#[derive(Debug)]
pub struct LockedFolio {
    /// `None` only after a consuming transition moved the lock elsewhere.
    pub(super) folio: Option<FolioRef>,
}

impl Deref for LockedFolio {
    type Target = Folio;
    fn deref(&self) -> &Folio {
        self.folio_ref()
    }
}

impl Drop for LockedFolio {
    fn drop(&mut self) {
        if let Some(f) = self.folio.take() {
            f.unlock_bit();
        }
    }
}

impl LockedFolio {
    fn folio_ref(&self) -> &FolioRef {
        // Consuming transitions take the folio out and forget `self` in
        // the same move, so a live `LockedFolio` always holds one.
        match &self.folio {
            Some(f) => f,
            None => unreachable!("LockedFolio without a folio"),
        }
    }

    /// Gives up the lock without unlocking: the caller owns it from now on.
    fn into_ref(mut self) -> FolioRef {
        match self.folio.take() {
            Some(f) => f,
            None => unreachable!("LockedFolio without a folio"),
        }
    }

    /// A reference that outlives the lock.
    pub fn folio(&self) -> FolioRef {
        self.folio_ref().clone()
    }

    /// Buffered write: copies `data` in at `offset` and marks every
    /// touched block uptodate and dirty, and the folio dirty (R45
    /// write_end). A block the write covers only partly must already be
    /// uptodate (read or zeroed first, R42), else nothing is written.
    /// Returns whether the folio went from clean to dirty.
    ///
    /// Writing into a folio under writeback is allowed (no stable pages,
    /// X3/X6): it re-dirties the folio.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, data.len())?;
        if data.is_empty() {
            return Ok(false);
        }
        let bs = f.block.bytes();
        let end = offset + data.len();
        {
            let st = f.state();
            let first_partial = !offset.is_multiple_of(bs);
            let last_partial = !end.is_multiple_of(bs);
            let edge_ok = |b: usize| range_uptodate(&st, b..b + 1);
            if (first_partial && !edge_ok(blocks.start))
                || (last_partial && !edge_ok(blocks.end - 1))
            {
                return Err(Error::NotUptodate {
                    offset,
                    len: data.len(),
                });
            }
        }
        f.backing.write(offset, data)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks.clone());
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Copies out uptodate bytes (same as [`Folio::read`]).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.folio_ref().read(offset, out)
    }

    /// Zero-fills whole blocks and marks them uptodate, without I/O and
    /// without dirtying: holes, unwritten extents and ranges past EOF on
    /// the read side (R13, R36), and the edges of a partial write over a
    /// range that needs zeroing (R42).
    pub fn zero_blocks(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        let blocks = f.aligned_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        f.mark_uptodate(&mut st, blocks);
        Ok(())
    }

    /// Zeroes bytes `[offset, size)` in the cached folio without changing
    /// any state: the EOF-straddling folio's tail on every writeback pass
    /// (R27, R52), so the cache and the device both hold zeros past EOF.
    pub fn zero_tail(&self, offset: usize) -> Result<()> {
        let f = self.folio_ref();
        let size = f.size();
        if offset > size {
            return Err(f.bad(offset, 0, "outside the folio"));
        }
        f.backing.fill(offset, size - offset, 0)
    }

    /// Zeroes bytes `[offset, offset+len)` in the cached folio without
    /// changing any state: the partial folio of a page cache truncation
    /// (`truncate_inode_partial_folio`; R47, T21), whose bytes lie past
    /// EOF.
    pub fn zero_bytes(&self, offset: usize, len: usize) -> Result<()> {
        let f = self.folio_ref();
        f.touched_blocks(offset, len)?;
        f.backing.fill(offset, len, 0)
    }

    /// Sets PG_readahead: the async readahead trigger (see
    /// [`crate::readahead`]).
    pub fn set_readahead_marker(&self) {
        self.folio_ref().state().flags.insert(FolioFlags::READAHEAD);
    }

    /// Starts read I/O into the folio's non-uptodate blocks. The folio
    /// stays locked until every part has completed and the returned handle
    /// is dropped (R22, R39); then it is uptodate if all its blocks are and
    /// no part failed, else it carries ERROR. A previous error is cleared
    /// (X4: a demand read retries a failed readahead; R42 clears it too).
    pub fn start_read(self) -> ReadIo {
        let f = self.into_ref();
        {
            let mut st = f.state();
            st.flags.remove(FolioFlags::ERROR);
            st.error = None;
            st.read = Some(Pending {
                submitting: true,
                ..Pending::default()
            });
            st.read_keeps_lock = false;
        }
        ReadIo { folio: Some(f) }
    }

    /// Starts writeback (the kernel's `folio_clear_dirty_for_io` +
    /// `folio_start_writeback` + unlock, R23, R28):
    /// * fails if writeback is already in flight (X3: never resubmitted
    ///   while in flight; wait with [`Folio::wait_writeback`]);
    /// * fails if the folio is neither uptodate nor has per-block state
    ///   (R23: a folio without per-block state must be uptodate);
    /// * snapshots the dirty blocks, clears DIRTY and the dirty bits, sets
    ///   WRITEBACK and unlocks the folio. Writes from now on re-dirty it.
    ///
    /// A clean folio may be started too: with no parts, writeback ends as
    /// soon as the handle is dropped (R56). On error the lock is released.
    pub fn start_writeback(self) -> Result<WritebackIo> {
        let dirty;
        {
            let f = self.folio_ref();
            let mut st = f.state();
            if st.flags.contains(FolioFlags::WRITEBACK) {
                return Err(Error::UnderWriteback);
            }
            if !st.flags.contains(FolioFlags::UPTODATE) && st.blocks.is_none() {
                return Err(Error::NotUptodate {
                    offset: 0,
                    len: f.size(),
                });
            }
            dirty = match &st.blocks {
                Some(b) => b.dirty.clone(),
                None => BlockBitmap::new(f.blocks(), st.flags.contains(FolioFlags::DIRTY)),
            };
            f.clear_dirty_flag(&mut st);
            st.flags.insert(FolioFlags::WRITEBACK);
            st.writeback = Some(Pending {
                submitting: true,
                ..Pending::default()
            });
            f.counters.add_writeback(f.size() as u64);
        }
        // Dropping the lock token unlocks the folio.
        let folio = self.folio();
        drop(self);
        Ok(WritebackIo {
            folio: Some(folio),
            dirty,
        })
    }

    /// R60 step 2 with K18: the folio's dirty data cannot be
    /// written (the block mapping failed before any block of it was
    /// queued). The folio ends clean, **not uptodate** (both bitmaps
    /// cleared, so the next read goes to the device), not under writeback,
    /// unlocked, with ERROR, and the file's writeback error records `err`
    /// (R60 step 5). It is not re-dirtied (R61).
    pub fn discard(self, err: Errno) {
        let f = self.folio_ref();
        {
            let mut st = f.state();
            f.clear_dirty_flag(&mut st);
            st.flags.remove(FolioFlags::UPTODATE);
            if let Some(b) = st.blocks.as_mut() {
                b.uptodate.clear_range(0..b.uptodate.len());
            }
            st.flags.insert(FolioFlags::ERROR);
            st.error = Some(err);
        }
        f.wb_err.set(err);
        log::warn!("dirty folio {:?}/{} discarded after {err}", f.file, f.index);
    }

    /// Sets the dirty bits of an uptodate range without copying data
    /// (a caller that changed the bytes through other means, e.g. zeroing
    /// for truncate_page, R49). Returns whether the folio became dirty.
    pub fn mark_range_dirty(&self, offset: usize, len: usize) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, len)?;
        let mut st = f.state();
        if !range_uptodate(&st, blocks.clone()) {
            return Err(Error::NotUptodate { offset, len });
        }
        if blocks.is_empty() {
            return Ok(false);
        }
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Zeroes `[offset, offset+len)` of an uptodate range and dirties it
    /// (iomap_zero / truncate_page, R49).
    pub fn zero_range_dirty(&self, offset: usize, len: usize) -> Result<bool> {
        let f = self.folio_ref();
        let blocks = f.touched_blocks(offset, len)?;
        if !f.is_range_uptodate(offset, len) {
            return Err(Error::NotUptodate { offset, len });
        }
        f.backing.fill(offset, len, 0)?;
        let mut st = f.state();
        Ok(f.mark_dirty(&mut st, blocks))
    }

    /// Drops all cached state of a clean folio so the next read goes to
    /// the device (the whole-folio invalidate of R34, used by truncate).
    /// Fails while writeback is in flight.
    pub(crate) fn invalidate(&self) -> Result<()> {
        let f = self.folio_ref();
        let mut st = f.state();
        if st.flags.contains(FolioFlags::WRITEBACK) {
            return Err(Error::UnderWriteback);
        }
        f.clear_dirty_flag(&mut st);
        st.flags
            .remove(FolioFlags::UPTODATE | FolioFlags::READAHEAD);
        st.blocks = None;
        Ok(())
    }
}
