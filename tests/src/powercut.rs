//! The power-cut test's workload and checker, shared by the guest
//! (`guest-check power-cut`) and the host.
//!
//! # The workload (guest)
//!
//! Two threads each run a seeded sequence of [`crate::model::ops`]
//! (buffered writes and overwrites, reads, `set_len`, `fsync`) on their
//! own page-cache `File` (one shared cache), each file mapped onto its own
//! region of namespace 1; a third thread writes seeded blocks on the raw
//! driver in generations, several in flight, waits for them, sends Flush.
//! After every fsync and every Flush that returned, the thread writes a
//! *mark*: one block in the mark region naming the thread and the op (or
//! generation). Marks are plain writes, so they land in the write log in
//! the order QEMU completed them.
//!
//! # What the log proves
//!
//! blklogwrites gives a write its place in the log once the image has
//! completed it, and the guest sees the completion only after that. A mark
//! is written after its fsync or Flush returned, so:
//! * a cut after a mark's entry is a cut after the fsync returned: the
//!   fsync's promise must hold there ([`Expectations`] knows the File
//!   model at every fsync);
//! * every write of the thread logged before its *next* mark carries data
//!   from ops up to that next fsync at the latest (the ops after it start
//!   after the next mark completed), so a byte that differs from the
//!   promised value must hold a value an op in between gave it.
//!
//! # Cuts ([`check_log`])
//!
//! A cut is a log prefix: everything up to its last flush is on the image,
//! the writes after it are kept in some subset (all dropped, all kept, or
//! each with probability 1/2, from a seeded RNG). Checked: every flush
//! point, right after every mark with everything unflushed dropped, and
//! random cuts.

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::logwrites::{Entry, EntryKind, WriteLog};
use crate::model::{self, FileOp};

/// The workload's LBA size (the namespace must use it).
pub const LBA: u64 = 512;
/// Page-cache file threads.
pub const FILES: usize = 2;
/// Bytes of namespace 1 each file thread's file is mapped onto; thread `t`
/// starts at byte `t * FILE_REGION`.
pub const FILE_REGION: u64 = 4 << 20;
/// The raw thread's blocks.
pub const RAW: Range<u64> = (8 << 20)..(9 << 20);
/// The marks: thread `t`'s `n`-th mark is at block
/// `MARKS.start / LBA + t * MARK_SLOTS + n`.
pub const MARKS: Range<u64> = (12 << 20)..(14 << 20);
/// Mark blocks per thread.
pub const MARK_SLOTS: u64 = 1024;
/// The smallest namespace the workload fits.
pub const DISK_SIZE: u64 = 16 << 20;
/// The raw thread's number in marks.
pub const RAW_THREAD: u32 = FILES as u32;
const MARK_MAGIC: &[u8; 8] = b"PWRCUTMK";

/// The workload's parameters (the guest prints them, the host rebuilds the
/// same sequences from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Seed of every sequence.
    pub seed: u64,
    /// File operations per file thread.
    pub ops: usize,
    /// Largest file size.
    pub max_size: u64,
    /// Raw generations (writes, Flush, mark).
    pub raw_gens: usize,
}

impl Params {
    /// The file thread `t`'s operations (they end with an fsync).
    pub fn file_ops(&self, t: usize) -> Vec<FileOp> {
        model::ops(self.seed * 10 + t as u64, self.ops, self.max_size)
    }

    /// The raw thread's generations.
    pub fn raw_plan(&self) -> Vec<Vec<RawWrite>> {
        raw_plan(self.seed, self.raw_gens)
    }

    /// The number that tells this run's marks from any other data.
    pub fn nonce(&self) -> u64 {
        self.seed ^ 0x5057_5243_5554_0000
    }
}

/// One raw write: `blocks` blocks from `lba` of [`model::data`]`(seed, ..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawWrite {
    /// First block.
    pub lba: u64,
    /// Blocks.
    pub blocks: u64,
    /// Seed of the data.
    pub seed: u64,
}

impl RawWrite {
    /// The bytes it writes.
    pub fn data(&self) -> Vec<u8> {
        model::data(self.seed, (self.blocks * LBA) as usize)
    }
}

