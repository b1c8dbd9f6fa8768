//! Read-path scenarios: T1–T10 (T8 twice), T18, T19, T28 (readahead, read_folio).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use mpage::{BioFlags, BioOp, Extent, ExtentFlags, ExtentKind, io, read_folio};
use pagecache::{Errno, LockedFolio};

use crate::check::{Failure, Outcome};
use crate::env::{Env, KIB, ScriptMapper, extent_mapper, mapped};
use crate::rig::Rig;
use crate::{ensure, ensure_eq};

const R: BioOp = BioOp::Read;

/// T1: one extent of 16 blocks read ahead is one command of 64 KiB with
/// the readahead hint, one mapping call asking for the whole window (R9:
/// the mapper answers no more than it is asked), 16 uptodate folios.
pub fn t01_one_extent_readahead_is_one_command(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 16, 1000);
    let mut env = Env::new(rig, 4096, 64 * KIB as u64, m.clone())?;
    env.fill_disk(8000, 64 * KIB, 0x11)?;
    let rep = env.ra(0..16)?;
    ensure_eq!(rep.started, 16);
    ensure_eq!(m.calls(), 1, "GB=1");
    ensure_eq!(m.requests(), vec![(0, 65536)], "16 blocks asked (R9)");
    ensure_eq!(env.io(), vec![(R, 8000, 65536)]);
    let cmd = &env.commands()[0];
    ensure_eq!(cmd.flags, BioFlags::READAHEAD);
    ensure_eq!(cmd.segments, 16);
    for i in 0..16 {
        let f = env.folio(i)?;
        ensure!(f.is_uptodate() && !f.is_locked(), "folio {i}");
        ensure_eq!(env.bytes(i, 0, 4096)?, vec![0x11; 4096], "folio {i}");
    }
    Ok(())
}

/// T1b: T1 with a 16 KiB transfer limit is four commands.
pub fn t01b_mdts_splits_into_max_transfer_commands(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 16, 1000);
    let mut env = Env::with_max_transfer(rig, 4096, 64 * KIB as u64, m, 16 * KIB as u32)?;
    env.ra(0..16)?;
    ensure_eq!(
        env.io(),
        vec![
            (R, 8000, 16384),
            (R, 8032, 16384),
            (R, 8064, 16384),
            (R, 8096, 16384)
        ]
    );
    for i in 0..16 {
        ensure!(env.folio(i)?.is_uptodate(), "folio {i}");
    }
    Ok(())
}

/// T2: two device-discontiguous extents: the open run is submitted before
/// the next one starts.
pub fn t02_discontiguous_extents_submit_the_open_run_first(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 8, 1000);
    m.insert(8, 8, 2000);
    let mut env = Env::new(rig, 4096, 64 * KIB as u64, m.clone())?;
    env.ra(0..16)?;
    ensure_eq!(m.calls(), 2);
    ensure_eq!(
        m.requests(),
        vec![(0, 65536), (32768, 32768)],
        "each call asks for the rest of the window (R9)"
    );
    ensure_eq!(env.io(), vec![(R, 8000, 32768), (R, 16000, 32768)]);
    Ok(())
}

/// T3: a hole folio between two mapped ones is zeroed without I/O; the
/// others share one command although their memory is not contiguous.
pub fn t03_hole_folio_is_zeroed_and_the_run_skips_it(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 1, 500);
    m.insert(2, 1, 501);
    let mut env = Env::new(rig, 4096, 12 * KIB as u64, m.clone())?;
    env.fill_disk(4000, 8192, 0x22)?;
    env.ra(0..3)?;
    ensure_eq!(m.calls(), 3, "GB=3");
    ensure_eq!(m.requests(), vec![(0, 12288), (4096, 8192), (8192, 4096)]);
    ensure_eq!(env.io(), vec![(R, 4000, 8192)]);
    let cmd = &env.commands()[0];
    ensure_eq!(cmd.segments, 2);
    ensure_eq!(cmd.dma.first().map(|d| d.0), Some(env.folio(0)?.iova()));
    ensure_eq!(
        cmd.dma.last().map(|d| d.0 + d.1 as u64),
        Some(env.folio(2)?.iova() + 4096)
    );
    ensure!(env.folio(1)?.is_uptodate());
    ensure_eq!(env.bytes(1, 0, 4096)?, vec![0; 4096]);
    ensure_eq!(env.bytes(2, 0, 4096)?, vec![0x22; 4096]);
    Ok(())
}

