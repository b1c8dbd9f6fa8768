//! A data pattern the guest writes and the host can recompute: each 8-byte
//! word is a hash of (seed, LBA, word index), so any block read back, in
//! the guest or from the raw image, can be checked on its own.

/// splitmix64: a small, good mixing function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` (whole blocks of `lba_size` bytes) with the pattern of the
/// blocks starting at `lba`.
pub fn fill(seed: u64, lba: u64, lba_size: usize, out: &mut [u8]) {
    for (b, block) in out.chunks_mut(lba_size).enumerate() {
        let base = mix(seed ^ mix(lba + b as u64));
        for (w, word) in block.chunks_mut(8).enumerate() {
            let v = mix(base ^ w as u64).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

/// The first block in `data` (starting at `lba`) that does not hold the
/// pattern, if any.
pub fn first_mismatch(seed: u64, lba: u64, lba_size: usize, data: &[u8]) -> Option<u64> {
    let mut want = vec![0u8; lba_size];
    data.chunks(lba_size).enumerate().find_map(|(b, block)| {
        let l = lba + b as u64;
        fill(seed, l, lba_size, &mut want);
        (block != &want[..block.len()]).then_some(l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_and_check_alone() {
        let mut a = vec![0u8; 1024];
        fill(7, 10, 512, &mut a);
        assert_ne!(a[..512], a[512..], "two blocks differ");
        let mut b = vec![0u8; 512];
        fill(7, 11, 512, &mut b);
        assert_eq!(
            a[512..],
            b[..],
            "a block's pattern does not depend on its neighbours"
        );
        assert_eq!(first_mismatch(7, 10, 512, &a), None);
        a[700] ^= 1;
        assert_eq!(first_mismatch(7, 10, 512, &a), Some(11));
        assert_eq!(first_mismatch(8, 10, 512, &b), Some(10), "the seed matters");
    }
}
