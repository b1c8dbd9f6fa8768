//! Every shared scenario on the recording device: one test per scenario,
//! each run on a fresh 64 MiB namespace (the VM tests' size) at 512-byte
//! LBAs and, where its block size allows, at 4096-byte LBAs; and the
//! whole list in sequence on one namespace, as the guest runs it.

use mpage_conformance::{RecordingRig, assert_all_pass, find};

/// The namespace size of the VM tests (`vm_tests::vm()`).
const DISK: u64 = 64 << 20;

fn check(name: &str) {
    let s = find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    for lba in [512, 4096] {
        if s.runs_on(lba) {
            let mut rig = RecordingRig::new(lba, DISK).unwrap();
            if let Err(e) = s.check(&mut rig) {
                panic!("{name} at {lba}-byte LBAs: {e}");
            }
        }
    }
}

macro_rules! scenario_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let mut tested = vec![$(stringify!($name)),*];
            let mut all: Vec<&str> = mpage_conformance::all().map(|s| s.name).collect();
            tested.sort_unstable();
            all.sort_unstable();
            assert_eq!(tested, all);
        }
    };
}

scenario_tests![
    t01_one_extent_readahead_is_one_command,
    t01b_mdts_splits_into_max_transfer_commands,
    t02_discontiguous_extents_submit_the_open_run_first,
    t03_hole_folio_is_zeroed_and_the_run_skips_it,
    t04_discontiguous_blocks_in_a_folio_read_per_extent,
    t05_tail_hole_ends_the_command,
    t06_hole_then_mapped_zeroes_and_reads_the_rest,
    t07_eof_block_is_read_whole_and_later_blocks_zeroed,
    t07_window_request_is_capped_at_eof,
    t08_boundary_extent_submits_the_run,
    t08_boundary_extent_ending_mid_folio_changes_nothing,
    t09_only_readahead_commands_carry_the_hint,
    t10_mapping_past_the_namespace_fails_without_io,
    t18_partially_uptodate_folio_reads_only_missing_blocks,
    t19_only_mapped_extents_are_read,
    t28_sub_page_segments_never_share_a_command,
    demand_read_waits_through_io_helpers,
    t12_dirty_folios_become_one_plain_write_and_fsync_flushes_after,
    t13_eof_tail_zeroed_in_cache_and_never_written_past,
    t13_blocks_past_eof_are_never_mapped,
    t14_folio_wholly_past_eof_is_cleaned_without_io,
    t15a_writes_follow_device_contiguity_between_folios,
    t15b_writes_follow_device_contiguity_inside_a_folio,
    t17_boundary_submits_the_data_then_the_dirty_metadata_block,
    t17_clean_or_uncached_metadata_block_is_not_written,
    t17_boundary_splits_a_device_contiguous_run,
    t17_boundary_mid_folio_submits_before_the_rest_of_the_folio,
    t22_only_dirty_blocks_are_written,
    t23_ioends_split_by_extent_type_and_unwritten_is_converted,
    t23_long_ioend_is_chained_at_max_transfer,
    t24_file_contiguous_ioends_merge_on_completion,
    t24_discontiguous_unwritten_ioends_convert_in_one_call,
    t25a_map_error_discards_the_folio,
    t25b_map_error_mid_folio_fails_mapped_blocks_without_io,
    allocate_on_write_fills_a_sparse_file,
    t20a_partial_block_write_reads_that_block_first,
    t20b_whole_block_write_reads_nothing,
    t20c_partial_write_over_a_hole_zeroes_the_rest_of_the_block,
    t20d_mixed_range_is_read_as_one_command,
    t26a_truncate_page_reads_the_block_zeroes_its_tail_and_writes_it_back,
    t26b_truncate_page_over_unwritten_is_a_no_op,
    t26c_zero_range_on_an_uncached_folio_reads_then_zeroes,
    t27_mkwrite_maps_and_dirties_inside_eof_and_retries_past_it,
];

/// The guest runs the list in sequence on one namespace: no scenario may
/// depend on a fresh disk or on what another left behind.
#[test]
fn all_scenarios_in_sequence_on_one_namespace() {
    for lba in [512, 4096] {
        let mut rig = RecordingRig::new(lba, DISK).unwrap();
        assert_all_pass(&mut rig);
    }
}
