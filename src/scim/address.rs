//! Which user names and email values are mail addresses this server serves: the one check between
//! what an identity provider sends and the account and alias names written to the mail system's files.

use super::error::ScimError;
use crate::escape::shown_max;

/// RFC 5321 4.5.3.1.1.
pub const MAX_LOCAL: usize = 64;
/// RFC 5321 4.5.3.1.3 (a path of 256 octets less the angle brackets).
pub const MAX_ADDRESS: usize = 254;
/// How much of a refused value an error detail quotes.
const SHOWN: usize = 64;

/// The account address for a user name or email value: ASCII only (no IDN, so no lookalikes),
/// lowercased; a local part of `[a-z0-9._+-]` (not starting or ending with `.`, no `..`) of at most
/// 64 characters; a domain that is one of `domains` (lowercase, exact match); at most 254 in all.
/// The local part is so narrow because it becomes a file and directory name (mailbox path, map keys).
pub fn mail_address(value: &str, domains: &[String]) -> Result<String, ScimError> {
    let refuse = |why: &str| ScimError::invalid_value(format!("{} {why}", shown_max(value, SHOWN)));
    if value.len() > MAX_ADDRESS {
        return Err(refuse(&format!("is longer than {MAX_ADDRESS} characters")));
    }
    if !value.is_ascii() {
        return Err(refuse("is not an ASCII mail address"));
    }
    let address = value.to_ascii_lowercase();
    let Some((local, domain)) = address.split_once('@') else {
        return Err(refuse("is not a mail address"));
    };
    if local.is_empty() || local.len() > MAX_LOCAL {
        return Err(refuse(&format!("has a local part that is empty or longer than {MAX_LOCAL} characters")));
    }
    if !local.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(&b)) {
        return Err(refuse("has a local part with characters other than a-z 0-9 . _ + -"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(refuse("has a local part that starts or ends with a dot, or has two in a row"));
    }
    if !domains.iter().any(|d| d == domain) {
        return Err(refuse("is not in a domain this server serves"));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["example.org".into(), "mail.example.com".into()]
    }

    #[test]
    fn an_address_of_a_served_domain_is_lowercased() {
        assert_eq!(mail_address("Alice.Smith+tag@Example.ORG", &domains()).unwrap(), "alice.smith+tag@example.org");
        assert_eq!(mail_address("a_b-c@mail.example.com", &domains()).unwrap(), "a_b-c@mail.example.com");
    }

    #[test]
    fn another_domain_is_refused_as_an_invalid_value() {
        let e = mail_address("alice@example.net", &domains()).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(e.detail.contains("alice@example.net"));
    }

    #[test]
    fn a_subdomain_of_a_served_domain_is_not_served() {
        assert!(mail_address("alice@sub.example.org", &domains()).is_err());
        assert!(mail_address("alice@example.org.", &domains()).is_err());
    }

    #[test]
    fn non_ascii_addresses_are_refused_so_no_lookalike_gets_through() {
        assert!(mail_address("аlice@example.org", &domains()).is_err()); // Cyrillic а
        assert!(mail_address("alice@exаmple.org", &domains()).is_err());
    }

    #[test]
    fn a_value_without_exactly_one_at_sign_is_refused() {
        assert!(mail_address("alice", &domains()).is_err());
        assert!(mail_address("a@b@example.org", &domains()).is_err());
        assert!(mail_address("@example.org", &domains()).is_err());
    }

    #[test]
    fn local_parts_with_other_characters_are_refused() {
        for bad in ["a b@example.org", "a/b@example.org", "a:b@example.org", "\"a\"@example.org", "a\n@example.org"] {
            assert!(mail_address(bad, &domains()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dots_at_the_ends_or_doubled_are_refused() {
        for bad in [".a@example.org", "a.@example.org", "a..b@example.org"] {
            assert!(mail_address(bad, &domains()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_local_part_over_64_characters_is_refused() {
        assert!(mail_address(&format!("{}@example.org", "a".repeat(64)), &domains()).is_ok());
        assert!(mail_address(&format!("{}@example.org", "a".repeat(65)), &domains()).is_err());
    }

    #[test]
    fn an_address_over_254_characters_is_refused() {
        let long = format!("{}.example.org", "d".repeat(241));
        let e = mail_address(&format!("a@{long}"), &[long]).unwrap_err();
        assert!(e.detail.contains("254"));
    }

    #[test]
    fn the_refused_value_is_escaped_and_capped_in_the_detail() {
        let e = mail_address(&format!("a\u{1b}[31m{}", "x".repeat(300)), &domains()).unwrap_err();
        assert!(!e.detail.contains('\u{1b}'));
        assert!(e.detail.len() < 200);
    }
}
