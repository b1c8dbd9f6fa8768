//! `nvmectl`: list NVMe controllers, bind them to vfio-pci and back, show
//! Identify data, and read or write blocks through the userspace driver.
#![allow(clippy::print_stdout)]
#![forbid(unsafe_code)]

mod identify;
mod logs;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use nvme_driver::nvme_spec::FeatureSelect;
use nvme_driver::{Controller, Error, Options, PciAddress, pci};

#[derive(Parser, Debug)]
#[command(
    name = "nvmectl",
    version,
    about = "Drive NVMe controllers from userspace through VFIO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List NVMe PCI functions with their driver and IOMMU group.
    List,
    /// Bind a controller to vfio-pci (through driver_override).
    Bind {
        /// PCI address, e.g. 0000:00:03.0.
        device: PciAddress,
    },
    /// Give a controller back to the kernel's nvme driver.
    Unbind {
        /// PCI address, e.g. 0000:00:03.0.
        device: PciAddress,
    },
    /// Show Identify Controller and Identify Namespace fields.
    Identify {
        #[command(flatten)]
        target: Target,
    },
    /// Read logical blocks.
    Read {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: BlockRange,
        /// File to write the data to (default: a hex dump on stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write zeroes to a block range (no data transfer).
    WriteZeroes {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: BlockRange,
    },
    /// Deallocate (trim) a block range.
    Deallocate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        range: BlockRange,
    },
    /// Show the SMART / Health Information log.
    SmartLog {
        #[command(flatten)]
        target: Target,
    },
    /// Show the valid entries of the Error Information log.
    ErrorLog {
        #[command(flatten)]
        target: Target,
    },
    /// Show a feature's value (Get Features).
    GetFeature {
        #[command(flatten)]
        target: Target,
        /// Feature identifier, e.g. 7 (Number of Queues) or 0x06.
        #[arg(long, short = 'f', value_parser = parse_u8)]
        feature_id: u8,
        /// Which value: 0 current, 1 default, 2 saved, 3 supported capabilities.
        #[arg(long, short = 's', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
        sel: u8,
        /// Command dword 11 (some features take an argument there).
        #[arg(long, default_value_t = 0)]
        cdw11: u32,
    },
    /// Set a feature's value (Set Features, not saved).
    SetFeature {
        #[command(flatten)]
        target: Target,
        /// Feature identifier.
        #[arg(long, short = 'f', value_parser = parse_u8)]
        feature_id: u8,
        /// Command dword 11: the value.
        #[arg(long, short = 'v', value_parser = parse_u32)]
        value: u32,
    },
    /// Reset the controller (CC.EN off and on) and set it up again.
    Reset {
        #[command(flatten)]
        target: Target,
    },
    /// Write a file's bytes at a logical block (length a multiple of the LBA size).
    Write {
        #[command(flatten)]
        target: Target,
        /// Namespace id.
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        /// First logical block.
        #[arg(long)]
        lba: u64,
        /// File holding the data.
        #[arg(long)]
        data: PathBuf,
    },
}

/// A block range on a namespace.
#[derive(Args, Debug)]
struct BlockRange {
    /// Namespace id.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// First logical block.
    #[arg(long)]
    lba: u64,
    /// Number of logical blocks.
    #[arg(long)]
    blocks: u64,
}

#[derive(Args, Debug)]
struct Target {
    /// PCI address; optional when exactly one controller is bound to vfio-pci.
    device: Option<PciAddress>,
}

impl Target {
    fn open(&self) -> Result<Controller, Failure> {
        let address = match self.device {
            Some(a) => a,
            None => pci::single_vfio_function()?.address,
        };
        Ok(Controller::open(address, Options::default())?)
    }
}

