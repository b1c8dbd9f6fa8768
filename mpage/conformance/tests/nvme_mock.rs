//! The scenarios through the NVMe adapter ([`mpage::nvme::NvmeDevice`]) and
//! the driver's queue pairs, on the driver's mock controller: the same
//! checks as on the recording device, plus what the controller received
//! in each command (R6): the FUA and Limited Retry bits of CDW12 and the
//! Dataset Management hints of CDW13, which QEMU's emulated controller
//! neither traces nor passes on (docs/CONFORMANCE.md, R6).
//!
//! Rule ids (R.., X.., K.., T..): docs/MPAGE.md.

use std::sync::Arc;

use mpage::nvme::{DmaFolioMemory, NvmeDevice};
use mpage::{Bio, BioFlags, BioOp, BlockDevice, Segment};
use mpage_conformance::assert_all_pass;
use mpage_conformance::nvme::NvmeRig;
use mpage_conformance::read::t09_only_readahead_commands_carry_the_hint;
use mpage_conformance::writeback::t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after;
use nvme_driver::mock::{CommandRecord, MockConfig, MockController};
use nvme_driver::nvme_spec::{AccessFrequency, DsmHints, NvmOpcode, RwFlags};
use nvme_driver::{Controller, IoHints};
use pagecache::{BlockSize, FolioOrder, Grab, PageCache};

const NS: u32 = 1;

/// A mock controller with one 64 MiB namespace of `lba`-byte LBAs and a
/// 1 MiB MDTS (the scenarios' default transfer limit), serving I/O
/// inside the doorbell writes.
fn mock(lba: u32) -> (MockController, Controller) {
    let blocks = (64 << 20) / u64::from(lba);
    let (mock, ctrl) =
        MockController::new(MockConfig::new(&[(NS, lba, blocks)]).max_transfer(1 << 20))
            .expect("mock controller");
    mock.set_auto(true);
    (mock, ctrl)
}

fn of(mock: &MockController, opcode: NvmOpcode) -> Vec<CommandRecord> {
    mock.commands()
        .into_iter()
        .filter(|c| c.opcode == opcode as u8 && c.nsid == NS)
        .collect()
}

/// T9 on the mock: the demand read arrives with no hint, the readahead
/// read with Limited Retry and access frequency "speculative read"
/// (Linux's `nvme_setup_rw` for REQ_RAHEAD); neither with FUA.
#[test]
fn t09_readahead_reaches_the_controller_as_limited_retry_and_dsm_prefetch() {
    for lba in [512u32, 4096] {
        let (mock, ctrl) = mock(lba);
        let mut rig = NvmeRig::open(&ctrl, NS).expect("rig");
        let before = of(&mock, NvmOpcode::Read).len();
        t09_only_readahead_commands_carry_the_hint(&mut rig).expect("T9");
        let reads: Vec<(u64, u64, RwFlags, u8)> = of(&mock, NvmOpcode::Read)[before..]
            .iter()
            .map(|c| (c.slba * u64::from(lba) / 512, c.blocks, c.rw_flags, c.dsm))
            .collect();
        let per_page = 4096 / u64::from(lba);
        assert_eq!(
            reads,
            vec![
                (800, per_page, RwFlags::empty(), 0),
                (
                    808,
                    per_page,
                    RwFlags::LIMITED_RETRY,
                    DsmHints::PREFETCH.bits()
                ),
            ],
            "at {lba}-byte LBAs"
        );
        let ra = of(&mock, NvmOpcode::Read)[before + 1];
        assert_eq!(
            ra.dsm_hints().map(|h| h.frequency),
            Some(AccessFrequency::Speculative)
        );
    }
}

/// T12 on the mock: writeback writes carry no FUA, no Limited Retry and
/// no DSM hint (R6); durability comes from the Flush.
#[test]
fn t12_writeback_reaches_the_controller_without_fua_or_hints() {
    let (mock, ctrl) = mock(512);
    let mut rig = NvmeRig::open(&ctrl, NS).expect("rig");
    t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after(&mut rig).expect("T12");
    // The engine's one write, and the rig's plain read-back writes (its
    // own queue pair): none carries a hint.
    let writes: Vec<(u64, u64, RwFlags, u8)> = of(&mock, NvmOpcode::Write)
        .iter()
        .map(|c| (c.slba, c.blocks, c.rw_flags, c.dsm))
        .collect();
    let engine = (8000, 64, RwFlags::empty(), 0);
    assert_eq!(
        writes.iter().filter(|w| **w == engine).count(),
        1,
        "{writes:?}"
    );
    assert!(
        writes.iter().all(|w| (w.2, w.3) == (RwFlags::empty(), 0)),
        "{writes:?}"
    );
    assert!(mock.stats().flushes >= 1, "fsync's Flush");
}

