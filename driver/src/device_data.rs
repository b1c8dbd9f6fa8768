//! Data structures the device writes (Identify Controller, the Active
//! Namespace list, SMART / Health and Error Information log pages): what
//! the driver takes from them, checked before use. Everything here is
//! untrusted input; these functions are pure so that the fuzz target
//! `device_pages` (and its corpus, replayed by `cargo test`) runs them on
//! arbitrary pages ([`check_page`], feature `test-utils`).

use nvme_spec::{ActiveNamespaceList, ErrorLogEntry, IdentifyController, SglSupport, SmartLog};
use zerocopy::FromBytes;

use crate::ctrl::{PAGE_SIZE, UNLIMITED_MDTS_TRANSFER};
use crate::error::{Error, Result};

/// The largest transfer the driver lets one command carry, whatever MDTS
/// says.
pub(crate) const MAX_TRANSFER_CAP: usize = 1 << 30;
/// Error Information log entries the driver asks for at most (16 KiB).
pub(crate) const MAX_ERROR_LOG_ENTRIES: usize = 256;
/// Asynchronous Event Requests kept outstanding at most.
pub(crate) const MAX_AERS: usize = 4;

/// What the driver takes from Identify Controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ControllerLimits {
    /// The largest transfer of one command (MDTS, capped; a page at least).
    pub(crate) max_transfer: usize,
    /// I/O data described with SGLs (wanted, and supported).
    pub(crate) sgl: bool,
}

/// Checks that the controller takes 64-byte SQEs and 16-byte CQEs, and
/// derives the transfer limit (CAP.MPSMIN's page size `min_page_size`)
/// and whether to use SGLs (`use_sgl`: the caller's wish).
pub(crate) fn controller_limits(
    id: &IdentifyController,
    min_page_size: usize,
    use_sgl: bool,
) -> Result<ControllerLimits> {
    if id.sqes_min() > 6 || id.sqes_max() < 6 || id.cqes_min() > 4 || id.cqes_max() < 4 {
        return Err(Error::Unsupported(format!(
            "queue entry sizes SQES {:#x} CQES {:#x} do not allow 64/16 bytes",
            id.sqes, id.cqes
        )));
    }
    let max_transfer = id
        .max_transfer_bytes(min_page_size)
        .map_or(UNLIMITED_MDTS_TRANSFER, |m| {
            usize::try_from(m)
                .unwrap_or(usize::MAX)
                .min(MAX_TRANSFER_CAP)
        })
        .max(PAGE_SIZE);
    let sgl = use_sgl
        && matches!(
            id.sgl_support(),
            SglSupport::ByteAligned | SglSupport::DwordAligned
        );
    Ok(ControllerLimits { max_transfer, sgl })
}

/// Asynchronous Event Requests to keep outstanding (AERL is 0's based; a
/// few are plenty).
pub(crate) fn aer_limit(id: &IdentifyController) -> usize {
    (usize::from(id.aerl) + 1).min(MAX_AERS)
}

/// Error Information log entries to ask for (ELPE is 0's based).
pub(crate) fn error_log_entries(id: &IdentifyController) -> usize {
    (usize::from(id.elpe) + 1).min(MAX_ERROR_LOG_ENTRIES)
}

/// The namespace ids of an Active Namespace list worth an Identify
/// Namespace: in increasing order, no duplicates, none of 0, the broadcast
/// id or above NN (`nn`; 0 is taken as 1).
pub(crate) fn active_namespace_ids(list: &ActiveNamespaceList, nn: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = list.iter().collect();
    ids.retain(|&id| id != 0 && id <= nn.max(1) && id != u32::MAX);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The SMART / Health Information log from the bytes the device wrote.
pub(crate) fn smart_log(raw: &[u8]) -> Result<SmartLog> {
    SmartLog::read_from_bytes(raw).map_err(|_| Error::BadDevice("SMART log size".into()))
}

/// The valid entries of an Error Information log page (a whole number of
/// 64-byte entries; a trailing partial entry is ignored).
pub(crate) fn error_log(raw: &[u8]) -> Vec<ErrorLogEntry> {
    raw.chunks_exact(ErrorLogEntry::SIZE)
        .filter_map(|c| ErrorLogEntry::read_from_bytes(c).ok())
        .filter(|e| e.is_valid())
        .collect()
}

/// What [`check_page`] saw.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageReport {
    /// Identify Controller was accepted.
    pub controller_accepted: bool,
    /// Identify Namespace was accepted.
    pub namespace_accepted: bool,
    /// Namespace ids taken from the page read as an Active Namespace list.
    pub active_namespaces: usize,
    /// Valid Error Information log entries.
    pub error_entries: usize,
}

/// The page one [`check_page`] input describes: the first 4096 bytes are
/// the page (zero-padded), the next byte the controller's side (bits 3:0
/// CAP.MPSMIN, bit 4 the caller wants SGLs), the 4 bytes after it (LE) the
/// namespace id and NN limit.
#[cfg(any(test, feature = "test-utils"))]
const PAGE_BYTES: usize = 4096;

