//! `vhost-front`: a vhost-user-blk front end driven by hand (rust-vmm's
//! `vhost` frontend, one split virtqueue laid out in shared memory with
//! virtio-queue's `MockSplitQueue`), for what libblkio cannot send:
//! hostile descriptor chains and GET_ID.
//!
//! In three batches on one virtqueue: two good 4 KiB writes (one through
//! an indirect table) at `--sector` and 8 sectors after it; then chains
//! that break the rules (data outside guest memory or in the wrong
//! direction, loops, a next index past the table, bad, nested and
//! too-long indirect tables, headers and status buffers of the wrong size
//! or direction, a transfer that is not whole blocks or past the end, an
//! unknown type), every write among them aimed at the 512 sectors after
//! the good ones, and a GET_ID; then good reads of all of it. Each chain
//! must come back on the used ring with the status (and used length) the
//! rules give it, the bad ones alone, and the reads must find the good
//! data and zeroes where the bad writes pointed. Then it replaces the
//! virtqueue's kick and call eventfds (SET_VRING_CALL, SET_VRING_KICK,
//! SET_VRING_ENABLE) and reads once more: the kick on the new fd must be
//! served and the new call eventfd signalled, the old one not. Prints one
//! line per chain, `get-id: ID`, and a summary; exits non-zero at the
//! first surprise.
#![deny(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_tests::pattern;
use vmm_sys_util::eventfd::EventFd;

#[derive(Parser, Debug)]
struct Cli {
    /// The vhost-user socket.
    #[arg(long)]
    socket: String,
    /// First 512-byte sector used (a multiple of 8); the 528 from it
    /// must hold zeroes at the start.
    #[arg(long, default_value_t = 0)]
    sector: u64,
    /// Pattern seed of the good writes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Bytes of guest memory shared with the back end.
const MEM: u64 = 16 << 20;
/// Descriptors in the virtqueue.
const QSIZE: u16 = 64;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const I: u16 = VRING_DESC_F_INDIRECT as u16;
const VIRTIO_SECTOR: u64 = 512;
/// Where request i's header goes (its status byte 16 bytes after it,
/// its data at `DATA` + i * 64 KiB, its indirect table at `TABLES` + i
/// * 8 KiB).
const HEADERS: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const TABLES: u64 = 0x70_0000;
/// 4 KiB of 0xee that bad writes point at.
const JUNK: u64 = 0xf0_0000;
/// Bytes of a GET_ID answer.
const ID_BYTES: usize = 20;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// The raw bytes of a descriptor (for indirect tables in guest memory).
fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    b
}

/// What a chain must come back with.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status code in the byte at this address, and this used length.
    Status(u64, u8, u32),
    /// Nothing written at this address (it keeps 0xff), used length 0.
    Nothing(u64),
}

/// One request of a batch.
struct Chain {
    what: &'static str,
    head: u16,
    want: Want,
}

/// A batch of chains being built from descriptor index 0.
struct Batch {
    descs: Vec<Vec<RawDescriptor>>,
    chains: Vec<Chain>,
    next: u16,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            descs: Vec::new(),
            chains: Vec::new(),
            next: 0,
        }
    }

    /// The table index the next chain starts at.
    fn at(&self) -> u16 {
        self.next
    }

    /// Adds a chain whose descriptors are given whole (their `next`
    /// fields included).
    fn raw(&mut self, what: &'static str, descs: Vec<RawDescriptor>, want: Want) {
        self.chains.push(Chain {
            what,
            head: self.next,
            want,
        });
        self.next += descs.len() as u16;
        self.descs.push(descs);
    }

    /// Adds a chain of (address, length, flags) descriptors, linked in
    /// order.
    fn linked(&mut self, what: &'static str, pieces: &[(u64, u32, u16)], want: Want) {
        let first = self.next;
        let last = pieces.len().saturating_sub(1);
        let descs = pieces
            .iter()
            .enumerate()
            .map(|(k, &(addr, len, flags))| {
                if k < last {
                    desc(addr, len, flags | N, first + k as u16 + 1)
                } else {
                    desc(addr, len, flags & !N, 0)
                }
            })
            .collect();
        self.raw(what, descs, want);
    }
}

