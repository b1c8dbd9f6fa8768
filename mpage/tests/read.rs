//! Read-path scenarios T1–T11, T18, T19, T28 against the recording device.

mod common;

use std::sync::Arc;

use common::*;
use mpage::{
    BioFlags, BioOp, Extent, ExtentFlags, ExtentKind, ExtentMapper, Fault, Geometry, io,
    read_folio, readahead, recording::Order,
};
use pagecache::Errno;

const R: BioOp = BioOp::Read;

fn ra(env: &Env, pages: std::ops::Range<u64>) -> mpage::ReadaheadReport {
    let mut d = env.device();
    let rep = readahead(&mut d, &env.ino, pages, None).unwrap();
    env.reap();
    rep
}

fn demand(env: &Env, index: u64) {
    let mut d = env.device();
    let l = env.grab(index);
    read_folio(&mut d, &env.ino, l).unwrap();
    env.reap();
}

#[test]
fn t01_one_extent_readahead_is_one_command() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 16, 1000);
    let env = Env::new(4096, 64 * KIB as u64, m.clone());
    env.fill_disk(8000, 64 * KIB, 0x11);
    let rep = ra(&env, 0..16);
    assert_eq!(rep.started, 16);
    assert_eq!(m.calls(), 1, "GB=1");
    assert_eq!(env.dev.io(), vec![(R, 8000, 65536)]);
    let cmd = &env.dev.commands()[0];
    assert_eq!(cmd.flags, BioFlags::READAHEAD);
    assert_eq!(cmd.segments, 16);
    for i in 0..16 {
        let f = env.folio(i);
        assert!(f.is_uptodate() && !f.is_locked());
        assert_eq!(env.bytes(i, 0, 4096), vec![0x11; 4096]);
    }
}

#[test]
fn t01b_mdts_splits_into_max_transfer_commands() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 16, 1000);
    let g = Geometry::new(512, 1 << 16, 16 * KIB as u32).unwrap();
    let env = Env::with_geometry(4096, 64 * KIB as u64, m, g);
    ra(&env, 0..16);
    assert_eq!(
        env.dev.io(),
        vec![
            (R, 8000, 16384),
            (R, 8032, 16384),
            (R, 8064, 16384),
            (R, 8096, 16384)
        ]
    );
    assert!((0..16).all(|i| env.folio(i).is_uptodate()));
}

#[test]
fn t02_discontiguous_extents_submit_the_open_run_first() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 8, 1000);
    m.insert(8, 8, 2000);
    let env = Env::new(4096, 64 * KIB as u64, m.clone());
    ra(&env, 0..16);
    assert_eq!(m.calls(), 2);
    assert_eq!(env.dev.io(), vec![(R, 8000, 32768), (R, 16000, 32768)]);
}

#[test]
fn t03_hole_folio_is_zeroed_and_the_run_skips_it() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 1, 500);
    m.insert(2, 1, 501);
    let env = Env::new(4096, 12 * KIB as u64, m.clone());
    env.fill_disk(4000, 8192, 0x22);
    ra(&env, 0..3);
    assert_eq!(m.calls(), 3, "GB=3");
    assert_eq!(env.dev.io(), vec![(R, 4000, 8192)]);
    let cmd = &env.dev.commands()[0];
    assert_eq!(cmd.segments, 2);
    assert_eq!(cmd.dma[0].0, env.folio(0).iova());
    assert_eq!(
        cmd.dma.last().unwrap().0 + cmd.dma.last().unwrap().1 as u64,
        env.folio(2).iova() + 4096
    );
    assert!(env.folio(1).is_uptodate());
    assert_eq!(env.bytes(1, 0, 4096), vec![0; 4096]);
    assert_eq!(env.bytes(2, 0, 4096), vec![0x22; 4096]);
}

#[test]
fn t04_discontiguous_blocks_in_a_folio_read_per_extent() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 2, 100);
    m.insert(2, 2, 300);
    let env = Env::new(1024, 4096, m);
    demand(&env, 0);
    // The coalesced form of the per-block fallback (§5 item 2).
    assert_eq!(env.dev.io(), vec![(R, 200, 2048), (R, 600, 2048)]);
    assert!(env.folio(0).is_uptodate());
}

