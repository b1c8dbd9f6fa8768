//! Writes tagged with their sequence number, for a front end killed in the
//! middle of its I/O: write `seq` goes to chunk `seq % chunks` of a range,
//! each of its blocks holding `seq` (in its first word) and a pattern of
//! (`seq`, LBA). Afterwards every block says which write it came from, so
//! the range can be checked against the writes the killed front end saw
//! acknowledged: an acknowledged write must read back unless a later
//! write to the same chunk replaced it; a range with no acknowledged
//! write may hold its old contents (zeroes) or any write submitted to it.

use crate::pattern;

/// Tags the first word of every block (XORed with the sequence number and
/// the LBA), so that zeroes or another test's data never decode.
const TAG: u64 = 0x5345_5157_5249_5445;

/// Where the writes go: `chunks` chunks of `chunk_blocks` blocks of
/// `lba_size` bytes from block `first_lba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First block of the range.
    pub first_lba: u64,
    /// Chunks in the range (write `seq` goes to chunk `seq % chunks`).
    pub chunks: u64,
    /// Blocks per chunk (per write).
    pub chunk_blocks: u64,
    /// Bytes per block.
    pub lba_size: usize,
}

impl Layout {
    /// The first block write `seq` covers.
    pub fn lba_of(&self, seq: u64) -> u64 {
        self.first_lba + (seq % self.chunks) * self.chunk_blocks
    }

    /// Bytes per write.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_blocks as usize * self.lba_size
    }

    /// Bytes of the whole range.
    pub fn range_bytes(&self) -> usize {
        self.chunks as usize * self.chunk_bytes()
    }

    /// Fills `out` (one chunk) with write `seq`'s data.
    pub fn fill(&self, seq: u64, out: &mut [u8]) {
        let lba = self.lba_of(seq);
        pattern::fill(seq ^ TAG, lba, self.lba_size, out);
        for (b, block) in out.chunks_mut(self.lba_size).enumerate() {
            let l = lba + b as u64;
            block[..8].copy_from_slice(&(seq ^ TAG ^ l).to_le_bytes());
        }
    }

    /// The write a block at `lba` holds whole, if any.
    fn decode(&self, lba: u64, block: &[u8]) -> Option<u64> {
        let word: [u8; 8] = block.get(..8)?.try_into().ok()?;
        let seq = u64::from_le_bytes(word) ^ TAG ^ lba;
        let mut want = vec![0u8; self.lba_size];
        pattern::fill(seq ^ TAG, lba, self.lba_size, &mut want);
        (block[8..] == want[8..]).then_some(seq)
    }

    /// Checks the whole range (`data`, read from block `first_lba`)
    /// against the acknowledged writes `acked` of a front end that kept
    /// at most `qd` writes in flight and submitted them in order.
    pub fn check(&self, acked: &[u64], qd: u64, data: &[u8]) -> Result<Outcome, String> {
        if data.len() != self.range_bytes() {
            return Err(format!(
                "{} bytes read, the range has {}",
                data.len(),
                self.range_bytes()
            ));
        }
        let mut is_acked = std::collections::BTreeSet::new();
        let mut latest = vec![None::<u64>; self.chunks as usize];
        for &seq in acked {
            is_acked.insert(seq);
            let c = (seq % self.chunks) as usize;
            latest[c] = latest[c].max(Some(seq));
        }
        // Writes were submitted in order with at most `qd` in flight: none
        // went out past the first unacknowledged one plus `qd`.
        let mut first_unacked = 0;
        while is_acked.contains(&first_unacked) {
            first_unacked += 1;
        }
        let limit = first_unacked + qd;
        let mut out = Outcome::default();
        for (i, block) in data.chunks(self.lba_size).enumerate() {
            let lba = self.first_lba + i as u64;
            let c = i / self.chunk_blocks as usize;
            let Some(seq) = self.decode(lba, block) else {
                if latest[c].is_none() && block.iter().all(|&b| b == 0) {
                    out.untouched += 1;
                    continue;
                }
                return Err(format!(
                    "block {lba} (chunk {c}) holds no write whole{}",
                    match latest[c] {
                        Some(s) => format!("; write {s} to it was acknowledged"),
                        None => String::new(),
                    }
                ));
            };
            if seq % self.chunks != c as u64 || seq >= limit {
                return Err(format!(
                    "block {lba} (chunk {c}) holds write {seq}, never submitted there \
                     (writes go out in order, none past {limit})"
                ));
            }
            match latest[c] {
                Some(s) if seq < s => {
                    return Err(format!(
                        "block {lba} (chunk {c}) holds write {seq}, older than the \
                         acknowledged write {s}: an acknowledged write was lost"
                    ));
                }
                Some(s) if seq == s => out.acked += 1,
                _ => out.newer += 1,
            }
        }
        Ok(out)
    }
}

/// What [`Layout::check`] found, in blocks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Blocks holding their chunk's last acknowledged write.
    pub acked: u64,
    /// Blocks holding a write submitted after it (or to a chunk with no
    /// acknowledged write), not acknowledged before the front end died.
    pub newer: u64,
    /// Blocks of chunks never acknowledged that still hold zeroes.
    pub untouched: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Layout = Layout {
        first_lba: 100,
        chunks: 4,
        chunk_blocks: 2,
        lba_size: 512,
    };

    fn image(writes: &[u64]) -> Vec<u8> {
        let mut data = vec![0u8; L.range_bytes()];
        for &seq in writes {
            let at = ((L.lba_of(seq) - L.first_lba) as usize) * L.lba_size;
            L.fill(seq, &mut data[at..at + L.chunk_bytes()]);
        }
        data
    }

    #[test]
    fn acknowledged_writes_must_read_back_unless_replaced() {
        // Writes 0..=6 landed; 0..=4 acknowledged; chunk 3 never written.
        let data = image(&[0, 1, 2, 4, 5, 6]);
        let got = L.check(&[0, 1, 2, 4], 8, &data).expect("consistent");
        // Chunk 0: 4 (acked); chunk 1: 5 (newer than 1); chunk 2: 6
        // (newer than 2); chunk 3: zero.
        assert_eq!(
            got,
            Outcome {
                acked: 2,
                newer: 4,
                untouched: 2
            }
        );
        // Write 4 acknowledged but chunk 0 still holds write 0: lost.
        let data = image(&[0, 1, 2]);
        assert!(L.check(&[0, 1, 2, 4], 8, &data).is_err());
        // A write past what could have been submitted.
        let data = image(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        assert!(L.check(&[0, 1], 4, &data).is_err());
        // A chunk with an acknowledged write holding zeroes.
        let mut data = image(&[0, 1]);
        data[..L.chunk_bytes()].fill(0);
        assert!(L.check(&[0, 1], 8, &data).is_err());
        // A torn block.
        let mut data = image(&[0, 1]);
        data[L.lba_size + 100] ^= 1;
        assert!(L.check(&[0, 1], 8, &data).is_err());
    }
}
