//! A file-operation sequence drawn from a seed, and a plain in-memory model
//! of what the file holds after it. The guest runs the sequence against a
//! page-cache `File` on the NVMe device and checks every read against the
//! model; the host replays the same sequence to know what the raw image
//! must hold.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// write_at(pos, len bytes of `data(seed, len)`).
    Write {
        /// Offset.
        pos: u64,
        /// Length.
        len: usize,
        /// Seed of the bytes.
        seed: u64,
    },
    /// read_at(pos, len): must return the model's bytes.
    Read {
        /// Offset.
        pos: u64,
        /// Length.
        len: usize,
    },
    /// set_len(len).
    SetLen(u64),
    /// fsync.
    Fsync,
}

/// The bytes a write with `seed` puts down.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// `n` operations on a file of at most `max_size` bytes, from `seed`:
/// mostly writes and reads of unaligned offsets and lengths, some size
/// changes and fsyncs. The sequence ends with an fsync.
pub fn ops(seed: u64, n: usize, max_size: u64) -> Vec<FileOp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..n {
        let pick = rng.random_range(0..100);
        let pos = rng.random_range(0..max_size);
        let len = rng
            .random_range(1..=64 * 1024)
            .min((max_size - pos) as usize)
            .max(1);
        out.push(match pick {
            0..45 => FileOp::Write {
                pos,
                len,
                seed: seed.wrapping_mul(1000).wrapping_add(i as u64),
            },
            45..85 => FileOp::Read { pos, len },
            85..93 => FileOp::SetLen(rng.random_range(0..=max_size)),
            _ => FileOp::Fsync,
        });
    }
    out.push(FileOp::Fsync);
    out
}

/// What the file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Model {
    /// The file's bytes (its length is the file size).
    pub bytes: Vec<u8>,
}

impl Model {
    /// Applies `op`; for a read, returns what it must return (short at EOF).
    pub fn apply(&mut self, op: &FileOp) -> Option<Vec<u8>> {
        match *op {
            FileOp::Write { pos, len, seed } => {
                let end = pos as usize + len;
                if self.bytes.len() < end {
                    self.bytes.resize(end, 0);
                }
                self.bytes[pos as usize..end].copy_from_slice(&data(seed, len));
                None
            }
            FileOp::Read { pos, len } => {
                let start = (pos as usize).min(self.bytes.len());
                let end = (pos as usize + len).min(self.bytes.len());
                Some(self.bytes[start..end].to_vec())
            }
            FileOp::SetLen(len) => {
                self.bytes.resize(len as usize, 0);
                None
            }
            FileOp::Fsync => None,
        }
    }

    /// The model after all of `ops`.
    pub fn after(ops: &[FileOp]) -> Model {
        let mut m = Model::default();
        for op in ops {
            m.apply(op);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_reproducible_and_mixed() {
        let a = ops(5, 300, 1 << 20);
        assert_eq!(a, ops(5, 300, 1 << 20));
        assert_ne!(a, ops(6, 300, 1 << 20));
        for kind in [
            |o: &FileOp| matches!(o, FileOp::Write { .. }),
            |o: &FileOp| matches!(o, FileOp::Read { .. }),
            |o: &FileOp| matches!(o, FileOp::SetLen(_)),
        ] {
            assert!(a.iter().filter(|o| kind(o)).count() > 10);
        }
        assert_eq!(a.last(), Some(&FileOp::Fsync));
    }

    #[test]
    fn model_semantics() {
        let mut m = Model::default();
        m.apply(&FileOp::Write {
            pos: 10,
            len: 4,
            seed: 1,
        });
        assert_eq!(m.bytes.len(), 14);
        assert!(m.bytes[..10].iter().all(|&b| b == 0));
        assert_eq!(
            m.apply(&FileOp::Read { pos: 12, len: 10 }).map(|v| v.len()),
            Some(2)
        );
        m.apply(&FileOp::SetLen(11));
        assert_eq!(m.bytes.len(), 11);
        m.apply(&FileOp::SetLen(20));
        assert!(
            m.bytes[11..].iter().all(|&b| b == 0),
            "growing zeroes the gap"
        );
        assert_eq!(m.apply(&FileOp::Read { pos: 30, len: 5 }), Some(Vec::new()));
    }
}
