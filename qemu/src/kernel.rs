//! The guest kernel: Debian's `linux-image-amd64` of the host's release
//! (6.1) or of its backports (6.12), downloaded with apt-get and unpacked
//! once into the cache.
//!
//! Only the kernel image and the modules a guest may load are kept
//! (uncompressed): every root of [`REQUIRED_ROOTS`] and [`OPTIONAL_ROOTS`]
//! with what it needs, each root's load order worked out from the
//! modules' own dependency fields (see [`modules`](crate::modules)) and
//! recorded like a `modules.dep`. A guest asks for roots
//! ([`GuestKernel::load_order`]); the package itself stays in the cache's
//! `debs/` folder.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::apt::Apt;
use crate::error::{Error, Result};
use crate::modules::{ModuleTree, normalize};
use crate::versions::Suite;

/// The modules vfio-pci needs start from these (their dependencies and
/// soft dependencies, e.g. vfio's on vfio_iommu_type1, come along).
pub const VFIO_ROOTS: &[&str] = &["vfio-pci"];
/// The modules the kernel's own NVMe driver needs start from these.
pub const NVME_ROOTS: &[&str] = &["nvme"];
/// The ublk driver (`/dev/ublk-control`, for `nvme-ublk`): 6.12 has it,
/// Debian's 6.1 does not.
pub const UBLK_ROOTS: &[&str] = &["ublk_drv"];
/// ext4 (a module in Debian's kernels) and the crc32c implementation its
/// metadata checksums ask for by alias (not a `depends`).
pub const EXT4_ROOTS: &[&str] = &["crc32c_generic", "ext4"];
/// A VDUSE virtio-blk device (vdpa, vduse, virtio_vdpa, virtio_blk): only
/// kernels with VDUSE have them (6.12; not 6.1).
pub const VDUSE_ROOTS: &[&str] = &["vduse", "virtio_vdpa", "virtio_blk"];
/// The kernel's NVMe/TCP target (nvmet-tcp: nvmet, configfs, nvme-core's
/// auth and keyring) and initiator (nvme-tcp: nvme-fabrics,
/// `/dev/nvme-fabrics`).
pub const NVME_TCP_ROOTS: &[&str] = &["nvmet-tcp", "nvme-tcp"];

/// Roots every guest kernel must have (the boot loads them).
pub const REQUIRED_ROOTS: &[&str] = &["vfio-pci", "nvme"];
/// Roots kept when the kernel has them, for guests that ask
/// ([`crate::VmConfig::ship_modules`], [`crate::VmConfig::vduse`]). A
/// module outside these (and what they need) is not in the cache: add its
/// name here to ship it.
pub const OPTIONAL_ROOTS: &[&str] = &[
    "ublk_drv",
    "crc32c_generic",
    "ext4",
    "vduse",
    "virtio_vdpa",
    "virtio_blk",
    "nvmet-tcp",
    "nvme-tcp",
    // vfat (fs/mpage.c) and the character sets its mounts use by default
    // on Debian (codepage 437, iocharset ascii; utf8 for `-o utf8`), and
    // XFS (fs/iomap): the differential tests against the kernel
    // (tests/tests/oracle.rs).
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "xfs",
];

/// Each kept root's load order, one `root: module...` line per root (an
/// older cache has a `load-order` file with fixed sets instead, and counts
/// as incomplete).
const MODULE_ORDER: &str = "module-order";

/// A cached guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The Debian package it came from, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// Folder of uncompressed `<name>.ko` files.
    pub modules: PathBuf,
    /// Each root of [`REQUIRED_ROOTS`] and [`OPTIONAL_ROOTS`] (by its
    /// [`normalize`]d name) with what it needs, in load order, itself
    /// last; empty when this kernel has no such module.
    pub roots: BTreeMap<String, Vec<String>>,
}

