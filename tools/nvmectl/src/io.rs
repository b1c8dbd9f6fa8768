//! The I/O commands, with nvme-cli's flags: `read`, `write`,
//! `write-zeroes`, `dsm`, `flush` (and the older `deallocate`).
//!
//! nvme-cli counts blocks 0's based (`-c 7` is eight blocks), as the NVMe
//! command does; `--blocks` is the same count 1-based, as nvmectl had it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use nvme_driver::Controller;

use crate::Failure;

/// nvme-cli's `-n`: the namespace a command addresses.
#[derive(Args, Debug)]
pub(crate) struct Nsid {
    /// Namespace id (nvme-cli's `-n`).
    #[arg(
        short = 'n',
        long = "namespace-id",
        visible_alias = "nsid",
        default_value_t = 1
    )]
    pub nsid: u32,
}

/// A namespace and its first block.
#[derive(Args, Debug)]
pub(crate) struct Start {
    #[command(flatten)]
    pub ns: Nsid,
    /// First logical block (nvme-cli's `-s`).
    #[arg(short = 's', long = "start-block", visible_alias = "lba")]
    pub slba: u64,
}

/// How many blocks: nvme-cli's 0's based `-c`, or `--blocks`.
#[derive(Args, Debug)]
pub(crate) struct Count {
    /// Number of logical blocks, 0's based as in NVMe and nvme-cli
    /// (`-c 7` is eight blocks).
    #[arg(short = 'c', long = "block-count", conflicts_with = "blocks")]
    pub block_count: Option<u64>,
    /// Number of logical blocks (1-based).
    #[arg(long)]
    pub blocks: Option<u64>,
}

impl Count {
    /// The 1-based count, if one was given.
    pub(crate) fn blocks(&self) -> Result<Option<u64>, Failure> {
        match (self.block_count, self.blocks) {
            (Some(c), _) => c
                .checked_add(1)
                .map(Some)
                .ok_or_else(|| Failure::Message(format!("--block-count {c} is too large"))),
            (None, b) => Ok(b),
        }
    }

    /// The 1-based count, which must have been given.
    pub(crate) fn required(&self) -> Result<u64, Failure> {
        self.blocks()?.ok_or_else(|| {
            Failure::Message("say how many blocks: -c/--block-count (0's based) or --blocks".into())
        })
    }
}

/// Largest read or write nvmectl does in one go.
const MAX_BYTES: u64 = 1 << 30;

fn lba_size(ctrl: &Controller, nsid: u32) -> Result<u64, Failure> {
    Ok(u64::from(ctrl.namespace(nsid)?.lba_size))
}

/// `nvmectl read`: the blocks' bytes to `data` or, without it, raw to
/// `out` (or as a hex dump with `hexdump`).
pub(crate) fn read(
    ctrl: &Controller,
    start: &Start,
    count: &Count,
    data_size: Option<u64>,
    data: Option<&Path>,
    hexdump: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let lba = lba_size(ctrl, start.ns.nsid)?;
    let blocks = match (count.blocks()?, data_size) {
        (Some(b), None) => b,
        (Some(b), Some(z)) if b.checked_mul(lba) == Some(z) => b,
        (Some(b), Some(z)) => {
            return Err(Failure::Message(format!(
                "--data-size {z} does not match {b} blocks of {lba} bytes"
            )));
        }
        (None, Some(z)) if z % lba == 0 => z / lba,
        (None, Some(z)) => {
            return Err(Failure::Message(format!(
                "--data-size {z} is not a multiple of the {lba}-byte LBA size"
            )));
        }
        (None, None) => count.required()?,
    };
    ctrl.namespace(start.ns.nsid)?
        .check_range(start.slba, blocks)?;
    let len = blocks
        .checked_mul(lba)
        .filter(|&l| l <= MAX_BYTES)
        .ok_or_else(|| {
            Failure::Message(format!("{blocks} blocks is more than 1 GiB; read in parts"))
        })?;
    // At most 1 GiB (checked above), so it fits a usize.
    let mut buf = vec![0u8; len as usize];
    ctrl.io_qpair()?.read(start.ns.nsid, start.slba, &mut buf)?;
    match data {
        Some(path) => std::fs::write(path, &buf)
            .map_err(|e| Failure::Message(format!("writing {}: {e}", path.display())))?,
        None if hexdump => hex_dump(out, &buf, start.slba * lba).map_err(Failure::output)?,
        None => {
            out.write_all(&buf).map_err(Failure::output)?;
            out.flush().map_err(Failure::output)?;
        }
    }
    Ok(())
}

