//! What the scenarios run against: a [`Rig`] is one namespace with memory
//! for folios, queues for the engines, and a way to prefill and read back
//! the disk that bypasses the page cache (the "raw LBA reads" of the scenarios).
//! [`RecordingRig`] is the in-memory [`RecordingDevice`]; the NVMe rig is
//! in [`crate::nvme`] (feature `nvme`).

use std::sync::Arc;

use mpage::{BlockDevice, Geometry, RecordingDevice};
use pagecache::{FolioMemory, VecMemory};

use crate::check::Failure;
use crate::ensure;

/// The largest transfer the scenarios assume unless they say otherwise
/// (the scenarios' default MDTS, 1 MiB).
pub const DEFAULT_MAX_TRANSFER: u32 = 1 << 20;

/// One namespace the scenarios run against.
pub trait Rig {
    /// What it is, for reports.
    fn name(&self) -> String;

    /// The namespace: LBA size, capacity, largest transfer.
    fn geometry(&self) -> Geometry;

    /// The namespace's LBA size in bytes.
    fn lba_size(&self) -> u32 {
        self.geometry().lba_size
    }

    /// Memory for folios (device-addressable on a real device).
    fn memory(&self) -> Arc<dyn FolioMemory>;

    /// A queue on the namespace for one scenario's engines.
    fn device(&mut self) -> Result<Box<dyn BlockDevice>, Failure>;

    /// Writes `data` at byte `offset` of the namespace, outside the page
    /// cache (scenario set-up).
    fn write_disk(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure>;

    /// Reads `len` bytes at byte `offset` of the namespace, outside the
    /// page cache.
    fn read_disk(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Failure>;
}

/// The [`RecordingDevice`] as a rig: the disk is memory, every queue the
/// engines get is the same queue (so [`RecordingRig::device_handle`]
/// injects faults and holds or releases its completions).
#[derive(Debug)]
pub struct RecordingRig {
    dev: RecordingDevice,
    memory: Arc<VecMemory>,
}

impl RecordingRig {
    /// A zeroed namespace of `capacity` bytes in `lba_size`-byte LBAs with
    /// a 1 MiB transfer limit.
    pub fn new(lba_size: u32, capacity: u64) -> Result<Self, Failure> {
        let g = Geometry::new(
            lba_size,
            capacity / u64::from(lba_size),
            DEFAULT_MAX_TRANSFER,
        )?;
        Ok(RecordingRig {
            dev: RecordingDevice::new(g)?,
            memory: Arc::new(VecMemory::new()),
        })
    }

    /// The device the engines get (a handle sharing its state): for
    /// faults, completion order and its own record.
    pub fn device_handle(&self) -> RecordingDevice {
        self.dev.clone()
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), Failure> {
        let size = self.dev.geometry().capacity_bytes();
        ensure!(
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= size),
            "bytes {offset}+{len} lie past the {size}-byte disk"
        );
        Ok(())
    }
}

impl Rig for RecordingRig {
    fn name(&self) -> String {
        let g = self.dev.geometry();
        format!(
            "recording device, {} LBAs of {} bytes",
            g.capacity, g.lba_size
        )
    }

    fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }

    fn memory(&self) -> Arc<dyn FolioMemory> {
        self.memory.clone()
    }

    fn device(&mut self) -> Result<Box<dyn BlockDevice>, Failure> {
        Ok(Box::new(self.dev.clone()))
    }

    fn write_disk(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure> {
        self.check_range(offset, data.len())?;
        self.dev.write_disk(offset, data);
        Ok(())
    }

    fn read_disk(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Failure> {
        self.check_range(offset, len)?;
        Ok(self.dev.read_disk(offset, len))
    }
}
