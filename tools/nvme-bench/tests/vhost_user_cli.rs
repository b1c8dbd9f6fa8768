//! `nvme-bench --vhost-user` on the host, where no device is needed to
//! see it refuse: options that do not apply, and a socket nobody serves.

use std::process::Command;

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nvme-bench"))
        .args(args)
        .output()
        .expect("nvme-bench runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn options_of_the_nvme_path_are_refused() {
    for extra in [
        ["--floor"].as_slice(),
        &["--mode", "cache"],
        &["--owned-buffers"],
        &["--buffer-pool", "1M"],
        &["--sgl"],
        &["--nsid", "2"],
    ] {
        let mut args = vec!["--vhost-user", "/nonexistent/vhost.sock"];
        args.extend_from_slice(extra);
        let (code, err) = bench(&args);
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(
            err.contains("--vhost-user runs raw mode's full path"),
            "{extra:?}: {err}"
        );
    }
    // A PCI address and a socket name two different devices.
    let (code, err) = bench(&["0000:00:03.0", "--vhost-user", "/tmp/x.sock"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn a_socket_nobody_serves_is_a_connect_error() {
    let dir = std::env::temp_dir().join(format!("nvme-bench-vhost-{}", std::process::id()));
    let sock = dir.join("none.sock");
    let (code, err) = bench(&[
        "--vhost-user",
        sock.to_str().expect("utf-8 path"),
        "-n",
        "1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("nvme-bench: vhost-user: connect: "),
        "{err}"
    );
}
