//! The guest kernel: Debian's `linux-image-amd64` of the host's release
//! (6.1) or of its backports (6.12), downloaded with apt-get and unpacked
//! once into the cache.
//!
//! Only the kernel image and the modules the guest loads are kept
//! (uncompressed), with their load order worked out from the modules'
//! own dependency fields (see [`modules`](crate::modules)); the package
//! itself stays in the cache's `debs/` folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::apt::Apt;
use crate::error::{Error, Result};
use crate::modules::ModuleTree;
use crate::versions::Suite;

/// The modules vfio-pci needs start from these (their dependencies and
/// soft dependencies, e.g. vfio's on vfio_iommu_type1, come along).
pub const VFIO_ROOTS: &[&str] = &["vfio-pci"];
/// The modules the kernel's own NVMe driver needs start from these.
pub const NVME_ROOTS: &[&str] = &["nvme"];
/// The ublk driver (`/dev/ublk-control`, for `nvme-ublk`), kept when the
/// kernel has it (6.12 does; Debian's 6.1 does not). Shipped to guests
/// that ask for it ([`crate::VmConfig::ship_ublk`]), never loaded at boot.
pub const UBLK_ROOTS: &[&str] = &["ublk_drv"];
/// ext4 (a module in Debian's kernels) and the crc32c it checksums
/// metadata with, kept when present: shipped to guests that ask for it
/// ([`crate::VmConfig::ship_ext4`]), never loaded at boot.
pub const EXT4_ROOTS: &[&str] = &["crc32c_generic", "ext4"];
/// A VDUSE virtio-blk device in the guest (vdpa, vduse, virtio_vdpa,
/// virtio_blk) with an ext4 file system on it (ext4 and the crc32c
/// implementation its checksums ask for by alias): only kernels with
/// VDUSE have them (6.12; not 6.1).
pub const VDUSE_ROOTS: &[&str] = &[
    "vduse",
    "virtio_vdpa",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
];

const LOAD_ORDER: &str = "load-order";

/// A cached guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The Debian package it came from, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// Folder of uncompressed `<name>.ko` files.
    pub modules: PathBuf,
    /// What vfio-pci needs, in load order.
    pub vfio_modules: Vec<String>,
    /// What the kernel's nvme driver needs, in load order.
    pub nvme_modules: Vec<String>,
    /// What the ublk driver needs, in load order (empty: no ublk here).
    pub ublk_modules: Vec<String>,
    /// ext4 and what it needs, in load order (empty: built in or absent).
    pub ext4_modules: Vec<String>,
    /// What a VDUSE block device with ext4 needs ([`VDUSE_ROOTS`]), in
    /// load order; empty when the kernel has no VDUSE.
    pub vduse_modules: Vec<String>,
}

impl GuestKernel {
    /// Path of one cached module.
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules.join(format!("{name}.ko"))
    }
}

static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Returns the cached kernel of `suite`, downloading and unpacking it first
/// if needed.
///
/// `NVME_VM_KERNEL_PACKAGE` picks a package other than the one
/// `linux-image-amd64` depends on (from the same suite).
pub fn ensure_kernel(cache: &Path, suite: Suite) -> Result<GuestKernel> {
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pointer = cache.join(match suite {
        Suite::Release => "kernel-package".to_string(),
        Suite::Backports => "kernel-package-backports".to_string(),
    });
    let apt = Apt::for_suite(suite, cache)?;
    let package = match std::env::var("NVME_VM_KERNEL_PACKAGE") {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => match cached_package(cache, &pointer) {
            Some(p) => p,
            None => apt.resolve_depends("linux-image-amd64", "linux-image-")?,
        },
    };
    let dir = cache.join(&package);
    if let Some(kernel) = read_cached(&dir, &package) {
        return Ok(kernel);
    }
    log::info!("fetching guest kernel {package} ({suite})");
    let work = cache.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| Error::io("creating", &work, e))?;
    let root = work.join("root");
    apt.fetch_into(&package, &cache.join("debs"), &root)?;

    let out = work.join("out");
    let modules_out = out.join("modules");
    fs::create_dir_all(&modules_out).map_err(|e| Error::io("creating", &modules_out, e))?;
    let vmlinuz = find_with_prefix(&root.join("boot"), "vmlinuz-")?;
    fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(|e| Error::io("copying", &vmlinuz, e))?;
    let tree = ModuleTree::scan(&find_with_prefix(&root.join("lib").join("modules"), "")?)?;
    let mut order = String::new();
    for (label, roots) in [
        ("vfio", VFIO_ROOTS),
        ("nvme", NVME_ROOTS),
        ("ublk", UBLK_ROOTS),
        ("ext4", EXT4_ROOTS),
        ("vduse", VDUSE_ROOTS),
    ] {
        let modules = if matches!(label, "ublk" | "ext4" | "vduse") {
            tree.load_order_if_present(roots)?
        } else {
            tree.load_order(roots)?
        };
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        log::info!(
            "{package}: {label} modules in load order: {}",
            names.join(" ")
        );
        order.push_str(&format!("{label} {}\n", names.join(" ")));
        for m in &modules {
            let p = modules_out.join(format!("{}.ko", m.name));
            fs::write(&p, &m.object).map_err(|e| Error::io("writing", &p, e))?;
        }
    }
    let p = out.join(LOAD_ORDER);
    fs::write(&p, order).map_err(|e| Error::io("writing", &p, e))?;
    fs::write(out.join("complete"), &package).map_err(|e| Error::io("writing", &out, e))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&out, &dir).map_err(|e| Error::io("moving into place", &dir, e))?;
    fs::write(&pointer, &package).map_err(|e| Error::io("writing", &pointer, e))?;
    let _ = fs::remove_dir_all(&work);
    read_cached(&dir, &package)
        .ok_or_else(|| Error::Missing(format!("kernel cache {} is incomplete", dir.display())))
}

fn cached_package(cache: &Path, pointer: &Path) -> Option<String> {
    let p = fs::read_to_string(pointer).ok()?;
    let p = p.trim().to_string();
    read_cached(&cache.join(&p), &p).map(|_| p)
}

/// The kernel cached in `dir`, if it is complete (a cache made before the
/// load order, or its ublk and ext4 lines, were recorded counts as
/// incomplete).
fn read_cached(dir: &Path, package: &str) -> Option<GuestKernel> {
    if !dir.join("complete").exists() {
        return None;
    }
    let order = fs::read_to_string(dir.join(LOAD_ORDER)).ok()?;
    let list = |label: &str| -> Option<Vec<String>> {
        let line = order
            .lines()
            .find_map(|l| l.strip_prefix(label)?.strip_prefix(' '))?;
        Some(line.split_whitespace().map(String::from).collect())
    };
    let kernel = GuestKernel {
        package: package.to_string(),
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules"),
        vfio_modules: list("vfio")?,
        nvme_modules: list("nvme")?,
        ublk_modules: list("ublk")?,
        ext4_modules: list("ext4")?,
        vduse_modules: list("vduse")?,
    };
    let all_there = kernel.vmlinuz.is_file()
        && kernel
            .vfio_modules
            .iter()
            .chain(&kernel.nvme_modules)
            .chain(&kernel.ublk_modules)
            .chain(&kernel.ext4_modules)
            .chain(&kernel.vduse_modules)
            .all(|m| kernel.module(m).is_file());
    all_there.then_some(kernel)
}

fn find_with_prefix(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
        {
            return Ok(entry.path());
        }
    }
    Err(Error::Missing(format!("no {prefix}* in {}", dir.display())))
}
