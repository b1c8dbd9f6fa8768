//! One scenario's set-up: a page cache over the rig's folio memory, a
//! file with a mapper, the rig's queue behind a [`Tap`], and helpers.
//!
//! **Units.** The scenarios speak docs/MPAGE.md's units: device addresses
//! in 512-byte sectors (L = 512), so `R(8000, 65536)` reads the
//! same bytes whatever the device's LBA size. [`Env`] converts: the
//! command record ([`Env::io`], [`Env::commands`]) reports LBAs as
//! sectors, [`Env::fill_disk`] takes a sector, [`ScriptMapper`] takes
//! extents in sectors and answers in device LBAs, and [`extent_mapper`]
//! maps fs blocks to the device's LBAs itself.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpage::{
    BioOp, BlockDevice, BlockMapper, Command, CommandLog, Extent, ExtentFlags, ExtentKind,
    ExtentMapper, Geometry, Inode, MapError, MapIntent, ReadaheadReport, SyncMode, Tap,
    WritebackReport, io, read_folio, readahead, writepages,
};
use pagecache::{BlockBitmap, BlockSize, FolioOrder, FolioRef, Grab, LockedFolio, PageCache};

use crate::check::{Failure, Outcome};
use crate::ensure;
use crate::rig::{DEFAULT_MAX_TRANSFER, Rig};

/// 1 KiB.
pub const KIB: usize = 1024;

/// The scenarios' address unit (L = 512 in docs/MPAGE.md).
pub const SECTOR: u64 = 512;

/// The cache budget of a scenario's page cache.
const CACHE_BUDGET: u64 = 64 << 20;

/// An [`ExtentMapper`] over `block`-byte fs blocks for the rig's LBA size,
/// allocating (allocate-on-write) from fs blocks `alloc`.
pub fn extent_mapper(rig: &dyn Rig, block: usize, alloc: Range<u64>) -> Arc<ExtentMapper> {
    Arc::new(ExtentMapper::new(block, rig.lba_size(), alloc))
}

/// A mapped extent of file bytes `[offset, offset+len)` at `sector`.
pub fn mapped(offset: u64, len: u64, sector: u64) -> Extent {
    Extent {
        offset,
        len,
        kind: ExtentKind::Mapped { lba: sector },
        flags: ExtentFlags::empty(),
    }
}

/// A per-block bitmap as `"0110"`.
pub fn bits(map: &BlockBitmap) -> String {
    (0..map.len())
        .map(|i| if map.get(i) { '1' } else { '0' })
        .collect()
}

/// Converts a sector to a device LBA of `lba_size` bytes.
fn sector_to_lba(sector: u64, lba_size: u32) -> Result<u64, Failure> {
    let per_lba = u64::from(lba_size) / SECTOR;
    ensure!(
        sector.is_multiple_of(per_lba),
        "sector {sector} is not on a {lba_size}-byte LBA"
    );
    Ok(sector / per_lba)
}

/// A mapper answering from a fixed extent list, counting calls (GB
/// in docs/MPAGE.md).
#[derive(Debug)]
pub struct ScriptMapper {
    extents: Vec<Extent>,
    calls: Mutex<Vec<(u64, u64)>>,
}

impl ScriptMapper {
    /// Extents whose addresses are given in sectors, answered in LBAs of
    /// `lba_size` bytes; file bytes not covered are holes.
    pub fn new(lba_size: u32, extents: Vec<Extent>) -> Result<Arc<Self>, Failure> {
        let extents = extents
            .into_iter()
            .map(|mut e| {
                e.kind = match e.kind {
                    ExtentKind::Mapped { lba } => ExtentKind::Mapped {
                        lba: sector_to_lba(lba, lba_size)?,
                    },
                    ExtentKind::Unwritten { lba } => ExtentKind::Unwritten {
                        lba: sector_to_lba(lba, lba_size)?,
                    },
                    ExtentKind::Hole => ExtentKind::Hole,
                };
                Ok(e)
            })
            .collect::<Result<_, Failure>>()?;
        Ok(Arc::new(ScriptMapper {
            extents,
            calls: Mutex::new(Vec::new()),
        }))
    }

    fn lock_calls(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `(pos, len)` of every call so far.
    pub fn calls(&self) -> Vec<(u64, u64)> {
        self.lock_calls().clone()
    }

    /// Forgets the calls.
    pub fn clear_calls(&self) {
        self.lock_calls().clear();
    }
}

impl BlockMapper for ScriptMapper {
    fn map(&self, pos: u64, len: u64, _intent: MapIntent) -> Result<Extent, MapError> {
        self.lock_calls().push((pos, len));
        if let Some(e) = self.extents.iter().find(|e| e.contains(pos)) {
            return Ok(*e);
        }
        let next = self
            .extents
            .iter()
            .filter(|e| e.offset > pos)
            .map(|e| e.offset)
            .min()
            .unwrap_or(pos + len.max(1));
        Ok(Extent {
            offset: pos,
            len: next - pos,
            kind: ExtentKind::Hole,
            flags: ExtentFlags::empty(),
        })
    }
}

/// One scenario's world. See the module documentation for the units.
pub struct Env<'r> {
    rig: &'r mut dyn Rig,
    /// The engines' device: a rig queue behind a tap.
    pub dev: Tap<Box<dyn BlockDevice>>,
    log: CommandLog,
    /// The page cache.
    pub cache: Arc<PageCache>,
    /// The file under test.
    pub ino: Inode,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("rig", &self.rig.name())
            .field("dev", &self.dev)
            .field("ino", &self.ino)
            .finish()
    }
}

