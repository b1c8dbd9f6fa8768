//! The write log QEMU's blklogwrites filter keeps (the on-disk format of
//! Linux's dm-log-writes): a superblock in sector 0, then one entry per
//! write, flush or discard in the order the image completed them, each an
//! entry sector followed by the written data.
//!
//! ```text
//! sector 0:   magic u64 | version u64 | nr_entries u64 | sectorsize u32   (little-endian)
//! entry:      sector u64 | nr_sectors u64 | flags u64 | data_len u64, padded to a sector,
//!             then nr_sectors sectors of data (none for a discard)
//! ```
//!
//! Sector numbers and counts are in units of the log's sector size. A
//! flush is an entry with the FLUSH flag and no sectors. The log is input:
//! every field is checked and a short or malformed log is a [`LogError`]
//! naming the entry and the byte offset.

use std::ops::Range;

/// dm-log-writes' magic ("jsfwshr" with a leading 0).
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only version there is.
pub const VERSION: u64 = 1;
/// The entry is (or ends with) a flush.
pub const FLAG_FLUSH: u64 = 1 << 0;
/// Forced unit access.
pub const FLAG_FUA: u64 = 1 << 1;
/// A discard: no data follows.
pub const FLAG_DISCARD: u64 = 1 << 2;
/// A mark (dm-log-writes' user marks; blklogwrites writes none).
pub const FLAG_MARK: u64 = 1 << 3;
const KNOWN_FLAGS: u64 = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK;
/// Bytes of the superblock's fields.
const SUPER_LEN: usize = 28;
/// Bytes of an entry's fields.
const ENTRY_LEN: usize = 32;

/// Why a log could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    /// Shorter than a superblock.
    #[error("write log: {len} bytes, shorter than the {SUPER_LEN}-byte superblock")]
    NoSuperblock {
        /// The log's length.
        len: usize,
    },
    /// Not a dm-log-writes log.
    #[error("write log: bad magic {found:#x} (expected {MAGIC:#x})")]
    BadMagic {
        /// What sector 0 holds.
        found: u64,
    },
    /// A version this reader does not know.
    #[error("write log: version {0}, only version {VERSION} is known")]
    BadVersion(u64),
    /// A sector size that is not a power of two of at least 512 bytes.
    #[error("write log: sector size {0} is not a power of two from 512 to 16 MiB")]
    BadSectorSize(u32),
    /// The log ends inside an entry's header.
    #[error(
        "write log: entry {index} at byte {offset}: the log ends ({len} bytes) inside its header"
    )]
    TruncatedEntry {
        /// The entry's index.
        index: u64,
        /// Its byte offset in the log.
        offset: u64,
        /// The log's length.
        len: usize,
    },
    /// The log ends inside an entry's data.
    #[error(
        "write log: entry {index} at byte {offset}: {sectors} sectors of data, but the log ends \
         ({len} bytes) before them"
    )]
    TruncatedData {
        /// The entry's index.
        index: u64,
        /// Its byte offset in the log.
        offset: u64,
        /// Its data sectors.
        sectors: u64,
        /// The log's length.
        len: usize,
    },
    /// Flags outside the four defined ones.
    #[error("write log: entry {index} at byte {offset}: unknown flags {flags:#x}")]
    BadFlags {
        /// The entry's index.
        index: u64,
        /// Its byte offset in the log.
        offset: u64,
        /// The flags.
        flags: u64,
    },
    /// A flush that also claims sectors, or sector arithmetic that overflows.
    #[error("write log: entry {index} at byte {offset}: {what}")]
    BadEntry {
        /// The entry's index.
        index: u64,
        /// Its byte offset in the log.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// What one entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Data written (also a Write Zeroes, whose data the log holds as zeroes).
    Write,
    /// A flush: everything logged before it is durable.
    Flush,
    /// A discard: the sectors' contents are no longer defined.
    Discard,
    /// A dm-log-writes mark.
    Mark,
}

