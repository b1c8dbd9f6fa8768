//! nvme-bench runs against the emulated controller, checks its data with
//! --verify, and its JSON carries the figures.

use vm_tests::{run_ok, vm};

#[test]
fn bench_runs_verifies_and_reports_json() {
    let config = vm();
    let run = run_ok(
        &config,
        "nvme-bench -w randrw -M 70 -q 16 -j 2 -t 2 --warmup 0 --verify --range-size 16M \
         && nvme-bench -w read -o 64k -q 4 -t 1 --warmup 0 --json --label smoke \
         && nvme-bench -c 0x3 -w randread -q 4 -t 1 -a 0 --json --label pinned \
         && ! nvme-bench -c 0x4 -w randread -t 1 -a 0 2> /tmp/mask.err && cat /tmp/mask.err \
         && nvme-bench -w randrw -q 8 -n 4000 --warmup 0 --verify --range-size 4M --owned-buffers --json --label owned \
         && nvme-bench -w randrw -q 8 -n 4000 --warmup 0 --verify --range-size 4M --buffer-pool 1M --json --label pool",
    );
    let out = run.stdout_text();
    assert!(
        out.contains("Randrw 4096B qd 16 x2 threads, verified"),
        "{out}"
    );
    let total = out
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_default();
    let iops: f64 = total
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(iops > 0.0, "{out}");
    assert!(total.trim_end().ends_with(" 0"), "no errors: {total}");
    let json = out.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    for key in [
        "\"label\":\"smoke\"",
        "\"workload\":\"read\"",
        "\"io_size\":65536",
        "\"queue_depth\":4",
        "\"errors\":0",
        "\"p99_us\":",
        "\"p999_us\":",
        "\"cpu_seconds\":",
    ] {
        assert!(json.contains(key), "{key} missing in {json}");
    }
    assert!(!json.contains("\"ios\":0,"), "{json}");
    // spdk_nvme_perf's -c: one thread per CPU of the mask, pinned; a CPU
    // the guest does not have is a clear error.
    let pinned = out
        .lines()
        .find(|l| l.contains("\"label\":\"pinned\""))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(pinned).unwrap_or_default();
    assert_eq!(v["job"]["threads"], 2, "{pinned}");
    assert_eq!(v["job"]["core_mask"], "0x3", "{pinned}");
    assert_eq!(v["threads"].as_array().map(Vec::len), Some(2), "{pinned}");
    assert!(
        out.contains("pinning thread 0 to CPU 2"),
        "bad mask error in {out}"
    );
    // Both buffer paths verify every read: buffers passed to the driver
    // and back, and 256 registered buffers handed out round robin by 8
    // slots.
    for (label, buffers, pool) in [
        ("owned", "owned", serde_json::Value::Null),
        ("pool", "registered", serde_json::json!(1 << 20)),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("\"label\":\"{label}\"")))
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        assert_eq!(v["job"]["buffers"], buffers, "{line}");
        assert_eq!(v["job"]["buffer_pool"], pool, "{line}");
        assert_eq!(v["job"]["verify"], true, "{line}");
        assert!(v["total"]["ios"].as_u64() >= Some(4000), "{line}");
        assert_eq!(v["total"]["errors"], 0, "{line}");
    }
}

