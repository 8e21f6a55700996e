//! A provider's reply (status and body) through reply classification and every claim rule.
#![no_main]
use dovecot_oauth2::http::Reply;
use dovecot_oauth2::{claims, provider, Settings};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let s = SETTINGS.get_or_init(|| {
        Settings::parse(
            std::path::Path::new("fuzz.conf"),
            "introspection_url = https://idp/u\nscope = mail\naudience = urn:dovecot\nissuers = https://idp\nactive_attribute = active\npass_attrs = q=%{oauth2:quota:1G} g=%$\n",
        )
        .unwrap()
    });
    if data.len() < 2 {
        return;
    }
    let status = 100 + (u16::from_le_bytes([data[0], data[1]]) % 500);
    let reply = Reply { status, body: data[2..].to_vec(), elapsed: Duration::ZERO, cache_control: None };
    for client_auth in [false, true] {
        if let Ok(c) = provider::parse_reply(&reply, "https://idp/u", client_auth) {
            let _ = claims::check(s, &c, "alice@example.test", 1_700_000_000);
        }
    }
});
