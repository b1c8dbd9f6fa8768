//! `nvmectl`: list NVMe controllers, bind them to vfio-pci and back, show
//! Identify data and logs, and read or write blocks through the userspace
//! driver. Commands, flags and JSON field names are nvme-cli's (`id-ctrl`,
//! `smart-log -o json`, `read -s SLBA -c COUNT`...), so scripts written for
//! nvme-cli work on a controller bound to vfio-pci; the device is a PCI
//! address instead of `/dev/nvme0`.
#![allow(clippy::print_stdout)]
#![forbid(unsafe_code)]

mod identify;
mod io;
mod list;
mod logs;
mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use nvme_driver::nvme_spec::FeatureSelect;
use nvme_driver::{Controller, Error, Options, PciAddress, pci};

use crate::io::{Count, Nsid, Start};
use crate::output::Format;

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
    /// List NVMe PCI functions with their driver and IOMMU group (with
    /// `-o json`: nvme-cli's `Devices`, one entry per namespace).
    List {
        #[command(flatten)]
        format: OutputFormat,
    },
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
    /// Show Identify Controller, the driver's view and every namespace.
    Identify {
        #[command(flatten)]
        target: Target,
    },
    /// Show Identify Controller (nvme-cli's `id-ctrl`).
    IdCtrl {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        format: OutputFormat,
    },
    /// Show Identify Namespace (nvme-cli's `id-ns`).
    IdNs {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        ns: Nsid,
        #[command(flatten)]
        format: OutputFormat,
    },
    /// Read logical blocks: to a file with `-d`, else raw to standard
    /// output (as nvme-cli does), or as a hex dump with `--hexdump`.
    Read {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        start: Start,
        #[command(flatten)]
        count: Count,
        /// Bytes to read (nvme-cli's `-z`; whole blocks).
        #[arg(short = 'z', long = "data-size", value_parser = parse_u64)]
        data_size: Option<u64>,
        /// File to write the data to.
        #[arg(short = 'd', long = "data", visible_alias = "output")]
        data: Option<PathBuf>,
        /// Print a hex dump instead of the raw bytes.
        #[arg(long, short = 'x', conflicts_with = "data")]
        hexdump: bool,
    },
    /// Write a file's bytes (or standard input's) at a logical block, then
    /// flush; the length must be whole blocks.
    Write {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        start: Start,
        #[command(flatten)]
        count: Count,
        /// Bytes to write (nvme-cli's `-z`): exactly this many are read
        /// from the data.
        #[arg(short = 'z', long = "data-size", value_parser = parse_u64)]
        data_size: Option<u64>,
        /// File holding the data (default: standard input).
        #[arg(short = 'd', long = "data")]
        data: Option<PathBuf>,
    },
    /// Write zeroes to a block range (no data transfer).
    WriteZeroes {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        start: Start,
        #[command(flatten)]
        count: Count,
    },
    /// Dataset Management: deallocate (trim) block ranges (nvme-cli's
    /// `dsm -d`).
    Dsm {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        ns: Nsid,
        /// First block of each range, comma-separated.
        #[arg(short = 's', long = "slbs", value_delimiter = ',', required = true)]
        slbs: Vec<u64>,
        /// Length in blocks of each range (1-based), comma-separated.
        #[arg(short = 'b', long = "blocks", value_delimiter = ',', required = true)]
        blocks: Vec<u64>,
        /// The deallocate attribute (the only one supported).
        #[arg(short = 'd', long = "ad")]
        deallocate: bool,
    },
    /// Deallocate (trim) a block range (`dsm -d` with one range).
    Deallocate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        start: Start,
        #[command(flatten)]
        count: Count,
    },
    /// Flush the namespace's volatile write cache.
    Flush {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        ns: Nsid,
    },
    /// Show the SMART / Health Information log.
    SmartLog {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        format: OutputFormat,
    },
    /// Show the valid entries of the Error Information log.
    ErrorLog {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        format: OutputFormat,
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
}

/// nvme-cli's `-o`.
#[derive(Args, Debug)]
struct OutputFormat {
    /// Output format: normal or json (nvme-cli's field names).
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t = Format::Normal)]
    format: Format,
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
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Driver(#[from] Error),
    #[error("{0}")]
    Message(String),
    /// The reader went away (e.g. `| head`): stop without a message.
    #[error("")]
    Quiet,
}

