//! A plain model of a [`File`] and the property harness that checks the
//! real one against it op by op ([`run_file_ops`]), on the
//! [`RecordingDevice`] in a small cache. The proptest in
//! `mpage/tests/file_model.rs` and the cargo-fuzz target `file_ops` (in
//! `driver/fuzz`, whose corpus `cargo test` replays) both run it.
//!
//! The model is the file's bytes as the application wrote them, and which
//! of them are *uncertain*: bytes of a block whose write command failed
//! (the cache may still hold the new data, an eviction brings back the
//! old), and bytes that appeared while an operation failed. An uncertain
//! byte is not checked until a later write or a size change sets it.
//! Everything else is: every read (through `read_at`, `read_folios`'
//! views and `folio`) returns exactly the model's bytes; an operation
//! that saw no failed command succeeds in full; a failed command makes an
//! operation fail or fall short, never return other bytes; the next
//! `fsync` after a failed write reports it; and after an `fsync` that
//! succeeds the device holds the model's bytes.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::fmt::Write as _;
use std::sync::Arc;

use pagecache::{BlockSize, DirtyLimits, PageCache, VecMemory};

use crate::device::{BioOp, BlockDevice, DeviceError, Geometry, status};
use crate::file::File;
use crate::map::IdentityMapper;
use crate::recording::{Fault, RecordingDevice};

/// File offsets the operations use (writes and size changes stay below).
pub const MAX_POS: u64 = 96 * 1024;
/// LBA size of the device.
const LBA: u64 = 512;
/// The byte the device holds before anything is written: old data that
/// must never show through.
const OLD: u8 = 0xA5;

/// One step of [`run_file_ops`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// `write_at(pos, len bytes of data(seed))`.
    Write {
        /// Offset.
        pos: u64,
        /// Length (at least 1).
        len: usize,
        /// Seed of the bytes.
        seed: u8,
    },
    /// `read_at(pos, len)`.
    Read {
        /// Offset.
        pos: u64,
        /// Length.
        len: usize,
    },
    /// `read_folios(pos, len)`, each view read over the asked range.
    ReadViews {
        /// Offset.
        pos: u64,
        /// Length.
        len: usize,
    },
    /// `folio(pos)`, the view read whole.
    Folio(u64),
    /// `set_len(len)`.
    SetLen(u64),
    /// `fsync`.
    Fsync,
    /// Evict everything the cache can drop.
    Evict,
    /// The next `times` commands of this op (a write if `write`, else a
    /// read) overlapping `blocks` LBAs from `lba` fail with Internal Error.
    Fault {
        /// Writes (else reads).
        write: bool,
        /// First LBA.
        lba: u64,
        /// LBAs.
        blocks: u64,
        /// Commands to fail (1..=3).
        times: usize,
    },
}

/// The cache the file runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileConfig {
    /// The file's block size (512, 1024 or 4096).
    pub block_size: usize,
    /// The cache's budget in bytes (48 KiB forces writeback and eviction).
    pub budget: u64,
}

/// Little-endian reader over fuzz bytes (0 past the end).
struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u64 {
        u64::from(u16::from_le_bytes([self.u8(), self.u8()]))
    }
    fn u24(&mut self) -> u64 {
        u64::from(u32::from_le_bytes([self.u8(), self.u8(), self.u8(), 0]))
    }
}

impl FileOp {
    /// Decodes fuzzer bytes: the first byte chooses the [`FileConfig`],
    /// the rest are ops. Every byte string decodes.
    pub fn decode(bytes: &[u8]) -> (FileConfig, Vec<FileOp>) {
        let mut it = Bytes(bytes.iter());
        let knobs = it.u8();
        let config = FileConfig {
            block_size: [512, 1024, 4096, 4096][usize::from(knobs & 3)],
            budget: if knobs & 4 == 0 { 48 << 10 } else { 1 << 20 },
        };
        let mut ops = Vec::new();
        while let Some(&tag) = it.0.next() {
            let op = match tag % 16 {
                0..=3 => FileOp::Write {
                    pos: it.u24() % MAX_POS,
                    len: (it.u16() % 12_000) as usize + 1,
                    seed: it.u8(),
                },
                4..=6 => FileOp::Read {
                    pos: it.u24() % (MAX_POS + 8192),
                    len: (it.u16() % 20_000) as usize,
                },
                7 | 8 => FileOp::ReadViews {
                    pos: it.u24() % (MAX_POS + 8192),
                    len: (it.u16() % 20_000) as usize,
                },
                9 => FileOp::Folio(it.u24() % (MAX_POS + 8192)),
                10 => FileOp::SetLen(it.u24() % MAX_POS),
                11 | 12 => FileOp::Fsync,
                13 => FileOp::Evict,
                _ => FileOp::Fault {
                    write: tag & 0x80 != 0,
                    lba: it.u16() % (MAX_POS / LBA),
                    blocks: u64::from(it.u8() % 32) + 1,
                    times: usize::from(it.u8() % 3) + 1,
                },
            };
            ops.push(op);
        }
        (config, ops)
    }
}

