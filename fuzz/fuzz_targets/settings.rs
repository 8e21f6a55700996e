//! The settings parser on arbitrary text: a value or an error naming file/line/key, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dovecot_oauth2::Settings::parse(std::path::Path::new("fuzz.conf"), text);
    }
});