impl<'r> Env<'r> {
    /// A file of `size` bytes in `block`-byte blocks mapped by `mapper`,
    /// on a device with the scenarios' default 1 MiB transfer limit.
    pub fn new(
        rig: &'r mut dyn Rig,
        block: usize,
        size: u64,
        mapper: Arc<dyn BlockMapper>,
    ) -> Result<Self, Failure> {
        Self::with_max_transfer(rig, block, size, mapper, DEFAULT_MAX_TRANSFER)
    }

    /// Like [`Env::new`] with a transfer limit of `max_transfer` bytes
    /// (the rig's device must allow at least that much).
    pub fn with_max_transfer(
        rig: &'r mut dyn Rig,
        block: usize,
        size: u64,
        mapper: Arc<dyn BlockMapper>,
        max_transfer: u32,
    ) -> Result<Self, Failure> {
        let dev = Tap::new(rig.device()?).limit_max_transfer(max_transfer);
        let got = dev.geometry().max_transfer;
        ensure!(
            got == max_transfer,
            "the scenario needs a {max_transfer}-byte transfer limit, {} allows {got}",
            rig.name()
        );
        let log = dev.log();
        let cache = Arc::new(PageCache::new(rig.memory(), CACHE_BUDGET)?);
        let file = cache.add_file(BlockSize::new(block)?);
        let ino = Inode::new(cache.clone(), file, mapper, size);
        Ok(Env {
            rig,
            dev,
            log,
            cache,
            ino,
        })
    }

    /// The device's geometry as the engines see it.
    pub fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }

    /// The device LBA of `sector`.
    pub fn lba(&self, sector: u64) -> Result<u64, Failure> {
        sector_to_lba(sector, self.geometry().lba_size)
    }

    fn sector(&self, lba: u64) -> u64 {
        lba * u64::from(self.geometry().lba_size) / SECTOR
    }

    /// Reads and writes so far as `(op, sector, bytes)`.
    pub fn io(&self) -> Vec<(BioOp, u64, usize)> {
        self.log
            .io()
            .into_iter()
            .map(|(op, lba, bytes)| (op, self.sector(lba), bytes))
            .collect()
    }

    /// Every command so far, LBAs and lengths in sectors.
    pub fn commands(&self) -> Vec<Command> {
        self.log
            .commands()
            .into_iter()
            .map(|mut c| {
                c.lba = self.sector(c.lba);
                c.blocks = self.sector(c.blocks);
                c
            })
            .collect()
    }

    /// Number of commands of `op` so far.
    pub fn count(&self, op: BioOp) -> usize {
        self.log.count(op)
    }

    /// Forgets the commands so far.
    pub fn clear_log(&self) {
        self.log.clear();
    }

    /// Completes everything in flight.
    pub fn reap(&mut self) -> mpage::Result<()> {
        let deadline = Instant::now() + io::DEFAULT_TIMEOUT;
        io::commit(&mut self.dev)?;
        while self.dev.in_flight() > 0 {
            if Instant::now() >= deadline {
                return Err(mpage::Error::Timeout("scenario commands"));
            }
            io::reap(&mut self.dev, Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Readahead of `pages`, then completes it.
    pub fn ra(&mut self, pages: Range<u64>) -> mpage::Result<ReadaheadReport> {
        let report = readahead(&mut self.dev, &self.ino, pages, None)?;
        self.reap()?;
        Ok(report)
    }

    /// Demand read (read_folio) of page `index`, then completes it.
    pub fn demand(&mut self, index: u64) -> Result<(), Failure> {
        let l = self.grab(index)?;
        read_folio(&mut self.dev, &self.ino, l)?;
        self.reap()?;
        Ok(())
    }

    /// Writeback of the whole file (WB_SYNC_ALL), then completes it.
    pub fn wb(&mut self) -> mpage::Result<WritebackReport> {
        let r = writepages(&mut self.dev, &self.ino, 0..u64::MAX, SyncMode::All);
        self.reap()?;
        r
    }

    /// Page `index`, locked (created if not cached).
    pub fn grab(&self, index: u64) -> Result<LockedFolio, Failure> {
        Ok(
            match self.cache.grab(self.ino.file, index, FolioOrder::new(0)?)? {
                Grab::Created(l) => l,
                Grab::Cached(f) => f.lock(),
            },
        )
    }

    /// Cached page `index`.
    pub fn folio(&self, index: u64) -> Result<FolioRef, Failure> {
        self.cache
            .lookup(self.ino.file, index)?
            .ok_or_else(|| Failure::new(format!("page {index} is not cached")))
    }

    /// Bytes `[off, off+len)` of cached page `index`.
    pub fn bytes(&self, index: u64, off: usize, len: usize) -> Result<Vec<u8>, Failure> {
        let mut out = vec![0; len];
        self.folio(index)?.read(off, &mut out)?;
        Ok(out)
    }

    /// Dirties page `index` with `byte` over `[off, off+len)` (whole
    /// blocks, or an uptodate folio).
    pub fn dirty(&self, index: u64, off: usize, len: usize, byte: u8) -> Outcome {
        self.grab(index)?.write(off, &vec![byte; len])?;
        Ok(())
    }

    /// Writes `bytes` bytes of `byte` on the disk from `sector`.
    pub fn fill_disk(&mut self, sector: u64, bytes: usize, byte: u8) -> Outcome {
        self.rig.write_disk(sector * SECTOR, &vec![byte; bytes])
    }

    /// Writes `data` on the disk at byte `offset`.
    pub fn write_disk(&mut self, offset: u64, data: &[u8]) -> Outcome {
        self.rig.write_disk(offset, data)
    }

    /// Reads `len` bytes of the disk at byte `offset`.
    pub fn read_disk(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Failure> {
        self.rig.read_disk(offset, len)
    }
}