/// The bytes a write with `seed` puts at `pos`.
pub fn data(seed: u8, pos: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ ((pos as usize + i) % 253) as u8)
        .collect()
}

/// What a [`run_file_ops`] run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    /// Operations run.
    pub ops: usize,
    /// Failed device commands.
    pub failed_commands: usize,
    /// Operations that returned an error.
    pub failed_ops: usize,
    /// Bytes compared against the model (reads and device images).
    pub bytes_checked: u64,
}

/// The file as written, and which bytes are uncertain.
#[derive(Debug, Default)]
struct Model {
    bytes: Vec<u8>,
    uncertain: Vec<bool>,
}

impl Model {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn resize(&mut self, len: u64, uncertain: bool) {
        self.bytes.resize(len as usize, 0);
        self.uncertain.resize(len as usize, uncertain);
    }

    fn write(&mut self, pos: u64, data: &[u8]) {
        let end = pos as usize + data.len();
        if self.bytes.len() < end {
            // The gap from the old EOF reads as zeros.
            self.resize(end as u64, false);
        }
        self.bytes[pos as usize..end].copy_from_slice(data);
        self.uncertain[pos as usize..end].fill(false);
    }

    /// Marks `[start, end)` (clipped to the file) uncertain.
    fn taint(&mut self, start: u64, end: u64) {
        let end = (end as usize).min(self.uncertain.len());
        if let Some(s) = self.uncertain.get_mut(start as usize..end) {
            s.fill(true);
        }
    }

    /// Compares `got` with the model at `pos`; the first certain byte that
    /// differs, if any.
    fn differs(&self, pos: u64, got: &[u8]) -> Option<u64> {
        got.iter().enumerate().find_map(|(i, &b)| {
            let at = pos as usize + i;
            match (self.bytes.get(at), self.uncertain.get(at)) {
                (Some(&want), Some(false)) if want != b => Some(at as u64),
                (None, _) => Some(at as u64),
                _ => None,
            }
        })
    }
}

struct Run {
    file: File,
    cache: Arc<PageCache>,
    dev: RecordingDevice,
    model: Model,
    budget: u64,
    /// A write command failed and no fsync has reported it yet.
    unreported_write_error: bool,
    report: FileReport,
}

type Broken = String;

impl Run {
    /// The failed commands since the last look (the log is cleared):
    /// whether any failed, and the byte ranges of the failed writes, for
    /// [`Run::taint`] once the operation's own effect is in the model.
    fn failures(&mut self) -> (bool, Vec<(u64, u64)>) {
        let mut failed = false;
        let mut writes = Vec::new();
        for c in self.dev.commands() {
            if matches!(c.result, Some(Err(_))) {
                failed = true;
                self.report.failed_commands += 1;
                if c.op == BioOp::Write {
                    self.unreported_write_error = true;
                    writes.push((c.lba * LBA, (c.lba + c.blocks) * LBA));
                }
            }
        }
        self.dev.clear_log();
        (failed, writes)
    }

    /// Marks what failed writes covered uncertain.
    fn taint(&mut self, writes: &[(u64, u64)]) {
        for &(start, end) in writes {
            self.model.taint(start, end);
        }
    }

    /// After an operation: the size agrees with the model (a failed one
    /// may have changed it: what it added is uncertain).
    fn sync_size(&mut self, failed: bool, what: &str) -> Result<(), Broken> {
        let size = self.file.size();
        if size != self.model.len() {
            if !failed {
                return Err(format!(
                    "{what}: file size {size}, model {}",
                    self.model.len()
                ));
            }
            let old = self.model.len();
            self.model.resize(size, true);
            self.model.taint(old, size);
        }
        Ok(())
    }

    fn check_read(&mut self, pos: u64, got: &[u8], what: &str) -> Result<(), Broken> {
        if let Some(at) = self.model.differs(pos, got) {
            return Err(format!("{what}: byte {at} differs from the model"));
        }
        self.report.bytes_checked += got.len() as u64;
        Ok(())
    }

