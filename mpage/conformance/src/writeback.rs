//! Writeback and fsync scenarios: T12–T15, T17, T22–T25.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::sync::{Arc, Mutex, MutexGuard};

use mpage::map::IoendCompletion;
use mpage::{
    BioFlags, BioOp, BlockMapper, Extent, ExtentKind, ExtentMapper, IdentityMapper, Inode,
    MapError, MapIntent, OpenFile, SyncMode, fsync, read_folio, writepages,
};
use pagecache::{BlockSize, Errno, FolioOrder, Grab};

use crate::check::{Failure, Outcome};
use crate::env::{Env, KIB, extent_mapper};
use crate::rig::Rig;
use crate::{ensure, ensure_eq};

const W: BioOp = BioOp::Write;

/// T12: eight dirty folios are one plain write (SYNC, no FUA), no flush;
/// fsync flushes after its write completed.
pub fn t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after(
    rig: &mut dyn Rig,
) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 8, 1000);
    let mut env = Env::new(rig, 4096, 32 * KIB as u64, m)?;
    for i in 0..8 {
        env.dirty(i, 0, 4096, i as u8 + 1)?;
    }
    let rep = env.wb()?;
    ensure_eq!(rep.folios, 8);
    ensure_eq!(env.io(), vec![(W, 8000, 32768)]);
    ensure_eq!(
        env.commands()[0].flags,
        BioFlags::SYNC,
        "no FUA, no other hint"
    );
    ensure_eq!(env.count(BioOp::Flush), 0, "no flush without fsync");
    for i in 0..8u64 {
        let f = env.folio(i)?;
        ensure!(
            !f.is_dirty() && !f.is_writeback() && f.error().is_none(),
            "folio {i}"
        );
        ensure_eq!(
            env.read_disk((8000 + i * 8) * 512, 4096)?,
            vec![i as u8 + 1; 4096],
            "block {i} on the disk"
        );
    }
    let mut h = OpenFile::open(&env.ino)?;
    env.dirty(0, 0, 4096, 0xEE)?;
    fsync(&mut env.dev, &env.ino, &mut h)?;
    let ops: Vec<BioOp> = env.commands().iter().map(|c| c.op).collect();
    ensure_eq!(
        ops,
        vec![W, W, BioOp::Flush],
        "flush after the write completed"
    );
    ensure!(
        env.commands().iter().all(|c| c.result == Some(Ok(()))),
        "every command succeeded: {:?}",
        env.commands()
    );
    ensure_eq!(env.read_disk(8000 * 512, 4096)?, vec![0xEE; 4096]);
    Ok(())
}

/// T13: the EOF block is written whole with its tail past EOF zeroed, in
/// the cache too; blocks past EOF are not written.
pub fn t13_eof_tail_zeroed_in_cache_and_never_written_past(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 8, 100);
    let mut env = Env::new(rig, 1024, 5000, m)?;
    env.fill_disk(200, 8192, 0xFF)?;
    env.dirty(0, 0, 4096, 0x11)?;
    env.dirty(1, 0, 4096, 0x55)?;
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 200, 5120)]);
    ensure_eq!(env.read_disk(200 * 512, 4096)?, vec![0x11; 4096]);
    ensure_eq!(env.read_disk(200 * 512 + 4096, 904)?, vec![0x55; 904]);
    ensure_eq!(env.read_disk(200 * 512 + 5000, 120)?, vec![0; 120]);
    ensure_eq!(
        env.read_disk(200 * 512 + 5120, 3072)?,
        vec![0xFF; 3072],
        "blocks past EOF untouched"
    );
    ensure_eq!(env.bytes(1, 904, 3192)?, vec![0; 3192]);
    Ok(())
}

