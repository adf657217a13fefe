#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::config_toml(data));
