//! The whole vhost-user path on the host: the back end over the driver's
//! mock controller, served on a unix socket, and libblkio's
//! `virtio-blk-vhost-user` driver (a front end written by others) as the
//! client: memory table, vrings, config space, kicks and calls, data
//! moved zero-copy into the client's shared memory, a scatter list that
//! must be bounced, and a second front end after the first left.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use nvme_driver::mock::{MockConfig, MockController};
use nvme_vhost::backend::BlkBackend;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

const NS: u32 = 1;
const LBA: usize = 512;
const BLOCKS: u64 = 32 << 11; // 32 MiB

/// Serves one front end on `socket` in a thread; returns its handle.
fn serve_once(backend: &BlkBackend, socket: &Path) -> std::thread::JoinHandle<()> {
    let mut listener = Listener::new(socket, true).expect("listener");
    let backend = backend.clone();
    std::thread::spawn(move || {
        let mut daemon = VhostUserDaemon::new(
            "nvme-vhost-test".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .expect("daemon");
        daemon.start(&mut listener).expect("accept");
        let _ = daemon.wait();
        drop(daemon);
        backend.forget_memory();
    })
}

struct Client {
    b: Blkio,
    q: Blkioq,
    /// Queues past the first.
    more: Vec<Blkioq>,
    region: MemoryRegion,
    mem: File,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        Self::connect_queues(socket, 1)
    }

    fn connect_queues(socket: &Path, queues: i32) -> Client {
        let mut b = Blkio::new("virtio-blk-vhost-user").expect("blkio");
        b.set_str("path", socket.to_str().expect("utf-8 path"))
            .expect("path");
        b.connect().expect("connect");
        b.set_i32("num-queues", queues).expect("queues");
        let mut started = b.start().expect("start");
        let mut all = std::mem::take(&mut started.queues).into_iter();
        let q = all.next().expect("a queue");
        let more = all.collect();
        let region = b.alloc_mem_region(4 << 20).expect("region");
        b.map_mem_region(&region).expect("map region");
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", region.fd))
            .expect("the region's memfd");
        Client {
            b,
            q,
            more,
            region,
            mem,
        }
    }

    fn put(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.region.len);
        self.mem
            .write_all_at(data, self.region.fd_offset as u64 + offset as u64)
            .expect("fill region");
    }

    fn get(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.region.len);
        let mut out = vec![0u8; len];
        self.mem
            .read_exact_at(&mut out, self.region.fd_offset as u64 + offset as u64)
            .expect("read region");
        out
    }

    fn addr(&self, offset: usize) -> usize {
        self.region.addr + offset
    }

    /// Waits for `n` completions on the first queue; all must succeed.
    fn complete(&mut self, n: usize) {
        complete_on(&mut self.q, n);
    }
}

