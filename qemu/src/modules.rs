//! Kernel modules: where each one is in an unpacked kernel package, what
//! it needs (the `depends` and `softdep` fields of its `.modinfo`), and the
//! order to insmod them in, worked out from those fields (the guest has no
//! modprobe and the package no modules.dep).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, run_cmd};
use crate::host::{self, Package};

/// xz, for the `.ko.xz` modules of newer Debian kernels.
const XZ: Package = Package {
    name: "xz-utils",
    provides: "/usr/bin/xz",
};

/// The modules of one kernel, by name (`-` and `_` are the same).
#[derive(Debug)]
pub struct ModuleTree {
    files: BTreeMap<String, PathBuf>,
}

/// One module ready to be copied into the guest.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its name as found (file name without `.ko`).
    pub name: String,
    /// The uncompressed ELF object.
    pub object: Vec<u8>,
}

impl ModuleTree {
    /// Indexes every `*.ko` / `*.ko.xz` below `dir` (a `lib/modules/<release>`).
    pub fn scan(dir: &Path) -> Result<ModuleTree> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).map_err(|e| Error::io("listing", &d, e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
                    n.strip_suffix(".ko")
                        .or_else(|| n.strip_suffix(".ko.xz"))
                        .map(String::from)
                }) {
                    files.insert(normalize(&name), path);
                }
            }
        }
        Ok(ModuleTree { files })
    }

    fn load(&self, name: &str) -> Result<Option<Module>> {
        let Some(path) = self.files.get(&normalize(name)) else {
            return Ok(None);
        };
        let object = if path.extension().is_some_and(|x| x == "xz") {
            host::ensure_packages(&[XZ])?;
            let out = Command::new("xz")
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(|source| Error::Spawn {
                    cmd: format!("xz -dc {}", path.display()),
                    source,
                })?;
            if !out.status.success() {
                // Let run_cmd produce the error with stderr.
                run_cmd(Command::new("xz").arg("-t").arg(path))?;
                return Err(Error::Missing(format!(
                    "cannot decompress {}",
                    path.display()
                )));
            }
            out.stdout
        } else {
            fs::read(path).map_err(|e| Error::io("reading", path, e))?
        };
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or(name);
        let name = file
            .strip_suffix(".xz")
            .unwrap_or(file)
            .strip_suffix(".ko")
            .unwrap_or(file)
            .to_string();
        Ok(Some(Module { name, object }))
    }

    /// `roots` and everything they need, in an order insmod accepts:
    /// each module after its `depends` and its `softdep pre:` modules, and
    /// its `softdep post:` modules right after it. Soft dependencies absent
    /// from this kernel are left out; a missing root or hard dependency is
    /// an error.
    pub fn load_order(&self, roots: &[&str]) -> Result<Vec<Module>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for root in roots {
            self.visit(root, true, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    /// [`ModuleTree::load_order`] for roots this kernel may not have:
    /// those it lacks are left out (with what only they needed).
    pub fn load_order_if_present(&self, roots: &[&str]) -> Result<Vec<Module>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for root in roots {
            self.visit(root, false, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        required: bool,
        seen: &mut HashSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        if !seen.insert(normalize(name)) {
            return Ok(());
        }
        let Some(module) = self.load(name)? else {
            return if required {
                Err(Error::Missing(format!(
                    "kernel module {name} is not in the guest kernel's package"
                )))
            } else {
                Ok(())
            };
        };
        let info = modinfo(&module.object)
            .ok_or_else(|| Error::Missing(format!("module {name} has no readable .modinfo")))?;
        let deps = info.depends();
        let (pre, post) = info.softdeps();
        for d in &pre {
            self.visit(d, false, seen, order)?;
        }
        for d in &deps {
            self.visit(d, true, seen, order)?;
        }
        order.push(module);
        for d in &post {
            self.visit(d, false, seen, order)?;
        }
        Ok(())
    }
}

/// Module names compare with `-` and `_` the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `key=value` strings of a module's `.modinfo` section.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModInfo(Vec<String>);

impl ModInfo {
    fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter_map(move |e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// Hard dependencies (the `depends` field).
    pub fn depends(&self) -> Vec<String> {
        self.values("depends")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect()
    }

    /// Soft dependencies: (`pre:` modules, `post:` modules).
    pub fn softdeps(&self) -> (Vec<String>, Vec<String>) {
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        for v in self.values("softdep") {
            let mut into = &mut pre;
            for word in v.split_whitespace() {
                match word {
                    "pre:" => into = &mut pre,
                    "post:" => into = &mut post,
                    w => into.push(w.to_string()),
                }
            }
        }
        (pre, post)
    }
}

/// Reads the `.modinfo` section of a 64-bit little-endian ELF object.
pub fn modinfo(elf: &[u8]) -> Option<ModInfo> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(h)? as usize;
        let off = u64_at(h + 0x18)?;
        let size = u64_at(h + 0x20)?;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name, data) = section(i)?;
        let rest = names.get(name..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == b".modinfo").then(|| {
            ModInfo(
                data.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a section-name table and a .modinfo.
    fn elf_with_modinfo(info: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_off = elf.len();
        elf.extend_from_slice(names);
        let info_off = elf.len();
        elf.extend_from_slice(info);
        let shoff = elf.len();
        let header = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        elf.extend(header(0, 0, 0));
        elf.extend(header(1, names_off, names.len()));
        elf.extend(header(11, info_off, info.len()));
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_depends_and_softdeps() {
        let elf = elf_with_modinfo(
            b"license=GPL\0softdep=post: vfio_iommu_type1 vfio_iommu_spapr_tce\0depends=vfio-pci-core,irqbypass\0name=x\0",
        );
        let info = modinfo(&elf).expect("modinfo");
        assert_eq!(info.depends(), vec!["vfio-pci-core", "irqbypass"]);
        assert_eq!(
            info.softdeps(),
            (
                vec![],
                vec![
                    "vfio_iommu_type1".to_string(),
                    "vfio_iommu_spapr_tce".to_string()
                ]
            )
        );
        let empty = modinfo(&elf_with_modinfo(b"depends=\0")).expect("modinfo");
        assert!(empty.depends().is_empty());
        assert_eq!(modinfo(b"not an elf"), None);
    }

    #[test]
    fn orders_modules_after_their_dependencies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("kernel/drivers");
        fs::create_dir_all(&sub).expect("mkdir");
        let put = |name: &str, info: &[u8]| {
            fs::write(sub.join(format!("{name}.ko")), elf_with_modinfo(info)).expect("write");
        };
        put("irqbypass", b"depends=\0");
        put(
            "vfio",
            b"softdep=post: vfio_iommu_type1 vfio_iommu_spapr_tce\0depends=\0",
        );
        put("vfio_iommu_type1", b"depends=vfio\0");
        put("vfio-pci-core", b"depends=vfio,irqbypass\0");
        put("vfio-pci", b"depends=vfio-pci-core,vfio\0");
        put("broken", b"depends=absent\0");
        let tree = ModuleTree::scan(dir.path()).expect("scan");
        let order: Vec<String> = tree
            .load_order(&["vfio-pci"])
            .expect("order")
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            [
                "vfio",
                "vfio_iommu_type1",
                "irqbypass",
                "vfio-pci-core",
                "vfio-pci"
            ]
        );
        assert!(tree.load_order(&["broken"]).is_err());
        assert!(tree.load_order(&["nothere"]).is_err());
    }
}
