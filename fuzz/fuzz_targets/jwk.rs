//! A JWK Set from a provider: every key parsed or refused (wrong type, weak, unusable), never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    match v.get("keys").and_then(|k| k.as_array()) {
        Some(keys) => keys.iter().for_each(|k| {
            let _ = dovecot_oauth2::jwks::parse_jwk(k);
        }),
        None => {
            let _ = dovecot_oauth2::jwks::parse_jwk(&v);
        }
    }
});
