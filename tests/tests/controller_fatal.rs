//! A fatal controller: the driver's fault-injection hook (the
//! `fault-injection` feature, compiled into the guest-fault binary only)
//! takes the IOMMU mapping of an I/O SQ ring away while writes are in
//! flight on three queue pairs. QEMU's fetch of the next entry fails in the
//! emulated Intel IOMMU and its controller sets CSTS.CFS
//! (`nvme_process_sq`); the driver resets the controller, maps the ring
//! again, creates every queue again and resubmits; every write is answered
//! and on the disk.

use vm_tests::{check_thread_ranges, run_ok, vm};

/// The number after `label` in `text` (`label 12.5 ms` gives 12.5).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn an_unmapped_sq_ring_makes_the_controller_fatal_and_the_reset_loses_nothing() {
    const THREADS: u64 = 3;
    const REGION: u64 = 1024;
    const SEED: u64 = 191;
    let config = vm();
    let run = run_ok(
        &config,
        &format!(
            "RUST_LOG=nvme_driver=info guest-fault --threads {THREADS} --qd 8 --blocks 8 \
             --region {REGION} --fault-after 64 --seed {SEED}"
        ),
    );
    let out = run.stdout_text();
    let err = run.stderr_text();
    for l in out
        .lines()
        .filter(|l| l.starts_with("recovery") || l.starts_with("fault: "))
    {
        println!("guest: {l}");
    }
    for l in err.lines().filter(|l| {
        [
            "fault injection",
            "controller failed",
            "reset",
            "created again",
        ]
        .iter()
        .any(|w| l.contains(w))
    }) {
        println!("guest log: {l}");
    }
    // The hook unmapped the ring, the controller reported CFS (the CSTS a
    // queue pair's health check read), and the controller was reset once.
    assert!(
        err.contains("fault injection: unmapping the SQ ring at IOVA"),
        "{err}"
    );
    assert!(out.contains("controller fatal (CSTS 0x"), "{out}");
    assert!(err.contains("resetting the controller to recover"), "{err}");
    assert_eq!(err.matches("controller reset done").count(), 1, "{err}");
    assert!(
        err.contains("fault injection: IOMMU mapping of") && err.contains(" restored"),
        "the ring is mapped again before its queue is created again: {err}"
    );
    // Nothing was unmapped twice or leaked: a failed unmap or restore
    // would be logged ("... failed, leaking it").
    assert!(!err.contains("leaking it"), "{err}");
    // Every queue pair created its queues again; the one that took the
    // fault had commands in flight that were resubmitted.
    for t in 0..THREADS {
        assert!(
            out.contains(&format!("recovery: thread {t}: queue ")),
            "thread {t} recovered: {out}"
        );
    }
    let faulted = out
        .lines()
        .find(|l| l.starts_with("recovery: thread 0: "))
        .unwrap_or_default();
    let resubmitted = number_after(faulted, "queues created again, ").unwrap_or(0.0);
    assert!(
        resubmitted >= 1.0,
        "the faulted queue's writes were resubmitted: {out}"
    );
    // Every write answered, all succeeded, each range read back in the
    // guest, and is in the host image.
    assert!(
        out.contains("fault: every write answered and read back"),
        "{out}"
    );
    check_thread_ranges(run.disk(1).expect("image"), THREADS, REGION, 512, SEED);
    let total = number_after(&out, "recovery time: ").expect("recovery time");
    let seen = number_after(&out, "CSTS.CFS read ").expect("detection time");
    println!(
        "fatal controller (SQ ring unmapped) on {}: CSTS.CFS read {seen:.1} ms after the fault; \
         {total:.1} ms from the fault to the queue usable again ({resubmitted} resubmitted)",
        run.qemu_version
    );
    // Generous: a health check and a reset, on a busy host.
    assert!(total < 60_000.0, "recovery took {total} ms: {out}");
}
