//! `nvmectl id-ctrl`, `id-ns` and `identify`: Identify Controller and
//! Namespace fields, named as nvme-cli's `id-ctrl` and `id-ns` name them
//! (text and JSON).

use std::io::{Result, Write};

use nvme_driver::{Controller, Namespace};
use serde_json::Value;

use crate::output::{Format, Record, write_json};

/// Identify Controller's fields, then what the driver derived from the
/// registers (`driver:`, text only).
pub(crate) fn controller(ctrl: &Controller) -> Record {
    let id = ctrl.identify();
    Record::new()
        .hex("vid", id.vid.get())
        .hex("ssvid", id.ssvid.get())
        .str("sn", id.serial().to_string())
        .str("mn", id.model().to_string())
        .str("fr", id.firmware().to_string())
        .num("rab", id.rab)
        .digits("ieee", u64::from(id.ieee_oui()), 6)
        .hex("cmic", id.cmic)
        .num("mdts", id.mdts)
        .hex("cntlid", id.cntlid.get())
        .hex("ver", id.ver.get())
        .hex("rtd3r", id.rtd3r.get())
        .hex("rtd3e", id.rtd3e.get())
        .hex("oaes", id.oaes.get())
        .hex("ctratt", id.ctratt.get())
        .num("cntrltype", id.cntrltype)
        .hex("oacs", id.oacs.get())
        .num("acl", id.acl)
        .num("aerl", id.aerl)
        .hex("frmw", id.frmw)
        .hex("lpa", id.lpa)
        .num("elpe", id.elpe)
        .num("npss", id.npss)
        .num("wctemp", id.wctemp.get())
        .num("cctemp", id.cctemp.get())
        .num("tnvmcap", id.tnvmcap())
        .num("unvmcap", id.unvmcap())
        .num("kas", id.kas.get())
        .hex("sqes", id.sqes)
        .hex("cqes", id.cqes)
        .num("maxcmd", id.maxcmd.get())
        .num("nn", id.nn())
        .hex("oncs", id.oncs.get())
        .hex("fuses", id.fuses.get())
        .hex("fna", id.fna)
        .hex("vwc", id.vwc)
        .num("awun", id.awun.get())
        .num("awupf", id.awupf.get())
        .hex("sgls", id.sgls.get())
        .num("mnan", id.mnan.get())
        .str("subnqn", id.subnqn().to_string())
}

/// What the driver read from the registers, beside Identify.
fn driver_view(ctrl: &Controller) -> Record {
    Record::new()
        .str("version", ctrl.version().to_string())
        .num("mqes", ctrl.cap().max_queue_entries())
        .num("to_ms", ctrl.cap().timeout_ms())
        .num("max_xfer", ctrl.max_transfer() as u64)
}

/// Identify Namespace's fields (the LBA formats apart).
pub(crate) fn namespace(ns: &Namespace) -> Record {
    let n = &ns.identify;
    Record::new()
        .num("nsid", ns.nsid)
        .hex("nsze", n.nsze())
        .hex("ncap", n.ncap())
        .hex("nuse", n.nuse())
        .hex("nsfeat", n.nsfeat)
        .num("nlbaf", n.nlbaf)
        .hex("flbas", n.flbas)
        .hex("mc", n.mc)
        .hex("dpc", n.dpc)
        .num("dps", n.dps)
        .num("nmic", n.nmic)
        .num("noiob", n.noiob.get())
        .num("nvmcap", n.nvmcap())
        .str("nguid", hex(&n.nguid))
        .str("eui64", hex(&n.eui64))
}

/// The LBA formats, as nvme-cli's JSON has them (`ms`, `ds`, `rp`).
fn lba_formats_json(ns: &Namespace) -> Value {
    ns.identify
        .lba_formats()
        .iter()
        .map(|f| {
            serde_json::json!({
                "ms": f.ms.get(),
                "ds": f.lbads,
                "rp": f.rp & 3,
            })
        })
        .collect()
}

fn print_lba_formats(out: &mut impl Write, ns: &Namespace) -> Result<()> {
    for (i, f) in ns.identify.lba_formats().iter().enumerate() {
        writeln!(
            out,
            "lbaf {i:>2}   : ms:{:<3} lbads:{:<2} rp:{:#x}{}",
            f.ms.get(),
            f.lbads,
            f.rp & 3,
            if i == ns.lba_format as usize {
                " (in use)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// `nvmectl id-ctrl`.
pub(crate) fn print_controller(
    out: &mut impl Write,
    ctrl: &Controller,
    format: Format,
) -> Result<()> {
    match format {
        Format::Json => write_json(out, &controller(ctrl).json()),
        Format::Normal => {
            writeln!(out, "NVMe Identify Controller ({}):", ctrl.address())?;
            controller(ctrl).print_text(out, 10)
        }
    }
}

/// `nvmectl id-ns`.
pub(crate) fn print_namespace(out: &mut impl Write, ns: &Namespace, format: Format) -> Result<()> {
    match format {
        Format::Json => {
            let mut map = namespace(ns).json();
            map.insert("lbafs".into(), lba_formats_json(ns));
            write_json(out, &map)
        }
        Format::Normal => {
            writeln!(out, "NVMe Identify Namespace {}:", ns.nsid)?;
            namespace(ns).print_text(out, 10)?;
            print_lba_formats(out, ns)
        }
    }
}

/// `nvmectl identify`: the controller, the driver's view, every namespace.
pub(crate) fn print_all(out: &mut impl Write, ctrl: &Controller) -> Result<()> {
    print_controller(out, ctrl, Format::Normal)?;
    writeln!(out, "driver:")?;
    driver_view(ctrl).print_text(out, 10)?;
    for ns in ctrl.namespaces() {
        print_namespace(out, ns, Format::Normal)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