/// The front end's side: guest memory, the queue's rings in it, the kick.
struct Front<'m> {
    mem: &'m GuestMemoryMmap<()>,
    q: MockSplitQueue<'m, GuestMemoryMmap<()>>,
    kick: EventFd,
    /// Chains returned so far (the used ring's index).
    used: u16,
}

impl Front<'_> {
    fn header(&self, i: u64, kind: u32, sector: u64) -> Result<(), String> {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HEADERS + i * 64))
            .map_err(|e| format!("header {i}: {e}"))
    }

    fn put(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| format!("guest memory at {addr:#x}: {e}"))
    }

    fn get(&self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .map_err(|e| format!("guest memory at {addr:#x}: {e}"))?;
        Ok(out)
    }

    fn used_idx(&self) -> Result<u16, String> {
        self.mem
            .read_obj::<u16>(GuestAddress(self.q.used_addr().0 + 2))
            .map(u16::from_le)
            .map_err(|e| format!("used index: {e}"))
    }

    /// Queues the batch, kicks, waits for every chain on the used ring,
    /// and checks each one's status and used length.
    fn run(&mut self, batch: &Batch) -> Result<(), String> {
        for c in &batch.chains {
            let at = match c.want {
                Want::Status(at, _, _) | Want::Nothing(at) => at,
            };
            self.put(at, &[0xff])?;
        }
        for (c, descs) in batch.chains.iter().zip(&batch.descs) {
            self.q
                .add_desc_chains(descs, c.head)
                .map_err(|e| format!("queueing {}: {e:?}", c.what))?;
        }
        self.kick.write(1).map_err(|e| format!("kick: {e}"))?;
        let n = batch.chains.len() as u16;
        let start = Instant::now();
        while self.used_idx()?.wrapping_sub(self.used) < n {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "only {} of {n} chains came back",
                    self.used_idx()?.wrapping_sub(self.used)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // (head, length) of each returned chain.
        let mut returned = Vec::new();
        for k in 0..n {
            let slot = u64::from(self.used.wrapping_add(k) % QSIZE);
            let at = self.q.used_addr().0 + 4 + slot * 8;
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(at))
                .map_err(|e| format!("used ring: {e}"))?;
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(at + 4))
                .map_err(|e| format!("used ring: {e}"))?;
            returned.push((u32::from_le(id), u32::from_le(len)));
        }
        self.used = self.used.wrapping_add(n);
        if self.used_idx()? != self.used {
            return Err(format!(
                "{} chains returned, {n} queued",
                self.used_idx()?.wrapping_sub(self.used.wrapping_sub(n))
            ));
        }
        for c in &batch.chains {
            let found: Vec<u32> = returned
                .iter()
                .filter(|(id, _)| *id == u32::from(c.head))
                .map(|&(_, len)| len)
                .collect();
            let [len] = found[..] else {
                return Err(format!(
                    "{} (head {}): returned {} times",
                    c.what,
                    c.head,
                    found.len()
                ));
            };
            match c.want {
                Want::Status(at, code, want_len) => {
                    let got = self.get(at, 1)?[0];
                    if got != code || len != want_len {
                        return Err(format!(
                            "{}: status {got} used length {len}, expected {code} and {want_len}",
                            c.what
                        ));
                    }
                    println!("chain {:2} {}: status {got}, length {len}", c.head, c.what);
                }
                Want::Nothing(at) => {
                    let got = self.get(at, 1)?[0];
                    if got != 0xff || len != 0 {
                        return Err(format!(
                            "{}: status byte {got:#x}, used length {len}: nothing may be written",
                            c.what
                        ));
                    }
                    println!("chain {:2} {}: no status written, length 0", c.head, c.what);
                }
            }
        }
        Ok(())
    }
}

