//! The buffered write path (docs/MPAGE.md section E, R42–R50):
//! [`write_begin`] / [`write_end`], [`buffered_write`], [`zero_range`],
//! [`truncate_page`], [`page_mkwrite`], and the page cache truncation
//! they need ([`truncate_pagecache`]).
//!
//! * write_begin (R42, R44): the folio is grabbed and locked. If it is not
//!   uptodate, each maximal run of non-uptodate blocks the write touches
//!   (R35, cut after the block holding EOF) is skipped when the write
//!   covers it whole, zero-filled when it needs zeroing (hole, unwritten,
//!   NEW, or at/past EOF: R36), and otherwise read **synchronously** with
//!   the folio lock kept, one command per run. A failure releases the
//!   folio and removes the write's part past EOF from the cache (R47).
//! * write_end (R45, R46): the copy marks every touched block uptodate and
//!   dirty, and a write ending past EOF raises i_size while the folio is
//!   still locked (so writeback never sees the new bytes past the old
//!   EOF). A short copy cannot happen here (data comes from a slice).
//! * zero_range (R49): holes and unwritten extents are skipped as already
//!   zero unless a folio is cached over them (modern iomap: cached data
//!   there may not be zero); everything else goes through write_begin,
//!   zeroing and write_end, so the folio becomes dirty. Zeroing past EOF
//!   raises i_size like any write_end. truncate_page zeroes `[pos, end
//!   of its block)`.
//! * page_mkwrite (R50): for a cached, uptodate folio inside EOF, maps its
//!   part inside EOF with write intent (allocate/reserve), dirties it and
//!   returns it locked; a folio truncated away or wholly past EOF gives
//!   `None` (the kernel's NOPAGE: retry), with no mapping call.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pagecache::{Errno, FolioFlags, FolioOrder, FolioRef, Grab, LockedFolio, PAGE_SIZE};

use crate::bio::BioBuilder;
use crate::device::{Bio, BioFlags, BioOp, BlockDevice, Geometry, Segment};
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::io;
use crate::iter::MapIter;
use crate::map::{ExtentKind, MapError, MapIntent};
use crate::read::{check_block_size, round_up};

const PAGE: u64 = PAGE_SIZE as u64;

/// The cached folio covering page `index`, or a new one, locked.
fn grab_locked(dev: &mut dyn BlockDevice, ino: &Inode, index: u64) -> Result<LockedFolio> {
    let order = FolioOrder::new(0).map_err(Error::cache("folio order"))?;
    match ino
        .cache
        .grab(ino.file, index, order)
        .map_err(Error::cache("grabbing a folio to write"))?
    {
        Grab::Created(l) => Ok(l),
        Grab::Cached(f) => io::lock_folio(dev, &f),
    }
}

/// What write_begin does to one piece of a non-uptodate run.
#[derive(Debug)]
enum Step {
    Zero(Range<usize>),
    /// Read `range` from `lba`; `run` numbers the R35 run (one command
    /// per run).
    Read {
        range: Range<usize>,
        lba: u64,
        run: usize,
    },
}

/// write_begin (R42, R44, R47): returns the folio covering `[pos,
/// pos+len)` (which must lie inside one page) locked, with every block
/// the write covers only partly uptodate.
///
/// Errors: a full cache ([`Error::is_cache_full`]: nothing was changed,
/// retry after writeback), a mapping error, or the read's errno
/// ([`Error::Io`]); after the latter two the folio is released and the
/// write's part past EOF is removed from the cache (R47, T21).
pub fn write_begin(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    pos: u64,
    len: usize,
) -> Result<LockedFolio> {
    let end = pos
        .checked_add(len as u64)
        .ok_or(Error::Invalid("write range overflows"))?;
    if len == 0 || pos / PAGE != (end - 1) / PAGE {
        return Err(Error::Invalid(
            "write_begin range must be non-empty and in one page",
        ));
    }
    let locked = grab_locked(dev, ino, pos / PAGE)?;
    match prepare(dev, ino, locked, pos, len) {
        Ok(l) => Ok(l),
        Err(e) => {
            log::debug!("write_begin of {pos}+{len} failed: {e}");
            if end > ino.size() {
                truncate_pagecache(dev, ino, pos.max(ino.size()), end)?;
            }
            Err(e)
        }
    }
}

