//! Host prerequisites: QEMU and a static busybox, installed from Debian's
//! packages when missing; QEMU from the backports unpacked into the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::apt::Apt;
use crate::error::{Error, Result, run_cmd};
use crate::versions::Suite;

/// The QEMU system emulator of the host's release.
pub const QEMU: &str = "qemu-system-x86_64";
/// The packages that make up QEMU for an x86 guest, unpacked together.
const QEMU_DEBS: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-system-data"];
/// Where the release's QEMU (and SeaBIOS, through its links) keeps firmware.
const SYSTEM_QEMU_DATA: &str = "/usr/share/qemu";
/// The static busybox that becomes the guest's userland.
pub const BUSYBOX: &str = "/bin/busybox";

/// A Debian package the harness needs, and how to tell it is there.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    /// Debian package name.
    pub name: &'static str,
    /// A file the package provides; its presence means installed.
    pub provides: &'static str,
}

/// What every VM run needs on the host.
pub const VM_PACKAGES: &[Package] = &[
    Package {
        name: "qemu-system-x86",
        provides: "/usr/bin/qemu-system-x86_64",
    },
    Package {
        name: "busybox-static",
        provides: "/usr/share/doc/busybox-static",
    },
];

/// What building the workspace needs beyond Rust: libclang, for the
/// bindgen run of libublk's -sys crate (`nvme-ublk`). `cargo xtask`
/// installs these before it compiles anything of the workspace, and the
/// guest build before it builds the guest binaries.
pub const BUILD_PACKAGES: &[Package] = &[
    Package {
        name: "libclang1-14",
        provides: "/usr/share/doc/libclang1-14",
    },
    Package {
        name: "libclang-common-14-dev",
        provides: "/usr/share/doc/libclang-common-14-dev",
    },
];

static APT_LOCK: Mutex<()> = Mutex::new(());

