//! What a SCIM client sends (issue 13): a filter, a User body, a PatchOp against a user, a mail
//! address. Each is parsed and checked or refused with a SCIM error, never a panic, and whatever
//! `checked` accepts renders and is accepted again unchanged.
#![no_main]
use dovecot_oauth2::scim::{address, filter::Filter, patch, resource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Filter::parse(&text).map(|f| f.matches(&serde_json::json!({"userName": "a@example.com"})));
    let _ = address::mail_address(&text, &["example.com".to_string()]);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(doc) = resource::checked(&v) {
        let user = resource::User { id: "0".repeat(32), doc: doc.clone(), created: 0, modified: 0, version: 1 };
        let rep = user.to_json("https://mail.example.com/scim/v2");
        let again = resource::checked(&rep).expect("a rendered user is accepted again");
        assert_eq!(again, doc, "rendering and checking again changes nothing");
        let _ = resource::select(rep.clone(), Some("userName,emails.value"), None);
        let _ = patch::apply(&rep, &v);
    }
    let base = serde_json::json!({"schemas": [resource::USER_SCHEMA], "id": "0", "userName": "a@example.com",
        "emails": [{"value": "a@example.com", "primary": true}]});
    if let Ok(next) = patch::apply(&base, &v) {
        let _ = resource::checked(&next);
    }
});