/// One logged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log (0 for the first entry).
    pub index: usize,
    /// What it is.
    pub kind: EntryKind,
    /// The raw flags (FUA, and FLUSH on a write that was also a flush).
    pub flags: u64,
    /// First sector on the device, in log sectors.
    pub sector: u64,
    /// Sectors, in log sectors.
    pub nr_sectors: u64,
    /// Where its data is in [`WriteLog::bytes`] (empty unless a write).
    pub data: Range<usize>,
}

impl Entry {
    /// Device byte range `[start, end)` the entry covers.
    pub fn byte_range(&self, sector_size: u32) -> Range<u64> {
        let s = u64::from(sector_size);
        self.sector * s..(self.sector + self.nr_sectors) * s
    }
}

/// A parsed log.
#[derive(Debug, Clone)]
pub struct WriteLog {
    /// The log sector size.
    pub sector_size: u32,
    /// The entries, in log order.
    pub entries: Vec<Entry>,
    /// The log file's bytes (entries' data point into it).
    pub bytes: Vec<u8>,
    /// Bytes after the last entry the superblock counts that are not zero
    /// (entries written after the superblock was last updated, e.g. when
    /// QEMU did not close the drive).
    pub unaccounted_bytes: usize,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl WriteLog {
    /// Parses a log. Every entry the superblock counts must be there in
    /// full; anything after them is only counted
    /// ([`WriteLog::unaccounted_bytes`]).
    pub fn parse(bytes: Vec<u8>) -> Result<WriteLog, LogError> {
        if bytes.len() < SUPER_LEN {
            return Err(LogError::NoSuperblock { len: bytes.len() });
        }
        let magic = le64(&bytes, 0);
        if magic != MAGIC {
            return Err(LogError::BadMagic { found: magic });
        }
        let version = le64(&bytes, 8);
        if version != VERSION {
            return Err(LogError::BadVersion(version));
        }
        let nr_entries = le64(&bytes, 16);
        let sector_size = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        if !sector_size.is_power_of_two() || !(512..1 << 24).contains(&sector_size) {
            return Err(LogError::BadSectorSize(sector_size));
        }
        let ss = sector_size as usize;
        let len = bytes.len();
        let mut entries = Vec::new();
        let mut at = ss;
        for index in 0..nr_entries {
            let offset = at as u64;
            if at.checked_add(ENTRY_LEN).is_none_or(|e| e > len) {
                return Err(LogError::TruncatedEntry { index, offset, len });
            }
            let sector = le64(&bytes, at);
            let nr_sectors = le64(&bytes, at + 8);
            let flags = le64(&bytes, at + 16);
            if flags & !KNOWN_FLAGS != 0 {
                return Err(LogError::BadFlags {
                    index,
                    offset,
                    flags,
                });
            }
            let bad = |what: String| LogError::BadEntry {
                index,
                offset,
                what,
            };
            let kind = if flags & FLAG_DISCARD != 0 {
                EntryKind::Discard
            } else if flags & FLAG_MARK != 0 {
                EntryKind::Mark
            } else if flags & FLAG_FLUSH != 0 && nr_sectors == 0 {
                EntryKind::Flush
            } else {
                EntryKind::Write
            };
            if kind == EntryKind::Write && nr_sectors == 0 {
                return Err(bad("a write of 0 sectors".into()));
            }
            sector
                .checked_add(nr_sectors)
                .and_then(|e| e.checked_mul(u64::from(sector_size)))
                .ok_or_else(|| bad(format!("sectors {sector}+{nr_sectors} overflow")))?;
            // The entry's own sector, then its data (none for a discard,
            // and marks carry their text in data_len bytes).
            let data_sectors = match kind {
                EntryKind::Write | EntryKind::Flush => nr_sectors,
                EntryKind::Discard => 0,
                EntryKind::Mark => le64(&bytes, at + 24).div_ceil(ss as u64),
            };
            let data_start = at + ss;
            let data_end = usize::try_from(data_sectors)
                .ok()
                .and_then(|n| n.checked_mul(ss))
                .and_then(|n| n.checked_add(data_start))
                .filter(|&e| e <= len)
                .ok_or(LogError::TruncatedData {
                    index,
                    offset,
                    sectors: data_sectors,
                    len,
                })?;
            entries.push(Entry {
                index: entries.len(),
                kind,
                flags,
                sector,
                nr_sectors,
                data: if kind == EntryKind::Write {
                    data_start..data_end
                } else {
                    data_start..data_start
                },
            });
            at = data_end;
        }
        let unaccounted_bytes = bytes[at.min(len)..].iter().filter(|&&b| b != 0).count();
        Ok(WriteLog {
            sector_size,
            entries,
            bytes,
            unaccounted_bytes,
        })
    }

    /// The data an entry wrote (empty unless a write).
    pub fn data(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.data.clone()]
    }

