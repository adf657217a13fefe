#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard::fuzz::inline_heads(data));
