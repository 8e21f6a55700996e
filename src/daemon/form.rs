//! The body of `POST /introspect` (RFC 7662 2.1): `application/x-www-form-urlencoded` with `token`
//! (required, once) and `token_type_hint` (optional, accepted and not needed: every token here is an
//! access token). Other parameters are ignored, as RFC 7662 allows.

use thiserror::Error;

/// A request that is not an introspection request. Answered 400 `invalid_request`; a well-formed
/// request whose token is no good is not one of these (it gets `{"active":false}`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormError {
    #[error("no token parameter")]
    NoToken,
    #[error("the token parameter is repeated")]
    RepeatedToken,
    #[error("the body is not application/x-www-form-urlencoded")]
    NotForm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionRequest {
    pub token: String,
    pub token_type_hint: Option<String>,
}

/// Whether a `Content-Type` value announces a form (parameters such as `charset` allowed).
pub fn is_form(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct.split(|&b| b == b';').next().unwrap_or(ct);
    essence.trim_ascii().eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// Parses a form body. Bytes that do not decode to UTF-8 become U+FFFD, which no valid token contains
/// (the engine then refuses it as malformed).
pub fn parse(body: &[u8]) -> Result<IntrospectionRequest, FormError> {
    let mut token = None;
    let mut hint = None;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "token" if token.is_some() => return Err(FormError::RepeatedToken),
            "token" => token = Some(value.into_owned()),
            "token_type_hint" => hint = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(IntrospectionRequest { token: token.ok_or(FormError::NoToken)?, token_type_hint: hint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_percent_decoded_as_dovecot_encodes_it() {
        let r = parse(b"token=abc%2B%2F%3D.def").unwrap();
        assert_eq!(r.token, "abc+/=.def");
        assert_eq!(parse(b"token=a+b").unwrap().token, "a b", "form encoding: + is a space");
    }

    #[test]
    fn token_type_hint_is_accepted_and_unknown_parameters_ignored() {
        let r = parse(b"token_type_hint=access_token&foo=bar&token=t&client_id=x").unwrap();
        assert_eq!(r, IntrospectionRequest { token: "t".into(), token_type_hint: Some("access_token".into()) });
    }

    #[test]
    fn a_request_without_a_token_is_not_an_introspection_request() {
        assert_eq!(parse(b""), Err(FormError::NoToken));
        assert_eq!(parse(b"tok=x&token_type_hint=access_token"), Err(FormError::NoToken));
    }

    #[test]
    fn an_empty_token_is_a_token_for_the_engine_to_refuse() {
        assert_eq!(parse(b"token=").unwrap().token, "");
    }

    #[test]
    fn a_repeated_token_is_refused() {
        assert_eq!(parse(b"token=a&token=b"), Err(FormError::RepeatedToken));
    }

    #[test]
    fn bytes_that_are_not_utf8_cannot_make_a_valid_token() {
        assert!(parse(b"token=%FF%FE").unwrap().token.contains('\u{fffd}'));
    }

    #[test]
    fn the_form_content_type_is_recognised_with_parameters_and_any_case() {
        assert!(is_form(Some(b"application/x-www-form-urlencoded")));
        assert!(is_form(Some(b"Application/X-WWW-Form-Urlencoded; charset=UTF-8")));
        assert!(!is_form(Some(b"application/json")));
        assert!(!is_form(None));
    }
}
