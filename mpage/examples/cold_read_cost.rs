//! The page cache's own work per byte of a cold sequential read through
//! zero-copy views, on the recording device (host memory): run it under
//! `valgrind --tool=callgrind` and read the split between readahead, folio
//! allocation and eviction, the index, bio building and the device's copy.
//!
//! `cold_read_cost [FILE_MIB] [BUDGET_MIB]` (defaults 64 and 16).

use std::sync::Arc;

use mpage::{File, Geometry, IdentityMapper, RecordingDevice};
use pagecache::{BlockSize, PageCache, VecMemory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file_mib: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let budget_mib: u64 = args.next().map_or(Ok(16), |a| a.parse())?;
    let size = file_mib << 20;
    let g = Geometry::new(512, size / 512, 512 * 1024)?;
    let mut dev = RecordingDevice::new(g)?;
    let cache = Arc::new(PageCache::new(
        Arc::new(VecMemory::new()),
        budget_mib << 20,
    )?);
    let mapper = Arc::new(IdentityMapper::namespace(&g));
    let file = File::open(cache, mapper, BlockSize::PAGE, size)?;
    let mut pos = 0u64;
    let mut views = 0usize;
    while pos < size {
        let got = file.read_folios(&mut dev, pos, 128 << 10)?;
        let bytes: usize = got.iter().map(|v| v.len()).sum();
        views += got.len();
        // Like the bench: the views are looked at, then dropped.
        pos += (bytes as u64).clamp(1, 128 << 10);
    }
    println!("read {size} bytes through {views} views");
    Ok(())
}
