//! The read path: [`read_folio`] (demand read) and [`readahead`].
//!
//! For each folio, only the blocks that are not uptodate are considered
//! (R35, R41: a partially uptodate folio reads only what is missing). Each
//! maximal piece backed by one extent is then
//!
//! * zero-filled without I/O if it lies at or past the block holding EOF
//!   (R11), or its extent is a hole, unwritten, or NEW (R12, R13, R36);
//! * otherwise added to the open command through the [`BioBuilder`],
//!   which keeps runs device-contiguous, PRP-legal and within the max
//!   transfer (R2, R3, R4, R17). A hole folio leaves the run open, so a
//!   later LBA-contiguous folio joins it (R13, T3); a piece that ends
//!   mid-page ends its command (R14, T5), and a folio whose blocks are
//!   discontiguous becomes one piece per extent (R16/R19 with the
//!   coalescing of K2, T4).
//!
//! A BOUNDARY extent consumed to its end at the end of a folio submits
//! the run; one ending mid-folio is followed by the folio's next extent
//! and changes nothing (R18, as the kernel's single look at the mapping
//! after the folio's last block). All runs
//! are submitted before the call returns (R7). Readahead commands carry
//! [`BioFlags::READAHEAD`], demand reads do not (R6). Mapping requests
//! cover the rest of the window, capped at the block holding EOF (R9), and
//! the extent is reused while it covers the next folio (R10).
//!
//! Errors reach the folio, not the caller (R22, R40): a folio whose
//! mapping fails ends with ERROR; readahead stops there and leaves later
//! folios unread. A piece mapped past the namespace end fails its folio
//! with EIO before any command (R5 with the K6 deviation, T10).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::ops::Range;

use pagecache::{Errno, FolioOrder, Grab, LockedFolio, PAGE_SIZE, ReadIo};

use crate::bio::BioBuilder;
use crate::device::{BioFlags, BioOp, BlockDevice, Geometry, Segment};
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::io;
use crate::iter::MapIter;
use crate::map::{ExtentFlags, MapIntent};

/// What a readahead call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadaheadReport {
    /// Folios created and started.
    pub started: usize,
    /// Pages skipped because they were already cached.
    pub cached: usize,
    /// The mapping error that stopped it, if any (not an error of the
    /// call, R40).
    pub stopped: Option<Errno>,
}

struct ReadCtx<'a> {
    dev: &'a mut dyn BlockDevice,
    ino: &'a Inode,
    geometry: Geometry,
    iter: MapIter<'a>,
    bio: BioBuilder,
}

pub(crate) fn check_block_size(ino: &Inode, geometry: &Geometry) -> Result<usize> {
    let bs = ino
        .cache
        .block_size(ino.file)
        .map_err(Error::cache("block size"))?
        .bytes();
    if bs < geometry.lba_size as usize {
        return Err(Error::BlockTooSmall {
            block: bs,
            lba: geometry.lba_size,
        });
    }
    Ok(bs)
}

