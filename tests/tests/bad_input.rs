//! Bad input gets a one-line error and a non-zero exit, never a panic, and
//! loses nothing: the data written before is intact afterwards.

use vm_tests::{GuestDriver, VmRun, run, run_ok, vm};

/// Runs `cases` (name, shell command) in one guest after writing a
/// pattern, and returns each case's (exit status, combined output).
fn run_cases(
    config: &vm_tests::VmConfig,
    cases: &[(&str, &str)],
) -> (VmRun, Vec<(String, i32, String)>) {
    // Plain messages: clap colours its errors on the guest's console.
    let mut script = String::from("export NO_COLOR=1\n");
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
        assert!(
            text.starts_with("nvmectl: ") || text.starts_with("nvme-bench: "),
            "{name}: {text}"
        );
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
        ("read_nsid_0", "nvmectl read --nsid 0 --lba 0 --blocks 1"),
        (
            "read_nsid_broadcast",
            "nvmectl read --nsid 4294967295 --lba 0 --blocks 1",
        ),
        (
            "write_nsid_0",
            "head -c 512 /dev/zero > /tmp/z && nvmectl write --nsid 0 --lba 100 --data /tmp/z",
        ),
        (
            "write_nsid_broadcast",
            "nvmectl write --nsid 4294967295 --lba 100 --data /tmp/z",
        ),
        (
            "write_inactive_nsid",
            "nvmectl write --nsid 7 --lba 100 --data /tmp/z",
        ),
        (
            "write_lba_u64_max",
            "nvmectl write --lba 18446744073709551615 --data /tmp/z",
        ),
        (
            "read_blocks_u64_max",
            "nvmectl read --lba 100 --blocks 18446744073709551615",
        ),
        (
            "write_zeroes_past_end",
            "nvmectl write-zeroes --lba 131071 --blocks 2",
        ),
        (
            "deallocate_past_end",
            "nvmectl deallocate --lba 131071 --blocks 2",
        ),
        ("get_feature_invalid_fid", "nvmectl get-feature -f 0xee"),
        ("set_feature_apst", "nvmectl set-feature -f 0x0c -v 1"),
        ("feature_id_too_big", "nvmectl get-feature -f 300"),
        ("lba_not_a_number", "nvmectl read --lba abc --blocks 1"),
        ("bench_odd_io_size", "nvme-bench -o 1000 -t 1"),
        ("bench_zero_io_size", "nvme-bench -o 0 -t 1"),
        ("bench_qd_0", "nvme-bench -q 0 -t 1"),
        ("bench_threads_0", "nvme-bench --threads 0 -t 1"),
        ("bench_range_too_big", "nvme-bench --range-size 1G -t 1"),
        (
            "bench_range_start_past_end",
            "nvme-bench --range-start 200000 -t 1",
        ),
        (
            "bench_cache_size_0",
            "nvme-bench --mode cache --cache-size 0 -t 1",
        ),
        (
            "bench_cache_too_small",
            "nvme-bench --mode cache --cache-size 4096 -t 1",
        ),
        ("bench_cold_raw", "nvme-bench --cold -t 1"),
        ("bench_unknown_workload", "nvme-bench -w bogus -t 1"),
        ("bench_mix_over_100", "nvme-bench -w randrw -M 150 -t 1"),
        ("bench_inactive_nsid", "nvme-bench --nsid 7 -t 1"),
        ("bench_no_such_device", "nvme-bench 0000:00:09.0 -t 1"),
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
    for name in ["read_nsid_0", "write_nsid_0"] {
        expect(
            &results,
            name,
            1,
            "namespace 0 is not active on this controller (active: 1)",
        );
    }
    for name in ["read_nsid_broadcast", "write_nsid_broadcast"] {
        expect(
            &results,
            name,
            1,
            "namespace 4294967295 is not active on this controller (active: 1)",
        );
    }
    expect(
        &results,
        "write_inactive_nsid",
        1,
        "namespace 7 is not active on this controller (active: 1)",
    );
    expect(
        &results,
        "write_lba_u64_max",
        1,
        "LBA range 18446744073709551615+1 is past the end of namespace 1 (131072 blocks)",
    );
    expect(
        &results,
        "read_blocks_u64_max",
        1,
        "LBA range 100+18446744073709551615 is past the end of namespace 1 (131072 blocks)",
    );
    for name in ["write_zeroes_past_end", "deallocate_past_end"] {
        expect(
            &results,
            name,
            1,
            "LBA range 131071+2 is past the end of namespace 1 (131072 blocks)",
        );
    }
    expect(
        &results,
        "get_feature_invalid_fid",
        1,
        "Get Features 0xee (vendor specific) failed: Invalid Field in Command (sct 0x0, sc 0x02, dnr)",
    );
    expect(
        &results,
        "set_feature_apst",
        1,
        "Set Features 0x0c (Autonomous Power State Transition) failed: Invalid Field in Command (sct 0x0, sc 0x02, dnr)",
    );
    expect(
        &results,
        "feature_id_too_big",
        2,
        "invalid value '300' for '--feature-id <FEATURE_ID>': `300` is not a number from 0 to 255",
    );
    expect(
        &results,
        "lba_not_a_number",
        2,
        "invalid value 'abc' for '--start-block <SLBA>': invalid digit found in string",
    );
    expect(
        &results,
        "bench_odd_io_size",
        1,
        "nvme-bench: I/O size 1000 is not a multiple of the 512-byte LBA size",
    );
    expect(
        &results,
        "bench_zero_io_size",
        2,
        "invalid value '0' for '--io-size <IO_SIZE>': bad size: 0",
    );
    for name in ["bench_qd_0", "bench_threads_0"] {
        expect(
            &results,
            name,
            1,
            "nvme-bench: queue depth and threads must be at least 1",
        );
    }
    expect(
        &results,
        "bench_range_too_big",
        1,
        "nvme-bench: LBA range 0+2097152 is past the end of namespace 1 (131072 blocks)",
    );
    expect(
        &results,
        "bench_range_start_past_end",
        1,
        "nvme-bench: --range-start 200000 is past the end of namespace 1 (131072 blocks)",
    );
    expect(
        &results,
        "bench_cache_size_0",
        2,
        "invalid value '0' for '--cache-size <CACHE_SIZE>': bad size: 0",
    );
    expect(
        &results,
        "bench_cache_too_small",
        1,
        "nvme-bench: a warm cache (the default for read workloads): the range (67108864 bytes) does not fit the 4096-byte page cache; give a smaller --range-size, a larger --cache-size, or --cold",
    );
    expect(
        &results,
        "bench_cold_raw",
        1,
        "nvme-bench: --cold, --warm, --readahead, --zero-copy and --files need --mode cache",
    );
    expect(
        &results,
        "bench_unknown_workload",
        2,
        "invalid value 'bogus' for '--workload <WORKLOAD>'",
    );
    expect(
        &results,
        "bench_mix_over_100",
        2,
        "invalid value '150' for '--rwmixread <MIX>': 150 is not in 0..=100",
    );
    expect(
        &results,
        "bench_inactive_nsid",
        1,
        "nvme-bench: namespace 7 is not active on this controller (active: 1)",
    );
    expect(
        &results,
        "bench_no_such_device",
        1,
        "nvme-bench: no PCI device 0000:00:09.0 (see `nvmectl list`)",
    );
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
