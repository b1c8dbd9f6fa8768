//! The DMA buffer pool: memory the controller can reach, carved out of
//! 2 MiB chunks that are mapped into the IOMMU once, so the I/O path never
//! maps or unmaps (the emulated IOMMU makes each map expensive).
//!
//! A [`DmaBuffer`] is a run of 4 KiB pages inside one chunk; it goes back
//! to the pool when dropped. A chunk left with no buffer is unmapped and
//! returned to the system, except one kept empty and warm so that a steady
//! workload does not map and unmap. Buffers larger than a chunk get a
//! region of their own, unmapped when they are dropped.

use parking_lot::Mutex;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::hw::dma::{DmaMapper, DmaRegion, DmaRing, HUGE_PAGE, PAGE};

/// Bytes in one pool chunk.
pub const CHUNK: usize = HUGE_PAGE;
const PAGES_PER_CHUNK: usize = CHUNK / PAGE;

#[derive(Debug)]
struct Chunk {
    region: Arc<DmaRegion>,
    /// One flag per 4 KiB page: in use.
    used: Vec<bool>,
    /// Pages in use.
    in_use: usize,
}

#[derive(Debug)]
struct PoolState {
    /// Chunks by index (buffers name theirs); None once given back.
    chunks: Vec<Option<Chunk>>,
    /// Chunks kept mapped even when empty ([`DmaPool::reserve`]).
    reserved: usize,
}

impl PoolState {
    /// Puts `chunk` in a free slot; returns its index.
    fn insert(&mut self, chunk: Chunk) -> usize {
        match self.chunks.iter().position(Option::is_none) {
            Some(free) => {
                self.chunks[free] = Some(chunk);
                free
            }
            None => {
                self.chunks.push(Some(chunk));
                self.chunks.len() - 1
            }
        }
    }

    /// Frees `pages` pages from `first` in chunk `index`, and gives the
    /// chunk back if it is now empty and another empty one is kept.
    fn release(&mut self, index: usize, first: usize, pages: usize) {
        let Some(Some(chunk)) = self.chunks.get_mut(index) else {
            return;
        };
        chunk.used[first..first + pages]
            .iter_mut()
            .for_each(|u| *u = false);
        debug_assert!(chunk.in_use >= pages, "more pages freed than were in use");
        chunk.in_use = chunk.in_use.saturating_sub(pages);
        if chunk.in_use > 0 {
            return;
        }
        let other_empty = self
            .chunks
            .iter()
            .enumerate()
            .any(|(i, c)| i != index && c.as_ref().is_some_and(|c| c.in_use == 0));
        let live = self.chunks.iter().flatten().count();
        if other_empty && live > self.reserved {
            // Dropping the last reference unmaps it from the IOMMU.
            self.chunks[index] = None;
        }
    }
}

/// A pool of DMA-mapped memory.
#[derive(Debug, Clone)]
pub struct DmaPool {
    mapper: Arc<dyn DmaMapper>,
    state: Arc<Mutex<PoolState>>,
    prefer_huge: bool,
}

impl DmaPool {
    pub(crate) fn new(mapper: Arc<dyn DmaMapper>, prefer_huge: bool) -> Self {
        DmaPool {
            mapper,
            state: Arc::new(Mutex::new(PoolState {
                chunks: Vec::new(),
                reserved: 0,
            })),
            prefer_huge,
        }
    }

