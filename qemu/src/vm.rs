//! One guest run: QEMU q35 with an emulated Intel IOMMU and an NVMe
//! controller, a command run in it, and what came out.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::host::Qemu;
use crate::initramfs::Archive;
use crate::kernel::{self, GuestKernel};
use crate::qmp::Qmp;
use crate::versions::{self, Suite};
use crate::{cache_dir, guest_build, host};

/// The PCI address the first NVMe controller is pinned to in the guest.
pub const NVME_BDF: &str = "0000:00:03.0";
/// Its address behind the root port ([`VmConfig::root_port`]).
pub const NVME_BDF_ROOT_PORT: &str = "0000:01:00.0";
/// What the guest's init prints on the console first.
const INIT_MARKER: &str = "vm-init: started";
/// What the guest's init prints on the console before its watchdog dumps
/// blocked tasks and CPU backtraces (guest/init.sh).
const WATCHDOG_MARKER: &str = "vm-init: watchdog after";
/// Console lines that start a kernel's report of trouble.
const KERNEL_TROUBLE: [&str; 6] = [
    "rcu: INFO",
    "BUG:",
    "WARNING:",
    "INFO: task",
    "Oops",
    "watchdog: ",
];

/// The index of the first line of `console` that starts a kernel's report
/// of trouble.
fn first_trouble(console: &[&str]) -> Option<usize> {
    console
        .iter()
        .position(|l| KERNEL_TROUBLE.iter().any(|m| l.contains(m)))
}

/// When the guest's watchdog dumps its blocked tasks and CPUs (seconds
/// after init starts): a minute before the host gives up on a run, or
/// halfway through a short one, so a hung guest leaves stacks behind.
fn watchdog_secs(timeout: Duration) -> u64 {
    let secs = timeout.as_secs();
    secs.saturating_sub(60).max(secs / 2)
}
/// The default serial number the harness gives the controller.
pub const DEFAULT_SERIAL: &str = "NVMEVFIO0001";

/// nvme device properties that belong to a namespace (`nvme-ns`), not to
/// the controller; `--nvme` routes them there.
const NAMESPACE_PROPS: &[&str] = &[
    "logical_block_size",
    "physical_block_size",
    "min_io_size",
    "opt_io_size",
    "discard_granularity",
    "ms",
    "mset",
    "pi",
    "pil",
    "pif",
    "eui64",
    "uuid",
    "nguid",
    "mssrl",
    "mcl",
    "msrc",
    "write-cache",
];

/// How long [`RunningGuest::qmp`] waits for QEMU's monitor to answer.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of namespace `nsid`'s drive: QEMU's block backend, as QMP
/// commands (`block_set_io_throttle`, `query-blockstats`) and HMP
/// `qemu-io` take it.
pub fn drive_id(nsid: u32) -> String {
    format!("nvm{nsid}")
}

/// The id of the NVMe controller device (`device_del`, `query-pci`).
pub const NVME_DEVICE_ID: &str = "nvme0";

/// Which driver owns the NVMe controllers once the guest is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestDriver {
    /// Bound to vfio-pci, for the project's driver.
    #[default]
    Vfio,
    /// Left to the kernel's nvme driver, for comparisons.
    Kernel,
}

/// How TCG runs the guest's vCPUs (`-accel tcg,thread=...`).
///
/// With one host thread per vCPU, QEMU 7.2 and 10.0 can crash when the
/// guest changes the memory map (a PCI command register write, a function
/// reset: every open and close of a device through vfio-pci) while another
/// vCPU is in the middle of an MMIO access: that vCPU looks up its stale
/// TLB entry's section in the new map (7.2: SIGSEGV in
/// `memory_region_dispatch_write`; 10.0: the assertion in
/// `iotlb_to_section`). One thread for all vCPUs never runs a vCPU while
/// another changes the map. docs/TESTING.md has the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcgThreads {
    /// One host thread per vCPU (QEMU's default): guest threads really run
    /// in parallel. For benchmarks.
    #[default]
    Multi,
    /// All vCPUs on one host thread, in turn.
    Single,
}

impl TcgThreads {
    /// QEMU's `-accel` option for it.
    pub fn accel(self) -> &'static str {
        match self {
            TcgThreads::Multi => "tcg,thread=multi",
            TcgThreads::Single => "tcg,thread=single",
        }
    }
}

/// How the guest kernel uses the emulated IOMMU for the devices its own
/// drivers own (vfio-pci always gets a translated domain of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IommuMode {
    /// The kernel's default: DMA through translated domains (each I/O of
    /// a kernel driver is mapped and unmapped; invalidation as the kernel
    /// is configured, lazy on Debian's).
    #[default]
    Translated,
    /// `iommu.strict=1`: translated, every unmap invalidated at once.
    Strict,
    /// `iommu=pt`: kernel drivers get an identity domain and map nothing
    /// per I/O; devices given to vfio-pci still get their own domain.
    Passthrough,
}

impl IommuMode {
    /// The kernel command line word that selects this mode, if any.
    pub fn kernel_arg(self) -> Option<&'static str> {
        match self {
            IommuMode::Translated => None,
            IommuMode::Strict => Some("iommu.strict=1"),
            IommuMode::Passthrough => Some("iommu=pt"),
        }
    }
}

/// Where the command's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Captured into [`VmRun`].
    #[default]
    Capture,
    /// Streamed to the host's stdout and stderr as they arrive (and captured).
    Inherit,
    /// Stderr streamed to the host's stderr as it arrives; stdout only
    /// captured (a guest job that reports progress on stderr and results
    /// on stdout).
    StreamStderr,
}

/// What backs one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsDisk {
    /// A raw image file, created with the configured size if missing, kept.
    File(PathBuf),
    /// A fresh sparse temporary image, removed with the [`VmRun`].
    Temp,
    /// QEMU's null-co driver: no storage, reads return zeroes.
    Null,
    /// A fresh sparse temporary image behind QEMU's blklogwrites filter:
    /// every write and flush that reaches the image is also appended to a
    /// log file in dm-log-writes' format ([`VmRun::write_log`]), in the
    /// order the image completed them. Both files are removed with the
    /// [`VmRun`]. The drive keeps the write cache on (`cache=writeback`),
    /// so the controller reports a volatile write cache and Flush matters.
    Logged,
}

