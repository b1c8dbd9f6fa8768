//! Buffered write scenarios T20, T21, T26, T27 against the recording
//! device.

mod common;

use common::*;
use mpage::{
    BioFlags, BioOp, DeviceError, Extent, ExtentFlags, ExtentKind, Fault, SyncMode, buffered_write,
    device::status, page_mkwrite, read_folio, truncate_page, writepages, zero_range,
};
use pagecache::Errno;

const R: BioOp = BioOp::Read;
const W: BioOp = BioOp::Write;

fn bits(map: &pagecache::BlockBitmap) -> String {
    (0..map.len())
        .map(|i| if map.get(i) { '1' } else { '0' })
        .collect()
}

/// bs=1024, i_size=16 KiB, block n at LBA 200+2n, disk 0xAA.
fn t20_env() -> Env {
    let env = Env::new(
        1024,
        16 * KIB as u64,
        ScriptMapper::new(vec![mapped(0, 16384, 200)]),
    );
    env.fill_disk(200, 16384, 0xAA);
    env
}

#[test]
fn t20a_partial_block_write_reads_that_block_first() {
    let env = t20_env();
    let mut d = env.device();
    assert_eq!(
        buffered_write(&mut d, &env.ino, 1500, &[0x11; 100]).unwrap(),
        100
    );
    assert_eq!(env.dev.io(), vec![(R, 202, 1024)]);
    assert_eq!(
        env.dev.commands()[0].flags,
        BioFlags::empty(),
        "not readahead"
    );
    let f = env.folio(0);
    assert_eq!(bits(&f.uptodate_blocks()), "0100");
    assert_eq!(bits(&f.dirty_blocks()), "0100");
    assert!(f.is_dirty() && !f.is_uptodate() && !f.is_locked());
    let mut b = vec![0; 1024];
    f.read(1024, &mut b).unwrap();
    assert_eq!(&b[..476], &[0xAA; 476][..]);
    assert_eq!(&b[476..576], &[0x11; 100][..]);
    assert_eq!(&b[576..], &[0xAA; 448][..]);
}

#[test]
fn t20b_whole_block_write_reads_nothing() {
    let env = t20_env();
    let mut d = env.device();
    buffered_write(&mut d, &env.ino, 1024, &[0x22; 1024]).unwrap();
    assert_eq!(env.dev.io(), vec![]);
    let f = env.folio(0);
    assert_eq!(bits(&f.uptodate_blocks()), "0100");
    assert!(f.is_dirty() && !f.is_uptodate());
}

#[test]
fn t20c_partial_write_over_a_hole_zeroes_the_rest_of_the_block() {
    let env = Env::new(1024, 16 * KIB as u64, ScriptMapper::new(vec![]));
    env.fill_disk(0, 65536, 0xAA);
    let mut d = env.device();
    buffered_write(&mut d, &env.ino, 1500, &[0x33; 100]).unwrap();
    assert_eq!(env.dev.io(), vec![]);
    let b = env.bytes(0, 1024, 1024);
    assert_eq!(&b[..476], &[0; 476][..]);
    assert_eq!(&b[476..576], &[0x33; 100][..]);
    assert_eq!(&b[576..], &[0; 448][..]);
    assert_eq!(bits(&env.folio(0).uptodate_blocks()), "0100");
}

#[test]
fn t20d_mixed_range_is_read_as_one_command() {
    let env = t20_env();
    let mut d = env.device();
    buffered_write(&mut d, &env.ino, 1500, &[0x44; 2100]).unwrap();
    assert_eq!(env.dev.io(), vec![(R, 202, 3072)]);
    let f = env.folio(0);
    assert_eq!(bits(&f.uptodate_blocks()), "0111");
    let b = env.bytes(0, 1024, 3072);
    assert_eq!(&b[..476], &[0xAA; 476][..]);
    assert!(b[476..2576].iter().all(|x| *x == 0x44));
    assert!(b[2576..].iter().all(|x| *x == 0xAA));
}

