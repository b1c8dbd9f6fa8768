//! The guest kernel's own virtio_blk driver as the client of nvme-vhost's
//! virtqueue code, through VDUSE (Linux 6.12 guest): `nvme-vhost
//! --vduse` creates the device, iproute2's `vdpa` attaches it,
//! `/dev/vda` appears, and an ext4 file system is made, filled with a
//! file tree, checked by e2fsck and read back after a remount; a raw
//! region past the file system is written and read back. After the
//! guest is gone the host checks the image: e2fsck, every file's
//! checksum (read with debugfs) and the raw region.

use std::path::Path;
use std::process::Command;

use qemu_harness::Suite;
use vm_tests::{NsDisk, image_bytes, run_ok, vm};

/// The file system's size and where the raw region starts.
const FS_MIB: u64 = 64;
const RAW_MIB: u64 = 16;

const SCRIPT: &str = r#"
log=/tmp/vduse.log
die() { echo "FAILED: $*" >&2; cat $log >&2; exit 1; }
ln -sf /proc/mounts /etc/mtab
nvme-vhost 0000:00:03.0 --vduse vduse0 --queues 2 2>$log &
pid=$!
i=0
until grep -q 'serving;' $log; do
  i=$((i+1)); [ $i -lt 600 ] || die "the daemon never served"
  kill -0 $pid 2>/dev/null || die "the daemon exited"
  sleep 0.2
done
vdpa dev add name vduse0 mgmtdev vduse || die "vdpa dev add"
i=0
until [ -b /dev/vda ]; do
  i=$((i+1)); [ $i -lt 300 ] || die "no /dev/vda"
  sleep 0.2
done
echo "vda sectors $(cat /sys/block/vda/size)"
mkfs.ext4 -q -F /dev/vda FS_MIBM || die mkfs
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || die mount
mkdir -p /mnt/tree/a/b /mnt/tree/c
dd if=/dev/urandom of=/mnt/tree/small bs=1234 count=1 2>/dev/null
dd if=/dev/urandom of=/mnt/tree/a/page bs=4096 count=1 2>/dev/null
dd if=/dev/urandom of=/mnt/tree/a/b/big bs=1048576 count=8 2>/dev/null
dd if=/dev/urandom of=/mnt/tree/c/odd bs=65537 count=3 2>/dev/null
j=0
while [ $j -lt 40 ]; do echo "file $j of the tree" > /mnt/tree/c/n$j; j=$((j+1)); done
(cd /mnt && find tree -type f | sort | xargs sha256sum) > /tmp/sums || die sums
sync
umount /mnt || die umount
e2fsck -fn /dev/vda > /tmp/fsck.out 2>&1
echo "e2fsck rc=$?"
mount -t ext4 /dev/vda /mnt || die "mount again"
(cd /mnt && sha256sum -c /tmp/sums) > /tmp/check.out 2>&1
echo "verify rc=$? ok=$(grep -c ': OK$' /tmp/check.out) files=$(wc -l < /tmp/sums)"
umount /mnt || die "umount again"
yes vduse-raw-region | head -c RAW_BYTES > /tmp/raw
dd if=/tmp/raw of=/dev/vda bs=1048576 seek=FS_MIB conv=fsync 2>/dev/null || die "raw write"
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/raw.back bs=1048576 skip=FS_MIB count=RAW_MIB 2>/dev/null || die "raw read"
cmp /tmp/raw /tmp/raw.back && echo "raw region ok"
vdpa dev del vduse0 || die "vdpa dev del"
kill $pid
wait $pid
echo "daemon rc=$?"
# Again with the kernel's own bounce pages (data copied through DMA
# buffers): the file system is checked and read back.
log=/tmp/copy.log
nvme-vhost 0000:00:03.0 --vduse vduse1 --vduse-kernel-bounce 2>$log &
pid=$!
i=0
until grep -q 'serving;' $log; do
  i=$((i+1)); [ $i -lt 600 ] || die "the second daemon never served"
  kill -0 $pid 2>/dev/null || die "the second daemon exited"
  sleep 0.2
done
vdpa dev add name vduse1 mgmtdev vduse || die "vdpa dev add vduse1"
i=0
until dev=$(ls /sys/block | grep '^vd' | head -n 1) && [ -n "$dev" ] && [ -b /dev/$dev ]; do
  i=$((i+1)); [ $i -lt 300 ] || die "no block device from vduse1"
  sleep 0.2
done
e2fsck -fn /dev/$dev > /tmp/fsck2.out 2>&1
echo "copy e2fsck rc=$?"
mount -t ext4 -o ro /dev/$dev /mnt || die "mount vduse1"
(cd /mnt && sha256sum -c /tmp/sums) > /tmp/check2.out 2>&1
echo "copy verify rc=$? ok=$(grep -c ': OK$' /tmp/check2.out)"
umount /mnt || die "umount vduse1"
vdpa dev del vduse1 || die "vdpa dev del vduse1"
kill $pid
wait $pid
echo "copy daemon rc=$?"
echo "== sums"
cat /tmp/sums
echo "== fsck"
cat /tmp/fsck.out
cat /tmp/vduse.log >&2
echo "== copy log" >&2
cat /tmp/copy.log >&2
"#;