/// Sector size of the write logs of [`NsDisk::Logged`] namespaces (the
/// unit of their entries' sector fields; blklogwrites' default).
pub const WRITE_LOG_SECTOR: u32 = 512;

/// The files behind one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backing {
    image: PathBuf,
    /// The blklogwrites log, for [`NsDisk::Logged`].
    log: Option<PathBuf>,
}

/// Everything about a guest run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Backing of each namespace, nsid 1 first; missing ones are [`NsDisk::Temp`].
    pub disks: Vec<NsDisk>,
    /// Number of namespaces (at least the number of `disks`).
    pub namespaces: u32,
    /// Size in bytes of created images and null devices.
    pub disk_size: u64,
    /// Extra `nvme` device properties (`mdts=3`, `logical_block_size=4096`...).
    pub nvme_props: Vec<(String, String)>,
    /// Extra properties of single namespaces, index 0 for nsid 1 (after
    /// the namespace properties of `nvme_props`, so they win), e.g. 4096-byte
    /// LBAs on namespace 2 only.
    pub ns_props: Vec<Vec<(String, String)>>,
    /// The controller's serial number.
    pub serial: String,
    /// Host files put in the guest: (host path, guest path).
    pub copies: Vec<(PathBuf, String)>,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Guest vCPUs.
    pub smp: u32,
    /// Hard wall-clock limit for the whole run.
    pub timeout: Duration,
    /// Who owns the controllers.
    pub driver: GuestDriver,
    /// Use KVM instead of TCG.
    pub kvm: bool,
    /// How TCG runs the vCPUs (ignored with `kvm`).
    pub tcg_threads: TcgThreads,
    /// Give the guest an IOMMU (vfio-pci needs one).
    pub iommu: bool,
    /// How the guest kernel uses it (with `iommu`).
    pub iommu_mode: IommuMode,
    /// The vCPU model (`-cpu`); None: QEMU's default (qemu64 under TCG,
    /// which lacks SSE4.2 and AVX; `max` has them).
    pub cpu: Option<String>,
    /// 2 MiB huge pages to reserve in the guest.
    pub hugepages: u32,
    /// Host executables put in the guest at the same paths, with the shared
    /// libraries `ldd` lists (e.g. `fio`, for the kernel-driver side of a
    /// comparison). Installed from Debian's packages when missing.
    pub host_tools: Vec<String>,
    /// A blkdebug configuration (the text of its config file) put between
    /// namespace 1 and its image, to make chosen I/O fail.
    pub blkdebug: Option<String>,
    /// Extra `-drive` options of namespace 1's drive (e.g.
    /// `throttling.iops-total=100`, so commands wait inside QEMU).
    pub drive_props: Vec<(String, String)>,
    /// Put the controller behind a PCIe root port (`pcie-root-port`, id
    /// `rp0`, at 00:04.0) instead of on the root bus at 00:03.0: it is
    /// then at 0000:01:00.0 and can be hot-unplugged (`device_del`).
    pub root_port: bool,
    /// Extra kernel command line words.
    pub kernel_args: Vec<String>,
    /// Where to keep the guest console log (default: inside the run folder).
    pub console_log: Option<PathBuf>,
    /// Where the command's output goes.
    pub output: OutputMode,
    /// Modules put in `/lib/modules` with what they need, not loaded (by
    /// name, each one of [`kernel::OPTIONAL_ROOTS`]): the guest loads
    /// them with `modload NAME...`, which insmods what `NAME`'s load order
    /// (`/lib/modules/NAME.order`) lists and is not loaded yet, like
    /// modprobe. A kernel without one of them fails the run's setup
    /// (ublk_drv, VDUSE and nvmet are in 6.12, not in Debian's 6.1).
    pub ship_modules: Vec<String>,
    /// QEMU trace events to enable (`-trace NAME`, patterns allowed, e.g.
    /// `pci_nvme_read`): with Debian's QEMU (the `log` trace backend)
    /// they go to QEMU's stderr, [`VmRun::qemu_output`].
    pub trace_events: Vec<String>,
    /// The guest kernel (None: the harness-wide default, see [`versions`]).
    pub kernel: Option<Suite>,
    /// Load the modules of a VDUSE block device with ext4 on it at boot
    /// ([`kernel::VDUSE_ROOTS`] and [`kernel::EXT4_ROOTS`]); an error with
    /// a kernel that has none.
    pub vduse: bool,
    /// The QEMU (None: the harness-wide default, see [`versions`]).
    pub qemu: Option<Suite>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            disks: Vec::new(),
            namespaces: 1,
            disk_size: 1 << 30,
            nvme_props: Vec::new(),
            ns_props: Vec::new(),
            serial: DEFAULT_SERIAL.to_string(),
            copies: Vec::new(),
            mem_mib: 1024,
            smp: 2,
            timeout: Duration::from_secs(120),
            driver: GuestDriver::Vfio,
            kvm: false,
            tcg_threads: TcgThreads::default(),
            iommu: true,
            iommu_mode: IommuMode::default(),
            cpu: None,
            hugepages: 0,
            host_tools: Vec::new(),
            blkdebug: None,
            drive_props: Vec::new(),
            root_port: false,
            kernel_args: Vec::new(),
            console_log: None,
            output: OutputMode::Capture,
            ship_modules: Vec::new(),
            trace_events: Vec::new(),
            kernel: None,
            vduse: false,
            qemu: None,
        }
    }
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The command ran and exited with this status.
    Exited(i32),
    /// The wall-clock limit passed; QEMU was killed.
    TimedOut(Duration),
    /// The guest's init failed before the command ran.
    SetupFailed(String),
    /// QEMU ended without the guest reporting a status (panic, crash).
    NoStatus(String),
}

/// The outcome of a run. Temporary disks live as long as this value.
#[derive(Debug)]
pub struct VmRun {
    /// How the guest ended.
    pub exit: GuestExit,
    /// The command's stdout.
    pub stdout: Vec<u8>,
    /// The command's stderr.
    pub stderr: Vec<u8>,
    /// The guest console log file.
    pub console_log: PathBuf,
    /// The image behind each namespace (None for null-co).
    pub disks: Vec<Option<PathBuf>>,
    /// The blklogwrites log of each namespace (None unless [`NsDisk::Logged`]).
    pub write_logs: Vec<Option<PathBuf>>,
    /// The guest kernel's Debian package.
    pub kernel_package: String,
    /// QEMU's `--version` line.
    pub qemu_version: String,
    /// QEMU's own stdout and stderr (its warnings, `-trace` output).
    pub qemu_log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One of the streams a running guest writes, for
/// [`RunningGuest::wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
    /// The guest kernel's console.
    Console,
    /// QEMU's own stdout and stderr (its warnings, `-trace` output).
    Qemu,
}

