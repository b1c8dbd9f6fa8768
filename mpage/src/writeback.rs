//! The writeback path: [`writepages`].
//!
//! Per dirty folio, in ascending index order (R23):
//!
//! 1. A folio under writeback is skipped ([`SyncMode::None`]) or waited
//!    for ([`SyncMode::All`]) (X3).
//! 2. EOF (R26, R27, K12): a folio wholly past EOF is cleaned with
//!    no mapping and no command; a folio straddling EOF has its cached
//!    tail zeroed and only the blocks up to and including the EOF block
//!    are written.
//! 3. While the folio is locked, its dirty blocks are mapped with
//!    [`MapIntent::Write`] (allocate-on-write). Holes the mapper leaves
//!    are not written (R53). If mapping fails before any block of the
//!    folio was mapped, the folio is discarded: clean, not uptodate (R60
//!    step 2, K18); otherwise its mapped blocks are failed without
//!    I/O (R60 step 3, K11). The error is recorded on the file
//!    either way and returned.
//! 4. Writeback starts (dirty bits cleared, folio unlocked, R28) and the
//!    pieces join ioends: an ioend needs the same extent type and file
//!    and device contiguity (R54); its commands are built by the
//!    [`BioBuilder`] (max transfer, PRP rules) and each command that
//!    fills up is submitted immediately (R55). A piece that consumes a
//!    BOUNDARY extent to its end closes the ioend (its data is submitted
//!    now), then the metadata block right after the extent is written if
//!    the filesystem's metadata cache holds it dirty (R29,
//!    [`BlockMapper::metadata_cache`]). Unlike the kernel, which looks at
//!    the folio's last block only, the extent's end decides, as on the
//!    read side (R18, K13); LBA 0 is a valid boundary block.
//! 5. An ioend completes once all its commands have, with one combined
//!    status (R55). The ioends of one call are finished together once the
//!    call has submitted everything and the last of them completed:
//!    sorted by file offset, file-contiguous neighbours with the same
//!    status and kind merged (R59, device contiguity not needed), one
//!    [`BlockMapper::end_io`] per merged chain (unwritten conversion),
//!    then every folio of the chain ends writeback with the chain's
//!    status: the ioend-level status of K9, so a folio whose own
//!    command succeeded still fails if another command of its ioend did.
//!    A failure records the errno on the file (R31, R32) and never
//!    re-dirties the folio (R61).
//!
//! The open ioend is submitted before the call returns (R7). Writes are
//! plain Writes with SYNC or BACKGROUND hints, never FUA (R6).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;

use pagecache::{Errno, FolioFlags, FolioRef, IoPart, PAGE_SIZE, WritebackIo};

use crate::bio::BioBuilder;
use crate::device::{Bio, BioFlags, BioOp, BlockDevice, DeviceError, Geometry, Segment};
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::io;
use crate::iter::MapIter;
use crate::map::{BlockMapper, Extent, ExtentFlags, ExtentKind, IoendCompletion, MapIntent};

/// Writeback mode (WB_SYNC_NONE / WB_SYNC_ALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Background: skip folios under writeback, stop at the first error.
    None,
    /// Data integrity: wait for folios under writeback, carry on after
    /// errors.
    All,
}

/// What a writepages call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WritebackReport {
    /// Folios whose writeback was started (with or without commands).
    pub folios: usize,
    /// Ioends submitted.
    pub ioends: usize,
}

/// Shared completion state of one ioend (R55: one status for all its
/// chained commands).
#[derive(Debug)]
struct IoendState {
    pending: usize,
    sealed: bool,
    /// Handed to the batch (once).
    completed: bool,
    error: Option<DeviceError>,
    size: u64,
    /// One part per piece of a folio in the ioend, completed with the
    /// ioend's status when its (merged) chain finishes: the folios end
    /// writeback only then, after the completion work (R58, R59).
    parts: Vec<IoPart>,
}

#[derive(Debug)]
struct IoendShared {
    offset: u64,
    unwritten: bool,
    batch: Arc<Batch>,
    state: Mutex<IoendState>,
}

