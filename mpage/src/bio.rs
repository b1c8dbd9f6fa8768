//! [`BioBuilder`]: accumulates pieces of folios into the largest legal
//! commands. One predicate, [`BioBuilder::can_merge`], decides whether a
//! piece may join the open bio:
//!
//! * device contiguity: it starts at the open bio's end LBA (R2, R17);
//! * PRP legality (R4): it continues the previous segment in iova, or the
//!   previous segment ends on a page boundary and it starts on one;
//! * size: the bio stays within [`Geometry::max_transfer`] (R3).
//!
//! A piece that does not fit whole is split at the size limit (the cut
//! lands on a block boundary since the limit is a multiple of the page);
//! the tail starts the next bio, so N contiguous folios beyond the limit
//! become ⌈total/max⌉ commands, all but the last exactly max_transfer.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use crate::device::{Bio, BioFlags, BioOp, DeviceError, Geometry, Segment};

/// The open (not yet submitted) command.
#[derive(Debug)]
struct Open {
    lba: u64,
    bytes: usize,
    /// iova one past the last segment.
    iova_end: u64,
    segments: Vec<Segment>,
}

/// Builds bios of one op from pieces. See the module documentation.
#[derive(Debug)]
pub struct BioBuilder {
    op: BioOp,
    flags: BioFlags,
    geometry: Geometry,
    open: Option<Open>,
}

impl BioBuilder {
    /// A builder for `op` commands with `flags` on `geometry`.
    pub fn new(op: BioOp, flags: BioFlags, geometry: Geometry) -> Self {
        BioBuilder {
            op,
            flags,
            geometry,
            open: None,
        }
    }

    /// The geometry commands are built for.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Whether a bio is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// LBA one past the open bio's end.
    pub fn end_lba(&self) -> Option<u64> {
        let lba_size = u64::from(self.geometry.lba_size);
        self.open
            .as_ref()
            .map(|o| o.lba + o.bytes as u64 / lba_size)
    }

    /// The merge predicate: may `len` bytes at device `lba`, memory `iova`
    /// join the open bio? (False when none is open.)
    pub fn can_merge(&self, lba: u64, iova: u64, len: usize) -> bool {
        let Some(o) = &self.open else { return false };
        let contiguous_lba = self.end_lba() == Some(lba);
        let prp_ok = nvme_spec::prp::may_follow(o.iova_end, iova, self.geometry.page_size as usize);
        let fits = o.bytes + len <= self.geometry.max_transfer as usize;
        contiguous_lba && prp_ok && fits
    }

    /// Bytes of a piece at (`lba`, `iova`) that can still join the open
    /// bio (0 if it cannot merge at all).
    fn room(&self, lba: u64, iova: u64) -> usize {
        match &self.open {
            Some(o) if self.can_merge(lba, iova, 0) => {
                self.geometry.max_transfer as usize - o.bytes
            }
            _ => 0,
        }
    }

    /// Adds the piece `len` bytes at device `lba` / memory `iova`. The
    /// caller's `segment(offset, len)` makes the [`Segment`] for bytes
    /// `[offset, offset+len)` of the piece (called more than once when the
    /// piece is split). Bios closed on the way are returned, in LBA order,
    /// for submission.
    pub fn add<E: From<DeviceError>>(
        &mut self,
        lba: u64,
        iova: u64,
        len: usize,
        mut segment: impl FnMut(usize, usize) -> Result<Segment, E>,
    ) -> Result<Vec<Bio>, E> {
        let lba_size = self.geometry.lba_size as usize;
        let mut closed = Vec::new();
        let mut done = 0;
        while done < len {
            let at_lba = lba + (done / lba_size) as u64;
            let at_iova = iova + done as u64;
            let mut room = self.room(at_lba, at_iova);
            if room == 0 {
                closed.extend(self.close()?);
                self.open = Some(Open {
                    lba: at_lba,
                    bytes: 0,
                    iova_end: at_iova,
                    segments: Vec::new(),
                });
                room = self.geometry.max_transfer as usize;
            }
            let n = room.min(len - done);
            let seg = segment(done, n)?;
            if let Some(o) = self.open.as_mut() {
                o.bytes += n;
                o.iova_end = at_iova + n as u64;
                o.segments.push(seg);
            }
            done += n;
        }
        Ok(closed)
    }

    /// Closes the open bio, if any (R14/R18/R29 forced submission, R7 end
    /// of batch).
    pub fn close(&mut self) -> Result<Option<Bio>, DeviceError> {
        match self.open.take() {
            Some(o) if !o.segments.is_empty() => Ok(Some(Bio::new(
                self.op,
                o.lba,
                self.geometry.lba_size,
                self.flags,
                o.segments,
            )?)),
            _ => Ok(None),
        }
    }
}
