//! A client's bearer token as raw bytes: size and shape checks, the unverified exp peek, and the JWT
//! header parser used by local validation.
#![no_main]
use dovecot_oauth2::token::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Token::parse(data, 16 * 1024) {
        let _ = t.unverified_jwt_exp();
        let _ = t.url_encoded();
        let _ = dovecot_oauth2::jwt::shape(t.as_str());
    }
});
