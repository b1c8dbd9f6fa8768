//! Block mapping: the filesystem's one callback (`get_block` /
//! `iomap_begin`), typed (K1).
//!
//! [`BlockMapper::map`] answers "what backs file bytes `[pos, pos+len)`"
//! with one [`Extent`] that starts at or before `pos` and may be shorter
//! or longer than asked. Two mappers are provided:
//!
//! * [`IdentityMapper`]: a raw namespace, or an LBA range of it, as a
//!   file: everything is mapped, never a hole.
//! * [`ExtentMapper`]: a sparse file: holes, unwritten extents and
//!   allocate-on-write from a simple block allocator.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::sync::Arc;

use pagecache::Errno;

use crate::inode::Inode;

/// Why the caller maps (the iomap `flags` intent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapIntent {
    /// Reading: report holes, never allocate.
    Read,
    /// Writeback: allocate holes (allocate-on-write).
    Write,
}

/// What backs an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Nothing: reads as zeros (R12, R36).
    Hole,
    /// Written data at device LBA `lba` (for the extent's first byte).
    Mapped {
        /// First LBA.
        lba: u64,
    },
    /// Allocated, not yet written: reads as zeros without I/O (R36);
    /// writes go to `lba` and the extent is converted on success.
    Unwritten {
        /// First LBA.
        lba: u64,
    },
}

bitflags::bitflags! {
    /// Extent flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ExtentFlags: u8 {
        /// Freshly allocated by this call (R25 NEW, iomap IOMAP_F_NEW): its
        /// old contents are garbage and are never read (R36).
        const NEW = 1 << 0;
        /// The next extent's mapping needs metadata I/O: submit the run
        /// once this extent is consumed to its end (R18, R29); writeback
        /// then also writes the metadata block right after the extent if
        /// the filesystem's metadata cache holds it dirty
        /// ([`BlockMapper::metadata_cache`]).
        const BOUNDARY = 1 << 1;
    }
}

/// A mapping answer: file bytes `[offset, offset+len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// File offset of the first byte.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// What backs it.
    pub kind: ExtentKind,
    /// Hints.
    pub flags: ExtentFlags,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether `pos` lies inside.
    pub fn contains(&self, pos: u64) -> bool {
        self.offset <= pos && pos < self.end()
    }

    /// Device LBA of file byte `pos` (inside the extent), for `lba_size`.
    pub fn lba_at(&self, pos: u64, lba_size: u32) -> Option<u64> {
        match self.kind {
            ExtentKind::Mapped { lba } | ExtentKind::Unwritten { lba } => {
                Some(lba + (pos - self.offset) / u64::from(lba_size))
            }
            ExtentKind::Hole => None,
        }
    }

    /// Whether reading it needs device I/O (R36: only MAPPED without NEW).
    pub fn needs_read(&self) -> bool {
        matches!(self.kind, ExtentKind::Mapped { .. }) && !self.flags.contains(ExtentFlags::NEW)
    }
}

/// Why a mapping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// No free blocks for allocate-on-write.
    #[error("no space left to allocate {blocks} blocks")]
    NoSpace {
        /// Blocks wanted.
        blocks: u64,
    },
    /// The offset lies outside what the mapper covers.
    #[error("offset {pos} is outside the mapped range of {size} bytes")]
    OutOfRange {
        /// Offset asked.
        pos: u64,
        /// Size covered.
        size: u64,
    },
    /// The mapper returned an extent that does not contain the asked
    /// offset, or is empty.
    #[error("bad extent {extent:?} for offset {pos}")]
    BadExtent {
        /// Offset asked.
        pos: u64,
        /// What came back.
        extent: Extent,
    },
    /// Any other failure (metadata I/O, injected), as an errno.
    #[error("mapping failed: {0}")]
    Failed(Errno),
}

impl MapError {
    /// Errno for reporting (ENOSPC for allocation failure, else EIO or the
    /// carried errno).
    pub fn errno(&self) -> Errno {
        match self {
            MapError::NoSpace { .. } => Errno::NoSpace,
            MapError::Failed(e) => *e,
            _ => Errno::Io,
        }
    }
}