/// T4: blocks of one folio on two device ranges are read per extent (the
/// coalesced form of the per-block fallback, K2).
pub fn t04_discontiguous_blocks_in_a_folio_read_per_extent(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    let mut env = Env::new(rig, 1024, 4096, m)?;
    env.demand(0)?;
    ensure_eq!(env.io(), vec![(R, 200, 2048), (R, 600, 2048)]);
    ensure!(env.folio(0)?.is_uptodate());
    Ok(())
}

/// T5: a hole at the end of a folio ends the command, even though the
/// next folio is device-contiguous.
pub fn t05_tail_hole_ends_the_command(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 3, 100);
    m.insert(4, 4, 103);
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.fill_disk(200, 8192, 0x33)?;
    env.ra(0..2)?;
    ensure_eq!(env.io(), vec![(R, 200, 3072), (R, 206, 4096)]);
    ensure_eq!(env.bytes(0, 3072, 1024)?, vec![0; 1024]);
    ensure_eq!(env.bytes(0, 0, 3072)?, vec![0x33; 3072]);
    Ok(())
}

/// T6: a hole block then mapped blocks: the hole is zeroed, the rest read
/// as one command.
pub fn t06_hole_then_mapped_zeroes_and_reads_the_rest(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(1, 3, 101);
    let mut env = Env::new(rig, 1024, 4096, m)?;
    env.fill_disk(200, 4096, 0x44)?;
    env.demand(0)?;
    ensure_eq!(env.io(), vec![(R, 202, 3072)]);
    ensure_eq!(env.bytes(0, 0, 1024)?, vec![0; 1024]);
    ensure_eq!(env.bytes(0, 1024, 3072)?, vec![0x44; 3072]);
    ensure!(env.folio(0)?.is_uptodate());
    Ok(())
}

/// T7: the block holding EOF is read whole (its bytes past EOF come from
/// the disk); blocks wholly past EOF are zeroed, never read.
pub fn t07_eof_block_is_read_whole_and_later_blocks_zeroed(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 4, 100);
    let mut env = Env::new(rig, 1024, 2500, m.clone())?;
    env.fill_disk(204, 1024, 0xAA)?;
    env.fill_disk(206, 1024, 0xBB)?;
    env.demand(0)?;
    ensure_eq!(m.calls(), 1);
    ensure_eq!(m.requests(), vec![(0, 3072)], "up to the EOF block (R9)");
    ensure_eq!(env.io(), vec![(R, 200, 3072)]);
    ensure_eq!(
        env.bytes(0, 2500, 572)?,
        vec![0xAA; 572],
        "not zeroed on read"
    );
    ensure_eq!(env.bytes(0, 3072, 1024)?, vec![0; 1024]);
    Ok(())
}

/// T7: the mapping request stops at the EOF block.
pub fn t07_window_request_is_capped_at_eof(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 4096, 200)])?;
    let mut env = Env::new(rig, 1024, 2500, m.clone())?;
    env.demand(0)?;
    ensure_eq!(m.calls(), vec![(0, 3072)], "asks for 3 blocks");
    Ok(())
}

/// T8: a BOUNDARY extent submits the run at its end; without the flag the
/// contiguous extents are one command.
pub fn t08_boundary_extent_submits_the_run(rig: &mut dyn Rig) -> Outcome {
    let mut b = mapped(0, 48 * KIB as u64, 800);
    b.flags = ExtentFlags::BOUNDARY;
    let m = ScriptMapper::new(
        rig.lba_size(),
        vec![b, mapped(48 * KIB as u64, 16 * KIB as u64, 896)],
    )?;
    let mut env = Env::new(rig, 4096, 64 * KIB as u64, m)?;
    env.ra(0..16)?;
    ensure_eq!(env.io(), vec![(R, 800, 48 * KIB), (R, 896, 16 * KIB)]);
    drop(env);

    let m = ScriptMapper::new(
        rig.lba_size(),
        vec![
            mapped(0, 48 * KIB as u64, 800),
            mapped(48 * KIB as u64, 16 * KIB as u64, 896),
        ],
    )?;
    let mut env = Env::new(rig, 4096, 64 * KIB as u64, m)?;
    env.ra(0..16)?;
    ensure_eq!(env.io(), vec![(R, 800, 64 * KIB)], "control: no boundary");
    Ok(())
}