impl IoendShared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, IoendState> {
        self.state.lock()
    }

    /// One command of the ioend finished.
    fn command_done(&self, result: &std::result::Result<(), DeviceError>) {
        let mut st = self.lock();
        st.pending -= 1;
        if let Err(e) = result {
            st.error.get_or_insert_with(|| e.clone());
        }
        self.complete_if_done(st);
    }

    /// No more commands will be added.
    fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        self.complete_if_done(st);
    }

    /// The ioend failed without (all of) its I/O: a command could not be
    /// built or queued.
    fn fail(&self, err: Errno) {
        self.lock().error.get_or_insert(DeviceError::Errno(err));
    }

    fn complete_if_done(&self, mut st: parking_lot::MutexGuard<'_, IoendState>) {
        if !st.sealed || st.pending != 0 || st.completed {
            return;
        }
        st.completed = true;
        let done = DoneIoend {
            offset: self.offset,
            size: st.size,
            unwritten: self.unwritten,
            error: st.error.take(),
            parts: std::mem::take(&mut st.parts),
        };
        drop(st);
        self.batch.ioend_done(done);
    }
}

/// An ioend whose commands all completed, waiting for the completion
/// work of its batch.
#[derive(Debug)]
struct DoneIoend {
    offset: u64,
    size: u64,
    unwritten: bool,
    error: Option<DeviceError>,
    parts: Vec<IoPart>,
}

impl DoneIoend {
    fn status(&self) -> Option<Errno> {
        self.error.as_ref().map(DeviceError::errno)
    }

    /// R59 `iomap_ioend_can_merge`: same status (compared as the errno,
    /// our `bi_status`), both unwritten or both not (no SHARED extents
    /// here), file-contiguous. Device contiguity is not needed.
    fn can_merge(&self, next: &DoneIoend) -> bool {
        self.status() == next.status()
            && self.unwritten == next.unwritten
            && self.offset + self.size == next.offset
    }
}

/// The completion side of one writepages call: its ioends complete in any
/// order; once the call has submitted everything and the last of them has
/// completed, they are sorted by file offset, file-contiguous neighbours
/// with the same status and kind are merged (R59), and each merged chain
/// gets one [`BlockMapper::end_io`] call (one unwritten conversion) before
/// its folios end writeback with the chain's status.
#[derive(Debug)]
struct Batch {
    mapper: Arc<dyn BlockMapper>,
    state: Mutex<BatchState>,
}

#[derive(Debug, Default)]
struct BatchState {
    /// Ioends created and not yet completed.
    outstanding: usize,
    /// The writepages call has closed its last ioend.
    sealed: bool,
    done: Vec<DoneIoend>,
}

impl Batch {
    fn new(mapper: Arc<dyn BlockMapper>) -> Arc<Self> {
        Arc::new(Batch {
            mapper,
            state: Mutex::new(BatchState::default()),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BatchState> {
        self.state.lock()
    }

    fn ioend_started(&self) {
        self.lock().outstanding += 1;
    }

    fn ioend_done(&self, done: DoneIoend) {
        let mut st = self.lock();
        st.outstanding -= 1;
        st.done.push(done);
        self.finish_if_done(st);
    }

    /// The writepages call will start no more ioends.
    fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        self.finish_if_done(st);
    }

    fn finish_if_done(&self, mut st: parking_lot::MutexGuard<'_, BatchState>) {
        if !st.sealed || st.outstanding != 0 || st.done.is_empty() {
            return;
        }
        let done = std::mem::take(&mut st.done);
        drop(st);
        for chain in merge_ioends(done) {
            self.finish_chain(chain);
        }
    }

    /// `iomap_finish_ioends` for one merged chain.
    fn finish_chain(&self, chain: Vec<DoneIoend>) {
        let Some(first) = chain.first() else { return };
        let size: u64 = chain.iter().map(|d| d.size).sum();
        let mut completion = IoendCompletion {
            offset: first.offset,
            size,
            unwritten: first.unwritten,
            ioends: chain.len(),
            result: first.status().map_or(Ok(()), Err),
        };
        if let Some(e) = &first.error {
            log::warn!(
                "writeback error on file offset {}+{size}: {e} ({})",
                completion.offset,
                e.errno()
            );
        }
        if let Err(e) = self.mapper.end_io(&completion) {
            log::error!(
                "writeback completion work for {}+{size} failed: {e}",
                completion.offset
            );
            completion.result = Err(e.errno());
        }
        for ioend in chain {
            for part in ioend.parts {
                part.complete(completion.result);
            }
        }
    }
}

/// R59 `iomap_sort_ioends` + `iomap_ioend_try_merge`: sorts by file
/// offset and groups each ioend with the following ones it can merge
/// with.
fn merge_ioends(mut done: Vec<DoneIoend>) -> Vec<Vec<DoneIoend>> {
    done.sort_by_key(|d| d.offset);
    let mut chains: Vec<Vec<DoneIoend>> = Vec::new();
    for d in done {
        match chains.last_mut() {
            Some(chain) if chain.last().is_some_and(|last| last.can_merge(&d)) => chain.push(d),
            _ => chains.push(vec![d]),
        }
    }
    chains
}

/// Seals the batch when the writepages call ends, however it ends.
struct BatchGuard(Arc<Batch>);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.0.seal();
    }
}

