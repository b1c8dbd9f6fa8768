//! nvme-bench runs against the emulated controller, checks its data with
//! --verify, and its JSON carries the figures.

use vm_tests::{run_ok, vm};

#[test]
fn bench_runs_verifies_and_reports_json() {
    let config = vm();
    let run = run_ok(
        &config,
        "nvme-bench -w randrw -M 70 -q 16 -j 2 -t 2 --warmup 0 --verify --range-size 16M \
         && nvme-bench -w read -o 64k -q 4 -t 1 --warmup 0 --json --label smoke",
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
}