/// Runs one 4 KiB page from the device through every parser the driver
/// (and `nvmectl`'s printing) applies to device data, as Identify
/// Controller, Identify Namespace, an Active Namespace list, a SMART log,
/// an Error Information log, a Firmware Slot log and an asynchronous event,
/// and checks that nothing panics and that what is accepted is
/// self-consistent (sizes in bounds, ids in range, text printable) and
/// that a namespace is refused only for a reason. Returns what it saw, or
/// the first broken property. The fuzz target `device_pages` runs it.
#[cfg(any(test, feature = "test-utils"))]
pub fn check_page(input: &[u8]) -> std::result::Result<PageReport, String> {
    use std::fmt::Write as _;

    use nvme_spec::{AsyncEvent, FirmwareSlotLog, IdentifyNamespace};

    use crate::ns::Namespace;

    let mut page = [0u8; PAGE_BYTES];
    let n = input.len().min(PAGE_BYTES);
    page[..n].copy_from_slice(&input[..n]);
    let knobs = input.get(PAGE_BYTES).copied().unwrap_or(0);
    let mut nsid_bytes = [0u8; 4];
    for (i, b) in nsid_bytes.iter_mut().enumerate() {
        *b = input.get(PAGE_BYTES + 1 + i).copied().unwrap_or(1);
    }
    let nsid = u32::from_le_bytes(nsid_bytes);
    let min_page_size = PAGE_SIZE << (knobs & 0xf);
    let use_sgl = knobs & 0x10 != 0;
    let mut report = PageReport::default();
    let mut text = String::new();

    // Identify Controller.
    let id = IdentifyController::read_from_bytes(&page[..])
        .map_err(|_| "Identify Controller is not 4096 bytes".to_string())?;
    let entry_sizes_fit =
        id.sqes_min() <= 6 && id.sqes_max() >= 6 && id.cqes_min() <= 4 && id.cqes_max() >= 4;
    match controller_limits(&id, min_page_size, use_sgl) {
        Ok(limits) => {
            report.controller_accepted = true;
            if !entry_sizes_fit {
                return Err(format!("accepted SQES {:#x} CQES {:#x}", id.sqes, id.cqes));
            }
            let m = limits.max_transfer;
            if !(PAGE_SIZE..=MAX_TRANSFER_CAP.max(UNLIMITED_MDTS_TRANSFER)).contains(&m)
                || !m.is_power_of_two()
            {
                return Err(format!("max transfer {m} from MDTS {}", id.mdts));
            }
            if id.mdts == 0 && m != UNLIMITED_MDTS_TRANSFER {
                return Err(format!("MDTS 0 gave max transfer {m}"));
            }
            if id.mdts != 0 && m < min_page_size.min(MAX_TRANSFER_CAP) {
                return Err(format!("max transfer {m} below the page {min_page_size}"));
            }
            if limits.sgl && !use_sgl {
                return Err("SGLs used though not asked for".into());
            }
        }
        Err(e) => {
            if entry_sizes_fit {
                return Err(format!("refused a controller with usable entry sizes: {e}"));
            }
        }
    }
    let aers = aer_limit(&id);
    if !(1..=MAX_AERS).contains(&aers) {
        return Err(format!("{aers} AERs from AERL {}", id.aerl));
    }
    let entries = error_log_entries(&id);
    let log_len = entries * ErrorLogEntry::SIZE;
    // Controller::get_log_page's own rule: a positive multiple of 4, at
    // most 1 MiB.
    if entries == 0 || !log_len.is_multiple_of(4) || log_len > 1 << 20 {
        return Err(format!("error log length {log_len} from ELPE {}", id.elpe));
    }
    if id.power_states().len() != id.power_state_count() || id.power_states().len() > 32 {
        return Err(format!("{} power states", id.power_states().len()));
    }
    for field in [id.serial(), id.model(), id.firmware(), id.subnqn()] {
        text.clear();
        let _ = write!(text, "{field}");
        if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(format!("identify text prints unprintable bytes: {text:?}"));
        }
        if field
            .as_str()
            .is_some_and(|s| s.as_bytes() != field.as_bytes())
        {
            return Err("identify text differs from its bytes".into());
        }
    }
    let _ = write!(
        text,
        "{id:?} {} {} {} {:?} {} {}",
        id.version(),
        id.tnvmcap(),
        id.crdt_ms(1),
        id.controller_type(),
        id.keep_alive_granularity_ms(),
        id.abort_limit()
    );

    // Identify Namespace.
    let ns_id = IdentifyNamespace::read_from_bytes(&page[..])
        .map_err(|_| "Identify Namespace is not 4096 bytes".to_string())?;
    let _ = write!(text, "{ns_id:?} {:?}", ns_id.size_bytes());
    let format = ns_id.current_lba_format();
    let usable = format
        .and_then(|f| f.lba_size())
        .filter(|s| (512..=64 << 10).contains(s))
        .filter(|&s| ns_id.nsze() != 0 && ns_id.nsze().checked_mul(u64::from(s)).is_some());
    match Namespace::from_identify(nsid, Box::new(ns_id)) {
        Ok(ns) => {
            report.namespace_accepted = true;
            if Some(ns.lba_size) != usable {
                return Err(format!("namespace accepted with LBA size {}", ns.lba_size));
            }
            if ns.blocks != ns_id.nsze() || ns.nsid != nsid {
                return Err("namespace fields differ from Identify".into());
            }
            if ns.size_bytes() / u64::from(ns.lba_size) != ns.blocks {
                return Err("namespace size overflows".into());
            }
            if usize::from(ns.lba_format) >= ns_id.lba_format_count()
                || format.map(|f| f.metadata_size()) != Some(ns.metadata_size)
            {
                return Err("namespace format index or metadata size wrong".into());
            }
            if ns.check_range(0, ns.blocks).is_err()
                || ns.check_range(ns.blocks - 1, 1).is_err()
                || ns.check_range(ns.blocks, 1).is_ok()
                || ns.check_range(ns.blocks - 1, 2).is_ok()
                || ns.check_range(u64::MAX, 2).is_ok()
                || ns.check_range(0, 0).is_ok()
            {
                return Err(format!("range checks wrong for {} blocks", ns.blocks));
            }
            if ns.blocks_in(ns.lba_size as usize).ok() != Some(1)
                || ns.blocks_in(ns.lba_size as usize + 1).is_ok()
            {
                return Err("blocks_in wrong".into());
            }
        }
        Err(e) => {
            if usable.is_some() {
                return Err(format!("refused a usable namespace: {e}"));
            }
            let _ = write!(text, "{e}");
        }
    }

    // Active Namespace list.
    let list = ActiveNamespaceList::read_from_bytes(&page[..])
        .map_err(|_| "Active Namespace list is not 4096 bytes".to_string())?;
    let nn = nsid;
    let ids = active_namespace_ids(&list, nn);
    if ids.len() > ActiveNamespaceList::CAPACITY
        || ids.windows(2).any(|w| w[0] >= w[1])
        || ids
            .iter()
            .any(|&i| i == 0 || i == u32::MAX || i > nn.max(1))
    {
        return Err(format!("active namespace ids {ids:?} with NN {nn}"));
    }
    report.active_namespaces = ids.len();
    let _ = write!(text, "{list:?} {} {:?}", list.is_full(), list.last());

    // SMART / Health log (512 bytes; a short page is refused).
    let smart = smart_log(&page[..SmartLog::SIZE]).map_err(|e| e.to_string())?;
    if smart_log(&page[..SmartLog::SIZE - 4]).is_ok() {
        return Err("a short SMART log was accepted".into());
    }
    if smart.temp_sensor_celsius(0).is_some() || smart.temp_sensor_celsius(9).is_some() {
        return Err("temperature sensor out of 1..=8".into());
    }
    if smart.bytes_read() < smart.data_units_read()
        || smart.bytes_written() < smart.data_units_written()
    {
        return Err("SMART byte counts below their units".into());
    }
    let _ = write!(
        text,
        "{smart:?} {} {:?}",
        smart.composite_temperature_celsius(),
        smart.critical_warning()
    );

    // Error Information log: the length the driver would ask for, within
    // this page.
    let errors = error_log(&page[..log_len.min(PAGE_BYTES)]);
    if errors.len() > entries || errors.iter().any(|e| !e.is_valid()) {
        return Err(format!("{} error log entries of {entries}", errors.len()));
    }
    for e in &errors {
        let _ = write!(text, "{}", e.status());
    }
    report.error_entries = errors.len();

    // Firmware Slot log and an asynchronous event (nvmectl, AER).
    let fw = FirmwareSlotLog::read_from_bytes(&page[..512])
        .map_err(|_| "Firmware Slot log is not 512 bytes".to_string())?;
    let _ = write!(text, "{fw:?}");
    let dw0 = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let event = AsyncEvent::from_dw0(dw0);
    if AsyncEvent::from_dw0(event.to_dw0()) != event || event.to_dw0() != dw0 & 0x00ff_ff07 {
        return Err(format!("asynchronous event {dw0:#x} does not round-trip"));
    }
    let _ = write!(text, "{}", event.description());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_page_refuses_the_namespace_and_lists_nothing() {
        let r = check_page(&[]).expect("sound");
        assert!(!r.namespace_accepted, "LBADS 0 is no format");
        assert!(!r.controller_accepted, "SQES 0 cannot take 64-byte entries");
        assert_eq!((r.active_namespaces, r.error_entries), (0, 0));
    }

    #[test]
    fn a_plausible_page_is_accepted() {
        let mut page = vec![0u8; 4096 + 5];
        page[512] = 0x66; // SQES
        page[513] = 0x44; // CQES
        page[77] = 5; // MDTS
        page[0..8].copy_from_slice(&1000u64.to_le_bytes()); // NSZE
        page[130] = 9; // LBAF0.LBADS
        page[4097] = 1; // nsid / NN
        let r = check_page(&page).expect("sound");
        assert!(r.controller_accepted && r.namespace_accepted);
    }
}
