//! `nvmectl identify`: Identify Controller and Namespace fields, named as
//! nvme-cli's `id-ctrl` and `id-ns` name them.

use std::io::{Result, Write};

use nvme_driver::Controller;

macro_rules! field {
    ($out:expr, $name:literal, $($arg:tt)*) => {
        writeln!($out, "{:<10}: {}", $name, format_args!($($arg)*))
    };
}

pub(crate) fn print(out: &mut impl Write, ctrl: &Controller) -> Result<()> {
    let id = ctrl.identify();
    writeln!(out, "NVMe Identify Controller ({}):", ctrl.address())?;
    field!(out, "vid", "{:#06x}", id.vid.get())?;
    field!(out, "ssvid", "{:#06x}", id.ssvid.get())?;
    field!(out, "sn", "{}", id.serial())?;
    field!(out, "mn", "{}", id.model())?;
    field!(out, "fr", "{}", id.firmware())?;
    field!(out, "rab", "{}", id.rab)?;
    field!(out, "ieee", "{:06x}", id.ieee_oui())?;
    field!(out, "cmic", "{:#x}", id.cmic)?;
    field!(out, "mdts", "{}", id.mdts)?;
    field!(out, "cntlid", "{:#x}", id.cntlid.get())?;
    field!(out, "ver", "{:#x}", id.ver.get())?;
    field!(out, "rtd3r", "{:#x}", id.rtd3r.get())?;
    field!(out, "rtd3e", "{:#x}", id.rtd3e.get())?;
    field!(out, "oaes", "{:#x}", id.oaes.get())?;
    field!(out, "ctratt", "{:#x}", id.ctratt.get())?;
    field!(out, "cntrltype", "{}", id.cntrltype)?;
    field!(out, "oacs", "{:#x}", id.oacs.get())?;
    field!(out, "acl", "{}", id.acl)?;
    field!(out, "aerl", "{}", id.aerl)?;
    field!(out, "frmw", "{:#x}", id.frmw)?;
    field!(out, "lpa", "{:#x}", id.lpa)?;
    field!(out, "elpe", "{}", id.elpe)?;
    field!(out, "npss", "{}", id.npss)?;
    field!(out, "wctemp", "{}", id.wctemp.get())?;
    field!(out, "cctemp", "{}", id.cctemp.get())?;
    field!(out, "tnvmcap", "{}", id.tnvmcap())?;
    field!(out, "unvmcap", "{}", id.unvmcap())?;
    field!(out, "kas", "{}", id.kas.get())?;
    field!(out, "sqes", "{:#x}", id.sqes)?;
    field!(out, "cqes", "{:#x}", id.cqes)?;
    field!(out, "maxcmd", "{}", id.maxcmd.get())?;
    field!(out, "nn", "{}", id.nn())?;
    field!(out, "oncs", "{:#x}", id.oncs.get())?;
    field!(out, "fuses", "{:#x}", id.fuses.get())?;
    field!(out, "fna", "{:#x}", id.fna)?;
    field!(out, "vwc", "{:#x}", id.vwc)?;
    field!(out, "awun", "{}", id.awun.get())?;
    field!(out, "awupf", "{}", id.awupf.get())?;
    field!(out, "sgls", "{:#x}", id.sgls.get())?;
    field!(out, "mnan", "{}", id.mnan.get())?;
    field!(out, "subnqn", "{}", id.subnqn())?;
    writeln!(out, "driver:")?;
    field!(out, "version", "{}", ctrl.version())?;
    field!(out, "mqes", "{}", ctrl.cap().max_queue_entries())?;
    field!(out, "to_ms", "{}", ctrl.cap().timeout_ms())?;
    field!(out, "max_xfer", "{}", ctrl.max_transfer())?;

    for ns in ctrl.namespaces() {
        let n = &ns.identify;
        writeln!(out, "NVMe Identify Namespace {}:", ns.nsid)?;
        field!(out, "nsid", "{}", ns.nsid)?;
        field!(out, "nsze", "{:#x}", n.nsze())?;
        field!(out, "ncap", "{:#x}", n.ncap())?;
        field!(out, "nuse", "{:#x}", n.nuse())?;
        field!(out, "nsfeat", "{:#x}", n.nsfeat)?;
        field!(out, "nlbaf", "{}", n.nlbaf)?;
        field!(out, "flbas", "{:#x}", n.flbas)?;
        field!(out, "mc", "{:#x}", n.mc)?;
        field!(out, "dpc", "{:#x}", n.dpc)?;
        field!(out, "dps", "{}", n.dps)?;
        field!(out, "nmic", "{}", n.nmic)?;
        field!(out, "noiob", "{}", n.noiob.get())?;
        field!(out, "nvmcap", "{}", n.nvmcap())?;
        field!(out, "nguid", "{}", hex(&n.nguid))?;
        field!(out, "eui64", "{}", hex(&n.eui64))?;
        for (i, f) in n.lba_formats().iter().enumerate() {
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
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