/// A guest while it runs, handed to the closure of
/// [`VmConfig::run_with`]: its output so far, waits for a line in it, and
/// QEMU's monitor.
#[derive(Debug)]
pub struct RunningGuest {
    qmp_socket: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    console: PathBuf,
    qemu_log: PathBuf,
    started: Instant,
    done: Arc<AtomicBool>,
}

impl RunningGuest {
    /// A new session on QEMU's monitor (QMP, negotiated). Each call opens
    /// its own connection; QEMU takes one at a time on the socket, so drop
    /// one before opening another.
    pub fn qmp(&self) -> Result<Qmp> {
        Ok(Qmp::connect(&self.qmp_socket, QMP_TIMEOUT)?)
    }

    /// The monitor's unix socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether QEMU has exited.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// What `stream` holds so far (lossy text).
    pub fn output(&self, stream: GuestStream) -> String {
        let path = match stream {
            GuestStream::Stdout => &self.stdout,
            GuestStream::Stderr => &self.stderr,
            GuestStream::Console => &self.console,
            GuestStream::Qemu => &self.qemu_log,
        };
        fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a line of `stream` contains `needle` and returns that
    /// line; fails when `timeout` passes or QEMU exits first.
    pub fn wait_for(&self, stream: GuestStream, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_nth(stream, needle, 1, timeout)
    }

    /// Like [`RunningGuest::wait_for`], for the `n`th such line (from 1).
    pub fn wait_for_nth(
        &self,
        stream: GuestStream,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            // Read before looking at the flag: output written just before
            // QEMU exited still counts.
            let finished = self.finished();
            let text = self.output(stream);
            if let Some(line) = text
                .lines()
                .filter(|l| l.contains(needle))
                .nth(n.max(1) - 1)
            {
                return Ok(line.trim_end().to_string());
            }
            let why = if finished {
                "QEMU exited"
            } else if start.elapsed() >= timeout {
                "the time ran out"
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            return Err(Error::Wait(format!(
                "no line {n} with {needle:?} in the guest's {stream:?} after {:.1?}: {why}",
                start.elapsed()
            )));
        }
    }
}

impl VmRun {
    /// The command's exit code, if it ran to the end.
    pub fn code(&self) -> Option<i32> {
        match self.exit {
            GuestExit::Exited(code) => Some(code),
            _ => None,
        }
    }

    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The guest console log (lossy).
    pub fn console(&self) -> String {
        fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// QEMU's own output (lossy): its warnings and the events of
    /// [`VmConfig::trace_events`].
    pub fn qemu_output(&self) -> String {
        fs::read(&self.qemu_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The image file of namespace `nsid` (1-based).
    pub fn disk(&self, nsid: usize) -> Option<&Path> {
        self.disks.get(nsid.checked_sub(1)?)?.as_deref()
    }

    /// The write log (dm-log-writes format) of namespace `nsid` (1-based),
    /// if it is an [`NsDisk::Logged`] one.
    pub fn write_log(&self, nsid: usize) -> Option<&Path> {
        self.write_logs.get(nsid.checked_sub(1)?)?.as_deref()
    }

    /// The guest kernel's first report of trouble on the console (an oops,
    /// a BUG, a WARNING, an RCU stall, a hung task, a lockup) and the lines
    /// after it, if there is one.
    pub fn kernel_trouble(&self) -> Option<String> {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        first_trouble(&lines).map(|i| lines[i..lines.len().min(i + 40)].join("\n"))
    }

    /// A one-paragraph description for test failure messages: the exit,
    /// the command's output, and from the console the first sign of kernel
    /// trouble, the watchdog's dump of blocked tasks and CPUs (when the run
    /// came near its timeout) and the tail.
    pub fn describe(&self) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let from = |start: Option<usize>, count: usize| -> Option<String> {
            start.map(|i| lines[i..lines.len().min(i + count)].join("\n"))
        };
        let trouble = from(first_trouble(&lines), 60);
        let dump = from(lines.iter().position(|l| l.contains(WATCHDOG_MARKER)), 250);
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        let mut text = format!(
            "guest exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            self.exit,
            self.stdout_text(),
            self.stderr_text(),
        );
        if let Some(trouble) = trouble {
            text.push_str(&format!(
                "--- console (first kernel trouble) ---\n{trouble}\n"
            ));
        }
        if let Some(dump) = dump {
            text.push_str(&format!("--- console (watchdog dump) ---\n{dump}\n"));
        }
        text.push_str(&format!("--- console (tail) ---\n{tail}"));
        text
    }
}

impl VmConfig {
    /// The guest kernel this configuration runs.
    pub fn kernel_suite(&self) -> Result<Suite> {
        self.kernel.map_or_else(versions::default_kernel, Ok)
    }

    /// The QEMU this configuration runs.
    pub fn qemu_suite(&self) -> Result<Suite> {
        self.qemu.map_or_else(versions::default_qemu, Ok)
    }

    /// Installs (or finds in the cache) the QEMU and the guest kernel this
    /// configuration runs.
    pub fn prepare_peers(&self) -> Result<(Qemu, GuestKernel)> {
        let cache = cache_dir();
        let qemu = host::ensure_qemu(self.qemu_suite()?, &cache)?;
        let kernel = kernel::ensure_kernel(&cache, self.kernel_suite()?)?;
        Ok((qemu, kernel))
    }

    /// Installs what is missing, builds the guest binaries, boots the guest,
    /// runs `cmd` in it and returns how it went. A guest that dies before
    /// its init starts (a kernel that fails to boot, e.g. under heavy host
    /// load) is booted once more; a command that ran is never run again.
    pub fn run<S: AsRef<str>>(&self, cmd: &[S]) -> Result<VmRun> {
        self.run_with(cmd, |_| ()).map(|(run, ())| run)
    }

    /// Like [`VmConfig::run`], and runs `act` on a thread of its own while
    /// the guest runs, from QEMU's start: it can wait for lines of the
    /// guest's output and use QEMU's monitor ([`RunningGuest`]). Returns
    /// the run and what `act` returned once both QEMU and `act` are done.
    /// If `act` panics, QEMU is killed and the panic goes on once QEMU is
    /// gone. On a second boot (see [`VmConfig::run`]) `act` runs again.
    pub fn run_with<S, F, T>(&self, cmd: &[S], act: F) -> Result<(VmRun, T)>
    where
        S: AsRef<str>,
        F: Fn(&RunningGuest) -> T + Sync,
        T: Send,
    {
        let (run, out) = self.run_once(cmd, &act)?;
        if matches!(run.exit, GuestExit::NoStatus(_)) && !run.console().contains(INIT_MARKER) {
            log::warn!(
                "the guest died before its init started; booting again (console tail: {})",
                run.console()
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            return self.run_once(cmd, &act);
        }
        Ok((run, out))
    }

    fn run_once<S, T>(
        &self,
        cmd: &[S],
        act: &(dyn Fn(&RunningGuest) -> T + Sync),
    ) -> Result<(VmRun, T)>
    where
        S: AsRef<str>,
        T: Send,
    {
        self.validate()?;
        let (qemu, kernel) = self.prepare_peers()?;
        let bins = guest_build::guest_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("nvme-vm-")
            .tempdir()
            .map_err(|e| Error::io("creating temporary folder in", std::env::temp_dir(), e))?;
        let run_dir = dir.path();

        let blkdebug_conf = match &self.blkdebug {
            Some(text) => {
                let p = run_dir.join("blkdebug.conf");
                fs::write(&p, text).map_err(|e| Error::io("writing", &p, e))?;
                Some(p)
            }
            None => None,
        };
        let initrd = run_dir.join("initrd.cpio");
        self.write_initramfs(&initrd, &kernel, &bins, cmd)?;
        let backings = self.prepare_disks(run_dir)?;

        let console_log = self
            .console_log
            .clone()
            .unwrap_or_else(|| run_dir.join("console.log"));
        if let Some(parent) = console_log.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        let stdout_path = run_dir.join("stdout");
        let stderr_path = run_dir.join("stderr");
        let status_path = run_dir.join("status");
        for p in [&console_log, &stdout_path, &stderr_path, &status_path] {
            File::create(p).map_err(|e| Error::io("creating", p, e))?;
        }

        let qmp_socket = run_dir.join("qmp.sock");
        let mut args = self.qemu_args(
            &qemu,
            &kernel,
            &initrd,
            &backings,
            [&console_log, &stdout_path, &stderr_path, &status_path],
            blkdebug_conf.as_deref(),
        );
        // The monitor, for tests that act during the run (`run_with`).
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", qmp_socket.display()));
        log::debug!("{} {}", qemu.binary.display(), args.join(" "));
        let qemu_log = run_dir.join("qemu.log");
        let qemu_out = File::create(&qemu_log).map_err(|e| Error::io("creating", &qemu_log, e))?;
        let qemu_err = qemu_out
            .try_clone()
            .map_err(|e| Error::io("opening", &qemu_log, e))?;
        let start = Instant::now();
        let mut child = Command::new(&qemu.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qemu_out)
            .stderr(qemu_err)
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: qemu.binary.display().to_string(),
                source,
            })?;

        let done = Arc::new(AtomicBool::new(false));
        let follow_stderr = || {
            follow(
                stderr_path.clone(),
                done.clone(),
                Box::new(std::io::stderr()),
            )
        };
        let followers = match self.output {
            OutputMode::Inherit => vec![
                follow(
                    stdout_path.clone(),
                    done.clone(),
                    Box::new(std::io::stdout()),
                ),
                follow_stderr(),
            ],
            OutputMode::StreamStderr => vec![follow_stderr()],
            OutputMode::Capture => Vec::new(),
        };

        let guest = RunningGuest {
            qmp_socket,
            stdout: stdout_path.clone(),
            stderr: stderr_path.clone(),
            console: console_log.clone(),
            qemu_log: qemu_log.clone(),
            started: start,
            done: done.clone(),
        };
        let mut timed_out = false;
        let (waited, acted) = std::thread::scope(|scope| {
            let mut actor = Some(scope.spawn(|| act(&guest)));
            let mut acted = None;
            let waited = loop {
                if actor.as_ref().is_some_and(|a| a.is_finished())
                    && let Some(a) = actor.take()
                {
                    let result = a.join();
                    if result.is_err() {
                        // The test failed: no need to wait for the guest.
                        log::warn!("the test's action panicked; killing QEMU");
                        let _ = child.kill();
                    }
                    acted = Some(result);
                }
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(Some(status)),
                    Ok(None) if start.elapsed() >= self.timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        timed_out = true;
                        break Ok(None);
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(Error::io("waiting for", &qemu.binary, e));
                    }
                }
            };
            // QEMU is gone: the action's waits end now.
            done.store(true, Ordering::Release);
            if let Some(a) = actor.take() {
                acted = Some(a.join());
            }
            (waited, acted)
        });
        for f in followers {
            let _ = f.join();
        }
        let acted = match acted {
            Some(Ok(value)) => value,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("the action is joined before the scope ends"),
        };
        let qemu_status = waited?;
        log::debug!("guest ran {:.1?}", start.elapsed());