/// Every scenario through the adapter on the mock, at both LBA sizes:
/// they pass as on the recording device, and across all of them a
/// Limited Retry read is exactly a prefetch-hinted read, no write carries
/// any hint, and both kinds of read occur.
#[test]
fn every_scenario_passes_on_the_mock_and_only_readahead_reads_carry_hints() {
    for lba in [512u32, 4096] {
        let (mock, ctrl) = mock(lba);
        let mut rig = NvmeRig::open(&ctrl, NS).expect("rig");
        assert_all_pass(&mut rig);
        assert_eq!(mock.violations(), Vec::<String>::new());
        let reads = of(&mock, NvmOpcode::Read);
        for c in &reads {
            let lr = c.rw_flags == RwFlags::LIMITED_RETRY;
            let prefetch = c.dsm == DsmHints::PREFETCH.bits();
            assert!(
                (lr && prefetch) || (c.rw_flags.is_empty() && c.dsm == 0),
                "read {c:?}"
            );
        }
        let hinted = reads.iter().filter(|c| c.dsm != 0).count();
        assert!(
            hinted > 0 && hinted < reads.len(),
            "{hinted} of {}",
            reads.len()
        );
        for c in of(&mock, NvmOpcode::Write) {
            assert_eq!((c.rw_flags, c.dsm), (RwFlags::empty(), 0), "write {c:?}");
        }
    }
}

/// A bio flagged FUA (no engine sets it) arrives with CDW12's FUA bit,
/// and nothing else; `mpage::nvme::hints` is the mapping.
#[test]
fn a_fua_bio_reaches_the_controller_with_the_fua_bit() {
    assert_eq!(
        mpage::nvme::hints(BioOp::Write, BioFlags::FUA | BioFlags::SYNC),
        IoHints::FUA
    );
    assert_eq!(
        mpage::nvme::hints(BioOp::Read, BioFlags::READAHEAD),
        IoHints::READAHEAD
    );
    assert_eq!(
        mpage::nvme::hints(BioOp::Write, BioFlags::READAHEAD),
        IoHints::NONE
    );
    let (mock, ctrl) = mock(512);
    let mut dev = NvmeDevice::new(&ctrl, ctrl.io_qpair().expect("qpair"), NS).expect("device");
    let memory = Arc::new(DmaFolioMemory::new(ctrl.dma_pool().clone()));
    let cache = PageCache::new(memory, 1 << 20).expect("cache");
    let file = cache.add_file(BlockSize::new(4096).expect("block size"));
    let Grab::Created(l) = cache
        .grab(file, 0, FolioOrder::new(0).expect("order"))
        .expect("grab")
    else {
        panic!("a new folio");
    };
    l.write(0, &[0xF0; 4096]).expect("dirty");
    let wb = l.start_writeback().expect("writeback");
    let part = wb.part(0, 4096).expect("part");
    let bio = Bio::new(
        BioOp::Write,
        16,
        512,
        BioFlags::FUA,
        vec![Segment::write(part)],
    )
    .expect("bio");
    let folio = wb.folio().clone();
    // Submission done: writeback ends when the command completes.
    drop(wb);
    dev.submit(bio).expect("submitted");
    mpage::io::wait_until(&mut dev, "FUA write", || !folio.is_writeback()).expect("completed");
    let w = of(&mock, NvmOpcode::Write);
    assert_eq!(
        w.iter()
            .map(|c| (c.slba, c.blocks, c.rw_flags, c.dsm))
            .collect::<Vec<_>>(),
        vec![(16, 8, RwFlags::FUA, 0)]
    );
    assert_eq!(mock.read_disk(NS, 16, 8).expect("disk"), vec![0xF0; 4096]);
}