/// Connects, shares `mem` (the file `file`), and sets up virtqueue 0 at
/// the rings of `q`; returns the front end (kept open while in use) and
/// the virtio-blk config space's capacity (in sectors) and block size.
fn connect(
    cli: &Cli,
    mem: &GuestMemoryMmap<()>,
    file: &std::fs::File,
    q: &MockSplitQueue<'_, GuestMemoryMmap<()>>,
    kick: &EventFd,
    call: &EventFd,
) -> Result<(Frontend, u64, u32), String> {
    fn e<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
        move |err| format!("{what}: {err}")
    }
    let host = mem.iter().next().ok_or("no guest memory region")?.as_ptr() as u64;
    let mut fe = Frontend::connect(&cli.socket, 1).map_err(e("connect"))?;
    fe.set_owner().map_err(e("set_owner"))?;
    let features = fe.get_features().map_err(e("get_features"))?;
    fe.set_features(features).map_err(e("set_features"))?;
    let pf = fe
        .get_protocol_features()
        .map_err(e("get_protocol_features"))?;
    fe.set_protocol_features(
        pf & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
    )
    .map_err(e("set_protocol_features"))?;
    let (_, config) = fe
        .get_config(0, 24, VhostUserConfigFlags::empty(), &[0u8; 24])
        .map_err(e("get_config"))?;
    let word = |at: usize, n: usize| -> Result<u64, String> {
        let bytes = config.get(at..at + n).ok_or("short config space")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    let capacity = word(0, 8)?;
    let blk_size = u32::try_from(word(20, 4)?).map_err(|_| "blk_size")?;
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }])
    .map_err(e("set_mem_table"))?;
    fe.set_vring_num(0, QSIZE).map_err(e("set_vring_num"))?;
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
    .map_err(e("set_vring_addr"))?;
    fe.set_vring_base(0, 0).map_err(e("set_vring_base"))?;
    fe.set_vring_call(0, call).map_err(e("set_vring_call"))?;
    fe.set_vring_kick(0, kick).map_err(e("set_vring_kick"))?;
    fe.set_vring_enable(0, true)
        .map_err(e("set_vring_enable"))?;
    Ok((fe, capacity, blk_size))
}

