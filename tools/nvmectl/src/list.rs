//! `nvmectl list`: the NVMe PCI functions; with `-o json`, nvme-cli's
//! `Devices` array, one entry per namespace of each controller bound to
//! vfio-pci (the PCI address stands where nvme-cli has `/dev/nvme0n1`).

use std::io::{Result, Write};

use nvme_driver::{Controller, Options, PciFunction, pci};
use serde_json::{Map, Value, json};

use crate::output::write_json;

pub(crate) fn group(f: &PciFunction) -> String {
    f.iommu_group.map_or("-".to_string(), |g| g.to_string())
}

/// The text table: address, ids, driver, IOMMU group.
pub(crate) fn print_text(out: &mut impl Write, functions: &[PciFunction]) -> Result<()> {
    writeln!(
        out,
        "{:<14}{:<11}{:<12}IOMMU-GROUP",
        "ADDRESS", "ID", "DRIVER"
    )?;
    for f in functions {
        writeln!(
            out,
            "{:<14}{:<11}{:<12}{}",
            f.address.to_string(),
            format!("{:04x}:{:04x}", f.vendor, f.device),
            f.driver.as_deref().unwrap_or("-"),
            group(f)
        )?;
    }
    Ok(())
}

/// nvme-cli's `list -o json`. A controller bound to vfio-pci is opened to
/// read its Identify data; one that cannot be (in use by another process,
/// say) gets an entry with `Error` instead. Functions on other drivers
/// get an entry with their driver only.
pub(crate) fn print_json(out: &mut impl Write, functions: &[PciFunction]) -> Result<()> {
    let mut devices = Vec::new();
    for f in functions {
        let mut base = Map::new();
        base.insert("DevicePath".into(), json!(f.address.to_string()));
        base.insert("Driver".into(), json!(f.driver.as_deref().unwrap_or("")));
        base.insert("IommuGroup".into(), json!(f.iommu_group));
        if !f.is_vfio() {
            devices.push(Value::Object(base));
            continue;
        }
        match Controller::open(f.address, Options::default()) {
            Ok(ctrl) => {
                let id = ctrl.identify();
                for ns in ctrl.namespaces() {
                    let mut entry = base.clone();
                    let lba = u64::from(ns.lba_size);
                    entry.insert("NameSpace".into(), json!(ns.nsid));
                    entry.insert("Firmware".into(), json!(id.firmware().to_string()));
                    entry.insert("ModelNumber".into(), json!(id.model().to_string()));
                    entry.insert("SerialNumber".into(), json!(id.serial().to_string()));
                    entry.insert(
                        "UsedBytes".into(),
                        json!(ns.utilization.saturating_mul(lba)),
                    );
                    entry.insert("MaximumLBA".into(), json!(ns.blocks));
                    entry.insert("PhysicalSize".into(), json!(ns.size_bytes()));
                    entry.insert("SectorSize".into(), json!(lba));
                    devices.push(Value::Object(entry));
                }
            }
            Err(e) => {
                base.insert("Error".into(), json!(e.to_string()));
                devices.push(Value::Object(base));
            }
        }
    }
    write_json(out, &json!({ "Devices": devices }))
}

/// All NVMe functions (the driver's listing).
pub(crate) fn functions() -> nvme_driver::Result<Vec<PciFunction>> {
    pci::list()
}
