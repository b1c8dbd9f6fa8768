//! PRP entries for a buffer: PRP1 alone, PRP1 + PRP2, or PRP1 + a list of
//! page addresses in DMA memory, chained across list pages when one page
//! of entries is not enough. The arithmetic is `nvme_spec::prp`'s.

use nvme_spec::prp::{PrpGeometry, PrpLayout};

use zerocopy::IntoBytes;

use crate::ctrl::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::memory::{DmaBuffer, DmaPool};

/// The data pointer of one command. The list pages (if any) must live until
/// the command completes, so they travel with it.
#[derive(Debug)]
pub(crate) struct Prps {
    pub(crate) prp1: u64,
    pub(crate) prp2: u64,
    _list: Option<DmaBuffer>,
}

fn geometry() -> Result<PrpGeometry> {
    PrpGeometry::new(PAGE_SIZE).map_err(|e| Error::BadBuffer(e.to_string()))
}

/// Describes `len` bytes at device address `iova`.
pub(crate) fn build(pool: &DmaPool, iova: u64, len: usize) -> Result<Prps> {
    let mut list = None;
    let (prp1, prp2) = fill(pool, &mut list, iova, len, &mut Vec::new())?;
    Ok(Prps {
        prp1,
        prp2,
        _list: list,
    })
}

/// Returns (PRP1, PRP2) for `len` bytes at `iova`, writing any PRP list
/// into `list`, which is allocated (or replaced by a larger one) from
/// `pool` only when it is missing or too small: a queue keeps one per
/// command slot, so the I/O path does not allocate. `scratch` holds the
/// list's entries on their way (a caller's reused vector).
#[inline(always)]
pub(crate) fn fill(
    pool: &DmaPool,
    list: &mut Option<DmaBuffer>,
    iova: u64,
    len: usize,
    scratch: &mut Vec<u64>,
) -> Result<(u64, u64)> {
    // One or two pages (a 4 KiB I/O, aligned or not): no geometry, no list.
    let page = PAGE_SIZE as u64;
    if len > 0 && iova.is_multiple_of(4) {
        let in_first = page - (iova & (page - 1));
        if len as u64 <= in_first {
            return Ok((iova, 0));
        }
        if len as u64 - in_first <= page
            && let Some(second) = (iova & !(page - 1)).checked_add(page)
        {
            return Ok((iova, second));
        }
    }
    fill_list(pool, list, iova, len, scratch)
}

/// [`fill`] past two pages (or for a bad address): through the geometry,
/// with a list.
fn fill_list(
    pool: &DmaPool,
    list: &mut Option<DmaBuffer>,
    iova: u64,
    len: usize,
    scratch: &mut Vec<u64>,
) -> Result<(u64, u64)> {
    let geo = geometry()?;
    let bad =
        |e: nvme_spec::PrpError| Error::BadBuffer(format!("PRP for {len} bytes at {iova:#x}: {e}"));
    let layout = geo.layout(iova, len).map_err(bad)?;
    let mut pages = geo.page_addresses(iova, len).map_err(bad)?;
    let prp1 = pages.next().unwrap_or(iova);
    match layout {
        PrpLayout::OneEntry => Ok((prp1, 0)),
        PrpLayout::TwoEntries => Ok((prp1, pages.next().unwrap_or(0))),
        PrpLayout::List {
            entries,
            list_pages,
        } => {
            let need = list_pages * PAGE_SIZE;
            let buf = match list {
                Some(b) if b.len() >= need => b,
                _ => list.insert(pool.alloc(need)?),
            };
            scratch.clear();
            scratch.extend(pages.take(entries));
            write_list(buf, scratch)?;
            Ok((prp1, buf.iova()))
        }
    }
}

/// Returns (PRP1, PRP2) for a command whose PRP entries are `entries`
/// (the first address, then one page address per page): like [`fill`],
/// for data made of several pieces.
pub(crate) fn fill_entries(
    pool: &DmaPool,
    list: &mut Option<DmaBuffer>,
    entries: &[u64],
) -> Result<(u64, u64)> {
    match entries {
        [] => Err(Error::BadBuffer("a transfer of no pages".into())),
        [one] => Ok((*one, 0)),
        [one, two] => Ok((*one, *two)),
        [first, rest @ ..] => {
            let geo = geometry()?;
            let pages = geo.list_pages_needed(rest.len());
            let need = pages * PAGE_SIZE;
            let buf = match list {
                Some(b) if b.len() >= need => b,
                _ => list.insert(pool.alloc(need)?),
            };
            write_list(buf, rest)?;
            Ok((*first, buf.iova()))
        }
    }
}

