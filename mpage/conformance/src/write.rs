//! Buffered write scenarios: T20, T26, T27 (write_begin's reads, zeroing,
//! page_mkwrite), all with 1 KiB blocks.
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use mpage::{
    BioFlags, BioOp, Extent, ExtentFlags, ExtentKind, buffered_write, page_mkwrite, read_folio,
    truncate_page, zero_range,
};

use crate::check::{Failure, Outcome};
use crate::env::{Env, KIB, ScriptMapper, bits, mapped};
use crate::rig::Rig;
use crate::{ensure, ensure_eq};

const R: BioOp = BioOp::Read;
const W: BioOp = BioOp::Write;

/// bs=1024, i_size=16 KiB, block n at LBA 200+2n, disk 0xAA.
pub fn t20_env(rig: &mut dyn Rig) -> Result<Env<'_>, Failure> {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 16384, 200)])?;
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.fill_disk(200, 16384, 0xAA)?;
    Ok(env)
}

/// T20 (a): a partial block write reads that block first (one synchronous
/// demand read) and dirties only it.
pub fn t20a_partial_block_write_reads_that_block_first(rig: &mut dyn Rig) -> Outcome {
    let mut env = t20_env(rig)?;
    ensure_eq!(
        buffered_write(&mut env.dev, &env.ino, 1500, &[0x11; 100])?,
        100
    );
    ensure_eq!(env.io(), vec![(R, 202, 1024)]);
    ensure_eq!(env.commands()[0].flags, BioFlags::empty(), "not readahead");
    let f = env.folio(0)?;
    ensure_eq!(bits(&f.uptodate_blocks()), "0100");
    ensure_eq!(bits(&f.dirty_blocks()), "0100");
    ensure!(f.is_dirty() && !f.is_uptodate() && !f.is_locked());
    let b = env.bytes(0, 1024, 1024)?;
    ensure_eq!(&b[..476], &[0xAA; 476][..]);
    ensure_eq!(&b[476..576], &[0x11; 100][..]);
    ensure_eq!(&b[576..], &[0xAA; 448][..]);
    Ok(())
}

/// T20 (b): a whole block write reads nothing.
pub fn t20b_whole_block_write_reads_nothing(rig: &mut dyn Rig) -> Outcome {
    let mut env = t20_env(rig)?;
    buffered_write(&mut env.dev, &env.ino, 1024, &[0x22; 1024])?;
    ensure_eq!(env.io(), vec![]);
    let f = env.folio(0)?;
    ensure_eq!(bits(&f.uptodate_blocks()), "0100");
    ensure!(f.is_dirty() && !f.is_uptodate());
    Ok(())
}

/// T20 (c): a partial write over a hole zeroes the rest of the block
/// without reading.
pub fn t20c_partial_write_over_a_hole_zeroes_the_rest_of_the_block(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![])?;
    let mut env = Env::new(rig, 1024, 16 * KIB as u64, m)?;
    env.fill_disk(0, 65536, 0xAA)?;
    buffered_write(&mut env.dev, &env.ino, 1500, &[0x33; 100])?;
    ensure_eq!(env.io(), vec![]);
    let b = env.bytes(0, 1024, 1024)?;
    ensure_eq!(&b[..476], &[0; 476][..]);
    ensure_eq!(&b[476..576], &[0x33; 100][..]);
    ensure_eq!(&b[576..], &[0; 448][..]);
    ensure_eq!(bits(&env.folio(0)?.uptodate_blocks()), "0100");
    Ok(())
}

/// T20 (d): a write over part of three blocks reads them as one command.
pub fn t20d_mixed_range_is_read_as_one_command(rig: &mut dyn Rig) -> Outcome {
    let mut env = t20_env(rig)?;
    buffered_write(&mut env.dev, &env.ino, 1500, &[0x44; 2100])?;
    ensure_eq!(env.io(), vec![(R, 202, 3072)]);
    let f = env.folio(0)?;
    ensure_eq!(bits(&f.uptodate_blocks()), "0111");
    let b = env.bytes(0, 1024, 3072)?;
    ensure_eq!(&b[..476], &[0xAA; 476][..]);
    ensure!(b[476..2576].iter().all(|x| *x == 0x44));
    ensure!(b[2576..].iter().all(|x| *x == 0xAA));
    Ok(())
}

