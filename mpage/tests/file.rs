//! The file API: read_at / write_at / set_len / fsync / folio views,
//! readahead behaviour, throttling, the memory budget, the flusher and
//! threads, on the recording device.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpage::{
    BioFlags, BioOp, BlockDevice, DeviceError, Fault, File, Flusher, Geometry, IdentityMapper,
    RecordingDevice, device::status,
};
use pagecache::{BlockSize, DirtyLimits, Errno, PageCache, VecMemory};

const P: usize = 4096;

struct Setup {
    dev: RecordingDevice,
    cache: Arc<PageCache>,
    file: File,
}

/// A 4 MiB namespace (512-byte LBAs) as a file of `size` bytes, in a cache
/// of `budget` bytes with `limits`.
fn setup(bs: usize, size: u64, budget: u64, limits: Option<DirtyLimits>) -> Setup {
    let g = Geometry::new(512, 8192, 128 * 1024).unwrap();
    let dev = RecordingDevice::new(g).unwrap();
    let memory = Arc::new(VecMemory::new());
    let cache = Arc::new(match limits {
        Some(l) => PageCache::with_limits(memory, budget, l),
        None => PageCache::new(memory, budget).unwrap(),
    });
    let mapper = Arc::new(IdentityMapper::namespace(&g));
    let file = File::open(cache.clone(), mapper, BlockSize::new(bs).unwrap(), size).unwrap();
    Setup { dev, cache, file }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn reads(dev: &RecordingDevice) -> Vec<(usize, BioFlags)> {
    dev.commands()
        .iter()
        .filter(|c| c.op == BioOp::Read)
        .map(|c| (c.bytes(), c.flags))
        .collect()
}

#[test]
fn file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<File>();
    check::<mpage::FolioView>();
    check::<Flusher>();
}

#[test]
fn sequential_reads_ramp_the_readahead_window_with_async_marks() {
    let s = setup(4096, 1 << 20, 64 << 20, None);
    // The kernel's default maximum (the device-derived one: below).
    s.file.set_readahead(32);
    s.dev.write_disk(0, &pattern(3, 1 << 20));
    let mut d = s.dev.clone();
    let mut buf = vec![0; P];
    for i in 0..64u64 {
        assert_eq!(s.file.read_at(&mut d, i * P as u64, &mut buf).unwrap(), P);
        assert_eq!(buf, pattern(3, 1 << 20)[i as usize * P..][..P]);
    }
    let r = reads(&s.dev);
    assert!(r.iter().all(|(_, f)| *f == BioFlags::READAHEAD), "{r:?}");
    let sizes: Vec<usize> = r.iter().map(|x| x.0).collect();
    // Initial window 4 pages (mark on page 1), then 8, 16, 32, 32 ...
    assert_eq!(&sizes[..4], &[4 * P, 8 * P, 16 * P, 32 * P]);
    assert!(sizes[4..].iter().all(|s| *s == 32 * P), "{sizes:?}");
    let (start, size, async_size) = s.file.readahead_window();
    assert_eq!((size, async_size), (32, 32));
    assert!(start > 64, "the window ran ahead of the reader: {start}");
}

