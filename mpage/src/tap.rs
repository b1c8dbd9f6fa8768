//! [`Tap`]: the command record of any [`BlockDevice`].
//!
//! The scenarios of docs/MPAGE.md observe the commands a device
//! receives (op, LBA, length, flags, data addresses, outcome: "the
//! driver's submission log" on real NVMe). A [`Tap`] wraps a device and appends every bio the inner
//! device accepts to a shared [`CommandLog`], in submission order, then
//! fills in its outcome when the completion comes back through the tap.
//! The [`RecordingDevice`](crate::RecordingDevice) keeps the same kind of
//! log itself; the tap gives any device (an
//! `nvme::NvmeDevice`) the same observable stream.
//!
//! A tap may also present a smaller transfer limit than the inner device
//! ([`Tap::limit_max_transfer`], like the block layer's `max_sectors_kb`
//! below the hardware limit): the engines then build commands no larger
//! than that, and the tap rejects any bio over it.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::Duration;

use crate::device::{Bio, BioFlags, BioOp, BlockDevice, Completion, DeviceError, Geometry};

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Operation.
    pub op: BioOp,
    /// First LBA.
    pub lba: u64,
    /// Number of LBAs.
    pub blocks: u64,
    /// Hints.
    pub flags: BioFlags,
    /// Data as `(iova, len)`, iova-contiguous neighbours merged.
    pub dma: Vec<(u64, usize)>,
    /// Number of segments before merging.
    pub segments: usize,
    /// The outcome the device gave; `None` while the command is in flight.
    pub result: Option<Result<(), DeviceError>>,
}

impl Command {
    /// The record of `bio`, with `result` if it is already known.
    pub fn of(bio: &Bio, result: Option<Result<(), DeviceError>>) -> Self {
        Command {
            op: bio.op(),
            lba: bio.lba(),
            blocks: bio.blocks(),
            flags: bio.flags(),
            dma: bio.dma_ranges(),
            segments: bio.segments().len(),
            result,
        }
    }

    /// Data length in bytes.
    pub fn bytes(&self) -> usize {
        self.dma.iter().map(|d| d.1).sum()
    }
}

#[derive(Debug, Default)]
struct LogState {
    /// Commands with their sequence numbers, in submission order.
    entries: Vec<(u64, Command)>,
    next_seq: u64,
}

/// An ordered record of commands, shared by its clones (the device
/// appends, the test reads).
#[derive(Debug, Clone, Default)]
pub struct CommandLog {
    state: Arc<Mutex<LogState>>,
}

impl CommandLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock()
    }

    /// Appends `command`; returns its sequence number.
    pub fn push(&self, command: Command) -> u64 {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.entries.push((seq, command));
        seq
    }

    /// Records the outcome of command `seq` (nothing if the log was
    /// cleared since).
    pub fn set_result(&self, seq: u64, result: Result<(), DeviceError>) {
        let mut st = self.state();
        if let Some((_, c)) = st.entries.iter_mut().rev().find(|(s, _)| *s == seq) {
            c.result = Some(result);
        }
    }

    /// Every command so far, in submission order.
    pub fn commands(&self) -> Vec<Command> {
        self.state()
            .entries
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Read and write commands only, as `(op, lba, bytes)`.
    pub fn io(&self) -> Vec<(BioOp, u64, usize)> {
        self.state()
            .entries
            .iter()
            .filter(|(_, c)| c.op != BioOp::Flush)
            .map(|(_, c)| (c.op, c.lba, c.bytes()))
            .collect()
    }

    /// Number of commands of `op`.
    pub fn count(&self, op: BioOp) -> usize {
        self.state()
            .entries
            .iter()
            .filter(|(_, c)| c.op == op)
            .count()
    }

    /// Forgets every command.
    pub fn clear(&self) {
        self.state().entries.clear();
    }
}

/// What identifies an in-flight bio when its completion comes back: two
/// bios in flight with the same key are the same command, so it does not
/// matter which record gets which outcome.
type Key = (BioOp, u64, u64, Option<u64>);

fn key(bio: &Bio) -> Key {
    (
        bio.op(),
        bio.lba(),
        bio.blocks(),
        bio.segments().first().map(|s| s.iova()),
    )
}

/// A device that records what the inner device accepts. See the module
/// documentation.
#[derive(Debug)]
pub struct Tap<D> {
    inner: D,
    log: CommandLog,
    geometry: Geometry,
    /// Commands in flight: their key and log sequence number.
    pending: Vec<(Key, u64)>,
}

impl<D: BlockDevice> Tap<D> {
    /// Records `inner`'s commands in a new log ([`Tap::log`]).
    pub fn new(inner: D) -> Self {
        let geometry = inner.geometry();
        Tap {
            inner,
            log: CommandLog::new(),
            geometry,
            pending: Vec::new(),
        }
    }