/// T26 (a): truncate_page reads the block, zeroes its tail and writes it
/// back; on a cached uptodate folio it reads nothing; block aligned, it
/// does nothing.
pub fn t26a_truncate_page_reads_the_block_zeroes_its_tail_and_writes_it_back(
    rig: &mut dyn Rig,
) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 16384, 200)])?;
    let mut env = Env::new(rig, 1024, 8000, m)?;
    env.fill_disk(200, 16384, 0xAA)?;
    truncate_page(&mut env.dev, &env.ino, 2500)?;
    ensure_eq!(env.io(), vec![(R, 204, 1024)]);
    ensure!(env.folio(0)?.is_dirty());
    ensure_eq!(env.bytes(0, 2048, 452)?, vec![0xAA; 452]);
    ensure_eq!(env.bytes(0, 2500, 572)?, vec![0; 572]);
    ensure_eq!(env.ino.size(), 8000, "zeroing inside EOF keeps the size");
    env.wb()?;
    ensure_eq!(env.io().get(1), Some(&(W, 204, 1024)));
    ensure_eq!(env.read_disk(204 * 512, 452)?, vec![0xAA; 452]);
    ensure_eq!(env.read_disk(204 * 512 + 452, 572)?, vec![0; 572]);
    drop(env);

    // Cached and uptodate: no read.
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 16384, 200)])?;
    let mut env = Env::new(rig, 1024, 8000, m)?;
    env.dirty(0, 0, 4096, 0x77)?;
    truncate_page(&mut env.dev, &env.ino, 2500)?;
    ensure_eq!(env.io(), vec![]);
    ensure_eq!(env.bytes(0, 2500, 572)?, vec![0; 572]);
    ensure_eq!(env.bytes(0, 3072, 1024)?, vec![0x77; 1024]);
    // Block aligned: nothing.
    truncate_page(&mut env.dev, &env.ino, 3072)?;
    ensure_eq!(env.bytes(0, 3072, 1024)?, vec![0x77; 1024]);
    Ok(())
}

/// T26 (b): truncate_page over an unwritten extent is a no-op.
pub fn t26b_truncate_page_over_unwritten_is_a_no_op(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(
        rig.lba_size(),
        vec![Extent {
            offset: 0,
            len: 16384,
            kind: ExtentKind::Unwritten { lba: 200 },
            flags: ExtentFlags::empty(),
        }],
    )?;
    let mut env = Env::new(rig, 1024, 8000, m)?;
    truncate_page(&mut env.dev, &env.ino, 2500)?;
    ensure_eq!(env.io(), vec![]);
    ensure_eq!(env.cache.nr_folios(env.ino.file)?, 0);
    ensure_eq!(env.cache.dirty_bytes(), 0);
    Ok(())
}

/// T26 (c): zero_range on an uncached folio reads the block, then zeroes
/// the range and dirties the block.
pub fn t26c_zero_range_on_an_uncached_folio_reads_then_zeroes(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 16384, 200)])?;
    let mut env = Env::new(rig, 1024, 8000, m)?;
    env.fill_disk(200, 16384, 0xAA)?;
    zero_range(&mut env.dev, &env.ino, 1500, 100)?;
    ensure_eq!(env.io(), vec![(R, 202, 1024)]);
    let f = env.folio(0)?;
    ensure!(f.is_dirty());
    ensure_eq!(bits(&f.dirty_blocks()), "0100");
    let b = env.bytes(0, 1024, 1024)?;
    ensure!(b[..476].iter().all(|x| *x == 0xAA));
    ensure!(b[476..576].iter().all(|x| *x == 0));
    ensure!(b[576..].iter().all(|x| *x == 0xAA));
    Ok(())
}

/// T27: page_mkwrite maps and dirties a folio inside EOF (locked on
/// return, no I/O) and answers NOPAGE past EOF without mapping.
pub fn t27_mkwrite_maps_and_dirties_inside_eof_and_retries_past_it(rig: &mut dyn Rig) -> Outcome {
    let m = ScriptMapper::new(rig.lba_size(), vec![mapped(0, 16384, 200)])?;
    let mut env = Env::new(rig, 1024, 2500, m.clone())?;
    for i in 0..2 {
        let l = env.grab(i)?;
        read_folio(&mut env.dev, &env.ino, l)?;
    }
    env.reap()?;
    env.clear_log();
    m.clear_calls();

    let f0 = env.folio(0)?;
    let locked = page_mkwrite(&mut env.dev, &env.ino, &f0)?
        .ok_or_else(|| Failure::new("folio 0 not writable"))?;
    ensure!(locked.is_locked() && locked.is_dirty());
    ensure_eq!(
        m.calls(),
        vec![(0, 2500)],
        "one write-intent mapping over [0, 2500)"
    );
    ensure_eq!(bits(&locked.dirty_blocks()), "1110");
    drop(locked);

    let f1 = env.folio(1)?;
    ensure!(
        page_mkwrite(&mut env.dev, &env.ino, &f1)?.is_none(),
        "NOPAGE"
    );
    ensure_eq!(m.calls().len(), 1, "no mapping call past EOF");
    ensure!(!f1.is_dirty() && !f1.is_locked());
    ensure_eq!(env.io(), vec![], "no I/O");
    Ok(())
}

/// The buffered write scenarios (name, fs block size, function).
pub(crate) const SCENARIOS: &[crate::Scenario] = &scenarios![
    t20a_partial_block_write_reads_that_block_first: 1024,
    t20b_whole_block_write_reads_nothing: 1024,
    t20c_partial_write_over_a_hole_zeroes_the_rest_of_the_block: 1024,
    t20d_mixed_range_is_read_as_one_command: 1024,
    t26a_truncate_page_reads_the_block_zeroes_its_tail_and_writes_it_back: 1024,
    t26b_truncate_page_over_unwritten_is_a_no_op: 1024,
    t26c_zero_range_on_an_uncached_folio_reads_then_zeroes: 1024,
    t27_mkwrite_maps_and_dirties_inside_eof_and_retries_past_it: 1024,
];