/// Without `set_readahead` the maximum follows the device: 16 commands
/// of its largest size (here 128 KiB: 2 MiB). A sequential 128 KiB reader
/// ramps the window up to it, the marks on large folios trigger each
/// next window, the windows live in large folios (orders ramping by two
/// per window, up to 2 MiB) and are read with max-transfer commands.
#[test]
fn the_default_window_follows_the_device_and_uses_large_folios() {
    let size = 4u64 << 20;
    let s = setup(4096, size, 64 << 20, None);
    let data = pattern(7, size as usize);
    s.dev.write_disk(0, &data);
    let mut d = s.dev.clone();
    let mut buf = vec![0; 32 * P];
    let mut largest = 0;
    for pos in (0..size).step_by(buf.len()) {
        assert_eq!(s.file.read_at(&mut d, pos, &mut buf).unwrap(), buf.len());
        assert_eq!(buf, data[pos as usize..][..buf.len()]);
        largest = largest.max(s.file.readahead_window().1);
    }
    assert_eq!(s.file.readahead_max(), 512);
    assert_eq!(largest, 512, "the window reached the maximum");
    let r = reads(&s.dev);
    assert!(r.iter().all(|(_, f)| *f == BioFlags::READAHEAD), "{r:?}");
    assert!(
        r.iter().all(|(n, _)| *n == 32 * P),
        "max-transfer commands: {r:?}"
    );
    assert_eq!(
        r.len(),
        (size / (32 * P as u64)) as usize,
        "each byte read once"
    );
    let ino = s.file.inode();
    // Windows 0..64, 64..192, 192..448, 448..1024 (the last two merged
    // up to EOF): orders 0, 2, 4, 6 (two more than the marked folio's,
    // page_cache_ra_order).
    let orders: Vec<u8> = [0u64, 100, 300, 1000]
        .iter()
        .map(|&i| s.cache.lookup(ino.file, i).unwrap().unwrap().order().get())
        .collect();
    assert_eq!(orders, vec![0, 2, 4, 6]);
    assert!(s.cache.nr_folios(ino.file).unwrap() < 200, "few folios");
}

/// A window is issued as a whole: every command of it is in flight before
/// the first completes (queue depth), one folio's commands included.
#[test]
fn a_window_is_in_flight_at_once() {
    let s = setup(4096, 4 << 20, 64 << 20, None);
    s.dev.write_disk(0, &pattern(1, 4 << 20));
    s.dev.set_order(mpage::Order::Held);
    let mut d = s.dev.clone();
    let ino = s.file.inode();
    let rep = mpage::read::readahead_folios(&mut d, ino, 0..1024, Some(512), 9).unwrap();
    assert_eq!(rep.started, 2, "two 2 MiB folios");
    assert_eq!(d.in_flight(), 32, "4 MiB as 32 commands of 128 KiB");
    let marked = s.cache.lookup(ino.file, 700).unwrap().unwrap();
    assert!(marked.is_locked());
    assert!(
        marked.test_clear_readahead(),
        "the mark is on the folio holding page 512"
    );
    s.dev.release();
    mpage::io::wait_until(&mut d, "window", || d_idle(&s)).unwrap();
    let mut buf = vec![0; P];
    assert_eq!(s.file.read_at(&mut d, 3 << 20, &mut buf).unwrap(), P);
    assert_eq!(buf, pattern(1, 4 << 20)[3 << 20..][..P]);
}

fn d_idle(s: &Setup) -> bool {
    let ino = s.file.inode();
    s.cache
        .all_folios(ino.file)
        .unwrap()
        .iter()
        .all(|f| f.is_uptodate() && !f.is_locked())
}

#[test]
fn random_reads_read_only_what_was_asked() {
    let s = setup(4096, 1 << 20, 64 << 20, None);
    let mut d = s.dev.clone();
    let mut buf = vec![0; 2 * P];
    for page in [100u64, 37, 200, 5] {
        s.file.read_at(&mut d, page * P as u64, &mut buf).unwrap();
    }
    let sizes: Vec<usize> = reads(&s.dev).iter().map(|x| x.0).collect();
    assert_eq!(sizes, vec![2 * P; 4], "two pages each, no window");
    assert_eq!(s.file.readahead_window(), (0, 0, 0));
    assert_eq!(s.cache.nr_folios(s.file.inode().file).unwrap(), 8);
}

#[test]
fn reads_stop_at_eof_and_readahead_never_passes_it() {
    let size = 10_000u64;
    let s = setup(1024, size, 64 << 20, None);
    s.dev.write_disk(0, &pattern(9, 16384));
    let mut d = s.dev.clone();
    let mut buf = vec![0; P];
    assert_eq!(s.file.read_at(&mut d, 0, &mut buf).unwrap(), P);
    assert_eq!(s.file.read_at(&mut d, 9000, &mut buf).unwrap(), 1000);
    assert_eq!(&buf[..1000], &pattern(9, 16384)[9000..10000]);
    assert_eq!(s.file.read_at(&mut d, size, &mut buf).unwrap(), 0);
    assert_eq!(s.file.read_at(&mut d, size + 5000, &mut buf).unwrap(), 0);
    // No command reaches past the block holding EOF (LBA 20 = 10240 B).
    for c in s.dev.commands() {
        assert!(c.lba + c.blocks <= 20, "{c:?}");
    }
    assert!(s.cache.lookup(s.file.inode().file, 3).unwrap().is_none());
}

