//! Shadow doorbells (Doorbell Buffer Config) against QEMU's controller:
//! the EventIdx rule hammered on small queues, whose ring indices wrap every
//! few commands, with the driver's MMIO kick off and on.

use std::time::Duration;

use vm_tests::{run_ok, vm};

/// The numbers on a `shadow stress:` summary line: (stalls, failed, kicks).
fn summary(line: &str) -> (u64, u64, u64) {
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no `{word}` in {line:?}"));
        words[at - 1]
            .parse()
            .unwrap_or_else(|_| panic!("no number before `{word}` in {line:?}"))
    };
    (
        number_before("stalls"),
        number_before("failed"),
        number_before("kicks"),
    )
}

#[test]
fn shadow_doorbells_never_stall_small_full_queues() {
    let mut config = vm();
    config.timeout = Duration::from_secs(600);
    let mut script = Vec::new();
    for entries in [4, 8, 16] {
        for kick in ["--no-kick", ""] {
            script.push(format!(
                "echo \"== entries {entries} {kick}\" && guest-check --entries {entries} {kick} \
                 --io-timeout-ms 10000 shadow-stress --ios 3000 --lives 4 --stall-ms 3000"
            ));
        }
    }
    let run = run_ok(
        &config,
        &format!(
            "cat /sys/class/dmi/id/product_version && uname -r && {}",
            script.join(" && ")
        ),
    );
    let out = run.stdout_text();
    eprintln!("{out}");
    assert!(out.contains("PRP, shadow doorbells"), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("shadow stress:"))
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    for line in lines {
        let (stalls, failed, _kicks) = summary(line);
        assert_eq!((stalls, failed), (0, 0), "{out}");
    }
}
