//! Downloading Debian packages without installing them, from the host's
//! own apt setup (its release) or from a private one (its backports).
//!
//! The private setup lives in the cache (`apt/<suite>/`: a deb822 sources
//! folder, the package lists, apt's own cache) and is passed to apt-get
//! with `-o Dir::...` options, so the host's sources and lists are never
//! touched. Network steps are retried; a registry that stays unreachable
//! gives an error that says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result, run_cmd};
use crate::host;
use crate::versions::Suite;

/// How often a network step is tried before giving up.
const ATTEMPTS: u32 = 3;
/// Overrides the Debian mirror the private setup uses.
pub const MIRROR_ENV: &str = "NVME_VM_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One apt configuration to download packages with.
#[derive(Debug, Clone)]
pub struct Apt {
    suite: Suite,
    /// `-o` options of a private setup (empty: the host's).
    opts: Vec<String>,
    /// What the private setup points at, for messages.
    source: String,
}

/// Suites whose lists this process has refreshed.
static UPDATED: Mutex<Vec<Suite>> = Mutex::new(Vec::new());

impl Apt {
    /// The apt configuration for `suite`, its private folders under `cache`.
    pub fn for_suite(suite: Suite, cache: &Path) -> Result<Apt> {
        match suite {
            Suite::Release => Ok(Apt {
                suite,
                opts: Vec::new(),
                source: "the host's apt sources".into(),
            }),
            Suite::Backports => {
                let name = format!("{}-backports", release_codename());
                let mirror = debian_mirror();
                let root = cache.join("apt").join(&name);
                let sources = root.join("sources.list.d");
                let lists = root.join("lists");
                let apt_cache = root.join("cache");
                for d in [
                    sources.clone(),
                    lists.join("partial"),
                    apt_cache.join("archives").join("partial"),
                ] {
                    fs::create_dir_all(&d).map_err(|e| Error::io("creating", &d, e))?;
                }
                let file = sources.join("backports.sources");
                let text = format!(
                    "Types: deb\nURIs: {mirror}\nSuites: {name}\nComponents: main\nSigned-By: {KEYRING}\n"
                );
                if fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                    fs::write(&file, &text).map_err(|e| Error::io("writing", &file, e))?;
                }
                let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
                Ok(Apt {
                    suite,
                    opts: vec![
                        "Dir::Etc::sourcelist=/dev/null".into(),
                        // Only the suite's packages count, not the host's
                        // installed ones (whose version would win before
                        // the lists are fetched).
                        "Dir::State::status=/dev/null".into(),
                        opt("Dir::Etc::sourceparts", &sources),
                        opt("Dir::State::Lists", &lists),
                        opt("Dir::Cache", &apt_cache),
                        "APT::Sandbox::User=root".into(),
                    ],
                    source: format!("{mirror} {name}"),
                })
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.opts {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Refreshes the package lists, at most once per process and suite.
    pub fn update(&self) -> Result<()> {
        let mut done = UPDATED.lock().unwrap_or_else(|e| e.into_inner());
        if done.contains(&self.suite) {
            return Ok(());
        }
        if self.opts.is_empty() {
            host::apt_update_once()?;
        } else {
            log::info!("refreshing the package lists of {}", self.source);
            self.retry("apt-get update", || {
                let out = run_cmd(self.command("apt-get").args(["update", "-q"]))?;
                // apt-get update exits 0 when a source fails to download.
                let mut lines = out.lines();
                match lines.find(|l| l.starts_with("Err:")) {
                    Some(line) => Err(Error::Missing(format!(
                        "{line}: {}",
                        lines.next().unwrap_or("").trim()
                    ))),
                    None => Ok(()),
                }
            })?;
        }
        done.push(self.suite);
        Ok(())
    }

    /// The package `meta` (e.g. `linux-image-amd64`) depends on whose
    /// name starts with `prefix`; the lists are refreshed first if needed.
    pub fn resolve_depends(&self, meta: &str, prefix: &str) -> Result<String> {
        let query = || run_cmd(self.command("apt-cache").args(["depends", meta]));
        if let Ok(out) = query()
            && let Some(p) = parse_depends(&out, meta, prefix)
        {
            return Ok(p);
        }
        self.update()?;
        let out = query()?;
        parse_depends(&out, meta, prefix).ok_or_else(|| {
            Error::Missing(format!(
                "{meta} depends on no {prefix}* package in {}: {out}",
                self.source
            ))
        })
    }

    /// The candidate version of `package`.
    pub fn candidate(&self, package: &str) -> Result<String> {
        let query = || run_cmd(self.command("apt-cache").args(["policy", package]));
        if let Ok(out) = query()
            && let Some(v) = parse_candidate(&out)
        {
            return Ok(v);
        }
        self.update()?;
        let out = query()?;
        parse_candidate(&out)
            .ok_or_else(|| Error::Missing(format!("no candidate for {package} in {}", self.source)))
    }

    /// Downloads `package` into `dir` (kept there: a second call finds it)
    /// and returns the .deb's path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        if let Some(deb) = find_deb(dir, package)? {
            return Ok(deb);
        }
        log::info!("downloading {package} from {}", self.source);
        let once = || {
            run_cmd(
                self.command("apt-get")
                    .args(["download", "-q", package])
                    .current_dir(dir),
            )
        };
        if once().is_err() {
            self.update()?;
            self.retry(&format!("apt-get download {package}"), || once().map(drop))?;
        }
        find_deb(dir, package)?.ok_or_else(|| {
            Error::Missing(format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            ))
        })
    }

