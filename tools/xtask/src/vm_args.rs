//! The options of `cargo xtask vm`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use qemu_harness::{GuestDriver, IommuMode, NsDisk, Suite, VmConfig, workspace_root};
use tools_common::parse_bytes;

/// `--iommu`: how the guest kernel uses the emulated IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IommuArg {
    /// The kernel's default: translated DMA (lazy invalidation on Debian's
    /// kernel), every I/O of a kernel driver mapped and unmapped.
    #[default]
    Translated,
    /// Translated, every unmap invalidated at once (`iommu.strict=1`).
    Strict,
    /// Passthrough for kernel drivers (`iommu=pt`); vfio-pci still gets a
    /// translated domain of its own.
    Pt,
}

impl IommuArg {
    /// The option's value, as given on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            IommuArg::Translated => "translated",
            IommuArg::Strict => "strict",
            IommuArg::Pt => "pt",
        }
    }
}

impl From<IommuArg> for IommuMode {
    fn from(a: IommuArg) -> IommuMode {
        match a {
            IommuArg::Translated => IommuMode::Translated,
            IommuArg::Strict => IommuMode::Strict,
            IommuArg::Pt => IommuMode::Passthrough,
        }
    }
}

/// Which QEMU and guest kernel: options of every command (`vm`, `test`,
/// `bench`), before or after the command's name.
#[derive(Args, Debug, Default, Clone, Copy)]
pub(crate) struct Versions {
    /// Guest kernel: 6.1 (or debian: the host release's) or 6.12 (or
    /// backports). Default: $NVME_VM_KERNEL, else 6.1.
    #[arg(long, global = true, value_name = "6.1|6.12", value_parser = Suite::parse_kernel)]
    pub(crate) kernel: Option<Suite>,
    /// QEMU: 7.2 (or system: the host release's) or 10.0 (or backports).
    /// Default: $NVME_VM_QEMU, else 7.2.
    #[arg(long, global = true, value_name = "7.2|10.0", value_parser = Suite::parse_qemu)]
    pub(crate) qemu: Option<Suite>,
}