        let read = |p: &Path| fs::read(p).map_err(|e| Error::io("reading", p, e));
        let stdout = read(&stdout_path)?;
        let stderr = read(&stderr_path)?;
        let status = String::from_utf8_lossy(&read(&status_path)?).into_owned();
        let exit = if timed_out {
            GuestExit::TimedOut(self.timeout)
        } else {
            parse_status(&status).unwrap_or_else(|| {
                let qemu_msg = fs::read_to_string(&qemu_log).unwrap_or_default();
                // With trace events on, the log is mostly their lines:
                // QEMU's last words are at its end.
                let tail: Vec<&str> = qemu_msg.trim().lines().rev().take(20).collect();
                let qemu_msg = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                GuestExit::NoStatus(format!(
                    "QEMU exited ({}) without a status from the guest{}",
                    qemu_status.map(|s| s.to_string()).unwrap_or_default(),
                    if qemu_msg.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", qemu_msg.trim())
                    }
                ))
            })
        };
        let exit = match exit {
            GuestExit::SetupFailed(_) => {
                GuestExit::SetupFailed(String::from_utf8_lossy(&stderr).trim().to_string())
            }
            other => other,
        };
        let run = VmRun {
            exit,
            stdout,
            stderr,
            console_log,
            disks: backings
                .iter()
                .map(|b| b.as_ref().map(|b| b.image.clone()))
                .collect(),
            write_logs: backings
                .iter()
                .map(|b| b.as_ref().and_then(|b| b.log.clone()))
                .collect(),
            kernel_package: kernel.package.clone(),
            qemu_version: qemu.version.clone(),
            qemu_log,
            _dir: dir,
        };
        Ok((run, acted))
    }

    fn validate(&self) -> Result<()> {
        if self.namespaces == 0 {
            return Err(Error::Config("at least one namespace is needed".into()));
        }
        if self.disks.len() > self.namespaces as usize {
            return Err(Error::Config(format!(
                "{} disks given for {} namespaces",
                self.disks.len(),
                self.namespaces
            )));
        }
        if self.disk_size == 0 || !self.disk_size.is_multiple_of(4096) {
            return Err(Error::Config(format!(
                "disk size {} is not a positive multiple of 4096",
                self.disk_size
            )));
        }
        if self.serial.is_empty() || self.serial.len() > 20 || !self.serial.is_ascii() {
            return Err(Error::Config(
                "the serial must be 1 to 20 ASCII characters".into(),
            ));
        }
        for (k, v) in self.nvme_props.iter().chain(self.ns_props.iter().flatten()) {
            if k.is_empty() || k.contains([',', '=']) || v.contains(',') {
                return Err(Error::Config(format!("bad nvme property {k}={v}")));
            }
        }
        if self.blkdebug.is_some() && self.disks.first() == Some(&NsDisk::Logged) {
            return Err(Error::Config(
                "namespace 1 cannot be both behind blkdebug and logged".into(),
            ));
        }
        if self.ns_props.len() > self.namespaces as usize {
            return Err(Error::Config(format!(
                "properties given for {} namespaces of {}",
                self.ns_props.len(),
                self.namespaces
            )));
        }
        if let Some(cpu) = &self.cpu
            && (cpu.is_empty() || cpu.starts_with('-') || cpu.contains(char::is_whitespace))
        {
            return Err(Error::Config(format!("bad CPU model {cpu:?}")));
        }
        if let Some(bad) = self.trace_events.iter().find(|e| {
            e.is_empty()
                || e.starts_with('-')
                || !e
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_*?".contains(&b))
        }) {
            return Err(Error::Config(format!("bad trace event name {bad:?}")));
        }
        if self.smp == 0 || self.mem_mib < 128 {
            return Err(Error::Config("need at least 1 vCPU and 128 MiB".into()));
        }
        Ok(())
    }

    fn write_initramfs(
        &self,
        path: &Path,
        kernel: &GuestKernel,
        bins: &Path,
        cmd: &[impl AsRef<str>],
    ) -> Result<()> {
        let mut a = Archive::create(path)?;
        for d in [
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "root",
            "etc",
            "opt/nvme/bin",
        ] {
            a.dir(d)?;
        }
        a.host_file("bin/busybox", Path::new(host::BUSYBOX))?;
        a.file("init", 0o755, include_bytes!("../guest/init.sh"))?;

        // With the kernel driver, vfio-pci is loaded too, so that a
        // controller can be moved over with `nvmectl bind`.
        let mut roots: Vec<&str> = kernel::VFIO_ROOTS.to_vec();
        if self.driver == GuestDriver::Kernel {
            roots.extend(kernel::NVME_ROOTS);
        }
        if self.vduse {
            roots.extend(kernel::VDUSE_ROOTS);
            roots.extend(kernel::EXT4_ROOTS);
        }
        let modules = kernel.load_order(&roots)?;
        let mut packed: HashSet<&str> = HashSet::new();
        for m in &modules {
            a.host_file(&format!("lib/modules/{m}.ko"), &kernel.module(m))?;
            packed.insert(m);
        }
        let shipped: Vec<Vec<String>> = self
            .ship_modules
            .iter()
            .map(|root| kernel.load_order(&[root]))
            .collect::<Result<_>>()?;
        for (root, order) in self.ship_modules.iter().zip(&shipped) {
            for m in order {
                if packed.insert(m) {
                    a.host_file(&format!("lib/modules/{m}.ko"), &kernel.module(m))?;
                }
            }
            let text: String = order.iter().map(|m| format!("{m}\n")).collect();
            a.file(&format!("lib/modules/{root}.order"), 0o644, text.as_bytes())?;
        }
        a.file("bin/modload", 0o755, include_bytes!("../guest/modload.sh"))?;
        let bind = match self.driver {
            GuestDriver::Vfio => "vfio",
            GuestDriver::Kernel => "kernel",
        };
        let conf = format!(
            "MODULES=\"{}\"\nBIND={bind}\nHUGEPAGES={}\nWATCHDOG={}\n",
            modules.join(" "),
            if self.hugepages > 0 {
                self.hugepages.to_string()
            } else {
                String::new()
            },
            watchdog_secs(self.timeout)
        );
        a.file("etc/vm.conf", 0o644, conf.as_bytes())?;
        // root, and an unprivileged user for tests that run without root.
        a.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnvme:x:1000:1000:nvme:/tmp:/bin/sh\n",
        )?;
        a.file("etc/group", 0o644, b"root:x:0:\nnvme:x:1000:\n")?;
        let script: Vec<String> = cmd.iter().map(|s| shell_quote(s.as_ref())).collect();
        a.file(
            "etc/vm-cmd",
            0o644,
            format!("{}\n", script.join(" ")).as_bytes(),
        )?;

        for name in guest_build::guest_binary_names() {
            let bin = bins.join(name);
            if !bin.is_file() {
                return Err(Error::Missing(format!("guest binary {}", bin.display())));
            }
            a.host_file(&format!("opt/nvme/bin/{name}"), &bin)?;
        }
        for (host_path, guest_path) in &self.copies {
            a.host_file(guest_path, host_path)?;
        }
        for tool in &self.host_tools {
            let path = host::host_tool(tool)?;
            for file in std::iter::once(path.clone()).chain(host::shared_libs(&path)?) {
                let guest_path = file.to_string_lossy().into_owned();
                a.host_file(&guest_path, &file)?;
            }
        }
        a.finish()
    }

    fn prepare_disks(&self, run_dir: &Path) -> Result<Vec<Option<Backing>>> {
        let image = |p: PathBuf| Backing {
            image: p,
            log: None,
        };
        (0..self.namespaces as usize)
            .map(|i| match self.disks.get(i).unwrap_or(&NsDisk::Temp) {
                NsDisk::Null => Ok(None),
                NsDisk::Temp => {
                    let p = run_dir.join(format!("ns{}.img", i + 1));
                    create_image(&p, self.disk_size)?;
                    Ok(Some(image(p)))
                }
                NsDisk::File(p) => {
                    if !p.exists() {
                        create_image(p, self.disk_size)?;
                    }
                    Ok(Some(image(p.clone())))
                }
                NsDisk::Logged => {
                    let p = run_dir.join(format!("ns{}.img", i + 1));
                    create_image(&p, self.disk_size)?;
                    // QEMU's file driver opens, it does not create: an
                    // empty log, which blklogwrites starts at sector 1.
                    let log = run_dir.join(format!("ns{}.log", i + 1));
                    create_image(&log, 0)?;
                    Ok(Some(Backing {
                        image: p,
                        log: Some(log),
                    }))
                }
            })
            .collect()
    }

    fn qemu_args(
        &self,
        qemu: &Qemu,
        kernel: &GuestKernel,
        initrd: &Path,
        disks: &[Option<Backing>],
        serials: [&Path; 4],
        blkdebug: Option<&Path>,
    ) -> Vec<String> {
        let mut append = vec![
            "console=ttyS0",
            "panic=-1",
            if self.iommu {
                "intel_iommu=on"
            } else {
                "intel_iommu=off"
            },
            "tsc=reliable",
            // Under TCG on a loaded host the boot-time check that the timer
            // interrupt works can time out, and with interrupt remapping
            // the kernel then panics; it is meant to be skipped in VMs.
            "no_timer_check",
            "quiet",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if self.iommu
            && let Some(arg) = self.iommu_mode.kernel_arg()
        {
            append.push(arg.into());
        }
        append.extend(self.kernel_args.iter().cloned());
        let mut args: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-accel".into(),
            if self.kvm {
                "kvm".into()
            } else {
                self.tcg_threads.accel().into()
            },
            "-machine".into(),
            "q35,kernel-irqchip=split".into(),
            "-m".into(),
            self.mem_mib.to_string(),
            "-smp".into(),
            self.smp.to_string(),
        ];
        if let Some(cpu) = &self.cpu {
            args.push("-cpu".into());
            args.push(cpu.clone());
        }
        args.extend([
            "-kernel".into(),
            kernel.vmlinuz.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.join(" "),
        ]);
        for dir in &qemu.data_dirs {
            args.push("-L".into());
            args.push(dir.display().to_string());
        }
        if self.iommu {
            args.push("-device".into());
            args.push("intel-iommu,intremap=on".into());
        }
        for event in &self.trace_events {
            args.push("-trace".into());
            args.push(event.clone());
        }
        // Thread names ("CPU 0/TCG", "worker", ...) for host-side
        // tools (top -H, /proc/PID/task/*/comm).
        args.push("-name".into());
        args.push("nvme-vm,debug-threads=on".into());
        if !self.trace_events.is_empty() {
            // Each event with its thread id and host time (QEMU's log
            // backend adds them only when messages carry timestamps).
            args.push("-msg".into());
            args.push("timestamp=on".into());
        }
        for s in serials {
            args.push("-serial".into());
            args.push(format!("file:{}", s.display()));
        }
        let (ns_common, ctrl_props): (Vec<_>, Vec<_>) = self
            .nvme_props
            .iter()
            .cloned()
            .partition(|(k, _)| NAMESPACE_PROPS.contains(&k.as_str()));
        let mut ctrl = if self.root_port {
            args.push("-device".into());
            args.push("pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=4".into());
            format!("nvme,id={NVME_DEVICE_ID},serial={},bus=rp0", self.serial)
        } else {
            format!("nvme,id={NVME_DEVICE_ID},serial={},addr=3", self.serial)
        };
        for (k, v) in ctrl_props {
            ctrl.push_str(&format!(",{k}={v}"));
        }
        args.push("-device".into());
        args.push(ctrl);
        for (i, disk) in disks.iter().enumerate() {
            let nsid = i + 1;
            let drive = match (disk, blkdebug) {
                // Every write and flush logged (blklogwrites, dm-log-writes'
                // format); the superblock's entry count is rewritten at
                // each flush and when QEMU closes the drive.
                (
                    Some(Backing {
                        image,
                        log: Some(log),
                    }),
                    _,
                ) => format!(
                    "driver=blklogwrites,file.driver=file,file.filename={},log.driver=file,\
                     log.filename={},log-sector-size={WRITE_LOG_SECTOR},if=none,id={id},\
                     cache=writeback,discard=unmap",
                    image.display(),
                    log.display(),
                    id = drive_id(nsid as u32),
                ),
                // Namespace 1 through blkdebug, which fails chosen I/O.
                (Some(b), Some(conf)) if nsid == 1 => format!(
                    "driver=raw,file.driver=blkdebug,file.config={},file.image.driver=file,\
                     file.image.filename={},if=none,id={id},cache=writeback,discard=unmap",
                    conf.display(),
                    b.image.display(),
                    id = drive_id(nsid as u32),
                ),
                (Some(b), _) => format!(
                    "file={},if=none,id={id},format=raw,cache=writeback,discard=unmap",
                    b.image.display(),
                    id = drive_id(nsid as u32),
                ),
                (None, _) => format!(
                    "driver=null-co,size={},read-zeroes=on,if=none,id={id}",
                    self.disk_size,
                    id = drive_id(nsid as u32),
                ),
            };
            let mut drive = drive;
            if nsid == 1 {
                for (k, v) in &self.drive_props {
                    drive.push_str(&format!(",{k}={v}"));
                }
            }
            args.push("-drive".into());
            args.push(drive);
            let mut ns = format!(
                "nvme-ns,drive={},nsid={nsid},bus={NVME_DEVICE_ID}",
                drive_id(nsid as u32)
            );
            for (k, v) in namespace_props(&ns_common, self.ns_props.get(i)) {
                ns.push_str(&format!(",{k}={v}"));
            }
            args.push("-device".into());
            args.push(ns);
        }
        args
    }
}

