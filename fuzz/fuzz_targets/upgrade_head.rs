#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mux_tokio::fuzzing::upgrade_head(data));