    /// The mapper behind the pool (for mappings of external memory).
    pub(crate) fn mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }

    /// (chunks, of which on huge pages) the pool holds.
    pub fn chunk_counts(&self) -> (usize, usize) {
        let state = self.state.lock();
        let live = state.chunks.iter().flatten();
        let huge = live.clone().filter(|c| c.region.is_huge()).count();
        (live.count(), huge)
    }

    /// Maps chunks until the pool holds at least `bytes` and keeps that
    /// many mapped even when they empty, so that a user with a known
    /// working set (a page cache's budget) pays for mapping and pinning
    /// up front instead of on its I/O path. Reservations do not add up:
    /// the largest one holds.
    pub fn reserve(&self, bytes: usize) -> Result<()> {
        let want = bytes.div_ceil(CHUNK);
        let mut state = self.state.lock();
        state.reserved = state.reserved.max(want);
        while state.chunks.iter().flatten().count() < want {
            let chunk = self.new_chunk()?;
            state.insert(chunk);
        }
        log::debug!("DMA pool: {want} chunks reserved");
        Ok(())
    }

    fn new_chunk(&self) -> Result<Chunk> {
        let region = Arc::new(DmaRegion::new(
            self.mapper.clone(),
            CHUNK,
            self.prefer_huge,
        )?);
        log::debug!(
            "DMA pool: new chunk at IOVA {:#x}{}",
            region.iova(),
            if region.is_huge() { " (huge page)" } else { "" }
        );
        Ok(Chunk {
            region,
            used: vec![false; PAGES_PER_CHUNK],
            in_use: 0,
        })
    }

    /// A zeroed buffer of at least `len` bytes, 4 KiB aligned.
    pub fn alloc(&self, len: usize) -> Result<DmaBuffer> {
        let buf = self.alloc_uninit(len)?;
        // A region of its own is fresh from mmap, hence zero already.
        if buf.owner.is_some() {
            buf.region
                .fill(buf.offset, buf.len.next_multiple_of(PAGE), 0)?;
        }
        Ok(buf)
    }

    /// A buffer of at least `len` bytes, 4 KiB aligned, whose contents are
    /// whatever the memory held (data of this process's earlier buffers, or
    /// zeroes when fresh from the system): for buffers the device is about
    /// to fill, such as page cache folios, where zeroing would cost as much
    /// as a copy.
    pub fn alloc_uninit(&self, len: usize) -> Result<DmaBuffer> {
        if len == 0 {
            return Err(Error::BadBuffer("DMA buffer of 0 bytes".into()));
        }
        let pages = len.div_ceil(PAGE);
        if pages > PAGES_PER_CHUNK {
            let region = Arc::new(DmaRegion::new(self.mapper.clone(), len, self.prefer_huge)?);
            return Ok(DmaBuffer {
                region,
                offset: 0,
                len,
                owner: None,
            });
        }
        let mut state = self.state.lock();
        let found = state.chunks.iter().enumerate().find_map(|(i, c)| {
            let c = c.as_ref()?;
            // A chunk without enough free pages is not searched.
            if PAGES_PER_CHUNK - c.in_use < pages {
                return None;
            }
            first_fit(&c.used, pages).map(|p| (i, p))
        });
        let (index, page) = match found {
            Some(hit) => hit,
            None => {
                let chunk = self.new_chunk()?;
                (state.insert(chunk), 0)
            }
        };
        let chunk = state.chunks[index]
            .as_mut()
            .ok_or_else(|| Error::BadBuffer("DMA pool chunk vanished".into()))?;
        chunk.used[page..page + pages]
            .iter_mut()
            .for_each(|u| *u = true);
        chunk.in_use += pages;
        let buf = DmaBuffer {
            region: chunk.region.clone(),
            offset: page * PAGE,
            len,
            owner: Some((self.state.clone(), index)),
        };
        drop(state);
        Ok(buf)
    }
}

#[cfg(feature = "fault-injection")]
impl DmaPool {
    /// A zeroed buffer of at least `len` bytes with an IOMMU mapping of
    /// its own (not carved out of a chunk), so that fault injection can
    /// take that mapping away without touching any other buffer
    /// ([`DmaBuffer::revoke`]).
    pub(crate) fn alloc_dedicated(&self, len: usize) -> Result<DmaBuffer> {
        // Fresh from mmap, hence zero; 4 KiB pages, so the mapping is as
        // small as the buffer.
        let region = Arc::new(DmaRegion::new(self.mapper.clone(), len, false)?);
        Ok(DmaBuffer {
            region,
            offset: 0,
            len,
            owner: None,
        })
    }
}

fn first_fit(used: &[bool], pages: usize) -> Option<usize> {
    let mut run = 0;
    for (i, u) in used.iter().enumerate() {
        run = if *u { 0 } else { run + 1 };
        if run == pages {
            return Some(i + 1 - pages);
        }
    }
    None
}