#[test]
fn t05_tail_hole_ends_the_command() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 3, 100);
    m.insert(4, 4, 103);
    let env = Env::new(1024, 16 * KIB as u64, m);
    env.fill_disk(200, 8192, 0x33);
    ra(&env, 0..2);
    assert_eq!(env.dev.io(), vec![(R, 200, 3072), (R, 206, 4096)]);
    assert_eq!(env.bytes(0, 3072, 1024), vec![0; 1024]);
    assert_eq!(env.bytes(0, 0, 3072), vec![0x33; 3072]);
}

#[test]
fn t06_hole_then_mapped_zeroes_and_reads_the_rest() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(1, 3, 101);
    let env = Env::new(1024, 4096, m);
    env.fill_disk(200, 4096, 0x44);
    demand(&env, 0);
    assert_eq!(env.dev.io(), vec![(R, 202, 3072)]);
    assert_eq!(env.bytes(0, 0, 1024), vec![0; 1024]);
    assert_eq!(env.bytes(0, 1024, 3072), vec![0x44; 3072]);
    assert!(env.folio(0).is_uptodate());
}

#[test]
fn t07_eof_block_is_read_whole_and_later_blocks_zeroed() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 4, 100);
    let env = Env::new(1024, 2500, m.clone());
    env.fill_disk(204, 1024, 0xAA);
    env.fill_disk(206, 1024, 0xBB);
    demand(&env, 0);
    assert_eq!(m.calls(), 1);
    assert_eq!(env.dev.io(), vec![(R, 200, 3072)]);
    assert_eq!(
        env.bytes(0, 2500, 572),
        vec![0xAA; 572],
        "not zeroed on read"
    );
    assert_eq!(env.bytes(0, 3072, 1024), vec![0; 1024]);
}

#[test]
fn t07_window_request_is_capped_at_eof() {
    let m = ScriptMapper::new(vec![mapped(0, 4096, 200)]);
    let env = Env::new(1024, 2500, m.clone());
    demand(&env, 0);
    assert_eq!(m.calls(), vec![(0, 3072)], "asks for 3 blocks");
}

#[test]
fn t08_boundary_extent_submits_the_run() {
    let mut b = mapped(0, 48 * KIB as u64, 800);
    b.flags = ExtentFlags::BOUNDARY;
    let m = ScriptMapper::new(vec![b, mapped(48 * KIB as u64, 16 * KIB as u64, 896)]);
    let env = Env::new(4096, 64 * KIB as u64, m);
    ra(&env, 0..16);
    assert_eq!(env.dev.io(), vec![(R, 800, 48 * KIB), (R, 896, 16 * KIB)]);

    let m = ScriptMapper::new(vec![
        mapped(0, 48 * KIB as u64, 800),
        mapped(48 * KIB as u64, 16 * KIB as u64, 896),
    ]);
    let env = Env::new(4096, 64 * KIB as u64, m);
    ra(&env, 0..16);
    assert_eq!(
        env.dev.io(),
        vec![(R, 800, 64 * KIB)],
        "control: no boundary"
    );
}

#[test]
fn t09_only_readahead_commands_carry_the_hint() {
    let m = ScriptMapper::new(vec![mapped(0, 64 * KIB as u64, 800)]);
    let env = Env::new(4096, 64 * KIB as u64, m);
    demand(&env, 0);
    ra(&env, 1..2);
    let c = env.dev.commands();
    assert_eq!(c[0].flags, BioFlags::empty());
    assert_eq!(c[1].flags, BioFlags::READAHEAD);
}

#[test]
fn t10_mapping_past_the_namespace_fails_without_io() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 1, 124);
    m.insert(1, 1, 125);
    let g = Geometry::new(512, 1000, 1 << 20).unwrap();
    let env = Env::with_geometry(4096, 8192, m, g);
    ra(&env, 0..2);
    assert_eq!(env.dev.io(), vec![(R, 992, 4096)]);
    assert!(env.folio(0).is_uptodate());
    let f1 = env.folio(1);
    assert!(!f1.is_uptodate() && !f1.is_locked());
    assert_eq!(f1.error(), Some(Errno::Io));
}