/// A finished writeback ioend chain, as the filesystem's completion work
/// sees it ([`BlockMapper::end_io`]): file bytes `[offset, offset+size)`,
/// `ioends` ioends merged on completion (R59: same status, both
/// unwritten or both not, file-contiguous; the device ranges need not be
/// contiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoendCompletion {
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes (the merged ioends' sizes added up).
    pub size: u64,
    /// Whether the range was written into unwritten extents.
    pub unwritten: bool,
    /// How many ioends were merged into this chain (≥ 1).
    pub ioends: usize,
    /// The chain's one status.
    pub result: Result<(), Errno>,
}

/// The filesystem's mapping callback.
pub trait BlockMapper: Send + Sync + std::fmt::Debug {
    /// The extent containing `pos`, considering at most `len` bytes from
    /// it (the answer may be shorter, or longer). With
    /// [`MapIntent::Write`], holes in `[pos, pos+len)` may be allocated
    /// (returned as [`ExtentKind::Unwritten`] with [`ExtentFlags::NEW`]).
    fn map(&self, pos: u64, len: u64, intent: MapIntent) -> Result<Extent, MapError>;

    /// Writeback of `[pos, pos+len)` into unwritten extents succeeded:
    /// convert them to mapped (iomap's ioend completion work, R54/R59).
    fn convert_unwritten(&self, _pos: u64, _len: u64) -> Result<(), MapError> {
        Ok(())
    }

    /// Writeback completion work for one (merged) ioend chain (R58, R59),
    /// called once per chain before its folios end writeback. An error
    /// returned here becomes the status of every folio of the chain (the
    /// data is on the device but not reachable through the mapping).
    /// Default: on success, converts unwritten extents
    /// ([`BlockMapper::convert_unwritten`]) in one call for the whole
    /// chain.
    fn end_io(&self, done: &IoendCompletion) -> Result<(), MapError> {
        if done.unwritten && done.result.is_ok() {
            self.convert_unwritten(done.offset, done.size)
        } else {
            Ok(())
        }
    }

    /// The filesystem's LBA-keyed metadata cache (the kernel's
    /// block-device mapping), if it keeps one: an [`Inode`] over the whole
    /// namespace whose file offset is the device byte address (an
    /// [`IdentityMapper::namespace`] mapper). When writeback consumes a
    /// [`ExtentFlags::BOUNDARY`] extent, it submits the data and then
    /// writes the metadata block right after the extent if this cache
    /// holds it dirty (R29 `write_boundary_block`, K14). Default:
    /// none, so BOUNDARY only means "submit now".
    fn metadata_cache(&self) -> Option<Arc<Inode>> {
        None
    }
}

/// A namespace (or an LBA range of it) as a file: byte `pos` is at LBA
/// `first_lba + pos / lba_size`. Never a hole; nothing to allocate.
#[derive(Debug, Clone)]
pub struct IdentityMapper {
    first_lba: u64,
    blocks: u64,
    lba_size: u32,
}

impl IdentityMapper {
    /// LBAs `[first_lba, first_lba+blocks)` of `lba_size` bytes.
    pub fn new(first_lba: u64, blocks: u64, lba_size: u32) -> Self {
        IdentityMapper {
            first_lba,
            blocks,
            lba_size,
        }
    }

    /// The whole namespace.
    pub fn namespace(geometry: &crate::device::Geometry) -> Self {
        Self::new(0, geometry.capacity, geometry.lba_size)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * u64::from(self.lba_size)
    }
}