#[test]
fn write_read_truncate_and_fsync() {
    let s = setup(1024, 0, 64 << 20, None);
    s.dev.write_disk(0, &[0xEE; 65536]);
    let mut d = s.dev.clone();
    let data = pattern(1, 5000);
    assert_eq!(s.file.write_at(&mut d, 1000, &data).unwrap(), 5000);
    assert_eq!(s.file.size(), 6000);
    let mut buf = vec![0xFF; 8000];
    assert_eq!(s.file.read_at(&mut d, 0, &mut buf).unwrap(), 6000);
    assert_eq!(
        &buf[..1000],
        &[0; 1000][..],
        "the gap before the write reads as zeros"
    );
    assert_eq!(&buf[1000..6000], &data[..]);

    s.file.set_len(&mut d, 3000).unwrap();
    assert_eq!(s.file.read_at(&mut d, 0, &mut buf).unwrap(), 3000);
    s.file.set_len(&mut d, 9000).unwrap();
    assert_eq!(s.file.read_at(&mut d, 0, &mut buf).unwrap(), 8000);
    assert_eq!(&buf[1000..3000], &data[..2000]);
    assert!(
        buf[3000..8000].iter().all(|b| *b == 0),
        "grown part is zeros"
    );

    s.file.fsync(&mut d).unwrap();
    assert_eq!(s.dev.count(BioOp::Flush), 1);
    let disk = s.dev.read_disk(0, 9000);
    assert_eq!(&disk[..1000], &[0; 1000][..]);
    assert_eq!(&disk[1000..3000], &data[..2000]);
    assert!(disk[3000..].iter().all(|b| *b == 0));
    assert!(s.cache.dirty_bytes() == 0 && s.cache.writeback_bytes() == 0);

    // Shrinking drops cached folios past EOF, dirty ones included.
    s.file.write_at(&mut d, 8000, &[7; 1000]).unwrap();
    s.file.set_len(&mut d, 4096).unwrap();
    assert!(s.cache.lookup(s.file.inode().file, 1).unwrap().is_none());
    assert_eq!(s.cache.dirty_bytes(), 0);
    s.file.set_len(&mut d, 8192).unwrap();
    assert_eq!(s.file.read_at(&mut d, 4096, &mut buf).unwrap(), 4096);
    assert!(buf[..4096].iter().all(|b| *b == 0));
}

#[test]
fn fsync_reports_a_writeback_error_once_per_description() {
    let s = setup(4096, 0, 64 << 20, None);
    let mut d = s.dev.clone();
    let a = &s.file;
    let b = a.reopen().unwrap();
    a.write_at(&mut d, 0, &[1; 8192]).unwrap();
    s.dev.inject(Fault {
        op: Some(BioOp::Write),
        lbas: 0..8192,
        error: DeviceError::Status {
            status: status::INTERNAL,
        },
        times: Some(1),
    });
    let e = a.fsync(&mut d).unwrap_err();
    assert_eq!(e.errno(), Errno::Io);
    a.fsync(&mut d).unwrap();
    let c = a.reopen().unwrap();
    assert_eq!(b.fsync(&mut d).unwrap_err().errno(), Errno::Io);
    b.fsync(&mut d).unwrap();
    c.fsync(&mut d).unwrap();
    assert_eq!(
        s.dev.count(BioOp::Write),
        1,
        "the failed write is not retried"
    );
    // The data stays readable from the cache (R31).
    let mut buf = vec![0; 8192];
    a.read_at(&mut d, 0, &mut buf).unwrap();
    assert_eq!(buf, vec![1; 8192]);
}

