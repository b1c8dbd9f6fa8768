//! The device side of a data transfer: walking PRP entries, PRP lists and
//! SGL descriptors as a controller would, and moving the bytes. Kept apart
//! from the driver's own PRP code (`crate::prp`, `nvme_spec::prp`): it is an
//! independent oracle for it.

use super::*;

impl State {
    /// The host memory a command's data pointer names, as (IOVA, length)
    /// runs covering `len` bytes.
    pub(super) fn data_segments(
        &mut self,
        sqe: &Sqe,
        len: usize,
        record: &mut CommandRecord,
    ) -> std::result::Result<Vec<(u64, usize)>, Status> {
        match sqe.psdt() {
            Sqe::PSDT_PRP => self.prp_segments(sqe, len, record),
            Sqe::PSDT_SGL_MPTR_CONTIGUOUS => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&sqe.prp1.get().to_le_bytes());
                bytes[8..].copy_from_slice(&sqe.prp2.get().to_le_bytes());
                let sgl = SglDescriptor::read_from_bytes(&bytes[..]).unwrap_or_default();
                if sgl.descriptor_type() != nvme_spec::sqe::sgl_type::DATA_BLOCK
                    || sgl.subtype() != nvme_spec::sqe::sgl_subtype::ADDRESS
                {
                    self.violation(format!("SGL descriptor of id {:#04x}", sgl.sgl_id));
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::SGL_DESCRIPTOR_TYPE_INVALID,
                    ));
                }
                if sgl.length.get() as usize != len {
                    self.violation(format!(
                        "SGL of {} bytes for a {len}-byte transfer",
                        sgl.length.get()
                    ));
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::DATA_SGL_LENGTH_INVALID,
                    ));
                }
                if sgl.address.get() & 3 != 0 {
                    self.violation(format!(
                        "SGL address {:#x} not dword aligned",
                        sgl.address.get()
                    ));
                    return Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD));
                }
                record.data = DataPointer::Sgl;
                self.stats.sgls += 1;
                Ok(vec![(sgl.address.get(), len)])
            }
            psdt => {
                self.violation(format!("PSDT {psdt}"));
                Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD))
            }
        }
    }

    pub(super) fn prp_segments(
        &mut self,
        sqe: &Sqe,
        len: usize,
        record: &mut CommandRecord,
    ) -> std::result::Result<Vec<(u64, usize)>, Status> {
        let bad_offset = reject(StatusCodeType::Generic, generic::PRP_OFFSET_INVALID);
        let prp1 = sqe.prp1.get();
        if prp1 & 3 != 0 {
            self.violation(format!("PRP1 {prp1:#x} not dword aligned"));
            return Err(bad_offset);
        }
        let first = len.min((PAGE - prp1 % PAGE) as usize);
        let mut segments = vec![(prp1, first)];
        let mut left = len - first;
        record.data = DataPointer::Prp { list_pages: 0 };
        if left == 0 {
            return Ok(segments);
        }
        let prp2 = sqe.prp2.get();
        if left <= PAGE_SIZE {
            if !prp2.is_multiple_of(PAGE) {
                self.violation(format!("PRP2 {prp2:#x} has a page offset"));
                return Err(bad_offset);
            }
            segments.push((prp2, left));
            return Ok(segments);
        }
        if prp2 & 7 != 0 {
            self.violation(format!("PRP list pointer {prp2:#x} not qword aligned"));
            return Err(bad_offset);
        }
        let mut at = prp2;
        let mut list_pages = 1usize;
        let page_limit = len / PAGE_SIZE + 2;
        while left > 0 {
            let mut e = [0u8; 8];
            if let Err(err) = self.dma.read(at, &mut e) {
                self.violation(format!("reading PRP list entry at {at:#x}: {err}"));
                return Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ));
            }
            let entry = u64::from_le_bytes(e);
            if at % PAGE == PAGE - 8 && left > PAGE_SIZE {
                // The last slot of a list page, with more than one page of
                // data left: a pointer to the next list page.
                list_pages += 1;
                if entry & 7 != 0 || list_pages > page_limit {
                    self.violation(format!("PRP list chain pointer {entry:#x}"));
                    return Err(bad_offset);
                }
                at = entry;
                continue;
            }
            if !entry.is_multiple_of(PAGE) {
                self.violation(format!("PRP list entry {entry:#x} has a page offset"));
                return Err(bad_offset);
            }
            let n = left.min(PAGE_SIZE);
            segments.push((entry, n));
            left -= n;
            at += 8;
        }
        record.data = DataPointer::Prp { list_pages };
        self.stats.prp_lists += 1;
        if list_pages > 1 {
            self.stats.chained_prp_lists += 1;
        }
        Ok(segments)
    }

    /// Copies host memory named by `segments` into `out`.
    pub(super) fn gather(
        &mut self,
        segments: &[(u64, usize)],
        out: &mut [u8],
    ) -> std::result::Result<(), Status> {
        let mut off = 0;
        for &(iova, n) in segments {
            if let Err(e) = self.dma.read(iova, &mut out[off..off + n]) {
                self.violation(format!("DMA read of {n} bytes at {iova:#x}: {e}"));
                return Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ));
            }
            off += n;
        }
        Ok(())
    }

    /// Moves data between the disk at byte `at` and host memory.
    pub(super) fn transfer(
        &mut self,
        nsid: u32,
        at: usize,
        segments: &[(u64, usize)],
        write: bool,
    ) -> std::result::Result<(), Status> {
        let len: usize = segments.iter().map(|s| s.1).sum();
        if write {
            let mut buf = vec![0u8; len];
            self.gather(segments, &mut buf)?;
            if let Some(d) = self.disks.get_mut(&nsid) {
                d.data[at..at + len].copy_from_slice(&buf);
            }
            return Ok(());
        }
        let mut off = at;
        let mut problem = None;
        if let Some(d) = self.disks.get(&nsid) {
            for &(iova, n) in segments {
                if let Err(e) = self.dma.write(iova, &d.data[off..off + n]) {
                    problem = Some(format!("DMA write of {n} bytes at {iova:#x}: {e}"));
                    break;
                }
                off += n;
            }
        }
        match problem {
            None => Ok(()),
            Some(what) => {
                self.violation(what);
                Err(reject(
                    StatusCodeType::Generic,
                    generic::DATA_TRANSFER_ERROR,
                ))
            }
        }
    }

    // ----- admin queue ---------------------------------------------------
}