impl Failure {
    /// A failure to write the output; a reader that went away (`| head`)
    /// ends the program quietly.
    fn output(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::Quiet
        } else {
            Failure::Message(format!("writing output: {e}"))
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
    let io = Failure::output;
    match command {
        Command::List { format } => {
            let functions = list::functions()?;
            match format.format {
                Format::Normal => list::print_text(&mut out, &functions),
                Format::Json => list::print_json(&mut out, &functions),
            }
            .map_err(io)?;
        }
        Command::Bind { device } => {
            let f = pci::bind_vfio(device)?;
            writeln!(
                out,
                "{} bound to vfio-pci (IOMMU group {})",
                f.address,
                list::group(&f)
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
            identify::print_all(&mut out, &ctrl).map_err(io)?;
        }
        Command::IdCtrl { target, format } => {
            let ctrl = target.open()?;
            identify::print_controller(&mut out, &ctrl, format.format).map_err(io)?;
        }
        Command::IdNs { target, ns, format } => {
            let ctrl = target.open()?;
            let ns = ctrl.namespace(ns.nsid)?;
            identify::print_namespace(&mut out, ns, format.format).map_err(io)?;
        }
        Command::Read {
            target,
            start,
            count,
            data_size,
            data,
            hexdump,
        } => {
            let ctrl = target.open()?;
            let data = data.as_deref();
            io::read(&ctrl, &start, &count, data_size, data, hexdump, &mut out)?;
        }
        Command::Write {
            target,
            start,
            count,
            data_size,
            data,
        } => {
            let ctrl = target.open()?;
            io::write(&ctrl, &start, &count, data_size, data.as_ref())?;
        }
        Command::WriteZeroes {
            target,
            start,
            count,
        } => {
            let blocks = count.required()?;
            let ctrl = target.open()?;
            ctrl.io_qpair()?
                .write_zeroes(start.ns.nsid, start.slba, blocks)?;
        }
        Command::Dsm {
            target,
            ns,
            slbs,
            blocks,
            deallocate,
        } => {
            let ctrl = target.open()?;
            io::dsm(&ctrl, ns.nsid, &slbs, &blocks, deallocate)?;
        }
        Command::Deallocate {
            target,
            start,
            count,
        } => {
            let blocks = count.required()?;
            let ctrl = target.open()?;
            io::dsm(&ctrl, start.ns.nsid, &[start.slba], &[blocks], true)?;
        }
        Command::Flush { target, ns } => {
            let ctrl = target.open()?;
            ctrl.io_qpair()?.flush(ns.nsid)?;
        }
        Command::SmartLog { target, format } => {
            let ctrl = target.open()?;
            let log = ctrl.smart_log()?;
            match format.format {
                Format::Normal => logs::print_smart(&mut out, &ctrl, &log),
                Format::Json => logs::print_smart_json(&mut out, &log),
            }
            .map_err(io)?;
        }
        Command::ErrorLog { target, format } => {
            let ctrl = target.open()?;
            let entries = ctrl.error_log()?;
            match format.format {
                Format::Normal => logs::print_errors(&mut out, &entries),
                Format::Json => logs::print_errors_json(&mut out, &entries),
            }
            .map_err(io)?;
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
    }
    Ok(())
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a 64-bit number"))
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// nvme-cli's spellings and nvmectl's older ones give the same range.
    #[test]
    fn nvme_cli_flags_and_the_old_names_agree() {
        let new = Cli::parse_from(["nvmectl", "read", "-n", "2", "-s", "64", "-c", "7"]);
        let old = Cli::parse_from([
            "nvmectl", "read", "--nsid", "2", "--lba", "64", "--blocks", "8",
        ]);
        for cli in [new, old] {
            let Command::Read { start, count, .. } = cli.command else {
                panic!("not a read");
            };
            assert_eq!((start.ns.nsid, start.slba), (2, 64));
            assert_eq!(count.blocks().ok().flatten(), Some(8), "-c is 0's based");
        }
        assert!(
            Cli::try_parse_from(["nvmectl", "read", "-s", "0", "-c", "1", "--blocks", "2"])
                .is_err()
        );
        let dsm = Cli::parse_from(["nvmectl", "dsm", "-s", "1,9", "-b", "2,3", "-d"]);
        let Command::Dsm {
            slbs,
            blocks,
            deallocate,
            ..
        } = dsm.command
        else {
            panic!("not dsm");
        };
        assert_eq!((slbs, blocks, deallocate), (vec![1, 9], vec![2, 3], true));
    }

    #[test]
    fn a_block_count_of_u64_max_is_refused_not_wrapped() {
        let cli = Cli::parse_from(["nvmectl", "read", "-s", "0", "-c", "18446744073709551615"]);
        let Command::Read { count, .. } = cli.command else {
            panic!("not a read");
        };
        assert!(count.blocks().is_err());
    }
}
