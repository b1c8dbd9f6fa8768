//! The kernel as the oracle (issue 14, docs/CONFORMANCE.md "Differential
//! tests against the kernel"): the same reads and writes of the same files
//! go once through the guest kernel's page cache (a file system on the
//! namespace, its mpage code, the kernel nvme driver) and once through
//! ours (mpage's [`File`](mpage::File) over an [`ExtentMapper`] holding
//! the file system's block map, our driver over vfio-pci), and what the
//! controller received both times is compared.
//!
//! The pieces both sides share:
//! - [`Plan`]: the steps (cold sequential read, cold random reads,
//!   overwrite + fsync of one file), written by the host test, run by the
//!   guest script (kernel side) and by `guest-check oracle` (our side).
//! - [`FileMap`]: a file's block map as `filefrag -v` prints it (FIEMAP,
//!   or FIBMAP on vfat), and the [`ExtentMapper`] built from it.
//! - [`parse_trace`]: QEMU's `pci_nvme_*` trace events (the controller's
//!   view, the same for both drivers), cut into steps by marker reads:
//!   before each step each side reads one block at
//!   `mark_base + `[`Step::mark`], an LBA no file system touches.
//!
//! Rule ids (R.., K..): docs/MPAGE.md.

use std::collections::BTreeMap;
use std::ops::Range;

use mpage::ExtentMapper;

/// What a step does to its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Cold cache; read the file from 0 to EOF in `bs`-byte reads; the
    /// bytes read go to `/tmp/<side>.<file>` for comparison.
    Read,
    /// Cold cache; one `bs`-byte read at each of these offsets (in `bs`
    /// units), each through a new open file (its own readahead state).
    RandRead(Vec<u64>),
    /// Cold cache; overwrite the whole file (same size, same blocks) with
    /// `/tmp/pat.<file>` in `bs`-byte writes, then fsync.
    Write,
    /// Cold cache; for each offset (in `bs` units) write those `bs`
    /// bytes of `/tmp/pat.<file>` there and fsync, then read the 4 KiB
    /// page holding them: with blocks smaller than a page the read finds
    /// the page in the cache partly uptodate (iomap's sub-folio state)
    /// and reads only the rest of it.
    PartialWrite(Vec<u64>),
    /// Cold cache; the pages of the offsets are read first, so they are
    /// cached and wholly uptodate: with `prefix` 0 each offset's 4 KiB
    /// page by a 4 KiB read (a new open file each, as
    /// [`StepKind::RandRead`]: no readahead window, one page per folio),
    /// otherwise the file's first `prefix` bytes in 16 KiB reads through
    /// one open file (readahead windows, whose folios may be large).
    /// Then `bs` bytes of `/tmp/pat.<file>` are written at each offset (in
    /// `bs` units, a new open file each, no fsync) and the file is
    /// fsynced once: the writeback shows which blocks of a dirty folio
    /// are written, the dirty ones only (Linux 6.6+, ours) or every
    /// uptodate one (6.1: deviation D4 of docs/CONFORMANCE.md).
    CachedWrite {
        /// Bytes read sequentially from offset 0 first, or 0 for one
        /// 4 KiB read per offset.
        prefix: u64,
        /// Where to write, in `bs` units.
        offsets: Vec<u64>,
    },
    /// Cold cache; append this many bytes (`/tmp/app.<file>`) in
    /// `bs`-byte writes, then fsync. The kernel allocates the new blocks
    /// (XFS: delayed allocation, at writeback); our side writes the same
    /// bytes through the block map the kernel left (`/tmp/after.<file>`),
    /// from the size before: an allocating write compared for its data
    /// commands, not for where the blocks went.
    Append(u64),
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index of the step (its marker: [`Step::mark`]).
    pub index: u64,
    /// The file's name (in the file system's root).
    pub file: String,
    /// Bytes per read or write call.
    pub bs: u64,
    /// What to do.
    pub kind: StepKind,
}

/// Which side issued a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The guest kernel (its nvme driver).
    Kernel,
    /// Ours (mpage + the vfio driver).
    Ours,
}

impl Step {
    /// The marker id of this step on `side` (the LBA read is
    /// `mark_base + mark`).
    pub fn mark(&self, side: Side) -> u64 {
        2 * self.index + u64::from(side == Side::Ours)
    }

    /// The step as a plan line.
    pub fn line(&self) -> String {
        // An offset list is one word: " 200,17,130".
        let list = |offs: &[u64]| {
            let words: Vec<String> = offs.iter().map(u64::to_string).collect();
            format!(" {}", words.join(","))
        };
        let (kind, extra) = match &self.kind {
            StepKind::Read => ("read", String::new()),
            StepKind::RandRead(offs) => ("randread", list(offs)),
            StepKind::Write => ("write", String::new()),
            StepKind::PartialWrite(offs) => ("partial", list(offs)),
            StepKind::CachedWrite { prefix, offsets } => {
                ("cached", format!(" {prefix}{}", list(offsets)))
            }
            StepKind::Append(len) => ("append", format!(" {len}")),
        };
        format!("{} {kind} {} {}{extra}", self.index, self.file, self.bs)
    }
}

/// The steps, and where the markers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// First marker LBA (past the file system).
    pub mark_base: u64,
    /// The steps in order.
    pub steps: Vec<Step>,
}

/// A malformed plan, map or trace line.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {line:?}")]
pub struct ParseError {
    what: &'static str,
    line: String,
}

fn bad(what: &'static str, line: &str) -> ParseError {
    ParseError {
        what,
        line: line.to_string(),
    }
}