/// The properties of one namespace: the common ones, then its own (a
/// property given in both takes its own value).
fn namespace_props(
    common: &[(String, String)],
    own: Option<&Vec<(String, String)>>,
) -> Vec<(String, String)> {
    let own = own.map(Vec::as_slice).unwrap_or_default();
    let mut props: Vec<(String, String)> = common
        .iter()
        .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
        .chain(own)
        .cloned()
        .collect();
    // QEMU refuses a logical block larger than the physical one, whose
    // default is 512: follow the logical size unless both are given.
    let lbs = props
        .iter()
        .find(|(k, _)| k == "logical_block_size")
        .map(|(_, v)| v.clone());
    if let Some(lbs) = lbs
        && !props.iter().any(|(k, _)| k == "physical_block_size")
    {
        props.push(("physical_block_size".into(), lbs));
    }
    props
}

fn create_image(path: &Path, size: u64) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io("creating", path, e))?;
    f.set_len(size).map_err(|e| Error::io("sizing", path, e))
}

fn parse_status(status: &str) -> Option<GuestExit> {
    let line = status.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line == "INIT-FAILED" {
        return Some(GuestExit::SetupFailed(String::new()));
    }
    line.strip_prefix("EXIT ")?
        .parse()
        .ok()
        .map(GuestExit::Exited)
}