/// `nvmectl write`: `data` (or standard input) at the start block, then a
/// flush. The length must be whole blocks and agree with `-c`/`-z`.
pub(crate) fn write(
    ctrl: &Controller,
    start: &Start,
    count: &Count,
    data_size: Option<u64>,
    data: Option<&PathBuf>,
) -> Result<(), Failure> {
    let bytes = read_source(data, data_size)?;
    if let Some(blocks) = count.blocks()? {
        let lba = lba_size(ctrl, start.ns.nsid)?;
        if blocks.checked_mul(lba) != Some(bytes.len() as u64) {
            return Err(Failure::Message(format!(
                "{} bytes of data, but {blocks} blocks of {lba} bytes asked for",
                bytes.len()
            )));
        }
    }
    let mut qpair = ctrl.io_qpair()?;
    qpair.write(start.ns.nsid, start.slba, &bytes)?;
    qpair.flush(start.ns.nsid)?;
    Ok(())
}

/// The bytes to write: all of `path` (or of standard input), or exactly
/// `size` of them.
fn read_source(path: Option<&PathBuf>, size: Option<u64>) -> Result<Vec<u8>, Failure> {
    let name = path.map_or("standard input".to_string(), |p| p.display().to_string());
    let fail = |e: std::io::Error| Failure::Message(format!("reading {name}: {e}"));
    let source: Box<dyn Read> = match path {
        Some(p) => Box::new(std::fs::File::open(p).map_err(fail)?),
        None => Box::new(std::io::stdin().lock()),
    };
    if let Some(z) = size.filter(|&z| z > MAX_BYTES) {
        return Err(Failure::Message(format!(
            "--data-size {z} is more than 1 GiB; write in parts"
        )));
    }
    let limit = size.unwrap_or(MAX_BYTES + 1);
    let mut bytes = Vec::new();
    source.take(limit).read_to_end(&mut bytes).map_err(fail)?;
    match size {
        Some(z) if bytes.len() as u64 != z => Err(Failure::Message(format!(
            "{name} holds {} bytes, fewer than --data-size {z}",
            bytes.len()
        ))),
        None if bytes.len() as u64 > MAX_BYTES => Err(Failure::Message(format!(
            "{name} is more than 1 GiB; write in parts"
        ))),
        _ => Ok(bytes),
    }
}

/// `nvmectl dsm`: deallocate each (`slbs[i]`, `blocks[i]`) range.
pub(crate) fn dsm(
    ctrl: &Controller,
    nsid: u32,
    slbs: &[u64],
    blocks: &[u64],
    deallocate: bool,
) -> Result<(), Failure> {
    if !deallocate {
        return Err(Failure::Message(
            "dsm: only the deallocate attribute (-d/--ad) is supported".into(),
        ));
    }
    if slbs.len() != blocks.len() || slbs.is_empty() {
        return Err(Failure::Message(format!(
            "dsm: {} start blocks (-s) and {} lengths (-b): give one length per range",
            slbs.len(),
            blocks.len()
        )));
    }
    let ns = ctrl.namespace(nsid)?;
    for (&s, &b) in slbs.iter().zip(blocks) {
        ns.check_range(s, b)?;
    }
    let mut qpair = ctrl.io_qpair()?;
    for (&s, &b) in slbs.iter().zip(blocks) {
        qpair.deallocate(nsid, s, b)?;
    }
    Ok(())
}

/// `xxd`-style dump, offsets in bytes from the start of the namespace.
fn hex_dump(out: &mut impl Write, data: &[u8], base: u64) -> std::io::Result<()> {
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