impl Plan {
    /// The plan as text (what [`Plan::parse`] reads).
    pub fn text(&self) -> String {
        let mut s = format!("mark-base {}\n", self.mark_base);
        for step in &self.steps {
            s.push_str(&step.line());
            s.push('\n');
        }
        s
    }

    /// The marker our side reads after its last step, before it reads
    /// back what it appended: past the steps' markers (`0..2n`) and the
    /// kernel side's fences (`2n..=3n`), so that read-back belongs to no
    /// step.
    pub fn end_mark(&self) -> u64 {
        3 * self.steps.len() as u64 + 1
    }

    /// Reads [`Plan::text`].
    pub fn parse(text: &str) -> Result<Plan, ParseError> {
        let mut mark_base = None;
        let mut steps = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["mark-base", n] = words[..] {
                mark_base = Some(n.parse().map_err(|_| bad("bad mark base", line))?);
                continue;
            }
            let [index, kind, file, bs, rest @ ..] = &words[..] else {
                return Err(bad("bad step", line));
            };
            let num = |w: &str| w.parse::<u64>().map_err(|_| bad("bad number", line));
            let list = |w: &str| w.split(',').map(num).collect::<Result<Vec<_>, _>>();
            let kind = match (*kind, rest) {
                ("read", []) => StepKind::Read,
                ("write", []) => StepKind::Write,
                ("randread", [offs]) => StepKind::RandRead(list(offs)?),
                ("partial", [offs]) => StepKind::PartialWrite(list(offs)?),
                ("cached", [prefix, offs]) => StepKind::CachedWrite {
                    prefix: num(prefix)?,
                    offsets: list(offs)?,
                },
                ("append", [len]) => StepKind::Append(num(len)?),
                _ => return Err(bad("bad step kind", line)),
            };
            steps.push(Step {
                index: num(index)?,
                file: file.to_string(),
                bs: num(bs)?,
                kind,
            });
        }
        Ok(Plan {
            mark_base: mark_base.ok_or_else(|| bad("no mark-base line", text))?,
            steps,
        })
    }
}

/// A file's block map, from `filefrag -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    /// File size in bytes.
    pub size: u64,
    /// The file system block size the map counts in.
    pub block: u64,
    /// (first logical block, first physical block, blocks), by logical
    /// block: the written extents.
    pub extents: Vec<(u64, u64, u64)>,
    /// The same for unwritten (preallocated) extents, which read as
    /// zeroes like holes. Blocks in neither list are holes.
    pub unwritten: Vec<(u64, u64, u64)>,
}

impl FileMap {
    /// Reads the output of `filefrag -v FILE` (FIEMAP's or FIBMAP's
    /// table): the `File size of ... is N (B blocks of S bytes)` line and
    /// the extent rows `i: l0.. l1: p0.. p1: len: ...`.
    pub fn parse_filefrag(text: &str) -> Result<FileMap, ParseError> {
        let mut size_block = None;
        let mut extents = Vec::new();
        let mut unwritten = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("File size of ") {
                // "<name> is N (B blocks of S bytes)"
                let (_, tail) = rest
                    .rsplit_once(" is ")
                    .ok_or_else(|| bad("bad size line", line))?;
                let words: Vec<&str> = tail
                    .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                    .filter(|w| !w.is_empty())
                    .collect();
                match words[..] {
                    [size, _, "blocks", "of", block, "bytes", ..]
                    | [size, _, "block", "of", block, "bytes", ..] => {
                        let n = |w: &str| w.parse::<u64>().map_err(|_| bad("bad size", line));
                        size_block = Some((n(size)?, n(block)?));
                    }
                    _ => return Err(bad("bad size line", line)),
                }
                continue;
            }
            // Extent rows: numbers, "..", ":" only up to the flags.
            let fields: Vec<&str> = line.split(':').map(str::trim).collect();
            if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
                continue;
            }
            let range = |f: &str| -> Result<(u64, u64), ParseError> {
                let (a, b) = f.split_once("..").ok_or_else(|| bad("bad range", line))?;
                let n = |w: &str| w.trim().parse::<u64>().map_err(|_| bad("bad number", line));
                Ok((n(a)?, n(b)?))
            };
            let (l0, l1) = range(fields[1])?;
            let (p0, p1) = range(fields[2])?;
            let len: u64 = fields[3].parse().map_err(|_| bad("bad length", line))?;
            if l1 < l0 || p1 < p0 || l1 - l0 + 1 != len || p1 - p0 + 1 != len {
                return Err(bad("inconsistent extent", line));
            }
            if fields[4..].iter().any(|f| f.contains("unwritten")) {
                unwritten.push((l0, p0, len));
            } else {
                extents.push((l0, p0, len));
            }
        }
        let (size, block) = size_block.ok_or_else(|| bad("no size line", text))?;
        if block == 0 || !block.is_power_of_two() {
            return Err(bad("bad block size", text));
        }
        // Blocks past EOF (XFS's preallocation) are not the file's data.
        let eof_block = size.div_ceil(block);
        for list in [&mut extents, &mut unwritten] {
            list.sort_unstable();
            list.retain(|&(l, _, _)| l < eof_block);
            for e in list.iter_mut() {
                e.2 = e.2.min(eof_block - e.0);
            }
        }
        // No block mapped twice; what neither list maps is a hole.
        let mut all: Vec<_> = extents.iter().chain(&unwritten).copied().collect();
        all.sort_unstable();
        let mut next = 0;
        for &(l, _, len) in &all {
            if l < next {
                return Err(bad("extents overlap", text));
            }
            next = l + len;
        }
        Ok(FileMap {
            size,
            block,
            extents,
            unwritten,
        })
    }

    /// The device block (in `block` units) holding file block `lblk`,
    /// and whether it is unwritten; `None` for a hole.
    pub fn pblk(&self, lblk: u64) -> Option<(u64, bool)> {
        let find = |list: &[(u64, u64, u64)]| {
            list.iter()
                .find(|&&(l, _, len)| (l..l + len).contains(&lblk))
                .map(|&(l, p, _)| p + (lblk - l))
        };
        find(&self.extents)
            .map(|p| (p, false))
            .or_else(|| find(&self.unwritten).map(|p| (p, true)))
    }

    /// The device LBA ranges holding the file's blocks.
    pub fn lba_ranges(&self, lba_size: u64) -> Vec<Range<u64>> {
        self.extents
            .iter()
            .chain(&self.unwritten)
            .map(|&(_, p, len)| p * self.block / lba_size..(p + len) * self.block / lba_size)
            .collect()
    }

    /// An [`ExtentMapper`] with this map (nothing to allocate: the steps
    /// only overwrite).
    pub fn mapper(&self, lba_size: u32) -> ExtentMapper {
        let m = ExtentMapper::new(self.block as usize, lba_size, 0..0);
        for &(l, p, len) in &self.extents {
            m.insert(l, len, p);
        }
        for &(l, p, len) in &self.unwritten {
            m.insert_unwritten(l, len, p);
        }
        m
    }

    /// An [`ExtentMapper`] with this map, its written blocks from file
    /// block `first` on unwritten instead: the state an append's blocks
    /// are in while the kernel writes them back. XFS allocates a delayed
    /// allocation at writeback as unwritten extents and converts them
    /// once the data is written (`xfs_bmapi_convert_delalloc`), so the
    /// old EOF block (written) and the blocks after it go in ioends of
    /// two types (R54) even where they are contiguous on the device.
    pub fn mapper_allocated_from(&self, lba_size: u32, first: u64) -> ExtentMapper {
        let m = ExtentMapper::new(self.block as usize, lba_size, 0..0);
        for &(l, p, len) in &self.extents {
            let written = first.saturating_sub(l).min(len);
            if written > 0 {
                m.insert(l, written, p);
            }
            if written < len {
                m.insert_unwritten(l + written, len - written, p + written);
            }
        }
        for &(l, p, len) in &self.unwritten {
            m.insert_unwritten(l, len, p);
        }
        m
    }
}