/// The ioend being built.
#[derive(Debug)]
struct Ioend {
    /// File offset one past the last byte added.
    end: u64,
    unwritten: bool,
    builder: BioBuilder,
    shared: Arc<IoendShared>,
}

/// A piece of a folio to write: bytes `[off, off+len)` at `lba`.
#[derive(Debug)]
struct Piece {
    off: usize,
    len: usize,
    lba: u64,
    unwritten: bool,
    /// The piece consumes a BOUNDARY extent to its end: the LBA right
    /// after the extent (where the metadata block lives, R29).
    boundary: Option<u64>,
}

struct WbCtx<'a> {
    dev: &'a mut dyn BlockDevice,
    ino: &'a Inode,
    geometry: Geometry,
    flags: BioFlags,
    iter: MapIter<'a>,
    ioend: Option<Ioend>,
    batch: Arc<Batch>,
    report: WritebackReport,
}

impl WbCtx<'_> {
    fn submit_bio(&mut self, bio: Bio, shared: &Arc<IoendShared>) -> Result<()> {
        shared.lock().pending += 1;
        let s = shared.clone();
        let bio = bio.with_end_io(Box::new(move |r| s.command_done(r)));
        io::submit(self.dev, bio)
    }

    /// Submits the open ioend's last command and seals it.
    fn close_ioend(&mut self) -> Result<()> {
        let Some(mut ioend) = self.ioend.take() else {
            return Ok(());
        };
        let result = match ioend.builder.close() {
            Ok(Some(bio)) => self.submit_bio(bio, &ioend.shared),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &result {
            ioend.shared.fail(e.errno());
        }
        ioend.shared.seal();
        self.report.ioends += 1;
        result
    }

    /// Maps the folio's blocks in `ranges` (R53/R25). Returns the pieces
    /// and the error that stopped mapping, if any.
    fn map_folio(
        &mut self,
        fpos: u64,
        bs: usize,
        ranges: &[Range<usize>],
    ) -> (Vec<Piece>, Option<Error>) {
        let lba_size = self.geometry.lba_size;
        let mut pieces = Vec::new();
        for r in ranges {
            let mut off = r.start;
            while off < r.end {
                let pos = fpos + off as u64;
                self.iter.set_end(fpos + r.end as u64);
                let ext: Extent = match self.iter.extent_at(pos) {
                    Ok(e) => e,
                    Err(e) => {
                        self.iter.invalidate();
                        return (pieces, Some(e));
                    }
                };
                let end = ext.end().min(fpos + r.end as u64);
                let n = (end - pos) as usize;
                if !n.is_multiple_of(bs) {
                    return (
                        pieces,
                        Some(Error::Map {
                            pos,
                            source: crate::map::MapError::BadExtent { pos, extent: ext },
                        }),
                    );
                }
                let unwritten = matches!(ext.kind, ExtentKind::Unwritten { .. });
                let boundary = (ext.flags.contains(ExtentFlags::BOUNDARY) && end == ext.end())
                    .then(|| ext.lba_at(end - 1, lba_size).map(|l| l + 1))
                    .flatten();
                if let Some(lba) = ext.lba_at(pos, lba_size) {
                    let blocks = (n / lba_size as usize) as u64;
                    if lba + blocks > self.geometry.capacity {
                        log::error!("offset {pos} mapped past the namespace end");
                        return (pieces, Some(Error::Io(Errno::Io)));
                    }
                    pieces.push(Piece {
                        off,
                        len: n,
                        lba,
                        unwritten,
                        boundary,
                    });
                } else {
                    log::debug!("dirty blocks at {pos}+{n} over a hole are not written (R53)");
                }
                off += n;
            }
        }
        (pieces, None)
    }

    fn add_piece(&mut self, wb: &WritebackIo, fpos: u64, p: &Piece) -> Result<()> {
        let pos = fpos + p.off as u64;
        let iova = wb.folio().iova() + p.off as u64;
        let joins = self.ioend.as_ref().is_some_and(|io| {
            io.unwritten == p.unwritten && io.end == pos && io.builder.end_lba() == Some(p.lba)
        });
        if !joins {
            self.close_ioend()?;
            self.batch.ioend_started();
            self.ioend = Some(Ioend {
                end: pos,
                unwritten: p.unwritten,
                builder: BioBuilder::new(BioOp::Write, self.flags, self.geometry),
                shared: Arc::new(IoendShared {
                    offset: pos,
                    unwritten: p.unwritten,
                    batch: self.batch.clone(),
                    state: Mutex::new(IoendState {
                        pending: 0,
                        sealed: false,
                        completed: false,
                        error: None,
                        size: 0,
                        parts: Vec::new(),
                    }),
                }),
            });
        }
        let Some(ioend) = self.ioend.as_mut() else {
            return Ok(());
        };
        let shared = ioend.shared.clone();
        // The ioend's hold on the piece: the folio ends writeback only
        // when the ioend's chain finishes, with its status (R55, R59).
        let hold = wb
            .part(p.off, p.len)
            .map_err(Error::cache("writeback part"))?;
        {
            let mut st = shared.lock();
            st.size += p.len as u64;
            st.parts.push(hold);
        }
        let closed = ioend.builder.add(p.lba, iova, p.len, |o, l| {
            wb.part(p.off + o, l)
                .map(Segment::write)
                .map_err(Error::cache("writeback part"))
        });
        ioend.end = pos + p.len as u64;
        let closed = closed.inspect_err(|e| shared.fail(e.errno()))?;
        for bio in closed {
            self.submit_bio(bio, &shared)
                .inspect_err(|e| shared.fail(e.errno()))?;
        }
        if let Some(meta_lba) = p.boundary {
            // R29: the BOUNDARY extent is consumed: submit its data now,
            // then the dirty metadata block right after it.
            self.close_ioend()?;
            self.write_boundary_block(meta_lba);
        }
        Ok(())
    }

    /// R29 `write_boundary_block`: if the filesystem's metadata cache
    /// holds the block at `lba` dirty, writes its folio back now (a
    /// folio under writeback is left alone). Failures are logged; a
    /// write error lands on the metadata file like any writeback error.
    fn write_boundary_block(&mut self, lba: u64) {
        let Some(meta) = self.ino.mapper.metadata_cache() else {
            return;
        };
        if std::ptr::eq(meta.as_ref(), self.ino) {
            return;
        }
        let byte = lba * u64::from(self.geometry.lba_size);
        let index = byte / PAGE_SIZE as u64;
        let folio = match meta.cache.lookup(meta.file, index) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                log::warn!("metadata cache lookup at LBA {lba}: {e}");
                return;
            }
        };
        let bs = folio.block_size().bytes() as u64;
        let block = ((byte - folio.pos()) / bs) as usize;
        if !folio.is_dirty() || !folio.dirty_blocks().get(block) {
            return;
        }
        if let Err(e) = writepages(&mut *self.dev, &meta, folio.pages(), SyncMode::None) {
            log::warn!("writing the metadata block at LBA {lba}: {e}");
        }
    }

    /// Writes one folio back. `Err` = a mapping error (already recorded
    /// on the file) or a device failure.
    fn write_folio(&mut self, folio: &FolioRef, mode: SyncMode) -> Result<()> {
        if folio.is_writeback() {
            if mode == SyncMode::None {
                return Ok(());
            }
            io::wait_folio(self.dev, folio, FolioFlags::WRITEBACK, "folio writeback")?;
        }
        let locked = io::lock_folio(self.dev, folio)?;
        if !locked.is_dirty() {
            return Ok(());
        }
        if locked.is_writeback() {
            // Re-dirtied and raced into writeback again; the next pass
            // gets it.
            return Ok(());
        }
        let size = self.ino.size();
        let fpos = locked.pos();
        let bs = locked.block_size().bytes();
        if fpos >= size {
            // R26/K12: wholly past EOF: clean, no mapping, no I/O.
            let wb = locked
                .start_writeback()
                .map_err(Error::cache("writeback past EOF"))?;
            drop(wb);
            self.report.folios += 1;
            return Ok(());
        }
        let mut end = locked.size();
        if size < fpos + end as u64 {
            let tail = (size - fpos) as usize;
            locked
                .zero_tail(tail)
                .map_err(Error::cache("zeroing the EOF tail"))?;
            end = tail.div_ceil(bs) * bs;
        }
        let dirty = locked.dirty_blocks();
        let ranges: Vec<Range<usize>> = dirty
            .runs()
            .into_iter()
            .map(|r| r.start * bs..(r.end * bs).min(end))
            .filter(|r| !r.is_empty())
            .collect();
        let (pieces, map_err) = self.map_folio(fpos, bs, &ranges);
        if let Some(e) = map_err.as_ref()
            && pieces.is_empty()
        {
            // R60 step 2.
            log::warn!(
                "{:?} page {}: mapping failed: {e}",
                self.ino.file,
                locked.index()
            );
            locked.discard(e.errno());
            return Err(map_err.unwrap_or(Error::Io(Errno::Io)));
        }
        let wb = locked
            .start_writeback()
            .map_err(Error::cache("starting writeback"))?;
        self.report.folios += 1;
        if let Some(e) = map_err {
            // R60 step 3: the mapped blocks of this folio fail without I/O.
            for p in &pieces {
                match wb.part(p.off, p.len) {
                    Ok(part) => part.complete(Err(e.errno())),
                    Err(pe) => log::error!("cannot fail writeback part: {pe}"),
                }
            }
            return Err(e);
        }
        for p in &pieces {
            self.add_piece(&wb, fpos, p)?;
        }
        Ok(())
    }
}