    /// Presents at most `bytes` (rounded down to whole device pages, at
    /// least one) as the largest transfer; the inner device's limit stays
    /// the upper bound.
    pub fn limit_max_transfer(mut self, bytes: u32) -> Self {
        let page = self.geometry.page_size;
        let limited = (bytes / page * page).max(page);
        self.geometry.max_transfer = self.geometry.max_transfer.min(limited);
        self
    }

    /// The log (a handle sharing the record).
    pub fn log(&self) -> CommandLog {
        self.log.clone()
    }

    /// The inner device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The inner device, to send it commands the tap does not see (they
    /// bypass the log and the presented limits).
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Fills in the outcomes of the completions appended to `done` from
    /// index `from`.
    fn record(&mut self, done: &[Completion], from: usize) {
        for c in done.get(from..).unwrap_or_default() {
            let k = key(&c.bio);
            if let Some(i) = self.pending.iter().position(|(p, _)| *p == k) {
                let (_, seq) = self.pending.remove(i);
                self.log.set_result(seq, c.result.clone());
            }
        }
    }
}

impl<D: BlockDevice> BlockDevice for Tap<D> {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn submit(&mut self, bio: Bio) -> Result<(), (Bio, DeviceError)> {
        if let Err(e) = bio.check(&self.geometry) {
            return Err((bio, e));
        }
        let command = Command::of(&bio, None);
        let k = key(&bio);
        self.inner.submit(bio)?;
        let seq = self.log.push(command);
        self.pending.push((k, seq));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), DeviceError> {
        self.inner.commit()
    }

    fn poll(&mut self, done: &mut Vec<Completion>) -> Result<usize, DeviceError> {
        let from = done.len();
        let n = self.inner.poll(done)?;
        self.record(done, from);
        Ok(n)
    }

    fn wait(
        &mut self,
        done: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize, DeviceError> {
        let from = done.len();
        let n = self.inner.wait(done, timeout)?;
        self.record(done, from);
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pagecache::{BlockSize, FolioOrder, Grab, PageCache, VecMemory};

    use super::*;
    use crate::RecordingDevice;
    use crate::device::{Segment, status};
    use crate::recording::Fault;

    /// A readahead bio into a fresh folio of `order` at `lba`.
    fn read_bio(cache: &PageCache, lba: u64, order: u8) -> Bio {
        let file = cache.add_file(BlockSize::PAGE);
        let Ok(Grab::Created(l)) = cache.grab(file, 0, FolioOrder::new(order).unwrap()) else {
            panic!("a fresh folio");
        };
        let len = l.folio().size();
        let io = l.start_read();
        let seg = Segment::read(io.part(0, len).unwrap());
        Bio::new(BioOp::Read, lba, 512, BioFlags::READAHEAD, vec![seg]).unwrap()
    }

    fn setup() -> (PageCache, RecordingDevice) {
        let cache = PageCache::new(Arc::new(VecMemory::new()), 1 << 20).unwrap();
        let dev = RecordingDevice::new(Geometry::new(512, 64, 1 << 20).unwrap()).unwrap();
        (cache, dev)
    }

    #[test]
    fn records_accepted_commands_and_their_outcomes() {
        let (cache, dev) = setup();
        dev.inject(Fault::status(BioOp::Read, 16..24, status::UNRECOVERED_READ));
        let mut tap = Tap::new(dev.clone());
        let log = tap.log();
        tap.submit(read_bio(&cache, 8, 0)).unwrap();
        tap.submit(read_bio(&cache, 16, 0)).unwrap();
        assert!(
            log.commands().iter().all(|c| c.result.is_none()),
            "in flight"
        );
        let mut done = Vec::new();
        assert_eq!(tap.poll(&mut done).unwrap(), 2);
        let c = log.commands();
        assert_eq!(
            log.io(),
            vec![(BioOp::Read, 8, 4096), (BioOp::Read, 16, 4096)]
        );
        assert_eq!(c[0].result, Some(Ok(())));
        assert_eq!(
            c[1].result,
            Some(Err(DeviceError::Status {
                status: status::UNRECOVERED_READ
            }))
        );
        assert_eq!((c[0].flags, c[0].segments), (BioFlags::READAHEAD, 1));
        assert_eq!(c, dev.commands(), "the same record as the device's own");
        done.into_iter().for_each(Completion::finish);
    }

    #[test]
    fn a_limited_transfer_rejects_larger_bios_unrecorded() {
        let (cache, dev) = setup();
        let limited = |bytes| Tap::new(dev.clone()).limit_max_transfer(bytes);
        assert_eq!(
            limited(2048).geometry().max_transfer,
            4096,
            "at least a page"
        );
        assert_eq!(
            limited(8 << 20).geometry().max_transfer,
            1 << 20,
            "never above the device"
        );
        let mut tap = limited(4096);
        let (bio, e) = tap.submit(read_bio(&cache, 0, 1)).unwrap_err();
        assert!(matches!(e, DeviceError::InvalidBio(_)), "{e}");
        bio.complete(Err(e));
        assert!(tap.log().commands().is_empty());
        assert!(dev.commands().is_empty(), "never reached the device");
    }
}
