//! The guest's initramfs: newc cpio archives, uncompressed (the kernel
//! unpacks them faster than it would inflate them).
//!
//! A run boots one file made of two concatenated archives: the cached base
//! (busybox, modules, `/init`) and a small per-run one (the command, the
//! project's binaries, copied files). The kernel unpacks both in order.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Builds one newc archive.
#[derive(Debug)]
pub struct Archive {
    out: BufWriter<File>,
    path: std::path::PathBuf,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Archive {
    /// Starts an archive at `path` (truncating it).
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io("creating", path, e))?;
        Ok(Archive {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            dirs: BTreeSet::new(),
            ino: 1,
        })
    }

    /// Adds a directory and its parents (idempotent).
    pub fn dir(&mut self, guest_path: &str) -> Result<()> {
        let mut prefix = String::new();
        for part in guest_path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix, 0o040_755, &[])?;
            }
        }
        Ok(())
    }

    /// Adds a file with the given bytes and permission bits.
    pub fn file(&mut self, guest_path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let guest_path = guest_path.trim_start_matches('/');
        if let Some((parent, _)) = guest_path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(guest_path, 0o100_000 | (mode & 0o7777), data)
    }

    /// Adds a host file; executable when the host file is.
    pub fn host_file(&mut self, guest_path: &str, host_path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host_path).map_err(|e| Error::io("reading", host_path, e))?;
        let meta = std::fs::metadata(host_path).map_err(|e| Error::io("reading", host_path, e))?;
        self.file(guest_path, meta.permissions().mode(), &data)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, guest_path: &str, target: &str) -> Result<()> {
        let guest_path = guest_path.trim_start_matches('/');
        if let Some((parent, _)) = guest_path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(guest_path, 0o120_777, target.as_bytes())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| Error::Config(format!("{name} is too large for a cpio archive")))?;
        self.ino += 1;
        let mut w = cpio::newc::Builder::new(name)
            .mode(mode)
            .ino(self.ino)
            .nlink(1)
            .write(&mut self.out, size);
        w.write_all(data)
            .map_err(|e| Error::io("writing", &self.path, e))?;
        w.finish()
            .map_err(|e| Error::io("writing", &self.path, e))?;
        Ok(())
    }

    /// Writes the trailer and flushes.
    pub fn finish(mut self) -> Result<()> {
        cpio::newc::trailer(&mut self.out).map_err(|e| Error::io("writing", &self.path, e))?;
        self.out
            .flush()
            .map_err(|e| Error::io("writing", &self.path, e))
    }
}