/// Writes back the dirty folios of `ino` in page range `pages`. Returns
/// after everything is submitted; completions arrive through the device
/// (see [`crate::sync::fsync`] for waiting).
pub fn writepages(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    pages: Range<u64>,
    mode: SyncMode,
) -> Result<WritebackReport> {
    let geometry = dev.geometry();
    crate::read::check_block_size(ino, &geometry)?;
    let folios = ino
        .cache
        .dirty_folios(ino.file, pages)
        .map_err(Error::cache("listing dirty folios"))?;
    let mut ctx = WbCtx {
        dev,
        ino,
        geometry,
        flags: match mode {
            SyncMode::All => BioFlags::SYNC,
            SyncMode::None => BioFlags::BACKGROUND,
        },
        iter: MapIter::new(ino.mapper.as_ref(), MapIntent::Write, 0),
        ioend: None,
        batch: Batch::new(ino.mapper.clone()),
        report: WritebackReport::default(),
    };
    // Runs the batch's completion work once everything below is
    // submitted (also on an early return).
    let _seal = BatchGuard(ctx.batch.clone());
    let mut first_err = None;
    for folio in &folios {
        if let Err(e) = ctx.write_folio(folio, mode) {
            let fatal = !matches!(e, Error::Map { .. } | Error::Io(_));
            first_err.get_or_insert(e);
            if fatal || mode == SyncMode::None {
                break;
            }
        }
    }
    let closed = ctx.close_ioend();
    let committed = crate::io::commit(ctx.dev);
    if let Some(e) = first_err {
        return Err(e);
    }
    closed?;
    committed?;
    Ok(ctx.report)
}