pub(crate) fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl<'a> ReadCtx<'a> {
    fn new(
        dev: &'a mut dyn BlockDevice,
        ino: &'a Inode,
        flags: BioFlags,
        window_end: u64,
    ) -> Result<Self> {
        let geometry = dev.geometry();
        let bs = check_block_size(ino, &geometry)?;
        let end = window_end.min(round_up(ino.size(), bs as u64));
        Ok(ReadCtx {
            dev,
            ino,
            geometry,
            iter: MapIter::new(ino.mapper.as_ref(), MapIntent::Read, end),
            bio: BioBuilder::new(BioOp::Read, flags, geometry),
        })
    }

    /// Closes and submits the open command.
    fn submit_open(&mut self) -> Result<()> {
        if let Some(bio) = self.bio.close()? {
            io::submit(self.dev, bio)?;
        }
        Ok(())
    }

    /// Reads the folio's missing blocks. `Err(Error::Map)` means the
    /// mapping failed (the folio already carries the error).
    fn read_one(&mut self, locked: LockedFolio) -> Result<()> {
        if locked.is_uptodate() {
            return Ok(());
        }
        let bs = locked.block_size().bytes();
        let missing: Vec<Range<usize>> = if locked.has_block_state() {
            let up = locked.uptodate_blocks();
            let mut gaps = Vec::new();
            let mut start = 0;
            for r in up.runs() {
                if r.start > start {
                    gaps.push(start * bs..r.start * bs);
                }
                start = r.end;
            }
            if start < up.len() {
                gaps.push(start * bs..up.len() * bs);
            }
            gaps
        } else {
            std::iter::once(0..locked.size()).collect()
        };
        let io = locked.start_read();
        for range in missing {
            self.read_range(&io, range)?;
        }
        Ok(())
    }

    fn read_range(&mut self, io: &ReadIo, range: Range<usize>) -> Result<()> {
        let folio = io.folio().clone();
        let fpos = folio.pos();
        let folio_end = fpos + folio.size() as u64;
        let bs = folio.block_size().bytes() as u64;
        let eof_block_end = round_up(self.ino.size(), bs);
        let lba_size = self.geometry.lba_size;
        let mut off = range.start;
        while off < range.end {
            let pos = fpos + off as u64;
            if pos >= eof_block_end {
                // R11/R36: past the block holding EOF: zeros, no mapping.
                io.zero(off, range.end - off)
                    .map_err(Error::cache("zeroing past EOF"))?;
                break;
            }
            let ext = match self.iter.extent_at(pos) {
                Ok(e) => e,
                Err(e) => {
                    self.iter.invalidate();
                    fail_part(io, off, range.end - off, e.errno());
                    return Err(e);
                }
            };
            let end = ext.end().min(fpos + range.end as u64).min(eof_block_end);
            let n = (end - pos) as usize;
            if !(n as u64).is_multiple_of(bs) {
                let e = Error::Map {
                    pos,
                    source: crate::map::MapError::BadExtent { pos, extent: ext },
                };
                fail_part(io, off, range.end - off, Errno::Io);
                return Err(e);
            }
            match ext.lba_at(pos, lba_size).filter(|_| ext.needs_read()) {
                None => io
                    .zero(off, n)
                    .map_err(Error::cache("zero-filling a hole"))?,
                Some(lba) => {
                    let blocks = (n / lba_size as usize) as u64;
                    if lba + blocks > self.geometry.capacity {
                        log::error!(
                            "{:?} offset {pos}: mapped to LBAs {lba}+{blocks} past the namespace end {}",
                            self.ino.file,
                            self.geometry.capacity
                        );
                        fail_part(io, off, n, Errno::Io);
                    } else {
                        let iova = folio.iova() + off as u64;
                        let closed = self.bio.add(lba, iova, n, |o, l| {
                            io.part(off + o, l)
                                .map(Segment::read)
                                .map_err(Error::cache("read part"))
                        })?;
                        io::submit_all(self.dev, closed)?;
                        // R18: only the mapping current at the folio's
                        // end counts (do_mpage_readpage looks at map_bh
                        // once, after the folio's last block): a BOUNDARY
                        // extent ending mid-folio is forgotten when the
                        // next extent maps the rest.
                        if ext.flags.contains(ExtentFlags::BOUNDARY)
                            && end == ext.end()
                            && end == folio_end
                        {
                            self.submit_open()?;
                        }
                    }
                }
            }
            off += n;
        }
        Ok(())
    }
}

/// Fails `[off, off+len)` of the read without I/O.
fn fail_part(io: &ReadIo, off: usize, len: usize, err: Errno) {
    match io.part(off, len) {
        Ok(p) => p.complete(Err(err)),
        Err(e) => log::error!("cannot fail read part {off}+{len}: {e}"),
    }
}

/// Demand read of one locked folio (`read_folio`): no READAHEAD flag,
/// mapping window = the folio. Returns once the commands are submitted;
/// the folio unlocks when they complete (wait with
/// [`crate::io::wait_until`]). Mapping errors end up in the folio (R40).
pub fn read_folio(dev: &mut dyn BlockDevice, ino: &Inode, folio: LockedFolio) -> Result<()> {
    let end = folio.pos() + folio.size() as u64;
    let mut ctx = ReadCtx::new(dev, ino, BioFlags::empty(), end)?;
    match ctx.read_one(folio) {
        Ok(()) | Err(Error::Map { .. }) => {}
        Err(e) => return Err(e),
    }
    ctx.submit_open()?;
    crate::io::commit(ctx.dev)
}

