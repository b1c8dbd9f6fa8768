//! Hostile descriptors over the real vhost-user protocol: a front end
//! driven by hand (rust-vmm's `vhost` frontend) shares file-backed memory,
//! sets up one virtqueue, and queues chains that break every rule among
//! good ones. Each bad chain fails alone (VIRTIO_BLK_S_IOERR where a
//! status byte can be written), every chain comes back on the used ring,
//! the good ones move their data, and the daemon goes on serving.

use std::time::{Duration, Instant};

use nvme_driver::mock::{MockConfig, MockController};
use nvme_vhost::backend::BlkBackend;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, Listener, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backend::VhostUserDaemon;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const NS: u32 = 1;
const MEM: u64 = 16 << 20;
const QSIZE: u16 = 64;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

#[test]
fn hostile_chains_fail_alone_and_the_daemon_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("vhost.sock");
    let (mock, ctrl) = MockController::new(MockConfig::new(&[(NS, 512, 8192)])).expect("mock");
    mock.set_auto(true);
    let backend = BlkBackend::new(ctrl, NS, 1, QSIZE, true).expect("backend");
    let mut listener = Listener::new(&socket, true).expect("listener");
    let server = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            let mut daemon = VhostUserDaemon::new(
                "hostile".into(),
                backend.clone(),
                vm_memory::GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            )
            .expect("daemon");
            daemon.start(&mut listener).expect("accept");
            let _ = daemon.wait();
            drop(daemon);
            backend.forget_memory();
        })
    };

    // Guest memory: a shared file both sides map.
    let file = tempfile::tempfile_in("/dev/shm")
        .or_else(|_| tempfile::tempfile())
        .expect("memory file");
    file.set_len(MEM).expect("size");
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM as usize,
        Some(FileOffset::new(file.try_clone().expect("dup"), 0)),
    )])
    .expect("guest memory");
    let host = mem.iter().next().expect("a region").as_ptr() as u64;
    let q = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);

    let mut fe = Frontend::connect(&socket, 1).expect("connect");
    fe.set_owner().expect("owner");
    let features = fe.get_features().expect("features");
    fe.set_features(features).expect("set features");
    let pf = fe.get_protocol_features().expect("protocol features");
    fe.set_protocol_features(
        pf & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
    )
    .expect("set protocol features");
    use std::os::fd::AsRawFd;
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }])
    .expect("memory table");
    fe.set_vring_num(0, QSIZE).expect("vring num");
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: host + q.desc_table_addr().0,
            used_ring_addr: host + q.used_addr().0,
            avail_ring_addr: host + q.avail_addr().0,
            log_addr: None,
        },
    )
    .expect("vring addr");
    fe.set_vring_base(0, 0).expect("vring base");
    let call = EventFd::new(libc::EFD_NONBLOCK).expect("call");
    let kick = EventFd::new(libc::EFD_NONBLOCK).expect("kick");
    fe.set_vring_call(0, &call).expect("call fd");
    fe.set_vring_kick(0, &kick).expect("kick fd");
    fe.set_vring_enable(0, true).expect("enable");

    // Request i: header at 0x10_0000 + i * 64, status 16 bytes after it.
    let hdr = |i: u64| 0x10_0000 + i * 64;
    let status = |i: u64| hdr(i) + 16;
    let header = |i: u64, kind: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr(i))).expect("header");
        mem.write_obj(0xffu8, GuestAddress(status(i)))
            .expect("status");
    };
    let good: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&good, GuestAddress(0x20_0000))
        .expect("data");
    // Each chain: (descriptors from table index `at`, expected status).
    let mut chains: Vec<(Vec<RawDescriptor>, Option<u8>)> = Vec::new();
    let mut at = 0u16;
    let mut add = |descs: Vec<RawDescriptor>, want: Option<u8>| {
        let len = descs.len() as u16;
        chains.push((descs, want));
        let first = at;
        at += len;
        first
    };
    // 0: a good write of 4 KiB at LBA 16.
    header(0, VIRTIO_BLK_T_OUT, 16);
    add(
        vec![
            desc(hdr(0), 16, N, 1),
            desc(0x20_0000, 4096, N, 2),
            desc(status(0), 1, W, 0),
        ],
        Some(VIRTIO_BLK_S_OK as u8),
    );
    // 1: data past the end of guest memory.
    header(1, VIRTIO_BLK_T_IN, 0);
    add(
        vec![
            desc(hdr(1), 16, N, 4),
            desc(MEM - 512, 4096, N | W, 5),
            desc(status(1), 1, W, 0),
        ],
        Some(VIRTIO_BLK_S_IOERR as u8),
    );
    // 2: a header of 8 bytes.
    header(2, VIRTIO_BLK_T_IN, 0);
    add(
        vec![
            desc(hdr(2), 8, N, 7),
            desc(0x30_0000, 512, N | W, 8),
            desc(status(2), 1, W, 0),
        ],
        Some(VIRTIO_BLK_S_IOERR as u8),
    );
    // 3: a descriptor that is its own next (a loop): no status written.
    header(3, VIRTIO_BLK_T_IN, 0);
    add(vec![desc(hdr(3), 16, N, 9)], None);
    // 4: an indirect table whose length is not whole descriptors.
    header(4, VIRTIO_BLK_T_IN, 0);
    add(
        vec![desc(0x40_0000, 20, VRING_DESC_F_INDIRECT as u16, 0)],
        None,
    );
    // 5: a status byte the device may not write.
    header(5, VIRTIO_BLK_T_IN, 0);
    add(
        vec![
            desc(hdr(5), 16, N, 12),
            desc(0x30_0000, 512, N | W, 13),
            desc(status(5), 1, 0, 0),
        ],
        None,
    );
    // 6: an unknown request type.
    header(6, 77, 0);
    add(
        vec![desc(hdr(6), 16, N, 15), desc(status(6), 1, W, 0)],
        Some(VIRTIO_BLK_S_UNSUPP as u8),
    );
    // 7: a good read of what chain 0 wrote.
    header(7, VIRTIO_BLK_T_IN, 16);
    add(
        vec![
            desc(hdr(7), 16, N, 17),
            desc(0x50_0000, 4096, N | W, 18),
            desc(status(7), 1, W, 0),
        ],
        Some(VIRTIO_BLK_S_OK as u8),
    );
    let mut at = 0u16;
    for (descs, _) in &chains {
        q.add_desc_chains(descs, at).expect("chain");
        at += descs.len() as u16;
    }
    kick.write(1).expect("kick");

    let used_idx = |mem: &GuestMemoryMmap<()>| -> u16 {
        mem.read_obj(GuestAddress(q.used_addr().0 + 2))
            .expect("used idx")
    };
    let start = Instant::now();
    while used_idx(&mem) < chains.len() as u16 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} of {} chains came back",
            used_idx(&mem),
            chains.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, (_, want)) in chains.iter().enumerate() {
        let got: u8 = mem
            .read_obj(GuestAddress(status(i as u64)))
            .expect("status");
        match want {
            Some(code) => assert_eq!(got, *code, "chain {i}"),
            None => assert_eq!(got, 0xff, "chain {i}: no status written"),
        }
    }
    assert_eq!(mock.read_disk(NS, 16, 8).expect("disk"), good);
    let mut back = vec![0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(0x50_0000))
        .expect("read back");
    assert_eq!(back, good, "the good read after the bad chains");
    let (direct, bounced, failed, unsupported) = backend.stats().snapshot();
    assert_eq!((direct, bounced, unsupported), (2, 0, 1));
    assert_eq!(failed, 5, "every bad chain counted");

    // Still serving: one more good read, kicked again.
    header(8, VIRTIO_BLK_T_IN, 16);
    let more = [
        desc(hdr(8), 16, N, at + 1),
        desc(0x60_0000, 4096, N | W, at + 2),
        desc(status(8), 1, W, 0),
    ];
    q.add_desc_chains(&more, at).expect("chain");
    kick.write(1).expect("kick");
    while used_idx(&mem) < chains.len() as u16 + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon stopped serving"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let got: u8 = mem.read_obj(GuestAddress(status(8))).expect("status");
    assert_eq!(got, VIRTIO_BLK_S_OK as u8);
    drop(fe);
    server.join().expect("server thread");
}
