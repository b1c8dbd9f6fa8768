//! Property test: random sequences of write_at / read_at / set_len /
//! fsync / eviction against a plain `Vec<u8>` model, on the recording
//! device, in a small cache (so throttling, full-cache writeback and
//! eviction all happen). Every read is checked; after a final fsync the
//! device holds the model (identity-mapped file).

use std::sync::Arc;

use mpage::{BlockDevice, File, Geometry, IdentityMapper, RecordingDevice};
use pagecache::{BlockSize, DirtyLimits, PageCache, VecMemory};
use proptest::prelude::*;

const MAX_POS: u64 = 96 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, len: usize, seed: u8 },
    Read { pos: u64, len: usize },
    SetLen(u64),
    Fsync,
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MAX_POS, 1usize..12_000, any::<u8>())
            .prop_map(|(pos, len, seed)| Op::Write { pos, len, seed }),
        4 => (0..MAX_POS + 8192, 0usize..20_000).prop_map(|(pos, len)| Op::Read { pos, len }),
        1 => (0..MAX_POS).prop_map(Op::SetLen),
        1 => Just(Op::Fsync),
        1 => Just(Op::Evict),
    ]
}

fn data(seed: u8, pos: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ ((pos as usize + i) % 253) as u8)
        .collect()
}

fn run(bs: usize, budget: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let g = Geometry::new(512, 2 * MAX_POS / 512 + 64, 64 * 1024).unwrap();
    let dev = RecordingDevice::new(g).unwrap();
    // Old data everywhere on the device: nothing of it may show through.
    dev.write_disk(0, &vec![0xA5; g.capacity_bytes() as usize]);
    let limits = DirtyLimits::from_ratios(budget, 25, 50).unwrap();
    let cache = Arc::new(PageCache::with_limits(
        Arc::new(VecMemory::new()),
        budget,
        limits,
    ));
    let mapper = Arc::new(IdentityMapper::namespace(&g));
    let file = File::open(cache.clone(), mapper, BlockSize::new(bs).unwrap(), 0).unwrap();
    let mut d = dev.clone();
    let mut model: Vec<u8> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { pos, len, seed } => {
                let buf = data(seed, pos, len);
                let n = file.write_at(&mut d, pos, &buf).unwrap();
                prop_assert_eq!(n, len);
                let end = pos as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[pos as usize..end].copy_from_slice(&buf);
            }
            Op::Read { pos, len } => {
                let mut buf = vec![0x5A; len];
                let n = file.read_at(&mut d, pos, &mut buf).unwrap();
                let want: &[u8] = model
                    .get(pos as usize..)
                    .map_or(&[], |m| &m[..len.min(m.len())]);
                prop_assert_eq!(n, want.len(), "step {} {:?}", step, op);
                prop_assert!(buf[..n] == *want, "step {} {:?}: data differs", step, op);
            }
            Op::SetLen(len) => {
                file.set_len(&mut d, len).unwrap();
                model.resize(len as usize, 0);
            }
            Op::Fsync => file.fsync(&mut d).unwrap(),
            Op::Evict => {
                cache.shrink(u64::MAX);
            }
        }
        prop_assert_eq!(file.size(), model.len() as u64);
        prop_assert!(
            cache.used() < budget + 4096,
            "budget exceeded at step {}",
            step
        );
        prop_assert_eq!(d.in_flight(), 0);
    }
    file.fsync(&mut d).unwrap();
    prop_assert!(
        dev.read_disk(0, model.len()) == model,
        "device differs from the model"
    );
    // And a cold read of the whole file agrees.
    cache.shrink(u64::MAX);
    let mut all = vec![0; model.len() + 10];
    let n = file.read_at(&mut d, 0, &mut all).unwrap();
    prop_assert_eq!(n, model.len());
    prop_assert!(all[..n] == model[..]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn file_matches_a_vec_model(
        bs in prop_oneof![Just(512usize), Just(1024), Just(4096)],
        budget in prop_oneof![Just(48 * 1024u64), Just(1u64 << 20)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(bs, budget, &ops)?;
    }
}
