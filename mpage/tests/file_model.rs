//! Property test: random sequences of write_at / read_at / read_folios /
//! folio / set_len / fsync / eviction and injected device errors against
//! the plain model of `mpage::model`, on the recording device, in a small
//! cache (so throttling, full-cache writeback and eviction all happen).
//! Every read is checked; after every fsync that succeeds the device
//! holds the model. The fuzz target `file_ops` runs the same harness.

use mpage::model::{FileConfig, FileOp, MAX_POS, run_file_ops};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = FileOp> {
    prop_oneof![
        4 => (0..MAX_POS, 1usize..12_000, any::<u8>())
            .prop_map(|(pos, len, seed)| FileOp::Write { pos, len, seed }),
        3 => (0..MAX_POS + 8192, 0usize..20_000).prop_map(|(pos, len)| FileOp::Read { pos, len }),
        1 => (0..MAX_POS + 8192, 0usize..20_000)
            .prop_map(|(pos, len)| FileOp::ReadViews { pos, len }),
        1 => (0..MAX_POS + 8192).prop_map(FileOp::Folio),
        1 => (0..MAX_POS).prop_map(FileOp::SetLen),
        1 => Just(FileOp::Fsync),
        1 => Just(FileOp::Evict),
        1 => (any::<bool>(), 0..MAX_POS / 512, 1u64..32, 1usize..=3).prop_map(
            |(write, lba, blocks, times)| FileOp::Fault { write, lba, blocks, times }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn file_matches_a_vec_model(
        block_size in prop_oneof![Just(512usize), Just(1024), Just(4096)],
        budget in prop_oneof![Just(48 * 1024u64), Just(1u64 << 20)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let config = FileConfig { block_size, budget };
        if let Err(broken) = run_file_ops(config, &ops) {
            return Err(TestCaseError::fail(broken));
        }
    }
}