#[test]
fn two_threads_write_disjoint_ranges() {
    let s = setup(4096, 0, 64 << 20, None);
    let file = Arc::new(s.file);
    let region = 64 * P as u64;
    let threads: Vec<_> = (0..2u8)
        .map(|t| {
            let file = file.clone();
            let mut dev = s.dev.new_queue();
            std::thread::spawn(move || {
                let data = pattern(t * 50, region as usize);
                for (i, chunk) in data.chunks(3000).enumerate() {
                    let pos = u64::from(t) * region + (i * 3000) as u64;
                    assert_eq!(file.write_at(&mut dev, pos, chunk).unwrap(), chunk.len());
                }
                let mut back = vec![0; region as usize];
                file.read_at(&mut dev, u64::from(t) * region, &mut back)
                    .unwrap();
                assert_eq!(back, data);
                assert_eq!(dev.in_flight(), 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut d = s.dev.new_queue();
    file.fsync(&mut d).unwrap();
    assert_eq!(file.size(), 2 * region);
    for t in 0..2u8 {
        assert_eq!(
            s.dev.read_disk(u64::from(t) * region, region as usize),
            pattern(t * 50, region as usize)
        );
    }
}

#[test]
fn writers_are_throttled_and_the_budget_holds() {
    let budget = 64 * 1024;
    let limits = DirtyLimits::from_bytes(8 * 1024, 16 * 1024).unwrap();
    let s = setup(4096, 0, budget, Some(limits));
    let mut d = s.dev.clone();
    let data = pattern(5, 1 << 20);
    for (i, chunk) in data.chunks(P).enumerate() {
        s.file.write_at(&mut d, (i * P) as u64, chunk).unwrap();
        let dirty = s.cache.dirty_bytes() + s.cache.writeback_bytes();
        assert!(
            dirty <= limits.hard + P as u64,
            "dirty {dirty} after page {i}"
        );
        assert!(s.cache.used() < budget + P as u64);
    }
    assert!(
        s.dev.count(BioOp::Write) > 0,
        "the writer wrote back itself"
    );
    let mut buf = vec![0; 3 * P];
    for (i, want) in data.chunks(3 * P).enumerate() {
        let n = s
            .file
            .read_at(&mut d, (i * 3 * P) as u64, &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], want);
        assert!(s.cache.used() < budget + P as u64);
    }
    s.file.fsync(&mut d).unwrap();
    assert_eq!(s.dev.read_disk(0, 1 << 20), data);
}

#[test]
fn a_full_cache_is_written_back_to_make_room() {
    // Dirty limits as large as the budget: only CacheFull stops writers.
    let budget = 32 * 1024;
    let limits = DirtyLimits::from_bytes(budget, budget).unwrap();
    let s = setup(4096, 0, budget, Some(limits));
    let mut d = s.dev.clone();
    let data = pattern(8, 256 * 1024);
    s.file.write_at(&mut d, 0, &data).unwrap();
    assert!(s.cache.used() <= budget);
    s.file.fsync(&mut d).unwrap();
    assert_eq!(s.dev.read_disk(0, data.len()), data);
}

#[test]
fn the_flusher_writes_back_above_the_background_limit() {
    let limits = DirtyLimits::from_bytes(16 * 1024, 1 << 20).unwrap();
    let s = setup(4096, 0, 8 << 20, Some(limits));
    let flusher = Flusher::new(s.cache.clone());
    flusher.attach(&s.file).unwrap();
    let thread = flusher
        .spawn(Box::new(s.dev.new_queue()), Duration::from_millis(20))
        .unwrap();
    let mut d = s.dev.new_queue();
    s.file.write_at(&mut d, 0, &pattern(2, 64 * P)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.cache.dirty_bytes() > limits.background {
        assert!(Instant::now() < deadline, "flusher made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.stop();
    let bg = s
        .dev
        .commands()
        .iter()
        .filter(|c| c.op == BioOp::Write && c.flags == BioFlags::BACKGROUND)
        .count();
    assert!(bg > 0, "background writeback commands");
    assert!(flusher.attach(&s.file).is_err(), "one flusher per file");

    // run_once on the caller's device, with nothing above the limit: nothing.
    let mut d2 = s.dev.new_queue();
    assert_eq!(flusher.run_once(&mut d2).unwrap().folios, 0);
}

#[test]
fn folio_views_read_cached_data_without_a_bounce_buffer() {
    let s = setup(1024, 0, 64 << 20, None);
    let mut d = s.dev.clone();
    s.file.write_at(&mut d, 0, &pattern(4, 6000)).unwrap();
    let v = s.file.folio(&mut d, 5000).unwrap().expect("inside EOF");
    assert_eq!((v.pos(), v.len()), (4096, 6000 - 4096));
    let mut out = vec![0; 100];
    v.read(904, &mut out).unwrap();
    assert_eq!(out, pattern(4, 6000)[5000..5100]);
    assert!(v.read(1900, &mut out).is_err(), "past the file data");
    assert!(s.file.folio(&mut d, 6000).unwrap().is_none());
    // A cold folio is read on demand, without readahead.
    s.dev.write_disk(65536, &[9; 4096]);
    s.file.set_len(&mut d, 1 << 20).unwrap();
    s.file.fsync(&mut d).unwrap();
    s.dev.write_disk(65536, &[9; 4096]);
    s.cache.shrink(u64::MAX);
    s.dev.clear_log();
    let v = s.file.folio(&mut d, 65536 + 10).unwrap().unwrap();
    assert_eq!(s.dev.io(), vec![(BioOp::Read, 128, 4096)]);
    let mut out = vec![0; 4096];
    v.read(0, &mut out).unwrap();
    assert_eq!(out, vec![9; 4096]);
}

#[test]
fn a_failed_readahead_is_retried_on_demand() {
    let s = setup(4096, 64 * 1024, 64 << 20, None);
    s.dev.write_disk(0, &[6; 65536]);
    s.dev
        .inject(Fault::status(BioOp::Read, 0..8, status::INTERNAL).times(1));
    let mut d = s.dev.clone();
    let mut buf = vec![0; P];
    assert_eq!(s.file.read_at(&mut d, 0, &mut buf).unwrap(), P);
    assert_eq!(buf, vec![6; P]);
    let r = reads(&s.dev);
    assert_eq!(r[0], (4 * P, BioFlags::READAHEAD));
    assert_eq!(r[1], (P, BioFlags::empty()), "demand read without the hint");
}

#[test]
fn zero_copy_reads_return_views_after_the_same_readahead_as_read_at() {
    let size = 1 << 20;
    let data = pattern(3, size);
    let mut streams = Vec::new();
    for zero_copy in [false, true] {
        let s = setup(4096, size as u64, 64 << 20, None);
        s.dev.write_disk(0, &data);
        let mut d = s.dev.clone();
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < size {
            if zero_copy {
                let views = s.file.read_folios(&mut d, pos as u64, 128 << 10).unwrap();
                let end = size.min(pos + (128 << 10));
                for v in &views {
                    let from = pos.max(v.pos() as usize);
                    let to = end.min(v.pos() as usize + v.len());
                    let mut out = vec![0; to - from];
                    v.read(from - v.pos() as usize, &mut out).unwrap();
                    got.extend_from_slice(&out);
                    pos = to;
                }
            } else {
                let mut buf = vec![0; 128 << 10];
                let n = s.file.read_at(&mut d, pos as u64, &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                pos += n;
            }
        }
        assert!(got == data, "zero_copy {zero_copy}: data differs");
        assert!(
            s.file
                .read_folios(&mut d, size as u64, 10)
                .unwrap()
                .is_empty()
        );
        streams.push(reads(&s.dev));
    }
    assert_eq!(streams[0], streams[1], "the same commands");
    assert!(streams[1].iter().any(|r| r.1 == BioFlags::READAHEAD));
}

#[test]
fn a_view_refuses_bytes_that_are_not_uptodate() {
    let s = setup(1024, 1 << 20, 64 << 20, None);
    let mut d = s.dev.clone();
    // 1 KiB blocks: a write of one block leaves the rest of the page not
    // uptodate, and a zero-copy read of that block does not read them.
    s.file.write_at(&mut d, 0, &[7; 1024]).unwrap();
    let views = s.file.read_folios(&mut d, 0, 1024).unwrap();
    let mut out = vec![0; 1024];
    views[0].read(0, &mut out).unwrap();
    assert_eq!(out, vec![7; 1024]);
    assert!(views[0].read(1024, &mut out).is_err());
}
