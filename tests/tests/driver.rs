//! The driver's queue pairs against QEMU's controller, run through the
//! `guest-check` scenarios; the host then checks the raw images block by
//! block with the same data pattern.

use std::path::Path;

use vm_tests::{VmConfig, check_thread_ranges, field, image_bytes, pattern, run_ok, vm};

fn with_props(props: &[(&str, &str)]) -> VmConfig {
    let mut config = vm();
    config.nvme_props = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
}

/// Each thread's range holds its pattern, and nothing was written past
/// the last one.
fn check_threads_on_host(image: &Path, threads: u64, region: u64, lba: usize, seed: u64) {
    check_thread_ranges(image, threads, region, lba, seed);
    let after = image_bytes(image, threads * region * lba as u64, lba);
    assert!(
        after.iter().all(|&b| b == 0),
        "nothing written past the ranges"
    );
}

#[test]
fn threads_each_with_a_queue_write_disjoint_ranges() {
    let config = vm();
    let run = run_ok(
        &config,
        "guest-check --entries 4096 threads --threads 4 --region 4096 --qd 16 --max-blocks 256 --seed 11",
    );
    let out = run.stdout_text();
    // Asked for more than CAP.MQES (2048 on QEMU 7.2): capped there.
    assert_eq!(out.matches(" of 2048 entries ").count(), 4, "{out}");
    for t in 0..4 {
        assert!(out.contains(&format!("thread {t}: queue ")), "{out}");
    }
    // Four threads, four different queues.
    let mut qids: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("thread "))
        .filter_map(|l| l.split("queue ").nth(1)?.split(' ').next())
        .collect();
    qids.sort_unstable();
    qids.dedup();
    assert_eq!(qids.len(), 4, "{out}");
    check_threads_on_host(run.disk(1).expect("image"), 4, 4096, 512, 11);
}

#[test]
fn lba_4096_with_mdts_3_splits_requests() {
    let config = with_props(&[("mdts", "3"), ("logical_block_size", "4096")]);
    let run = run_ok(
        &config,
        "guest-check threads --threads 2 --region 1024 --qd 8 --max-blocks 64 --seed 21",
    );
    assert!(
        run.stdout_text().contains("max transfer 32768 bytes"),
        "{}",
        run.stdout_text()
    );
    check_threads_on_host(run.disk(1).expect("image"), 2, 1024, 4096, 21);
}

#[test]
fn large_mdts_moves_4_mib_requests_through_chained_prp_lists() {
    let config = with_props(&[("mdts", "10")]);
    let run = run_ok(
        &config,
        "guest-check threads --threads 1 --region 49152 --qd 4 --max-blocks 8192 --seed 31",
    );
    assert!(
        run.stdout_text().contains("max transfer 4194304 bytes"),
        "{}",
        run.stdout_text()
    );
    check_threads_on_host(run.disk(1).expect("image"), 1, 49152, 512, 31);
}

#[test]
fn sgl_data_pointers_move_the_same_data() {
    let config = vm();
    let run = run_ok(
        &config,
        "guest-check --sgl threads --threads 2 --region 2048 --seed 41",
    );
    assert!(run.stdout_text().contains(", SGL"), "{}", run.stdout_text());
    check_threads_on_host(run.disk(1).expect("image"), 2, 2048, 512, 41);
}

#[test]
fn split_requests_on_a_tiny_queue_never_deadlock() {
    let config = with_props(&[("mdts", "3")]);
    let run = run_ok(
        &config,
        "guest-check --entries 4 split --requests 24 --blocks 512 --seed 3",
    );
    let out = run.stdout_text();
    assert!(
        out.contains("24 requests of 262144 bytes outstanding on a 4-entry queue"),
        "{out}"
    );
    assert!(
        out.contains("all 24 written") && out.contains("all 24 read"),
        "{out}"
    );
    let image = run.disk(1).expect("image");
    let data = image_bytes(image, 0, 24 * 512 * 512);
    assert_eq!(pattern::first_mismatch(3, 0, 512, &data), None);
}

#[test]
fn fewer_queues_than_threads() {
    let config = with_props(&[("max_ioqpairs", "2")]);
    let run = run_ok(
        &config,
        "guest-check queues --threads 4 && nvmectl get-feature -f 7",
    );
    let out = run.stdout_text();
    assert!(out.contains("2 queue pairs granted"), "{out}");
    assert_eq!(
        out.matches("ok qid").count(),
        3,
        "two of four, then one after release: {out}"
    );
    assert_eq!(
        out.matches("exhausted: all 2 I/O queue pairs the controller granted are in use")
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("granted 2 of 4"), "{out}");
    assert!(
        out.contains("get-feature:0x07 (Number of Queues), Current value:0x00010001"),
        "{out}"
    );
}

#[test]
fn two_namespaces_hold_their_own_data() {
    let mut config = vm();
    config.namespaces = 2;
    let run = run_ok(&config, "guest-check namespaces --blocks 64");
    let out = run.stdout_text();
    assert!(
        out.contains("namespace 1: 64 blocks") && out.contains("namespace 2: 64 blocks"),
        "{out}"
    );
    for nsid in [1u64, 2] {
        let data = image_bytes(run.disk(nsid as usize).expect("image"), 0, 64 * 512);
        assert_eq!(
            pattern::first_mismatch(nsid * 1000, 0, 512, &data),
            None,
            "namespace {nsid}"
        );
    }
}

#[test]
fn write_zeroes_deallocate_and_admin_logs() {
    let config = vm();
    let run = run_ok(
        &config,
        "guest-check ops && nvmectl smart-log && nvmectl error-log && nvmectl get-feature -f 0x06",
    );
    let out = run.stdout_text();
    assert!(out.contains("dlfeat 0x1"), "{out}");
    assert!(
        out.contains("write zeroes 8+8 and deallocate 32+16 read back as zeroes; the rest intact"),
        "{out}"
    );
    // The guest wrote 64 blocks once and read them once, in one command each
    // (plus identify-time reads: none), so the counters are at least 1.
    let writes: u64 = field(&out, "host_write_commands")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(writes >= 1, "{out}");
    assert!(
        out.contains("temperature") && out.contains("num_err_log_entries"),
        "{out}"
    );
    assert!(out.contains("Error Log Entries: 0 valid"), "{out}");
    assert!(
        out.contains("get-feature:0x06 (Volatile Write Cache), Current value:"),
        "{out}"
    );

    let image = run.disk(1).expect("image");
    let data = image_bytes(image, 0, 64 * 512);
    for (b, block) in data.chunks(512).enumerate() {
        let zero = (8..16).contains(&b) || (32..48).contains(&b);
        if zero {
            assert!(
                block.iter().all(|&x| x == 0),
                "LBA {b} should be zeroes in the image"
            );
        } else {
            assert_eq!(
                pattern::first_mismatch(5, b as u64, 512, block),
                None,
                "LBA {b}"
            );
        }
    }
}