    /// Downloads `package` into `debs` (or finds it there) and unpacks it
    /// into `root`; a cached .deb that does not unpack (a download cut
    /// short) is fetched again once.
    pub fn fetch_into(&self, package: &str, debs: &Path, root: &Path) -> Result<()> {
        let deb = self.download(package, debs)?;
        if let Err(e) = unpack(&deb, root) {
            log::warn!(
                "{} does not unpack ({e}); downloading it again",
                deb.display()
            );
            fs::remove_file(&deb).map_err(|e| Error::io("removing", &deb, e))?;
            let deb = self.download(package, debs)?;
            unpack(&deb, root)?;
        }
        Ok(())
    }

    fn retry(&self, what: &str, mut f: impl FnMut() -> Result<()>) -> Result<()> {
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            match f() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::warn!("{what} (attempt {attempt} of {ATTEMPTS}) failed: {e}");
                    last = Some(e);
                    if attempt < ATTEMPTS {
                        std::thread::sleep(Duration::from_secs(3 * u64::from(attempt)));
                    }
                }
            }
        }
        Err(Error::Missing(format!(
            "{what}: the Debian archive ({}) is unreachable or refused, {ATTEMPTS} attempts: {}; \
             check the network or set {MIRROR_ENV}",
            self.source,
            match last {
                Some(Error::Missing(why)) => why,
                Some(e) => e.to_string(),
                None => String::new(),
            }
        )))
    }
}

/// Unpacks a .deb into `root` with dpkg-deb.
pub fn unpack(deb: &Path, root: &Path) -> Result<()> {
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root)).map(drop)
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    Ok(entries.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
    }))
}

/// The host's release codename (`bookworm`), from /etc/os-release.
pub fn release_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

/// The Debian mirror: `NVME_VM_DEBIAN_MIRROR`, else the one the host's
/// sources use, else deb.debian.org.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var(MIRROR_ENV)
        && !m.trim().is_empty()
    {
        return m.trim().trim_end_matches('/').to_string();
    }
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list")
                && let Ok(t) = fs::read_to_string(&p)
            {
                texts.push(t);
            }
        }
    }
    texts
        .iter()
        .find_map(|t| host_mirror(t))
        .unwrap_or_else(|| DEFAULT_MIRROR.into())
}

/// The first Debian archive URI (ending in `/debian`) in a sources file.
fn host_mirror(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let words = l
                .strip_prefix("URIs:")
                .or_else(|| l.strip_prefix("deb "))
                .unwrap_or("");
            words.split_whitespace()
        })
        .map(|u| u.trim_end_matches('/'))
        .find(|u| u.starts_with("http") && u.ends_with("/debian"))
        .map(String::from)
}

fn parse_depends(out: &str, meta: &str, prefix: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with(prefix) && *p != meta)
        .map(String::from)
}

fn parse_candidate(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|v| !v.is_empty() && *v != "(none)")
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_output() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.12.95+deb12-amd64\n";
        assert_eq!(
            parse_depends(out, "linux-image-amd64", "linux-image-").as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
        assert_eq!(
            parse_depends("linux-image-amd64\n", "linux-image-amd64", "linux-image-"),
            None
        );
        let policy = "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:10.0.2+ds-2\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("1:10.0.2+ds-2"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
    }

    #[test]
    fn finds_the_host_mirror() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/x\n\
                      URIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(
            host_mirror(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list = "deb http://mirror.example/debian/ bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            host_mirror(list).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            host_mirror("deb https://packages.cloud.google.com/apt x main"),
            None
        );
    }
}