/// `gens` generations of up to 8 writes of 1 to 16 blocks in [`RAW`], not
/// overlapping within a generation (they are in flight together);
/// generations overwrite each other.
pub fn raw_plan(seed: u64, gens: usize) -> Vec<Vec<RawWrite>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7261_7700);
    let first = RAW.start / LBA;
    let blocks = (RAW.end - RAW.start) / LBA;
    (0..gens)
        .map(|g| {
            let mut gen_writes: Vec<RawWrite> = Vec::new();
            for i in 0..8u64 {
                let n = rng.random_range(1..=16u64);
                let lba = first + rng.random_range(0..blocks - n);
                if gen_writes
                    .iter()
                    .any(|w| lba < w.lba + w.blocks && w.lba < lba + n)
                {
                    continue;
                }
                gen_writes.push(RawWrite {
                    lba,
                    blocks: n,
                    seed: seed.wrapping_mul(7919) ^ ((g as u64) << 8 | i),
                });
            }
            gen_writes
        })
        .collect()
}

/// A mark: `thread`'s fsync at op `seq` (file threads) or Flush after
/// generation `seq` (the raw thread) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// 0 and 1: file threads; [`RAW_THREAD`]: the raw thread.
    pub thread: u32,
    /// Op index or generation.
    pub seq: u64,
}

impl Mark {
    /// The block the thread's `n`-th mark goes to.
    pub fn lba(thread: u32, n: u64) -> u64 {
        MARKS.start / LBA + u64::from(thread) * MARK_SLOTS + n
    }

    /// The mark's block.
    pub fn encode(&self, nonce: u64) -> Vec<u8> {
        let mut b = vec![0u8; LBA as usize];
        b[..8].copy_from_slice(MARK_MAGIC);
        b[8..12].copy_from_slice(&self.thread.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&nonce.to_le_bytes());
        b
    }

    /// Reads a mark block; None if it is not one of this run's.
    pub fn decode(b: &[u8], nonce: u64) -> Option<Mark> {
        if b.len() != LBA as usize || &b[..8] != MARK_MAGIC || b[24..32] != nonce.to_le_bytes() {
            return None;
        }
        Some(Mark {
            thread: u32::from_le_bytes(b[8..12].try_into().ok()?),
            seq: u64::from_le_bytes(b[16..24].try_into().ok()?),
        })
    }
}

/// The File model of one file thread.
#[derive(Debug)]
struct FileHistory {
    ops: Vec<FileOp>,
    /// Each write's bytes (None for other ops).
    data: Vec<Option<Vec<u8>>>,
    /// Op index of each fsync, in order.
    fsyncs: Vec<usize>,
    /// The file after each fsync's op (what it made durable).
    snapshots: Vec<Vec<u8>>,
}

impl FileHistory {
    fn new(ops: Vec<FileOp>) -> FileHistory {
        let data: Vec<Option<Vec<u8>>> = ops
            .iter()
            .map(|op| match *op {
                FileOp::Write { len, seed, .. } => Some(model::data(seed, len)),
                _ => None,
            })
            .collect();
        let mut bytes = Vec::new();
        let (mut fsyncs, mut snapshots) = (Vec::new(), Vec::new());
        for (i, op) in ops.iter().enumerate() {
            apply(&mut bytes, op, data[i].as_deref());
            if *op == FileOp::Fsync {
                fsyncs.push(i);
                snapshots.push(bytes.clone());
            }
        }
        FileHistory {
            ops,
            data,
            fsyncs,
            snapshots,
        }
    }
}

/// [`model::Model::apply`] with the write's bytes given.
fn apply(bytes: &mut Vec<u8>, op: &FileOp, data: Option<&[u8]>) {
    match *op {
        FileOp::Write { pos, len, .. } => {
            let end = pos as usize + len;
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            if let Some(d) = data {
                bytes[pos as usize..end].copy_from_slice(d);
            }
        }
        FileOp::SetLen(len) => bytes.resize(len as usize, 0),
        FileOp::Read { .. } | FileOp::Fsync => {}
    }
}

/// Everything the workload promised, rebuilt from its parameters.
#[derive(Debug)]
pub struct Expectations {
    params: Params,
    files: Vec<FileHistory>,
    raw: Vec<Vec<(RawWrite, Vec<u8>)>>,
}

impl Expectations {
    /// Rebuilds the workload of `params`.
    pub fn new(params: Params) -> Expectations {
        Expectations {
            files: (0..FILES)
                .map(|t| FileHistory::new(params.file_ops(t)))
                .collect(),
            raw: params
                .raw_plan()
                .into_iter()
                .map(|g| g.into_iter().map(|w| (w, w.data())).collect())
                .collect(),
            params,
        }
    }