    fn step(&mut self, op: &FileOp) -> Result<(), Broken> {
        let mut d = self.dev.clone();
        let what = format!("{op:?}");
        let size = self.file.size();
        match *op {
            FileOp::Write { pos, len, seed } => {
                let buf = data(seed, pos, len);
                let result = self.file.write_at(&mut d, pos, &buf);
                let (failed, writes) = self.failures();
                match result {
                    Ok(n) if n == len || (failed && n < len) => {
                        if pos > size {
                            // Zeroing the gap may have met the failure.
                            self.model.resize(pos, failed);
                        }
                        self.model.write(pos, &buf[..n]);
                    }
                    Ok(n) => return Err(format!("{what}: wrote {n} of {len}")),
                    Err(e) if failed => {
                        self.report.failed_ops += 1;
                        log::debug!("{what}: {e}");
                    }
                    Err(e) => return Err(format!("{what}: {e} with no failed command")),
                }
                // A failed write may have carried this op's own data.
                self.taint(&writes);
                self.sync_size(failed, &what)?;
            }
            FileOp::Read { pos, len } => {
                let mut buf = vec![0x5A; len];
                let result = self.file.read_at(&mut d, pos, &mut buf);
                let (failed, writes) = self.failures();
                self.taint(&writes);
                let want = self.model.len().saturating_sub(pos).min(len as u64) as usize;
                match result {
                    Ok(n) if n == want || (failed && n < want) => {
                        self.check_read(pos, &buf[..n], &what)?
                    }
                    Ok(n) => return Err(format!("{what}: read {n}, the model has {want}")),
                    Err(_) if failed => self.report.failed_ops += 1,
                    Err(e) => return Err(format!("{what}: {e} with no failed command")),
                }
                self.sync_size(failed, &what)?;
            }
            FileOp::ReadViews { pos, len } => {
                let result = self.file.read_folios(&mut d, pos, len);
                let (failed, writes) = self.failures();
                self.taint(&writes);
                let end = self.model.len().min(pos.saturating_add(len as u64));
                match result {
                    Ok(views) => {
                        let mut at = pos;
                        for v in &views {
                            if v.pos() > at || v.pos() + v.len() as u64 <= at {
                                return Err(format!(
                                    "{what}: view {}+{} does not continue at {at}",
                                    v.pos(),
                                    v.len()
                                ));
                            }
                            let to = end.min(v.pos() + v.len() as u64);
                            let mut buf = vec![0u8; (to - at) as usize];
                            v.read((at - v.pos()) as usize, &mut buf)
                                .map_err(|e| format!("{what}: view read: {e}"))?;
                            self.check_read(at, &buf, &what)?;
                            at = to;
                        }
                        if at < end && !failed {
                            return Err(format!("{what}: views end at {at}, not {end}"));
                        }
                    }
                    Err(_) if failed => self.report.failed_ops += 1,
                    Err(e) => return Err(format!("{what}: {e} with no failed command")),
                }
                self.sync_size(failed, &what)?;
            }
            FileOp::Folio(pos) => {
                let result = self.file.folio(&mut d, pos);
                let (failed, writes) = self.failures();
                self.taint(&writes);
                match result {
                    Ok(Some(v)) => {
                        if pos < v.pos()
                            || pos >= v.pos() + v.len() as u64
                            || v.pos() + v.len() as u64 > self.model.len()
                        {
                            return Err(format!("{what}: view {}+{}", v.pos(), v.len()));
                        }
                        let mut buf = vec![0u8; v.len()];
                        v.read(0, &mut buf)
                            .map_err(|e| format!("{what}: view read: {e}"))?;
                        self.check_read(v.pos(), &buf, &what)?;
                    }
                    Ok(None) if pos >= self.model.len() => {}
                    Ok(None) => return Err(format!("{what}: no view inside the file")),
                    Err(_) if failed => self.report.failed_ops += 1,
                    Err(e) => return Err(format!("{what}: {e} with no failed command")),
                }
                self.sync_size(failed, &what)?;
            }
            FileOp::SetLen(len) => {
                let result = self.file.set_len(&mut d, len);
                let (failed, writes) = self.failures();
                match result {
                    Ok(()) => {
                        let old = self.model.len();
                        self.model.resize(len, false);
                        if len > old {
                            self.model.uncertain[old as usize..].fill(false);
                        }
                    }
                    Err(_) if failed => self.report.failed_ops += 1,
                    Err(e) => return Err(format!("{what}: {e} with no failed command")),
                }
                self.taint(&writes);
                self.sync_size(failed, &what)?;
            }
            FileOp::Fsync => {
                let result = self.file.fsync(&mut d);
                let (failed, writes) = self.failures();
                self.taint(&writes);
                match result {
                    Ok(()) if self.unreported_write_error => {
                        return Err(format!("{what}: a failed write was not reported"));
                    }
                    Ok(()) => self.check_device(&what)?,
                    Err(_) if self.unreported_write_error => {
                        self.report.failed_ops += 1;
                        self.unreported_write_error = false;
                    }
                    Err(e) => return Err(format!("{what}: {e} with no failed write")),
                }
                self.sync_size(failed, &what)?;
            }
            FileOp::Evict => {
                self.cache.shrink(u64::MAX);
            }
            FileOp::Fault {
                write,
                lba,
                blocks,
                times,
            } => {
                let op = if write { BioOp::Write } else { BioOp::Read };
                self.dev
                    .inject(Fault::status(op, lba..lba + blocks, status::INTERNAL).times(times));
            }
        }
        if self.file.size() != self.model.len() {
            return Err(format!(
                "{what}: file size {}, model {}",
                self.file.size(),
                self.model.len()
            ));
        }
        if self.cache.used() >= self.budget + 4096 {
            return Err(format!("{what}: cache over its budget"));
        }
        if d.in_flight() != 0 {
            return Err(format!("{what}: {} commands left in flight", d.in_flight()));
        }
        Ok(())
    }