/// One command the controller received, from QEMU's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cmd {
    /// Read of `nlb` blocks from `lba`.
    Read {
        /// First LBA.
        lba: u64,
        /// Blocks.
        nlb: u64,
    },
    /// Write of `nlb` blocks from `lba`.
    Write {
        /// First LBA.
        lba: u64,
        /// Blocks.
        nlb: u64,
    },
    /// Flush.
    Flush,
    /// Another I/O opcode (Write Zeroes, DSM...).
    Other(u8),
}

impl Cmd {
    /// The LBA range of a read or write.
    pub fn range(&self) -> Option<Range<u64>> {
        match *self {
            Cmd::Read { lba, nlb } | Cmd::Write { lba, nlb } => Some(lba..lba + nlb),
            _ => None,
        }
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Read { lba, nlb } => write!(f, "R {lba}+{nlb}"),
            Cmd::Write { lba, nlb } => write!(f, "W {lba}+{nlb}"),
            Cmd::Flush => write!(f, "F"),
            Cmd::Other(opc) => write!(f, "op{opc:#x}"),
        }
    }
}

/// A traced command and the submission queue it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    /// The command.
    pub cmd: Cmd,
    /// Its submission queue id.
    pub sqid: u16,
}

/// The I/O commands in QEMU's output, in the order the controller took
/// them, from the `log` backend's lines of the events `pci_nvme_io_cmd`
/// (every I/O command: queue, opcode), `pci_nvme_read` and
/// `pci_nvme_write` (LBA and block count, logged while the same command
/// is handled, right after its `io_cmd` line). Other lines are ignored.
pub fn parse_trace(text: &str) -> Result<Vec<Traced>, ParseError> {
    let mut out: Vec<Traced> = Vec::new();
    // The last io_cmd, waiting for its read/write line: (sqid, opcode).
    let mut pending: Option<(u16, u8)> = None;
    for line in text.lines() {
        let Some(at) = line.find("pci_nvme_") else {
            continue;
        };
        let body = &line[at..];
        let mut words = body.split_whitespace();
        let event = words.next().unwrap_or("");
        let fields: Vec<&str> = words.collect();
        let field = |name: &str| -> Option<&str> {
            fields
                .iter()
                .position(|w| *w == name)
                .and_then(|i| fields.get(i + 1).copied())
        };
        let num = |name: &str| -> Result<u64, ParseError> {
            let v = field(name).ok_or_else(|| bad("trace field missing", line))?;
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.map_err(|_| bad("bad trace number", line))
        };
        match event {
            "pci_nvme_io_cmd" => {
                if let Some((sqid, opc)) = pending.take() {
                    // A command without a read/write event of its own.
                    out.push(Traced {
                        cmd: other(opc),
                        sqid,
                    });
                }
                let sqid = u16::try_from(num("sqid")?).map_err(|_| bad("bad sqid", line))?;
                let opc = u8::try_from(num("opc")?).map_err(|_| bad("bad opcode", line))?;
                // Write, Read and Write Zeroes log an event of their own.
                if matches!(opc, 0x01 | 0x02 | 0x08) {
                    pending = Some((sqid, opc));
                } else {
                    out.push(Traced {
                        cmd: other(opc),
                        sqid,
                    });
                }
            }
            "pci_nvme_read" | "pci_nvme_write" => {
                let (lba, nlb) = (num("lba")?, num("nlb")?);
                let Some((sqid, opc)) = pending.take() else {
                    return Err(bad("read/write event without its io_cmd", line));
                };
                let cmd = match (event, opc) {
                    ("pci_nvme_read", 0x02) => Cmd::Read { lba, nlb },
                    ("pci_nvme_write", 0x01) => Cmd::Write { lba, nlb },
                    ("pci_nvme_write", 0x08) => Cmd::Other(0x08),
                    _ => return Err(bad("event does not match the opcode", line)),
                };
                out.push(Traced { cmd, sqid });
            }
            _ => {}
        }
    }
    if let Some((sqid, opc)) = pending {
        out.push(Traced {
            cmd: other(opc),
            sqid,
        });
    }
    Ok(out)
}