/// Waits for `n` completions on `q`; all must succeed.
fn complete_on(q: &mut Blkioq, n: usize) {
    {
        let mut got = 0;
        while got < n {
            let mut buf: Vec<MaybeUninit<Completion>> =
                (0..n - got).map(|_| MaybeUninit::uninit()).collect();
            let mut timeout = Duration::from_secs(30);
            let k = q
                .do_io(&mut buf, 1, Some(&mut timeout), None)
                .expect("do_io");
            for c in buf.iter().take(k) {
                // SAFETY: do_io returned k, so it wrote entries 0..k.
                #[allow(unsafe_code)]
                let c = unsafe { c.assume_init_ref() };
                assert_eq!(c.ret, 0, "request {} failed", c.user_data);
            }
            got += k;
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ seed ^ (i >> 12) as u8)
        .collect()
}

#[test]
fn libblkio_reads_and_writes_through_the_target_and_reconnects() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("vhost.sock");
    let (mock, ctrl) =
        MockController::new(MockConfig::new(&[(NS, LBA as u32, BLOCKS)]).max_transfer(64 << 10))
            .expect("mock");
    mock.set_auto(true);
    let backend = BlkBackend::new(ctrl, NS, 1, 256, false).expect("backend");
    let server = serve_once(&backend, &socket);

    let mut c = Client::connect(&socket);
    assert_eq!(
        c.b.get_u64("capacity").expect("capacity"),
        BLOCKS * LBA as u64
    );
    assert_eq!(c.b.get_i32("request-alignment").expect("blk_size"), 512);
    // 2 MiB in 256 KiB writes, 8 in flight (each split by MDTS 64 KiB).
    let data = pattern(7, 2 << 20);
    c.put(0, &data);
    for i in 0..8 {
        let at = i * (256 << 10);
        c.q.write(
            at as u64 + (1 << 20),
            c.addr(at) as *const u8,
            256 << 10,
            i,
            ReqFlags::empty(),
        );
    }
    c.complete(8);
    c.q.flush(100, ReqFlags::empty());
    c.complete(1);
    assert_eq!(
        mock.read_disk(NS, (1 << 20) / LBA as u64, (2 << 20) / LBA as u64)
            .expect("disk"),
        data,
        "the device holds what the client wrote"
    );
    // Read it back into another part of the region.
    c.put(2 << 20, &vec![0u8; 2 << 20]);
    c.q.read(
        1 << 20,
        c.addr(2 << 20) as *mut u8,
        2 << 20,
        200,
        ReqFlags::empty(),
    );
    c.complete(1);
    assert_eq!(c.get(2 << 20, 2 << 20), data);
    let (direct, bounced, failed, _) = backend.stats().snapshot();
    assert_eq!(
        (direct, bounced, failed),
        (9, 0, 0),
        "page-aligned: all zero-copy"
    );

    // 4 KiB in two pieces meeting mid-page: not PRP-legal, bounced.
    let iov = [
        libc::iovec {
            iov_base: c.addr(0) as *mut libc::c_void,
            iov_len: 512,
        },
        libc::iovec {
            iov_base: c.addr(4096 + 512) as *mut libc::c_void,
            iov_len: 4096 - 512,
        },
    ];
    c.put(0, &vec![0u8; 3 * 4096]);
    c.q.readv(1 << 20, iov.as_ptr(), 2, 300, ReqFlags::empty());
    c.complete(1);
    let mut got = c.get(0, 512);
    got.extend(c.get(4096 + 512, 4096 - 512));
    assert_eq!(got, data[..4096]);
    let (direct, bounced, _, _) = backend.stats().snapshot();
    assert_eq!((direct, bounced), (9, 1));

    // A memory region added while the device runs (ADD_MEM_REG), used,
    // then removed (REM_MEM_REG); the first region still works after.
    let extra = c.b.alloc_mem_region(1 << 20).expect("second region");
    c.b.map_mem_region(&extra).expect("map second region");
    let extra_mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", extra.fd))
        .expect("the second region's memfd");
    c.q.read(
        1 << 20,
        extra.addr as *mut u8,
        1 << 20,
        400,
        ReqFlags::empty(),
    );
    c.complete(1);
    let mut got = vec![0u8; 1 << 20];
    extra_mem
        .read_exact_at(&mut got, extra.fd_offset as u64)
        .expect("read second region");
    assert_eq!(got, data[..1 << 20], "read into the added region");
    c.b.unmap_mem_region(&extra);
    c.b.free_mem_region(&extra);
    c.q.read(1 << 20, c.addr(0) as *mut u8, 4096, 401, ReqFlags::empty());
    c.complete(1);
    assert_eq!(c.get(0, 4096), data[..4096]);
    let (direct, bounced, failed, _) = backend.stats().snapshot();
    assert_eq!((direct, bounced, failed), (11, 1, 0));

    // The front end leaves; a new one connects and sees the data.
    drop(c);
    server.join().expect("server thread");
    let server = serve_once(&backend, &socket);
    let mut c = Client::connect(&socket);
    c.q.read(
        1 << 20,
        c.addr(0) as *mut u8,
        64 << 10,
        1,
        ReqFlags::empty(),
    );
    c.complete(1);
    assert_eq!(c.get(0, 64 << 10), data[..64 << 10]);
    drop(c);
    server.join().expect("server thread");
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
}