/// T13: blocks past EOF are never mapped (allocated).
pub fn t13_blocks_past_eof_are_never_mapped(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 1000..2000);
    let mut env = Env::new(rig, 1024, 5000, m.clone())?;
    env.dirty(1, 0, 4096, 0x55)?;
    env.wb()?;
    // Only file block 4 (the EOF block) is allocated.
    ensure_eq!(env.io(), vec![(W, 2000, 1024)]);
    ensure_eq!(
        env.read_disk(2000 * 512, 1024)?[..904],
        [0x55; 904][..],
        "the EOF block's data"
    );
    let e = m.map(5 * 1024, 1024, MapIntent::Read)?;
    ensure_eq!(e.kind, ExtentKind::Hole);
    Ok(())
}

/// T14: a dirty folio wholly past EOF is cleaned without I/O or mapping.
pub fn t14_folio_wholly_past_eof_is_cleaned_without_io(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 1000..2000);
    let mut env = Env::new(rig, 4096, 8192, m.clone())?;
    env.dirty(3, 0, 4096, 1)?;
    env.ino.set_size(4096);
    env.wb()?;
    ensure!(env.commands().is_empty(), "{:?}", env.commands());
    ensure_eq!(m.calls(), 0, "nothing allocated");
    let f = env.folio(3)?;
    ensure!(!f.is_dirty() && f.error().is_none());
    ensure_eq!(env.cache.wb_err(env.ino.file)?.last(), None);
    Ok(())
}

/// T15 (a): writes follow device contiguity between folios.
pub fn t15a_writes_follow_device_contiguity_between_folios(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 4, 1000);
    m.insert(4, 4, 2000);
    let mut env = Env::new(rig, 4096, 32 * KIB as u64, m)?;
    for i in 0..8 {
        env.dirty(i, 0, 4096, 1)?;
    }
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 8000, 16384), (W, 16000, 16384)]);
    Ok(())
}

/// T15 (b): and inside a folio (the coalesced per-block fallback).
pub fn t15b_writes_follow_device_contiguity_inside_a_folio(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    let mut env = Env::new(rig, 1024, 4096, m)?;
    env.dirty(0, 0, 4096, 1)?;
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 200, 2048), (W, 600, 2048)]);
    Ok(())
}

/// A metadata cache over the namespace (file offset = device byte
/// address), in `block`-byte blocks, in the env's page cache.
fn metadata_cache(env: &Env<'_>, block: usize) -> Result<Arc<Inode>, Failure> {
    let g = env.geometry();
    let file = env.cache.add_file(BlockSize::new(block)?);
    Ok(Arc::new(Inode::new(
        env.cache.clone(),
        file,
        Arc::new(IdentityMapper::namespace(&g)),
        g.capacity_bytes(),
    )))
}

/// Metadata page `index` of `meta`, freshly created (locked).
fn fresh_metadata_page(meta: &Inode, index: u64) -> Result<pagecache::LockedFolio, Failure> {
    match meta.cache.grab(meta.file, index, FolioOrder::new(0)?)? {
        Grab::Created(l) => Ok(l),
        Grab::Cached(_) => Err(Failure::new(format!(
            "metadata page {index} is already cached"
        ))),
    }
}

/// T17 set-up, bs 4096: lblk 0–3 → pblk 100–103 flagged BOUNDARY, lblk
/// 4–7 → pblk 105–108; a metadata cache holding pblk 104 (0x4D) dirty
/// (`Some(true)`), clean (`Some(false)`) or not at all (`None`); folios
/// 0–3 dirty.
fn t17_env(rig: &mut dyn Rig, meta_dirty: Option<bool>) -> Result<(Env<'_>, Arc<Inode>), Failure> {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert_boundary(0, 4, 100);
    m.insert(4, 4, 105);
    let mut env = Env::new(rig, 4096, 32 * KIB as u64, m.clone())?;
    let meta = metadata_cache(&env, 4096)?;
    m.set_metadata_cache(Some(meta.clone()));
    if let Some(dirty) = meta_dirty {
        fresh_metadata_page(&meta, 104)?.write(0, &[0x4D; 4096])?;
        if !dirty {
            // Clean it: written back once, log forgotten.
            writepages(&mut env.dev, &meta, 104..105, SyncMode::All)?;
            env.reap()?;
            env.clear_log();
        }
    }
    for i in 0..4 {
        env.dirty(i, 0, 4096, 0x17)?;
    }
    Ok((env, meta))
}

