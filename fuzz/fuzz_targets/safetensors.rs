//! Fuzzes the safetensors reader through the format-independent model view.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = apr_core::format::safetensors::StFile::parse(data);
    common::exercise(data);
});