impl BlockMapper for IdentityMapper {
    fn map(&self, pos: u64, _len: u64, _intent: MapIntent) -> Result<Extent, MapError> {
        let size = self.size();
        if pos >= size {
            return Err(MapError::OutOfRange { pos, size });
        }
        Ok(Extent {
            offset: 0,
            len: size,
            kind: ExtentKind::Mapped {
                lba: self.first_lba,
            },
            flags: ExtentFlags::empty(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Run {
    /// Blocks.
    len: u64,
    /// Device block (fs-block units) of the first block.
    pblk: u64,
    unwritten: bool,
    boundary: bool,
}

#[derive(Debug)]
struct ExtentState {
    /// lblk → run, non-overlapping.
    runs: BTreeMap<u64, Run>,
    /// Next free device block, and the end of the allocatable area.
    next_free: u64,
    end_free: u64,
    calls: usize,
    /// `(pos, len)` of every `map` call, as asked.
    requests: Vec<(u64, u64)>,
    fail_at: Option<(u64, MapError)>,
    metadata: Option<Arc<Inode>>,
}

/// A sparse file's extent map over fs blocks of `block` bytes, with a
/// bump allocator over device blocks `[alloc_start, alloc_end)` (fs-block
/// units) for allocate-on-write. Device block `p` is LBA `p·block/lba`.
///
/// It answers as much as it is asked, like a `get_block` given
/// `max_blocks` (R9): a read answer (mapped, unwritten or hole) covers at
/// most the blocks of `[pos, pos+len)`, starting at `pos`'s block, and
/// carries BOUNDARY only if it reaches the end of the boundary run.
/// A write answer is the whole extent holding `pos` (iomap's
/// `map_blocks` is not given a length), allocating at most the asked
/// part of a hole. Every call is recorded ([`ExtentMapper::requests`]),
/// so a scenario sees how much the engine asked for.
#[derive(Debug)]
pub struct ExtentMapper {
    block: u64,
    lba_size: u32,
    state: Mutex<ExtentState>,
}

impl ExtentMapper {
    /// An empty (all-hole) file.
    pub fn new(block: usize, lba_size: u32, alloc: std::ops::Range<u64>) -> Self {
        ExtentMapper {
            block: block as u64,
            lba_size,
            state: Mutex::new(ExtentState {
                runs: BTreeMap::new(),
                next_free: alloc.start,
                end_free: alloc.end,
                calls: 0,
                requests: Vec::new(),
                fail_at: None,
                metadata: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ExtentState> {
        self.state.lock()
    }

    /// Maps file blocks `[lblk, lblk+len)` to device blocks from `pblk`
    /// (written data).
    pub fn insert(&self, lblk: u64, len: u64, pblk: u64) {
        self.insert_run(lblk, len, pblk, false, false);
    }

    /// Like [`ExtentMapper::insert`], as an unwritten extent.
    pub fn insert_unwritten(&self, lblk: u64, len: u64, pblk: u64) {
        self.insert_run(lblk, len, pblk, true, false);
    }

    /// Like [`ExtentMapper::insert`], flagged BOUNDARY (R18).
    pub fn insert_boundary(&self, lblk: u64, len: u64, pblk: u64) {
        self.insert_run(lblk, len, pblk, false, true);
    }

    fn insert_run(&self, lblk: u64, len: u64, pblk: u64, unwritten: bool, boundary: bool) {
        self.state().runs.insert(
            lblk,
            Run {
                len,
                pblk,
                unwritten,
                boundary,
            },
        );
    }

    /// Makes the next map call starting in file block `lblk` fail with
    /// `err` (once).
    pub fn fail_at(&self, lblk: u64, err: MapError) {
        self.state().fail_at = Some((lblk, err));
    }

    /// Sets the metadata cache ([`BlockMapper::metadata_cache`]) whose
    /// dirty blocks right after BOUNDARY extents writeback writes (R29).
    pub fn set_metadata_cache(&self, cache: Option<Arc<Inode>>) {
        self.state().metadata = cache;
    }

    /// Number of `map` calls so far (GB in the scenarios of docs/MPAGE.md).
    pub fn calls(&self) -> usize {
        self.state().calls
    }

    /// The `(pos, len)` in bytes of every `map` call so far, as asked
    /// (R9's mapping window).
    pub fn requests(&self) -> Vec<(u64, u64)> {
        self.state().requests.clone()
    }

    /// The run containing `lblk`, as (start lblk, run).
    fn find(st: &ExtentState, lblk: u64) -> Option<(u64, Run)> {
        st.runs
            .range(..=lblk)
            .next_back()
            .filter(|(s, r)| lblk < **s + r.len)
            .map(|(s, r)| (*s, *r))
    }

    /// First run starting after `lblk`.
    fn next_start(st: &ExtentState, lblk: u64) -> Option<u64> {
        st.runs.range(lblk + 1..).next().map(|(s, _)| *s)
    }

    fn extent_of(&self, start: u64, run: Run, new: bool) -> Extent {
        self.part_of(start, run, new, start..start + run.len)
    }

    /// The part `blocks` (inside the run) of the run starting at file
    /// block `start`; BOUNDARY only if the part reaches the run's end.
    fn part_of(&self, start: u64, run: Run, new: bool, blocks: std::ops::Range<u64>) -> Extent {
        let pblk = run.pblk + (blocks.start - start);
        let lba = pblk * self.block / u64::from(self.lba_size);
        let mut flags = ExtentFlags::empty();
        flags.set(ExtentFlags::NEW, new);
        flags.set(
            ExtentFlags::BOUNDARY,
            run.boundary && blocks.end == start + run.len,
        );
        Extent {
            offset: blocks.start * self.block,
            len: (blocks.end - blocks.start) * self.block,
            kind: if run.unwritten {
                ExtentKind::Unwritten { lba }
            } else {
                ExtentKind::Mapped { lba }
            },
            flags,
        }
    }
}

impl BlockMapper for ExtentMapper {
    fn map(&self, pos: u64, len: u64, intent: MapIntent) -> Result<Extent, MapError> {
        let mut st = self.state();
        st.calls += 1;
        st.requests.push((pos, len));
        let lblk = pos / self.block;
        // The blocks of [pos, pos+len) from pos's block.
        let want = pos
            .saturating_add(len.max(1))
            .div_ceil(self.block)
            .saturating_sub(lblk)
            .max(1);
        if let Some((at, _)) = &st.fail_at
            && *at == lblk
            && let Some((_, err)) = st.fail_at.take()
        {
            return Err(err);
        }
        if let Some((start, run)) = Self::find(&st, lblk) {
            if intent == MapIntent::Read {
                let end = (start + run.len).min(lblk.saturating_add(want));
                return Ok(self.part_of(start, run, false, lblk..end));
            }
            return Ok(self.extent_of(start, run, false));
        }
        let hole_end = Self::next_start(&st, lblk).unwrap_or(u64::MAX);
        if intent == MapIntent::Read {
            let end = hole_end.min(lblk.saturating_add(want));
            return Ok(Extent {
                offset: lblk * self.block,
                len: (end - lblk) * self.block,
                kind: ExtentKind::Hole,
                flags: ExtentFlags::empty(),
            });
        }
        // Allocate-on-write: the hole part of the request, as unwritten
        // (converted when the write completes).
        let blocks = want.min(hole_end - lblk);
        if st.next_free + blocks > st.end_free {
            return Err(MapError::NoSpace { blocks });
        }
        let run = Run {
            len: blocks,
            pblk: st.next_free,
            unwritten: true,
            boundary: false,
        };
        st.next_free += blocks;
        st.runs.insert(lblk, run);
        log::debug!(
            "allocated {blocks} blocks at pblk {} for lblk {lblk}",
            run.pblk
        );
        Ok(self.extent_of(lblk, run, true))
    }

    fn convert_unwritten(&self, pos: u64, len: u64) -> Result<(), MapError> {
        let mut st = self.state();
        let first = pos / self.block;
        let end = (pos + len).div_ceil(self.block);
        let mut lblk = first;
        while lblk < end {
            let Some((start, run)) = Self::find(&st, lblk) else {
                lblk += 1;
                continue;
            };
            let run_end = start + run.len;
            if run.unwritten {
                // Split into [start, lblk) unwritten, [lblk, e) written,
                // [e, run_end) unwritten.
                let e = run_end.min(end);
                st.runs.remove(&start);
                if start < lblk {
                    st.runs.insert(
                        start,
                        Run {
                            len: lblk - start,
                            ..run
                        },
                    );
                }
                st.runs.insert(
                    lblk,
                    Run {
                        len: e - lblk,
                        pblk: run.pblk + (lblk - start),
                        unwritten: false,
                        boundary: run.boundary,
                    },
                );
                if e < run_end {
                    st.runs.insert(
                        e,
                        Run {
                            len: run_end - e,
                            pblk: run.pblk + (e - start),
                            ..run
                        },
                    );
                }
            }
            lblk = run_end;
        }
        Ok(())
    }

    fn metadata_cache(&self) -> Option<Arc<Inode>> {
        self.state().metadata.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_mapper_reports_holes_and_allocates_on_write() {
        let m = ExtentMapper::new(4096, 512, 1000..1010);
        m.insert(0, 2, 500);
        let e = m.map(4096, 65536, MapIntent::Read).unwrap();
        assert_eq!(
            (e.offset, e.len, e.kind),
            (4096, 4096, ExtentKind::Mapped { lba: 4008 })
        );
        let e = m.map(0, 4096, MapIntent::Read).unwrap();
        assert_eq!(
            (e.offset, e.len, e.kind),
            (0, 4096, ExtentKind::Mapped { lba: 4000 }),
            "no more than asked (R9)"
        );
        let e = m.map(100, 4096, MapIntent::Write).unwrap();
        assert_eq!((e.offset, e.len), (0, 8192), "writes get the whole extent");
        assert_eq!(m.requests(), vec![(4096, 65536), (0, 4096), (100, 4096)]);
        let h = m.map(8192, 8192, MapIntent::Read).unwrap();
        assert_eq!((h.offset, h.len, h.kind), (8192, 8192, ExtentKind::Hole));
        let w = m.map(8192, 8192, MapIntent::Write).unwrap();
        assert_eq!(w.kind, ExtentKind::Unwritten { lba: 8000 });
        assert!(w.flags.contains(ExtentFlags::NEW));
        assert!(!w.needs_read());
        m.convert_unwritten(8192, 4096).unwrap();
        let a = m.map(8192, 4096, MapIntent::Read).unwrap();
        assert_eq!((a.len, a.kind), (4096, ExtentKind::Mapped { lba: 8000 }));
        let b = m.map(12288, 4096, MapIntent::Read).unwrap();
        assert_eq!(
            (b.offset, b.kind),
            (12288, ExtentKind::Unwritten { lba: 8008 })
        );
        assert_eq!(
            m.map(65536, 1 << 20, MapIntent::Write),
            Err(MapError::NoSpace { blocks: 256 })
        );
    }

    #[test]
    fn extent_mapper_read_answers_carry_boundary_only_at_the_run_end() {
        let m = ExtentMapper::new(1024, 512, 0..0);
        m.insert_boundary(0, 4, 100);
        let part = m.map(0, 2048, MapIntent::Read).unwrap();
        assert_eq!((part.offset, part.len), (0, 2048));
        assert!(!part.flags.contains(ExtentFlags::BOUNDARY));
        let rest = m.map(2048, 8192, MapIntent::Read).unwrap();
        assert_eq!((rest.offset, rest.len), (2048, 2048));
        assert_eq!(rest.kind, ExtentKind::Mapped { lba: 204 });
        assert!(rest.flags.contains(ExtentFlags::BOUNDARY));
    }

    #[test]
    fn identity_mapper_covers_an_lba_range() {
        let m = IdentityMapper::new(100, 8, 512);
        let e = m.map(1000, 10, MapIntent::Write).unwrap();
        assert_eq!(e.lba_at(1024, 512), Some(102));
        assert!(e.needs_read());
        assert!(m.map(4096, 1, MapIntent::Read).is_err());
    }
}