/// The R42 work on a locked folio; on error the lock is released. Four
/// phases: the stale runs the write touches (R35), what each piece of
/// them needs (zeros or a read, from the mapping), then either zeroing
/// alone or one synchronous read that keeps the lock.
fn prepare(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    locked: LockedFolio,
    pos: u64,
    len: usize,
) -> Result<LockedFolio> {
    if locked.is_uptodate() {
        return Ok(locked);
    }
    let geometry = dev.geometry();
    let bs = check_block_size(ino, &geometry)?;
    let fpos = locked.pos();
    let from = (pos - fpos) as usize;
    let touch = Touch {
        fpos,
        from,
        to: from + len,
        size: ino.size(),
        bs,
    };
    let runs = touch.stale_runs(&locked);
    let steps = touch.steps(ino, &geometry, runs)?;
    if !steps.iter().any(|s| matches!(s, Step::Read { .. })) {
        for s in &steps {
            if let Step::Zero(r) = s {
                locked
                    .zero_blocks(r.start, r.len())
                    .map_err(Error::cache("write_begin zeroing"))?;
            }
        }
        return Ok(locked);
    }
    read_locked(dev, locked, &steps, geometry)
}

/// What a write touches in its folio: bytes `from..to` of the folio at
/// file offset `fpos`, with the file `size` bytes long in blocks of `bs`.
struct Touch {
    fpos: u64,
    from: usize,
    to: usize,
    size: u64,
    bs: usize,
}

impl Touch {
    /// R35: the maximal runs of non-uptodate blocks among the touched
    /// blocks, cut after the block holding EOF.
    fn stale_runs(&self, locked: &LockedFolio) -> Vec<Range<usize>> {
        let bs = self.bs;
        let eof_off = round_up(self.size, bs as u64)
            .saturating_sub(self.fpos)
            .min(locked.size() as u64) as usize;
        let up = locked.uptodate_blocks();
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut b = self.from / bs;
        let end_blk = self.to.div_ceil(bs);
        while b < end_blk {
            if up.get(b) {
                b += 1;
                continue;
            }
            let s = b;
            while b < end_blk && !up.get(b) {
                b += 1;
            }
            let r = s * bs..b * bs;
            if r.start < eof_off && eof_off < r.end {
                runs.push(r.start..eof_off);
                runs.push(eof_off..r.end);
            } else {
                runs.push(r);
            }
        }
        runs
    }

    /// What each run needs: nothing where the write covers it whole,
    /// zeros at or past EOF (R36) and in holes, else a read of the mapped
    /// blocks (one command per run).
    fn steps(
        &self,
        ino: &Inode,
        geometry: &Geometry,
        runs: Vec<Range<usize>>,
    ) -> Result<Vec<Step>> {
        let (fpos, bs) = (self.fpos, self.bs);
        let mut steps = Vec::new();
        let mut iter = MapIter::new(ino.mapper.as_ref(), MapIntent::Read, fpos + self.to as u64);
        for (run, r) in runs.into_iter().enumerate() {
            if self.from <= r.start && r.end <= self.to {
                // Covered whole by the write: neither read nor zeroed.
                continue;
            }
            let mut off = r.start;
            while off < r.end {
                let p = fpos + off as u64;
                if p >= self.size {
                    // R36: at or past EOF: zeros.
                    steps.push(Step::Zero(off..r.end));
                    break;
                }
                iter.set_end(fpos + r.end as u64);
                let ext = iter.extent_at(p)?;
                let e = ext.end().min(fpos + r.end as u64);
                let n = (e - p) as usize;
                if !n.is_multiple_of(bs) {
                    return Err(Error::Map {
                        pos: p,
                        source: MapError::BadExtent {
                            pos: p,
                            extent: ext,
                        },
                    });
                }
                match ext
                    .lba_at(p, geometry.lba_size)
                    .filter(|_| ext.needs_read())
                {
                    None => steps.push(Step::Zero(off..off + n)),
                    Some(lba) => {
                        let blocks = (n / geometry.lba_size as usize) as u64;
                        if lba + blocks > geometry.capacity {
                            log::error!("offset {p} mapped past the namespace end");
                            return Err(Error::Io(Errno::Io));
                        }
                        steps.push(Step::Read {
                            range: off..off + n,
                            lba,
                            run,
                        });
                    }
                }
                off += n;
            }
        }
        Ok(steps)
    }
}