fn other(opc: u8) -> Cmd {
    if opc == 0 {
        Cmd::Flush
    } else {
        Cmd::Other(opc)
    }
}

/// The commands of each marked stretch: the commands after the read that
/// starts at `mark_base + m` up to the next marker, by `m`. Commands before
/// the first marker (the kernel's probe, mkfs, the files' creation) are
/// dropped; a marker seen twice is an error.
pub fn split_by_markers(
    cmds: &[Traced],
    mark_base: u64,
    marks: u64,
) -> Result<BTreeMap<u64, Vec<Traced>>, String> {
    let mut out: BTreeMap<u64, Vec<Traced>> = BTreeMap::new();
    let mut current: Option<u64> = None;
    for t in cmds {
        // A marker read starts at its LBA (a buffered read of the block
        // device would read on from there).
        if let Cmd::Read { lba, .. } = t.cmd
            && (mark_base..mark_base + marks).contains(&lba)
        {
            let m = lba - mark_base;
            if out.insert(m, Vec::new()).is_some() {
                return Err(format!("marker {m} read twice"));
            }
            current = Some(m);
            continue;
        }
        if let Some(m) = current {
            out.entry(m).or_default().push(*t);
        }
    }
    Ok(out)
}

/// The data commands of `cmds` that touch `ranges` (a file's blocks), and
/// every Flush; the rest (the file system's metadata) is left out.
pub fn file_commands(cmds: &[Traced], ranges: &[Range<u64>]) -> Vec<Cmd> {
    cmds.iter()
        .filter(|t| match t.cmd.range() {
            Some(r) => ranges.iter().any(|f| f.start < r.end && r.start < f.end),
            None => t.cmd == Cmd::Flush,
        })
        .map(|t| t.cmd)
        .collect()
}

/// Deviation D1 of docs/CONFORMANCE.md ("Differential tests against the
/// kernel"): the kernel's stream with its per-block fallback I/O joined.
/// A page whose blocks are not contiguous on the device goes to mpage's
/// fallback (R16, R19: `block_read_full_folio`, `block_write_full_page`),
/// which sends one bio per block; the block layer merges a bio into the
/// plugged request before it only if neither starts inside a page (NVMe's
/// virtual boundary, the PRP rule R4), so every block but those at the
/// page's start becomes a command of its own. We read and write each
/// device-contiguous piece of a folio as one run instead (K2): a run of
/// one-block commands is joined, with the command that follows it when
/// that one continues its LBAs, into one command.
pub fn join_per_block_fallback(cmds: &[Cmd]) -> Vec<Cmd> {
    let mut out: Vec<Cmd> = Vec::new();
    // Whether the last command of `out` ends in a run of one-block
    // commands (so the next contiguous one joins it).
    let mut open = false;
    for &c in cmds {
        let joined = match (out.last_mut(), c) {
            (Some(Cmd::Read { lba, nlb }), Cmd::Read { lba: l, nlb: n })
            | (Some(Cmd::Write { lba, nlb }), Cmd::Write { lba: l, nlb: n })
                if open && *lba + *nlb == l =>
            {
                *nlb += n;
                true
            }
            _ => false,
        };
        if !joined {
            out.push(c);
        }
        // A one-block command opens (or keeps open) a run; anything else
        // closes it once it has joined or started.
        open = matches!(c, Cmd::Read { nlb: 1, .. } | Cmd::Write { nlb: 1, .. });
    }
    out
}

