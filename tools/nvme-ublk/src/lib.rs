//! A ublk target over the userspace NVMe driver: the pieces of the
//! `nvme-ublk` daemon, which serves an NVMe namespace as `/dev/ublkbN` so
//! that unmodified programs (filesystems, databases, fio) use the driver.
//!
//! - [`params`]: the block device's parameters from Identify;
//! - [`request`]: checking a ublk request and mapping it to NVMe (pure:
//!   host-tested);
//! - [`queue`]: one ublk queue served from one NVMe queue pair, each
//!   tag's buffer in DMA memory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod params;
pub mod queue;
pub mod request;
