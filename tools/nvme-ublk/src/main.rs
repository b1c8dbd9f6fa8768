//! `nvme-ublk`: a ublk block device target over the userspace NVMe driver.
//!
//! `nvme-ublk ADDRESS [--nsid N] [--queues N] [--depth D] [--interrupts
//! [--spin-us US]] [--null-io] [--no-fua]` opens the controller at ADDRESS
//! (bound to vfio-pci) and serves namespace N as `/dev/ublkbN` through the
//! kernel's ublk driver (`ublk_drv`, Linux 6.0 and later), one NVMe queue
//! pair per ublk queue (polled, or sleeping on its MSI-X interrupt with
//! `--interrupts`). It prints `serving /dev/ublkbN` once the device is up,
//! and on SIGTERM or SIGINT stops it (the device goes away) and exits.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{UblkDev, UblkQueue};
use libublk::{UblkError, UblkFlags};
use nvme_driver::{Controller, Options, PciAddress};

use nvme_ublk::params::{Geometry, ParamError};
use nvme_ublk::queue::QueueIo;

/// The ublk driver's control node: present once `ublk_drv` is loaded.
const UBLK_CONTROL: &str = "/dev/ublk-control";
/// How often the main thread looks for a stop request.
const STOP_POLL: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
#[command(
    name = "nvme-ublk",
    version,
    about = "Serve an NVMe namespace as a Linux block device (/dev/ublkbN) through ublk"
)]
struct Cli {
    /// PCI address of the controller (bound to vfio-pci), e.g. 0000:00:03.0.
    address: PciAddress,
    /// Namespace to serve.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// ublk queues (each served by its own thread and NVMe queue pair).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Tags (requests in flight) per queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    depth: u16,
    /// Largest request in KiB (also each tag's buffer); capped by the
    /// controller's transfer limit (MDTS).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..=1024))]
    max_io_kib: u32,
    /// ublk device id (default: the kernel picks the first free one).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    id: i32,
    /// Sleep on the NVMe queues' MSI-X interrupts while requests are in
    /// flight instead of polling them (measured slower under TCG: QD1
    /// about 2x the polled latency; docs/UBLK.md). Without it a queue
    /// thread polls while its commands are in flight, entering the kernel
    /// on every turn to pick up new requests, and sleeps when none are.
    #[arg(long)]
    interrupts: bool,
    /// With --interrupts: poll an NVMe queue for up to this many
    /// microseconds after the last event before sleeping on its interrupt.
    #[arg(long, value_name = "US", default_value_t = 0, requires = "interrupts")]
    spin_us: u64,
    /// Benchmark floor: complete every request at once with success and
    /// send no NVMe command (reads return whatever the tag's buffer held;
    /// writes are dropped). What the ublk crossing alone costs; the
    /// controller is still opened, for the device's geometry. Not for
    /// real use.
    #[arg(long)]
    null_io: bool,
    /// Do not offer FUA to the kernel (it then sends a write and a flush
    /// for a FUA write): for a device that does not honour NVMe's FUA
    /// bit, such as QEMU's emulated NVMe controller.
    #[arg(long)]
    no_fua: bool,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(
        "{UBLK_CONTROL} is missing: this kernel has no ublk driver loaded \
         (ublk_drv, Linux 6.0+ with CONFIG_BLK_DEV_UBLK; try `modprobe ublk_drv`)"
    )]
    NoUblk,
    #[error("{0}")]
    Driver(#[from] nvme_driver::Error),
    #[error("{0}")]
    Params(#[from] ParamError),
    #[error("ublk: {what}: {source}")]
    Ublk {
        what: &'static str,
        source: UblkError,
    },
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("a queue failed; the device was stopped")]
    QueueFailed,
}

fn ublk_err(what: &'static str) -> impl FnOnce(UblkError) -> MainError {
    move |source| MainError::Ublk { what, source }
}

