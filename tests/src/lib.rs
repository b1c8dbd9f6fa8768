//! Helpers shared by the VM tests.