    /// The marks thread `t` writes, in order.
    fn expected_marks(&self, thread: u32) -> Vec<u64> {
        match self.files.get(thread as usize) {
            Some(f) => f.fsyncs.iter().map(|&i| i as u64).collect(),
            None => (0..self.raw.len() as u64).collect(),
        }
    }

    /// Checks file thread `t`'s region of `image` given that its `m`-th
    /// fsync had returned: Ok(bytes checked) or what is wrong.
    fn check_file(&self, t: usize, m: usize, image: &[u8]) -> Result<Checked, String> {
        let f = &self.files[t];
        let base = &f.snapshots[m];
        let start = t as u64 * FILE_REGION;
        let region = image
            .get(start as usize..start as usize + base.len())
            .ok_or_else(|| format!("file {t}: {} bytes do not fit the image", base.len()))?;
        let mut wrong: Vec<usize> = Vec::new();
        for (c, (got, want)) in region.chunks(4096).zip(base.chunks(4096)).enumerate() {
            if got != want {
                wrong.extend(
                    (0..got.len())
                        .filter(|&i| got[i] != want[i])
                        .map(|i| c * 4096 + i),
                );
            }
        }
        let bytes = base.len() as u64;
        if wrong.is_empty() {
            return Ok(Checked { bytes, newer: 0 });
        }
        let newer = wrong.len() as u64;
        // A later value is fine if an op before the next fsync gave it.
        let next = f.fsyncs.get(m + 1).copied().unwrap_or(f.ops.len() - 1);
        let mut state = base.clone();
        for i in f.fsyncs[m] + 1..=next {
            apply(&mut state, &f.ops[i], f.data[i].as_deref());
            wrong.retain(|&b| {
                let justified = match state.get(b) {
                    Some(&v) => v == region[b],
                    // Past EOF at some point: zeroed (truncate_page, or a
                    // gap zeroed later) is fine too.
                    None => region[b] == 0,
                };
                !justified
            });
            if wrong.is_empty() {
                return Ok(Checked { bytes, newer });
            }
        }
        let b = wrong[0];
        Err(format!(
            "file {t}: {} of the {} bytes its fsync at op {} made durable are wrong; first: file \
             byte {b} (disk byte {}) holds {:#04x}, the model says {:#04x}, and no op up to the \
             next fsync (op {next}) wrote that",
            wrong.len(),
            base.len(),
            f.fsyncs[m],
            start + b as u64,
            region[b],
            base[b]
        ))
    }

    /// Checks the raw blocks given that the Flush after generation `g`
    /// had returned.
    fn check_raw(&self, g: usize, image: &[u8]) -> Result<Checked, String> {
        let first = RAW.start / LBA;
        let blocks = ((RAW.end - RAW.start) / LBA) as usize;
        // The last write of each block up to generation g.
        let mut owner: Vec<Option<(usize, usize)>> = vec![None; blocks];
        for (gi, writes) in self.raw[..=g].iter().enumerate() {
            for (wi, (w, _)) in writes.iter().enumerate() {
                for b in w.lba..w.lba + w.blocks {
                    owner[(b - first) as usize] = Some((gi, wi));
                }
            }
        }
        let mut checked = Checked::default();
        for (i, own) in owner.iter().enumerate() {
            let Some((gi, wi)) = *own else { continue };
            let b = first + i as u64;
            let at = (b * LBA) as usize;
            let got = &image[at..at + LBA as usize];
            let (w, d) = &self.raw[gi][wi];
            checked.bytes += LBA;
            if got == block_of(w, d, b) {
                continue;
            }
            checked.newer += LBA;
            let later = self.raw.get(g + 1).into_iter().flatten().any(|(w2, d2)| {
                (w2.lba..w2.lba + w2.blocks).contains(&b) && got == block_of(w2, d2, b)
            });
            if !later {
                return Err(format!(
                    "raw: block {b} does not hold generation {gi}'s write ({}+{}), durable since \
                     the Flush after generation {g}, nor a write of generation {}",
                    w.lba,
                    w.blocks,
                    g + 1
                ));
            }
        }
        Ok(checked)
    }
}

/// What one check compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Checked {
    /// Bytes under a promise.
    bytes: u64,
    /// Of them, holding a newer value than the promised one (written
    /// before the thread's next fsync or Flush).
    newer: u64,
}

impl std::ops::AddAssign for Checked {
    fn add_assign(&mut self, o: Checked) {
        self.bytes += o.bytes;
        self.newer += o.newer;
    }
}

