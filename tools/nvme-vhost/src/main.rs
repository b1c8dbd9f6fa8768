//! `nvme-vhost`: a vhost-user-blk target over the userspace NVMe driver.
//!
//! `nvme-vhost ADDRESS --socket PATH [--nsid N] [--queues N] [--cache SIZE]` opens the
//! controller at ADDRESS (bound to vfio-pci), listens on PATH, and serves
//! one vhost-user front end at a time (QEMU's `vhost-user-blk-pci`,
//! libblkio's `virtio-blk-vhost-user`, ...) from namespace N, one NVMe
//! queue pair per virtqueue. Guest memory is mapped into the controller's
//! IOMMU domain, so data moves between the guest and the device directly.
//!
//! `nvme-vhost ADDRESS --vduse NAME` offers the same device to the local
//! kernel through VDUSE instead (attach it with `vdpa dev add name NAME
//! mgmtdev vduse`; the kernel's virtio_blk driver is then the front end)
//! until SIGTERM or SIGINT, then destroys it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nvme_driver::{Controller, Options, PciAddress};
use tools_common::parse_bytes;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use nvme_vhost::backend::{BackendError, BlkBackend};

#[derive(Parser, Debug)]
#[command(
    name = "nvme-vhost",
    version,
    about = "Serve an NVMe namespace to virtual machines as a vhost-user-blk device"
)]
struct Cli {
    /// PCI address of the controller (bound to vfio-pci), e.g. 0000:00:03.0.
    address: PciAddress,
    /// Path of the vhost-user socket to listen on (replaced if it exists).
    #[arg(long, required_unless_present = "vduse", conflicts_with = "vduse")]
    socket: Option<PathBuf>,
    /// Create the VDUSE device NAME (/dev/vduse/NAME) for the local
    /// kernel instead of listening on a socket; serve it until SIGTERM or
    /// SIGINT (detach it first with `vdpa dev del NAME`), then destroy it.
    #[arg(long, value_name = "NAME", conflicts_with = "once")]
    vduse: Option<String>,
    /// With --vduse: leave the bounce pages to the kernel and copy data
    /// between them and DMA buffers (instead of registering this
    /// process's memory as the bounce pages, which the controller then
    /// reaches directly).
    #[arg(long, requires = "vduse")]
    vduse_kernel_bounce: bool,
    /// Namespace to serve.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Virtqueues offered (each served by its own thread and NVMe queue pair).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Descriptors per virtqueue at most (a power of two).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(2..=32768))]
    queue_size: u16,
    /// Serve one front end and exit when it disconnects (default: wait
    /// for the next).
    #[arg(long)]
    once: bool,
    /// Spin on the NVMe completion queues while requests are in flight
    /// instead of sleeping on their interrupts, and on an idle virtqueue
    /// for 1 ms after its last request before sleeping until a kick
    /// (lowest latency, a core per busy queue).
    #[arg(long)]
    poll: bool,
    /// Without --poll: each wait for NVMe completions polls for up to US
    /// microseconds before sleeping on the interrupt, and an idle
    /// virtqueue is looked at for US after its last request before the
    /// thread sleeps until a kick (hybrid polling; 0: sleep at once).
    #[arg(long, value_name = "US", default_value_t = 0, conflicts_with = "poll")]
    spin_us: u64,
    /// Benchmark floor: answer every read and write at once with success
    /// without touching the device or the data (what the vhost-user
    /// crossing alone costs). Not for real use.
    #[arg(long, conflicts_with = "cache")]
    null_io: bool,
    /// Time each step of every request (taken, parsed, submitted,
    /// completion seen, used ring, call, next kick) and log the mean of
    /// each step when the front end leaves (a benchmark's breakdown:
    /// a clock read per step).
    #[arg(long, conflicts_with = "cache")]
    timings: bool,
    /// Serve through a page cache of SIZE bytes (suffix K, M or G) over
    /// the namespace: reads from the cache, writes buffered and written
    /// back later, FLUSH an fsync of the namespace (the device offers a
    /// write-back cache).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, conflicts_with = "vduse")]
    cache: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("{0}")]
    Driver(#[from] nvme_driver::Error),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("VDUSE: {0}")]
    Vduse(#[from] nvme_vhost::vduse::VduseError),
    #[error("listening on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user crate's error (which is no `std::error::Error`).
    #[error("vhost-user: {0}")]
    Daemon(String),
    #[error("--queue-size {0} is not a power of two")]
    QueueSize(u16),
}

fn daemon_error(e: vhost_user_backend::Error) -> MainError {
    MainError::Daemon(e.to_string())
}

fn run(cli: &Cli) -> Result<(), MainError> {
    if !cli.queue_size.is_power_of_two() {
        return Err(MainError::QueueSize(cli.queue_size));
    }
    let ctrl = Controller::open(cli.address, Options::default())?;
    let backend = match cli.cache {
        Some(bytes) => {
            BlkBackend::with_cache(ctrl, cli.nsid, cli.queues, cli.queue_size, cli.poll, bytes)?
        }
        None => BlkBackend::new(ctrl, cli.nsid, cli.queues, cli.queue_size, cli.poll)?,
    };
    backend.set_spin(std::time::Duration::from_micros(cli.spin_us));
    backend.set_null_io(cli.null_io);
    backend.set_timings(cli.timings);
    let socket = match (&cli.vduse, &cli.socket) {
        (Some(name), _) => {
            return Ok(nvme_vhost::vduse::serve(
                backend,
                name,
                cli.vduse_kernel_bounce,
            )?);
        }
        (None, Some(socket)) => socket,
        // clap requires one of them.
        (None, None) => return Ok(()),
    };
    loop {
        let mut listener = Listener::new(socket, true).map_err(|source| MainError::Listen {
            path: socket.clone(),
            source,
        })?;
        let mut daemon = VhostUserDaemon::new(
            "nvme-vhost".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(daemon_error)?;
        log::info!("listening on {}", socket.display());
        daemon.start(&mut listener).map_err(daemon_error)?;
        log::info!("front end connected");
        // A front end that closes the socket ends the connection this way.
        let ended = match daemon.wait() {
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            other => other,
        };
        // Joins the queue threads (their batches drain first).
        drop(daemon);
        backend.forget_memory();
        let (direct, bounced, failed, unsupported) = backend.stats().snapshot();
        log::info!(
            "front end gone ({}): requests direct {direct}, bounced {bounced}, \
             failed {failed}, unsupported {unsupported}",
            match &ended {
                Ok(()) => "disconnected".to_string(),
                Err(e) => e.to_string(),
            }
        );
        if cli.timings {
            log::info!(
                "phases (mean us, requests): {}",
                backend.stats().phases.summary()
            );
        }
        if backend.cache().is_some() {
            let (hits, misses, writes, flushes) = backend.stats().cache_snapshot();
            log::info!(
                "page cache: read hits {hits}, read misses {misses}, \
                 writes buffered {writes}, flushes {flushes}"
            );
        }
        if cli.once {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
