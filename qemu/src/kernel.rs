//! The guest kernel: Debian's `linux-image-amd64` of the host's release,
//! downloaded with apt-get and unpacked once into the cache.
//!
//! Only the kernel image and the modules the guest loads are kept.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, run_cmd};
use crate::host;

/// The modules vfio-pci needs, in load order (no modules.dep in the guest).
pub const VFIO_MODULES: &[&str] = &[
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];

/// The modules the kernel's own NVMe driver needs, in load order.
pub const NVME_MODULES: &[&str] = &[
    "crct10dif_common",
    "crc64",
    "crc-t10dif",
    "crc64-rocksoft",
    "t10-pi",
    "nvme-core",
    "nvme",
];

/// A cached guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The Debian package it came from, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// Folder of `<name>.ko` files for [`VFIO_MODULES`] and [`NVME_MODULES`].
    pub modules: PathBuf,
}

impl GuestKernel {
    /// Path of one cached module.
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules.join(format!("{name}.ko"))
    }
}

/// Returns the cached kernel, downloading and unpacking it first if needed.
///
/// `NVME_VM_KERNEL_PACKAGE` picks a package other than the one
/// `linux-image-amd64` depends on.
pub fn ensure_kernel(cache: &Path) -> Result<GuestKernel> {
    let package = match std::env::var("NVME_VM_KERNEL_PACKAGE") {
        Ok(p) => p,
        Err(_) => match cached_package(cache) {
            Some(p) => p,
            None => resolve_package()?,
        },
    };
    let dir = cache.join(&package);
    let kernel = GuestKernel {
        package: package.clone(),
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules"),
    };
    if dir.join("complete").exists() {
        return Ok(kernel);
    }
    log::info!("fetching guest kernel {package}");
    let work = cache.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| Error::io("creating", &work, e))?;
    let download = || {
        run_cmd(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&work),
        )
    };
    if download().is_err() {
        host::apt_update_once()?;
        download()?;
    }
    let deb = find_with_suffix(&work, ".deb")?;
    let root = work.join("root");
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    let _ = fs::remove_dir_all(&dir);
    let modules_out = dir.join("modules");
    fs::create_dir_all(&modules_out).map_err(|e| Error::io("creating", &modules_out, e))?;
    let boot = root.join("boot");
    let vmlinuz = find_with_prefix(&boot, "vmlinuz-")?;
    copy(&vmlinuz, &kernel.vmlinuz)?;
    let lib_modules = find_with_prefix(&root.join("lib").join("modules"), "")?;
    for name in VFIO_MODULES.iter().chain(NVME_MODULES) {
        let src = find_module(&lib_modules, name)?;
        copy(&src, &kernel.module(name))?;
    }
    fs::write(dir.join("complete"), &package).map_err(|e| Error::io("writing", &dir, e))?;
    fs::write(cache.join("kernel-package"), &package)
        .map_err(|e| Error::io("writing", cache, e))?;
    let _ = fs::remove_dir_all(&work);
    Ok(kernel)
}

fn cached_package(cache: &Path) -> Option<String> {
    let p = fs::read_to_string(cache.join("kernel-package")).ok()?;
    let p = p.trim().to_string();
    cache.join(&p).join("complete").exists().then_some(p)
}

/// Asks apt which kernel package `linux-image-amd64` stands for.
fn resolve_package() -> Result<String> {
    let query = || run_cmd(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let out = match query() {
        Ok(out) if parse_depends(&out).is_some() => out,
        _ => {
            host::apt_update_once()?;
            query()?
        }
    };
    parse_depends(&out).ok_or_else(|| {
        Error::Missing(format!(
            "no kernel package behind linux-image-amd64 in: {out}"
        ))
    })
}

fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with("linux-image-amd64"))
        .map(String::from)
}

fn find_with_suffix(dir: &Path, suffix: &str) -> Result<PathBuf> {
    find_entry(dir, |n| n.ends_with(suffix))
}

fn find_with_prefix(dir: &Path, prefix: &str) -> Result<PathBuf> {
    find_entry(dir, |n| n.starts_with(prefix))
}

fn find_entry(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(&pred) {
            return Ok(entry.path());
        }
    }
    Err(Error::Missing(format!(
        "expected file not found in {}",
        dir.display()
    )))
}

/// Finds `<name>.ko` (or compressed) below `dir`; `-` and `_` are equivalent.
fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let want = name.replace('-', "_");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| Error::io("listing", &d, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
                && stem.replace('-', "_") == want
            {
                return Ok(path);
            }
        }
    }
    Err(Error::Missing(format!(
        "kernel module {name} not in {}",
        dir.display()
    )))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map_err(|e| Error::io("copying", from, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }
}
