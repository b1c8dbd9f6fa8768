//! NVMe PCI functions as sysfs shows them: listing, and binding to
//! vfio-pci (through `driver_override`) and back.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// PCI class code of an NVMe controller (mass storage, NVM, NVM Express).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Root of the PCI devices in sysfs; `NVME_SYSFS_PCI` overrides it (tests).
fn sysfs_root() -> PathBuf {
    std::env::var_os("NVME_SYSFS_PCI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/bus/pci"))
}

/// A PCI address `domain:bus:device.function`, always printed in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub device: u8,
    /// Function (0..8).
    pub function: u8,
}

impl std::str::FromStr for PciAddress {
    type Err = Error;

    /// Parses `0000:00:03.0` or `00:03.0`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadAddress(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] => (*d, *b, *df),
            [b, df] => ("0", *b, *df),
            _ => return Err(bad()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        let hex = |t: &str, max: u32| {
            (!t.is_empty() && t.len() <= 4)
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
                .ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(domain, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(dev, 0x1f)? as u8,
            function: hex(func, 7)? as u8,
        })
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One NVMe PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub address: PciAddress,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// The driver bound to it, if any.
    pub driver: Option<String>,
    /// Its IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
}

impl PciFunction {
    /// Whether vfio-pci owns it.
    pub fn is_vfio(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
    }
}

/// The sysfs folder of a function.
pub fn sysfs_path(addr: PciAddress) -> PathBuf {
    sysfs_root().join("devices").join(addr.to_string())
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::sysfs("reading", path, e))
}

fn read_hex(path: &Path) -> Result<u32> {
    let s = read_trimmed(path)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| Error::BadDevice(format!("{} holds `{s}`, not a hex number", path.display())))
}

fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()?
        .file_name()?
        .to_str()
        .map(String::from)
}

/// Reads one function; errors if absent or not NVMe.
pub fn function(addr: PciAddress) -> Result<PciFunction> {
    let dir = sysfs_path(addr);
    if !dir.exists() {
        return Err(Error::NoSuchDevice {
            bdf: addr.to_string(),
        });
    }
    let class = read_hex(&dir.join("class"))?;
    if class != NVME_CLASS {
        return Err(Error::NotNvme {
            bdf: addr.to_string(),
            class: format!("{class:#08x}"),
        });
    }
    Ok(PciFunction {
        address: addr,
        vendor: read_hex(&dir.join("vendor"))? as u16,
        device: read_hex(&dir.join("device"))? as u16,
        driver: link_name(&dir.join("driver")),
        iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
    })
}

/// Every NVMe function on the system, in address order.
pub fn list() -> Result<Vec<PciFunction>> {
    let dir = sysfs_root().join("devices");
    let entries = fs::read_dir(&dir).map_err(|e| Error::sysfs("listing", &dir, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(addr) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        match function(addr) {
            Ok(f) => out.push(f),
            Err(Error::NotNvme { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|f| f.address);
    Ok(out)
}

/// The function to use when none was named: the one NVMe controller bound
/// to vfio-pci.
pub fn single_vfio_function() -> Result<PciFunction> {
    let all = list()?;
    let vfio: Vec<&PciFunction> = all.iter().filter(|f| f.is_vfio()).collect();
    match vfio.as_slice() {
        [one] => Ok((*one).clone()),
        [] if all.is_empty() => Err(Error::Ambiguous("no NVMe controller found".into())),
        [] => Err(Error::Ambiguous(format!(
            "no NVMe controller is bound to vfio-pci (found {}); bind one with `nvmectl bind ADDRESS`",
            names(&all)
        ))),
        many => Err(Error::Ambiguous(format!(
            "several NVMe controllers are bound to vfio-pci ({}); name one",
            names(many.iter().copied())
        ))),
    }
}

fn names<'a>(fs: impl IntoIterator<Item = &'a PciFunction>) -> String {
    fs.into_iter()
        .map(|f| f.address.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `addr` is an NVMe controller ready for the driver: bound to
/// vfio-pci and in an IOMMU group.
pub fn check_ready(addr: PciAddress) -> Result<PciFunction> {
    let f = function(addr)?;
    if !f.is_vfio() {
        return Err(Error::NotBoundToVfio {
            bdf: addr.to_string(),
            driver: f.driver,
        });
    }
    if f.iommu_group.is_none() {
        return Err(Error::NoIommuGroup {
            bdf: addr.to_string(),
        });
    }
    Ok(f)
}

fn write_sysfs(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| Error::sysfs("writing", path, e))
}

/// Binds `addr` to vfio-pci (unbinding it from its current driver).
pub fn bind_vfio(addr: PciAddress) -> Result<PciFunction> {
    let f = function(addr)?;
    if f.iommu_group.is_none() {
        return Err(Error::NoIommuGroup {
            bdf: addr.to_string(),
        });
    }
    if f.is_vfio() {
        return Ok(f);
    }
    let dir = sysfs_path(addr);
    write_sysfs(&dir.join("driver_override"), "vfio-pci")?;
    if f.driver.is_some() {
        write_sysfs(&dir.join("driver").join("unbind"), &addr.to_string())?;
    }
    write_sysfs(&sysfs_root().join("drivers_probe"), &addr.to_string())?;
    let f = function(addr)?;
    if !f.is_vfio() {
        return Err(Error::NotBoundToVfio {
            bdf: addr.to_string(),
            driver: f.driver,
        });
    }
    Ok(f)
}

/// Unbinds `addr` from vfio-pci and lets the kernel's driver probe it.
pub fn unbind_vfio(addr: PciAddress) -> Result<PciFunction> {
    let f = function(addr)?;
    let dir = sysfs_path(addr);
    write_sysfs(&dir.join("driver_override"), "\n")?;
    if f.is_vfio() {
        write_sysfs(&dir.join("driver").join("unbind"), &addr.to_string())?;
    }
    write_sysfs(&sysfs_root().join("drivers_probe"), &addr.to_string())?;
    function(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a: PciAddress = "0000:00:03.0".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0, 3, 0));
        assert_eq!(a.to_string(), "0000:00:03.0");
        let b: PciAddress = "3a:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3a:1f.7");
        for bad in [
            "",
            "00:03",
            "0000:00:20.0",
            "0000:00:03.8",
            "x:00:03.0",
            "00000:00:03.0",
            "0:0:0:0.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }
}