#[test]
fn two_virtqueues_are_served_by_two_threads_with_their_own_queue_pairs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("vhost.sock");
    let (mock, ctrl) =
        MockController::new(MockConfig::new(&[(NS, LBA as u32, BLOCKS)])).expect("mock");
    mock.set_auto(true);
    let backend = BlkBackend::new(ctrl, NS, 2, 256, true).expect("backend");
    let server = serve_once(&backend, &socket);
    let mut c = Client::connect_queues(&socket, 2);
    assert_eq!(c.more.len(), 1, "two queues");
    let a = pattern(1, 1 << 20);
    let b = pattern(2, 1 << 20);
    c.put(0, &a);
    c.put(1 << 20, &b);
    // Each queue writes its own MiB, both in flight at once.
    c.q.write(0, c.addr(0) as *const u8, 1 << 20, 1, ReqFlags::empty());
    let second = c.addr(1 << 20) as *const u8;
    c.more[0].write(4 << 20, second, 1 << 20, 2, ReqFlags::empty());
    complete_on(&mut c.more[0], 1);
    c.complete(1);
    assert_eq!(mock.read_disk(NS, 0, 2048).expect("disk"), a);
    assert_eq!(
        mock.read_disk(NS, (4 << 20) / LBA as u64, 2048)
            .expect("disk"),
        b
    );
    // Read each back on the other queue.
    c.q.read(
        4 << 20,
        c.addr(2 << 20) as *mut u8,
        1 << 20,
        3,
        ReqFlags::empty(),
    );
    let third = c.addr(3 << 20) as *mut u8;
    c.more[0].read(0, third, 1 << 20, 4, ReqFlags::empty());
    c.complete(1);
    complete_on(&mut c.more[0], 1);
    assert_eq!(c.get(2 << 20, 1 << 20), b);
    assert_eq!(c.get(3 << 20, 1 << 20), a);
    drop(c);
    server.join().expect("server thread");
    assert_eq!(backend.stats().snapshot(), (4, 0, 0, 0));
    // Two NVMe I/O queues were created, one per virtqueue thread.
    let io_queues: std::collections::BTreeSet<u16> = mock
        .commands()
        .iter()
        .map(|c| c.qid)
        .filter(|&q| q != 0)
        .collect();
    assert_eq!(io_queues.len(), 2, "{io_queues:?}");
}

/// A front end that leaves with commands in flight on the device: the
/// daemon finishes them (they still write into the guest memory it keeps
/// mapped) before it unmaps and takes the next front end.
#[test]
fn a_front_end_leaving_mid_io_is_drained_and_the_next_one_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("vhost.sock");
    let (mock, ctrl) =
        MockController::new(MockConfig::new(&[(NS, LBA as u32, BLOCKS)])).expect("mock");
    mock.set_auto(true);
    let backend = BlkBackend::new(ctrl, NS, 1, 256, true).expect("backend");
    let server = serve_once(&backend, &socket);
    let mut c = Client::connect(&socket);
    let data = pattern(9, 8 * 4096);
    c.put(0, &data);
    mock.hold_next(nvme_driver::mock::Match::Any, 8);
    for i in 0..8 {
        let at = i * 4096;
        c.q.write(
            at as u64,
            c.addr(at) as *const u8,
            4096,
            i,
            ReqFlags::empty(),
        );
    }
    // Submit without waiting for anything.
    let mut none: Vec<MaybeUninit<Completion>> = Vec::new();
    let mut zero = Duration::ZERO;
    c.q.do_io(&mut none, 0, Some(&mut zero), None)
        .expect("submit");
    let start = std::time::Instant::now();
    while mock.pending().len() < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the writes never reached the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The front end goes away with all eight held by the device.
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!server.is_finished(), "the daemon waits for its commands");
    assert_eq!(mock.release_held(), 8);
    while !server.is_finished() {
        mock.process().expect("mock processing");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon never drained"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.join().expect("server thread");
    assert_eq!(
        mock.read_disk(NS, 0, 64).expect("disk"),
        data,
        "all eight written"
    );
    assert_eq!(backend.stats().snapshot(), (8, 0, 0, 0));

    // The next front end is served.
    let server = serve_once(&backend, &socket);
    let mut c = Client::connect(&socket);
    c.q.read(0, c.addr(0) as *mut u8, 8 * 4096, 1, ReqFlags::empty());
    c.complete(1);
    assert_eq!(c.get(0, 8 * 4096), data);
    drop(c);
    server.join().expect("server thread");
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
}

