//! [`Inode`]: what the engines need to know about one file: its page
//! cache, its id there, its block mapper and its size.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pagecache::{FileId, PageCache};

use crate::map::BlockMapper;

/// One file as the engines see it. The size is one atomic `u64` (K17);
/// the engines take one snapshot per folio decision.
#[derive(Debug)]
pub struct Inode {
    /// The page cache holding the file's folios.
    pub cache: Arc<PageCache>,
    /// The file's id in `cache`.
    pub file: FileId,
    /// The file's block mapping.
    pub mapper: Arc<dyn BlockMapper>,
    size: AtomicU64,
}

impl Inode {
    /// A file of `size` bytes.
    pub fn new(
        cache: Arc<PageCache>,
        file: FileId,
        mapper: Arc<dyn BlockMapper>,
        size: u64,
    ) -> Self {
        Inode {
            cache,
            file,
            mapper,
            size: AtomicU64::new(size),
        }
    }

    /// The file size (i_size).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Raises the file size to `size` if it is smaller (a write ending
    /// past EOF, R46); concurrent extenders keep the largest.
    pub fn extend_size(&self, size: u64) {
        self.size.fetch_max(size, Ordering::AcqRel);
    }

    /// Sets the file size (the caller truncates the cache when shrinking).
    pub fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release);
    }
}