/// T17: a BOUNDARY extent submits the data, then the dirty metadata block
/// right after it.
pub fn t17_boundary_submits_the_data_then_the_dirty_metadata_block(rig: &mut dyn Rig) -> Outcome {
    let (mut env, meta) = t17_env(rig, Some(true))?;
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 800, 16384), (W, 832, 4096)]);
    ensure_eq!(env.read_disk(800 * 512, 16384)?, vec![0x17; 16384]);
    ensure_eq!(env.read_disk(832 * 512, 4096)?, vec![0x4D; 4096]);
    let mf = meta
        .cache
        .lookup(meta.file, 104)?
        .ok_or_else(|| Failure::new("metadata page 104 left the cache"))?;
    ensure!(!mf.is_dirty() && !mf.is_writeback() && mf.error().is_none());
    Ok(())
}

/// T17: a clean or uncached metadata block is not written.
pub fn t17_clean_or_uncached_metadata_block_is_not_written(rig: &mut dyn Rig) -> Outcome {
    for meta in [Some(false), None] {
        let (mut env, _) = t17_env(rig, meta)?;
        env.wb()?;
        ensure_eq!(env.io(), vec![(W, 800, 16384)], "{meta:?}");
    }
    Ok(())
}

/// T17: the BOUNDARY hint splits a device-contiguous run (lblk 0–1
/// BOUNDARY → pblk 100–101, lblk 2–3 → 102–103).
pub fn t17_boundary_splits_a_device_contiguous_run(rig: &mut dyn Rig) -> Outcome {
    for boundary in [false, true] {
        let m = extent_mapper(rig, 4096, 0..0);
        if boundary {
            m.insert_boundary(0, 2, 100);
        } else {
            m.insert(0, 2, 100);
        }
        m.insert(2, 2, 102);
        let mut env = Env::new(rig, 4096, 16 * KIB as u64, m)?;
        for i in 0..4 {
            env.dirty(i, 0, 4096, 1)?;
        }
        env.wb()?;
        let want = if boundary {
            vec![(W, 800, 8192), (W, 816, 8192)]
        } else {
            vec![(W, 800, 16384)]
        };
        ensure_eq!(env.io(), want, "boundary {boundary}");
    }
    Ok(())
}

/// T17 (bs 1024): the BOUNDARY extent ends inside folio 0 (lblk 0–1 →
/// pblk 100–101), the metadata block is pblk 102 (LBA 204), the data goes
/// on at pblk 103. The kernel only looks at the folio's last block
/// (K13); we submit where the extent ends, as on the read side.
pub fn t17_boundary_mid_folio_submits_before_the_rest_of_the_folio(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert_boundary(0, 2, 100);
    m.insert(2, 2, 103);
    let mut env = Env::new(rig, 1024, 4096, m.clone())?;
    let meta = metadata_cache(&env, 1024)?;
    m.set_metadata_cache(Some(meta.clone()));
    // Metadata page 25 = device bytes [102400, 106496): pblk 100–103;
    // only block 2 (pblk 102) is dirty.
    fresh_metadata_page(&meta, 25)?.write(2048, &[0x4D; 1024])?;
    env.dirty(0, 0, 4096, 1)?;
    env.wb()?;
    ensure_eq!(
        env.io(),
        vec![(W, 200, 2048), (W, 204, 1024), (W, 206, 2048)]
    );
    ensure_eq!(env.read_disk(204 * 512, 1024)?, vec![0x4D; 1024]);
    Ok(())
}

