//! The ublk target in the guest: `nvme-ublk` serves namespace 1 (the
//! emulated NVMe device, through the userspace driver) as `/dev/ublkbN`,
//! and unmodified programs use it: fio with verification, mke2fs, mount,
//! e2fsck. The guests boot the 6.12 kernel whatever the suite's default
//! is (Debian's 6.1 has no `ublk_drv`); the module is loaded by the test
//! script, so the daemon is first run without it. Host tools (fio,
//! e2fsprogs, coreutils' cksum, util-linux's blkdiscard) come in with
//! their libraries; the host checks the raw image afterwards.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qemu_harness::Suite;
use vm_tests::{GuestStream, NsDisk, VmConfig, VmRun, image_bytes, posix_cksum, run_ok, vm};

const ADDR: &str = "0000:00:03.0";

/// Loads ublk_drv (and what it needs) in the guest.
const LOAD_UBLK: &str = "modload ublk_drv || exit 3\n";

/// A 6.12 guest with the ublk modules and `tools` from the host.
fn ublk_vm(tools: &[&str]) -> VmConfig {
    let mut config = vm();
    config.kernel = Some(Suite::Backports);
    config.ship_modules = vec!["ublk_drv".into()];
    config.host_tools = tools.iter().map(|t| t.to_string()).collect();
    config.timeout = std::time::Duration::from_secs(600);
    config
}

/// Script lines starting `nvme-ublk {flags}` as daemon `name`: its pid in
/// `$NAME_PID`, its block device in `$NAME_DEV` once it says `serving`;
/// the script fails with the daemon's log if it never does.
fn start(name: &str, flags: &str) -> String {
    let up = name.to_uppercase();
    format!(
        "nvme-ublk {ADDR} {flags} > /tmp/{name}.out 2> /tmp/{name}.log &
{up}_PID=$!
i=0
until grep -q '^serving ' /tmp/{name}.out 2>/dev/null; do
  i=$((i+1))
  if [ $i -ge 480 ] || ! kill -0 ${up}_PID 2>/dev/null; then
    cat /tmp/{name}.log >&2; echo 'nvme-ublk {name} did not start' >&2; exit 9
  fi
  sleep 0.5
done
{up}_DEV=$(sed -n 's/^serving //p' /tmp/{name}.out)
echo \"{name} serving ${up}_DEV\"
"
    )
}

/// Script lines stopping daemon `name` with SIGTERM: prints its exit
/// status and whether its device went away; its log goes to stderr.
fn stop(name: &str) -> String {
    let up = name.to_uppercase();
    format!(
        "kill -TERM ${up}_PID
wait ${up}_PID
echo \"{name} daemon rc=$?\"
cat /tmp/{name}.log >&2
i=0
while [ -e ${up}_DEV ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -e ${up}_DEV ]; then echo '{name} device still there'; else echo '{name} device gone'; fi
"
    )
}

/// What [`stop`] printed for daemon `name`: it exited 0 and its device
/// went away.
/// The guest kernel survived a daemon's death: no oops, BUG, WARNING,
/// RCU stall or hung task on the console. (Linux 6.12's ublk_drv can oops
/// in io_uring's fallback task work when a daemon whose ring runs ordinary
/// task work is killed under load: docs/UBLK.md.)
fn assert_kernel_intact(run: &VmRun) {
    if let Some(trouble) = run.kernel_trouble() {
        panic!(
            "the guest kernel reported trouble:\n{trouble}\n{}",
            run.describe()
        );
    }
}

/// What the guest kernel prints when Linux 6.12's ublk driver races a dying
/// daemon's command cancel against a request's hand-over: a NULL pointer
/// oops in io_uring's fallback task work (docs/UBLK.md, "A guest kernel
/// bug under a killed daemon"). Both lines must be in the report.
const UBLK_CANCEL_RACE: [&str; 2] = ["BUG: kernel NULL pointer dereference", "io_fallback_tw"];

/// How many boots a daemon-killing test gets to find one where the guest
/// kernel does not hit [`UBLK_CANCEL_RACE`].
const CANCEL_RACE_BOOTS: usize = 5;

/// Runs `script` (which SIGKILLs a daemon under load) until a boot's guest
/// kernel does not oops with [`UBLK_CANCEL_RACE`], at most
/// [`CANCEL_RACE_BOOTS`] boots, and returns that boot's run, which must
/// exit 0. A boot whose kernel oopses that way is stopped as soon as the
/// report is on the console (the kernel is left with an RCU stall and the
/// killed daemon's requests hang) and counted; any other failure is the
/// test's. Panics when every boot hits the race.
fn run_ok_past_the_cancel_race(config: &VmConfig, script: &str) -> VmRun {
    for boot in 1..=CANCEL_RACE_BOOTS {
        let (run, raced) = config
            .run_with(&["sh", "-c", script], |guest| {
                while !guest.finished() {
                    let console = guest.output(GuestStream::Console);
                    if UBLK_CANCEL_RACE.iter().all(|m| console.contains(m)) {
                        // The rest of the report reaches the console.
                        std::thread::sleep(Duration::from_secs(2));
                        if let Ok(mut qmp) = guest.qmp() {
                            let _ = qmp.execute("quit", None);
                        }
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                false
            })
            .unwrap_or_else(|e| panic!("could not run the guest: {e}"));
        if !raced {
            assert_eq!(
                run.code(),
                Some(0),
                "guest script failed\n{}",
                run.describe()
            );
            return run;
        }
        eprintln!(
            "boot {boot} of {CANCEL_RACE_BOOTS}: the guest kernel hit 6.12's ublk cancel race \
             (oops in io_fallback_tw); booting again\n{}",
            run.kernel_trouble().unwrap_or_default()
        );
    }
    panic!("every one of {CANCEL_RACE_BOOTS} boots hit 6.12's ublk cancel race");
}

fn assert_stopped(out: &str, name: &str) {
    assert_eq!(values(out, &format!("{name} daemon rc=")), ["0"], "{out}");
    assert_eq!(values(out, &format!("{name} device ")), ["gone"], "{out}");
}

/// The daemon's log: each of its `queues` queues said it was done with
/// no request failed or refused, and nothing was logged as an error.
fn assert_served_cleanly(log: &str, queues: usize) {
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("done; requests"))
        .collect();
    assert_eq!(done.len(), queues, "{log}");
    for l in done {
        assert!(l.ends_with("failed 0, refused 0"), "{l}");
    }
    assert!(!log.contains(" ERROR "), "{log}");
}

/// The requests with FUA the daemon's queues served, from their `done`
/// lines (`requests ok N (M with FUA), ...`), added up.
fn fua_requests(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("done; requests ok "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" (")?;
            rest.split_once(" with FUA)")?.0.parse::<u64>().ok()
        })
        .sum()
}