    /// Applies entry `e` to `image` (a write's data; a discard's bytes
    /// become zeroes, what QEMU's file driver leaves). Fails if the entry
    /// reaches past the image.
    pub fn apply(&self, e: &Entry, image: &mut [u8]) -> Result<(), String> {
        self.apply_sectors(e, image, |_| true)
    }

    /// Applies the sectors of entry `e` that `keep` chooses (given each
    /// sector's index in the entry): a write torn by a power cut.
    pub fn apply_sectors(
        &self,
        e: &Entry,
        image: &mut [u8],
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<(), String> {
        if !matches!(e.kind, EntryKind::Write | EntryKind::Discard) {
            return Ok(());
        }
        let r = e.byte_range(self.sector_size);
        let (start, end) = (r.start as usize, r.end as usize);
        if end > image.len() {
            return Err(format!(
                "entry {} writes bytes {start}..{end}, past the {}-byte image",
                e.index,
                image.len()
            ));
        }
        let ss = self.sector_size as usize;
        let data = self.data(e);
        for (i, sector) in image[start..end].chunks_mut(ss).enumerate() {
            if !keep(i as u64) {
                continue;
            }
            match e.kind {
                EntryKind::Write => sector.copy_from_slice(&data[i * ss..(i + 1) * ss]),
                _ => sector.fill(0),
            }
        }
        Ok(())
    }

    /// The image after every entry, from an all-zero one of `size` bytes.
    pub fn replay_all(&self, size: usize) -> Result<Vec<u8>, String> {
        let mut image = vec![0u8; size];
        for e in &self.entries {
            self.apply(e, &mut image)?;
        }
        Ok(image)
    }
}

/// Builds logs in the same format, for tests (synthetic logs).
#[derive(Debug, Clone)]
pub struct LogBuilder {
    sector_size: u32,
    out: Vec<u8>,
    entries: u64,
}

impl LogBuilder {
    /// An empty log with `sector_size`-byte sectors.
    pub fn new(sector_size: u32) -> LogBuilder {
        LogBuilder {
            sector_size,
            out: vec![0u8; sector_size as usize],
            entries: 0,
        }
    }

    fn entry(&mut self, sector: u64, nr_sectors: u64, flags: u64, data: &[u8]) {
        let ss = self.sector_size as usize;
        let mut head = vec![0u8; ss];
        head[0..8].copy_from_slice(&sector.to_le_bytes());
        head[8..16].copy_from_slice(&nr_sectors.to_le_bytes());
        head[16..24].copy_from_slice(&flags.to_le_bytes());
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(data);
        self.entries += 1;
    }

    /// A write of `data` (a whole number of sectors) at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> &mut Self {
        let ss = self.sector_size as usize;
        assert!(data.len().is_multiple_of(ss) && !data.is_empty());
        self.entry(sector, (data.len() / ss) as u64, 0, data);
        self
    }

    /// A flush.
    pub fn flush(&mut self) -> &mut Self {
        self.entry(0, 0, FLAG_FLUSH, &[]);
        self
    }

    /// A discard.
    pub fn discard(&mut self, sector: u64, nr_sectors: u64) -> &mut Self {
        self.entry(sector, nr_sectors, FLAG_DISCARD, &[]);
        self
    }