/// Deviation D3 of docs/CONFORMANCE.md: the kernel's commands joined
/// where its segment limit split them. The block layer splits a request
/// when its memory has more than `max_segments` physically discontiguous
/// pieces; order-0 page cache pages are contiguous or not by chance, so a
/// 512 KiB write of 128 pages goes out whole or as 127 + 1 pages from one
/// run to the next, and the remainder of one split can join the next
/// request and shift its split too (`W 128+1016, W 1144+1016, W 2160+16`
/// for two 512 KiB requests). Our folios are large and our PRP lists have
/// no such limit, so we split at the transfer size only. A run of
/// device-contiguous commands of one kind, each but the last of at least
/// `max_segments` pages (so each ended where the segment limit or the
/// transfer limit cut it), is joined and cut again at `max_sectors`
/// 512-byte sectors from its start, as ours is.
pub fn join_segment_splits(cmds: &[Cmd], max_segments: u64, max_sectors: u64) -> Vec<Cmd> {
    let same_kind = |a: &Cmd, b: &Cmd| {
        matches!(
            (a, b),
            (Cmd::Read { .. }, Cmd::Read { .. }) | (Cmd::Write { .. }, Cmd::Write { .. })
        )
    };
    let with = |c: &Cmd, lba: u64, nlb: u64| match c {
        Cmd::Read { .. } => Cmd::Read { lba, nlb },
        _ => Cmd::Write { lba, nlb },
    };
    let cut = |len: u64| len >= max_segments * 8;
    let mut out: Vec<Cmd> = Vec::new();
    let mut i = 0;
    while i < cmds.len() {
        let first = cmds[i];
        let Some(r) = first.range() else {
            out.push(first);
            i += 1;
            continue;
        };
        let (start, mut end, mut open) = (r.start, r.end, cut(r.end - r.start));
        let mut j = i + 1;
        while let Some(next) = cmds.get(j) {
            match next.range() {
                Some(n) if open && same_kind(&first, next) && n.start == end => {
                    end = n.end;
                    open = cut(n.end - n.start);
                    j += 1;
                }
                _ => break,
            }
        }
        if j == i + 1 || max_sectors == 0 {
            out.extend_from_slice(&cmds[i..j]);
        } else {
            let mut at = start;
            while at < end {
                let n = (end - at).min(max_sectors);
                out.push(with(&first, at, n));
                at += n;
            }
        }
        i = j;
    }
    out
}

impl FileMap {
    /// The file block at device LBA `lba`, if the file has one there.
    pub fn lblk_at(&self, lba: u64, lba_size: u64) -> Option<u64> {
        let per = self.block / lba_size;
        self.extents
            .iter()
            .chain(&self.unwritten)
            .find_map(|&(l, p, len)| {
                let first = p * per;
                (first..first + len * per)
                    .contains(&lba)
                    .then(|| l + (lba - first) / per)
            })
    }
}

/// Deviation D2 of docs/CONFORMANCE.md: what a cold overwrite reads
/// before it writes. The kernel's vfat prepares the write with
/// `block_write_begin` (buffer heads), which reads only the blocks the
/// write covers partly (here: the block holding EOF). Ours is iomap's
/// `__iomap_write_begin` (R42–R47): the run of blocks that are not
/// uptodate, from the write's (or the folio's) first block on, is read
/// whole when the write ends inside it. Checks that each of the
/// kernel's reads `R p+1` is matched, in the same place of the stream, by
/// one of ours that ends at the same block, starts at the write call's
/// first block or at a page's first block (`write_bs` bytes per call),
/// and reads less than a page; every other command must be the same.
pub fn check_write_begin_reads(
    kernel: &[Cmd],
    ours: &[Cmd],
    map: &FileMap,
    write_bs: u64,
) -> Result<(), String> {
    if kernel.len() != ours.len() {
        return Err(format!(
            "{} commands against the kernel's {}",
            ours.len(),
            kernel.len()
        ));
    }
    for (i, (k, o)) in kernel.iter().zip(ours).enumerate() {
        match (*k, *o) {
            _ if k == o => {}
            (Cmd::Read { lba: kl, nlb: 1 }, Cmd::Read { lba: ol, nlb: on })
                if ol + on == kl + 1 && on * 512 < 4096 =>
            {
                let start = map
                    .lblk_at(ol, 512)
                    .ok_or_else(|| format!("command {i}: {o} is not the file's"))?;
                let pos = start * map.block;
                if !pos.is_multiple_of(4096) && !pos.is_multiple_of(write_bs) {
                    return Err(format!(
                        "command {i}: {o} starts at file byte {pos}, neither a page's \
                         nor a write call's first byte"
                    ));
                }
            }
            _ => return Err(format!("command {i}: {o} where the kernel sent {k}")),
        }
    }
    Ok(())
}

/// The file blocks the writes of `cmds` cover (512-byte LBAs), or the
/// first write that is not all the file's.
pub fn written_blocks(
    cmds: &[Cmd],
    map: &FileMap,
) -> Result<std::collections::BTreeSet<u64>, String> {
    let per = map.block / 512;
    let mut blocks = std::collections::BTreeSet::new();
    for c in cmds {
        if let Cmd::Write { lba, nlb } = *c {
            if lba % per != 0 || nlb % per != 0 {
                return Err(format!("{c} is not whole file system blocks"));
            }
            for at in (lba..lba + nlb).step_by(per as usize) {
                let b = map
                    .lblk_at(at, 512)
                    .ok_or_else(|| format!("{c} is not the file's"))?;
                blocks.insert(b);
            }
        }
    }
    Ok(blocks)
}