/// `debugfs -R "cat PATH"` of `image`: the file's bytes.
fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{path}"))
        .arg(image)
        .output()
        .expect("run debugfs");
    assert!(out.status.success(), "debugfs cat {path}: {out:?}");
    out.stdout
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(data).expect("feed sha256sum");
    }
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn kernel_virtio_blk_runs_ext4_on_nvme_vhost_through_vduse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = vm();
    config.kernel = Some(Suite::Backports);
    // Two daemons, two attachments, mkfs and 8 MiB of files through TCG
    // and the emulated IOMMU on a shared host.
    config.timeout = std::time::Duration::from_secs(600);
    config.vduse = true;
    config.disk_size = (FS_MIB + RAW_MIB + 16) << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    config.host_tools = vec!["vdpa".into(), "mkfs.ext4".into(), "e2fsck".into()];
    config.copies = vec![("/etc/mke2fs.conf".into(), "/etc/mke2fs.conf".into())];
    let script = SCRIPT
        .replace("FS_MIBM", &format!("{FS_MIB}M"))
        .replace("RAW_BYTES", &(RAW_MIB << 20).to_string())
        .replace("RAW_MIB", &RAW_MIB.to_string())
        .replace("FS_MIB", &FS_MIB.to_string());
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    let sectors = (FS_MIB + RAW_MIB + 16) << 11;
    assert!(out.contains(&format!("vda sectors {sectors}")), "{out}");
    assert!(out.contains("e2fsck rc=0"), "{out}");
    let sums: Vec<(String, String)> = out
        .split("== sums\n")
        .nth(1)
        .and_then(|rest| rest.split("== fsck").next())
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (sum, path) = l.split_once("  ")?;
            Some((sum.to_string(), path.to_string()))
        })
        .collect();
    assert_eq!(sums.len(), 44, "{out}");
    assert!(
        out.contains("verify rc=0 ok=44 files=44"),
        "every file read back after the remount: {out}"
    );
    assert!(out.contains("raw region ok"), "{out}");
    assert!(out.contains("daemon rc=0"), "{out}\n{log}");
    assert!(out.contains("copy e2fsck rc=0"), "{out}");
    assert!(out.contains("copy verify rc=0 ok=44"), "{out}");
    assert!(out.contains("copy daemon rc=0"), "{out}\n{log}");
    let (log, copy_log) = log
        .split_once("== copy log\n")
        .unwrap_or_else(|| panic!("no second daemon log:\n{log}"));
    // The daemon's view: the device went through its life, and requests
    // were served zero-copy from the registered bounce memory.
    assert!(log.contains("bounce area: "), "{log}");
    assert!(log.contains("VDUSE device vduse0 destroyed"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    let counts = |log: &str| -> [u64; 4] {
        let summary = log
            .lines()
            .rfind(|l| l.contains("virtqueues stopped: requests"))
            .unwrap_or_else(|| panic!("no request counts in the log:\n{log}"));
        ["direct", "bounced", "failed", "unsupported"].map(|name| {
            summary
                .split(&format!("{name} "))
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} count in {summary:?}"))
        })
    };
    // Registered bounce memory: data requests go straight to the device
    // (a few sub-page scatter lists may bounce); nothing fails.
    let [direct, bounced, failed, _] = counts(log);
    eprintln!("registered bounce memory: direct {direct}, bounced {bounced}");
    assert!(direct > 100, "{log}");
    assert!(bounced * 10 < direct, "{log}");
    assert_eq!(failed, 0, "{log}");
    // The kernel's own bounce pages: the device cannot reach them, every
    // data request is copied.
    let [direct, bounced, failed, _] = counts(copy_log);
    eprintln!("kernel bounce pages: direct {direct}, bounced {bounced}");
    assert_eq!(direct, 0, "{copy_log}");
    assert!(bounced > 10, "{copy_log}");
    assert_eq!(failed, 0, "{copy_log}");
    assert!(!copy_log.contains(" ERROR "), "{copy_log}");
    assert!(
        copy_log.contains("VDUSE device vduse1 destroyed"),
        "{copy_log}"
    );

    // The host's view of the image.
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .expect("run e2fsck on the host");
    assert!(
        fsck.status.success(),
        "host e2fsck -fn: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    for (sum, path) in &sums {
        assert_eq!(
            &sha256_hex(&debugfs_cat(&image, path)),
            sum,
            "{path} in the host image"
        );
    }
    let raw = image_bytes(&image, FS_MIB << 20, (RAW_MIB << 20) as usize);
    let expected: Vec<u8> = b"vduse-raw-region\n"
        .iter()
        .copied()
        .cycle()
        .take(raw.len())
        .collect();
    assert!(raw == expected, "the raw region in the host image");
}