/// T22 (a): only the dirty block of a folio is written.
pub fn t22_only_dirty_blocks_are_written(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 4, 100);
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.dirty(0, 1024, 1024, 7)?;
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 202, 1024)]);
    ensure_eq!(env.read_disk(202 * 512, 1024)?, vec![7; 1024]);
    Ok(())
}

/// T23: ioends split by extent type although device-contiguous; the
/// unwritten one is converted on completion.
pub fn t23_ioends_split_by_extent_type_and_unwritten_is_converted(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 4, 100);
    m.insert_unwritten(4, 4, 104);
    let mut env = Env::new(rig, 4096, 32 * KIB as u64, m.clone())?;
    for i in 0..8 {
        env.dirty(i, 0, 4096, 3)?;
    }
    let rep = env.wb()?;
    ensure_eq!(rep.ioends, 2);
    ensure_eq!(env.io(), vec![(W, 800, 16384), (W, 832, 16384)]);
    let e = m.map(16384, 16384, MapIntent::Read)?;
    ensure_eq!(
        e.kind,
        ExtentKind::Mapped { lba: env.lba(832)? },
        "converted on completion"
    );
    Ok(())
}

/// T23 variant: 300 contiguous folios are one ioend chained at the 1 MiB
/// transfer limit (256 + 44 pages); writeback ends for all.
pub fn t23_long_ioend_is_chained_at_max_transfer(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 300, 1000);
    let mut env = Env::with_max_transfer(rig, 4096, 300 * 4096, m, 256 * 4096)?;
    for i in 0..300 {
        env.dirty(i, 0, 4096, 1)?;
    }
    let rep = env.wb()?;
    ensure_eq!(rep.ioends, 1);
    ensure_eq!(
        env.io(),
        vec![(W, 8000, 256 * 4096), (W, 8000 + 256 * 8, 44 * 4096)]
    );
    for i in 0..300 {
        ensure!(!env.folio(i)?.is_writeback(), "folio {i}");
    }
    ensure_eq!(env.read_disk(8000 * 512, 300 * 4096)?, vec![1; 300 * 4096]);
    Ok(())
}

/// T25 (a): a mapping error discards the folio without I/O; fsync reports
/// it once; a later read brings back the device's old data.
pub fn t25a_map_error_discards_the_folio(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 1, 100);
    let mut env = Env::new(rig, 4096, 4096, m.clone())?;
    env.write_disk(800 * 512, &[0x0D; 4096])?;
    env.dirty(0, 0, 4096, 0xAB)?;
    let mut h = OpenFile::open(&env.ino)?;
    m.fail_at(0, MapError::Failed(Errno::Io));
    let err = env
        .wb()
        .err()
        .ok_or_else(|| Failure::new("writeback succeeded"))?;
    ensure_eq!(err.errno(), Errno::Io);
    ensure!(env.commands().is_empty(), "{:?}", env.commands());
    let f = env.folio(0)?;
    ensure!(!f.is_uptodate() && !f.is_dirty() && !f.is_writeback() && !f.is_locked());
    ensure_eq!(
        fsync(&mut env.dev, &env.ino, &mut h).map_err(|e| e.errno()),
        Err(Errno::Io)
    );
    fsync(&mut env.dev, &env.ino, &mut h)?;
    let l = env.grab(0)?;
    read_folio(&mut env.dev, &env.ino, l)?;
    env.reap()?;
    ensure_eq!(env.io().first(), Some(&(BioOp::Read, 800, 4096)));
    ensure_eq!(env.bytes(0, 0, 4096)?, vec![0x0D; 4096], "old device data");
    Ok(())
}

/// T25 (b): a mapping error mid-folio fails the blocks already mapped
/// without I/O; fsync reports EIO.
pub fn t25b_map_error_mid_folio_fails_mapped_blocks_without_io(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 2, 100);
    m.insert(2, 2, 102);
    let mut env = Env::new(rig, 1024, 4096, m.clone())?;
    env.dirty(0, 0, 4096, 1)?;
    let mut h = OpenFile::open(&env.ino)?;
    m.fail_at(2, MapError::Failed(Errno::Io));
    ensure!(env.wb().is_err(), "writeback succeeded");
    ensure_eq!(env.count(W), 0);
    let f = env.folio(0)?;
    ensure!(!f.is_dirty() && !f.is_writeback() && f.error() == Some(Errno::Io));
    ensure_eq!(
        fsync(&mut env.dev, &env.ino, &mut h).map_err(|e| e.errno()),
        Err(Errno::Io)
    );
    Ok(())
}