/// A buffer the controller can read and write. CPU access is by copying
/// in and out; no reference to its bytes is ever handed out, since the
/// device may write them at any moment while a command is in flight.
#[derive(Debug)]
pub struct DmaBuffer {
    region: Arc<DmaRegion>,
    offset: usize,
    len: usize,
    owner: Option<(Arc<Mutex<PoolState>>, usize)>,
}

impl DmaBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: allocation rejects 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of byte 0 (4 KiB aligned).
    pub fn iova(&self) -> u64 {
        self.region.iova() + self.offset as u64
    }

    /// The host (virtual) address of byte 0, as a number, for handing the
    /// buffer to the kernel (a ublk daemon names each tag's buffer by its
    /// address, and the kernel copies bio pages to and from it). The
    /// driver never turns it into a reference; whoever passes it on must
    /// keep this buffer alive, and not give it to the device, while the
    /// kernel may use it.
    pub fn host_address(&self) -> usize {
        self.region.host_address() + self.offset
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) -> Result<usize> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(outside_buffer(offset, len, self.len));
        }
        Ok(self.offset + offset)
    }

    /// Copies `data` in at `offset`.
    #[inline]
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let at = self.check(offset, data.len())?;
        self.region.write_bytes(at, data)
    }

    /// Copies out `out.len()` bytes from `offset`.
    #[inline]
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let at = self.check(offset, out.len())?;
        self.region.read_bytes(at, out)
    }

    /// Sets `len` bytes from `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        let at = self.check(offset, len)?;
        self.region.fill(at, len, byte)
    }

    /// Never gives this memory back, neither to the pool nor to the OS, and
    /// keeps it mapped for the device: for buffers the device may still
    /// write after we have stopped waiting for it.
    /// Fault injection: the device loses access to the buffer, which must
    /// have a mapping of its own ([`DmaPool::alloc_dedicated`]); see
    /// [`DmaRegion::revoke`].
    #[cfg(feature = "fault-injection")]
    pub(crate) fn revoke(&self) -> Result<()> {
        if self.owner.is_some() || self.offset != 0 {
            return Err(Error::BadBuffer(
                "fault injection: this buffer shares its IOMMU mapping".into(),
            ));
        }
        self.region.revoke()
    }

    /// Gives the device access again after [`DmaBuffer::revoke`] (nothing
    /// to do otherwise).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn restore(&self) -> Result<()> {
        self.region.restore()
    }

    pub(crate) fn leak(&mut self) {
        self.owner = None;
        std::mem::forget(self.region.clone());
    }

    /// The buffer as a ring of `entries` entries of `SIZE` bytes from its
    /// start (a queue's SQ or CQ), checked once here.
    pub(crate) fn ring<const SIZE: usize>(&self, entries: usize) -> Result<DmaRing<SIZE>> {
        if entries.checked_mul(SIZE).is_none_or(|b| b > self.len) {
            return Err(outside_buffer(0, entries.saturating_mul(SIZE), self.len));
        }
        DmaRing::new(self.region.clone(), self.offset, entries)
    }

    /// Stores a little-endian u64 at `offset` (8-byte aligned).
    #[inline]
    pub(crate) fn write_u64(&self, offset: usize, value: u64) -> Result<()> {
        let at = self.check(offset, 8)?;
        self.region.write_u64(at, value)
    }

    /// Volatile load of a little-endian u32 at `offset` (4-byte aligned).
    #[inline]
    pub(crate) fn read_u32(&self, offset: usize) -> Result<u32> {
        let at = self.check(offset, 4)?;
        self.region.read_u32(at)
    }

    /// Volatile store of a little-endian u32 at `offset` (4-byte aligned).
    #[inline]
    pub(crate) fn write_u32(&self, offset: usize, value: u32) -> Result<()> {
        let at = self.check(offset, 4)?;
        self.region.write_u32(at, value)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        if let Some((state, index)) = &self.owner {
            let mut state = state.lock();
            state.release(*index, self.offset / PAGE, self.len.div_ceil(PAGE));
        }
    }
}