#[test]
fn t11_failed_readahead_then_demand_read() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 16, 1000);
    let env = Env::new(4096, 64 * KIB as u64, m);
    env.fill_disk(8000, 4096, 0x5A);
    env.dev
        .inject(Fault::status(R, 8000..8128, mpage::device::status::UNRECOVERED_READ).times(1));
    ra(&env, 0..16);
    for i in 0..16 {
        let f = env.folio(i);
        assert!(!f.is_uptodate() && !f.is_locked());
        assert_eq!(f.error(), Some(Errno::NoData));
    }
    assert_eq!(
        env.cache.wb_err(env.ino.file).unwrap().last(),
        None,
        "no mapping error"
    );
    demand(&env, 0);
    let c = env.dev.commands();
    assert_eq!(
        (c[1].op, c[1].lba, c[1].bytes(), c[1].flags),
        (R, 8000, 4096, BioFlags::empty())
    );
    assert!(env.folio(0).is_uptodate());
    assert_eq!(env.bytes(0, 0, 4096), vec![0x5A; 4096]);
}

#[test]
fn t18_partially_uptodate_folio_reads_only_missing_blocks() {
    let m = ScriptMapper::new(vec![mapped(0, 4096, 200)]);
    let env = Env::new(1024, 16 * KIB as u64, m);
    env.fill_disk(200, 4096, 0x77);
    let l = env.grab(0);
    l.write(1024, &[0x99; 2048]).unwrap();
    let mut d = env.device();
    env.dev.set_order(Order::Held);
    read_folio(&mut d, &env.ino, l).unwrap();
    assert_eq!(env.dev.io(), vec![(R, 200, 1024), (R, 206, 1024)]);
    let c = env.dev.commands();
    let f = env.folio(0);
    assert_eq!(c[0].dma, vec![(f.iova(), 1024)]);
    assert_eq!(c[1].dma, vec![(f.iova() + 3072, 1024)]);
    assert!(c.iter().all(|c| c.flags.is_empty()));
    assert!(f.is_locked(), "locked until both complete");
    env.dev.release();
    env.reap();
    assert!(f.is_uptodate() && !f.is_locked());
    assert_eq!(env.bytes(0, 1024, 2048), vec![0x99; 2048]);
    assert_eq!(env.bytes(0, 0, 1024), vec![0x77; 1024]);
}

#[test]
fn t19_only_mapped_extents_are_read() {
    let k4 = 4 * KIB as u64;
    let mut new = mapped(3 * k4, k4, 816);
    new.flags = ExtentFlags::NEW;
    let unwritten = Extent {
        offset: k4,
        len: k4,
        kind: ExtentKind::Unwritten { lba: 808 },
        flags: ExtentFlags::empty(),
    };
    let m = ScriptMapper::new(vec![mapped(0, k4, 800), unwritten, new]);
    let env = Env::new(4096, 20 * KIB as u64, m);
    env.fill_disk(800, 24 * KIB, 0xAA);
    ra(&env, 0..5);
    assert_eq!(env.dev.io(), vec![(R, 800, 4096)]);
    for i in 1..5 {
        assert!(env.folio(i).is_uptodate());
        assert_eq!(env.bytes(i, 0, 4096), vec![0; 4096]);
    }
}

#[test]
fn t28_sub_page_segments_never_share_a_command() {
    let m = Arc::new(ExtentMapper::new(1024, 512, 0..0));
    m.insert(0, 1, 100);
    m.insert(1, 2, 500);
    m.insert(3, 1, 101);
    let env = Env::new(1024, 4096, m);
    let l = env.grab(0);
    l.write(1024, &[1; 2048]).unwrap();
    let mut d = env.device();
    read_folio(&mut d, &env.ino, l).unwrap();
    env.reap();
    assert_eq!(env.dev.io(), vec![(R, 200, 1024), (R, 202, 1024)]);
    assert!(env.folio(0).is_uptodate());
}

#[test]
fn out_of_order_completion_still_completes_every_folio() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    m.insert(0, 8, 1000);
    m.insert(8, 8, 3000);
    let env = Env::new(4096, 64 * KIB as u64, m);
    env.dev.set_order(Order::Reversed);
    ra(&env, 0..16);
    assert!((0..16).all(|i| env.folio(i).is_uptodate()));
}

#[test]
fn demand_read_waits_through_io_helpers() {
    let m = Arc::new(ExtentMapper::new(4096, 512, 0..0));
    let env = Env::new(4096, 8192, m);
    let l = env.grab(0);
    let f = l.folio();
    let mut d = env.device();
    read_folio(&mut d, &env.ino, l).unwrap();
    io::wait_until(&mut d, "read", || !f.is_locked()).unwrap();
    assert!(f.is_uptodate());
    assert!(env.dev.io().is_empty(), "a hole needs no I/O");
}