    /// The device holds the model's certain bytes.
    fn check_device(&mut self, what: &str) -> Result<(), Broken> {
        let disk = self.dev.read_disk(0, self.model.bytes.len());
        if let Some(at) = self.model.differs(0, &disk) {
            return Err(format!("{what}: device byte {at} differs from the model"));
        }
        self.report.bytes_checked += disk.len() as u64;
        Ok(())
    }

    /// Without faults: fsync, the device holds the model, and a cold read
    /// of the whole file agrees.
    fn finish(&mut self) -> Result<(), Broken> {
        self.dev.clear_faults();
        let mut d = self.dev.clone();
        let result = self.file.fsync(&mut d);
        let (_, writes) = self.failures();
        self.taint(&writes);
        match result {
            Ok(()) if self.unreported_write_error => {
                return Err("final fsync: a failed write was not reported".into());
            }
            Ok(()) => {}
            Err(_) if self.unreported_write_error => {
                // Reported now; what was uncertain is written back by
                // nothing (no retry of failed writeback, R61), so the
                // device is checked after a second fsync.
                self.file
                    .fsync(&mut d)
                    .map_err(|e| format!("second fsync: {e}"))?;
            }
            Err(e) => return Err(format!("final fsync: {e} with no failed write")),
        }
        self.check_device("final fsync")?;
        self.cache.shrink(u64::MAX);
        let mut all = vec![0; self.model.bytes.len() + 10];
        let n = self
            .file
            .read_at(&mut d, 0, &mut all)
            .map_err(|e| format!("cold read: {e}"))?;
        if n != self.model.bytes.len() {
            return Err(format!("cold read: {n} bytes of {}", self.model.len()));
        }
        self.check_read(0, &all[..n], "cold read")
    }
}

/// Runs `ops` on a [`File`] over a fresh [`RecordingDevice`] (512-byte
/// LBAs, 64 KiB max transfer, old data everywhere) in a cache of
/// `config`, checking each against the model (see the module
/// documentation), then fsyncs without faults and checks the device and a
/// cold read. Returns what it saw, or the first broken property with the
/// ops that led to it.
pub fn run_file_ops(config: FileConfig, ops: &[FileOp]) -> Result<FileReport, String> {
    let g =
        Geometry::new(LBA as u32, 2 * MAX_POS / LBA + 64, 64 * 1024).map_err(|e| e.to_string())?;
    let dev = RecordingDevice::new(g).map_err(|e: DeviceError| e.to_string())?;
    dev.write_disk(0, &vec![OLD; g.capacity_bytes() as usize]);
    let limits =
        DirtyLimits::from_ratios(config.budget, 25, 50).map_err(|e| format!("limits: {e}"))?;
    let cache = Arc::new(PageCache::with_limits(
        Arc::new(VecMemory::new()),
        config.budget,
        limits,
    ));
    let mapper = Arc::new(IdentityMapper::namespace(&g));
    let bs = BlockSize::new(config.block_size).map_err(|e| format!("block size: {e}"))?;
    let file = File::open(cache.clone(), mapper, bs, 0).map_err(|e| e.to_string())?;
    let mut run = Run {
        file,
        cache,
        dev,
        model: Model::default(),
        budget: config.budget,
        unreported_write_error: false,
        report: FileReport::default(),
    };
    let context = |step: usize, broken: String| {
        let mut s = format!("step {step}: {broken}\n{config:?}\nops:");
        for op in &ops[..=step.min(ops.len().saturating_sub(1))] {
            let _ = write!(s, "\n  {op:?}");
        }
        s
    };
    for (step, op) in ops.iter().enumerate() {
        run.step(op).map_err(|b| context(step, b))?;
        run.report.ops += 1;
    }
    run.finish().map_err(|b| context(ops.len(), b))?;
    Ok(run.report)
}
