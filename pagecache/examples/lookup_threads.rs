//! Host microbenchmark of the warm lookup path: `threads` threads look up
//! random cached pages of one shared file (or of one file each) and copy
//! 4 KiB out of each folio, as a warm 4 KiB `read_at` does; prints
//! lookups per second. For profiling only: the benchmark suite
//! (`cargo xtask bench`, nvme-bench's cache mode in the guest) is what
//! measures.
//!
//! `cargo run --release -p pagecache --example lookup_threads -- [threads]
//! [shared|per-thread] [lookups per thread]`

use std::sync::Arc;
use std::time::Instant;

use pagecache::{BlockSize, FileId, FolioOrder, Grab, PAGE_SIZE, PageCache, VecMemory};

/// Cached pages in all (128 MiB, as the guest benchmark's range).
const PAGES: u64 = 32768;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let per_thread = args.next().is_some_and(|a| a == "per-thread");
    let lookups: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let budget = 2 * PAGES * PAGE_SIZE as u64;
    let cache = Arc::new(PageCache::new(Arc::new(VecMemory::new()), budget).expect("cache"));
    let nfiles = if per_thread { threads } else { 1 };
    let pages = PAGES / nfiles as u64;
    let files: Vec<FileId> = (0..nfiles)
        .map(|_| cache.add_file(BlockSize::PAGE))
        .collect();
    for &f in &files {
        for p in 0..pages {
            if let Ok(Grab::Created(l)) = cache.grab(f, p, FolioOrder::ZERO) {
                l.zero_blocks(0, l.size()).expect("zero");
            }
        }
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let cache = &cache;
            let file = files[t % nfiles];
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut buf = vec![0u8; PAGE_SIZE];
                for _ in 0..lookups {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let page = x % pages;
                    let f = cache.lookup(file, page).expect("file").expect("cached");
                    f.read(0, &mut buf).expect("uptodate");
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let total = lookups * threads as u64;
    println!(
        "{threads} thread(s), {}: {:.0} lookups+copies/s ({:.0} ns each per thread)",
        if per_thread {
            "one file each"
        } else {
            "one shared file"
        },
        total as f64 / secs,
        secs * 1e9 / lookups as f64
    );
}
