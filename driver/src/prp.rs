//! PRP entries for a buffer: PRP1 alone, PRP1 + PRP2, or PRP1 + a list of
//! page addresses in DMA memory, chained across list pages when one page
//! of entries is not enough. The arithmetic is `nvme_spec::prp`'s.

use nvme_spec::prp::{PrpGeometry, PrpLayout};

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
    let geo = geometry()?;
    let bad = |e: nvme_spec::PrpError| Error::BadBuffer(format!("PRP for {len} bytes at {iova:#x}: {e}"));
    let layout = geo.layout(iova, len).map_err(bad)?;
    let mut pages = geo.page_addresses(iova, len).map_err(bad)?;
    let prp1 = pages.next().unwrap_or(iova);
    match layout {
        PrpLayout::OneEntry => Ok(Prps {
            prp1,
            prp2: 0,
            _list: None,
        }),
        PrpLayout::TwoEntries => Ok(Prps {
            prp1,
            prp2: pages.next().unwrap_or(0),
            _list: None,
        }),
        PrpLayout::List { entries, list_pages } => {
            let list = pool.alloc(list_pages * PAGE_SIZE)?;
            fill_list(&list, geo.entries_per_list_page(), entries, pages)?;
            Ok(Prps {
                prp1,
                prp2: list.iova(),
                _list: Some(list),
            })
        }
    }
}

/// Writes `entries` page addresses into consecutive list pages of `list`;
/// the last slot of a full page points to the next page when more than one
/// entry is left.
fn fill_list(
    list: &DmaBuffer,
    per_page: usize,
    entries: usize,
    pages: impl Iterator<Item = u64>,
) -> Result<()> {
    let mut slot = 0usize;
    for (i, addr) in pages.enumerate() {
        let left = entries - i;
        if slot % per_page == per_page - 1 && left > 1 {
            let next_page = (slot / per_page + 1) * PAGE_SIZE;
            list.write_u64(slot * 8, list.iova() + next_page as u64)?;
            slot += 1;
        }
        list.write_u64(slot * 8, addr)?;
        slot += 1;
    }
    Ok(())
}
