//! The guest's memory as the controller sees it: every region the front
//! end shared (SET_MEM_TABLE, ADD_MEM_REG) mapped into the controller's
//! DMA space through the driver ([`DmaPool::map_mmap_region`]), and the
//! translation of guest physical addresses into device addresses.
//!
//! A table is immutable and shared (`Arc`): a queue thread holds the one
//! it started a batch with until every command of the batch has
//! completed, and a mapping is only taken away when the last table that
//! holds it goes. So a memory-table change never unmaps memory under a
//! command in flight: the old mappings drain with the old table.

use std::sync::Arc;

use nvme_driver::{DmaPool, ExternalDma};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// One region of guest memory, mapped for the device.
#[derive(Debug)]
struct Region {
    /// Guest physical address of byte 0.
    gpa: u64,
    len: u64,
    /// None: the CPU reaches the region but the device does not (a VDUSE
    /// ring area, which no data descriptor may point into).
    dma: Option<Arc<Mapping>>,
}

/// A region's mapping into the controller's DMA space, shared by the
/// tables that hold the region; it is unmapped when the last of them goes
/// (after the queue threads holding them drained their commands), and
/// says so in the log.
#[derive(Debug)]
struct Mapping {
    gpa: u64,
    len: u64,
    dma: ExternalDma,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // The unmap itself is the `ExternalDma`'s drop, right after.
        log::info!(
            "guest memory {:#x}+{:#x} unmapped from the device",
            self.gpa,
            self.len
        );
    }
}

/// Guest memory regions mapped for the device, by guest address, with
/// the guest memory they were built from (so that the CPU's view and the
/// device's are always the same version).
#[derive(Debug)]
pub struct MemTable {
    regions: Vec<Region>,
    mem: Arc<GuestMemoryMmap<()>>,
}

impl Default for MemTable {
    fn default() -> Self {
        MemTable {
            regions: Vec::new(),
            mem: Arc::new(GuestMemoryMmap::default()),
        }
    }
}

impl MemTable {
    /// Maps the regions of `mem`, reusing the mappings of `old` for
    /// regions that are still there (same host mapping, same guest
    /// address), so that an added region does not remap the others.
    pub fn build(
        pool: &DmaPool,
        mem: Arc<GuestMemoryMmap<()>>,
        old: &MemTable,
    ) -> nvme_driver::Result<MemTable> {
        MemTable::build_with(pool, mem, old, &|_| true)
    }

    /// [`MemTable::build`], mapping for the device only the regions whose
    /// guest address `for_device` accepts; the others are in the memory
    /// (rings may be there) but no data address translates into them.
    pub fn build_with(
        pool: &DmaPool,
        mem: Arc<GuestMemoryMmap<()>>,
        old: &MemTable,
        for_device: &dyn Fn(GuestAddress) -> bool,
    ) -> nvme_driver::Result<MemTable> {
        let mut regions = Vec::new();
        for r in mem.iter() {
            let gpa = r.start_addr().0;
            let len = r.len();
            if !for_device(r.start_addr()) {
                regions.push(Region {
                    gpa,
                    len,
                    dma: None,
                });
                continue;
            }
            let host = r.as_ptr() as usize;
            let reused = old.regions.iter().find_map(|o| {
                o.dma
                    .as_ref()
                    .filter(|m| o.gpa == gpa && o.len == len && m.dma.host_address() == host)
            });
            let dma = match reused {
                Some(d) => d.clone(),
                None => {
                    let dma = pool.map_mmap_region(r.get_mmap())?;
                    log::info!(
                        "guest memory {gpa:#x}+{len:#x} mapped for the device at IOVA {:#x}",
                        dma.iova()
                    );
                    Arc::new(Mapping { gpa, len, dma })
                }
            };
            regions.push(Region {
                gpa,
                len,
                dma: Some(dma),
            });
        }
        regions.sort_by_key(|r| r.gpa);
        Ok(MemTable { regions, mem })
    }

    /// The guest memory with no region mapped for the device: the
    /// page-cache mode moves data with the CPU, so nothing is pinned.
    pub fn unmapped(mem: Arc<GuestMemoryMmap<()>>) -> MemTable {
        MemTable {
            regions: Vec::new(),
            mem,
        }
    }

    /// The guest memory the table was built from.
    pub fn memory(&self) -> Arc<GuestMemoryMmap<()>> {
        self.mem.clone()
    }

    /// Regions mapped.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is mapped (no front end, or one that shared none).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Appends the device addresses of `len` bytes at guest address
    /// `gpa` to `out`, one piece per region crossed. False (and `out`
    /// possibly extended) if some byte is not in a mapped region.
    pub fn translate(&self, gpa: GuestAddress, len: u32, out: &mut Vec<(u64, usize)>) -> bool {
        let mut at = gpa.0;
        let mut left = u64::from(len);
        while left > 0 {
            let i = self.regions.partition_point(|r| r.gpa <= at);
            let Some(r) = i.checked_sub(1).and_then(|i| self.regions.get(i)) else {
                return false;
            };
            let offset = at - r.gpa;
            if offset >= r.len {
                return false;
            }
            let n = left.min(r.len - offset);
            let Some(iova) = r
                .dma
                .as_ref()
                .and_then(|m| m.dma.iova_of(offset, n as usize))
            else {
                return false;
            };
            // Pieces that continue each other in device space merge.
            match out.last_mut() {
                Some((prev, plen)) if *prev + *plen as u64 == iova => *plen += n as usize,
                _ => out.push((iova, n as usize)),
            }
            at += n;
            left -= n;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_driver::mock::{MockConfig, MockController};

    #[test]
    fn guest_addresses_translate_across_regions_and_mappings_are_reused() {
        let (mock, _ctrl) = MockController::new(MockConfig::new(&[(1, 512, 64)])).expect("mock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x4000),
            (GuestAddress(0x100_0000), 0x2000),
        ])
        .expect("memory");
        let table =
            MemTable::build(mock.pool(), Arc::new(mem.clone()), &MemTable::default()).expect("map");
        assert_eq!(table.len(), 3);
        let mut out = Vec::new();
        assert!(table.translate(GuestAddress(0x1000), 512, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 512);
        // Across the boundary of two regions: two pieces (separate mmaps).
        out.clear();
        assert!(table.translate(GuestAddress(0xf_f000), 0x2000, &mut out));
        assert_eq!(out.iter().map(|p| p.1).sum::<usize>(), 0x2000);
        assert_eq!(out.len(), 2);
        for bad in [0x10_4000u64, 0x100_1f00, 0x200_0000, u64::MAX - 4] {
            out.clear();
            assert!(
                !table.translate(GuestAddress(bad), 512, &mut out),
                "{bad:#x}"
            );
        }
        // A region added: the others keep their mappings (the in-process
        // mapper refuses a second mapping of the same bytes, so a remap
        // would fail here).
        let bigger = mem
            .insert_region(Arc::new(
                vm_memory::GuestRegionMmap::from_range(GuestAddress(0x200_0000), 0x1000, None)
                    .expect("region"),
            ))
            .expect("insert");
        let next = MemTable::build(mock.pool(), Arc::new(bigger), &table).expect("remap");
        assert_eq!(next.len(), 4);
        out.clear();
        assert!(next.translate(GuestAddress(0x200_0000), 4096, &mut out));
        // The old table still translates (its mappings live until it goes).
        out.clear();
        assert!(table.translate(GuestAddress(0x1000), 512, &mut out));
    }
}
