//! Crash consistency of a real filesystem (ext4) on `nvme-ublk`, checked
//! from QEMU's write log: the workload the guest runs, the markers that
//! tell the host which fsyncs had returned, and the checks of each
//! replayed cut point.
//!
//! # The workload (guest, a shell script)
//!
//! mke2fs makes a [`FS_BYTES`] ext4 at the start of the device, leaving
//! the rest of it to the markers; the filesystem is mounted and a seeded
//! [`Plan`] of steps runs on it, one operation each: create a file (then
//! fsync it and its directory), append, overwrite in place, truncate
//! (each then fsync), replace atomically (write `F.tmp`, fsync it, rename
//! it over `F`, fsync the directory), rename into another directory and
//! unlink (then fsync the directories), and write scratch files in `s/`
//! that are never fsynced; meanwhile a background loop rewrites and
//! fsyncs other scratch files, so that their writes and journal commits
//! interleave with the steps'. After a step's fsyncs returned, the guest
//! writes its *marker*: one 4 KiB block at slot `n` of the marker area
//! ([`MARKS_START`], beyond the filesystem's end) with `O_DIRECT` and then
//! an fsync of the device, naming the step and, for every file the step
//! made durable, its POSIX `cksum` and length as the guest read them back
//! (or that a name is gone).
//!
//! # What the log proves
//!
//! blklogwrites logs a write once the image has completed it, and the
//! guest sees the completion only after that; a step's marker is written
//! after its fsyncs returned, and the next step starts after the marker's
//! fsync returned. So at a cut whose last logged marker is `n`, every
//! claim of markers `0..=n` must hold, except for the names step `n + 1`
//! (at most in flight) touches, which may be in their state before it or
//! after it (or anything, for what is not atomic: a file being created,
//! appended to, overwritten or truncated). Markers are read from the
//! log's entries, not from the cut image, so a marker that the cut loses
//! still counts: its fsync had returned.
//!
//! # Cuts ([`choose_cuts`])
//!
//! A cut is a log prefix. At flush points, right after markers and at
//! random writes everything in the prefix is applied in log order (the
//! method of dm-log-writes' replay-log); *volatile* cuts (at writes with
//! other unflushed writes before them) apply everything up to the last
//! flush and each later write with probability 1/2, as a device's
//! volatile write cache may lose any of them. Writes are not torn
//! within themselves: jbd2's commit block carries a checksum over the
//! whole 4 KiB block, and a torn commit block is reported as a corrupt
//! transaction by design.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::logwrites::{EntryKind, WriteLog};
use crate::posix_cksum;

/// The filesystem's bytes, from the start of the device.
pub const FS_BYTES: u64 = 32 << 20;
/// The filesystem's 4 KiB blocks (mke2fs's block count).
pub const FS_BLOCKS: u64 = FS_BYTES / BLOCK;
/// Marker `n` is the 4 KiB block at `MARKS_START + n * 4096`.
pub const MARKS_START: u64 = 40 << 20;
/// The device the workload needs.
pub const DISK_SIZE: u64 = 48 << 20;
/// The most steps a plan has (one marker slot each, and one for the start).
pub const MAX_STEPS: usize = ((DISK_SIZE - MARKS_START) / BLOCK) as usize - 1;
/// The directories claimed files live in.
pub const DIRS: [&str; 3] = ["d0", "d1", "d2"];
/// The directory of scratch files, never fsynced, never checked.
pub const SCRATCH: &str = "s";
const BLOCK: u64 = 4096;
const MAGIC: &str = "FSCRASH1";
/// File sizes of creates and replaces.
const SIZES: [u64; 9] = [0, 1, 511, 4096, 5000, 65536, 131_079, 262_144, 400_000];

/// One step of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new file of `size` random bytes; fsync it and its directory.
    Create {
        /// Its path (relative to the mount point).
        path: String,
        /// Bytes.
        size: u64,
    },
    /// `size` random bytes appended; fsync.
    Append {
        /// The file.
        path: String,
        /// Bytes appended.
        size: u64,
    },
    /// `size` random bytes written at `offset` in place (may extend the
    /// file); fsync.
    Overwrite {
        /// The file.
        path: String,
        /// Where.
        offset: u64,
        /// Bytes.
        size: u64,
    },
    /// Truncated to `size`; fsync.
    Truncate {
        /// The file.
        path: String,
        /// New length.
        size: u64,
    },
    /// `path.tmp` written with `size` bytes and fsynced, renamed over
    /// `path`, the directory fsynced.
    Replace {
        /// The file replaced.
        path: String,
        /// The new content's bytes.
        size: u64,
    },
    /// Renamed; both directories fsynced.
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Unlinked; the directory fsynced.
    Unlink {
        /// The file.
        path: String,
    },
    /// A scratch file of `size` bytes in [`SCRATCH`], not fsynced.
    Scratch {
        /// Its path.
        path: String,
        /// Bytes.
        size: u64,
    },
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(".", |(d, _)| d)
}

/// How a claimed file looks: its POSIX cksum and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileSum {
    /// POSIX `cksum` CRC.
    pub crc: u32,
    /// Bytes.
    pub len: u64,
}

impl FileSum {
    /// The sum of `data`.
    pub fn of(data: &[u8]) -> FileSum {
        FileSum {
            crc: posix_cksum(data),
            len: data.len() as u64,
        }
    }
}

/// What a marker says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The file is durable with this content.
    Put(String, FileSum),
    /// The name is durably gone.
    Del(String),
}

/// A decoded marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The step (0: the filesystem is made and mounted).
    pub seq: u64,
    /// What the step made durable.
    pub claims: Vec<Claim>,
}

fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'.' || b == b'_')
}

impl Marker {
    /// Decodes a marker block written for `nonce`; None if it is not one
    /// (wrong magic or nonce, bad lines, no `end`, bytes after it).
    pub fn decode(block: &[u8], nonce: u64) -> Option<Marker> {
        let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
        if block[end..].iter().any(|&b| b != 0) {
            return None;
        }
        let text = std::str::from_utf8(&block[..end]).ok()?;
        let mut lines = text.lines();
        let mut head = lines.next()?.split(' ');
        if head.next()? != MAGIC || head.next()?.parse::<u64>().ok()? != nonce {
            return None;
        }
        let seq = head.next()?.parse().ok()?;
        if head.next().is_some() {
            return None;
        }
        let mut claims = Vec::new();
        let mut ended = false;
        for line in lines {
            if ended {
                return None;
            }
            let f: Vec<&str> = line.split(' ').collect();
            match f[..] {
                ["put", p, crc, len] if valid_path(p) => claims.push(Claim::Put(
                    p.to_string(),
                    FileSum {
                        crc: crc.parse().ok()?,
                        len: len.parse().ok()?,
                    },
                )),
                ["del", p] if valid_path(p) => claims.push(Claim::Del(p.to_string())),
                ["end"] => ended = true,
                _ => return None,
            }
        }
        ended.then_some(Marker { seq, claims })
    }

    /// The block the guest script writes for this marker (for tests).
    pub fn encode(&self, nonce: u64) -> Vec<u8> {
        let mut s = format!("{MAGIC} {nonce} {}\n", self.seq);
        for c in &self.claims {
            match c {
                Claim::Put(p, f) => writeln!(s, "put {p} {} {}", f.crc, f.len),
                Claim::Del(p) => writeln!(s, "del {p}"),
            }
            .expect("writing to a String");
        }
        s.push_str("end\n");
        let mut b = s.into_bytes();
        b.resize(BLOCK as usize, 0);
        b
    }
}

/// The workload: seeded steps on the filesystem.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Step `i + 1`'s operation is `ops[i]` (step 0 makes the filesystem).
    pub ops: Vec<Op>,
}

