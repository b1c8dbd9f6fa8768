//! A vhost-user-blk target over the userspace NVMe driver: the pieces of
//! the `nvme-vhost` daemon.
//!
//! - [`config`]: the virtio-blk features and configuration space, from
//!   the namespace and the controller;
//! - [`request`]: parsing a request out of a descriptor chain, checking
//!   every guest-controlled value (pure: host-tested);
//! - [`memtable`]: guest memory regions mapped into the controller's DMA
//!   space, and guest-physical to device address translation;
//! - [`worker`]: one virtqueue served from one NVMe queue pair, zero-copy
//!   when the scatter list makes legal PRPs, bounced otherwise;
//! - [`cache`]: the page-cache mode (`--cache`): requests through the
//!   page cache over the namespace, FLUSH an fsync;
//! - [`phases`]: where a request's time goes inside the daemon
//!   (`--timings`);
//! - [`vring`]: a virtqueue's vhost-user state with copies of its kick
//!   and call eventfds kept across kicks;
//! - [`backend`]: the rust-vmm `VhostUserBackend` tying them together;
//! - [`vduse`]: the same device offered to the local kernel's virtio_blk
//!   driver through VDUSE (its ioctls are the crate's only `unsafe`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod cache;
pub mod config;
pub mod memtable;
pub mod phases;
pub mod request;
pub mod vduse;
pub mod vring;
pub mod worker;
