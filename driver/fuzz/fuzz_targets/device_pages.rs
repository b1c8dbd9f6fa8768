//! Arbitrary 4 KiB pages from the device through every parser the driver
//! applies to device data (Identify Controller and Namespace, the Active
//! Namespace list, SMART / Health, Error Information and Firmware Slot
//! logs, an asynchronous event): a panic or an accepted value that is not
//! self-consistent is a crash. The checks are
//! `nvme_driver::device_data::check_page`'s, which `cargo test` also runs
//! on this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_driver::device_data::check_page;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = check_page(data) {
        panic!("{broken}");
    }
});