/// fio writing `size` bytes at `offset` of `$dev` at random with `flags`,
/// then reading them back and checking each block's crc32c; fails the
/// script with `code` if fio does.
fn fio_verify(name: &str, dev: &str, flags: &str, offset: &str, size: &str, code: u32) -> String {
    format!(
        "fio --name={name} --filename={dev} --direct=1 --ioengine=libaio --rw=randwrite \
  {flags} --offset={offset} --size={size} --verify=crc32c --verify_fatal=1 --randseed=7 \
  --eta=never > /tmp/{name}.fio 2>&1 || {{ cat /tmp/{name}.fio >&2; exit {code}; }}
grep -E '^{name}: |IOPS=' /tmp/{name}.fio
"
    )
}

/// The lines of `out` starting with `prefix`, the rest of each.
fn values<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

/// The bytes that `seq 1 N` prints.
fn seq_bytes(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Run on the host: e2fsck -fn on the image must find it clean.
fn host_e2fsck(image: &Path) -> String {
    let out = Command::new(qemu_harness::host::host_tool("e2fsck").expect("e2fsck"))
        .args(["-fn"])
        .arg(image)
        .output()
        .expect("running e2fsck");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "host e2fsck -fn: {:?}\n{text}",
        out.status
    );
    text
}

/// Run on the host: a file's bytes out of the ext4 image (debugfs).
fn host_file(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new(qemu_harness::host::host_tool("debugfs").expect("debugfs"))
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("running debugfs");
    assert!(out.status.success(), "debugfs cat {path}: {:?}", out.status);
    out.stdout
}