/// A finished chain as `(offset, size, unwritten, ioends, result)`.
pub type Chain = (u64, u64, bool, usize, Result<(), Errno>);

/// An [`ExtentMapper`] that records the writeback completion work it is
/// given (one entry per merged ioend chain, R59).
#[derive(Debug)]
pub struct EndIoRecorder {
    /// The mapper.
    pub inner: Arc<ExtentMapper>,
    done: Mutex<Vec<IoendCompletion>>,
}

impl EndIoRecorder {
    /// Records what `inner` is given.
    pub fn new(inner: Arc<ExtentMapper>) -> Arc<Self> {
        Arc::new(EndIoRecorder {
            inner,
            done: Mutex::new(Vec::new()),
        })
    }

    fn lock_done(&self) -> MutexGuard<'_, Vec<IoendCompletion>> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(offset, size, unwritten, ioends, result)` per chain, by offset.
    pub fn done(&self) -> Vec<Chain> {
        let mut v: Vec<_> = self
            .lock_done()
            .iter()
            .map(|d| (d.offset, d.size, d.unwritten, d.ioends, d.result))
            .collect();
        v.sort_by_key(|d| d.0);
        v
    }
}

impl BlockMapper for EndIoRecorder {
    fn map(&self, pos: u64, len: u64, intent: MapIntent) -> Result<Extent, MapError> {
        self.inner.map(pos, len, intent)
    }

    fn convert_unwritten(&self, pos: u64, len: u64) -> Result<(), MapError> {
        self.inner.convert_unwritten(pos, len)
    }

    fn end_io(&self, done: &IoendCompletion) -> Result<(), MapError> {
        self.lock_done().push(done.clone());
        self.inner.end_io(done)
    }
}

/// T24's layout, bs 4096: A [0,8K) MAPPED at pblk 100, B [8K,16K) MAPPED
/// at pblk 300 (device-discontiguous), C [16K,24K) UNWRITTEN at pblk 302
/// (device-contiguous with B, other type). Six dirty folios; a transfer
/// limit of `max_transfer` bytes.
pub fn t24_env(
    rig: &mut dyn Rig,
    max_transfer: u32,
) -> Result<(Env<'_>, Arc<EndIoRecorder>), Failure> {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    m.insert_unwritten(4, 2, 302);
    let m = EndIoRecorder::new(m);
    let env = Env::with_max_transfer(rig, 4096, 24 * KIB as u64, m.clone(), max_transfer)?;
    for i in 0..6 {
        env.dirty(i, 0, 4096, 0x24)?;
    }
    Ok((env, m))
}

/// T24: file-contiguous ioends (A, B) merge on completion although
/// device-discontiguous; the unwritten one (C) stays apart and is
/// converted. Whatever order the device completes them in.
pub fn t24_file_contiguous_ioends_merge_on_completion(rig: &mut dyn Rig) -> Outcome {
    let (mut env, m) = t24_env(rig, 1 << 20)?;
    let rep = env.wb()?;
    ensure_eq!(rep.ioends, 3);
    ensure_eq!(
        env.io(),
        vec![(W, 800, 8192), (W, 2400, 8192), (W, 2416, 8192)],
        "three ioends, three commands"
    );
    ensure_eq!(
        m.done(),
        vec![(0, 16384, false, 2, Ok(())), (16384, 8192, true, 1, Ok(()))],
        "A+B merged despite the device gap, C separate"
    );
    ensure_eq!(
        m.inner.map(16384, 8192, MapIntent::Read)?.kind,
        ExtentKind::Mapped {
            lba: env.lba(2416)?
        },
        "C converted"
    );
    for i in 0..6 {
        let f = env.folio(i)?;
        ensure!(
            !f.is_dirty() && !f.is_writeback() && f.error().is_none(),
            "folio {i}"
        );
    }
    ensure_eq!(env.read_disk(2400 * 512, 16384)?, vec![0x24; 16384]);
    Ok(())
}