/// `cargo xtask vm [OPTIONS] -- CMD [ARGS...]`
#[derive(Args, Debug, Default)]
pub(crate) struct VmArgs {
    /// Raw image backing a namespace, used and kept (created with --size if
    /// missing); repeat for namespaces 2, 3... Default: a fresh temporary image.
    #[arg(long, value_name = "PATH")]
    disk: Vec<PathBuf>,
    /// Size of created images and null devices (bytes, or with K/M/G/T suffix).
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    size: u64,
    /// Extra nvme device property, e.g. mdts=3 or logical_block_size=4096 (repeatable).
    #[arg(long = "nvme", value_name = "K=V", value_parser = parse_kv)]
    nvme: Vec<(String, String)>,
    /// Number of namespaces.
    #[arg(long, default_value_t = 1)]
    namespaces: u32,
    /// Back the namespaces with QEMU's null-co driver (no storage, reads return zeroes).
    #[arg(long)]
    null: bool,
    /// Put a host file in the guest (repeatable).
    #[arg(long, value_name = "HOSTPATH:GUESTPATH", value_parser = parse_copy)]
    copy: Vec<(PathBuf, String)>,
    /// Guest memory (MiB, or with M/G suffix).
    #[arg(long, default_value = "1024", value_parser = parse_mem)]
    mem: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Hard wall-clock limit in seconds; a hung guest is killed and reported.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Leave the controller on the kernel's nvme driver (for comparisons).
    #[arg(long)]
    keep_kernel_driver: bool,
    /// Use KVM instead of TCG (does not work on every machine).
    #[arg(long)]
    kvm: bool,
    /// Run all vCPUs on one host thread (`-accel tcg,thread=single`), as
    /// the tests do: see `qemu_harness::TcgThreads`.
    #[arg(long)]
    tcg_single: bool,
    /// Boot the guest without an IOMMU (vfio-pci then cannot be used).
    #[arg(long)]
    no_iommu: bool,
    /// How the guest kernel uses the IOMMU: translated (its default),
    /// strict, or pt (passthrough for kernel drivers).
    #[arg(long, value_enum, default_value_t = IommuArg::Translated)]
    iommu: IommuArg,
    /// vCPU model (QEMU's -cpu), e.g. max; default: QEMU's (qemu64 under
    /// TCG, without SSE4.2).
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
    /// Serial number of the emulated controller.
    #[arg(long, default_value = qemu_harness::vm::DEFAULT_SERIAL)]
    serial: String,
    /// 2 MiB huge pages to reserve in the guest.
    #[arg(long, default_value_t = 0)]
    hugepages: u32,
    /// A host executable to put in the guest with its shared libraries,
    /// e.g. fio (repeatable).
    #[arg(long = "host-tool", value_name = "NAME")]
    host_tools: Vec<String>,
    /// A blkdebug config file put between namespace 1 and its image (to
    /// make chosen I/O fail).
    #[arg(long, value_name = "FILE")]
    blkdebug: Option<PathBuf>,
    /// Put namespace 1 (a fresh image) behind QEMU's blklogwrites and copy
    /// its write log (dm-log-writes format) to PATH after the run.
    #[arg(long, value_name = "PATH")]
    write_log: Option<PathBuf>,
    /// Extra guest kernel command line word (repeatable).
    #[arg(long = "append", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// Where to write the guest console log.
    #[arg(long, value_name = "PATH")]
    console_log: Option<PathBuf>,
    /// A QEMU trace event (or pattern, e.g. `pci_nvme_*`) to enable
    /// (QEMU's `-trace`; repeatable). The events go to QEMU's own output:
    /// see --qemu-log.
    #[arg(long = "trace", value_name = "EVENT")]
    trace_events: Vec<String>,
    /// Copy QEMU's own output (its warnings and the --trace events, each
    /// with its thread id and host time) to PATH after the run.
    #[arg(long, value_name = "PATH")]
    pub(crate) qemu_log: Option<PathBuf>,
    /// The command to run in the guest.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

/// Why `cargo xtask vm`'s options make no guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmArgsError {
    #[error("no command given (cargo xtask vm [OPTIONS] -- CMD [ARGS...])")]
    NoCommand,
    #[error("--null and --disk exclude each other")]
    NullAndDisk,
    #[error("--write-log logs a fresh namespace 1: not with --null, --disk or --blkdebug")]
    WriteLog,
    #[error("reading {}: {source}", .path.display())]
    Blkdebug {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VmArgs {
    /// The guest configuration, the command and where to copy the write log.
    pub(crate) fn into_config(
        self,
    ) -> Result<(VmConfig, Vec<String>, Option<PathBuf>), VmArgsError> {
        if self.cmd.is_empty() {
            return Err(VmArgsError::NoCommand);
        }
        let namespaces = self.namespaces.max(self.disk.len() as u32);
        let mut disks = if self.null {
            if !self.disk.is_empty() {
                return Err(VmArgsError::NullAndDisk);
            }
            vec![NsDisk::Null; namespaces as usize]
        } else {
            self.disk.into_iter().map(NsDisk::File).collect()
        };
        if self.write_log.is_some() {
            if self.null || !disks.is_empty() || self.blkdebug.is_some() {
                return Err(VmArgsError::WriteLog);
            }
            disks.push(NsDisk::Logged);
        }
        let blkdebug = match &self.blkdebug {
            Some(p) => {
                Some(
                    std::fs::read_to_string(p).map_err(|source| VmArgsError::Blkdebug {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let config = VmConfig {
            disks,
            namespaces,
            disk_size: self.size,
            nvme_props: self.nvme,
            serial: self.serial,
            copies: self.copy,
            mem_mib: self.mem,
            smp: self.smp,
            timeout: Duration::from_secs(self.timeout),
            driver: if self.keep_kernel_driver {
                GuestDriver::Kernel
            } else {
                GuestDriver::Vfio
            },
            kvm: self.kvm,
            tcg_threads: if self.tcg_single {
                qemu_harness::TcgThreads::Single
            } else {
                qemu_harness::TcgThreads::Multi
            },
            iommu: !self.no_iommu,
            iommu_mode: self.iommu.into(),
            cpu: self.cpu,
            hugepages: self.hugepages,
            host_tools: self.host_tools,
            blkdebug,
            kernel_args: self.kernel_args,
            trace_events: self.trace_events,
            console_log: Some(
                self.console_log
                    .unwrap_or_else(|| workspace_root().join("target/vm/console.log")),
            ),
            ..VmConfig::default()
        };
        Ok((config, self.cmd, self.write_log))
    }
}

/// `--mem`: MiB, or bytes with a suffix ([`parse_bytes`]).
fn parse_mem(s: &str) -> Result<u32, String> {
    let bytes = if s.chars().all(|c| c.is_ascii_digit()) {
        parse_bytes(&format!("{s}M"))
    } else {
        parse_bytes(s)
    }
    .map_err(|e| e.to_string())?;
    u32::try_from(bytes >> 20).map_err(|_| format!("memory too large: {s}"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected K=V, got {s}"))?;
    Ok((k.to_string(), v.to_string()))
}

fn parse_copy(s: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HOSTPATH:GUESTPATH, got {s}"))?;
    if !guest.starts_with('/') {
        return Err(format!("guest path must be absolute: {guest}"));
    }
    Ok((PathBuf::from(host), guest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--size` and `--mem` take `tools_common::parse_bytes`'s syntax, T
    /// (TiB) included as before; zero, which made no working guest, is
    /// refused now.
    #[test]
    fn sizes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            vm: VmArgs,
        }
        let size =
            |arg: &str| Cli::try_parse_from(["x", "--size", arg, "--", "true"]).map(|c| c.vm.size);
        assert_eq!(size("4096").ok(), Some(4096));
        assert_eq!(size("1G").ok(), Some(1 << 30));
        assert_eq!(size("512m").ok(), Some(512 << 20));
        assert_eq!(size("2T").ok(), Some(2 << 40));
        assert_eq!(size(" 64k ").ok(), Some(64 << 10));
        for bad in ["x", "99999999999T", "0", "-1", "1P"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        let default = Cli::try_parse_from(["x", "--", "true"]).expect("parse");
        assert_eq!(default.vm.size, 1 << 30);
        assert_eq!(default.vm.mem, 1024);
        assert_eq!(parse_mem("2048"), Ok(2048));
        assert_eq!(parse_mem("2G"), Ok(2048));
        assert_eq!(parse_mem("1t"), Ok(1 << 20));
        assert_eq!(parse_mem("0"), Err("bad size: 0M".to_string()));
        assert!(parse_mem("8192T").is_err(), "more MiB than a u32");
    }

    #[test]
    fn versions() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            v: Versions,
        }
        let cli = Cli::try_parse_from(["x", "--kernel", "6.12", "--qemu", "7.2"]).expect("parse");
        assert_eq!(cli.v.kernel, Some(Suite::Backports));
        assert_eq!(cli.v.qemu, Some(Suite::Release));
        assert!(Cli::try_parse_from(["x", "--kernel", "5.4"]).is_err());
        let none = Cli::try_parse_from(["x"]).expect("parse");
        assert_eq!((none.v.kernel, none.v.qemu), (None, None));
    }

    #[test]
    fn copies_and_props() {
        assert_eq!(parse_kv("mdts=3"), Ok(("mdts".into(), "3".into())));
        assert!(parse_kv("mdts").is_err());
        assert_eq!(
            parse_copy("a.bin:/root/a.bin"),
            Ok(("a.bin".into(), "/root/a.bin".into()))
        );
        assert!(parse_copy("a.bin:root").is_err());
    }
}
