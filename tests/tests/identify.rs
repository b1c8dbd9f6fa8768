//! `nvmectl identify` against QEMU's emulated controller through VFIO.

use vm_tests::{field, image_bytes, run_ok, vm};

#[test]
fn identify_shows_qemu_model_serial_and_namespaces() {
    let mut config = vm();
    config.serial = "VMTEST-SN-4242".into();
    config.namespaces = 2;
    config.disk_size = 32 << 20;
    let run = run_ok(&config, "nvmectl list && nvmectl identify");
    let out = run.stdout_text();

    assert!(
        out.contains("0000:00:03.0  1b36:0010  vfio-pci"),
        "list:\n{out}"
    );
    assert_eq!(field(&out, "vid"), Some("0x1b36"));
    assert_eq!(field(&out, "mn"), Some("QEMU NVMe Ctrl"));
    assert_eq!(field(&out, "sn"), Some("VMTEST-SN-4242"));
    assert_eq!(field(&out, "mdts"), Some("7"));
    assert_eq!(field(&out, "version"), Some("1.4.0"));
    // 32 MiB of 512-byte blocks, on each of the two namespaces.
    let nsze: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("nsze"))
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(nsze, ["0x10000", "0x10000"], "{out}");
    assert!(out.contains("NVMe Identify Namespace 2:"), "{out}");
    assert!(out.contains("lbads:9  rp:0x0 (in use)"), "{out}");
}

#[test]
fn identify_reports_4k_lba_format_and_mdts() {
    let mut config = vm();
    config.nvme_props = vec![
        ("mdts".into(), "3".into()),
        ("logical_block_size".into(), "4096".into()),
    ];
    let run = run_ok(&config, "nvmectl identify");
    let out = run.stdout_text();
    assert_eq!(field(&out, "mdts"), Some("3"));
    assert_eq!(field(&out, "max_xfer"), Some("32768"));
    assert!(out.contains("lbads:12 rp:0x0 (in use)"), "{out}");
    assert_eq!(
        field(&out, "nsze"),
        Some("0x4000"),
        "64 MiB of 4 KiB blocks"
    );
}

/// The JSON document that follows the line `== name` in `out`.
fn json_after(out: &str, name: &str) -> serde_json::Value {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no `== {name}` in:\n{out}"))
        + name.len()
        + 4;
    let rest = &out[start..];
    let mut docs = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    match docs.next() {
        Some(Ok(v)) => v,
        other => panic!("{name}: no JSON ({other:?}) in:\n{rest}"),
    }
}

/// nvme-cli's command names, flags and JSON field names, on a controller
/// bound to vfio-pci: a script written for nvme-cli works with the PCI
/// address in place of /dev/nvme0.
#[test]
fn nvme_cli_commands_flags_and_json() {
    let mut config = vm();
    config.serial = "VMTEST-SN-77".into();
    config.namespaces = 2;
    config.disk_size = 32 << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    // 16 blocks of 512 bytes, none of them zero.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
    let host = dir.path().join("d.bin");
    std::fs::write(&host, &data).expect("write data");
    config.copies.push((host, "/root/d".into()));
    let run = run_ok(
        &config,
        "set -e\n\
         echo '== id-ctrl'; nvmectl id-ctrl -o json\n\
         echo '== id-ns'; nvmectl id-ns -n 2 -o json\n\
         echo '== list'; nvmectl list -o json\n\
         nvmectl write -s 64 -c 15 -d /root/d\n\
         nvmectl read -s 64 -c 15 | cmp - /root/d && echo raw-read-same\n\
         nvmectl read -n 1 -s 64 -z 8192 | cmp - /root/d && echo data-size-read-same\n\
         echo \"sums $(sha256sum < /root/d | cut -d' ' -f1) $(nvmectl read -s 64 -c 15 | sha256sum | cut -d' ' -f1)\"\n\
         nvmectl read -s 64 -c 0 -x | head -n 1\n\
         head -c 4096 /root/d | nvmectl write -n 2 -s 8 -z 4096\n\
         nvmectl dsm -s 64,72 -b 4,4 -d\n\
         nvmectl write-zeroes -s 70 -c 0\n\
         nvmectl flush -n 1\n\
         echo '== smart-log'; nvmectl smart-log -o json\n\
         echo '== error-log'; nvmectl error-log -o json\n\
         echo '== end'",
    );
    let out = run.stdout_text();
    let id = json_after(&out, "id-ctrl");
    assert_eq!(id["vid"], 0x1b36, "{id}");
    assert_eq!(id["sn"], "VMTEST-SN-77", "{id}");
    assert_eq!(id["mn"], "QEMU NVMe Ctrl", "{id}");
    assert_eq!(id["mdts"], 7, "{id}");
    assert_eq!(id["nn"], 256, "{id}");
    let ns = json_after(&out, "id-ns");
    assert_eq!(ns["nsid"], 2, "{ns}");
    assert_eq!(ns["nsze"], 65536, "32 MiB of 512-byte blocks: {ns}");
    let in_use = ns["flbas"].as_u64().expect("flbas") as usize & 0xf;
    assert_eq!(ns["lbafs"][in_use]["ds"], 9, "{ns}");
    let list = json_after(&out, "list");
    let devices = list["Devices"].as_array().expect("Devices");
    let namespaces: Vec<_> = devices.iter().map(|d| d["NameSpace"].clone()).collect();
    assert_eq!(namespaces, [1, 2], "{list}");
    for d in devices {
        assert_eq!(d["DevicePath"], "0000:00:03.0", "{list}");
        assert_eq!(d["SerialNumber"], "VMTEST-SN-77", "{list}");
        assert_eq!(d["SectorSize"], 512, "{list}");
        assert_eq!(d["MaximumLBA"], 65536, "{list}");
        assert_eq!(d["PhysicalSize"], 32 << 20, "{list}");
    }
    assert!(out.contains("raw-read-same\n"), "{out}");
    assert!(out.contains("data-size-read-same\n"), "{out}");
    let sums: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("sums "))
        .expect("sums line")
        .split(' ')
        .collect();
    assert_eq!(sums.len(), 2, "{out}");
    assert_eq!(sums[0], sums[1], "read | sha256sum hashes the data itself");
    assert!(
        out.contains("000000008000: 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10"),
        "the dump stays behind -x: {out}"
    );
    let smart = json_after(&out, "smart-log");
    assert!(
        smart["host_write_commands"].as_u64().expect("writes") >= 2,
        "{smart}"
    );
    assert!(
        smart["temperature"].as_u64().expect("kelvin") > 273,
        "{smart}"
    );
    assert_eq!(smart["media_errors"], 0, "{smart}");
    let errors = json_after(&out, "error-log");
    assert_eq!(errors["errors"], serde_json::json!([]), "{errors}");

    // The host images: namespace 1 holds the data with the two
    // deallocated ranges and the zeroed block, namespace 2 the stdin write.
    let image = run.disk(1).expect("namespace 1 image");
    let got = image_bytes(image, 64 * 512, data.len());
    for (b, (block, want)) in got.chunks(512).zip(data.chunks(512)).enumerate() {
        let lba = 64 + b;
        if (64..68).contains(&lba) || (72..76).contains(&lba) || lba == 70 {
            assert!(
                block.iter().all(|&x| x == 0),
                "LBA {lba} should read zeroes"
            );
        } else {
            assert_eq!(block, want, "LBA {lba}");
        }
    }
    let image2 = run.disk(2).expect("namespace 2 image");
    assert_eq!(
        image_bytes(image2, 8 * 512, 4096),
        data[..4096],
        "namespace 2"
    );
}
