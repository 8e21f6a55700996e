//! The bearer token as received: bounded, checked for shape, hashed. Nothing here logs or stores the
//! token itself; logs and cache keys use its SHA-256.

use crate::errors::Rejection;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A token that passed the cheap local checks (size and RFC 6750 `b64token` characters).
#[derive(Clone, Copy)]
pub struct Token<'a> {
    text: &'a str,
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", fingerprint(self.text.as_bytes()))
    }
}

impl<'a> Token<'a> {
    /// Refuses empty, oversized and non-`b64token` input before any provider sees it.
    pub fn parse(raw: &'a [u8], max_bytes: usize) -> Result<Token<'a>, Rejection> {
        if raw.is_empty() {
            return Err(Rejection::Malformed("empty token"));
        }
        if raw.len() > max_bytes {
            return Err(Rejection::TooLarge(raw.len(), max_bytes));
        }
        let body_len = raw.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
        if body_len == 0 {
            return Err(Rejection::Malformed("token is only padding"));
        }
        if !raw[..body_len].iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) {
            return Err(Rejection::Malformed("characters outside RFC 6750 b64token"));
        }
        // All ASCII by the check above.
        let text = std::str::from_utf8(raw).map_err(|_| Rejection::Malformed("not ASCII"))?;
        Ok(Token { text })
    }

    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// Three dot-separated parts: a JWS compact serialization (signed JWT).
    pub fn looks_like_jwt(&self) -> bool {
        self.text.split('.').count() == 3
    }

    /// The unverified `exp` of a JWT-shaped token. Used only to shorten a cache entry's life, never
    /// to accept anything.
    pub fn unverified_jwt_exp(&self) -> Option<u64> {
        if !self.looks_like_jwt() {
            return None;
        }
        let payload = self.text.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v.get("exp")?.as_u64()
    }

    /// The token for a URL (tokeninfo_url, `introspection_mode = get`): percent-encodes `+ / =`.
    pub fn url_encoded(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        for b in self.text.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// SHA-256 of the token: the cache key material.
pub fn digest(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

/// What logs show instead of a token: `sha256:` and the first 8 hex digits of its hash. Kept as
/// bytes and formatted only when a line is written (most logins write none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 4]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        write!(f, "sha256:{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
    }
}

pub fn fingerprint(raw: &[u8]) -> Fingerprint {
    let d = digest(raw);
    Fingerprint([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_token_is_malformed() {
        assert!(matches!(Token::parse(b"", 100), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn oversized_token_is_refused_without_further_work() {
        assert_eq!(Token::parse(&[b'a'; 101], 100).unwrap_err(), Rejection::TooLarge(101, 100));
    }

    #[test]
    fn nul_space_and_non_ascii_bytes_are_malformed() {
        for bad in [&b"abc\0def"[..], b"abc def", b"abc\xffdef", b"a=b", b"===", b"abc\x01"] {
            assert!(matches!(Token::parse(bad, 100), Err(Rejection::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn rfc6750_token_with_padding_is_accepted() {
        assert_eq!(Token::parse(b"aB3-._~+/==", 100).unwrap().as_str(), "aB3-._~+/==");
    }

    #[test]
    fn fingerprint_is_short_and_does_not_contain_the_token() {
        let f = fingerprint(b"secret-token-value").to_string();
        assert_eq!(f.len(), "sha256:".len() + 8);
        assert!(!f.contains("secret"));
    }

    #[test]
    fn unverified_exp_is_read_from_a_jwt_payload() {
        // {"alg":"none"}.{"exp":1234}.sig
        let t = Token::parse(b"eyJhbGciOiJub25lIn0.eyJleHAiOjEyMzR9.c2ln", 1000).unwrap();
        assert!(t.looks_like_jwt());
        assert_eq!(t.unverified_jwt_exp(), Some(1234));
        assert_eq!(Token::parse(b"opaque", 100).unwrap().unverified_jwt_exp(), None);
    }

    #[test]
    fn url_encoding_escapes_reserved_characters() {
        assert_eq!(Token::parse(b"a+b/c=", 100).unwrap().url_encoded(), "a%2Bb%2Fc%3D");
    }
}