/// T8 (R18), bs 1024: a BOUNDARY extent that ends inside a folio and is
/// followed by a device-contiguous extent changes nothing: the kernel
/// looks at the mapping once, after the folio's last block, and by then
/// the next extent has replaced the boundary one. lblk 0–5 → pblk
/// 100–105 BOUNDARY (ends mid-folio 1), lblk 6–15 → 106–115: one
/// `R(200, 16K)`. Control: a BOUNDARY extent ending at a folio's end
/// (lblk 0–7) submits there, `R(200, 8K)` then `R(216, 8K)`.
pub fn t08_boundary_extent_ending_mid_folio_changes_nothing(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert_boundary(0, 6, 100);
    m.insert(6, 10, 106);
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m.clone())?;
    env.fill_disk(200, 16 * KIB, 0x18)?;
    env.ra(0..4)?;
    ensure_eq!(env.io(), vec![(R, 200, 16 * KIB)]);
    ensure_eq!(m.calls(), 2, "A, then B for lblk 6");
    for i in 0..4 {
        ensure!(env.folio(i)?.is_uptodate(), "folio {i}");
        ensure_eq!(env.bytes(i, 0, 4096)?, vec![0x18; 4096], "folio {i}");
    }
    drop(env);

    let m = extent_mapper(rig, 1024, 0..0);
    m.insert_boundary(0, 8, 100);
    m.insert(8, 8, 108);
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.ra(0..4)?;
    ensure_eq!(
        env.io(),
        vec![(R, 200, 8 * KIB), (R, 216, 8 * KIB)],
        "control: the boundary extent ends at folio 1's end"
    );
    Ok(())
}

/// T9: readahead commands carry the hint, demand reads do not.
pub fn t09_only_readahead_commands_carry_the_hint(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 64 * KIB as u64, 800)])?;
    let mut env = Env::new(rig, 4096, 64 * KIB as u64, m)?;
    env.demand(0)?;
    env.ra(1..2)?;
    let flags: Vec<BioFlags> = env.commands().iter().map(|c| c.flags).collect();
    ensure_eq!(flags, vec![BioFlags::empty(), BioFlags::READAHEAD]);
    Ok(())
}

/// T10: the namespace's last 4 KiB block is read; a block mapped past the
/// namespace end fails with EIO before submission (K6), without
/// I/O and without zero-fill. Computed from the rig's capacity.
pub fn t10_mapping_past_the_namespace_fails_without_io(rig: &mut dyn Rig) -> Outcome {
    let last = rig.geometry().capacity_bytes() / 4096 - 1;
    let m = extent_mapper(rig, 4096, 0..0);
    m.insert(0, 1, last);
    m.insert(1, 1, last + 1);
    let mut env = Env::new(rig, 4096, 8192, m)?;
    env.ra(0..2)?;
    ensure_eq!(env.io(), vec![(R, last * 8, 4096)]);
    ensure!(env.folio(0)?.is_uptodate());
    let f1 = env.folio(1)?;
    ensure!(!f1.is_uptodate() && !f1.is_locked());
    ensure_eq!(f1.error(), Some(Errno::Io));
    Ok(())
}

/// T18's set-up (bs 1024): blocks 1–2 of folio 0 written by the user
/// (0x99), blocks 0 and 3 on the disk (0x77) at LBAs 200 and 206; the
/// folio comes back locked, for read_folio.
pub fn t18_setup(rig: &mut dyn Rig) -> Result<(Env<'_>, LockedFolio), Failure> {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 4096, 200)])?;
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.fill_disk(200, 4096, 0x77)?;
    let l = env.grab(0)?;
    l.write(1024, &[0x99; 2048])?;
    Ok((env, l))
}

/// T18's commands: one per missing block, into the folio at its place, no
/// hint.
pub fn t18_reads(env: &Env<'_>) -> Outcome {
    ensure_eq!(env.io(), vec![(R, 200, 1024), (R, 206, 1024)]);
    let c = env.commands();
    let iova = env.folio(0)?.iova();
    ensure_eq!(c[0].dma, vec![(iova, 1024)]);
    ensure_eq!(c[1].dma, vec![(iova + 3072, 1024)]);
    ensure!(c.iter().all(|c| c.flags.is_empty()), "no hint: {c:?}");
    Ok(())
}

/// T18's end state: uptodate, unlocked, the user's blocks kept.
pub fn t18_done(env: &Env<'_>) -> Outcome {
    let f = env.folio(0)?;
    ensure!(f.is_uptodate() && !f.is_locked());
    ensure_eq!(env.bytes(0, 1024, 2048)?, vec![0x99; 2048]);
    ensure_eq!(env.bytes(0, 0, 1024)?, vec![0x77; 1024]);
    ensure_eq!(env.bytes(0, 3072, 1024)?, vec![0x77; 1024]);
    Ok(())
}

