//! The one way a string that came from outside (a provider's reply, a token's claims, a settings file,
//! a client) reaches a log line or the check command's output: control characters escaped, so a
//! newline cannot forge a log line, a terminal escape cannot act and a NUL cannot truncate; and the
//! length capped, so a huge value cannot flood the log.

/// The longest text shown of one outside value, in characters.
pub const MAX_SHOWN_CHARS: usize = 128;

/// `s` as a log line may show it: printable characters as they are, `\` as `\\`, control characters
/// (C0, DEL, C1, and Unicode line/paragraph separators and bidi controls) as `\n`, `\t`, `\r` or
/// `\u{..}`; cut after [`MAX_SHOWN_CHARS`] characters with `...` appended.
pub fn shown(s: &str) -> String {
    shown_max(s, MAX_SHOWN_CHARS)
}

/// The longest text shown of one outside message (an error chain, a composed reason, a URL).
pub const MAX_REASON_CHARS: usize = 512;

/// [`shown`] for a message or URL, which may be longer than one value.
pub fn shown_reason(s: &str) -> String {
    shown_max(s, MAX_REASON_CHARS)
}

/// `s` cut to [`MAX_SHOWN_CHARS`] characters (with `...`), not escaped: for outside values kept in an
/// error (and so in the negative cache) whose Display escapes them, so neither memory nor the log
/// grows with what a provider or a token sends.
pub fn capped(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN_CHARS) {
        None => s.to_string(),
        Some((i, _)) => format!("{}...", &s[..i]),
    }
}

/// [`shown`] with another cap.
pub fn shown_max(s: &str, max_chars: usize) -> String {
    let mut out = Shown { text: String::with_capacity(s.len().min(max_chars * 2)), left: max_chars, cut: false };
    out.push_str(s);
    out.finish()
}

/// Bytes that may not be UTF-8 (a client's SASL user, say): invalid bytes shown as `\x..`.
pub fn shown_bytes(b: &[u8]) -> String {
    let mut out = Shown { text: String::new(), left: MAX_SHOWN_CHARS, cut: false };
    for chunk in b.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_raw(&format!("\\x{byte:02x}"));
        }
    }
    out.finish()
}

/// Escaped text being built, with how many more characters may be shown.
struct Shown {
    text: String,
    left: usize,
    cut: bool,
}

impl Shown {
    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '\\' => self.push_raw("\\\\"),
                '\n' => self.push_raw("\\n"),
                '\r' => self.push_raw("\\r"),
                '\t' => self.push_raw("\\t"),
                c if needs_escape(c) => self.push_raw(&format!("\\u{{{:x}}}", c as u32)),
                c => self.push_raw(c.encode_utf8(&mut [0; 4])),
            }
        }
    }

    /// One shown character (or its escape); past the cap, one `...` and nothing more.
    fn push_raw(&mut self, piece: &str) {
        if self.cut {
            return;
        }
        if self.left == 0 {
            self.text.push_str("...");
            self.cut = true;
            return;
        }
        self.text.push_str(piece);
        self.left -= 1;
    }

    fn finish(self) -> String {
        self.text
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_start_a_forged_log_line() {
        let s = shown("alice\nauth: Info: accepted root");
        assert!(!s.contains('\n'));
        assert_eq!(s, "alice\\nauth: Info: accepted root");
    }

    #[test]
    fn terminal_escapes_nul_and_bidi_controls_are_escaped() {
        assert_eq!(shown("\u{1b}[31mred\0x"), "\\u{1b}[31mred\\u{0}x");
        assert_eq!(shown("a\u{202e}b\u{2028}"), "a\\u{202e}b\\u{2028}");
        assert_eq!(shown("\u{85}"), "\\u{85}");
    }

    #[test]
    fn a_backslash_is_doubled_so_escapes_cannot_be_faked() {
        assert_eq!(shown("\\n"), "\\\\n");
    }

    #[test]
    fn long_values_are_cut_with_a_mark() {
        let s = shown(&"x".repeat(10_000));
        assert_eq!(s.len(), MAX_SHOWN_CHARS + 3);
        assert!(s.ends_with("..."));
        assert_eq!(shown("short"), "short");
    }

    #[test]
    fn messages_get_a_longer_cap_than_values() {
        let s = shown_reason(&"x".repeat(10_000));
        assert_eq!(s.len(), MAX_REASON_CHARS + 3);
        assert_eq!(shown_reason("a\nb"), "a\\nb");
    }

    #[test]
    fn capped_cuts_without_escaping() {
        assert_eq!(capped("a\nb"), "a\nb");
        let c = capped(&"é".repeat(1000));
        assert_eq!(c.chars().count(), MAX_SHOWN_CHARS + 3);
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(shown_bytes(b"ok\xff\n"), "ok\\xff\\n");
    }
}
