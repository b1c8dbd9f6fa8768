//! [`MapIter`]: walks file offsets one [`Extent`] at a time, reusing the
//! last extent while it still covers the position (R10: one mapping call
//! for a readahead window backed by one extent).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use crate::error::{Error, Result};
use crate::map::{BlockMapper, Extent, MapError, MapIntent};

/// The mapping cursor of one engine call (the kernel's `map_bh` cursor or
/// `wpc->iomap`, typed).
#[derive(Debug)]
pub struct MapIter<'a> {
    mapper: &'a dyn BlockMapper,
    intent: MapIntent,
    /// End of the window mapping requests are sized to (R9).
    end: u64,
    cached: Option<Extent>,
}

impl<'a> MapIter<'a> {
    /// A cursor whose requests reach at most to `end`.
    pub fn new(mapper: &'a dyn BlockMapper, intent: MapIntent, end: u64) -> Self {
        MapIter {
            mapper,
            intent,
            end,
            cached: None,
        }
    }

    /// Moves the window end (readahead: capped at EOF, R9).
    pub fn set_end(&mut self, end: u64) {
        self.end = end;
    }

    /// The extent containing `pos`: the cached one if it still covers
    /// `pos`, else a new mapping call for `[pos, end)`. Rejects an answer
    /// that does not contain `pos` (no progress).
    pub fn extent_at(&mut self, pos: u64) -> Result<Extent> {
        if let Some(e) = self.cached.filter(|e| e.contains(pos)) {
            return Ok(e);
        }
        let len = self.end.saturating_sub(pos).max(1);
        let e = self
            .mapper
            .map(pos, len, self.intent)
            .map_err(|source| Error::Map { pos, source })?;
        if e.len == 0 || !e.contains(pos) {
            return Err(Error::Map {
                pos,
                source: MapError::BadExtent { pos, extent: e },
            });
        }
        log::trace!("map({pos}, {len}, {:?}) -> {e:?}", self.intent);
        self.cached = Some(e);
        Ok(e)
    }

    /// Forgets the cached extent (after an error, or when the mapping may
    /// have changed).
    pub fn invalidate(&mut self) {
        self.cached = None;
    }
}
