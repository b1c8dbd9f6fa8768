//! Bad input gets a one-line error and a non-zero exit, never a panic, and
//! loses nothing: the data written before is intact afterwards.

use vm_tests::{GuestDriver, VmRun, run, run_ok, vm};

/// Runs `cases` (name, shell command) in one guest after writing a
/// pattern, and returns each case's (exit status, combined output).
fn run_cases(
    config: &vm_tests::VmConfig,
    cases: &[(&str, &str)],
) -> (VmRun, Vec<(String, i32, String)>) {
    let mut script = String::new();
    for (name, cmd) in cases {
        script.push_str(&format!("echo '== {name}'; {cmd} 2>&1; echo \"rc=$?\"\n"));
    }
    let run = run(config, &script);
    let out = run.stdout_text();
    let mut results = Vec::new();
    for section in out.split("== ").skip(1) {
        let (name, rest) = section.split_once('\n').unwrap_or((section, ""));
        let rc_line = rest
            .lines()
            .rfind(|l| l.starts_with("rc="))
            .unwrap_or("rc=-1");
        let rc = rc_line[3..].trim().parse().unwrap_or(-1);
        let text = rest
            .lines()
            .filter(|l| !l.starts_with("rc="))
            .collect::<Vec<_>>()
            .join("\n");
        results.push((name.to_string(), rc, text));
    }
    assert_eq!(results.len(), cases.len(), "{}", run.describe());
    (run, results)
}

fn expect(results: &[(String, i32, String)], name: &str, rc: i32, message: &str) {
    let (_, got_rc, text) = results
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no result for {name}"));
    assert!(!text.contains("panicked"), "{name} panicked: {text}");
    assert_eq!(*got_rc, rc, "{name}: exit status, output: {text}");
    assert!(
        text.contains(message),
        "{name}: expected `{message}` in: {text}"
    );
    if rc == 1 {
        assert_eq!(text.lines().count(), 1, "{name}: one line expected: {text}");
        assert!(text.starts_with("nvmectl: "), "{name}: {text}");
    }
}

#[test]
fn bad_input_with_the_device_on_vfio() {
    let config = vm(); // 64 MiB: 131072 blocks of 512 bytes
    let cases = [
        (
            "pattern",
            "dd if=/dev/urandom of=/root/p bs=512 count=8 2>/dev/null && nvmectl write --lba 100 --data /root/p",
        ),
        ("no_such_device", "nvmectl identify 0000:00:09.0"),
        ("not_nvme", "nvmectl identify 0000:00:00.0"),
        ("bad_address", "nvmectl identify 00:zz.0"),
        ("read_past_end", "nvmectl read --lba 131071 --blocks 2"),
        (
            "read_far_past_end",
            "nvmectl read --lba 18446744073709551615 --blocks 1",
        ),
        (
            "write_past_end",
            "head -c 1024 /dev/zero > /tmp/k && nvmectl write --lba 131071 --data /tmp/k",
        ),
        (
            "write_odd_length",
            "head -c 1000 /dev/zero > /tmp/odd && nvmectl write --lba 100 --data /tmp/odd",
        ),
        (
            "write_empty",
            ": > /tmp/empty && nvmectl write --lba 100 --data /tmp/empty",
        ),
        ("read_zero_blocks", "nvmectl read --lba 0 --blocks 0"),
        ("no_namespace", "nvmectl read --nsid 7 --lba 0 --blocks 1"),
        (
            "missing_file",
            "nvmectl write --lba 100 --data /nonexistent",
        ),
        (
            "intact",
            "nvmectl read --lba 100 --blocks 8 --output /tmp/back && cmp /root/p /tmp/back && echo intact",
        ),
    ];
    let (run, results) = run_cases(&config, &cases);
    let _ = run;
    expect(&results, "pattern", 0, "");
    expect(&results, "no_such_device", 1, "no PCI device 0000:00:09.0");
    expect(
        &results,
        "not_nvme",
        1,
        "0000:00:00.0 is not an NVMe controller",
    );
    expect(&results, "bad_address", 2, "is not a PCI address");
    expect(
        &results,
        "read_past_end",
        1,
        "LBA range 131071+2 is past the end of namespace 1 (131072 blocks)",
    );
    expect(
        &results,
        "read_far_past_end",
        1,
        "past the end of namespace 1",
    );
    expect(
        &results,
        "write_past_end",
        1,
        "LBA range 131071+2 is past the end",
    );
    expect(
        &results,
        "write_odd_length",
        1,
        "data length 1000 is not a multiple of the 512-byte LBA size",
    );
    expect(
        &results,
        "write_empty",
        1,
        "data length 0 is not a multiple",
    );
    expect(&results, "read_zero_blocks", 1, "0 blocks");
    expect(
        &results,
        "no_namespace",
        1,
        "namespace 7 is not active on this controller (active: 1)",
    );
    expect(&results, "missing_file", 1, "reading /nonexistent");
    expect(&results, "intact", 0, "intact");
}