/// The synchronous read of write_begin, keeping the folio lock (R42,
/// iomap_read_page_sync): zeros and reads as `steps` say, one command per
/// run, then waits for all of them.
fn read_locked(
    dev: &mut dyn BlockDevice,
    locked: LockedFolio,
    steps: &[Step],
    geometry: Geometry,
) -> Result<LockedFolio> {
    let read = locked.start_read();
    let done = Arc::new(AtomicUsize::new(0));
    let mut submitted = 0usize;
    let mut builder = BioBuilder::new(BioOp::Read, BioFlags::empty(), geometry);
    let mut open_run = None;
    let send = |dev: &mut dyn BlockDevice, bio: Bio, submitted: &mut usize| {
        let d = done.clone();
        *submitted += 1;
        io::submit(
            dev,
            bio.with_end_io(Box::new(move |_| {
                d.fetch_add(1, Ordering::AcqRel);
            })),
        )
    };
    for s in steps {
        match s {
            Step::Zero(r) => read
                .zero(r.start, r.len())
                .map_err(Error::cache("write_begin zeroing"))?,
            Step::Read { range, lba, run } => {
                if open_run != Some(*run) {
                    if let Some(bio) = builder.close()? {
                        send(dev, bio, &mut submitted)?;
                    }
                    open_run = Some(*run);
                }
                let iova = read.folio().iova() + range.start as u64;
                let closed = builder.add(*lba, iova, range.len(), |o, l| {
                    read.part(range.start + o, l)
                        .map(Segment::read)
                        .map_err(Error::cache("read part"))
                })?;
                for bio in closed {
                    send(dev, bio, &mut submitted)?;
                }
            }
        }
    }
    if let Some(bio) = builder.close()? {
        send(dev, bio, &mut submitted)?;
    }
    io::wait_until(dev, "write_begin read", || {
        done.load(Ordering::Acquire) == submitted
    })?;
    let (locked, outcome) = read.wait_locked();
    match outcome {
        Ok(()) => Ok(locked),
        Err(e) => Err(Error::Io(e)),
    }
}

/// write_end (R45, R46): copies `data` (inside the folio) in at file
/// offset `pos`, marks the touched blocks uptodate and dirty, raises
/// i_size if the write ends past it, and unlocks the folio. Returns the
/// bytes copied.
pub fn write_end(ino: &Inode, folio: LockedFolio, pos: u64, data: &[u8]) -> Result<usize> {
    let off = pos
        .checked_sub(folio.pos())
        .ok_or(Error::Invalid("write_end before the folio"))? as usize;
    folio
        .write(off, data)
        .map_err(Error::cache("write_end copy"))?;
    ino.extend_size(pos + data.len() as u64);
    drop(folio);
    Ok(data.len())
}

/// `iomap_file_buffered_write` without throttling: writes `data` at
/// `pos` folio by folio. Returns the bytes written, or the error if none
/// were (R47).
pub fn buffered_write(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    pos: u64,
    data: &[u8],
) -> Result<usize> {
    let mut done = 0;
    while done < data.len() {
        let at = pos + done as u64;
        let n = (PAGE - at % PAGE).min((data.len() - done) as u64) as usize;
        let folio = match write_begin(dev, ino, at, n) {
            Ok(f) => f,
            Err(e) if done > 0 => {
                log::debug!("short write at {at}: {e}");
                return Ok(done);
            }
            Err(e) => return Err(e),
        };
        done += write_end(ino, folio, at, &data[done..done + n])?;
    }
    Ok(done)
}

/// Zeroes the part of `[pos, end)` that lies in `pos`'s folio and in the
/// extent mapping `pos` (R49); returns where the next segment starts.
/// Zeroing past EOF raises i_size, as any write_end does.
pub fn zero_segment(dev: &mut dyn BlockDevice, ino: &Inode, pos: u64, end: u64) -> Result<u64> {
    let limit = end.min((pos / PAGE + 1) * PAGE);
    if pos >= limit {
        return Ok(limit.max(pos));
    }
    let ext = ino
        .mapper
        .map(pos, limit - pos, MapIntent::Read)
        .map_err(|source| Error::Map { pos, source })?;
    if !ext.contains(pos) {
        return Err(Error::Map {
            pos,
            source: MapError::BadExtent { pos, extent: ext },
        });
    }
    let seg_end = ext.end().min(limit);
    let already_zero = matches!(ext.kind, ExtentKind::Hole | ExtentKind::Unwritten { .. });
    if already_zero
        && ino
            .cache
            .lookup(ino.file, pos / PAGE)
            .map_err(Error::cache("lookup"))?
            .is_none()
    {
        return Ok(seg_end);
    }
    let n = (seg_end - pos) as usize;
    let folio = write_begin(dev, ino, pos, n)?;
    write_end(ino, folio, pos, &vec![0; n])?;
    Ok(seg_end)
}