/// Deviation D4 of docs/CONFORMANCE.md: which blocks of a dirty folio
/// writeback writes. Linux 6.1's iomap has per-block uptodate bits but no
/// dirty bits (`struct iomap_page`; `iomap_writepage_map` writes every
/// uptodate block of a dirty folio); 6.6 added per-block dirty bits
/// (`iomap_folio_state`), and we (R53) write the dirty blocks only. On a
/// folio that is wholly uptodate the kernel therefore writes the whole
/// folio. Checks that `kernel` is `ours` with each of our writes
/// replaced by the whole folio holding it: every command but the writes
/// equal and in the same place; each kernel write one naturally aligned
/// power-of-two range of whole pages of the file (a folio), contiguous on
/// the device, holding one or more of our writes, which follow each other
/// in the same order; none of ours outside them. Returns the size in
/// bytes of each of the kernel's writes (its folio's size).
pub fn check_whole_folio_writeback(
    kernel: &[Cmd],
    ours: &[Cmd],
    map: &FileMap,
) -> Result<Vec<u64>, String> {
    let mut sizes = Vec::new();
    let mut j = 0;
    for (i, k) in kernel.iter().enumerate() {
        let Cmd::Write { lba, nlb } = *k else {
            match ours.get(j) {
                Some(o) if o == k => {
                    j += 1;
                    continue;
                }
                o => return Err(format!("command {i}: {o:?} where the kernel sent {k}")),
            }
        };
        let first = map
            .lblk_at(lba, 512)
            .ok_or_else(|| format!("command {i}: {k} is not the file's"))?;
        let bytes = nlb * 512;
        let pos = first * map.block;
        if bytes < 4096 || !bytes.is_power_of_two() || !pos.is_multiple_of(bytes) {
            return Err(format!(
                "command {i}: {k} (file bytes {pos}+{bytes}) is not a whole aligned folio"
            ));
        }
        if map.lblk_at(lba + nlb - 1, 512) != Some(first + bytes / map.block - 1) {
            return Err(format!("command {i}: {k} is not one contiguous file range"));
        }
        let inside =
            |c: &Cmd| matches!(*c, Cmd::Write { lba: l, nlb: n } if l >= lba && l + n <= lba + nlb);
        let held = ours[j..].iter().take_while(|c| inside(c)).count();
        if held == 0 {
            return Err(format!("command {i}: {k} holds none of our writes"));
        }
        j += held;
        sizes.push(bytes);
    }
    if j != ours.len() {
        return Err(format!(
            "ours has {} commands past the kernel's: {}",
            ours.len() - j,
            listing(&ours[j..])
        ));
    }
    Ok(sizes)
}