/// Block `b`'s bytes in the data `d` of write `w`.
fn block_of<'a>(w: &RawWrite, d: &'a [u8], b: u64) -> &'a [u8] {
    let o = ((b - w.lba) * LBA) as usize;
    &d[o..o + LBA as usize]
}

/// A mark found in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LoggedMark {
    entry: usize,
    mark: Mark,
    /// Which of the thread's marks (0 for its first).
    ordinal: usize,
}

/// Why the log does not fit the workload at all (as opposed to a cut
/// failing its check).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    /// A write outside the regions the workload uses, or past the disk.
    #[error("log entry {entry}: a write of bytes {start}..{end} outside the workload's regions")]
    StrayWrite {
        /// The entry.
        entry: usize,
        /// First byte.
        start: u64,
        /// End.
        end: u64,
    },
    /// Something in the mark region that is not the expected mark.
    #[error("log entry {entry}: {what}")]
    BadMark {
        /// The entry.
        entry: usize,
        /// What is wrong.
        what: String,
    },
    /// A thread's marks are not all in the log.
    #[error("thread {thread}: {found} marks in the log, the workload writes {expected}")]
    MissingMarks {
        /// The thread.
        thread: u32,
        /// Marks found.
        found: usize,
        /// Marks expected.
        expected: usize,
    },
    /// An entry that cannot be applied to the image (past its end).
    #[error("log entry {entry}: {what}")]
    Replay {
        /// The entry.
        entry: usize,
        /// What is wrong.
        what: String,
    },
    /// The log's sector size is not the workload's.
    #[error("the log's sectors are {0} bytes; the workload needs {LBA}")]
    SectorSize(u32),
}

/// What the cuts found.
#[derive(Debug, Clone, Default)]
pub struct CutReport {
    /// The RNG seed of the random cuts.
    pub seed: u64,
    /// Cuts checked in all.
    pub cuts: usize,
    /// Of them: right after a flush, nothing pending.
    pub flush_points: usize,
    /// Of them: right after a mark, every unflushed write dropped.
    pub mark_cuts: usize,
    /// Of them: random.
    pub random_cuts: usize,
    /// Unflushed writes the cuts dropped or tore, in all.
    pub dropped_writes: usize,
    /// Of them: torn (some sectors kept).
    pub torn_writes: usize,
    /// Write entries in the log.
    pub writes: usize,
    /// Flush entries in the log.
    pub flushes: usize,
    /// Marks in the log.
    pub marks: usize,
    /// Bytes compared with a promise, over all cuts.
    pub bytes_checked: u64,
    /// Of them, bytes that held a value newer than the promised one (an
    /// op before the thread's next fsync or Flush wrote it), over all cuts.
    pub newer_bytes: u64,
    /// Cuts that broke a promise: a description each.
    pub violations: Vec<String>,
}

/// What a cut keeps of one unflushed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Lost.
    Drop,
    /// On the image.
    Whole,
    /// Torn: each of its sectors kept or lost (the RNG seed).
    Sectors(u64),
}

/// One cut: a prefix of `len` entries whose last flush is before `pending`
/// (the first entry not known durable); `keep` says what is left of each
/// of the entries `pending..len`.
#[derive(Debug, Clone)]
struct Cut {
    what: String,
    pending: usize,
    len: usize,
    keep: Vec<Keep>,
}

/// Finds the marks in `log` and checks them against the workload.
fn find_marks(log: &WriteLog, exp: &Expectations) -> Result<Vec<LoggedMark>, CheckError> {
    let nonce = exp.params.nonce();
    let files_end = FILE_REGION * FILES as u64;
    let mut found: Vec<LoggedMark> = Vec::new();
    let mut counts = [0usize; FILES + 1];
    for e in &log.entries {
        if e.kind != EntryKind::Write {
            continue;
        }
        let r = e.byte_range(log.sector_size);
        let inside = |region: &Range<u64>| region.start <= r.start && r.end <= region.end;
        if r.end <= files_end || inside(&RAW) {
            continue;
        }
        if !inside(&MARKS) {
            return Err(CheckError::StrayWrite {
                entry: e.index,
                start: r.start,
                end: r.end,
            });
        }
        let bad = |what: String| CheckError::BadMark {
            entry: e.index,
            what,
        };
        let mark = Mark::decode(log.data(e), nonce)
            .ok_or_else(|| bad(format!("bytes {}..{} are not a mark", r.start, r.end)))?;
        let n = counts
            .get_mut(mark.thread as usize)
            .ok_or_else(|| bad(format!("a mark of thread {}", mark.thread)))?;
        let want = exp.expected_marks(mark.thread);
        if want.get(*n) != Some(&mark.seq) || Mark::lba(mark.thread, *n as u64) * LBA != r.start {
            return Err(bad(format!(
                "thread {}'s mark {} is for op/generation {} at byte {}; expected {:?} at byte {}",
                mark.thread,
                *n,
                mark.seq,
                r.start,
                want.get(*n),
                Mark::lba(mark.thread, *n as u64) * LBA
            )));
        }
        found.push(LoggedMark {
            entry: e.index,
            mark,
            ordinal: *n,
        });
        *n += 1;
    }
    for (thread, &n) in counts.iter().enumerate() {
        let expected = exp.expected_marks(thread as u32).len();
        if n != expected {
            return Err(CheckError::MissingMarks {
                thread: thread as u32,
                found: n,
                expected,
            });
        }
    }
    Ok(found)
}