/// Installs the packages that are missing, with apt-get (which needs root).
pub fn ensure_packages(packages: &[Package]) -> Result<()> {
    let _guard = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| !Path::new(p.provides).exists())
        .map(|p| p.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log::info!("installing {}", missing.join(" "));
    let install = apt_update_once().and_then(|()| {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if let Err(e) = install {
        return Err(Error::Missing(format!(
            "Debian packages {} could not be installed ({e}); run as root, or `apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        )));
    }
    for p in packages {
        if !Path::new(p.provides).exists() {
            return Err(Error::Missing(format!(
                "package {} installed but {} is still absent",
                p.name, p.provides
            )));
        }
    }
    Ok(())
}

/// A QEMU ready to run.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The qemu-system-x86_64 executable.
    pub binary: PathBuf,
    /// Firmware folders to pass with `-L`, in order (empty: built-in default).
    pub data_dirs: Vec<PathBuf>,
    /// The first line of `--version`.
    pub version: String,
}

static QEMU_LOCK: Mutex<()> = Mutex::new(());

/// The QEMU of `suite`: the release's is installed with apt-get; the
/// backports' (10.0) is downloaded and unpacked into `cache` once. The
/// latter runs on the libraries and the SeaBIOS that the release's
/// qemu-system-x86 brings, so that package is installed in both cases.
pub fn ensure_qemu(suite: Suite, cache: &Path) -> Result<Qemu> {
    let _guard = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ensure_packages(VM_PACKAGES)?;
    let (binary, data_dirs) = match suite {
        Suite::Release => (PathBuf::from(VM_PACKAGES[0].provides), Vec::new()),
        Suite::Backports => {
            let root = ensure_backports_qemu(cache)?;
            (
                root.join("usr/bin").join(QEMU),
                vec![root.join("usr/share/qemu"), PathBuf::from(SYSTEM_QEMU_DATA)],
            )
        }
    };
    let out = run_cmd(Command::new(&binary).arg("--version")).map_err(|e| {
        Error::Missing(format!(
            "{} does not run ({e}); remove {} to fetch it again",
            binary.display(),
            cache.display()
        ))
    })?;
    Ok(Qemu {
        binary,
        data_dirs,
        version: out.lines().next().unwrap_or("").trim().to_string(),
    })
}

/// Unpacks the backports' QEMU packages into `cache/qemu-<version>/` and
/// returns that folder.
fn ensure_backports_qemu(cache: &Path) -> Result<PathBuf> {
    let pointer = cache.join("qemu-backports");
    if let Ok(dir) = fs::read_to_string(&pointer) {
        let dir = cache.join(dir.trim());
        if dir.join("complete").exists() {
            return Ok(dir);
        }
    }
    let apt = Apt::for_suite(Suite::Backports, cache)?;
    let version = apt.candidate(QEMU_DEBS[0])?;
    let name = format!("qemu-{}", version.replace([':', '~', '+'], "_"));
    let dir = cache.join(&name);
    if !dir.join("complete").exists() {
        log::info!("fetching QEMU {version} from the backports");
        let debs = cache.join("debs");
        let work = cache.join(format!("{name}.partial"));
        let _ = fs::remove_dir_all(&work);
        for package in QEMU_DEBS {
            apt.fetch_into(package, &debs, &work)?;
        }
        let exe = work.join("usr/bin").join(QEMU);
        shared_libs(&exe).map_err(|e| {
            Error::Missing(format!(
                "QEMU {version} from the backports cannot run on this host's libraries: {e}"
            ))
        })?;
        fs::write(work.join("complete"), &version).map_err(|e| Error::io("writing", &work, e))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&work, &dir).map_err(|e| Error::io("moving into place", &dir, e))?;
    }
    fs::write(&pointer, &name).map_err(|e| Error::io("writing", &pointer, e))?;
    Ok(dir)
}

static APT_UPDATED: Mutex<bool> = Mutex::new(false);

/// Runs `apt-get update` at most once per process.
pub fn apt_update_once() -> Result<()> {
    let mut done = APT_UPDATED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        match run_cmd(Command::new("apt-get").args(["update", "-q"])) {
            Ok(_) => break,
            Err(e) if attempt < 3 => {
                log::warn!("apt-get update (attempt {attempt} of 3) failed: {e}");
                std::thread::sleep(std::time::Duration::from_secs(3 * attempt));
                attempt += 1;
            }
            Err(e) => {
                return Err(Error::Missing(format!(
                    "apt-get update failed 3 times (is the Debian archive reachable?): {e}"
                )));
            }
        }
    }
    *done = true;
    Ok(())
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Debian packages of the host tools the harness knows how to install.
const TOOL_PACKAGES: &[(&str, Package)] = &[
    (
        "fio",
        Package {
            name: "fio",
            provides: "/usr/bin/fio",
        },
    ),
    (
        // ext4 for the ublk tests: make, check, inspect.
        "mke2fs",
        Package {
            name: "e2fsprogs",
            provides: "/usr/sbin/mke2fs",
        },
    ),
    (
        "e2fsck",
        Package {
            name: "e2fsprogs",
            provides: "/usr/sbin/e2fsck",
        },
    ),
    (
        "debugfs",
        Package {
            name: "e2fsprogs",
            provides: "/usr/sbin/debugfs",
        },
    ),
    (
        // QEMU's reference vhost-user-blk server, for the vhost tests.
        "qemu-storage-daemon",
        Package {
            name: "qemu-system-common",
            provides: "/usr/bin/qemu-storage-daemon",
        },
    ),
    (
        // iproute2's vDPA tool, to attach a VDUSE device in the guest.
        "vdpa",
        Package {
            name: "iproute2",
            provides: "/usr/sbin/vdpa",
        },
    ),
    (
        // vfat, for the differential tests against the kernel's mpage.
        "mkfs.vfat",
        Package {
            name: "dosfstools",
            provides: "/usr/sbin/mkfs.vfat",
        },
    ),
    (
        // XFS (fs/iomap's buffered I/O), for the same tests.
        "mkfs.xfs",
        Package {
            name: "xfsprogs",
            provides: "/usr/sbin/mkfs.xfs",
        },
    ),
    (
        // A file's block map (FIEMAP, or FIBMAP where the file system has
        // no FIEMAP, as vfat), for the same tests.
        "filefrag",
        Package {
            name: "e2fsprogs",
            provides: "/usr/sbin/filefrag",
        },
    ),
    (
        "mkfs.ext4",
        Package {
            name: "e2fsprogs",
            provides: "/usr/sbin/mkfs.ext4",
        },
    ),
];

/// The path of host executable `name`, installing its package if the
/// harness knows it and it is missing.
pub fn host_tool(name: &str) -> Result<PathBuf> {
    if let Some((_, package)) = TOOL_PACKAGES.iter().find(|(n, _)| *n == name) {
        ensure_packages(std::slice::from_ref(package))?;
    }
    which(name).ok_or_else(|| Error::Missing(format!("host tool `{name}` is not on PATH")))
}

/// The shared libraries (and the loader) an executable needs, from `ldd`.
pub fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = run_cmd(std::process::Command::new("ldd").arg(exe))?;
    parse_ldd(&out)
        .map_err(|lib| Error::Missing(format!("{}: shared library {lib} not found", exe.display())))
}

/// Paths from `ldd` output; Err(name) for a library it could not find.
fn parse_ldd(out: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibaio.so.1 => /lib/x86_64-linux-gnu/libaio.so.1 (0x00007f63)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f63)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f63)\n";
        assert_eq!(
            parse_ldd(out),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libaio.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
        assert_eq!(
            parse_ldd("\tlibgone.so.1 => not found\n"),
            Err("libgone.so.1".to_string())
        );
    }
}