/// T18: a partially uptodate folio reads only its missing blocks (that it
/// stays locked until both complete is `recording_only`'s part).
pub fn t18_partially_uptodate_folio_reads_only_missing_blocks(rig: &mut dyn Rig) -> Outcome {
    let (mut env, l) = t18_setup(rig)?;
    read_folio(&mut env.dev, &env.ino, l)?;
    env.reap()?;
    t18_reads(&env)?;
    t18_done(&env)
}

/// T19: only MAPPED extents are read; unwritten, hole and NEW extents are
/// zeroed without I/O (DELALLOC replaced by a hole).
pub fn t19_only_mapped_extents_are_read(rig: &mut dyn Rig) -> Outcome {
    let k4 = 4 * KIB as u64;
    let mut new = mapped(3 * k4, k4, 816);
    new.flags = ExtentFlags::NEW;
    let unwritten = Extent {
        offset: k4,
        len: k4,
        kind: ExtentKind::Unwritten { lba: 808 },
        flags: ExtentFlags::empty(),
    };
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, k4, 800), unwritten, new])?;
    let mut env = Env::new(rig, 4096, 20 * KIB as u64, m)?;
    env.fill_disk(800, 24 * KIB, 0xAA)?;
    env.ra(0..5)?;
    ensure_eq!(env.io(), vec![(R, 800, 4096)]);
    for i in 1..5 {
        ensure!(env.folio(i)?.is_uptodate(), "folio {i}");
        ensure_eq!(env.bytes(i, 0, 4096)?, vec![0; 4096], "folio {i}");
    }
    Ok(())
}

/// T28: LBA-contiguous blocks whose memory pieces end mid-page never share
/// a command (PRP rule, R4).
pub fn t28_sub_page_segments_never_share_a_command(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 1024, 0..0);
    m.insert(0, 1, 100);
    m.insert(1, 2, 500);
    m.insert(3, 1, 101);
    let mut env = Env::new(rig, 1024, 4096, m)?;
    let l = env.grab(0)?;
    l.write(1024, &[1; 2048])?;
    read_folio(&mut env.dev, &env.ino, l)?;
    env.reap()?;
    ensure_eq!(env.io(), vec![(R, 200, 1024), (R, 202, 1024)]);
    ensure!(env.folio(0)?.is_uptodate());
    Ok(())
}

/// A read of a hole needs no I/O; the io helpers wait for it all the same.
pub fn demand_read_waits_through_io_helpers(rig: &mut dyn Rig) -> Outcome {
    let m = extent_mapper(rig, 4096, 0..0);
    let mut env = Env::new(rig, 4096, 8192, m)?;
    let l = env.grab(0)?;
    let f = l.folio();
    read_folio(&mut env.dev, &env.ino, l)?;
    io::wait_until(&mut env.dev, "read", || !f.is_locked())?;
    ensure!(f.is_uptodate());
    ensure!(env.io().is_empty(), "a hole needs no I/O");
    Ok(())
}

/// The read scenarios (name, fs block size, function).
pub(crate) const SCENARIOS: &[crate::Scenario] = &scenarios![
    t01_one_extent_readahead_is_one_command: 4096,
    t01b_mdts_splits_into_max_transfer_commands: 4096,
    t02_discontiguous_extents_submit_the_open_run_first: 4096,
    t03_hole_folio_is_zeroed_and_the_run_skips_it: 4096,
    t04_discontiguous_blocks_in_a_folio_read_per_extent: 1024,
    t05_tail_hole_ends_the_command: 1024,
    t06_hole_then_mapped_zeroes_and_reads_the_rest: 1024,
    t07_eof_block_is_read_whole_and_later_blocks_zeroed: 1024,
    t07_window_request_is_capped_at_eof: 1024,
    t08_boundary_extent_submits_the_run: 4096,
    t08_boundary_extent_ending_mid_folio_changes_nothing: 1024,
    t09_only_readahead_commands_carry_the_hint: 4096,
    t10_mapping_past_the_namespace_fails_without_io: 4096,
    t18_partially_uptodate_folio_reads_only_missing_blocks: 1024,
    t19_only_mapped_extents_are_read: 4096,
    t28_sub_page_segments_never_share_a_command: 1024,
    demand_read_waits_through_io_helpers: 4096,
];