impl Plan {
    /// `steps` seeded steps (at most [`MAX_STEPS`]).
    pub fn generate(seed: u64, steps: usize) -> Plan {
        assert!(steps <= MAX_STEPS, "{steps} steps, room for {MAX_STEPS}");
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6673_6372_6173_6800);
        // Live claimed files and their lengths.
        let mut live: Vec<(String, u64)> = Vec::new();
        let mut next = 0u32;
        let mut name = |rng: &mut StdRng, dir: Option<&str>| {
            next += 1;
            let d = dir.unwrap_or(DIRS[rng.random_range(0..DIRS.len())]);
            format!("{d}/f{next}")
        };
        let mut ops = Vec::with_capacity(steps);
        for _ in 0..steps {
            let total: u64 = live.iter().map(|(_, l)| l).sum();
            let pick = if live.len() < 3 {
                0
            } else if total > (FS_BYTES / 3) || live.len() > 14 {
                13
            } else {
                rng.random_range(0..16)
            };
            let which = if live.is_empty() {
                0
            } else {
                rng.random_range(0..live.len())
            };
            let op = match pick {
                0..=3 => {
                    let path = name(&mut rng, None);
                    let size = SIZES[rng.random_range(0..SIZES.len())];
                    live.push((path.clone(), size));
                    Op::Create { path, size }
                }
                4 | 5 => {
                    let size = rng.random_range(1..=100_000);
                    live[which].1 += size;
                    Op::Append {
                        path: live[which].0.clone(),
                        size,
                    }
                }
                6 | 7 => {
                    let len = live[which].1;
                    let offset = rng.random_range(0..=len);
                    let size = rng.random_range(1..=65_536);
                    live[which].1 = len.max(offset + size);
                    Op::Overwrite {
                        path: live[which].0.clone(),
                        offset,
                        size,
                    }
                }
                8 => {
                    let size = rng.random_range(0..=live[which].1);
                    live[which].1 = size;
                    Op::Truncate {
                        path: live[which].0.clone(),
                        size,
                    }
                }
                9 | 10 => {
                    let size = SIZES[rng.random_range(0..SIZES.len())];
                    live[which].1 = size;
                    Op::Replace {
                        path: live[which].0.clone(),
                        size,
                    }
                }
                11 | 12 => {
                    let to = name(&mut rng, None);
                    let from = std::mem::replace(&mut live[which].0, to.clone());
                    Op::Rename { from, to }
                }
                13 => Op::Unlink {
                    path: live.swap_remove(which).0,
                },
                _ => {
                    let path = name(&mut rng, Some(SCRATCH));
                    Op::Scratch {
                        path,
                        size: SIZES[rng.random_range(0..SIZES.len())],
                    }
                }
            };
            ops.push(op);
        }
        Plan { seed, ops }
    }

    /// The number that tells this run's markers from other data.
    pub fn nonce(&self) -> u64 {
        self.seed ^ 0x4d41_524b_0000
    }

    /// The guest script: mke2fs on `$dev`, mount, marker 0, the steps with
    /// their markers, umount, `e2fsck -fn` in the guest (it prints `guest
    /// fsck rc=N`). Exits non-zero if anything fails.
    pub fn script(&self, dev: &str) -> String {
        let mark0 = MARKS_START / BLOCK;
        let mut s = format!(
            "NONCE={nonce}
DEV={dev}
fail() {{ echo \"workload: step $1 failed\" >&2; exit 40; }}
put() {{ s=$(cksum \"$1\") || return 1; set -- \"$1\" $s; echo \"put $1 $2 $3\" >> /tmp/claims; }}
gone() {{ echo \"del $1\" >> /tmp/claims; }}
mark() {{
  {{ echo \"{MAGIC} $NONCE $1\"; cat /tmp/claims; echo end; }} > /tmp/mk || return 1
  : > /tmp/claims
  dd if=/tmp/mk of=/tmp/mk.blk bs=4096 count=1 conv=sync status=none || return 1
  dd if=/tmp/mk.blk of=$DEV bs=4096 seek=$(( {mark0} + $1 )) count=1 oflag=direct conv=notrunc,fsync status=none
}}
: > /tmp/claims
ln -sf /proc/mounts /etc/mtab
/usr/sbin/mke2fs -q -t ext4 -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 -F $DEV {FS_BLOCKS} || exit 31
mkdir -p /mnt/u && mount -t ext4 $DEV /mnt/u || exit 32
cd /mnt/u && mkdir {dirs} {SCRATCH} && sync {dirs} {SCRATCH} . || exit 33
mark 0 || fail 0
# Noise: scratch files rewritten and fsynced while the steps run.
( i=0; while [ ! -e /tmp/stop ]; do head -c $(( (i % 5) * 30000 + 1 )) /dev/urandom > {SCRATCH}/n$((i % 6)) \
    && sync {SCRATCH}/n$((i % 6)); i=$((i + 1)); sleep 0.1; done ) &
NOISE=$!
",
            nonce = self.nonce(),
            dirs = DIRS.join(" "),
        );
        for (i, op) in self.ops.iter().enumerate() {
            let n = i + 1;
            let body = match op {
                Op::Create { path, size } => format!(
                    "head -c {size} /dev/urandom > {path} && sync {path} {d} && put {path}",
                    d = dir_of(path)
                ),
                Op::Append { path, size } => {
                    format!("head -c {size} /dev/urandom >> {path} && sync {path} && put {path}")
                }
                Op::Overwrite { path, offset, size } => format!(
                    "head -c {size} /dev/urandom | dd of={path} bs=4096 seek={offset} \
                     oflag=seek_bytes conv=notrunc status=none && sync {path} && put {path}"
                ),
                Op::Truncate { path, size } => {
                    format!("truncate -s {size} {path} && sync {path} && put {path}")
                }
                Op::Replace { path, size } => format!(
                    "head -c {size} /dev/urandom > {path}.tmp && sync {path}.tmp && \
                     mv {path}.tmp {path} && sync {d} && put {path}",
                    d = dir_of(path)
                ),
                Op::Rename { from, to } => format!(
                    "mv {from} {to} && sync {} {} && put {to} && gone {from}",
                    dir_of(to),
                    dir_of(from)
                ),
                Op::Unlink { path } => {
                    format!("rm {path} && sync {d} && gone {path}", d = dir_of(path))
                }
                Op::Scratch { path, size } => format!("head -c {size} /dev/urandom > {path}"),
            };
            writeln!(s, "{{ {body}; }} || fail {n}; mark {n} || fail {n}").expect("String");
            if n % 10 == 0 {
                writeln!(s, "echo \"workload: step {n}\"").expect("String");
            }
        }
        write!(
            s,
            "echo \"workload: done {}\"
touch /tmp/stop && wait $NOISE
cd / && umount /mnt/u || exit 34
/usr/sbin/e2fsck -fn $DEV > /tmp/fsck.out 2>&1
echo \"guest fsck rc=$?\"
sed 's/^/guest fsck: /' /tmp/fsck.out
",
            self.ops.len()
        )
        .expect("String");
        s
    }

    /// The names marker `n` must claim, and the lengths of those put (the
    /// plan knows lengths; only the guest knows the CRCs).
    fn expected_claims(&self, n: usize, before: &State) -> Vec<(String, Option<u64>)> {
        let Some(op) = n.checked_sub(1).and_then(|i| self.ops.get(i)) else {
            return Vec::new();
        };
        let len = |p: &str| before.get(p).copied().flatten().map_or(0, |f| f.len);
        match op {
            Op::Create { path, size } | Op::Replace { path, size } => {
                vec![(path.clone(), Some(*size))]
            }
            Op::Append { path, size } => vec![(path.clone(), Some(len(path) + size))],
            Op::Overwrite { path, offset, size } => {
                vec![(path.clone(), Some(len(path).max(offset + size)))]
            }
            Op::Truncate { path, size } => vec![(path.clone(), Some(*size))],
            Op::Rename { from, to } => vec![(to.clone(), Some(len(from))), (from.clone(), None)],
            Op::Unlink { path } => vec![(path.clone(), None)],
            Op::Scratch { .. } => Vec::new(),
        }
    }
}

/// Each claimed name: its content, or None once it is durably gone.
pub type State = BTreeMap<String, Option<FileSum>>;

/// A marker found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedMarker {
    /// Its log entry.
    pub entry: usize,
    /// What it says.
    pub marker: Marker,
    /// The state once its step is done (claims of markers `0..=seq`).
    pub state: State,
}

/// Why the log does not fit the workload (as opposed to a cut failing).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogMismatch {
    /// A write outside the filesystem and the marker area.
    #[error(
        "log entry {entry}: a write of bytes {start}..{end} outside the filesystem and markers"
    )]
    StrayWrite {
        /// The entry.
        entry: usize,
        /// First byte.
        start: u64,
        /// End.
        end: u64,
    },
    /// A marker-area write that is not the next marker, or a marker that
    /// does not claim what its step does.
    #[error("log entry {entry}: {what}")]
    BadMarker {
        /// The entry.
        entry: usize,
        /// What is wrong.
        what: String,
    },
    /// Not every step's marker is in the log.
    #[error("{found} markers in the log; the workload writes {expected}")]
    MissingMarkers {
        /// Found.
        found: usize,
        /// Expected.
        expected: usize,
    },
    /// The log's sector size is not 512 bytes.
    #[error("the log's sectors are {0} bytes, not 512")]
    SectorSize(u32),
}

/// Finds the markers in `log`, checks that they come in order, one per
/// step, and claim what the plan's steps do, and folds their claims.
pub fn find_markers(log: &WriteLog, plan: &Plan) -> Result<Vec<LoggedMarker>, LogMismatch> {
    if log.sector_size != 512 {
        return Err(LogMismatch::SectorSize(log.sector_size));
    }
    let mut found: Vec<LoggedMarker> = Vec::new();
    let mut state = State::new();
    for e in &log.entries {
        if e.kind != EntryKind::Write && e.kind != EntryKind::Discard {
            continue;
        }
        let r = e.byte_range(log.sector_size);
        if r.end <= FS_BYTES {
            continue;
        }
        let bad = |what: String| LogMismatch::BadMarker {
            entry: e.index,
            what,
        };
        if r.start < MARKS_START || r.end > DISK_SIZE {
            return Err(LogMismatch::StrayWrite {
                entry: e.index,
                start: r.start,
                end: r.end,
            });
        }
        let n = found.len();
        let slot = MARKS_START + n as u64 * BLOCK;
        if e.kind != EntryKind::Write || r.start != slot || r.end != slot + BLOCK {
            return Err(bad(format!(
                "bytes {}..{} in the marker area; marker {n} is due at {slot}",
                r.start, r.end
            )));
        }
        let marker = Marker::decode(log.data(e), plan.nonce())
            .ok_or_else(|| bad(format!("marker slot {n} holds no marker")))?;
        if marker.seq != n as u64 {
            return Err(bad(format!("marker {} in slot {n}", marker.seq)));
        }
        let want = plan.expected_claims(n, &state);
        let got: Vec<(String, Option<u64>)> = marker
            .claims
            .iter()
            .map(|c| match c {
                Claim::Put(p, f) => (p.clone(), Some(f.len)),
                Claim::Del(p) => (p.clone(), None),
            })
            .collect();
        if got != want {
            return Err(bad(format!(
                "marker {n} claims {got:?}; step {n} ({:?}) makes {want:?}",
                plan.ops.get(n.wrapping_sub(1))
            )));
        }
        if let Some(Op::Rename { from, to }) = n.checked_sub(1).and_then(|i| plan.ops.get(i)) {
            let moved = marker.claims.iter().find_map(|c| match c {
                Claim::Put(p, f) if p == to => Some(*f),
                _ => None,
            });
            if moved != state.get(from).copied().flatten() {
                return Err(bad(format!("{from} renamed to {to} changed its content")));
            }
        }
        for c in &marker.claims {
            match c {
                Claim::Put(p, f) => state.insert(p.clone(), Some(*f)),
                Claim::Del(p) => state.insert(p.clone(), None),
            };
        }
        found.push(LoggedMarker {
            entry: e.index,
            marker,
            state: state.clone(),
        });
    }
    if found.len() != plan.ops.len() + 1 {
        return Err(LogMismatch::MissingMarkers {
            found: found.len(),
            expected: plan.ops.len() + 1,
        });
    }
    Ok(found)
}

/// What a name must look like at a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this (None: absent).
    Is(Option<FileSum>),
    /// One of two states (an atomic step in flight).
    Either(Option<FileSum>, Option<FileSum>),
    /// Present, any content (a step that rewrites it in place in flight).
    Present,
    /// Anything, or absent (a file being created).
    Loose,
}

/// The expectations at a cut of `len` entries whose last logged marker is
/// `markers[n]`: its state, with step `n + 1` (if any) in flight unless
/// the cut ends right at the marker (the next step starts after the
/// marker's write and flush completed). Also the pair of names of which
/// exactly one must exist (a rename in flight).
pub fn expected_at(
    plan: &Plan,
    markers: &[LoggedMarker],
    n: usize,
    len: usize,
) -> (BTreeMap<String, Expect>, Option<(String, String)>) {
    let before = &markers[n].state;
    let mut exp: BTreeMap<String, Expect> = before
        .iter()
        .map(|(p, s)| (p.clone(), Expect::Is(*s)))
        .collect();
    if len <= markers[n].entry + 1 {
        return (exp, None);
    }
    let (Some(op), Some(after)) = (plan.ops.get(n), markers.get(n + 1).map(|m| &m.state)) else {
        return (exp, None);
    };
    let old = |p: &str| before.get(p).copied().flatten();
    let new = |p: &str| after.get(p).copied().flatten();
    let mut pair = None;
    match op {
        Op::Create { path, .. } => {
            exp.insert(path.clone(), Expect::Loose);
        }
        Op::Append { path, .. } | Op::Overwrite { path, .. } | Op::Truncate { path, .. } => {
            exp.insert(path.clone(), Expect::Present);
        }
        Op::Replace { path, .. } => {
            exp.insert(path.clone(), Expect::Either(old(path), new(path)));
            exp.insert(format!("{path}.tmp"), Expect::Loose);
        }
        Op::Rename { from, to } => {
            exp.insert(from.clone(), Expect::Either(old(from), None));
            exp.insert(to.clone(), Expect::Either(None, new(to)));
            pair = Some((from.clone(), to.clone()));
        }
        Op::Unlink { path } => {
            exp.insert(path.clone(), Expect::Either(old(path), None));
        }
        Op::Scratch { .. } => {}
    }
    (exp, pair)
}

/// What a tree check compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCheck {
    /// Files compared with an exact expected content.
    pub exact: usize,
    /// Names checked to be absent.
    pub absent: usize,
    /// Names in flight (checked loosely).
    pub in_flight: usize,
}

/// The regular files under `root` (relative paths), skipping
/// [`SCRATCH`], with their sums (a file in `lost+found` is one e2fsck
/// had to save: unexpected).
pub fn read_tree(root: &Path) -> std::io::Result<BTreeMap<String, FileSum>> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, FileSum>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if rel.is_empty() && name == SCRATCH {
                    continue;
                }
                walk(root, &path, out)?;
            } else {
                let data = std::fs::read(entry.path())?;
                out.insert(path, FileSum::of(&data));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

/// Compares the files found with the expectations; every file found must
/// be expected. Returns the violations, or what was compared.
pub fn check_tree(
    found: &BTreeMap<String, FileSum>,
    exp: &BTreeMap<String, Expect>,
    pair: Option<&(String, String)>,
) -> Result<TreeCheck, Vec<String>> {
    let mut bad = Vec::new();
    let mut checked = TreeCheck::default();
    let show = |s: Option<FileSum>| {
        s.map_or("absent".to_string(), |f| {
            format!("cksum {} length {}", f.crc, f.len)
        })
    };
    for (path, e) in exp {
        let got = found.get(path).copied();
        let ok = match e {
            Expect::Is(want) => {
                if want.is_some() {
                    checked.exact += 1;
                } else {
                    checked.absent += 1;
                }
                got == *want
            }
            Expect::Either(a, b) => {
                checked.in_flight += 1;
                got == *a || got == *b
            }
            Expect::Present => {
                checked.in_flight += 1;
                got.is_some()
            }
            Expect::Loose => {
                checked.in_flight += 1;
                true
            }
        };
        if !ok {
            bad.push(format!("{path}: expected {e:?}, found {}", show(got)));
        }
    }
    for (path, f) in found {
        if !exp.contains_key(path) {
            bad.push(format!("{path}: unexpected file ({})", show(Some(*f))));
        }
    }
    if let Some((a, b)) = pair
        && found.contains_key(a) == found.contains_key(b)
    {
        bad.push(format!(
            "rename {a} -> {b} in flight: {} of the two names exist, not one",
            if found.contains_key(a) {
                "both"
            } else {
                "neither"
            }
        ));
    }
    if bad.is_empty() {
        Ok(checked)
    } else {
        Err(bad)
    }
}

/// Kinds of cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CutKind {
    /// Right after a flush entry.
    Flush,
    /// Right after a marker's entry.
    Marker,
    /// After a random write, everything before it applied.
    Prefix,
    /// After a random write; the writes since the last flush each kept
    /// with probability 1/2.
    Volatile,
    /// The whole log.
    Final,
}

/// One cut: the first `len` entries, of which those in `dropped` (all
/// writes after the prefix's last flush) are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// What kind.
    pub kind: CutKind,
    /// Entries in the prefix.
    pub len: usize,
    /// Entries of the prefix that are lost.
    pub dropped: BTreeSet<usize>,
}