#[test]
fn bench_cache_mode_cold_warm_and_verified_writes() {
    let config = vm();
    let run = run_ok(
        &config,
        "nvme-bench --mode cache -w randread -o 4k -t 1 --warmup 0 --range-size 8M --json --label warm \
         && nvme-bench --mode cache -w read -o 64k -t 1 --warmup 0 --range-size 16M --cold --json --label cold \
         && nvme-bench --mode cache -w randwrite -o 4k -t 1 --warmup 0 --range-size 8M --verify --json --label w \
         && nvme-bench --mode cache -w read -o 128k -n 128 --warmup 0 --range-size 16M --cold --zero-copy --verify --json --label zc \
         && nvme-bench --mode cache -w randread -o 4k -t 1 --warmup 0 --range-size 8M -j 2 --files per-thread --verify --json --label pt",
    );
    let out = run.stdout_text();
    let json = |label: &str| labelled_json(&out, label);
    let device =
        |v: &serde_json::Value, key: &str| v["cache"]["device"][key].as_u64().unwrap_or(u64::MAX);
    for label in ["warm", "cold", "w", "zc", "pt"] {
        let v = json(label);
        assert_eq!(
            v["job"]["mode"].as_str().or(v["mode"].as_str()),
            Some("cache"),
            "{v}"
        );
        assert_eq!(v["total"]["errors"], 0, "{label}: {v}");
        assert!(v["total"]["ios"].as_u64().unwrap_or(0) > 0, "{label}: {v}");
    }
    // Warm: every read is served from the cache; cold: reads reach the device.
    assert_eq!(
        device(&json("warm"), "read_commands"),
        0,
        "{}",
        json("warm")
    );
    let cold = device(&json("cold"), "read_commands");
    assert!(cold > 0 && cold != u64::MAX, "{}", json("cold"));
    // Zero-copy views after readahead: the pattern checked in every block
    // (--verify), read from the device in readahead-sized commands.
    let zc = json("zc");
    assert_eq!(zc["job"]["zero_copy"], true, "{zc}");
    assert_eq!(zc["total"]["reads"], 128, "{zc}");
    let zc_commands = device(&zc, "read_commands");
    assert!(
        zc_commands > 0 && zc_commands < 128,
        "readahead makes fewer, larger commands than calls: {zc}"
    );
    // One file per thread, each over its half of the range: every block
    // read holds the pattern of the LBA its file maps it to (--verify
    // after the prefill), all from the cache.
    let pt = json("pt");
    assert_eq!(pt["cache"]["files"], "per-thread", "{pt}");
    assert_eq!(pt["cache"]["bytes_per_file"], 4 << 20, "{pt}");
    assert_eq!(pt["threads"].as_array().map(Vec::len), Some(2), "{pt}");
    assert_eq!(device(&pt, "read_commands"), 0, "{pt}");
    // Buffered writes reach the device by writeback, and fsync flushes.
    let w = json("w");
    assert!(
        device(&w, "write_commands") > 0 && device(&w, "write_commands") != u64::MAX,
        "{w}"
    );
    assert!(
        device(&w, "flushes") >= 1 && device(&w, "flushes") != u64::MAX,
        "{w}"
    );
}

/// The kernel side of the comparison: fio (carried from the host with its
/// libraries) runs against the kernel's nvme driver in the guest.
#[test]
fn fio_runs_against_the_kernel_driver_in_the_guest() {
    let mut config = vm();
    config.driver = vm_tests::GuestDriver::Kernel;
    config.host_tools = vec!["fio".into()];
    let run = run_ok(
        &config,
        "fio --name=k --filename=/dev/nvme0n1 --rw=randread --bs=4k --iodepth=16 --ioengine=io_uring \
         --direct=1 --runtime=1 --time_based --eta=never --output-format=json",
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{}", run.describe()));
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let iops = job["read"]["iops"].as_f64().unwrap_or(0.0);
    assert!(iops > 0.0, "{job}");
}

/// `host_read_commands` / `host_write_commands` from `nvmectl smart-log`
/// output that follows `marker` in `out`.
fn smart_counter(out: &str, marker: &str, field: &str) -> u64 {
    out.split(marker)
        .nth(1)
        .and_then(|rest| rest.lines().find(|l| l.starts_with(field)))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} after {marker} in {out}"))
}

