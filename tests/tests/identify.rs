//! `nvmectl identify` against QEMU's emulated controller through VFIO.

use vm_tests::{field, run_ok, vm};

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