    /// The log's bytes, with the superblock counting every entry.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.entries.to_le_bytes());
        out[24..28].copy_from_slice(&self.sector_size.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        LogBuilder::new(512)
            .write(2, &[7u8; 1024])
            .flush()
            .discard(3, 1)
            .write(0, &[9u8; 512])
            .finish()
    }

    #[test]
    fn parses_and_replays_a_log() {
        let log = WriteLog::parse(sample()).expect("parses");
        let kinds: Vec<EntryKind> = log.entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Write,
                EntryKind::Flush,
                EntryKind::Discard,
                EntryKind::Write
            ]
        );
        assert_eq!(log.entries[0].byte_range(512), 1024..2048);
        assert_eq!(log.unaccounted_bytes, 0);
        let image = log.replay_all(4096).expect("fits");
        assert!(image[..512].iter().all(|&b| b == 9));
        assert!(image[512..1024].iter().all(|&b| b == 0));
        assert!(image[1024..1536].iter().all(|&b| b == 7));
        assert!(image[1536..2048].iter().all(|&b| b == 0), "discarded");
        let mut torn = vec![0u8; 4096];
        log.apply_sectors(&log.entries[0], &mut torn, |i| i == 1)
            .expect("fits");
        assert!(torn[1024..1536].iter().all(|&b| b == 0), "sector 0 lost");
        assert!(torn[1536..2048].iter().all(|&b| b == 7), "sector 1 kept");
        assert_eq!(
            log.replay_all(1024).unwrap_err(),
            "entry 0 writes bytes 1024..2048, past the 1024-byte image"
        );
    }

    #[test]
    fn malformed_logs_are_clear_errors() {
        let good = sample();
        assert_eq!(
            WriteLog::parse(good[..10].to_vec()).unwrap_err(),
            LogError::NoSuperblock { len: 10 }
        );
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::BadMagic { .. }
        ));
        let mut bad = good.clone();
        bad[8] = 2;
        assert_eq!(WriteLog::parse(bad).unwrap_err(), LogError::BadVersion(2));
        let mut bad = good.clone();
        bad[24..28].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::BadSectorSize(1000)
        );
        // Cut inside the first entry's data, inside the second's header.
        let err = WriteLog::parse(good[..512 + 512 + 100].to_vec()).unwrap_err();
        assert_eq!(
            err,
            LogError::TruncatedData {
                index: 0,
                offset: 512,
                sectors: 2,
                len: 1124
            }
        );
        assert_eq!(
            err.to_string(),
            "write log: entry 0 at byte 512: 2 sectors of data, but the log ends (1124 bytes) \
             before them"
        );
        let err = WriteLog::parse(good[..2048 + 10].to_vec()).unwrap_err();
        assert_eq!(
            err,
            LogError::TruncatedEntry {
                index: 1,
                offset: 2048,
                len: 2058
            }
        );
        // The superblock counts more entries than there are.
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::TruncatedEntry { index: 4, .. }
        ));
        // A count of 2^64-1 entries fails at the end, it does not allocate.
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::TruncatedEntry { index: 4, .. }
        ));
        let mut bad = good.clone();
        bad[512 + 16] = 0x30;
        assert_eq!(
            WriteLog::parse(bad).unwrap_err().to_string(),
            "write log: entry 0 at byte 512: unknown flags 0x30"
        );
        // Huge sector counts: overflow and truncation, not a panic.
        let mut bad = good.clone();
        bad[512 + 8..512 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::BadEntry { index: 0, .. }
        ));
        let mut bad = good.clone();
        bad[512 + 8..512 + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::TruncatedData { index: 0, .. }
        ));
        let mut bad = good.clone();
        bad[512 + 8..512 + 16].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            WriteLog::parse(bad).unwrap_err(),
            LogError::BadEntry { index: 0, .. }
        ));
        // Entries past the superblock's count are counted, not parsed.
        let mut short = good.clone();
        short[16..24].copy_from_slice(&3u64.to_le_bytes());
        let log = WriteLog::parse(short).expect("parses");
        assert_eq!(log.entries.len(), 3);
        assert!(log.unaccounted_bytes > 0);
    }
}