/// Entries of one list page (4 KiB pages of 8-byte entries).
const PER_PAGE: usize = PAGE_SIZE / 8;

/// Writes the page addresses `entries` into consecutive list pages of
/// `list` (which has room: [`nvme_spec::prp::PrpGeometry::list_pages_needed`]):
/// a page's last slot points to the next page when more entries follow
/// than fit. One copy per list page, not one checked store per entry.
fn write_list(list: &DmaBuffer, entries: &[u64]) -> Result<()> {
    // PRP entries are little-endian, as is every target this driver
    // builds for (x86_64): the slice's bytes are the entries.
    const _: () = assert!(cfg!(target_endian = "little"));
    let mut at = 0usize;
    let mut page = 0usize;
    while entries.len() - at > PER_PAGE {
        let offset = page * PAGE_SIZE;
        list.write(offset, entries[at..at + PER_PAGE - 1].as_bytes())?;
        let next = list.iova() + (offset + PAGE_SIZE) as u64;
        list.write_u64(offset + (PER_PAGE - 1) * 8, next)?;
        at += PER_PAGE - 1;
        page += 1;
    }
    list.write(page * PAGE_SIZE, entries[at..].as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hw::dma::HostMapper;

    /// Walks the data pointer as a controller would, returning the page
    /// addresses it names.
    fn walk(p: &Prps, len: usize) -> Vec<u64> {
        let page = PAGE_SIZE as u64;
        let mut out = vec![p.prp1];
        let mut left = len.saturating_sub((page - p.prp1 % page) as usize);
        if left == 0 {
            assert_eq!(p.prp2, 0);
            return out;
        }
        if left <= PAGE_SIZE {
            out.push(p.prp2);
            return out;
        }
        let list = p._list.as_ref().expect("a PRP list");
        let mut at = p.prp2;
        loop {
            let off = (at - list.iova()) as usize;
            let mut e = [0u8; 8];
            list.read(off, &mut e)
                .expect("entry inside the list buffer");
            let entry = u64::from_le_bytes(e);
            let last_slot = (at % page) == page - 8;
            if last_slot && left > PAGE_SIZE {
                at = entry; // chain pointer
                continue;
            }
            out.push(entry);
            left = left.saturating_sub(PAGE_SIZE);
            if left == 0 {
                return out;
            }
            at += 8;
        }
    }

    #[test]
    fn every_layout_names_every_page_once() {
        let pool = DmaPool::new(Arc::new(HostMapper::default()), false);
        let data = pool.alloc(5 << 20).expect("host memory");
        let base = data.iova();
        for &(offset, len) in &[
            (0usize, 512usize),
            (0, 4096),
            (512, 4096),
            (0, 8192),
            (4092, 8),
            (0, 12288),
            (0, 2 << 20),
            (512, 2 << 20),
            (0, (2 << 20) + 4096),
            (0, 4 << 20),
            (2048, (4 << 20) + 512),
        ] {
            let p = build(&pool, base + offset as u64, len).expect("layout");
            let pages = walk(&p, len);
            let first = (base + offset as u64) & !(PAGE_SIZE as u64 - 1);
            let want: Vec<u64> = std::iter::once(base + offset as u64)
                .chain((1..pages.len() as u64).map(|i| first + i * PAGE_SIZE as u64))
                .collect();
            assert_eq!(pages, want, "offset {offset} len {len}");
            let spanned = (offset % PAGE_SIZE + len).div_ceil(PAGE_SIZE);
            assert_eq!(pages.len(), spanned, "offset {offset} len {len}");
        }
    }

    #[test]
    fn rejects_what_no_controller_accepts() {
        let pool = DmaPool::new(Arc::new(HostMapper::default()), false);
        assert!(build(&pool, 0x1000, 0).is_err());
        assert!(build(&pool, 0x1001, 512).is_err(), "not dword aligned");
    }
}
