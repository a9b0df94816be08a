#![no_main]
//! Fuzz target `client_session`: the checks live in `qrelay_fuzz::client_session` (fuzz/src/lib.rs) so that
//! tests/fuzz_regressions.rs can replay saved inputs through the same invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qrelay_fuzz::client_session(data));