#[test]
fn t21_failed_read_in_write_begin_truncates_past_eof_and_keeps_the_size() {
    let env = Env::new(1024, 8700, ScriptMapper::new(vec![mapped(0, 16384, 200)]));
    env.fill_disk(200, 16384, 0xAA);
    // Block 8 ([8192, 9216)) is LBA 216.
    env.dev.inject(Fault {
        op: Some(R),
        lbas: 216..218,
        error: DeviceError::Status {
            status: status::INTERNAL,
        },
        times: Some(1),
    });
    let mut d = env.device();
    let err = buffered_write(&mut d, &env.ino, 8600, &[0x55; 1000]).unwrap_err();
    assert_eq!(err.errno(), Errno::Io);
    assert_eq!(env.dev.io(), vec![(R, 216, 1024)], "one read, no writes");
    assert_eq!(env.ino.size(), 8700);
    let f = env.folio(2);
    assert!(!f.is_dirty() && !f.is_uptodate() && !f.is_locked());
    // Block 9 lies past EOF: zeroed, not read.
    assert_eq!(env.bytes(2, 1024, 576), vec![0; 576]);
    // Nothing to write back.
    writepages(&mut d, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    env.reap();
    assert_eq!(env.dev.count(W), 0);
    // A later read re-issues the read of block 8 (and zeroes the rest).
    env.dev.clear_log();
    read_folio(&mut d, &env.ino, f.lock()).unwrap();
    env.reap();
    assert_eq!(env.dev.io(), vec![(R, 216, 1024)]);
    assert!(f.is_uptodate());
    assert_eq!(
        env.bytes(2, 0, 1024),
        vec![0xAA; 1024],
        "EOF block read whole (R11)"
    );
}

#[test]
fn t26a_truncate_page_reads_the_block_zeroes_its_tail_and_writes_it_back() {
    let env = Env::new(1024, 8000, ScriptMapper::new(vec![mapped(0, 16384, 200)]));
    env.fill_disk(200, 16384, 0xAA);
    let mut d = env.device();
    truncate_page(&mut d, &env.ino, 2500).unwrap();
    assert_eq!(env.dev.io(), vec![(R, 204, 1024)]);
    let f = env.folio(0);
    assert!(f.is_dirty());
    assert_eq!(env.bytes(0, 2048, 452), vec![0xAA; 452]);
    assert_eq!(env.bytes(0, 2500, 572), vec![0; 572]);
    assert_eq!(env.ino.size(), 8000, "zeroing inside EOF keeps the size");
    writepages(&mut d, &env.ino, 0..u64::MAX, SyncMode::All).unwrap();
    env.reap();
    assert_eq!(env.dev.io()[1], (W, 204, 1024));
    assert_eq!(env.dev.read_disk(204 * 512 + 452, 572), vec![0; 572]);

    // Cached and uptodate: no read.
    let env = Env::new(1024, 8000, ScriptMapper::new(vec![mapped(0, 16384, 200)]));
    env.dirty(0, 0, 4096, 0x77);
    let mut d = env.device();
    truncate_page(&mut d, &env.ino, 2500).unwrap();
    assert_eq!(env.dev.io(), vec![]);
    assert_eq!(env.bytes(0, 2500, 572), vec![0; 572]);
    assert_eq!(env.bytes(0, 3072, 1024), vec![0x77; 1024]);
    // Block aligned: nothing.
    truncate_page(&mut d, &env.ino, 3072).unwrap();
    assert_eq!(env.bytes(0, 3072, 1024), vec![0x77; 1024]);
}

#[test]
fn t26b_truncate_page_over_unwritten_is_a_no_op() {
    let env = Env::new(
        1024,
        8000,
        ScriptMapper::new(vec![Extent {
            offset: 0,
            len: 16384,
            kind: ExtentKind::Unwritten { lba: 200 },
            flags: ExtentFlags::empty(),
        }]),
    );
    let mut d = env.device();
    truncate_page(&mut d, &env.ino, 2500).unwrap();
    assert_eq!(env.dev.io(), vec![]);
    assert_eq!(env.cache.nr_folios(env.ino.file).unwrap(), 0);
    assert_eq!(env.cache.dirty_bytes(), 0);
}

#[test]
fn t26c_zero_range_on_an_uncached_folio_reads_then_zeroes() {
    let env = Env::new(1024, 8000, ScriptMapper::new(vec![mapped(0, 16384, 200)]));
    env.fill_disk(200, 16384, 0xAA);
    let mut d = env.device();
    zero_range(&mut d, &env.ino, 1500, 100).unwrap();
    assert_eq!(env.dev.io(), vec![(R, 202, 1024)]);
    let f = env.folio(0);
    assert!(f.is_dirty());
    assert_eq!(bits(&f.dirty_blocks()), "0100");
    let b = env.bytes(0, 1024, 1024);
    assert!(b[..476].iter().all(|x| *x == 0xAA));
    assert!(b[476..576].iter().all(|x| *x == 0));
    assert!(b[576..].iter().all(|x| *x == 0xAA));
}

#[test]
fn t27_mkwrite_maps_and_dirties_inside_eof_and_retries_past_it() {
    let m = ScriptMapper::new(vec![mapped(0, 16384, 200)]);
    let env = Env::new(1024, 2500, m.clone());
    let mut d = env.device();
    for i in 0..2 {
        read_folio(&mut d, &env.ino, env.grab(i)).unwrap();
    }
    env.reap();
    env.dev.clear_log();
    m.calls.lock().unwrap().clear();

    let f0 = env.folio(0);
    let locked = page_mkwrite(&mut d, &env.ino, &f0)
        .unwrap()
        .expect("folio 0 writable");
    assert!(locked.is_locked() && locked.is_dirty());
    assert_eq!(
        m.calls(),
        vec![(0, 2500)],
        "one write-intent mapping over [0, 2500)"
    );
    assert_eq!(bits(&locked.dirty_blocks()), "1110");
    drop(locked);

    let f1 = env.folio(1);
    assert!(
        page_mkwrite(&mut d, &env.ino, &f1).unwrap().is_none(),
        "NOPAGE"
    );
    assert_eq!(m.calls().len(), 1, "no mapping call past EOF");
    assert!(!f1.is_dirty() && !f1.is_locked());
    assert_eq!(env.dev.io(), vec![], "no I/O");
}
