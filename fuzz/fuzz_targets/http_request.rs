#![no_main]
//! Fuzz target `http_request`: the checks live in `qrelay_fuzz::http_request`
//! (fuzz/src/lib.rs) so that tests/fuzz_regressions.rs replays saved inputs through the
//! same invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qrelay_fuzz::http_request(data));
