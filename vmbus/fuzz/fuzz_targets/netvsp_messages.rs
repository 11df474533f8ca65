#![no_main]

#[allow(dead_code)] // each target uses one harness
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::netvsp_messages(data));
