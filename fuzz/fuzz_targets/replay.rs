#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgejoin::fuzz::replay(data));
