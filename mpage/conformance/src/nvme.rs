//! The NVMe rig (feature `nvme`): a namespace of a controller bound to
//! vfio-pci, through the driver. Each scenario's engines get a fresh
//! [`NvmeDevice`] on a queue pair of their own; folios live in the
//! driver's DMA memory ([`DmaFolioMemory`]), so the controller reads into
//! and writes from the page cache itself. Prefill and read-back go through
//! another queue pair with the driver's blocking read and write, by whole
//! LBAs (read-modify-write for a partial one).

use std::sync::Arc;

use mpage::nvme::{DmaFolioMemory, NvmeDevice};
use mpage::{BlockDevice, Geometry};
use nvme_driver::{Controller, IoQPair};
use pagecache::FolioMemory;

use crate::check::Failure;
use crate::ensure;
use crate::rig::Rig;

/// One namespace of an NVMe controller. See the module documentation.
#[derive(Debug)]
pub struct NvmeRig {
    ctrl: Controller,
    nsid: u32,
    /// For prefill and read-back.
    qpair: IoQPair,
    geometry: Geometry,
    memory: Arc<DmaFolioMemory>,
}

impl NvmeRig {
    /// Namespace `nsid` of `ctrl`.
    pub fn open(ctrl: &Controller, nsid: u32) -> Result<Self, Failure> {
        let geometry = NvmeDevice::new(ctrl, ctrl.io_qpair()?, nsid)?.geometry();
        Ok(NvmeRig {
            ctrl: ctrl.clone(),
            nsid,
            qpair: ctrl.io_qpair()?,
            geometry,
            memory: Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone())),
        })
    }

    /// The whole LBAs covering bytes `[offset, offset+len)`: first LBA
    /// and their bytes' range.
    fn covering(&self, offset: u64, len: usize) -> Result<(u64, u64, u64), Failure> {
        let lba = u64::from(self.geometry.lba_size);
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.geometry.capacity_bytes());
        let Some(end) = end else {
            return Err(Failure::new(format!(
                "bytes {offset}+{len} lie past the namespace ({} bytes)",
                self.geometry.capacity_bytes()
            )));
        };
        let first = offset / lba;
        Ok((first, first * lba, end.div_ceil(lba) * lba))
    }
}

impl Rig for NvmeRig {
    fn name(&self) -> String {
        format!(
            "NVMe {} namespace {}, {} LBAs of {} bytes",
            self.ctrl.address(),
            self.nsid,
            self.geometry.capacity,
            self.geometry.lba_size
        )
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn memory(&self) -> Arc<dyn FolioMemory> {
        self.memory.clone()
    }

    fn device(&mut self) -> Result<Box<dyn BlockDevice>, Failure> {
        let dev = NvmeDevice::new(&self.ctrl, self.ctrl.io_qpair()?, self.nsid)?;
        ensure!(dev.geometry() == self.geometry, "the geometry changed");
        Ok(Box::new(dev))
    }

    fn write_disk(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure> {
        let (first, start, end) = self.covering(offset, data.len())?;
        let mut buf = vec![0u8; (end - start) as usize];
        if start != offset || end != offset + data.len() as u64 {
            self.qpair.read(self.nsid, first, &mut buf)?;
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.qpair.write(self.nsid, first, &buf)?;
        Ok(())
    }

    fn read_disk(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Failure> {
        let (first, start, end) = self.covering(offset, len)?;
        let mut buf = vec![0u8; (end - start) as usize];
        self.qpair.read(self.nsid, first, &mut buf)?;
        let at = (offset - start) as usize;
        Ok(buf[at..at + len].to_vec())
    }
}
