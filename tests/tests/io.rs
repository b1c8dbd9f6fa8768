//! Write then read back through the userspace driver, and check on the
//! host that the raw image holds exactly those bytes, and nothing beside.

use rand::RngCore;
use vm_tests::{VmConfig, image_bytes, run_ok, vm};

/// (first LBA, length in LBAs) of each case, chosen to need one PRP entry,
/// two entries (crossing a 4 KiB page), a PRP list, and splitting by MDTS.
fn cases(lba_size: usize) -> Vec<(u64, usize)> {
    match lba_size {
        512 => vec![(0, 1), (3, 12), (77, 128), (5000, 2049)],
        _ => vec![(0, 1), (3, 2), (77, 16), (1000, 257)],
    }
}

fn roundtrip(mut config: VmConfig, lba_size: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = rand::rng();
    let mut script = String::from("set -e\n");
    let mut expected = Vec::new();
    for (i, (lba, blocks)) in cases(lba_size).into_iter().enumerate() {
        let mut data = vec![0u8; blocks * lba_size];
        rng.fill_bytes(&mut data);
        let host = dir.path().join(format!("case{i}.bin"));
        std::fs::write(&host, &data).expect("write case data");
        let guest = format!("/root/case{i}.bin");
        config.copies.push((host, guest.clone()));
        script.push_str(&format!(
            "nvmectl write --lba {lba} --data {guest}\n\
             nvmectl read --lba {lba} --blocks {blocks} --output /tmp/back{i}\n\
             cmp {guest} /tmp/back{i}\n\
             echo case {i} ok\n"
        ));
        expected.push((lba, data));
    }
    let run = run_ok(&config, &script);
    assert_eq!(run.stdout_text().matches(" ok\n").count(), expected.len());

    let image = run.disk(1).expect("namespace 1 has an image");
    for (lba, data) in &expected {
        let at = lba * lba_size as u64;
        assert!(
            image_bytes(image, at, data.len()) == *data,
            "image differs at LBA {lba} ({} bytes)",
            data.len()
        );
        let after = image_bytes(image, at + data.len() as u64, lba_size);
        assert!(
            after.iter().all(|&b| b == 0),
            "write past LBA {lba}+{}",
            data.len() / lba_size
        );
        if *lba > 0 {
            let before = image_bytes(image, at - lba_size as u64, lba_size);
            assert!(before.iter().all(|&b| b == 0), "write before LBA {lba}");
        }
    }
}

#[test]
fn write_read_roundtrip_512_byte_lbas() {
    roundtrip(vm(), 512);
}

#[test]
fn write_read_roundtrip_4k_lbas_split_by_mdts() {
    let mut config = vm();
    config.nvme_props = vec![
        ("mdts".into(), "3".into()),
        ("logical_block_size".into(), "4096".into()),
    ];
    roundtrip(config, 4096);
}