fn run(cli: &Cli) -> Result<(), MainError> {
    if !Path::new(UBLK_CONTROL).exists() {
        return Err(MainError::NoUblk);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(MainError::Signal)?;
    }
    let options = Options {
        io_queues: cli.queues,
        // One more entry than tags: an NVMe SQ holds one less than its size.
        io_queue_entries: (cli.depth + 1).max(Options::default().io_queue_entries),
        ..Options::default()
    };
    let ctrl = Controller::open(cli.address, options)?;
    let ns = ctrl.namespace(cli.nsid)?.clone();
    let geometry = Geometry {
        fua: !cli.no_fua,
        ..Geometry::new(ctrl.identify(), &ns, ctrl.max_transfer())
    };
    let buf_bytes = geometry.max_io_bytes(cli.max_io_kib as usize * 1024)?;
    let params = geometry.ublk_params(buf_bytes)?;
    log::info!(
        "namespace {}: {} blocks of {} bytes; requests up to {} KiB; \
         discard {}, write zeroes {}, volatile cache {}, FUA {}",
        ns.nsid,
        ns.blocks,
        ns.lba_size,
        buf_bytes / 1024,
        geometry.deallocate,
        geometry.write_zeroes,
        geometry.volatile_cache,
        geometry.volatile_cache && geometry.fua
    );
    // Queue pairs and tag buffers first: a failure here leaves no ublk
    // device behind.
    let mut queues = Vec::with_capacity(cli.queues.into());
    for _ in 0..cli.queues {
        let qpair = if !cli.interrupts {
            ctrl.io_qpair()?
        } else {
            ctrl.io_qpair_with_interrupts().or_else(|e| {
                log::warn!("no interrupt for an NVMe queue ({e}); polling it");
                ctrl.io_qpair()
            })?
        };
        queues.push(Some(
            QueueIo::new(qpair, ctrl.dma_pool(), cli.depth, buf_bytes)?
                .with_spin(Duration::from_micros(cli.spin_us))
                .with_null_io(cli.null_io),
        ));
    }
    let queues = Arc::new(Mutex::new(queues));
    if cli.null_io {
        log::warn!("--null-io: requests complete at once without the device; data is not kept");
    }

    let ublk = UblkCtrlBuilder::default()
        .name("nvme-ublk")
        .id(cli.id)
        .nr_queues(cli.queues)
        .depth(cli.depth)
        .io_buf_bytes(u32::try_from(buf_bytes).unwrap_or(u32::MAX))
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
        .map_err(ublk_err("adding the device"))?;

    let failed = Arc::new(AtomicBool::new(false));
    let q_failed = failed.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| {
        let io = queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(usize::from(qid))
            .and_then(Option::take);
        let Some(io) = io else {
            log::error!("ublk queue {qid}: no NVMe queue pair for it");
            q_failed.store(true, Ordering::Release);
            // Starting the device waits for every queue: make it fail
            // instead (libublk's only public way to say a queue failed).
            dev.notify_buffer_registration_complete(true);
            return;
        };
        let q = match UblkQueue::new(qid, dev) {
            Ok(q) => q,
            Err(e) => {
                log::error!("ublk queue {qid}: {e}");
                q_failed.store(true, Ordering::Release);
                dev.notify_buffer_registration_complete(true);
                return;
            }
        };
        match io.serve(&q, &geometry) {
            Ok(s) => log::info!(
                "ublk queue {qid}: done; requests ok {} ({} with FUA), failed {}, refused {}",
                s.ok,
                s.fua,
                s.failed,
                s.refused
            ),
            Err(e) => {
                log::error!("{e}");
                q_failed.store(true, Ordering::Release);
            }
        }
    };
    let dev_size = geometry.bytes();
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = dev_size;
        dev.tgt.params = params;
        Ok(())
    };
    let main_failed = failed.clone();
    let device_fn = move |d: &UblkCtrl| {
        println!("serving {}", d.get_bdev_path());
        let _ = std::io::stdout().flush();
        while !stop.load(Ordering::Acquire) && !main_failed.load(Ordering::Acquire) {
            std::thread::sleep(STOP_POLL);
        }
        log::info!("stopping {}", d.get_bdev_path());
        if let Err(e) = d.kill_dev() {
            log::error!("stopping the device: {e}");
        }
    };
    ublk.run_target(tgt_init, q_fn, device_fn)
        .map_err(ublk_err("serving"))?;
    drop(ublk);
    if failed.load(Ordering::Acquire) {
        return Err(MainError::QueueFailed);
    }
    log::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvme-ublk: {e}");
            ExitCode::FAILURE
        }
    }
}