/// zero_range (R49): zeroes file bytes `[pos, pos+len)` through the
/// cache, dirtying what it zeroes; a range past EOF raises i_size as it
/// goes (iomap_write_end), so writeback never drops the zeroed folios as
/// lying past EOF.
pub fn zero_range(dev: &mut dyn BlockDevice, ino: &Inode, pos: u64, len: u64) -> Result<()> {
    let end = pos
        .checked_add(len)
        .ok_or(Error::Invalid("zero range overflows"))?;
    let mut at = pos;
    while at < end {
        at = zero_segment(dev, ino, at, end)?;
    }
    Ok(())
}

/// truncate_page (R49): zeroes `[pos, end of the block holding pos)`;
/// nothing when `pos` is block aligned.
pub fn truncate_page(dev: &mut dyn BlockDevice, ino: &Inode, pos: u64) -> Result<()> {
    let bs = ino
        .cache
        .block_size(ino.file)
        .map_err(Error::cache("block size"))?
        .bytes() as u64;
    let off = pos % bs;
    if off == 0 {
        return Ok(());
    }
    zero_range(dev, ino, pos, bs - off)
}

/// Removes file bytes `[start, end)` from the cache
/// (`truncate_inode_pages_range`): folios wholly inside are dropped,
/// dirty or not, after waiting for their lock and writeback; the parts of
/// folios straddling the ends are zeroed in place, without changing their
/// state (the callers truncate only bytes past EOF).
pub fn truncate_pagecache(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    start: u64,
    end: u64,
) -> Result<()> {
    if start >= end {
        return Ok(());
    }
    let folios = ino
        .cache
        .folios_in(ino.file, start / PAGE..end.div_ceil(PAGE))
        .map_err(Error::cache("listing folios"))?;
    for f in &folios {
        let fs = f.pos();
        let fe = fs + f.size() as u64;
        if fs >= start && fe <= end {
            continue;
        }
        let (zs, ze) = (fs.max(start), fe.min(end));
        if zs < ze {
            let l = io::lock_folio(dev, f)?;
            l.zero_bytes((zs - fs) as usize, (ze - zs) as usize)
                .map_err(Error::cache("zeroing a truncated folio"))?;
        }
    }
    let pages = start.div_ceil(PAGE)..end / PAGE;
    if pages.is_empty() {
        return Ok(());
    }
    loop {
        let report = ino
            .cache
            .invalidate(ino.file, pages.clone())
            .map_err(Error::cache("truncating the cache"))?;
        if report.busy.is_empty() {
            return Ok(());
        }
        for f in &report.busy {
            io::wait_folio(
                dev,
                f,
                FolioFlags::LOCKED | FolioFlags::WRITEBACK,
                "truncate",
            )?;
        }
    }
}

/// page_mkwrite (R50): makes a cached folio writable in place. Locks it;
/// if it was truncated away or lies wholly past EOF, returns `None` (the
/// kernel's NOPAGE, retry) without a mapping call. Otherwise maps its part
/// inside EOF with write intent (the filesystem allocates or reserves),
/// marks that part dirty (the folio must be uptodate; no I/O) and returns
/// the folio locked.
pub fn page_mkwrite(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    folio: &FolioRef,
) -> Result<Option<LockedFolio>> {
    let locked = io::lock_folio(dev, folio)?;
    let size = ino.size();
    let fpos = locked.pos();
    let cached = ino
        .cache
        .lookup(ino.file, locked.index())
        .map_err(Error::cache("lookup"))?
        .is_some_and(|f| f.same(folio));
    if !cached || fpos >= size {
        return Ok(None);
    }
    let len = (size - fpos).min(locked.size() as u64);
    let mut at = fpos;
    while at < fpos + len {
        let ext = ino
            .mapper
            .map(at, fpos + len - at, MapIntent::Write)
            .map_err(|source| Error::Map { pos: at, source })?;
        if !ext.contains(at) {
            return Err(Error::Map {
                pos: at,
                source: MapError::BadExtent {
                    pos: at,
                    extent: ext,
                },
            });
        }
        at = ext.end();
    }
    locked
        .mark_range_dirty(0, len as usize)
        .map_err(Error::cache("page_mkwrite"))?;
    Ok(Some(locked))
}
