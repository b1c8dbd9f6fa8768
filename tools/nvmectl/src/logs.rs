//! `nvmectl smart-log`, `error-log` and `get-feature`, printed with
//! nvme-cli's field names.

use std::io::{Result, Write};

use nvme_driver::Controller;
use nvme_driver::nvme_spec::{ErrorLogEntry, FeatureId, SmartLog};

pub(crate) fn print_smart(out: &mut impl Write, ctrl: &Controller, log: &SmartLog) -> Result<()> {
    writeln!(out, "Smart Log for NVMe device {}:", ctrl.address())?;
    let row = |out: &mut dyn Write, k: &str, v: String| writeln!(out, "{k:<36}: {v}");
    row(
        out,
        "critical_warning",
        format!("{:#x}", log.critical_warning),
    )?;
    let c = log.composite_temperature_celsius();
    row(
        out,
        "temperature",
        format!("{c} °C ({} K)", log.composite_temperature.get()),
    )?;
    row(out, "available_spare", format!("{}%", log.available_spare))?;
    row(
        out,
        "available_spare_threshold",
        format!("{}%", log.available_spare_threshold),
    )?;
    row(out, "percentage_used", format!("{}%", log.percentage_used))?;
    row(out, "data_units_read", log.data_units_read().to_string())?;
    row(
        out,
        "data_units_written",
        log.data_units_written().to_string(),
    )?;
    row(
        out,
        "host_read_commands",
        log.host_read_commands().to_string(),
    )?;
    row(
        out,
        "host_write_commands",
        log.host_write_commands().to_string(),
    )?;
    row(
        out,
        "controller_busy_time",
        log.controller_busy_time().to_string(),
    )?;
    row(out, "power_cycles", log.power_cycles().to_string())?;
    row(out, "power_on_hours", log.power_on_hours().to_string())?;
    row(out, "unsafe_shutdowns", log.unsafe_shutdowns().to_string())?;
    row(out, "media_errors", log.media_errors().to_string())?;
    row(
        out,
        "num_err_log_entries",
        log.num_err_log_entries().to_string(),
    )?;
    row(
        out,
        "warning_temp_time",
        log.warning_temp_time.get().to_string(),
    )?;
    row(
        out,
        "critical_comp_time",
        log.critical_comp_time.get().to_string(),
    )?;
    Ok(())
}

pub(crate) fn print_errors(out: &mut impl Write, entries: &[ErrorLogEntry]) -> Result<()> {
    writeln!(out, "Error Log Entries: {} valid", entries.len())?;
    for (i, e) in entries.iter().enumerate() {
        let status = e.status();
        writeln!(out, "Entry[{i:2}]")?;
        writeln!(out, "error_count     : {}", e.error_count.get())?;
        writeln!(out, "sqid            : {}", e.sqid.get())?;
        writeln!(out, "cmdid           : {:#x}", e.cid.get())?;
        writeln!(
            out,
            "status_field    : {:#x} ({status})",
            e.status_field.get() >> 1
        )?;
        writeln!(
            out,
            "parm_err_loc    : {:#x}",
            e.parameter_error_location.get()
        )?;
        writeln!(out, "lba             : {:#x}", e.lba.get())?;
        writeln!(out, "nsid            : {:#x}", e.nsid.get())?;
    }
    Ok(())
}

pub(crate) fn feature_name(fid: u8) -> &'static str {
    FeatureId::try_from(fid).map_or("Vendor Specific or Reserved", |f| f.name())
}
