#![no_main]
//! Fuzz target `roqr_frame`: the checks live in `qrelay_fuzz::roqr_frame` (fuzz/src/lib.rs) so that
//! tests/fuzz_regressions.rs can replay saved inputs through the same invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qrelay_fuzz::roqr_frame(data));
