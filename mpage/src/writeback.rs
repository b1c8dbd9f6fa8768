//! The writeback path: [`writepages`].
//!
//! Per dirty folio, in ascending index order (R23):
//!
//! 1. A folio under writeback is skipped ([`SyncMode::None`]) or waited
//!    for ([`SyncMode::All`]) (X3).
//! 2. EOF (R26, R27, §5 item 12): a folio wholly past EOF is cleaned with
//!    no mapping and no command; a folio straddling EOF has its cached
//!    tail zeroed and only the blocks up to and including the EOF block
//!    are written.
//! 3. While the folio is locked, its dirty blocks are mapped with
//!    [`MapIntent::Write`] (allocate-on-write). Holes the mapper leaves
//!    are not written (R53). If mapping fails before any block of the
//!    folio was mapped, the folio is discarded: clean, not uptodate (R60
//!    step 2, §5 item 18); otherwise its mapped blocks are failed without
//!    I/O (R60 step 3, §5 item 11). The error is recorded on the file
//!    either way and returned.
//! 4. Writeback starts (dirty bits cleared, folio unlocked, R28) and the
//!    pieces join ioends: an ioend needs the same extent type and file
//!    and device contiguity (R54); its commands are built by the
//!    [`BioBuilder`] (max transfer, PRP rules) and each command that
//!    fills up is submitted immediately (R55). The ioend completes once
//!    all its commands have, with one combined status; on success its
//!    unwritten extents are converted (R59's completion work).
//! 5. Completion ends writeback per command; a failure records the errno
//!    on the file (R31, R32) and never re-dirties the folio (R61).
//!
//! The open ioend is submitted before the call returns (R7). Writes are
//! plain Writes with SYNC or BACKGROUND hints, never FUA (R6).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use pagecache::{Errno, FolioFlags, FolioRef, WritebackIo};

use crate::bio::BioBuilder;
use crate::device::{Bio, BioFlags, BioOp, BlockDevice, DeviceError, Geometry, Segment};
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::io;
use crate::iter::MapIter;
use crate::map::{BlockMapper, Extent, ExtentKind, MapIntent};

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
    error: Option<DeviceError>,
}

#[derive(Debug)]
struct IoendShared {
    offset: u64,
    size: Mutex<u64>,
    unwritten: bool,
    mapper: Arc<dyn BlockMapper>,
    state: Mutex<IoendState>,
}

impl IoendShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, IoendState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One command of the ioend finished.
    fn command_done(&self, result: &std::result::Result<(), DeviceError>) {
        let mut st = self.lock();
        st.pending -= 1;
        if let Err(e) = result {
            st.error.get_or_insert_with(|| e.clone());
        }
        if st.sealed && st.pending == 0 {
            let error = st.error.clone();
            drop(st);
            self.finish(error);
        }
    }

    /// No more commands will be added.
    fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        if st.pending == 0 {
            let error = st.error.clone();
            drop(st);
            self.finish(error);
        }
    }

    fn finish(&self, error: Option<DeviceError>) {
        let size = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            None if self.unwritten => {
                if let Err(e) = self.mapper.convert_unwritten(self.offset, size) {
                    log::error!("unwritten conversion of {}+{size} failed: {e}", self.offset);
                }
            }
            None => {}
            Some(e) => log::warn!(
                "writeback error on file offset {}+{size}: {e} ({})",
                self.offset,
                e.errno()
            ),
        }
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
}

struct WbCtx<'a> {
    dev: &'a mut dyn BlockDevice,
    ino: &'a Inode,
    geometry: Geometry,
    flags: BioFlags,
    iter: MapIter<'a>,
    ioend: Option<Ioend>,
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
            self.ioend = Some(Ioend {
                end: pos,
                unwritten: p.unwritten,
                builder: BioBuilder::new(BioOp::Write, self.flags, self.geometry),
                shared: Arc::new(IoendShared {
                    offset: pos,
                    size: Mutex::new(0),
                    unwritten: p.unwritten,
                    mapper: self.ino.mapper.clone(),
                    state: Mutex::new(IoendState {
                        pending: 0,
                        sealed: false,
                        error: None,
                    }),
                }),
            });
        }
        let Some(ioend) = self.ioend.as_mut() else {
            return Ok(());
        };
        let closed = ioend.builder.add(p.lba, iova, p.len, |o, l| {
            wb.part(p.off + o, l)
                .map(Segment::write)
                .map_err(Error::cache("writeback part"))
        })?;
        ioend.end = pos + p.len as u64;
        *ioend.shared.size.lock().unwrap_or_else(|e| e.into_inner()) += p.len as u64;
        let shared = ioend.shared.clone();
        for bio in closed {
            self.submit_bio(bio, &shared)?;
        }
        Ok(())
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
            // R26/§5 item 12: wholly past EOF: clean, no mapping, no I/O.
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
        report: WritebackReport::default(),
    };
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
    let committed = ctx.dev.commit().map_err(|source| Error::Device {
        context: "commit",
        source,
    });
    if let Some(e) = first_err {
        return Err(e);
    }
    closed?;
    committed?;
    Ok(ctx.report)
}
