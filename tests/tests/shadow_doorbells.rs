//! Shadow doorbells (Doorbell Buffer Config) against QEMU's controller:
//! the EventIdx rule hammered on small full queues, whose ring indices wrap
//! every few commands, with queue ids taken again and again.

use std::time::Duration;

use vm_tests::{run_ok, vm};

/// The numbers on a `shadow stress:` summary line: (stalls, failed).
fn summary(line: &str) -> (u64, u64) {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let number_before = |word: &str| -> u64 {
        let at = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"));
        words[at - 1]
            .parse()
            .unwrap_or_else(|_| panic!("no number before `{word}` in {line:?}"))
    };
    (number_before("stalls"), number_before("failed"))
}

/// Queues of 4, 8 and 16 entries kept full by the full path and the floor
/// loop, four queue pairs in a row on the same queue id: every request and
/// floor run completes, none slower than 3 s. Before a new I/O queue
/// cleared its EventIdx slots, the first doorbell of a queue id taken again
/// went to the shadow page only, and the queue stalled until the 10 s
/// command timeout (on QEMU 7.2 and 10.0 alike; docs/TESTING.md).
#[test]
fn shadow_doorbells_never_stall_small_full_queues() {
    let mut config = vm();
    config.timeout = Duration::from_secs(600);
    let runs: Vec<String> = [4, 8, 16]
        .iter()
        .map(|entries| {
            format!(
                "guest-check --entries {entries} --io-timeout-ms 10000 \
                 shadow-stress --ios 3000 --lives 4 --stall-ms 3000"
            )
        })
        .collect();
    let run = run_ok(
        &config,
        &format!(
            "cat /sys/class/dmi/id/product_version && uname -r && {}",
            runs.join(" && ")
        ),
    );
    let out = run.stdout_text();
    // The numbers go to the test log (run with --nocapture to see them).
    eprintln!("{out}");
    assert!(out.contains("PRP, shadow doorbells"), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("shadow stress:"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        assert_eq!(summary(line), (0, 0), "{out}");
    }
}