fn run(cli: &Cli) -> Result<(), String> {
    if !cli.sector.is_multiple_of(8) {
        return Err("--sector must be a multiple of 8".into());
    }
    // Guest memory: a memfd both sides map (shmem, which the back end can
    // pin for DMA).
    let file = std::fs::File::from(
        nix::sys::memfd::memfd_create("vhost-front", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("memfd: {e}"))?,
    );
    file.set_len(MEM).map_err(|e| format!("memory size: {e}"))?;
    let dup = file.try_clone().map_err(|e| format!("dup: {e}"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM as usize,
        Some(FileOffset::new(dup, 0)),
    )])
    .map_err(|e| format!("guest memory: {e}"))?;
    let q = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("kick: {e}"))?;
    let call = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("call: {e}"))?;
    let (mut fe, capacity, blk_size) = connect(cli, &mem, &file, &q, &kick, &call)?;
    println!("connected: capacity {capacity} sectors, block {blk_size}");
    let blk = u64::from(blk_size);
    if blk == 0 || blk > 4096 || !4096u64.is_multiple_of(blk) || cli.sector + 528 > capacity {
        return Err(format!(
            "block size {blk_size} or capacity {capacity} does not fit"
        ));
    }
    let mut f = Front {
        mem: &mem,
        q,
        kick,
        used: 0,
    };
    let s = cli.sector;
    let hdr = |i: u64| HEADERS + i * 64;
    let status = |i: u64| hdr(i) + 16;
    let data = |i: u64| DATA + i * 0x1_0000;
    let table = |i: u64| TABLES + i * 0x2000;
    let lba = |sector: u64| sector * VIRTIO_SECTOR / blk;
    let ok = |i: u64, bytes: u32| Want::Status(status(i), VIRTIO_BLK_S_OK as u8, bytes + 1);
    let ioerr = |i: u64| Want::Status(status(i), VIRTIO_BLK_S_IOERR as u8, 1);
    let nothing = |i: u64| Want::Nothing(status(i));
    f.put(JUNK, &[0xee; 4096])?;

    // Batch 1: the good writes, one plain, one through an indirect table.
    let mut good = [vec![0u8; 4096], vec![0u8; 4096]];
    pattern::fill(cli.seed, lba(s), blk as usize, &mut good[0]);
    pattern::fill(cli.seed, lba(s + 8), blk as usize, &mut good[1]);
    let mut b = Batch::new();
    f.header(0, VIRTIO_BLK_T_OUT, s)?;
    f.put(data(0), &good[0])?;
    b.linked(
        "good write",
        &[(hdr(0), 16, 0), (data(0), 4096, 0), (status(0), 1, W)],
        ok(0, 0),
    );
    f.header(1, VIRTIO_BLK_T_OUT, s + 8)?;
    f.put(data(1), &good[1])?;
    let mut t = Vec::new();
    t.extend(desc_bytes(hdr(1), 16, N, 1));
    t.extend(desc_bytes(data(1), 4096, N, 2));
    t.extend(desc_bytes(status(1), 1, W, 0));
    f.put(table(1), &t)?;
    b.raw(
        "good write through an indirect table",
        vec![desc(table(1), 48, I, 0)],
        ok(1, 0),
    );
    f.run(&b)?;

    // Batch 2: the hostile chains (writes aimed at the 512 sectors from
    // s + 16, which must stay zero) and a GET_ID.
    let target = s + 16;
    let mut b = Batch::new();
    let mut i = 2u64;
    let mut next = |f: &Front<'_>, kind: u32, sector: u64| -> Result<u64, String> {
        let k = i;
        i += 1;
        f.header(k, kind, sector)?;
        Ok(k)
    };
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "data past the end of guest memory",
        &[(hdr(k), 16, 0), (MEM - 512, 4096, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_IN, target)?;
    b.linked(
        "read into memory past the end of guest memory",
        &[
            (hdr(k), 16, 0),
            (MEM + (1 << 20), 4096, W),
            (status(k), 1, W),
        ],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "8-byte header",
        &[(hdr(k), 8, 0), (JUNK, 4096, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "device-writable header",
        &[(hdr(k), 16, W), (JUNK, 4096, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "write data the device may write (wrong direction)",
        &[(hdr(k), 16, 0), (JUNK, 4096, W), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_IN, target)?;
    b.linked(
        "read into read-only data (wrong direction)",
        &[(hdr(k), 16, 0), (data(k), 4096, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "1000 bytes: not whole blocks",
        &[(hdr(k), 16, 0), (JUNK, 1000, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, capacity - 4)?;
    b.linked(
        "write past the end of the device",
        &[(hdr(k), 16, 0), (JUNK, 4096, 0), (status(k), 1, W)],
        ioerr(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "status buffer of 4 bytes",
        &[(hdr(k), 16, 0), (JUNK, 4096, 0), (status(k), 4, W)],
        // IOERR in its last byte; the first stays 0xff.
        Want::Status(status(k) + 3, VIRTIO_BLK_S_IOERR as u8, 1),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "read-only status byte",
        &[(hdr(k), 16, 0), (JUNK, 4096, 0), (status(k), 1, 0)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.linked(
        "status byte outside guest memory",
        &[(hdr(k), 16, 0), (JUNK, 4096, 0), (MEM + 4096, 1, W)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    let at = b.at();
    b.raw(
        "a descriptor that is its own next",
        vec![desc(hdr(k), 16, N, at)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    let at = b.at();
    b.raw(
        "a two-descriptor loop",
        vec![desc(hdr(k), 16, N, at + 1), desc(JUNK, 4096, N, at)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.raw(
        "a next index past the table",
        vec![desc(hdr(k), 16, N, QSIZE + 7)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    b.raw(
        "an indirect table of 20 bytes",
        vec![desc(table(k), 20, I, 0)],
        nothing(k),
    );
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    let mut t = Vec::new();
    t.extend(desc_bytes(hdr(k), 16, N, 1));
    t.extend(desc_bytes(table(k) + 0x1000, 48, I, 0));
    f.put(table(k), &t)?;
    b.raw(
        "an indirect table inside an indirect table",
        vec![desc(table(k), 32, I, 0)],
        nothing(k),
    );
    // 300 descriptors: header, 298 of 512 bytes, status; more than the
    // seg_max + 2 the device allows.
    let k = next(&f, VIRTIO_BLK_T_OUT, target)?;
    let mut t = Vec::new();
    t.extend(desc_bytes(hdr(k), 16, N, 1));
    for d in 1..299u16 {
        t.extend(desc_bytes(JUNK, 512, N, d + 1));
    }
    t.extend(desc_bytes(status(k), 1, W, 0));
    f.put(table(k), &t)?;
    b.raw(
        "an indirect chain of 300 descriptors",
        vec![desc(table(k), 300 * 16, I, 0)],
        nothing(k),
    );
    let k = next(&f, 77, target)?;
    b.linked(
        "unknown request type 77",
        &[(hdr(k), 16, 0), (status(k), 1, W)],
        Want::Status(status(k), VIRTIO_BLK_S_UNSUPP as u8, 1),
    );
    let id_at = next(&f, VIRTIO_BLK_T_GET_ID, 0)?;
    f.put(data(id_at), &[0xff; 32])?;
    b.linked(
        "GET_ID",
        &[
            (hdr(id_at), 16, 0),
            (data(id_at), ID_BYTES as u32, W),
            (status(id_at), 1, W),
        ],
        ok(id_at, ID_BYTES as u32),
    );
    f.run(&b)?;
    let id = f.get(data(id_at), 32)?;
    if id[ID_BYTES..].iter().any(|&b| b != 0xff) {
        return Err("GET_ID wrote past its 20-byte buffer".into());
    }
    let text: String = id[..ID_BYTES]
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| char::from(b))
        .collect();
    if !id[text.len()..ID_BYTES].iter().all(|&b| b == 0) {
        return Err(format!("GET_ID: {:?} is not NUL-padded", &id[..ID_BYTES]));
    }
    println!("get-id: {text}");
    let hostile = b.chains.len() - 1;

    // Batch 3, kicked again: the good data is there, the 512 sectors the
    // bad writes aimed at are still zero.
    let mut b = Batch::new();
    let reads = [(s, 4096u32), (s + 8, 4096), (target, 256 << 10)];
    let mut ks = Vec::new();
    for (sector, len) in reads {
        let k = next(&f, VIRTIO_BLK_T_IN, sector)?;
        f.put(data(k), &vec![0xa5; len as usize])?;
        b.linked(
            "good read",
            &[(hdr(k), 16, 0), (data(k), len, W), (status(k), 1, W)],
            ok(k, len),
        );
        ks.push(k);
    }
    f.run(&b)?;
    for (g, &k) in good.iter().zip(&ks) {
        if f.get(data(k), 4096)? != *g {
            return Err(format!("read {k}: the good write is not on the device"));
        }
    }
    for &k in &ks[2..] {
        if f.get(data(k), 256 << 10)?.iter().any(|&b| b != 0) {
            return Err(format!(
                "read {k}: a hostile write reached the device (not zero)"
            ));
        }
    }

    // Batch 4: the front end replaces the kick and call eventfds
    // (SET_VRING_CALL, SET_VRING_KICK, then SET_VRING_ENABLE, which makes
    // the back end watch the new kick) and asks to be signalled for the
    // next chain (the used-event index). The daemon must serve the kick
    // on the new fd and signal the new call eventfd, never the old one.
    let kick2 = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("kick: {e}"))?;
    let call2 = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("call: {e}"))?;
    fe.set_vring_call(0, &call2)
        .map_err(|e| format!("set_vring_call: {e}"))?;
    fe.set_vring_kick(0, &kick2)
        .map_err(|e| format!("set_vring_kick: {e}"))?;
    fe.set_vring_enable(0, true)
        .map_err(|e| format!("set_vring_enable: {e}"))?;
    // What the old call eventfd counted so far (nothing, or signals for
    // the batches before).
    let _ = call.read();
    let old_kick = std::mem::replace(&mut f.kick, kick2);
    f.put(
        f.q.avail_addr().0 + 4 + 2 * u64::from(QSIZE),
        &f.used.to_le_bytes(),
    )?;
    let mut b = Batch::new();
    let k = next(&f, VIRTIO_BLK_T_IN, s)?;
    f.put(data(k), &[0xa5; 4096])?;
    b.linked(
        "read after new eventfds",
        &[(hdr(k), 16, 0), (data(k), 4096, W), (status(k), 1, W)],
        ok(k, 4096),
    );
    f.run(&b)?;
    if f.get(data(k), 4096)? != good[0] {
        return Err("read after new eventfds: not the good write".into());
    }
    // The signal follows the used ring's update: give it a moment.
    let start = Instant::now();
    let signals = loop {
        match call2.read() {
            Ok(n) => break n,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("the new call eventfd was not signalled: {e}")),
        }
    };
    if let Ok(n) = call.read() {
        return Err(format!(
            "the replaced call eventfd was signalled {n} times after SET_VRING_CALL"
        ));
    }
    drop(old_kick);
    println!(
        "new eventfds: kick served, the new call eventfd signalled {signals} times, the old one not"
    );
    println!(
        "vhost-front: {hostile} hostile chains failed alone, GET_ID answered, the good \
         data read back and the hostile writes' target still zero"
    );
    drop(fe);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-front: {e}");
            ExitCode::FAILURE
        }
    }
}
