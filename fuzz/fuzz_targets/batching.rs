#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mux_proto::fuzzing::batching(data));