/// The floor loop (`--floor`) counts commands the device really completed:
/// the controller's own command counters move by the count (plus at most
/// the commands in flight when the loop stopped counting), for reads and
/// writes; its mean latency follows from the depth; what it cannot do is
/// refused with a clear error.
#[test]
fn floor_loop_counts_what_the_device_completed() {
    let config = vm();
    let run = run_ok(
        &config,
        "echo BEFORE && nvmectl smart-log \
         && nvme-bench --floor -w randread -q 8 -n 20000 -a 0 --range-size 32M --json --label fr \
         && echo MIDDLE && nvmectl smart-log \
         && nvme-bench --floor -w write -o 16k -q 4 -n 3000 -a 0 --range-size 32M --json --label fw \
         && echo AFTER && nvmectl smart-log \
         && ! nvme-bench --floor -w randrw -n 10 2> /tmp/mix.err && cat /tmp/mix.err \
         && ! nvme-bench --floor -o 4M -n 10 2> /tmp/big.err && cat /tmp/big.err \
         && ! nvme-bench --floor --verify -n 10 2> /tmp/verify.err && cat /tmp/verify.err",
    );
    let out = run.stdout_text();
    let json = |label: &str| labelled_json(&out, label);
    let (fr, fw) = (json("fr"), json("fw"));
    assert_eq!(fr["job"]["floor"], true, "{fr}");
    let reads = fr["total"]["reads"].as_u64().unwrap_or(0);
    let writes = fw["total"]["writes"].as_u64().unwrap_or(0);
    assert!(reads >= 20_000, "{fr}");
    assert!(writes >= 3_000, "{fw}");
    assert_eq!(fr["total"]["errors"], 0, "{fr}");
    let device_reads = smart_counter(&out, "MIDDLE", "host_read_commands")
        - smart_counter(&out, "BEFORE", "host_read_commands");
    let device_writes = smart_counter(&out, "AFTER", "host_write_commands")
        - smart_counter(&out, "MIDDLE", "host_write_commands");
    assert!(
        (reads..=reads + 8).contains(&device_reads),
        "floor counted {reads} reads, the device completed {device_reads}"
    );
    assert!(
        (writes..=writes + 4).contains(&device_writes),
        "floor counted {writes} writes, the device completed {device_writes}"
    );
    // The queue pair's counters: every command the device completed was
    // posted, made known by a doorbell update and reaped; the batching
    // figures follow from them (queue depth 8: at most 8 entries per
    // update or per poll).
    let path = &fr["threads"][0]["path"];
    let count = |key: &str| {
        path[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no path counter {key} in {fr}"))
    };
    assert_eq!(count("cqes"), device_reads, "{fr}");
    assert_eq!(count("sqes"), device_reads, "{fr}");
    let (sq_rings, cq_rings) = (count("sq_rings"), count("cq_rings"));
    assert!(
        sq_rings * 8 >= device_reads && sq_rings <= device_reads,
        "{fr}"
    );
    assert!(
        cq_rings * 8 >= device_reads && cq_rings <= device_reads,
        "{fr}"
    );
    assert!(count("reaping_polls") * 8 >= device_reads, "{fr}");
    assert!(count("polls") >= count("reaping_polls"), "{fr}");
    assert!(
        count("sq_mmio") <= sq_rings && count("cq_mmio") <= cq_rings,
        "{fr}"
    );
    if fr["job"]["shadow_doorbells"] == false {
        assert_eq!(count("sq_mmio"), sq_rings, "{fr}");
    }
    // Little's law: 8 in flight at the measured rate.
    let iops = fr["total"]["iops"].as_f64().unwrap_or(0.0);
    let mean = fr["total"]["latency"]["mean_us"].as_f64().unwrap_or(0.0);
    assert!(iops > 0.0 && (mean - 8.0 / iops * 1e6).abs() < 1.0, "{fr}");
    for want in [
        "--floor runs read, write, randread or randwrite, not a mix",
        "the floor loop does not split",
        "--floor runs in raw mode, without --verify and --interrupts",
    ] {
        assert!(out.contains(want), "{want:?} missing in {out}");
    }
}

/// The JSON line of nvme-bench's run labelled `label` in `out`.
fn labelled_json(out: &str, label: &str) -> serde_json::Value {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("\"label\":\"{label}\"")))
        .unwrap_or_else(|| panic!("no {label} run in {out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{label}: {e}: {line}"))
}