/// Checks every promise whose mark is among the first `len` entries.
fn check_cut(
    exp: &Expectations,
    marks: &[LoggedMark],
    len: usize,
    image: &[u8],
) -> Result<Checked, String> {
    let mut checked = Checked::default();
    // Every thread is checked, so that one thread's failure does not hide
    // another's.
    let mut failures = Vec::new();
    for thread in 0..=RAW_THREAD {
        let Some(last) = marks
            .iter()
            .rfind(|m| m.entry < len && m.mark.thread == thread)
        else {
            continue;
        };
        let result = if thread == RAW_THREAD {
            exp.check_raw(last.ordinal, image)
        } else {
            exp.check_file(thread as usize, last.ordinal, image)
        };
        match result {
            Ok(c) => checked += c,
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(checked)
    } else {
        Err(failures.join("; "))
    }
}

/// Rebuilds the image at every flush point, right after every mark with
/// all unflushed writes dropped, and at `random` random cut points (RNG
/// `seed`), and checks each against the workload's promises.
pub fn check_log(
    log: &WriteLog,
    exp: &Expectations,
    random: usize,
    seed: u64,
) -> Result<CutReport, CheckError> {
    if u64::from(log.sector_size) != LBA {
        return Err(CheckError::SectorSize(log.sector_size));
    }
    let marks = find_marks(log, exp)?;
    let entries = &log.entries;
    let flushes: Vec<usize> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Flush)
        .map(|e| e.index)
        .collect();
    // The first entry not covered by a flush before position p.
    let pending_at =
        |p: usize| -> usize { flushes.iter().rev().find(|&&f| f < p).map_or(0, |&f| f + 1) };
    let mut cuts: Vec<Cut> = Vec::new();
    for &f in &flushes {
        cuts.push(Cut {
            what: format!("flush point after entry {f}"),
            pending: f + 1,
            len: f + 1,
            keep: Vec::new(),
        });
    }
    for m in &marks {
        let pending = pending_at(m.entry + 1);
        cuts.push(Cut {
            what: format!(
                "after the mark of thread {} seq {} (entry {}), unflushed writes dropped",
                m.mark.thread, m.mark.seq, m.entry
            ),
            pending,
            len: m.entry + 1,
            keep: vec![Keep::Drop; m.entry + 1 - pending],
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let writes_at: Vec<usize> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Write)
        .map(|e| e.index)
        .collect();
    for _ in 0..random {
        if writes_at.is_empty() {
            break;
        }
        // A random write is the last entry of the prefix.
        let len = writes_at[rng.random_range(0..writes_at.len())] + 1;
        let pending = pending_at(len);
        let n = len - pending;
        // A quarter drop everything unflushed, an eighth keep it all, the
        // rest keep each entry with probability 1/2, a third of those
        // tearing some entries at sector boundaries.
        let mode = rng.random_range(0..8);
        let keep: Vec<Keep> = (0..n)
            .map(|_| match mode {
                0 | 1 => Keep::Drop,
                2 => Keep::Whole,
                3 | 4 if rng.random_bool(0.5) => Keep::Sectors(rng.random()),
                _ if rng.random_bool(0.5) => Keep::Whole,
                _ => Keep::Drop,
            })
            .collect();
        let count = |k: fn(&Keep) -> bool| keep.iter().filter(|x| k(x)).count();
        cuts.push(Cut {
            what: format!(
                "random cut after entry {} ({} unflushed entries, {} kept, {} torn)",
                len - 1,
                n,
                count(|k| *k == Keep::Whole),
                count(|k| matches!(k, Keep::Sectors(_)))
            ),
            pending,
            len,
            keep,
        });
    }
    let mut report = CutReport {
        seed,
        flush_points: flushes.len(),
        mark_cuts: marks.len(),
        random_cuts: cuts.len() - flushes.len() - marks.len(),
        writes: writes_at.len(),
        flushes: flushes.len(),
        marks: marks.len(),
        ..CutReport::default()
    };
    cuts.sort_by_key(|c| (c.pending, c.len));
    let mut durable = vec![0u8; DISK_SIZE as usize];
    let mut applied = 0;
    let apply = |e: &Entry, image: &mut [u8]| {
        log.apply(e, image).map_err(|what| CheckError::Replay {
            entry: e.index,
            what,
        })
    };
    for cut in &cuts {
        while applied < cut.pending {
            apply(&entries[applied], &mut durable)?;
            applied += 1;
        }
        let outcome = if cut.keep.iter().any(|&k| k != Keep::Drop) {
            let mut image = durable.clone();
            for (e, k) in entries[cut.pending..cut.len].iter().zip(&cut.keep) {
                match *k {
                    Keep::Drop => {}
                    Keep::Whole => apply(e, &mut image)?,
                    Keep::Sectors(seed) => {
                        let mut rng = StdRng::seed_from_u64(seed);
                        log.apply_sectors(e, &mut image, |_| rng.random_bool(0.5))
                            .map_err(|what| CheckError::Replay {
                                entry: e.index,
                                what,
                            })?;
                    }
                }
            }
            check_cut(exp, &marks, cut.len, &image)
        } else {
            check_cut(exp, &marks, cut.len, &durable)
        };
        report.cuts += 1;
        report.dropped_writes += entries[cut.pending..cut.len]
            .iter()
            .zip(cut.keep.iter().chain(std::iter::repeat(&Keep::Drop)))
            .filter(|(e, k)| e.kind == EntryKind::Write && **k != Keep::Whole)
            .count();
        report.torn_writes += entries[cut.pending..cut.len]
            .iter()
            .zip(&cut.keep)
            .filter(|(e, k)| e.kind == EntryKind::Write && matches!(k, Keep::Sectors(_)))
            .count();
        match outcome {
            Ok(c) => {
                report.bytes_checked += c.bytes;
                report.newer_bytes += c.newer;
            }
            Err(e) => report.violations.push(format!("{}: {e}", cut.what)),
        }
    }
    Ok(report)
}

/// The log without its flush entries: what a driver that never sent Flush
/// would have produced (the negative control: its cuts must fail).
pub fn without_flushes(log: &WriteLog) -> WriteLog {
    let mut out = log.clone();
    out.entries.retain(|e| e.kind != EntryKind::Flush);
    for (i, e) in out.entries.iter_mut().enumerate() {
        e.index = i;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logwrites::LogBuilder;

    const PARAMS: Params = Params {
        seed: 3,
        ops: 80,
        max_size: 96 * 1024,
        raw_gens: 6,
    };

    /// How the simulated system misbehaves.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        None,
        /// fsync writes back but sends no Flush.
        NoFlush,
        /// fsync writes back the file as it was before its last write.
        Stale,
    }

    /// A log as a system would produce it: each file thread writes back
    /// what changed at each fsync (and, between them, random pages of
    /// intermediate states, as writeback under memory pressure does),
    /// flushes and marks; the raw thread writes, flushes, marks; the
    /// threads' events interleave round-robin.
    fn simulate(params: Params, fault: Fault) -> Vec<u8> {
        let exp = Expectations::new(params);
        let mut rng = StdRng::seed_from_u64(99);
        type Event = (u64, Vec<u8>);
        let flush = || (u64::MAX, Vec::new());
        let mut threads: Vec<Vec<Event>> = Vec::new();
        for (t, f) in exp.files.iter().enumerate() {
            let base = t as u64 * FILE_REGION;
            let mut events = Vec::new();
            let mut state: Vec<u8> = Vec::new();
            let mut prev = state.clone();
            let mut marks = 0;
            for (i, op) in f.ops.iter().enumerate() {
                let before = state.clone();
                apply(&mut state, op, f.data[i].as_deref());
                if matches!(op, FileOp::Write { .. }) {
                    prev = before;
                    if rng.random_bool(0.3) && state.len() >= 4096 {
                        let page = rng.random_range(0..state.len() / 4096);
                        let at = page * 4096;
                        events.push((base + at as u64, state[at..at + 4096].to_vec()));
                    }
                }
                if *op == FileOp::Fsync {
                    let src = if fault == Fault::Stale { &prev } else { &state };
                    let mut img = src.clone();
                    img.resize(state.len().div_ceil(4096) * 4096, 0);
                    for (c, chunk) in img.chunks(4096).enumerate() {
                        events.push((base + (c * 4096) as u64, chunk.to_vec()));
                    }
                    if fault != Fault::NoFlush {
                        events.push(flush());
                    }
                    let m = Mark {
                        thread: t as u32,
                        seq: i as u64,
                    };
                    events.push((Mark::lba(t as u32, marks) * LBA, m.encode(params.nonce())));
                    marks += 1;
                }
            }
            threads.push(events);
        }
        let mut raw = Vec::new();
        for (g, writes) in exp.raw.iter().enumerate() {
            for (w, d) in writes {
                raw.push((w.lba * LBA, d.clone()));
            }
            raw.push(flush());
            let m = Mark {
                thread: RAW_THREAD,
                seq: g as u64,
            };
            raw.push((
                Mark::lba(RAW_THREAD, g as u64) * LBA,
                m.encode(params.nonce()),
            ));
        }
        threads.push(raw);
        let mut log = LogBuilder::new(LBA as u32);
        let mut next = vec![0usize; threads.len()];
        while next.iter().zip(&threads).any(|(n, t)| *n < t.len()) {
            for (n, t) in next.iter_mut().zip(&threads) {
                for _ in 0..rng.random_range(1..4) {
                    if let Some((at, data)) = t.get(*n) {
                        if *at == u64::MAX {
                            log.flush();
                        } else {
                            log.write(at / LBA, data);
                        }
                        *n += 1;
                    }
                }
            }
        }
        log.finish()
    }

    fn check(bytes: Vec<u8>, random: usize) -> CutReport {
        let log = WriteLog::parse(bytes).expect("parses");
        check_log(&log, &Expectations::new(PARAMS), random, 7).expect("fits the workload")
    }

    #[test]
    fn a_correct_system_passes_every_cut() {
        let r = check(simulate(PARAMS, Fault::None), 40);
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(r.random_cuts, 40);
        assert_eq!(r.marks, r.mark_cuts);
        assert!(r.flush_points > 10 && r.marks > 10, "{r:?}");
        assert_eq!(r.cuts, r.flush_points + r.mark_cuts + 40);
        assert!(r.dropped_writes > 0 && r.bytes_checked > 0, "{r:?}");
        assert!(r.torn_writes > 0 && r.newer_bytes > 0, "{r:?}");
        // Other cut seeds too.
        for seed in 8..12 {
            let log = WriteLog::parse(simulate(PARAMS, Fault::None)).expect("parses");
            let r = check_log(&log, &Expectations::new(PARAMS), 40, seed).expect("fits");
            assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        }
    }

    #[test]
    fn an_fsync_without_flush_is_caught() {
        let r = check(simulate(PARAMS, Fault::NoFlush), 40);
        assert!(
            r.violations.iter().any(|v| v.contains("file 0:")),
            "{:#?}",
            r.violations
        );
        // The smallest case: the fsync'd write, its mark, and only then a
        // flush. The cut between the mark and the flush loses the write.
        let exp = Expectations::new(PARAMS);
        let f = &exp.files[0];
        let first = f.snapshots[0].clone();
        let mut padded = first.clone();
        padded.resize(first.len().div_ceil(512) * 512, 0);
        let mark = Mark {
            thread: 0,
            seq: f.fsyncs[0] as u64,
        };
        let mut b = LogBuilder::new(512);
        b.write(0, &padded)
            .write(Mark::lba(0, 0), &mark.encode(PARAMS.nonce()))
            .flush();
        let log = WriteLog::parse(b.finish()).expect("parses");
        // Only thread 0's first mark is there: the others are missing.
        assert!(matches!(
            check_log(&log, &exp, 0, 1).unwrap_err(),
            CheckError::MissingMarks { thread: 0, .. }
        ));
        let marks = vec![LoggedMark {
            entry: 1,
            mark,
            ordinal: 0,
        }];
        let zero = vec![0u8; DISK_SIZE as usize];
        let err = check_cut(&exp, &marks, 2, &zero).unwrap_err();
        assert!(err.starts_with("file 0: "), "{err}");
        let mut full = zero.clone();
        log.apply(&log.entries[0], &mut full).expect("fits");
        assert_eq!(
            check_cut(&exp, &marks, 2, &full),
            Ok(Checked {
                bytes: first.len() as u64,
                newer: 0
            })
        );
    }

    #[test]
    fn stale_data_after_fsync_is_caught() {
        let r = check(simulate(PARAMS, Fault::Stale), 20);
        assert!(
            r.violations.iter().any(|v| v.contains("the model says")),
            "{:#?}",
            r.violations
        );
    }

    #[test]
    fn a_log_without_flushes_fails() {
        let log = WriteLog::parse(simulate(PARAMS, Fault::None)).expect("parses");
        let r = check_log(&without_flushes(&log), &Expectations::new(PARAMS), 20, 7).expect("fits");
        assert_eq!(r.flush_points, 0);
        assert!(r.violations.len() >= r.mark_cuts, "{r:?}");
    }

    #[test]
    fn logs_that_do_not_fit_the_workload_are_errors() {
        let exp = Expectations::new(PARAMS);
        let parse = |b: &LogBuilder| WriteLog::parse(b.finish()).expect("parses");
        let mut b = LogBuilder::new(512);
        b.write(DISK_SIZE / 512, &[1u8; 512]);
        assert_eq!(
            check_log(&parse(&b), &exp, 0, 1).unwrap_err(),
            CheckError::StrayWrite {
                entry: 0,
                start: DISK_SIZE,
                end: DISK_SIZE + 512
            }
        );
        let mut b = LogBuilder::new(512);
        b.write(Mark::lba(0, 0), &[1u8; 512]);
        assert!(matches!(
            check_log(&parse(&b), &exp, 0, 1).unwrap_err(),
            CheckError::BadMark { entry: 0, .. }
        ));
        // A mark for the wrong op, and one in the wrong slot.
        let wrong = Mark { thread: 0, seq: 0 }.encode(PARAMS.nonce());
        let mut b = LogBuilder::new(512);
        b.write(Mark::lba(0, 0), &wrong);
        let err = check_log(&parse(&b), &exp, 0, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("thread 0's mark 0 is for op/generation 0"),
            "{err}"
        );
        let raw0 = Mark {
            thread: RAW_THREAD,
            seq: 0,
        };
        let mut b = LogBuilder::new(512);
        b.write(Mark::lba(RAW_THREAD, 1), &raw0.encode(PARAMS.nonce()));
        assert!(matches!(
            check_log(&parse(&b), &exp, 0, 1).unwrap_err(),
            CheckError::BadMark { entry: 0, .. }
        ));
        // Another run's mark (another nonce) is not a mark.
        let mut b = LogBuilder::new(512);
        b.write(Mark::lba(RAW_THREAD, 0), &raw0.encode(PARAMS.nonce() ^ 1));
        assert!(matches!(
            check_log(&parse(&b), &exp, 0, 1).unwrap_err(),
            CheckError::BadMark { entry: 0, .. }
        ));
        assert!(matches!(
            check_log(&parse(&LogBuilder::new(512)), &exp, 0, 1).unwrap_err(),
            CheckError::MissingMarks {
                thread: 0,
                found: 0,
                ..
            }
        ));
        assert_eq!(
            check_log(&parse(&LogBuilder::new(4096)), &exp, 0, 1).unwrap_err(),
            CheckError::SectorSize(4096)
        );
    }

    #[test]
    fn marks_round_trip_and_plans_are_disjoint_within_a_generation() {
        let m = Mark { thread: 2, seq: 77 };
        assert_eq!(Mark::decode(&m.encode(5), 5), Some(m));
        assert_eq!(Mark::decode(&m.encode(5), 6), None);
        assert_eq!(Mark::decode(&[0u8; 512], 5), None);
        let plan = raw_plan(1, 30);
        assert_eq!(plan, raw_plan(1, 30));
        for g in &plan {
            assert!(!g.is_empty());
            for (i, a) in g.iter().enumerate() {
                assert!(a.lba * LBA >= RAW.start && (a.lba + a.blocks) * LBA <= RAW.end);
                for b in &g[i + 1..] {
                    assert!(a.lba + a.blocks <= b.lba || b.lba + b.blocks <= a.lba);
                }
            }
        }
        assert!(Mark::lba(RAW_THREAD, MARK_SLOTS - 1) * LBA < MARKS.end);
    }
}