/// Without ublk_drv the daemon fails with one line saying so; with it,
/// fio's verified random writes at QD1 (4 KiB) and QD32 (4 to 128 KiB,
/// two queues) pass on /dev/ublkb0, the device has Identify's parameters,
/// flushes, discards and write zeroes reach the controller, SIGTERM
/// stops the daemon and removes the device, and the host image holds
/// what the guest read through ublk.
#[test]
fn fio_verifies_through_nvme_ublk_and_the_host_image_agrees() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = ublk_vm(&["fio", "cksum", "blkdiscard"]);
    config.disk_size = 96 << 20;
    config.disks = vec![NsDisk::File(image.clone())];
    const SEQ: u32 = 200_000;
    // 4 KiB writes with O_SYNC at 64 MiB: FUA writes.
    const FUA_BLOCKS: usize = 16;
    let script = format!(
        "nvme-ublk {ADDR} > /tmp/none.out 2> /tmp/none.err
echo \"without module rc=$?\"
sed 's/^/without module: /' /tmp/none.err
{LOAD_UBLK}{start}\
q=/sys/block/${{U_DEV#/dev/}}/queue
echo \"params $(cat $q/logical_block_size) $(cat $q/physical_block_size) $(cat $q/max_hw_sectors_kb) \
$(cat $q/discard_max_hw_bytes) $(cat $q/write_zeroes_max_bytes) $(cat $q/write_cache)\"
echo \"queue fua $(cat $q/fua)\"
{qd1}{qd32}\
dd if=$U_DEV bs=1M count=24 2>/dev/null | cksum | sed 's/^/fio region /'
seq 1 {SEQ} > /tmp/seq
dd if=/tmp/seq of=$U_DEV bs=4096 seek=10240 conv=fsync 2>/dev/null || exit 13
dd if=/tmp/seq of=$U_DEV bs=4096 seek=12288 count=256 conv=fsync 2>/dev/null || exit 14
/usr/sbin/blkdiscard -z -o $((48 << 20)) -l $((1 << 20)) $U_DEV || exit 15
/usr/sbin/blkdiscard -o $((56 << 20)) -l $((1 << 20)) $U_DEV || exit 16
echo \"stat $(cat /sys/block/${{U_DEV#/dev/}}/stat)\"
fio --name=fua --filename=$U_DEV --direct=1 --sync=1 --ioengine=psync --rw=write --bs=4k \
  --offset=64M --size={fua_kib}k --randseed=9 --eta=never > /tmp/fua.fio 2>&1 \
  || {{ cat /tmp/fua.fio >&2; exit 17; }}
grep -E '^fua: ' /tmp/fua.fio
echo \"o_sync stat $(cat /sys/block/${{U_DEV#/dev/}}/stat)\"
dd if=$U_DEV bs=4096 skip=16384 count={fua_count} iflag=direct 2>/dev/null | cksum | sed 's/^/fua region /'
{stop}",
        fua_kib = FUA_BLOCKS * 4,
        fua_count = FUA_BLOCKS,
        start = start("u", "--queues 2 --depth 64"),
        qd1 = fio_verify("qd1", "$U_DEV", "--bs=4k --iodepth=1", "0", "4M", 11),
        qd32 = fio_verify(
            "qd32",
            "$U_DEV",
            "--bsrange=4k-128k --iodepth=32",
            "8M",
            "16M",
            12
        ),
        stop = stop("u"),
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");

    // Without the module: exit 1 and one line that says so.
    assert_eq!(values(&out, "without module rc="), ["1"], "{out}");
    let said = values(&out, "without module: ");
    assert_eq!(said.len(), 1, "{out}");
    assert!(
        said[0].contains("no ublk driver") && said[0].contains("ublk_drv"),
        "{out}"
    );

    assert_eq!(values(&out, "u serving "), ["/dev/ublkb0"], "{out}");
    // QEMU's namespace: 512-byte blocks, MDTS 7 (512 KiB), DSM and Write
    // Zeroes, a volatile write cache.
    let params = values(&out, "params ");
    assert_eq!(params.len(), 1, "{out}");
    let p: Vec<&str> = params[0].split_whitespace().collect();
    assert_eq!(p[..3], ["512", "512", "512"], "{out}");
    assert_ne!(p[3], "0", "discard offered: {out}");
    assert_eq!(p[4], (65536u64 * 512).to_string(), "write zeroes: {out}");
    assert_eq!(p[5..], ["write", "back"], "volatile cache: {out}");

    for job in ["qd1", "qd32"] {
        assert!(
            out.contains(&format!("{job}: (groupid=0, jobs=1): err= 0")),
            "{job}: {out}"
        );
    }
    // /sys/block/X/stat: field 12 is discard I/Os, 16 flush I/Os.
    let stat = values(&out, "stat ");
    let s: Vec<u64> = stat[0]
        .split_whitespace()
        .map(|v| v.parse().expect("stat field"))
        .collect();
    assert!(s.len() >= 16, "{out}");
    assert!(s[11] > 0, "discards reached the device: {out}");
    assert!(s[15] > 0, "flushes reached the device: {out}");

    // FUA: offered to the kernel (with the volatile cache), and O_SYNC
    // direct writes reach the daemon as FUA writes (without FUA the
    // kernel would send plain writes and flushes): the queues' counts of
    // requests with FUA add up to at least one per block.
    assert_eq!(values(&out, "queue fua "), ["1"], "{out}");
    assert!(
        out.contains("fua: (groupid=0, jobs=1): err= 0"),
        "O_SYNC fio: {out}"
    );
    let after = values(&out, "o_sync stat ");
    let flushes_after: Option<u64> = after
        .first()
        .and_then(|l| l.split_whitespace().nth(15))
        .and_then(|v| v.parse().ok());
    eprintln!(
        "flushes before the O_SYNC writes {}, after {flushes_after:?}",
        s[15]
    );
    assert_stopped(&out, "u");
    // Both queues served and none refused or failed a request.
    assert_served_cleanly(&log, 2);
    assert!(fua_requests(&log) >= FUA_BLOCKS as u64, "FUA writes: {log}");

    // The host image: what the guest read back of fio's region, the
    // sequence written through the page cache and fsync'd, and zeroes
    // where write zeroes went.
    let fio = values(&out, "fio region ");
    let crc: u32 = fio[0]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cksum: {out}"));
    assert_eq!(posix_cksum(&image_bytes(&image, 0, 24 << 20)), crc);
    let seq = seq_bytes(SEQ);
    assert_eq!(image_bytes(&image, 40 << 20, seq.len()), seq);
    assert!(
        image_bytes(&image, 48 << 20, 1 << 20)
            .iter()
            .all(|&b| b == 0),
        "the write-zeroes range is zero in the image"
    );
    // The FUA writes are in the image.
    let fua = values(&out, "fua region ");
    let crc: u32 = fua
        .first()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fua cksum: {out}"));
    assert_eq!(
        posix_cksum(&image_bytes(&image, 64 << 20, FUA_BLOCKS * 4096)),
        crc
    );
}

/// The daemon killed (SIGKILL) under fio's QD32 random writes: fio's
/// outstanding I/O ends with errors instead of hanging, and a new daemon
/// on the same controller serves a new device whose verified writes pass.
#[test]
fn a_killed_daemon_fails_its_io_and_a_new_one_serves_again() {
    let config = ublk_vm(&["fio"]);
    let script = format!(
        "{LOAD_UBLK}{start_a}\
timeout 300 fio --name=load --filename=$A_DEV --direct=1 --ioengine=libaio --rw=randwrite \
  --bs=4k --iodepth=32 --size=32M --time_based --runtime=200 --eta=never > /tmp/load.fio 2>&1 &
FIO_PID=$!
sleep 5
kill -KILL $A_PID
wait $FIO_PID
echo \"load fio rc=$?\"
wait $A_PID
echo \"killed daemon rc=$?\"
grep '^load: (groupid' /tmp/load.fio
grep -c 'Input/output error' /tmp/load.fio | sed 's/^/io errors /'
{start_b}{verify}{stop_b}",
        start_a = start("a", "--depth 32"),
        // The new daemon sleeps on the NVMe interrupt (after a short
        // spin): that mode serves the verified writes.
        start_b = start("b", "--depth 32 --interrupts --spin-us 20"),
        verify = fio_verify("again", "$B_DEV", "--bs=4k --iodepth=8", "0", "8M", 21),
        stop_b = stop("b"),
    );
    let run = run_ok_past_the_cancel_race(&config, &script);
    let out = run.stdout_text();
    eprintln!("{out}\n{}", run.stderr_text());
    let fio_rc = values(&out, "load fio rc=");
    assert_eq!(fio_rc.len(), 1, "{out}");
    // Not 0 (its I/O failed), not a timeout's 124 or 143 (something hung).
    assert!(!["0", "124", "143"].contains(&fio_rc[0]), "{out}");
    let load = values(&out, "load: (groupid");
    assert!(
        load.len() == 1 && load[0].contains("err=") && !load[0].contains("err= 0"),
        "fio reports the error: {out}"
    );
    let errors: Vec<u32> = values(&out, "io errors ")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(errors.len() == 1 && errors[0] > 0, "{out}");
    assert_eq!(values(&out, "killed daemon rc="), ["137"], "{out}");
    assert_eq!(values(&out, "b serving ").len(), 1, "{out}");
    assert!(out.contains("again: (groupid=0, jobs=1): err= 0"), "{out}");
    assert_stopped(&out, "b");
    assert_kernel_intact(&run);
}

/// ext4 on /dev/ublkb0: mke2fs, mount, a tree of files with known
/// checksums, sync, umount; e2fsck -fn finds it clean, a second mount
/// reads the same checksums; on the host, e2fsck -fn passes on the raw
/// image and debugfs reads every file with the guest's checksum.
#[test]
fn ext4_on_nvme_ublk_is_clean_and_intact_in_the_guest_and_on_the_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let mut config = ublk_vm(&["mke2fs", "e2fsck", "cksum"]);
    config
        .ship_modules
        .extend(["crc32c_generic".into(), "ext4".into()]);
    config.disks = vec![NsDisk::File(image.clone())];
    let sums = "(cd /mnt/u && find . -type f | sort | while read f; do cksum \"$f\"; done)";
    let script = format!(
        "{LOAD_UBLK}\
modload crc32c_generic ext4 || exit 4
{start}\
ln -sf /proc/mounts /etc/mtab
/usr/sbin/mke2fs -q -t ext4 -b 4096 -F $U_DEV || exit 31
mkdir -p /mnt/u && mount -t ext4 $U_DEV /mnt/u || exit 32
for d in 0 1 2 3; do
  mkdir /mnt/u/d$d
  for f in 0 1 2 3 4 5 6 7 8 9; do
    dd if=/dev/urandom of=/mnt/u/d$d/f$f bs=1024 count=$(( (d * 10 + f) * 13 + 1 )) 2>/dev/null || exit 33
  done
done
{sums} > /tmp/sums
sync
umount /mnt/u || exit 34
/usr/sbin/e2fsck -fn $U_DEV > /tmp/fsck.out 2>&1
echo \"guest fsck rc=$?\"
sed 's/^/fsck: /' /tmp/fsck.out
mount -t ext4 $U_DEV /mnt/u || exit 35
{sums} > /tmp/sums2
cmp /tmp/sums /tmp/sums2 && echo 'remount compare ok'
umount /mnt/u || exit 36
sed 's/^/sum /' /tmp/sums
{stop}",
        start = start("u", ""),
        stop = stop("u"),
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    eprintln!("{out}\n{}", run.stderr_text());
    assert_eq!(values(&out, "guest fsck rc="), ["0"], "{out}");
    assert!(out.contains("remount compare ok"), "{out}");
    assert_stopped(&out, "u");

    let fsck = host_e2fsck(&image);
    eprintln!("host e2fsck:\n{fsck}");
    let sums = values(&out, "sum ");
    assert_eq!(sums.len(), 40, "{out}");
    for line in sums {
        let mut f = line.split_whitespace();
        let (crc, len, name) = (
            f.next().and_then(|v| v.parse::<u32>().ok()),
            f.next().and_then(|v| v.parse::<usize>().ok()),
            f.next().and_then(|n| n.strip_prefix('.')),
        );
        let (Some(crc), Some(len), Some(name)) = (crc, len, name) else {
            panic!("bad cksum line {line:?}");
        };
        let data = host_file(&image, name);
        assert_eq!(data.len(), len, "{name}");
        assert_eq!(posix_cksum(&data), crc, "{name} in the host image");
    }
}

/// The fabric tests' guest: ublk's, with fio and cksum, the NVMe/TCP
/// target and initiator modules shipped, and a 96 MiB namespace on `image`.
fn fabric_vm(image: &Path) -> VmConfig {
    let mut config = ublk_vm(&["fio", "cksum"]);
    config
        .ship_modules
        .extend(["nvmet-tcp".into(), "nvme-tcp".into()]);
    config.disk_size = 96 << 20;
    config.disks = vec![NsDisk::File(image.to_path_buf())];
    config
}

/// Script lines after [`LOAD_UBLK`] for the fabric tests: the NVMe/TCP
/// modules loaded, configfs mounted, loopback up (exits 4, 40, 41).
const FABRIC_SETUP: &str = "modload nvmet-tcp nvme-tcp || exit 4
mount -t configfs none /sys/kernel/config || exit 40
ip link set lo up || exit 41
";

/// The subsystem NQN the guest's nvmet exports `/dev/ublkb0` under.
const NQN: &str = "nqn.2026-12.io.nvme-ublk:fabric";

/// Script lines: the guest's nvmet (configfs mounted, `lo` up, the
/// modules loaded) exports block device `dev` (a shell word) as namespace 1
/// of subsystem [`NQN`] on 127.0.0.1:4420, and the nvme-tcp initiator
/// connects as `nvme connect -t tcp -a 127.0.0.1 -s 4420 -n NQN` does
/// (the options written to `/dev/nvme-fabrics`, the new controller read
/// back): the controller's name in `$C`, its namespace in `$F_DEV`.
/// Prints `connect: `, `ctrl ` and `fabric dev ` lines; fails the script
/// with 42 to 48.
fn nvmet_export(dev: &str) -> String {
    format!(
        "NQN={NQN}
S=/sys/kernel/config/nvmet/subsystems/$NQN
P=/sys/kernel/config/nvmet/ports/1
mkdir $S || exit 42
echo 1 > $S/attr_allow_any_host || exit 42
mkdir $S/namespaces/1 || exit 43
printf '%s' {dev} > $S/namespaces/1/device_path || exit 43
echo 1 > $S/namespaces/1/enable || exit 43
mkdir $P || exit 44
echo tcp > $P/addr_trtype && echo ipv4 > $P/addr_adrfam && echo 127.0.0.1 > $P/addr_traddr \\
  && echo 4420 > $P/addr_trsvcid || exit 44
ln -s $S $P/subsystems/$NQN || exit 45
exec 3<>/dev/nvme-fabrics || exit 46
printf 'transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=%s' $NQN >&3 || exit 47
read -r CONN <&3
exec 3>&-
echo \"connect: $CONN\"
C=nvme${{CONN#instance=}}
C=${{C%%,*}}
echo \"ctrl $C transport $(cat /sys/class/nvme/$C/transport) model $(cat /sys/class/nvme/$C/model)\"
echo \"ctrl nqn $(cat /sys/class/nvme/$C/subsysnqn)\"
F_DEV=
i=0
while [ -z \"$F_DEV\" ] && [ $i -lt 300 ]; do
  F_DEV=$(ls /dev/nvme*n1 2>/dev/null | head -n 1)
  [ -n \"$F_DEV\" ] || sleep 0.1
  i=$((i+1))
done
[ -n \"$F_DEV\" ] || {{ echo 'no fabric namespace' >&2; dmesg | tail -n 30 >&2; exit 48; }}
echo \"fabric dev $F_DEV\"
"
    )
}

/// Script lines undoing [`nvmet_export`]: the initiator disconnects
/// (`nvme disconnect`), `fabric device gone` or `... still there`, then
/// nvmet is torn down in reverse (nvmet closes the exported device) and
/// `nvmet torn down` printed; fails the script with 51 to 53.
fn nvmet_unexport() -> String {
    "echo 1 > /sys/class/nvme/$C/delete_controller || exit 51
i=0
while [ -e $F_DEV ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -e $F_DEV ]; then echo 'fabric device still there'; else echo 'fabric device gone'; fi
rm $P/subsystems/$NQN && rmdir $P || exit 52
echo 0 > $S/namespaces/1/enable && rmdir $S/namespaces/1 && rmdir $S || exit 53
echo 'nvmet torn down'
"
    .to_string()
}

/// Script lines: fio reading `$dev` for a few seconds (`flags`), its JSON
/// report on one line `json {name} {...}`, and the ublk device's stat
/// before and after (`ublkstat {name} before|after ...`).
fn fio_read(name: &str, dev: &str, flags: &str) -> String {
    format!(
        "echo \"ublkstat {name} before $(cat /sys/block/${{U_DEV#/dev/}}/stat)\"
fio --name={name} --filename={dev} --direct=1 --ioengine=libaio {flags} --offset=0 --size=24M \
  --time_based --runtime=5 --ramp_time=1 --randseed=3 --lat_percentiles=1 --output-format=json --output=/tmp/{name}.json \
  > /tmp/{name}.err 2>&1 || {{ cat /tmp/{name}.err /tmp/{name}.json >&2; exit 61; }}
echo \"ublkstat {name} after $(cat /sys/block/${{U_DEV#/dev/}}/stat)\"
echo \"json {name} $(tr -d '\\n' < /tmp/{name}.json)\"
"
    )
}

/// One fio read run as the guest reported it.
struct ReadRun {
    iops: f64,
    /// Submission to completion (fio's `lat`: with nvme-tcp at QD1 most
    /// of the time is spent inside io_submit, so `clat` alone misleads).
    mean_lat_us: f64,
    p50_lat_us: f64,
    mib_s: f64,
    bytes: u64,
}

fn read_run(out: &str, name: &str) -> ReadRun {
    let line = values(out, &format!("json {name} "));
    assert_eq!(line.len(), 1, "{name}: {out}");
    let v: serde_json::Value =
        serde_json::from_str(line[0]).unwrap_or_else(|e| panic!("{name}: fio JSON: {e}"));
    let job = &v["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "{name}: {job}");
    let read = &job["read"];
    let run = ReadRun {
        iops: read["iops"].as_f64().unwrap_or(0.0),
        mean_lat_us: read["lat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        p50_lat_us: read["lat_ns"]["percentile"]["50.000000"]
            .as_f64()
            .unwrap_or(0.0)
            / 1000.0,
        mib_s: read["bw_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20),
        bytes: read["io_bytes"].as_u64().unwrap_or(0),
    };
    assert!(
        run.iops > 0.0 && run.bytes > 0,
        "{name} read nothing: {job}"
    );
    run
}

/// What the ublk device did during run `name` (its stat after minus
/// before): read requests, sectors read, and milliseconds its reads
/// were in flight (fields 1, 3 and 4).
fn ublk_reads(out: &str, name: &str) -> [u64; 3] {
    let fields = |when: &str| -> Vec<u64> {
        let stat = values(out, &format!("ublkstat {name} {when} "));
        assert_eq!(stat.len(), 1, "{name} {when}: {out}");
        let f: Vec<u64> = stat[0]
            .split_whitespace()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("bad stat {stat:?}")))
            .collect();
        assert!(f.len() >= 4, "{stat:?}");
        f
    };
    let (before, after) = (fields("before"), fields("after"));
    [0, 2, 3].map(|i| after[i] - before[i])
}

/// Past one machine, in one: nvme-ublk serves /dev/ublkb0, the kernel's
/// NVMe/TCP target (nvmet, configured through configfs) exports it on a
/// loopback port, and the kernel's nvme-tcp initiator connects (through
/// `/dev/nvme-fabrics`, as `nvme connect` does). fio's verified random
/// writes at QD1 and QD32 pass on the fabric's namespace, a sequence
/// written through it and fsync'd lands in the host image at its offset
/// (and the flush reaches the ublk device), and the same region reads the
/// same through the fabric, through ublk and on the host. In the same
/// boot fio measures what the hops cost: 4 KiB random reads at QD1 and
/// QD32 and 128 KiB reads, on /dev/ublkb0 and through the fabric, with
/// ublk's own time per read (every run's reads reached ublk: its sector
/// count grows by at least what fio read). Then the initiator
/// disconnects, nvmet is torn down, and the daemon stops cleanly.
#[test]
fn nvmet_tcp_exports_the_ublk_device_and_fio_verifies_through_the_fabric() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let config = fabric_vm(&image);
    const SEQ: u32 = 200_000;
    let script = format!(
        "{LOAD_UBLK}{FABRIC_SETUP}{start}\
{export}echo \"sizes $(blockdev --getsize64 $F_DEV) $(blockdev --getsize64 $U_DEV)\"
echo \"fabric cache $(cat /sys/block/${{F_DEV#/dev/}}/queue/write_cache)\"
{qd1}{qd32}\
dd if=$F_DEV bs=1M count=24 2>/dev/null | cksum | sed 's/^/fabric region /'
seq 1 {SEQ} > /tmp/seq
dd if=/tmp/seq of=$F_DEV bs=4096 seek=10240 conv=fsync 2>/dev/null || exit 49
{rr1u}{rr1f}{rr32u}{rr32f}{seq_u}{seq_f}\
echo \"ublk end $(cat /sys/block/${{U_DEV#/dev/}}/stat)\"
{unexport}sync
echo 3 > /proc/sys/vm/drop_caches
dd if=$U_DEV bs=1M count=24 2>/dev/null | cksum | sed 's/^/ublk region /'
{stop}",
        start = start("u", "--queues 2 --depth 64"),
        export = nvmet_export("$U_DEV"),
        unexport = nvmet_unexport(),
        qd1 = fio_verify("qd1", "$F_DEV", "--bs=4k --iodepth=1", "0", "4M", 11),
        qd32 = fio_verify(
            "qd32",
            "$F_DEV",
            "--bsrange=4k-128k --iodepth=32",
            "8M",
            "16M",
            12
        ),
        rr1u = fio_read("rr1_ublk", "$U_DEV", "--rw=randread --bs=4k --iodepth=1"),
        rr1f = fio_read("rr1_fabric", "$F_DEV", "--rw=randread --bs=4k --iodepth=1"),
        rr32u = fio_read("rr32_ublk", "$U_DEV", "--rw=randread --bs=4k --iodepth=32"),
        rr32f = fio_read(
            "rr32_fabric",
            "$F_DEV",
            "--rw=randread --bs=4k --iodepth=32"
        ),
        seq_u = fio_read("seq_ublk", "$U_DEV", "--rw=read --bs=128k --iodepth=8"),
        seq_f = fio_read("seq_fabric", "$F_DEV", "--rw=read --bs=128k --iodepth=8"),
        stop = stop("u"),
    );
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");

    assert_eq!(values(&out, "u serving "), ["/dev/ublkb0"], "{out}");
    let conn = values(&out, "connect: ");
    assert!(
        conn.len() == 1 && conn[0].starts_with("instance=") && conn[0].contains(",cntlid="),
        "{out}"
    );
    let ctrl = values(&out, "ctrl ");
    assert!(
        ctrl.iter().any(|l| l.contains(" transport tcp ")),
        "a TCP controller: {out}"
    );
    assert_eq!(values(&out, "ctrl nqn "), [NQN], "{out}");
    // The fabric's namespace is the ublk device: same size, and a
    // volatile write cache (nvmet passes flushes on).
    let sizes = values(&out, "sizes ");
    assert_eq!(sizes.len(), 1, "{out}");
    let s: Vec<&str> = sizes[0].split_whitespace().collect();
    assert_eq!(
        s,
        [(96u64 << 20).to_string(), (96u64 << 20).to_string()],
        "{out}"
    );
    assert_eq!(values(&out, "fabric cache "), ["write back"], "{out}");
    for job in ["qd1", "qd32"] {
        assert!(
            out.contains(&format!("{job}: (groupid=0, jobs=1): err= 0")),
            "{job}: {out}"
        );
    }

    // What each hop costs, in this boot.
    let runs: Vec<(&str, ReadRun)> = [
        "rr1_ublk",
        "rr1_fabric",
        "rr32_ublk",
        "rr32_fabric",
        "seq_ublk",
        "seq_fabric",
    ]
    .into_iter()
    .map(|n| (n, read_run(&out, n)))
    .collect();
    eprintln!("run            IOPS  latency mean   p50    MiB/s  ublk ms/read");
    for (name, r) in &runs {
        let [ios, sectors, ticks] = ublk_reads(&out, name);
        eprintln!(
            "{name:<12} {:>7.0} {:>9.0} us {:>6.0} us {:>7.1} {:>8.2}",
            r.iops,
            r.mean_lat_us,
            r.p50_lat_us,
            r.mib_s,
            ticks as f64 / ios.max(1) as f64
        );
        // Every byte fio read, directly or through the fabric, was read
        // from ublk (fio's count leaves out the ramp).
        assert!(
            sectors >= r.bytes / 512,
            "{name}: ublk read {sectors} sectors, fio {} bytes",
            r.bytes
        );
    }

    // The fsync through the fabric reached ublk as a flush (stat field 16).
    let end = values(&out, "ublk end ");
    let flushes = end
        .first()
        .and_then(|l| l.split_whitespace().nth(15))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("ublk stat: {out}"));
    assert!(flushes > 0, "flushes through the fabric: {out}");

    assert_eq!(values(&out, "fabric device "), ["gone"], "{out}");
    assert!(out.contains("nvmet torn down"), "{out}");
    assert_stopped(&out, "u");
    assert_served_cleanly(&log, 2);

    // The host image: fio's region as read through the fabric and through
    // ublk, and the sequence at 40 MiB where it was written.
    let crc = |label: &str| -> u32 {
        values(&out, label)
            .first()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {label}: {out}"))
    };
    let image_crc = posix_cksum(&image_bytes(&image, 0, 24 << 20));
    assert_eq!(crc("fabric region "), image_crc);
    assert_eq!(crc("ublk region "), image_crc);
    let seq = seq_bytes(SEQ);
    assert_eq!(image_bytes(&image, 40 << 20, seq.len()), seq);
}

/// The 4 KiB block the guest's acknowledged writer writes as block `i`:
/// `ack I` lines, cut at 4096 bytes (what `yes "ack I" | head -c 4096`
/// prints).
fn ack_block(i: usize) -> Vec<u8> {
    format!("ack {i}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(4096)
        .collect()
}

/// Where the acknowledged writer's blocks start, in 4 KiB blocks (32 MiB).
const ACK_BASE: usize = 8192;

/// nvme-ublk killed (SIGKILL) while nvmet exports its device and the
/// nvme-tcp initiator has I/O in flight through it: fio's QD32 random
/// writes through the fabric end with I/O errors within minutes (nothing
/// hangs: fio under `timeout`, the waits bounded), as does a writer that
/// writes numbered 4 KiB blocks one at a time, each written O_DIRECT and
/// fsync'd (a flush through the fabric) before its number is logged as
/// acknowledged. Nothing is left in flight at the initiator; it
/// disconnects and nvmet is torn down. A new daemon on the same
/// controller serves a new device, nvmet exports it, the initiator
/// connects again: every acknowledged block reads back through the
/// fabric as written, fio's verified writes pass, the daemon stops
/// cleanly; and the host image holds every acknowledged block.
#[test]
fn a_daemon_killed_under_an_nvmet_export_fails_the_fabric_io_and_a_new_one_serves_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("ns1.img");
    let config = fabric_vm(&image);
    const MAX_ACKS: usize = 4096;
    let script = format!(
        "{LOAD_UBLK}{FABRIC_SETUP}{start_a}{export_a}\
rm -f /tmp/acked; touch /tmp/acked
(
  i=0
  while [ $i -lt {MAX_ACKS} ]; do
    yes \"ack $i\" | head -c 4096 > /tmp/blk
    dd if=/tmp/blk of=$F_DEV bs=4096 seek=$(({ACK_BASE} + i)) oflag=direct conv=fsync \
      2>/dev/null || exit 0
    echo $i >> /tmp/acked
    i=$((i+1))
  done
) &
ACK_PID=$!
timeout 300 fio --name=load --filename=$F_DEV --direct=1 --ioengine=libaio --rw=randwrite \
  --bs=4k --iodepth=32 --offset=0 --size=24M --time_based --runtime=200 --eta=never \
  > /tmp/load.fio 2>&1 &
FIO_PID=$!
sleep 8
echo \"acked before the kill $(wc -l < /tmp/acked)\"
kill -KILL $A_PID
wait $FIO_PID
echo \"load fio rc=$?\"
i=0
while kill -0 $ACK_PID 2>/dev/null && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
if kill -0 $ACK_PID 2>/dev/null; then echo 'writer hung'; kill -KILL $ACK_PID; else echo 'writer ended'; fi
wait $ACK_PID
echo \"acked total $(wc -l < /tmp/acked)\"
wait $A_PID
echo \"killed daemon rc=$?\"
grep '^load: (groupid' /tmp/load.fio
grep -c 'Input/output error' /tmp/load.fio | sed 's/^/io errors /'
echo \"fabric inflight $(cat /sys/block/${{F_DEV#/dev/}}/inflight)\"
{unexport}\
{start_b}{export_b}\
N=$(wc -l < /tmp/acked)
dd if=$F_DEV bs=4096 skip={ACK_BASE} count=$N iflag=direct 2>/dev/null | cksum | sed 's/^/acked region /'
{verify}{unexport}{stop_b}",
        start_a = start("a", "--queues 2 --depth 64"),
        export_a = nvmet_export("$A_DEV"),
        unexport = nvmet_unexport(),
        export_b = nvmet_export("$B_DEV"),
        start_b = start("b", "--queues 2 --depth 64"),
        verify = fio_verify("again", "$F_DEV", "--bs=4k --iodepth=8", "0", "8M", 21),
        stop_b = stop("b"),
    );
    let run = run_ok_past_the_cancel_race(&config, &script);
    let out = run.stdout_text();
    let log = run.stderr_text();
    eprintln!("{out}\n{log}");
    assert_kernel_intact(&run);

    assert_eq!(values(&out, "a serving "), ["/dev/ublkb0"], "{out}");
    // fio's I/O through the fabric failed: not 0, not a timeout's 124 or
    // 143 (something hung).
    let fio_rc = values(&out, "load fio rc=");
    assert_eq!(fio_rc.len(), 1, "{out}");
    assert!(!["0", "124", "143"].contains(&fio_rc[0]), "{out}");
    let load = values(&out, "load: (groupid");
    assert!(
        load.len() == 1 && load[0].contains("err=") && !load[0].contains("err= 0"),
        "fio reports the error: {out}"
    );
    let errors: Vec<u32> = values(&out, "io errors ")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(errors.len() == 1 && errors[0] > 0, "{out}");
    assert_eq!(values(&out, "writer "), ["ended"], "{out}");
    assert_eq!(values(&out, "killed daemon rc="), ["137"], "{out}");
    // Every request the initiator sent was answered.
    let inflight: Vec<Vec<&str>> = values(&out, "fabric inflight ")
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(inflight, [["0", "0"]], "{out}");
    // Torn down twice: after the kill, and at the end.
    assert_eq!(values(&out, "fabric device "), ["gone", "gone"], "{out}");
    assert_eq!(
        out.lines().filter(|l| *l == "nvmet torn down").count(),
        2,
        "{out}"
    );

    // The acknowledged blocks: some before the kill, and all of them in
    // order (the writer stops at its first failure).
    let before: usize = values(&out, "acked before the kill ")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let n: usize = values(&out, "acked total ")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(before > 0 && n >= before && n < MAX_ACKS, "{out}");
    let expected: Vec<u8> = (0..n).flat_map(ack_block).collect();

    // The new daemon serves through a new export: the acknowledged blocks
    // read back as written, fio's verified writes pass.
    let b = values(&out, "b serving ");
    assert_eq!(b.len(), 1, "{out}");
    assert_ne!(b[0], "/dev/ublkb0", "the dead device keeps its id: {out}");
    let crc: u32 = values(&out, "acked region ")
        .first()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no acked region: {out}"));
    assert_eq!(crc, posix_cksum(&expected), "through the fabric: {out}");
    assert!(out.contains("again: (groupid=0, jobs=1): err= 0"), "{out}");
    assert_stopped(&out, "b");
    // The log on stderr is the new daemon's (the killed one's is not
    // shown): both its queues served cleanly.
    assert_served_cleanly(&log, 2);

    // The host image holds every acknowledged block.
    let at = ACK_BASE as u64 * 4096;
    let got = image_bytes(&image, at, expected.len());
    if let Some(i) = (0..n).find(|&i| got[i * 4096..(i + 1) * 4096] != ack_block(i)[..]) {
        panic!("acknowledged block {i} of {n} is not in the host image");
    }
}

/// Power cuts under ext4 on /dev/ublkb0: namespace 1 behind QEMU's
/// blklogwrites, a seeded workload of creates, appends, overwrites,
/// truncates, atomic replaces (write, fsync, rename over), renames,
/// unlinks and unsynced scratch files, a marker after every step's fsyncs
/// (`vm_tests::fscrash`). On the host the log replays to QEMU's image,
/// and at every chosen cut point (flushes, right after markers, random
/// prefixes, random subsets of the unflushed writes) e2fsck replays the
/// journal, finds the filesystem clean, and every file whose fsync had
/// returned (and was not being changed at the cut) has its content; names
/// unlinked or renamed away are gone; nothing else is there.
#[test]
fn ext4_on_nvme_ublk_is_clean_and_keeps_fsynced_files_at_every_replayed_power_cut() {
    use vm_tests::fscrash::{self, CutCounts, CutKind, Op, Plan};
    use vm_tests::logwrites::WriteLog;

    const STEPS: usize = 120;
    let plan = Plan::generate(12, STEPS);
    let mut config = ublk_vm(&["mke2fs", "e2fsck", "cksum"]);
    config
        .ship_modules
        .extend(["crc32c_generic".into(), "ext4".into()]);
    config.disks = vec![NsDisk::Logged];
    config.disk_size = fscrash::DISK_SIZE;
    // A hang guard; the run takes a few minutes under TCG on a busy host.
    config.timeout = std::time::Duration::from_secs(1200);
    let script = format!(
        "{LOAD_UBLK}\
modload crc32c_generic ext4 || exit 4
{start}{workload}{stop}",
        // QEMU's NVMe controller ignores the FUA bit (it hands writes to
        // its block layer without flags, so blklogwrites logs a FUA write
        // as a plain one, which a volatile cut may drop): without FUA
        // offered, the kernel sends a write and a flush instead, which
        // the log and the cuts model.
        start = start("u", "--no-fua"),
        workload = plan.script("$U_DEV"),
        stop = stop("u"),
    );
    let started = std::time::Instant::now();
    let run = run_ok(&config, &script);
    let out = run.stdout_text();
    eprintln!(
        "{out}\n{}\nguest run: {:.0?}",
        run.stderr_text(),
        started.elapsed()
    );
    assert!(out.contains(&format!("workload: done {STEPS}")), "{out}");
    assert_eq!(values(&out, "guest fsck rc="), ["0"], "{out}");
    assert_stopped(&out, "u");

    let log_path = run.write_log(1).expect("namespace 1 is logged");
    let bytes = std::fs::read(log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let log = WriteLog::parse(bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        log.unaccounted_bytes, 0,
        "entries past the superblock's count"
    );
    let image = std::fs::read(run.disk(1).expect("image")).expect("image");
    assert!(
        log.replay_all(image.len()).expect("replay") == image,
        "replaying the whole log does not give QEMU's image"
    );
    let markers = fscrash::find_markers(&log, &plan).unwrap_or_else(|e| panic!("{e}"));

    let counts = CutCounts {
        flush: 30,
        marker: 20,
        prefix: 30,
        volatile: 40,
    };
    let cuts = fscrash::choose_cuts(&log, &markers, counts, 77);
    let dir = tempfile::tempdir().expect("temp dir");
    let cut_image = dir.path().join("cut.img");
    let dump = dir.path().join("dump");
    let mut base = vec![0u8; image.len()];
    let mut base_len = 0;
    let (mut violations, mut replayed, mut orphans, mut dropped) = (Vec::new(), 0, 0, 0);
    let mut checked = fscrash::TreeCheck::default();
    let mut kinds = std::collections::BTreeMap::<CutKind, usize>::new();
    let started = std::time::Instant::now();
    for cut in &cuts {
        *kinds.entry(cut.kind).or_default() += 1;
        dropped += cut.dropped.len();
        let bytes = fscrash::replay_cut(&log, cut, &mut base, &mut base_len)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&cut_image, &bytes[..fscrash::FS_BYTES as usize]).expect("cut image");
        let n = cut.last_marker(&markers).expect("cuts follow marker 0");
        let what = format!(
            "{:?} cut of {} entries ({} dropped), last marker {n}",
            cut.kind,
            cut.len,
            cut.dropped.len()
        );
        let (expect, pair) = fscrash::expected_at(&plan, &markers, n, cut.len);
        match fscrash::fsck_and_read(&cut_image, &dump) {
            Err(e) => violations.push(format!("{what}: {e}")),
            Ok(o) => {
                replayed += usize::from(o.journal_replayed);
                orphans += usize::from(o.orphans_released);
                match fscrash::check_tree(&o.files, &expect, pair.as_ref()) {
                    Ok(c) => {
                        checked.exact += c.exact;
                        checked.absent += c.absent;
                        checked.in_flight += c.in_flight;
                    }
                    Err(v) => violations.push(format!("{what}: {}", v.join("; "))),
                }
            }
        }
    }
    eprintln!(
        "ext4 power cuts: {} entries in the log, {} markers; {} cuts {kinds:?} checked in {:.0?}, \
         {dropped} unflushed writes dropped; journal replayed at {replayed}, orphans released at \
         {orphans}; {} files compared exactly, {} names checked absent, {} in flight; {} violations",
        log.entries.len(),
        markers.len(),
        cuts.len(),
        started.elapsed(),
        checked.exact,
        checked.absent,
        checked.in_flight,
        violations.len()
    );
    // The negative control: after the marker of each step that created
    // or replaced a non-empty file, with the step's own writes lost (a
    // device that acknowledged its flushes without keeping the data), the
    // checks must fail.
    let control: Vec<usize> = plan
        .ops
        .iter()
        .enumerate()
        .filter(
            |(_, op)| matches!(op, Op::Create { size, .. } | Op::Replace { size, .. } if *size > 0),
        )
        .map(|(i, _)| i + 1)
        .take(6)
        .collect();
    let mut caught = Vec::new();
    for &k in &control {
        let cut = fscrash::without_step_writes(&log, &markers, k);
        let (mut b, mut b_len) = (vec![0u8; image.len()], 0);
        let bytes =
            fscrash::replay_cut(&log, &cut, &mut b, &mut b_len).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&cut_image, &bytes[..fscrash::FS_BYTES as usize]).expect("cut image");
        let (expect, pair) = fscrash::expected_at(&plan, &markers, k, cut.len);
        let failed = match fscrash::fsck_and_read(&cut_image, &dump) {
            Err(e) => Some(e),
            Ok(o) => fscrash::check_tree(&o.files, &expect, pair.as_ref())
                .err()
                .map(|v| v.join("; ")),
        };
        caught.push((k, failed));
    }
    eprintln!("control (step writes lost): {caught:#?}");
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(cuts.len() >= 20, "{} cuts", cuts.len());
    assert!(control.len() >= 3, "{:?}", plan.ops);
    assert!(
        caught.iter().all(|(_, failed)| failed.is_some()),
        "a lost step passed the checks: {caught:#?}"
    );
    // The cuts hit a mounted filesystem whose journal needed replaying.
    assert!(
        replayed >= cuts.len() / 2,
        "journal replayed at {replayed} cuts"
    );
    assert!(dropped > 0 && checked.exact > 0, "{dropped} {checked:?}");
}
