//! `nvmectl smart-log`, `error-log` and `get-feature`, printed with
//! nvme-cli's field names.

use std::io::{Result, Write};

use nvme_driver::Controller;
use nvme_driver::nvme_spec::{ErrorLogEntry, FeatureId, SmartLog};
use serde_json::Value;

use crate::output::{Record, write_json};

/// The SMART log under nvme-cli's JSON names (which differ from its text
/// names: `avail_spare`, not `available_spare`; the temperature in kelvin).
fn smart_json(log: &SmartLog) -> Record {
    let mut r = Record::new()
        .num("critical_warning", log.critical_warning)
        .num("temperature", log.composite_temperature.get())
        .num("avail_spare", log.available_spare)
        .num("spare_thresh", log.available_spare_threshold)
        .num("percent_used", log.percentage_used)
        .num(
            "endurance_grp_critical_warning_summary",
            log.endurance_group_critical_warning,
        )
        .num("data_units_read", log.data_units_read())
        .num("data_units_written", log.data_units_written())
        .num("host_read_commands", log.host_read_commands())
        .num("host_write_commands", log.host_write_commands())
        .num("controller_busy_time", log.controller_busy_time())
        .num("power_cycles", log.power_cycles())
        .num("power_on_hours", log.power_on_hours())
        .num("unsafe_shutdowns", log.unsafe_shutdowns())
        .num("media_errors", log.media_errors())
        .num("num_err_log_entries", log.num_err_log_entries())
        .num("warning_temp_time", log.warning_temp_time.get())
        .num("critical_comp_time", log.critical_comp_time.get());
    const SENSORS: [&str; 8] = [
        "temperature_sensor_1",
        "temperature_sensor_2",
        "temperature_sensor_3",
        "temperature_sensor_4",
        "temperature_sensor_5",
        "temperature_sensor_6",
        "temperature_sensor_7",
        "temperature_sensor_8",
    ];
    // nvme-cli lists only the sensors that report (non-zero kelvin).
    for (name, t) in SENSORS.iter().zip(log.temp_sensor.iter()) {
        if t.get() != 0 {
            r = r.num(name, t.get());
        }
    }
    r.num("thm_temp1_trans_count", log.thm_temp1_trans_count.get())
        .num("thm_temp2_trans_count", log.thm_temp2_trans_count.get())
        .num("thm_temp1_total_time", log.thm_temp1_total_time.get())
        .num("thm_temp2_total_time", log.thm_temp2_total_time.get())
}

/// `nvmectl smart-log -o json`.
pub(crate) fn print_smart_json(out: &mut impl Write, log: &SmartLog) -> Result<()> {
    write_json(out, &smart_json(log).json())
}

/// One Error Information entry under nvme-cli's JSON names.
fn error_json(e: &ErrorLogEntry) -> Value {
    let status = e.status_field.get();
    Value::Object(
        Record::new()
            .num("error_count", e.error_count.get())
            .num("sqid", e.sqid.get())
            .num("cmdid", e.cid.get())
            .num("status_field", status >> 1)
            .num("phase_tag", status & 1)
            .num("parm_error_location", e.parameter_error_location.get())
            .num("lba", e.lba.get())
            .num("nsid", e.nsid.get())
            .num("vs", e.vendor_specific)
            .num("trtype", e.trtype)
            .num("cs", e.cmd_specific_info.get())
            .num("trtype_spec_info", e.trtype_specific.get())
            .json(),
    )
}

/// `nvmectl error-log -o json`: `{"errors": [...]}`, valid entries only.
pub(crate) fn print_errors_json(out: &mut impl Write, entries: &[ErrorLogEntry]) -> Result<()> {
    let errors: Vec<Value> = entries.iter().map(error_json).collect();
    write_json(out, &serde_json::json!({ "errors": errors }))
}

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