/// Waits for one completion on `q`; returns its `ret` (0 or -errno).
fn one_result(q: &mut Blkioq) -> i32 {
    let mut buf = [MaybeUninit::<Completion>::uninit()];
    let mut timeout = Duration::from_secs(30);
    let k = q
        .do_io(&mut buf, 1, Some(&mut timeout), None)
        .expect("do_io");
    assert_eq!(k, 1, "a completion within 30 s");
    // SAFETY: do_io returned 1, so it wrote entry 0.
    #[allow(unsafe_code)]
    let c = unsafe { buf[0].assume_init_ref() };
    c.ret
}

/// `--cache`: the config space says write-back (FLUSH offered, although
/// the mock controller has no volatile write cache); a write is buffered
/// (the device does not hold it) and read back from the cache (a hit);
/// FLUSH writes it back; a read of data never written misses, then hits;
/// a write whose writeback the device fails is acknowledged, the next
/// FLUSH fails with EIO, the one after succeeds (reported once); discard
/// and write zeroes over dirty cached data leave the cache and the device
/// agreeing; and a front end leaving has its dirty data written back.
#[test]
fn page_cache_mode_buffers_writes_and_flush_writes_them_back() {
    use nvme_driver::mock::Match;
    use nvme_driver::nvme_spec::{NvmOpcode, Oncs, Status, status::generic};

    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("vhost.sock");
    let (mock, ctrl) = MockController::new(
        MockConfig::new(&[(NS, LBA as u32, BLOCKS)])
            .max_transfer(64 << 10)
            .oncs(Oncs::DSM | Oncs::WRITE_ZEROES),
    )
    .expect("mock");
    mock.set_auto(true);
    // 32 MiB: the background writeback limit (10 %) is above what this
    // test leaves dirty, so nothing is written back unless flushed.
    let backend = BlkBackend::with_cache(ctrl, NS, 1, 256, false, 32 << 20).expect("backend");
    assert!(backend.config().write_cache);
    let server = serve_once(&backend, &socket);
    let mut c = Client::connect(&socket);
    assert!(
        c.b.get_bool("flush-needed").expect("flush-needed"),
        "FLUSH offered"
    );

    // 1 MiB written at 1 MiB: buffered.
    let data = pattern(3, 1 << 20);
    c.put(0, &data);
    c.q.write(
        1 << 20,
        c.addr(0) as *const u8,
        1 << 20,
        1,
        ReqFlags::empty(),
    );
    c.complete(1);
    let on_disk = |at: u64, len: usize| {
        mock.read_disk(NS, at / LBA as u64, (len / LBA) as u64)
            .expect("disk")
    };
    assert!(
        on_disk(1 << 20, 1 << 20).iter().all(|&b| b == 0),
        "the write is in the cache only"
    );
    c.put(1 << 20, &vec![0u8; 1 << 20]);
    c.q.read(
        1 << 20,
        c.addr(1 << 20) as *mut u8,
        1 << 20,
        2,
        ReqFlags::empty(),
    );
    c.complete(1);
    assert_eq!(c.get(1 << 20, 1 << 20), data, "read back from the cache");
    assert_eq!(backend.stats().cache_snapshot(), (1, 0, 1, 0));
    c.q.flush(3, ReqFlags::empty());
    c.complete(1);
    assert_eq!(on_disk(1 << 20, 1 << 20), data, "FLUSH wrote it back");
    assert_eq!(backend.stats().cache_snapshot(), (1, 0, 1, 1));

    // Data only the device has: a miss, then a hit.
    let old = pattern(4, 64 << 10);
    mock.write_disk(NS, (8 << 20) / LBA as u64, &old)
        .expect("disk");
    for tag in [4, 5] {
        c.q.read(
            8 << 20,
            c.addr(0) as *mut u8,
            64 << 10,
            tag,
            ReqFlags::empty(),
        );
        c.complete(1);
        assert_eq!(c.get(0, 64 << 10), old);
    }
    let (hits, misses, _, _) = backend.stats().cache_snapshot();
    assert_eq!((hits, misses), (2, 1));

    // A write the device fails at writeback: acknowledged (buffered), the
    // next FLUSH reports EIO, the one after does not.
    mock.fail_next(
        Match::Opcode(NvmOpcode::Write),
        Status::generic(generic::INVALID_FIELD),
        100,
    );
    c.put(0, &pattern(5, 64 << 10));
    c.q.write(
        4 << 20,
        c.addr(0) as *const u8,
        64 << 10,
        6,
        ReqFlags::empty(),
    );
    c.complete(1);
    c.q.flush(7, ReqFlags::empty());
    assert_eq!(one_result(&mut c.q), -libc::EIO, "the writeback error");
    mock.clear_faults();
    c.q.flush(8, ReqFlags::empty());
    assert_eq!(one_result(&mut c.q), 0, "reported once");

    // Discard and write zeroes over dirty cached data: afterwards the
    // client reads what the device holds.
    let fresh = pattern(6, 64 << 10);
    c.put(0, &fresh);
    c.q.write(
        12 << 20,
        c.addr(0) as *const u8,
        64 << 10,
        9,
        ReqFlags::empty(),
    );
    c.complete(1);
    c.q.discard(12 << 20, 32 << 10, 10, ReqFlags::empty());
    c.complete(1);
    c.q.write_zeroes((12 << 20) + (32 << 10), 16 << 10, 11, ReqFlags::empty());
    c.complete(1);
    c.q.read(
        12 << 20,
        c.addr(1 << 20) as *mut u8,
        64 << 10,
        12,
        ReqFlags::empty(),
    );
    c.complete(1);
    let got = c.get(1 << 20, 64 << 10);
    // The untouched tail is still dirty in the cache: flush, then compare.
    c.q.flush(14, ReqFlags::empty());
    c.complete(1);
    assert_eq!(got, on_disk(12 << 20, 64 << 10), "cache and device agree");
    assert!(got[32 << 10..48 << 10].iter().all(|&b| b == 0), "zeroed");
    assert_eq!(&got[48 << 10..], &fresh[48 << 10..], "kept");
    assert!(
        mock.deallocated()
            .contains(&(NS, (12 << 20) / LBA as u64, (32 << 10) / LBA as u64)),
        "{:?}",
        mock.deallocated()
    );

    // Dirty data when the front end leaves: written back before the next.
    let last = pattern(7, 64 << 10);
    c.put(0, &last);
    c.q.write(
        16 << 20,
        c.addr(0) as *const u8,
        64 << 10,
        13,
        ReqFlags::empty(),
    );
    c.complete(1);
    assert!(on_disk(16 << 20, 64 << 10).iter().all(|&b| b == 0));
    drop(c);
    server.join().expect("server thread");
    assert_eq!(
        on_disk(16 << 20, 64 << 10),
        last,
        "written back on disconnect"
    );
    let (_, _, failed, _) = backend.stats().snapshot();
    assert_eq!(failed, 1, "only the flush after the lost write failed");
}