/// T24: unwritten ioends merge into one conversion across a device gap,
/// not across a file gap.
pub fn t24_discontiguous_unwritten_ioends_convert_in_one_call(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert_unwritten(0, 2, 100);
    m.insert_unwritten(2, 2, 300);
    m.insert_unwritten(5, 1, 500);
    let m = EndIoRecorder::new(m);
    let mut env = Env::new(rig, 4096, 24 * KIB as u64, m.clone())?;
    for i in [0, 1, 2, 3, 5] {
        env.dirty(i, 0, 4096, 1)?;
    }
    let rep = env.wb()?;
    ensure_eq!(rep.ioends, 3);
    ensure_eq!(
        m.done(),
        vec![(0, 16384, true, 2, Ok(())), (20480, 4096, true, 1, Ok(()))],
        "no merge across the file gap at [16K,20K)"
    );
    for (pos, sector) in [(0, 800), (8192, 2400), (20480, 4000)] {
        ensure_eq!(
            m.inner.map(pos, 4096, MapIntent::Read)?.kind,
            ExtentKind::Mapped {
                lba: env.lba(sector)?
            },
            "offset {pos}"
        );
    }
    Ok(())
}

/// Writeback of a sparse file allocates the hole it writes and maps it.
pub fn allocate_on_write_fills_a_sparse_file(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 500..600);
    let mut env = Env::new(rig, 4096, 16 * KIB as u64, m.clone())?;
    env.dirty(2, 0, 4096, 9)?;
    env.wb()?;
    ensure_eq!(env.io(), vec![(W, 4000, 4096)]);
    ensure_eq!(env.read_disk(4000 * 512, 4096)?, vec![9; 4096]);
    let e = m.map(8192, 4096, MapIntent::Read)?;
    ensure_eq!(
        e.kind,
        ExtentKind::Mapped {
            lba: env.lba(4000)?
        }
    );
    ensure_eq!(m.map(0, 4096, MapIntent::Read)?.kind, ExtentKind::Hole);
    Ok(())
}

/// The writeback scenarios (name, fs block size, function).
pub(crate) const SCENARIOS: &[crate::Scenario] = &scenarios![
    t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after: 4096,
    t13_eof_tail_zeroed_in_cache_and_never_written_past: 1024,
    t13_blocks_past_eof_are_never_mapped: 1024,
    t14_folio_wholly_past_eof_is_cleaned_without_io: 4096,
    t15a_writes_follow_device_contiguity_between_folios: 4096,
    t15b_writes_follow_device_contiguity_inside_a_folio: 1024,
    t17_boundary_submits_the_data_then_the_dirty_metadata_block: 4096,
    t17_clean_or_uncached_metadata_block_is_not_written: 4096,
    t17_boundary_splits_a_device_contiguous_run: 4096,
    t17_boundary_mid_folio_submits_before_the_rest_of_the_folio: 1024,
    t22_only_dirty_blocks_are_written: 1024,
    t23_ioends_split_by_extent_type_and_unwritten_is_converted: 4096,
    t23_long_ioend_is_chained_at_max_transfer: 4096,
    t24_file_contiguous_ioends_merge_on_completion: 4096,
    t24_discontiguous_unwritten_ioends_convert_in_one_call: 4096,
    t25a_map_error_discards_the_folio: 4096,
    t25b_map_error_mid_folio_fails_mapped_blocks_without_io: 1024,
    allocate_on_write_fills_a_sparse_file: 4096,
];