/// Quotes one word for the guest's POSIX shell.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Copies what is appended to `path` into `out` until `done` is set and
/// nothing more arrives.
fn follow(
    path: PathBuf,
    done: Arc<AtomicBool>,
    mut out: Box<dyn Write + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = File::open(&path) else { return };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let finished = done.load(Ordering::Acquire);
            match f.read(&mut buf) {
                Ok(0) if finished => break,
                Ok(0) => std::thread::sleep(Duration::from_millis(20)),
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                Err(_) => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest kernel and a QEMU that need not exist: for command lines.
    fn fake_peers(data_dirs: Vec<PathBuf>) -> (GuestKernel, Qemu) {
        let kernel = GuestKernel {
            package: "k".into(),
            vmlinuz: "/k".into(),
            modules: "/m".into(),
            roots: [
                ("vfio_pci", vec!["vfio".into()]),
                ("nvme", vec!["nvme".into()]),
            ]
            .into_iter()
            .map(|(r, m)| (r.to_string(), m))
            .collect(),
        };
        let qemu = Qemu {
            binary: "/q".into(),
            data_dirs,
            version: "QEMU emulator version 10.0.2".into(),
        };
        (kernel, qemu)
    }

    #[test]
    fn the_watchdog_fires_a_minute_early_or_halfway() {
        assert_eq!(watchdog_secs(Duration::from_secs(600)), 540);
        assert_eq!(watchdog_secs(Duration::from_secs(120)), 60);
        assert_eq!(watchdog_secs(Duration::from_secs(30)), 15);
    }

    #[test]
    fn a_hung_guest_is_described_with_its_first_trouble_and_the_dump() {
        let dir = tempfile::tempdir().expect("temp dir");
        let console_log = dir.path().join("console.log");
        let mut console: Vec<String> = (0..100).map(|i| format!("boot line {i}")).collect();
        console.push("[  87.3] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:".into());
        console.push("[  87.3] rcu: \tTasks blocked on level-0 rcu_node: P234/1:b..l".into());
        console.extend((0..100).map(|i| format!("quiet line {i}")));
        console.push("vm-init: watchdog after 540s: blocked tasks and CPUs follow".into());
        console.push("[ 540.1] sysrq: Show Blocked State".into());
        console.push("[ 540.1] task:fio state:D".into());
        fs::write(&console_log, console.join("\n")).expect("console");
        let run = VmRun {
            exit: GuestExit::TimedOut(Duration::from_secs(600)),
            stdout: b"acked 249\n".to_vec(),
            stderr: Vec::new(),
            console_log,
            disks: Vec::new(),
            write_logs: Vec::new(),
            kernel_package: "k".into(),
            qemu_version: "q".into(),
            qemu_log: dir.path().join("qemu.log"),
            _dir: tempfile::tempdir().expect("temp dir"),
        };
        let text = run.describe();
        let trouble = text
            .split("--- console (first kernel trouble) ---\n")
            .nth(1)
            .expect("a trouble section");
        assert!(trouble.starts_with("[  87.3] rcu: INFO"), "{text}");
        assert!(trouble.contains("P234/1:b..l"), "{text}");
        let dump = text
            .split("--- console (watchdog dump) ---\n")
            .nth(1)
            .expect("a dump section");
        assert!(dump.starts_with("vm-init: watchdog after 540s"), "{text}");
        assert!(dump.contains("task:fio state:D"), "{text}");
        assert!(!text.contains("boot line 50"), "{text}");
        let trouble = run.kernel_trouble().expect("trouble");
        assert!(trouble.starts_with("[  87.3] rcu: INFO"), "{trouble}");
        assert!(text.contains("acked 249"), "{text}");
    }

    #[test]
    fn waits_for_lines_and_stops_when_qemu_exits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |n: &str| dir.path().join(n);
        for n in ["out", "err", "console", "qemu"] {
            File::create(file(n)).expect("create");
        }
        let guest = RunningGuest {
            qmp_socket: file("qmp.sock"),
            stdout: file("out"),
            stderr: file("err"),
            console: file("console"),
            qemu_log: file("qemu"),
            started: Instant::now(),
            done: Arc::new(AtomicBool::new(false)),
        };
        let out = file("out");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut f = fs::OpenOptions::new().append(true).open(out).expect("open");
            f.write_all(b"one\r\nhang: writing 8\r\nhang: writing 9\r\n")
                .expect("write");
        });
        let long = Duration::from_secs(10);
        assert_eq!(
            guest
                .wait_for(GuestStream::Stdout, "hang: writing", long)
                .expect("first"),
            "hang: writing 8"
        );
        assert_eq!(
            guest
                .wait_for_nth(GuestStream::Stdout, "hang: writing", 2, long)
                .expect("second"),
            "hang: writing 9"
        );
        writer.join().expect("writer");
        let e = guest.wait_for(GuestStream::Stderr, "x", Duration::from_millis(50));
        assert!(
            matches!(&e, Err(Error::Wait(m)) if m.contains("the time ran out")),
            "{e:?}"
        );
        guest.done.store(true, Ordering::Release);
        let start = Instant::now();
        let e = guest.wait_for(GuestStream::Console, "x", long);
        assert!(
            matches!(&e, Err(Error::Wait(m)) if m.contains("QEMU exited")),
            "{e:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        // Output written before QEMU exited still counts.
        assert!(guest.wait_for(GuestStream::Stdout, "one", long).is_ok());
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(shell_quote("nvmectl"), "nvmectl");
        assert_eq!(shell_quote("--lba=5"), "--lba=5");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn parses_guest_status() {
        assert_eq!(parse_status("EXIT 0\n"), Some(GuestExit::Exited(0)));
        assert_eq!(parse_status("\nEXIT 3\n"), Some(GuestExit::Exited(3)));
        assert_eq!(
            parse_status("INIT-FAILED\n"),
            Some(GuestExit::SetupFailed(String::new()))
        );
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("EXIT x"), None);
    }

    #[test]
    fn routes_namespace_properties() {
        let cfg = VmConfig {
            nvme_props: vec![
                ("mdts".into(), "3".into()),
                ("logical_block_size".into(), "4096".into()),
            ],
            namespaces: 2,
            ..VmConfig::default()
        };
        let (kernel, qemu) = fake_peers(vec!["/q/share".into(), "/usr/share/qemu".into()]);
        let p = Path::new("/x");
        let args = cfg.qemu_args(
            &qemu,
            &kernel,
            p,
            &[
                Some(Backing {
                    image: "/a.img".into(),
                    log: None,
                }),
                None,
            ],
            [p, p, p, p],
            None,
        );
        let devices: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-device")
            .map(|(_, d)| d)
            .collect();
        assert!(
            devices
                .iter()
                .any(|d| d.starts_with("nvme,") && d.ends_with(",mdts=3"))
        );
        let ns: Vec<_> = devices
            .iter()
            .filter(|d| d.starts_with("nvme-ns,"))
            .collect();
        assert_eq!(ns.len(), 2);
        assert!(ns.iter().all(|d| d.contains("logical_block_size=4096")));
        assert!(ns.iter().all(|d| d.contains("physical_block_size=4096")));
        assert!(args.iter().any(|a| a.starts_with("driver=null-co,")));
        let l: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-L")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(l, ["/q/share", "/usr/share/qemu"]);
    }

    #[test]
    fn trace_events_become_trace_options() {
        let cfg = VmConfig {
            trace_events: vec!["pci_nvme_read".into(), "pci_nvme_io_*".into()],
            ..VmConfig::default()
        };
        cfg.validate().expect("valid");
        let (kernel, qemu) = fake_peers(Vec::new());
        let p = Path::new("/x");
        let args = cfg.qemu_args(&qemu, &kernel, p, &[None], [p, p, p, p], None);
        let traces: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-trace")
            .map(|(_, e)| e)
            .collect();
        assert_eq!(traces, ["pci_nvme_read", "pci_nvme_io_*"]);
        assert!(args.windows(2).any(|w| w == ["-msg", "timestamp=on"]));
        for bad in ["", "-D", "a,file=/etc/x", "a b"] {
            let cfg = VmConfig {
                trace_events: vec![bad.into()],
                ..VmConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn logged_namespace_goes_through_blklogwrites() {
        let cfg = VmConfig {
            disks: vec![NsDisk::Logged, NsDisk::Temp],
            namespaces: 2,
            ..VmConfig::default()
        };
        cfg.validate().expect("valid");
        let (kernel, qemu) = fake_peers(Vec::new());
        let p = Path::new("/x");
        let disks = [
            Some(Backing {
                image: "/r/ns1.img".into(),
                log: Some("/r/ns1.log".into()),
            }),
            Some(Backing {
                image: "/r/ns2.img".into(),
                log: None,
            }),
        ];
        let args = cfg.qemu_args(&qemu, &kernel, p, &disks, [p, p, p, p], None);
        let drives: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(a, _)| *a == "-drive")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            drives[0],
            "driver=blklogwrites,file.driver=file,file.filename=/r/ns1.img,log.driver=file,\
             log.filename=/r/ns1.log,log-sector-size=512,if=none,id=nvm1,cache=writeback,\
             discard=unmap"
        );
        assert!(drives[1].starts_with("file=/r/ns2.img,"), "{}", drives[1]);
        let both = VmConfig {
            disks: vec![NsDisk::Logged],
            blkdebug: Some(String::new()),
            ..VmConfig::default()
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn per_namespace_props_cpu_and_iommu_mode() {
        let cfg = VmConfig {
            nvme_props: vec![("mssrl".into(), "8".into())],
            ns_props: vec![
                Vec::new(),
                vec![("logical_block_size".into(), "4096".into())],
            ],
            namespaces: 2,
            cpu: Some("max".into()),
            iommu_mode: IommuMode::Passthrough,
            ..VmConfig::default()
        };
        cfg.validate().expect("valid");
        let (kernel, qemu) = fake_peers(Vec::new());
        let p = Path::new("/x");
        let args = cfg.qemu_args(&qemu, &kernel, p, &[None, None], [p, p, p, p], None);
        let ns: Vec<&String> = args.iter().filter(|a| a.starts_with("nvme-ns,")).collect();
        assert_eq!(ns.len(), 2);
        assert!(ns[0].ends_with(",mssrl=8"), "{}", ns[0]);
        assert!(
            ns[1].ends_with(",mssrl=8,logical_block_size=4096,physical_block_size=4096"),
            "{}",
            ns[1]
        );
        let pos = args.iter().position(|a| a == "-cpu").expect("-cpu");
        assert_eq!(args[pos + 1], "max");
        let append = &args[args.iter().position(|a| a == "-append").expect("-append") + 1];
        assert!(append.contains(" iommu=pt"), "{append}");
        // The default: QEMU's CPU model, the kernel's own IOMMU mode.
        let plain = VmConfig::default().qemu_args(&qemu, &kernel, p, &[None], [p, p, p, p], None);
        assert!(!plain.iter().any(|a| a == "-cpu" || a.contains("iommu=pt")));
        let bad = VmConfig {
            cpu: Some("max -foo".into()),
            ..VmConfig::default()
        };
        assert!(bad.validate().is_err());
        let too_many = VmConfig {
            ns_props: vec![Vec::new(), Vec::new()],
            ..VmConfig::default()
        };
        assert!(too_many.validate().is_err());
    }
}
