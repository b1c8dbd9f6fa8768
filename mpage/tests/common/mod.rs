//! Shared set-up for the scenario tests: a page cache, a file, a mapper
//! and a recording device.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use mpage::{
    BlockDevice, BlockMapper, Extent, ExtentFlags, ExtentKind, Geometry, Inode, MapError,
    MapIntent, RecordingDevice, io,
};
use pagecache::{BlockSize, FolioOrder, FolioRef, Grab, LockedFolio, PageCache, VecMemory};

pub const KIB: usize = 1024;

/// A mapper answering from a fixed extent list (byte offsets), counting
/// calls (the spec's GB).
#[derive(Debug, Default)]
pub struct ScriptMapper {
    pub extents: Mutex<Vec<Extent>>,
    pub calls: Mutex<Vec<(u64, u64)>>,
}

impl ScriptMapper {
    pub fn new(extents: Vec<Extent>) -> Arc<Self> {
        Arc::new(ScriptMapper {
            extents: Mutex::new(extents),
            calls: Mutex::new(Vec::new()),
        })
    }
    pub fn calls(&self) -> Vec<(u64, u64)> {
        self.calls.lock().unwrap().clone()
    }
}

impl BlockMapper for ScriptMapper {
    fn map(&self, pos: u64, len: u64, _intent: MapIntent) -> Result<Extent, MapError> {
        self.calls.lock().unwrap().push((pos, len));
        let ext = self.extents.lock().unwrap();
        if let Some(e) = ext.iter().find(|e| e.contains(pos)) {
            return Ok(*e);
        }
        let next = ext
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

pub fn mapped(offset: u64, len: u64, lba: u64) -> Extent {
    Extent {
        offset,
        len,
        kind: ExtentKind::Mapped { lba },
        flags: ExtentFlags::empty(),
    }
}

pub struct Env {
    pub dev: RecordingDevice,
    pub cache: Arc<PageCache>,
    pub ino: Inode,
}

impl Env {
    pub fn new(bs: usize, size: u64, mapper: Arc<dyn BlockMapper>) -> Env {
        Env::with_geometry(
            bs,
            size,
            mapper,
            Geometry::new(512, 1 << 16, 1 << 20).unwrap(),
        )
    }

    pub fn with_geometry(bs: usize, size: u64, mapper: Arc<dyn BlockMapper>, g: Geometry) -> Env {
        let cache = Arc::new(PageCache::new(Arc::new(VecMemory::new()), 64 << 20).unwrap());
        let file = cache.add_file(BlockSize::new(bs).unwrap());
        let ino = Inode::new(cache.clone(), file, mapper, size);
        Env {
            dev: RecordingDevice::new(g).unwrap(),
            cache,
            ino,
        }
    }

    /// A device handle for the engines (shares state with `self.dev`).
    pub fn device(&self) -> RecordingDevice {
        self.dev.clone()
    }

    pub fn grab(&self, index: u64) -> LockedFolio {
        match self
            .cache
            .grab(self.ino.file, index, FolioOrder::new(0).unwrap())
            .unwrap()
        {
            Grab::Created(l) => l,
            Grab::Cached(f) => f.lock(),
        }
    }

    pub fn folio(&self, index: u64) -> FolioRef {
        self.cache
            .lookup(self.ino.file, index)
            .unwrap()
            .expect("folio cached")
    }

    /// Completes everything in flight.
    pub fn reap(&self) {
        let mut d = self.device();
        io::wait_until(&mut d, "test", || d_idle(&self.dev)).unwrap();
    }

    pub fn bytes(&self, index: u64, off: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.folio(index).read(off, &mut out).unwrap();
        out
    }

    /// Dirty page `index` with `byte` over `[off, off+len)` (whole
    /// blocks, or an uptodate folio).
    pub fn dirty(&self, index: u64, off: usize, len: usize, byte: u8) {
        let l = self.grab(index);
        l.write(off, &vec![byte; len]).unwrap();
    }

    pub fn fill_disk(&self, lba: u64, bytes: usize, byte: u8) {
        self.dev.write_disk(lba * 512, &vec![byte; bytes]);
    }
}

fn d_idle(dev: &RecordingDevice) -> bool {
    dev.in_flight() == 0
}
