#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::api_keys_toml(data));