impl Cut {
    /// The entries before the first dropped one (all of them if none is).
    pub fn sure(&self) -> usize {
        self.dropped.first().copied().unwrap_or(self.len)
    }

    /// The index of the last marker in the prefix.
    pub fn last_marker(&self, markers: &[LoggedMarker]) -> Option<usize> {
        markers.iter().rposition(|m| m.entry < self.len)
    }
}

/// How many cuts of each kind to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutCounts {
    /// Flush points (spread evenly over those after marker 0).
    pub flush: usize,
    /// Right after markers (spread evenly).
    pub marker: usize,
    /// Random prefixes.
    pub prefix: usize,
    /// Random volatile cuts.
    pub volatile: usize,
}

fn spread(items: &[usize], k: usize) -> Vec<usize> {
    if items.len() <= k {
        return items.to_vec();
    }
    (0..k).map(|i| items[i * items.len() / k]).collect()
}

/// Chooses the cuts: all after marker 0 (the filesystem made and
/// mounted), plus the whole log; sorted by [`Cut::sure`] (the order
/// [`replay_cut`] needs), then length.
pub fn choose_cuts(
    log: &WriteLog,
    markers: &[LoggedMarker],
    counts: CutCounts,
    seed: u64,
) -> Vec<Cut> {
    let Some(first) = markers.first() else {
        return Vec::new();
    };
    let start = first.entry + 1;
    let of_kind = |k: EntryKind| -> Vec<usize> {
        log.entries[start..]
            .iter()
            .filter(|e| e.kind == k)
            .map(|e| e.index)
            .collect()
    };
    let flushes = of_kind(EntryKind::Flush);
    let writes = of_kind(EntryKind::Write);
    let whole = |kind, len| Cut {
        kind,
        len,
        dropped: BTreeSet::new(),
    };
    let mut cuts: Vec<Cut> = Vec::new();
    cuts.extend(
        spread(&flushes, counts.flush)
            .into_iter()
            .map(|f| whole(CutKind::Flush, f + 1)),
    );
    let marks: Vec<usize> = markers[1..].iter().map(|m| m.entry).collect();
    cuts.extend(
        spread(&marks, counts.marker)
            .into_iter()
            .map(|m| whole(CutKind::Marker, m + 1)),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    if !writes.is_empty() {
        for _ in 0..counts.prefix {
            let w = writes[rng.random_range(0..writes.len())];
            cuts.push(whole(CutKind::Prefix, w + 1));
        }
        // Volatile cuts end at writes with at least one more unflushed
        // write before them, when there are such (there is something to
        // lose then).
        let after_flush = |w: usize| {
            log.entries[..=w]
                .iter()
                .rposition(|e| e.kind == EntryKind::Flush)
                .map_or(0, |f| f + 1)
        };
        let deep: Vec<usize> = writes
            .iter()
            .copied()
            .filter(|&w| {
                log.entries[after_flush(w)..w]
                    .iter()
                    .any(|e| e.kind == EntryKind::Write)
            })
            .collect();
        let pool = if deep.is_empty() { &writes } else { &deep };
        for _ in 0..counts.volatile {
            let w = pool[rng.random_range(0..pool.len())];
            let last_flush = after_flush(w);
            let dropped = log.entries[last_flush..=w]
                .iter()
                .filter(|e| e.kind == EntryKind::Write && rng.random_bool(0.5))
                .map(|e| e.index)
                .collect();
            cuts.push(Cut {
                kind: CutKind::Volatile,
                len: w + 1,
                dropped,
            });
        }
    }
    cuts.push(whole(CutKind::Final, log.entries.len()));
    cuts.sort_by_key(|c| (c.sure(), c.len, c.kind));
    cuts
}

/// The negative control's cut: right after marker `k`, with every write
/// of step `k` lost (those logged between markers `k - 1` and `k`), as if
/// the device had acknowledged the step's flushes without keeping its
/// writes. A step that made a file durable must fail the checks there.
pub fn without_step_writes(log: &WriteLog, markers: &[LoggedMarker], k: usize) -> Cut {
    let (from, to) = (markers[k - 1].entry + 1, markers[k].entry);
    Cut {
        kind: CutKind::Marker,
        len: to + 1,
        dropped: log.entries[from..to]
            .iter()
            .filter(|e| e.kind == EntryKind::Write)
            .map(|e| e.index)
            .collect(),
    }
}

/// The image at `cut`, from a zeroed device: `base` is the image after
/// the first `base_len` entries (at most [`Cut::sure`]: cuts come in the
/// order [`choose_cuts`] gives), advanced in place to the cut's sure
/// prefix; the returned image is that plus the kept rest.
pub fn replay_cut(
    log: &WriteLog,
    cut: &Cut,
    base: &mut [u8],
    base_len: &mut usize,
) -> Result<Vec<u8>, String> {
    let sure = cut.sure();
    if *base_len > sure {
        return Err(format!(
            "cut of {} entries dropping entry {sure}: the base is already at {base_len}",
            cut.len
        ));
    }
    for e in &log.entries[*base_len..sure] {
        log.apply(e, base)?;
    }
    *base_len = sure;
    let mut image = base.to_vec();
    for e in &log.entries[sure..cut.len] {
        if !cut.dropped.contains(&e.index) {
            log.apply(e, &mut image)?;
        }
    }
    Ok(image)
}

/// A host tool's exit status and output (stdout then stderr).
fn tool(name: &str, args: &[&str]) -> Result<(i32, String), String> {
    let path = qemu_harness::host::host_tool(name).map_err(|e| format!("{name}: {e}"))?;
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|e| format!("running {name}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// What the host's e2fsprogs found on one cut image.
#[derive(Debug, Clone, Default)]
pub struct FsckOutcome {
    /// The journal needed recovery (`e2fsck -E journal_only` replayed it).
    pub journal_replayed: bool,
    /// After the replay, the orphan list was not empty (an unlink or
    /// truncate in flight), so `e2fsck -p` released it, as a boot would.
    pub orphans_released: bool,
    /// The files `debugfs rdump` read out.
    pub files: BTreeMap<String, FileSum>,
}

/// Runs the checks of one cut on `image` (a file holding the
/// filesystem): `e2fsck -y -E journal_only` replays the journal (status
/// 0 or 1); if the orphan list is not empty, `e2fsck -p` processes it
/// (what the kernel does at mount; status 0 or 1); then `e2fsck -fn` must
/// find the filesystem clean (status 0), and `debugfs rdump` reads the
/// files out into `dump` (emptied first).
pub fn fsck_and_read(image: &Path, dump: &Path) -> Result<FsckOutcome, String> {
    let img = image.to_str().ok_or("image path is not UTF-8")?;
    let mut outcome = FsckOutcome::default();
    let (rc, text) = tool("e2fsck", &["-y", "-E", "journal_only", img])?;
    if rc > 1 {
        return Err(format!("e2fsck -E journal_only: status {rc}\n{text}"));
    }
    outcome.journal_replayed = text.contains("recovering journal");
    let (rc, stats) = tool("debugfs", &["-R", "stats", img])?;
    if rc != 0 {
        return Err(format!("debugfs stats: status {rc}\n{stats}"));
    }
    if stats.contains("First orphan inode:") {
        let (rc, text) = tool("e2fsck", &["-p", img])?;
        if rc > 1 {
            return Err(format!("e2fsck -p (orphans): status {rc}\n{text}"));
        }
        outcome.orphans_released = true;
    }
    let (rc, text) = tool("e2fsck", &["-fn", img])?;
    if rc != 0 {
        return Err(format!("e2fsck -fn after recovery: status {rc}\n{text}"));
    }
    if dump.exists() {
        std::fs::remove_dir_all(dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    }
    std::fs::create_dir_all(dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    let out = dump.to_str().ok_or("dump path is not UTF-8")?;
    let rdump = format!("rdump / {out}");
    let (rc, text) = tool("debugfs", &["-R", rdump.as_str(), img])?;
    if rc != 0 || text.contains("rdump:") {
        return Err(format!("debugfs rdump: status {rc}\n{text}"));
    }
    outcome.files = read_tree(dump).map_err(|e| format!("reading the dump: {e}"))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logwrites::LogBuilder;

    fn sum(crc: u32, len: u64) -> Option<FileSum> {
        Some(FileSum { crc, len })
    }

    #[test]
    fn plans_are_deterministic_and_use_only_live_files() {
        let plan = Plan::generate(5, 200);
        assert_eq!(plan.ops, Plan::generate(5, 200).ops);
        let mut live: BTreeMap<String, u64> = BTreeMap::new();
        let mut kinds = std::collections::HashSet::new();
        for op in &plan.ops {
            kinds.insert(std::mem::discriminant(op));
            match op {
                Op::Create { path, size } => {
                    assert!(live.insert(path.clone(), *size).is_none(), "{path} reused")
                }
                Op::Append { path, .. }
                | Op::Overwrite { path, .. }
                | Op::Truncate { path, .. }
                | Op::Replace { path, .. } => assert!(live.contains_key(path), "{op:?}"),
                Op::Rename { from, to } => {
                    let len = live.remove(from).expect("renamed file lives");
                    assert!(live.insert(to.clone(), len).is_none());
                }
                Op::Unlink { path } => assert!(live.remove(path).is_some()),
                Op::Scratch { path, .. } => assert!(path.starts_with("s/")),
            }
        }
        assert_eq!(kinds.len(), 8, "every kind of step occurs");
        let script = plan.script("$U_DEV");
        for n in 0..=200 {
            assert!(script.contains(&format!("mark {n} || fail {n}\n")), "{n}");
        }
        assert!(script.contains(&format!("-F $DEV {FS_BLOCKS} ")));
    }

    #[test]
    fn markers_round_trip_and_junk_is_refused() {
        let m = Marker {
            seq: 7,
            claims: vec![
                Claim::Put("d0/f1".into(), FileSum { crc: 9, len: 3 }),
                Claim::Del("d1/f2".into()),
            ],
        };
        let b = m.encode(11);
        assert_eq!(b.len(), 4096);
        assert_eq!(Marker::decode(&b, 11), Some(m.clone()));
        assert_eq!(Marker::decode(&b, 12), None, "another run's nonce");
        let mut junk = b.clone();
        junk[4000] = 1;
        assert_eq!(Marker::decode(&junk, 11), None, "bytes after the text");
        let text = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            v.resize(4096, 0);
            Marker::decode(&v, 11)
        };
        assert_eq!(text("FSCRASH1 11 7\nput d0/f1 9 3\n"), None, "no end");
        assert_eq!(text("FSCRASH1 11 7\nput ../x 9 3\nend\n"), None);
        assert_eq!(text("FSCRASH1 11 7\nput /x 9 3\nend\n"), None);
        assert_eq!(text("FSCRASH1 11 7\nend\nput d0/f1 9 3\n"), None);
        assert_eq!(
            text("FSCRASH1 11 7\nend\n"),
            Some(Marker {
                seq: 7,
                claims: vec![]
            })
        );
    }

    /// A log as the guest would leave it for a plan: marker writes (with
    /// the given sums), a filesystem write and a flush per step.
    fn log_for(plan: &Plan, sums: &[Vec<Claim>]) -> WriteLog {
        let mut b = LogBuilder::new(512);
        b.write(0, &[1u8; 4096]).flush();
        for (n, claims) in sums.iter().enumerate() {
            b.write(8 + n as u64 * 8, &[2u8; 4096]).flush();
            let m = Marker {
                seq: n as u64,
                claims: claims.clone(),
            };
            b.write(
                (MARKS_START + n as u64 * BLOCK) / 512,
                &m.encode(plan.nonce()),
            )
            .flush();
        }
        WriteLog::parse(b.finish()).expect("parses")
    }

    fn small_plan() -> Plan {
        Plan {
            seed: 1,
            ops: vec![
                Op::Create {
                    path: "d0/f1".into(),
                    size: 10,
                },
                Op::Replace {
                    path: "d0/f1".into(),
                    size: 20,
                },
                Op::Rename {
                    from: "d0/f1".into(),
                    to: "d1/f2".into(),
                },
                Op::Unlink {
                    path: "d1/f2".into(),
                },
            ],
        }
    }

    fn small_claims() -> Vec<Vec<Claim>> {
        let a = FileSum { crc: 1, len: 10 };
        let b = FileSum { crc: 2, len: 20 };
        vec![
            vec![],
            vec![Claim::Put("d0/f1".into(), a)],
            vec![Claim::Put("d0/f1".into(), b)],
            vec![Claim::Put("d1/f2".into(), b), Claim::Del("d0/f1".into())],
            vec![Claim::Del("d1/f2".into())],
        ]
    }

    #[test]
    fn markers_fold_into_states_and_in_flight_steps_are_loose() {
        let plan = small_plan();
        let log = log_for(&plan, &small_claims());
        let markers = find_markers(&log, &plan).expect("fits");
        assert_eq!(markers.len(), 5);
        // In flight: the create.
        let (e, pair) = expected_at(&plan, &markers, 0, usize::MAX);
        assert_eq!(e.get("d0/f1"), Some(&Expect::Loose));
        assert!(pair.is_none());
        // Right at the marker, nothing of the next step can be there.
        let (e, _) = expected_at(&plan, &markers, 0, markers[0].entry + 1);
        assert_eq!(e.get("d0/f1"), None);
        // The replace: old or new, the tmp file anything.
        let (e, _) = expected_at(&plan, &markers, 1, usize::MAX);
        assert_eq!(
            e.get("d0/f1"),
            Some(&Expect::Either(sum(1, 10), sum(2, 20)))
        );
        assert_eq!(e.get("d0/f1.tmp"), Some(&Expect::Loose));
        let mut found = BTreeMap::new();
        found.insert("d0/f1".to_string(), FileSum { crc: 2, len: 20 });
        assert!(check_tree(&found, &e, None).is_ok());
        found.insert("d0/f1".to_string(), FileSum { crc: 3, len: 20 });
        assert!(check_tree(&found, &e, None).is_err(), "neither old nor new");
        // The rename: exactly one of the names.
        let (e, pair) = expected_at(&plan, &markers, 2, usize::MAX);
        let pair = pair.expect("a rename in flight");
        let mut found = BTreeMap::new();
        found.insert("d1/f2".to_string(), FileSum { crc: 2, len: 20 });
        assert!(check_tree(&found, &e, Some(&pair)).is_ok());
        found.insert("d0/f1".to_string(), FileSum { crc: 2, len: 20 });
        let err = check_tree(&found, &e, Some(&pair)).unwrap_err();
        assert!(err[0].contains("both"), "{err:?}");
        assert!(check_tree(&BTreeMap::new(), &e, Some(&pair)).is_err());
        // After the unlink: both names must be gone, nothing unexpected.
        let (e, pair) = expected_at(&plan, &markers, 4, usize::MAX);
        assert!(pair.is_none());
        assert_eq!(e.get("d0/f1"), Some(&Expect::Is(None)));
        let ok = check_tree(&BTreeMap::new(), &e, None).expect("clean");
        assert_eq!(ok.absent, 2);
        let mut found = BTreeMap::new();
        found.insert("d2/x".to_string(), FileSum { crc: 0, len: 0 });
        assert!(check_tree(&found, &e, None).is_err(), "a stray file");
    }

    #[test]
    fn markers_that_do_not_fit_the_plan_are_errors() {
        let plan = small_plan();
        let mut claims = small_claims();
        claims[1] = vec![Claim::Put("d0/f1".into(), FileSum { crc: 1, len: 11 })];
        assert!(matches!(
            find_markers(&log_for(&plan, &claims), &plan),
            Err(LogMismatch::BadMarker { .. })
        ));
        let mut claims = small_claims();
        claims[3][0] = Claim::Put("d1/f2".into(), FileSum { crc: 7, len: 20 });
        let err = find_markers(&log_for(&plan, &claims), &plan).unwrap_err();
        assert!(err.to_string().contains("changed its content"), "{err}");
        let mut claims = small_claims();
        claims.pop();
        assert!(matches!(
            find_markers(&log_for(&plan, &claims), &plan),
            Err(LogMismatch::MissingMarkers {
                found: 4,
                expected: 5
            })
        ));
        let mut b = LogBuilder::new(512);
        b.write(FS_BYTES / 512, &[0u8; 512]);
        assert!(matches!(
            find_markers(&WriteLog::parse(b.finish()).expect("parses"), &plan),
            Err(LogMismatch::StrayWrite { .. })
        ));
    }

    #[test]
    fn cuts_replay_prefixes_and_drop_only_unflushed_writes() {
        let plan = small_plan();
        let log = log_for(&plan, &small_claims());
        let markers = find_markers(&log, &plan).expect("fits");
        let counts = CutCounts {
            flush: 3,
            marker: 2,
            prefix: 4,
            volatile: 6,
        };
        let cuts = choose_cuts(&log, &markers, counts, 9);
        assert_eq!(cuts.len(), 3 + 2 + 4 + 6 + 1);
        assert!(cuts.iter().all(|c| c.len > markers[0].entry));
        assert_eq!(cuts.last().map(|c| c.kind), Some(CutKind::Final));
        let mut base = vec![0u8; DISK_SIZE as usize];
        let mut base_len = 0;
        for c in &cuts {
            let last_flush = log.entries[..c.len]
                .iter()
                .rposition(|e| e.kind == EntryKind::Flush)
                .unwrap_or(0);
            assert!(c.dropped.iter().all(|&d| d > last_flush && d < c.len));
            let image = replay_cut(&log, c, &mut base, &mut base_len).expect("replays");
            let mut want = vec![0u8; DISK_SIZE as usize];
            for e in &log.entries[..c.len] {
                if !c.dropped.contains(&e.index) {
                    log.apply(e, &mut want).expect("fits");
                }
            }
            assert!(image == want, "cut {c:?}");
        }
        assert_eq!(
            base_len,
            log.entries.len(),
            "the base reached the end of the log"
        );
    }

    #[test]
    fn read_tree_skips_scratch_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        for d in ["d0", "s", "lost+found"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        std::fs::write(dir.path().join("d0/a"), b"123456789").expect("write");
        std::fs::write(dir.path().join("s/x"), b"x").expect("write");
        std::fs::write(dir.path().join("lost+found/#12"), b"x").expect("write");
        let found = read_tree(dir.path()).expect("reads");
        assert_eq!(found.len(), 2);
        assert_eq!(
            found["d0/a"],
            FileSum {
                crc: 930_766_865,
                len: 9
            }
        );
        assert_eq!(found["lost+found/#12"].len, 1);
    }
}
