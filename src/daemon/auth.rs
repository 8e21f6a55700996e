//! Who may ask: every request must carry HTTP Basic credentials equal to `listen_client_id` and
//! `listen_client_secret`. Dovecot takes them from `introspection_url`'s `ID:SECRET@`, percent-decodes
//! them and sends them as they are; an RFC 6749 (2.3.1) client form-encodes them first: both match.
//! Compared in constant time over SHA-256 digests, so neither the values nor their lengths leak
//! through timing.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The credentials requests must carry, kept only as digests.
#[derive(Clone)]
pub struct Credentials {
    id: [u8; 32],
    secret: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Credentials) -> bool {
        bool::from(self.id.ct_eq(&other.id) & self.secret.ct_eq(&other.secret))
    }
}

/// Why a request's credentials were refused (for the daemon's log; the client is told only 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    NotBasic,
    Malformed,
    WrongId,
    WrongSecret,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Missing => "no credentials (Authorization header missing)",
            Refusal::NotBasic => "credentials are not HTTP Basic",
            Refusal::Malformed => "malformed HTTP Basic credentials",
            Refusal::WrongId => "wrong client id (listen_client_id)",
            Refusal::WrongSecret => "wrong client secret (listen_client_secret)",
        })
    }
}

/// Base64 as clients write it: padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The longest Authorization header looked at (a Basic header of sane credentials is far shorter).
const MAX_HEADER_BYTES: usize = 4096;

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Credentials {
    pub fn new(id: &str, secret: &str) -> Credentials {
        Credentials { id: digest(id.as_bytes()), secret: digest(secret.as_bytes()) }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Refusal> {
        let header = header.ok_or(Refusal::Missing)?;
        if header.len() > MAX_HEADER_BYTES {
            return Err(Refusal::Malformed);
        }
        let (scheme, rest) = split_scheme(header);
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Err(Refusal::NotBasic);
        }
        let decoded = BASE64.decode(trim(rest)).map_err(|_| Refusal::Malformed)?;
        // RFC 7617: the user-id cannot contain ':'; the password may.
        let colon = decoded.iter().position(|&b| b == b':').ok_or(Refusal::Malformed)?;
        let (id, secret) = (&decoded[..colon], &decoded[colon + 1..]);
        let (id_raw, secret_raw) = self.matches(id, secret);
        let (id_form, secret_form) = self.matches(&form_decode(id), &form_decode(secret));
        let id_ok = id_raw | id_form;
        let ok = (id_raw & secret_raw) | (id_form & secret_form);
        if bool::from(ok) {
            Ok(())
        } else if bool::from(id_ok) {
            Err(Refusal::WrongSecret)
        } else {
            Err(Refusal::WrongId)
        }
    }

    fn matches(&self, id: &[u8], secret: &[u8]) -> (subtle::Choice, subtle::Choice) {
        (self.id.ct_eq(&digest(id)), self.secret.ct_eq(&digest(secret)))
    }
}

fn split_scheme(h: &[u8]) -> (&[u8], &[u8]) {
    let h = trim(h);
    match h.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&h[..i], &h[i..]),
        None => (h, &[][..]),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space, `%XX` a byte).
fn form_decode(b: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = b.iter().map(|&c| if c == b'+' { b' ' } else { c }).collect();
    percent_encoding::percent_decode(&spaced).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(userinfo: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(userinfo)).into_bytes()
    }

    fn creds() -> Credentials {
        Credentials::new("dovecot", "s3cret:with@odd/chars")
    }

    #[test]
    fn the_configured_id_and_secret_are_accepted() {
        assert_eq!(creds().check(Some(&basic("dovecot:s3cret:with@odd/chars"))), Ok(()));
    }

    #[test]
    fn a_wrong_id_or_secret_is_refused_and_named_for_the_log() {
        assert_eq!(creds().check(Some(&basic("dovecot2:s3cret:with@odd/chars"))), Err(Refusal::WrongId));
        assert_eq!(creds().check(Some(&basic("dovecot:s3cret"))), Err(Refusal::WrongSecret));
        assert_eq!(creds().check(Some(&basic("dovecot:"))), Err(Refusal::WrongSecret));
        assert_eq!(creds().check(Some(&basic(":s3cret:with@odd/chars"))), Err(Refusal::WrongId));
    }

    #[test]
    fn missing_credentials_are_refused() {
        assert_eq!(creds().check(None), Err(Refusal::Missing));
    }

    #[test]
    fn other_schemes_are_refused() {
        assert_eq!(creds().check(Some(b"Bearer abc")), Err(Refusal::NotBasic));
        assert_eq!(creds().check(Some(b"")), Err(Refusal::NotBasic));
    }

    #[test]
    fn malformed_basic_credentials_are_refused() {
        assert_eq!(creds().check(Some(b"Basic !!!notbase64")), Err(Refusal::Malformed));
        assert_eq!(creds().check(Some(b"Basic")), Err(Refusal::Malformed));
        assert_eq!(creds().check(Some(&basic("no-colon-at-all"))), Err(Refusal::Malformed));
        assert_eq!(creds().check(Some(&vec![b'a'; MAX_HEADER_BYTES + 1])), Err(Refusal::Malformed));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_padding_optional() {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode("dovecot:s3cret:with@odd/chars");
        assert_eq!(creds().check(Some(format!("basic  {b64} ").as_bytes())), Ok(()));
    }

    #[test]
    fn credentials_as_dovecot_sends_them_from_a_percent_encoded_url_match() {
        // introspection_url = http://dovecot:s3cret%3Awith%40odd%2Fchars@127.0.0.1:7662/introspect:
        // Dovecot decodes the userinfo and sends the plain values.
        assert_eq!(creds().check(Some(&basic("dovecot:s3cret:with@odd/chars"))), Ok(()));
    }

    #[test]
    fn form_encoded_credentials_of_an_rfc6749_client_match_too() {
        assert_eq!(creds().check(Some(&basic("dovecot:s3cret%3Awith%40odd%2Fchars"))), Ok(()));
        let spaced = Credentials::new("my client", "a b");
        assert_eq!(spaced.check(Some(&basic("my+client:a+b"))), Ok(()));
        assert_eq!(spaced.check(Some(&basic("my client:a b"))), Ok(()));
    }

    #[test]
    fn form_decoding_leaves_broken_escapes_as_they_are() {
        assert_eq!(form_decode(b"a%2"), b"a%2");
        assert_eq!(form_decode(b"%zz%41+"), b"%zzA ");
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        assert_eq!(format!("{:?}", creds()), "Credentials(..)");
    }
}
