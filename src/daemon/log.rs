//! The daemon's log: one line per event on standard error (supervisord and systemd capture it), with a
//! UTC timestamp (supervisord's log files have none of their own) and a level. Outside strings reach a
//! line only through [`crate::escape::shown`]; as a last guard, any control character left in a line is
//! escaped too, so nothing can start a forged line.

use crate::escape::shown;
use std::borrow::Cow;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest line written, in characters (longer ones are cut with `...`).
const MAX_LINE_CHARS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

pub fn info(msg: &str) {
    write(Level::Info, msg)
}

pub fn warning(msg: &str) {
    write(Level::Warning, msg)
}

pub fn error(msg: &str) {
    write(Level::Error, msg)
}

fn write(level: Level, msg: &str) {
    let line = line(SystemTime::now(), level, msg);
    // One write of the whole line: lines of concurrent requests never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `2026-08-20T10:11:12Z dovecot-oauth2d: warning: MSG\n`.
pub fn line(at: SystemTime, level: Level, msg: &str) -> String {
    let level = match level {
        Level::Info => "info",
        Level::Warning => "warning",
        Level::Error => "error",
    };
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{} dovecot-oauth2d: {level}: {}\n", utc(secs), one_line(msg))
}

/// `msg` with control characters escaped (as `shown` writes them) and cut at [`MAX_LINE_CHARS`].
fn one_line(msg: &str) -> Cow<'_, str> {
    let clean = !msg.chars().any(char::is_control);
    if clean && msg.len() <= MAX_LINE_CHARS {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len().min(MAX_LINE_CHARS + 16));
    for (n, c) in msg.chars().enumerate() {
        if n == MAX_LINE_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.push_str(&shown(c.encode_utf8(&mut [0; 4])));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// RFC 3339 UTC time of Unix seconds (days to civil date after H. Hinnant's public-domain algorithm).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_787_223_072), "2026-08-20T10:51:12Z");
    }

    #[test]
    fn a_line_has_time_name_level_and_message() {
        let at = UNIX_EPOCH + Duration::from_secs(86_400 + 61);
        assert_eq!(line(at, Level::Warning, "x"), "1970-01-02T00:01:01Z dovecot-oauth2d: warning: x\n");
    }

    #[test]
    fn control_characters_left_in_a_message_cannot_start_a_new_line() {
        let l = line(UNIX_EPOCH, Level::Info, "a\nforged: info: b\r\u{1b}[0m");
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with("a\\nforged: info: b\\r\\u{1b}[0m\n"), "{l}");
    }

    #[test]
    fn backslashes_written_by_shown_are_left_as_they_are() {
        assert!(line(UNIX_EPOCH, Level::Info, "user \\u{202e}x").ends_with("user \\u{202e}x\n"));
    }

    #[test]
    fn very_long_messages_are_cut() {
        let l = line(UNIX_EPOCH, Level::Info, &"y".repeat(10_000));
        assert!(l.len() < MAX_LINE_CHARS + 64 && l.ends_with("...\n"));
    }
}