/// The error of an access outside a buffer (kept out of line: the
/// accessors are on the I/O path and inlined).
#[cold]
#[inline(never)]
fn outside_buffer(offset: usize, len: usize, size: usize) -> Error {
    Error::BadBuffer(format!(
        "{len} bytes at offset {offset} do not fit a {size}-byte DMA buffer"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_chunks_are_given_back_but_one() {
        let pool = DmaPool::new(Arc::new(crate::hw::dma::HostMapper::default()), false);
        // Three chunks' worth of 1 MiB buffers.
        let bufs: Vec<DmaBuffer> = (0..6)
            .map(|_| pool.alloc(1 << 20).expect("alloc"))
            .collect();
        assert_eq!(pool.chunk_counts().0, 3);
        drop(bufs);
        assert_eq!(pool.chunk_counts().0, 1, "one empty chunk stays warm");
        // It is reused, and a new chunk takes a freed slot.
        let a = pool.alloc(2 << 20).expect("alloc");
        let b = pool.alloc(4096).expect("alloc");
        assert_eq!(pool.chunk_counts().0, 2);
        let mut leaked = pool.alloc(4096).expect("alloc");
        leaked.leak();
        drop((a, b, leaked));
        assert_eq!(
            pool.chunk_counts().0,
            2,
            "a chunk with leaked pages is never given back"
        );
    }

    #[test]
    fn alloc_zeroes_reused_pages_and_alloc_uninit_does_not() {
        let pool = DmaPool::new(Arc::new(crate::hw::dma::HostMapper::default()), false);
        let keep = pool.alloc(4096).expect("alloc");
        let a = pool.alloc(8192).expect("alloc");
        a.fill(0, 8192, 0xEE).expect("fill");
        drop(a);
        let b = pool.alloc(8192).expect("alloc");
        let mut out = [1u8; 8192];
        b.read(0, &mut out).expect("read");
        assert!(out.iter().all(|&x| x == 0), "alloc zeroes");
        b.fill(0, 8192, 0xEE).expect("fill");
        drop(b);
        let c = pool.alloc_uninit(8192).expect("alloc");
        c.read(0, &mut out).expect("read");
        assert!(
            out.iter().all(|&x| x == 0xEE),
            "alloc_uninit leaves old data"
        );
        drop((keep, c));
    }

    #[test]
    fn reserved_chunks_stay_mapped_when_empty() {
        let pool = DmaPool::new(Arc::new(crate::hw::dma::HostMapper::default()), false);
        pool.reserve(3 * CHUNK - 1).expect("reserve");
        assert_eq!(pool.chunk_counts().0, 3);
        let bufs: Vec<DmaBuffer> = (0..5)
            .map(|_| pool.alloc_uninit(CHUNK).expect("alloc"))
            .collect();
        assert_eq!(pool.chunk_counts().0, 5, "reserved chunks are used first");
        drop(bufs);
        assert_eq!(pool.chunk_counts().0, 3, "back down to the reservation");
        pool.reserve(CHUNK).expect("reserve");
        assert_eq!(pool.chunk_counts().0, 3, "the largest reservation holds");
    }

    #[test]
    fn host_addresses_are_page_aligned_and_follow_the_chunk() {
        let pool = DmaPool::new(Arc::new(crate::hw::dma::HostMapper::default()), false);
        let a = pool.alloc(4096).expect("alloc");
        let b = pool.alloc(8192).expect("alloc");
        assert_eq!(a.host_address() % PAGE, 0);
        // Carved out of one chunk: their host and device addresses are
        // the same distance apart.
        assert_eq!(
            b.host_address().wrapping_sub(a.host_address()) as u64,
            b.iova().wrapping_sub(a.iova())
        );
        assert_ne!(a.host_address(), b.host_address());
    }

    #[test]
    fn first_fit_finds_runs() {
        let used = [true, false, false, true, false, false, false];
        assert_eq!(first_fit(&used, 1), Some(1));
        assert_eq!(first_fit(&used, 2), Some(1));
        assert_eq!(first_fit(&used, 3), Some(4));
        assert_eq!(first_fit(&used, 4), None);
    }
}
