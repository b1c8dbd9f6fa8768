//! `nvme-vhost`: a vhost-user-blk target over the userspace NVMe driver.
#![forbid(unsafe_code)]

mod config;
mod request;

fn main() {}