/// What ends the program: a driver error, or a message of our own.
#[derive(Debug)]
enum Failure {
    Driver(Error),
    Message(String),
    /// The reader went away (e.g. `| head`): stop without a message.
    Quiet,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Driver(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Driver(e) => write!(f, "{e}"),
            Failure::Message(m) => f.write_str(m),
            Failure::Quiet => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) | Err(Failure::Quiet) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvmectl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::Quiet
        } else {
            Failure::Message(format!("writing output: {e}"))
        }
    };
    match command {
        Command::List => {
            let functions = pci::list()?;
            writeln!(
                out,
                "{:<14}{:<11}{:<12}IOMMU-GROUP",
                "ADDRESS", "ID", "DRIVER"
            )
            .map_err(io)?;
            for f in functions {
                writeln!(
                    out,
                    "{:<14}{:<11}{:<12}{}",
                    f.address.to_string(),
                    format!("{:04x}:{:04x}", f.vendor, f.device),
                    f.driver.as_deref().unwrap_or("-"),
                    group(&f)
                )
                .map_err(io)?;
            }
        }
        Command::Bind { device } => {
            let f = pci::bind_vfio(device)?;
            writeln!(
                out,
                "{} bound to vfio-pci (IOMMU group {})",
                f.address,
                group(&f)
            )
            .map_err(io)?;
        }
        Command::Unbind { device } => {
            let f = pci::unbind_vfio(device)?;
            writeln!(
                out,
                "{} unbound from vfio-pci, now on {}",
                f.address,
                f.driver.as_deref().unwrap_or("no driver")
            )
            .map_err(io)?;
        }
        Command::Identify { target } => {
            let ctrl = target.open()?;
            identify::print(&mut out, &ctrl).map_err(io)?;
        }
        Command::Read {
            target,
            range: BlockRange { nsid, lba, blocks },
            output,
        } => {
            let ctrl = target.open()?;
            let ns = ctrl.namespace(nsid)?;
            ns.check_range(lba, blocks)?;
            let len = usize::try_from(blocks.saturating_mul(ns.lba_size as u64))
                .ok()
                .filter(|&l| l <= 1 << 30)
                .ok_or_else(|| {
                    Failure::Message(format!("{blocks} blocks is more than 1 GiB; read in parts"))
                })?;
            let mut data = vec![0u8; len];
            ctrl.io_qpair()?.read(nsid, lba, &mut data)?;
            match output {
                Some(path) => std::fs::write(&path, &data)
                    .map_err(|e| Failure::Message(format!("writing {}: {e}", path.display())))?,
                None => hexdump(&mut out, &data, lba * ns_lba_size(&ctrl, nsid)).map_err(io)?,
            }
        }
        Command::Write {
            target,
            nsid,
            lba,
            data,
        } => {
            let bytes = std::fs::read(&data)
                .map_err(|e| Failure::Message(format!("reading {}: {e}", data.display())))?;
            let ctrl = target.open()?;
            let mut qpair = ctrl.io_qpair()?;
            qpair.write(nsid, lba, &bytes)?;
            qpair.flush(nsid)?;
        }
        Command::WriteZeroes {
            target,
            range: BlockRange { nsid, lba, blocks },
        } => {
            let ctrl = target.open()?;
            ctrl.io_qpair()?.write_zeroes(nsid, lba, blocks)?;
        }
        Command::Deallocate {
            target,
            range: BlockRange { nsid, lba, blocks },
        } => {
            let ctrl = target.open()?;
            ctrl.io_qpair()?.deallocate(nsid, lba, blocks)?;
        }
        Command::SmartLog { target } => {
            let ctrl = target.open()?;
            let log = ctrl.smart_log()?;
            logs::print_smart(&mut out, &ctrl, &log).map_err(io)?;
        }
        Command::ErrorLog { target } => {
            let ctrl = target.open()?;
            let entries = ctrl.error_log()?;
            logs::print_errors(&mut out, &entries).map_err(io)?;
        }
        Command::SetFeature {
            target,
            feature_id,
            value,
        } => {
            let ctrl = target.open()?;
            let result = ctrl.set_features(feature_id, value)?;
            writeln!(
                out,
                "set-feature:{feature_id:#04x} ({}), value:{value:#010x}, dw0:{result:#010x}",
                logs::feature_name(feature_id)
            )
            .map_err(io)?;
        }
        Command::Reset { target } => {
            let ctrl = target.open()?;
            ctrl.reset()?;
            writeln!(out, "{}: controller reset", ctrl.address()).map_err(io)?;
        }
        Command::GetFeature {
            target,
            feature_id,
            sel,
            cdw11,
        } => {
            let ctrl = target.open()?;
            let select = match sel {
                0 => FeatureSelect::Current,
                1 => FeatureSelect::Default,
                2 => FeatureSelect::Saved,
                _ => FeatureSelect::SupportedCapabilities,
            };
            let value = ctrl.get_features(feature_id, select, cdw11)?;
            writeln!(
                out,
                "get-feature:{feature_id:#04x} ({}), {select:?} value:{value:#010x}",
                logs::feature_name(feature_id)
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

fn parse_u8(s: &str) -> Result<u8, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a number from 0 to 255"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a 32-bit number"))
}

fn group(f: &nvme_driver::PciFunction) -> String {
    f.iommu_group.map_or("-".to_string(), |g| g.to_string())
}

fn ns_lba_size(ctrl: &Controller, nsid: u32) -> u64 {
    ctrl.namespace(nsid).map_or(0, |n| n.lba_size as u64)
}

/// `xxd`-style dump, offsets in bytes from the start of the namespace.
fn hexdump(out: &mut impl Write, data: &[u8], base: u64) -> std::io::Result<()> {
    for (i, line) in data.chunks(16).enumerate() {
        write!(out, "{:012x}: ", base + (i * 16) as u64)?;
        for b in line {
            write!(out, "{b:02x} ")?;
        }
        let text: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "{:width$} {text}", "", width = (16 - line.len()) * 3)?;
    }
    Ok(())
}