/// Commands one per line, for failure messages and reports.
pub fn listing(cmds: &[Cmd]) -> String {
    cmds.iter()
        .map(Cmd::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips() {
        let plan = Plan {
            mark_base: 65536,
            steps: vec![
                Step {
                    index: 0,
                    file: "big".into(),
                    bs: 16384,
                    kind: StepKind::Read,
                },
                Step {
                    index: 1,
                    file: "big".into(),
                    bs: 4096,
                    kind: StepKind::RandRead(vec![200, 17]),
                },
                Step {
                    index: 2,
                    file: "tail".into(),
                    bs: 4096,
                    kind: StepKind::Write,
                },
                Step {
                    index: 3,
                    file: "big".into(),
                    bs: 1024,
                    kind: StepKind::PartialWrite(vec![1, 6, 40]),
                },
                Step {
                    index: 4,
                    file: "big".into(),
                    bs: 1024,
                    kind: StepKind::CachedWrite {
                        prefix: 0,
                        offsets: vec![13, 20, 22],
                    },
                },
                Step {
                    index: 5,
                    file: "big".into(),
                    bs: 1024,
                    kind: StepKind::CachedWrite {
                        prefix: 262144,
                        offsets: vec![5],
                    },
                },
                Step {
                    index: 6,
                    file: "grow".into(),
                    bs: 4096,
                    kind: StepKind::Append(9000),
                },
            ],
        };
        assert_eq!(Plan::parse(&plan.text()).expect("parse"), plan);
        assert_eq!(plan.steps[1].mark(Side::Kernel), 2);
        assert_eq!(plan.steps[1].mark(Side::Ours), 3);
        assert!(Plan::parse("mark-base 1\n0 frob f 1\n").is_err());
        assert!(Plan::parse("0 read f 1\n").is_err());
        assert_eq!(plan.steps[4].line(), "4 cached big 1024 0 13,20,22");
        assert_eq!(plan.steps[6].line(), "6 append grow 4096 9000");
        assert_eq!(plan.end_mark(), 22);
        assert!(Plan::parse("mark-base 1\n0 cached f 1 5\n").is_err());
    }

    #[test]
    fn whole_folio_writeback_is_ours_widened_to_folios() {
        // `big` with 1 KiB blocks from LBA 128 (block n at 128 + 2n).
        let map = FileMap {
            size: 1 << 20,
            block: 1024,
            extents: vec![(0, 64, 1024)],
            unwritten: Vec::new(),
        };
        // Blocks 13 (page 3), 20 and 22 (page 5) dirty in wholly
        // uptodate pages: 6.1 writes the pages, ours the blocks.
        let ours = cmds("R 152+8, R 168+8, W 154+2, W 168+2, W 172+2");
        let kernel = cmds("R 152+8, R 168+8, W 152+8, W 168+8");
        assert_eq!(
            check_whole_folio_writeback(&kernel, &ours, &map),
            Ok(vec![4096, 4096])
        );
        assert_eq!(
            written_blocks(&ours, &map),
            Ok([13, 20, 22].into_iter().collect())
        );
        // Large folios (16 KiB at file offset 0, 64 KiB at 128 KiB);
        // a 128 KiB one at 96 KiB would not be aligned.
        let ours = cmds("R 128+64, W 138+2, W 428+2");
        let kernel = cmds("R 128+64, W 128+32, W 384+128");
        assert_eq!(
            check_whole_folio_writeback(&kernel, &ours, &map),
            Ok(vec![16384, 65536])
        );
        let unaligned = cmds("R 128+64, W 128+32, W 320+256");
        assert!(check_whole_folio_writeback(&unaligned, &ours, &map).is_err());
        // Identical streams are whole folios only where ours writes them.
        assert!(check_whole_folio_writeback(&kernel, &kernel, &map).is_ok());
        // Not aligned, not a power of two, holding none of ours, ours
        // writing outside, another read, a write too many: refused.
        let ours = cmds("R 152+8, W 154+2, W 168+2");
        for bad in [
            "R 152+8, W 154+8, W 168+8",
            "R 152+8, W 152+12, W 168+8",
            "R 152+8, W 152+8, W 176+8",
            "R 152+8, W 152+8",
            "R 160+8, W 152+8, W 168+8",
            "R 152+8, W 152+8, W 168+8, W 200+8",
        ] {
            assert!(
                check_whole_folio_writeback(&cmds(bad), &ours, &map).is_err(),
                "{bad}"
            );
        }
        assert!(written_blocks(&cmds("W 129+2"), &map).is_err());
    }

    #[test]
    fn allocated_blocks_map_unwritten() {
        // 10 old blocks at 1470, 9 appended right after them.
        let map = FileMap {
            size: 19000,
            block: 1024,
            extents: vec![(0, 1470, 19)],
            unwritten: Vec::new(),
        };
        let m = map.mapper_allocated_from(512, 10);
        let at = |lblk: u64| {
            mpage::BlockMapper::map(&m, lblk * 1024, 1024, mpage::MapIntent::Read)
                .expect("map")
                .kind
        };
        assert_eq!(at(9), mpage::ExtentKind::Mapped { lba: 2958 });
        assert_eq!(at(10), mpage::ExtentKind::Unwritten { lba: 2960 });
        assert_eq!(at(18), mpage::ExtentKind::Unwritten { lba: 2976 });
    }

    #[test]
    fn parses_holes_and_unwritten_extents() {
        // XFS's FIEMAP table of a sparse file: a hole at blocks 8-63, an
        // unwritten extent, preallocation past EOF.
        let text = "File size of /mnt/sparse is 262144 (256 blocks of 1024 bytes)\n \
            ext:     logical_offset:        physical_offset: length:   expected: flags:\n   \
            0:        0..       7:       5000..      5007:      8:            \n   \
            1:       64..      75:       6000..      6011:     12:       5008:\n   \
            2:       76..      79:       6012..      6015:      4:             unwritten\n   \
            3:      200..     299:       7000..      7099:    100:       6016: last,eof\n\
            /mnt/sparse: 4 extents found\n";
        let map = FileMap::parse_filefrag(text).expect("parse");
        assert_eq!(
            map.extents,
            vec![(0, 5000, 8), (64, 6000, 12), (200, 7000, 56)]
        );
        assert_eq!(map.unwritten, vec![(76, 6012, 4)]);
        assert_eq!(map.pblk(65), Some((6001, false)));
        assert_eq!(map.pblk(77), Some((6013, true)));
        assert_eq!(map.pblk(8), None);
        assert_eq!(map.lblk_at(6013 * 2, 512), Some(77));
        let overlap = text.replace("64..      75", "4..      15");
        assert!(FileMap::parse_filefrag(&overlap).is_err());
    }

    #[test]
    fn parses_filefrag_tables() {
        let text = "Filesystem type is: 4d44\n\
            File size of /mnt/fa is 10000 (20 blocks of 512 bytes)\n \
            ext:     logical_offset:        physical_offset: length:   expected: flags:\n   \
            0:        0..       7:       1000..      1007:      8:            \n   \
            1:        8..      19:       2000..      2011:     12:       1008: last,eof\n\
            /mnt/fa: 2 extents found\n";
        let map = FileMap::parse_filefrag(text).expect("parse");
        assert_eq!(map.size, 10000);
        assert_eq!(map.block, 512);
        assert_eq!(map.extents, vec![(0, 1000, 8), (8, 2000, 12)]);
        assert_eq!(map.lba_ranges(512), vec![1000..1008, 2000..2012]);
        let m = map.mapper(512);
        let e = mpage::BlockMapper::map(&m, 4096, 512, mpage::MapIntent::Read).expect("map");
        assert_eq!(e.kind, mpage::ExtentKind::Mapped { lba: 2000 });
        // A block missing: refused.
        let short = text.replace("12:       1008", "11:       1008");
        assert!(FileMap::parse_filefrag(&short).is_err());
        let hole = text.replace("2000..      2011:     12:", "2000..      2010:     11:");
        assert!(FileMap::parse_filefrag(&hole).is_err());
    }

    fn cmds(text: &str) -> Vec<Cmd> {
        text.split(", ")
            .map(|c| {
                if c == "F" {
                    return Cmd::Flush;
                }
                let (op, r) = c.split_once(' ').expect("op");
                let (lba, nlb) = r.split_once('+').expect("range");
                let (lba, nlb) = (lba.parse().expect("lba"), nlb.parse().expect("nlb"));
                match op {
                    "R" => Cmd::Read { lba, nlb },
                    "W" => Cmd::Write { lba, nlb },
                    _ => panic!("op {op}"),
                }
            })
            .collect()
    }

    #[test]
    fn joins_the_kernels_per_block_fallback_commands() {
        // Recorded from the 6.1 kernel (vfat, 2 KiB clusters).
        let kernel = cmds(
            "R 2216+24, R 2256+12, R 2296+1, R 2297+1, R 2298+1, R 2299+1, R 2300+24, \
             R 2324+20, R 2352+1, R 2353+1, R 2354+1, R 2355+1, R 2356+16, R 2436+80",
        );
        assert_eq!(
            listing(&join_per_block_fallback(&kernel)),
            "R 2216+24, R 2256+12, R 2296+28, R 2324+20, R 2352+20, R 2436+80"
        );
        // One-block runs not followed by a contiguous command stay apart
        // from it; writes join like reads; other commands are untouched.
        let w = cmds("W 2516+1, W 2517+1, W 2518+1, W 2519+1, W 2552+8, W 2560+8");
        assert_eq!(
            listing(&join_per_block_fallback(&w)),
            "W 2516+4, W 2552+8, W 2560+8"
        );
        let mixed = cmds("R 10+1, W 11+4");
        assert_eq!(listing(&join_per_block_fallback(&mixed)), "R 10+1, W 11+4");
    }

    #[test]
    fn joins_commands_the_segment_limit_split() {
        // Recorded from the 6.1 kernel (max_segments 127, max_sectors_kb
        // 512): vfat, and XFS where the remainder of the first split
        // joined the second request.
        let k = cmds("W 168+1024, W 1192+1016, W 2208+8");
        assert_eq!(
            listing(&join_segment_splits(&k, 127, 1024)),
            "W 168+1024, W 1192+1024"
        );
        let k = cmds("W 128+1016, W 1144+1016, W 2160+16, F");
        assert_eq!(
            listing(&join_segment_splits(&k, 127, 1024)),
            "W 128+1024, W 1152+1024, F"
        );
        // Not past the transfer limit, not below the segment limit, not
        // across a gap or between reads and writes.
        for keep in [
            "W 168+1024, W 1192+8",
            "W 168+1008, W 1176+8",
            "W 168+1016, W 1185+8",
            "W 168+1016, R 1184+8",
        ] {
            let c = cmds(keep);
            assert_eq!(join_segment_splits(&c, 127, 1024), c, "{keep}");
        }
    }

    #[test]
    fn write_begin_reads_end_at_the_kernels_block() {
        let map = FileMap {
            size: 10000,
            block: 512,
            extents: vec![(0, 2796, 20)],
            unwritten: Vec::new(),
        };
        let kernel = cmds("R 2815+1, W 2796+20");
        // Ours reads the page's blocks up to the partial one.
        assert!(
            check_write_begin_reads(&kernel, &cmds("R 2812+4, W 2796+20"), &map, 16384).is_ok()
        );
        assert!(check_write_begin_reads(&kernel, &kernel, &map, 16384).is_ok());
        // Not ending at the kernel's block, starting mid-page, too long,
        // or a different write: refused.
        for bad in [
            "R 2812+3, W 2796+20",
            "R 2813+3, W 2796+20",
            "R 2804+12, W 2796+20",
            "R 2812+4, W 2796+16",
            "R 2812+4",
        ] {
            assert!(
                check_write_begin_reads(&kernel, &cmds(bad), &map, 16384).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_qemu_trace_and_cuts_at_markers() {
        let text = "\
            77@1.000001:pci_nvme_io_cmd cid 1 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'\n\
            77@1.000002:pci_nvme_read cid 1 nsid 1 nlb 8 count 4096 lba 0x0\n\
            77@1.000003:pci_nvme_io_cmd cid 2 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'\n\
            77@1.000004:pci_nvme_read cid 2 nsid 1 nlb 1 count 512 lba 0x10000\n\
            77@1.000005:pci_nvme_io_cmd cid 3 nsid 0x1 sqid 1 opc 0x1 opname 'NVME_NVM_CMD_WRITE'\n\
            77@1.000006:pci_nvme_write cid 3 opname 'NVME_NVM_CMD_WRITE' nsid 1 nlb 16 count 8192 lba 0x3e8\n\
            pci_nvme_io_cmd cid 4 nsid 0x1 sqid 1 opc 0x0 opname 'NVME_NVM_CMD_FLUSH'\n\
            pci_nvme_io_cmd cid 9 nsid 0x1 sqid 1 opc 0x8 opname 'NVME_NVM_CMD_WRITE_ZEROES'\n\
            pci_nvme_write cid 9 opname 'NVME_NVM_CMD_WRITE_ZEROES' nsid 1 nlb 8 count 4096 lba 0x3e8\n\
            pci_nvme_io_cmd cid 5 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'\n\
            pci_nvme_read cid 5 nsid 1 nlb 4 count 2048 lba 0x20\n\
            pci_nvme_io_cmd cid 6 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'\n\
            pci_nvme_read cid 6 nsid 1 nlb 1 count 512 lba 0x10001\n\
            pci_nvme_io_cmd cid 7 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'\n\
            pci_nvme_read cid 7 nsid 1 nlb 8 count 4096 lba 0x3f0\n";
        let cmds = parse_trace(text).expect("parse");
        assert_eq!(cmds.len(), 8);
        assert!(cmds.iter().all(|t| t.sqid == 1));
        let parts = split_by_markers(&cmds, 0x10000, 4).expect("split");
        assert_eq!(parts.len(), 2);
        let first: Vec<Cmd> = parts[&0].iter().map(|t| t.cmd).collect();
        assert_eq!(
            first,
            vec![
                Cmd::Write { lba: 1000, nlb: 16 },
                Cmd::Flush,
                Cmd::Other(0x08),
                Cmd::Read { lba: 0x20, nlb: 4 },
            ]
        );
        // The metadata read at LBA 0x20 is not the file's.
        assert_eq!(
            listing(&file_commands(&parts[&0], &[1000..1010, 1010..1024])),
            "W 1000+16, F"
        );
        assert_eq!(
            listing(&file_commands(&parts[&1], &[1000..1010, 1010..1024])),
            "R 1008+8"
        );
        assert!(split_by_markers(&[cmds[1], cmds[1]], 0x10000, 4).is_err());
        assert!(parse_trace("pci_nvme_read cid 1 nsid 1 nlb 1 count 512 lba 0x0\n").is_err());
    }
}