/// Readahead of page range `pages` (order-0 folios for the pages not
/// cached), with the PG_readahead marker on page `marker`. Runs across
/// folios; everything is submitted before returning (R7).
pub fn readahead(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    pages: Range<u64>,
    marker: Option<u64>,
) -> Result<ReadaheadReport> {
    readahead_folios(dev, ino, pages, marker, 0)
}

/// [`readahead`] with folios of up to `max_order` (`page_cache_ra_order`):
/// each uncached run of `pages` is filled with the largest folios its
/// alignment and end allow ([`pagecache::readahead::folio_order`]); the
/// marker goes on the folio holding page `marker`. A folio is handed to
/// the device as soon as its commands are built (the doorbell rings per
/// folio), so the device works on the start of the window while the rest
/// is being allocated. Its blocks become uptodate command by command, so
/// a reader may use the first part of a large folio before the rest
/// arrives.
pub fn readahead_folios(
    dev: &mut dyn BlockDevice,
    ino: &Inode,
    pages: Range<u64>,
    marker: Option<u64>,
    max_order: u8,
) -> Result<ReadaheadReport> {
    let page = PAGE_SIZE as u64;
    let mut report = ReadaheadReport::default();
    if pages.is_empty() {
        return Ok(report);
    }
    // A large folio is optional: none larger than a sixteenth of the
    // cache, and none that would push the cache past its budget
    // ([`pagecache::PageCache::grab_within_budget`]); smaller ones then.
    let mut max_order = max_order.min(pagecache::MAX_ORDER);
    while max_order > 0 && (PAGE_SIZE << max_order) as u64 > ino.cache.budget() / 16 {
        max_order -= 1;
    }
    let mut ctx = ReadCtx::new(dev, ino, BioFlags::READAHEAD, pages.end * page)?;
    let gaps = if max_order == 0 {
        vec![pages.clone()]
    } else {
        ino.cache
            .gaps(ino.file, pages.clone())
            .map_err(Error::cache("readahead gaps"))?
    };
    report.cached = (pages.end - pages.start) as usize
        - gaps
            .iter()
            .map(|g| (g.end - g.start) as usize)
            .sum::<usize>();
    'gaps: for gap in gaps {
        let mut index = gap.start;
        while index < gap.end {
            let mut order = pagecache::readahead::folio_order(index, gap.end, max_order);
            let locked =
                loop {
                    let o = FolioOrder::new(order).map_err(Error::cache("folio order"))?;
                    let grabbed = if order > 0 {
                        ino.cache.grab_within_budget(ino.file, index, o)
                    } else {
                        ino.cache.grab(ino.file, index, o)
                    };
                    match grabbed {
                        Ok(Grab::Created(l)) => break Some(l),
                        Ok(Grab::Cached(f)) => {
                            // Cached meanwhile (another reader).
                            let skip = f.pages().end.max(index + 1) - index;
                            report.cached += skip.min(gap.end - index) as usize;
                            index += skip;
                            break None;
                        }
                        // Part of it cached meanwhile, or no room: smaller.
                        Err(
                            pagecache::Error::Overlap { .. } | pagecache::Error::CacheFull { .. },
                        ) if order > 0 => order -= 1,
                        Err(e) => {
                            // Readahead is best effort (R6: fail fast, no error).
                            log::debug!("readahead stops at page {index}: {e}");
                            break 'gaps;
                        }
                    }
                };
            let Some(locked) = locked else { continue };
            let fpages = locked.folio().pages();
            if marker.is_some_and(|m| fpages.contains(&m)) {
                locked.set_readahead_marker();
            }
            index = fpages.end;
            report.started += 1;
            match ctx.read_one(locked) {
                Ok(()) => {}
                Err(e @ Error::Map { .. }) => {
                    report.stopped = Some(e.errno());
                    break 'gaps;
                }
                Err(e) => return Err(e),
            }
            if max_order > 0 && ctx.dev.in_flight() > 0 {
                crate::io::commit(ctx.dev)?;
            }
        }
    }
    ctx.submit_open()?;
    crate::io::commit(ctx.dev)?;
    Ok(report)
}