#[test]
fn bind_unbind_and_kernel_driver_errors() {
    let mut config = vm();
    config.driver = GuestDriver::Kernel;
    let script = "set -e
        dd if=/dev/urandom of=/root/p bs=512 count=16 2>/dev/null
        echo '== list'; nvmectl list
        echo '== implicit'; nvmectl identify 2>&1 || echo rc=$?
        echo '== explicit'; nvmectl identify 0000:00:03.0 2>&1 || echo rc=$?
        echo '== bind'; nvmectl bind 0000:00:03.0
        nvmectl write --lba 40 --data /root/p
        echo '== unbind'; nvmectl unbind 0000:00:03.0
        i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        dd if=/dev/nvme0n1 bs=512 skip=40 count=16 of=/tmp/k 2>/dev/null
        cmp /root/p /tmp/k && echo '== kernel reads what we wrote'";
    let run = run_ok(&config, script);
    let out = run.stdout_text();
    assert!(out.contains("0000:00:03.0  1b36:0010  nvme "), "{out}");
    assert!(
        out.contains("nvmectl: no NVMe controller is bound to vfio-pci (found 0000:00:03.0); bind one with `nvmectl bind ADDRESS`\nrc=1"),
        "{out}"
    );
    assert!(
        out.contains("nvmectl: 0000:00:03.0 is bound to nvme, not vfio-pci; bind it first: nvmectl bind 0000:00:03.0\nrc=1"),
        "{out}"
    );
    assert!(
        out.contains("0000:00:03.0 bound to vfio-pci (IOMMU group"),
        "{out}"
    );
    assert!(
        out.contains("0000:00:03.0 unbound from vfio-pci, now on nvme"),
        "{out}"
    );
    assert!(out.contains("== kernel reads what we wrote"), "{out}");
}

#[test]
fn no_iommu_is_a_clear_error() {
    let mut config = vm();
    config.driver = GuestDriver::Kernel;
    config.iommu = false;
    let run = run_ok(
        &config,
        "nvmectl list; nvmectl bind 0000:00:03.0 2>&1 || echo rc=$?",
    );
    let out = run.stdout_text();
    assert!(
        out.contains("0000:00:03.0  1b36:0010  nvme        -"),
        "{out}"
    );
    assert!(
        out.contains("nvmectl: 0000:00:03.0 has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) so vfio-pci can be used\nrc=1"),
        "{out}"
    );
}

#[test]
fn runs_as_a_non_root_user_and_says_when_memlock_is_too_small() {
    let config = vm();
    let run = run_ok(
        &config,
        "chown nvme /dev/vfio/[0-9]*
         (ulimit -l 65536; su -s /bin/sh nvme -c 'id -u && guest-check threads --threads 2 --region 1024 --seed 61')
         echo \"== rc=$?\"
         (ulimit -l 64; su -s /bin/sh nvme -c 'nvmectl identify') 2>&1
         echo \"== rc=$?\"",
    );
    let out = run.stdout_text();
    assert!(out.starts_with("1000\n"), "ran as uid 1000: {out}");
    assert!(out.contains("thread 1: queue"), "{out}");
    assert!(out.contains("== rc=0"), "{out}");
    assert!(
        out.contains("cannot pin 2097152 bytes of DMA memory: Cannot allocate memory (os error 12) (RLIMIT_MEMLOCK is 65536 bytes; raise it"),
        "{out}"
    );
    assert!(out.contains("== rc=1"), "{out}");
    vm_tests::check_thread_ranges(run.disk(1).expect("image"), 2, 1024, 512, 61);
}