impl GuestKernel {
    /// Path of one cached module.
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules.join(format!("{name}.ko"))
    }

    /// Whether this kernel has module `root` (one of the kept roots).
    pub fn has(&self, root: &str) -> bool {
        self.roots
            .get(&normalize(root))
            .is_some_and(|m| !m.is_empty())
    }

    /// `roots` and everything they need, in an order insmod accepts, each
    /// module once. An error names a root this kernel lacks, or one the
    /// cache does not keep (not in [`OPTIONAL_ROOTS`]).
    pub fn load_order<S: AsRef<str>>(&self, roots: &[S]) -> Result<Vec<String>> {
        let mut order: Vec<String> = Vec::new();
        for root in roots {
            let root = root.as_ref();
            let Some(modules) = self.roots.get(&normalize(root)) else {
                return Err(Error::Config(format!(
                    "module {root} is not one the kernel cache keeps (kernel::OPTIONAL_ROOTS)"
                )));
            };
            if modules.is_empty() {
                return Err(Error::Missing(format!(
                    "guest kernel {} has no module {root}",
                    self.package
                )));
            }
            // Each root's list has its dependencies before it, so the
            // first appearance of every module keeps that true.
            for m in modules {
                if !order.contains(m) {
                    order.push(m.clone());
                }
            }
        }
        Ok(order)
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
    let mut written = HashSet::new();
    for (root, required) in REQUIRED_ROOTS
        .iter()
        .map(|r| (r, true))
        .chain(OPTIONAL_ROOTS.iter().map(|r| (r, false)))
    {
        let modules = if required {
            tree.load_order(&[*root])?
        } else {
            tree.load_order_if_present(&[*root])?
        };
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        log::info!("{package}: {root} in load order: {}", names.join(" "));
        order.push_str(&format!("{}: {}\n", normalize(root), names.join(" ")));
        for m in &modules {
            if written.insert(m.name.clone()) {
                let p = modules_out.join(format!("{}.ko", m.name));
                fs::write(&p, &m.object).map_err(|e| Error::io("writing", &p, e))?;
            }
        }
    }
    let p = out.join(MODULE_ORDER);
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

/// The kernel cached in `dir`, if it is complete (a cache made before
/// [`MODULE_ORDER`], or before one of today's roots, counts as incomplete).
fn read_cached(dir: &Path, package: &str) -> Option<GuestKernel> {
    if !dir.join("complete").exists() {
        return None;
    }
    let text = fs::read_to_string(dir.join(MODULE_ORDER)).ok()?;
    let roots: BTreeMap<String, Vec<String>> = text
        .lines()
        .filter_map(|l| {
            let (root, modules) = l.split_once(':')?;
            Some((
                root.trim().to_string(),
                modules.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let kernel = GuestKernel {
        package: package.to_string(),
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("modules"),
        roots,
    };
    let all_there = kernel.vmlinuz.is_file()
        && REQUIRED_ROOTS.iter().all(|r| kernel.has(r))
        && OPTIONAL_ROOTS
            .iter()
            .all(|r| kernel.roots.contains_key(&normalize(r)))
        && kernel
            .roots
            .values()
            .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_joins_roots_and_names_what_is_missing() {
        let line = |r: &str, m: &[&str]| -> (String, Vec<String>) {
            (r.to_string(), m.iter().map(|s| s.to_string()).collect())
        };
        let kernel = GuestKernel {
            package: "k".into(),
            vmlinuz: "/k".into(),
            modules: "/m".into(),
            roots: [
                line(
                    "nvmet_tcp",
                    &["configfs", "nvme-auth", "nvme-core", "nvmet", "nvmet-tcp"],
                ),
                line(
                    "nvme_tcp",
                    &["nvme-auth", "nvme-core", "nvme-fabrics", "nvme-tcp"],
                ),
                line("ublk_drv", &[]),
            ]
            .into_iter()
            .collect(),
        };
        assert!(kernel.has("nvmet-tcp") && !kernel.has("ublk_drv"));
        assert_eq!(
            kernel
                .load_order(&["nvmet-tcp", "nvme_tcp"])
                .expect("order"),
            [
                "configfs",
                "nvme-auth",
                "nvme-core",
                "nvmet",
                "nvmet-tcp",
                "nvme-fabrics",
                "nvme-tcp"
            ]
        );
        let e = kernel.load_order(&["ublk_drv"]).expect_err("absent");
        assert!(e.to_string().contains("has no module ublk_drv"), "{e}");
        let e = kernel.load_order(&["nouveau"]).expect_err("not kept");
        assert!(e.to_string().contains("OPTIONAL_ROOTS"), "{e}");
    }
}
