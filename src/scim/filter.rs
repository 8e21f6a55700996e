//! SCIM filters (RFC 7644 3.4.2.2) over a User representation, and the attribute paths PATCH uses
//! (RFC 7644 3.5.2), which share the grammar. Bounded: at most [`MAX_FILTER_BYTES`] of text and
//! [`MAX_DEPTH`] levels of nesting, so no client can make the parser or the matcher recurse deeply.

use super::error::ScimError;
use super::resource::{get_ci, split_urn, Container, EXTERNAL_ID, MAIL_SCHEMA};
use crate::escape::shown_max;
use serde_json::{Map, Value};
use std::cmp::Ordering;

pub const MAX_FILTER_BYTES: usize = 1024;
/// Nesting of parentheses, `not` and `[...]` together.
pub const MAX_DEPTH: usize = 16;
const SHOWN: usize = 64;

/// A parsed filter, to match representations (`User::to_json` output) against.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, ScimError> {
        if s.len() > MAX_FILTER_BYTES {
            return Err(ScimError::invalid_filter(format!("the filter is longer than {MAX_FILTER_BYTES} bytes")));
        }
        let tokens = lex(s)?;
        let mut p = Parser { tokens, pos: 0, depth: 0 };
        let root = p.or_expr(false)?;
        if let Some(t) = p.peek() {
            return Err(p.error(&format!("unexpected {}", t.describe())));
        }
        Ok(Filter { root })
    }

    pub fn matches(&self, rep: &Value) -> bool {
        rep.as_object().is_some_and(|obj| self.root.eval(obj, true))
    }
}

/// An attribute path: `[URN:]attr[.sub]`. `attr` is empty for a bare extension URN (PATCH only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttrPath {
    pub container: Container,
    pub attr: String,
    pub sub: Option<String>,
}

/// A PATCH path: `attrPath`, or `attr[filter]` with an optional `.sub` after it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Node>,
    pub sub: Option<String>,
}

/// Parses a PATCH `path`; refusals are `invalidPath`.
pub(crate) fn parse_path(s: &str) -> Result<PatchPath, ScimError> {
    let as_path = |e: ScimError| ScimError::invalid_path(e.detail);
    if s.len() > MAX_FILTER_BYTES {
        return Err(ScimError::invalid_path(format!("the path is longer than {MAX_FILTER_BYTES} bytes")));
    }
    let tokens = lex(s).map_err(as_path)?;
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    let attr = match p.next() {
        Some(Tok::Word(w)) => attr_path(&w, true).map_err(as_path)?,
        _ => return Err(ScimError::invalid_path(format!("{} is not an attribute path", shown_max(s, SHOWN)))),
    };
    let mut filter = None;
    let mut sub = None;
    if p.peek() == Some(&Tok::LBracket) {
        if attr.sub.is_some() || attr.attr.is_empty() {
            return Err(ScimError::invalid_path(format!("{} filters a sub-attribute", shown_max(s, SHOWN))));
        }
        p.next();
        p.depth = 1;
        filter = Some(p.or_expr(true).map_err(as_path)?);
        if p.next() != Some(Tok::RBracket) {
            return Err(ScimError::invalid_path(format!("{} lacks a closing ]", shown_max(s, SHOWN))));
        }
        if let Some(Tok::Word(w)) = p.peek().cloned() {
            let name = w.strip_prefix('.').filter(|n| is_name(n));
            let Some(name) = name else {
                return Err(ScimError::invalid_path(format!("{} has a bad sub-attribute", shown_max(s, SHOWN))));
            };
            sub = Some(name.to_string());
            p.next();
        }
    }
    if p.peek().is_some() {
        return Err(ScimError::invalid_path(format!("{} is not an attribute path", shown_max(s, SHOWN))));
    }
    Ok(PatchPath { attr, filter, sub })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Present(AttrPath),
    Compare(AttrPath, Op, Value),
    /// `attr[filter]`: some value of the multi-valued `attr` matches `filter`.
    Values(AttrPath, Box<Node>),
}

impl Node {
    /// `top`: `obj` is the resource (not one value of a multi-valued attribute), where `id` and
    /// `externalId` are compared case-exactly.
    fn eval(&self, obj: &Map<String, Value>, top: bool) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(obj, top)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(obj, top)),
            Node::Not(n) => !n.eval(obj, top),
            Node::Present(path) => values(path, obj, top, false).into_iter().any(present),
            Node::Compare(path, op, lit) => {
                let vals = values(path, obj, top, false);
                let exact = top && path.sub.is_none() && path.container == Container::Core && is_case_exact(&path.attr);
                match (op, lit) {
                    (Op::Eq, Value::Null) => !vals.into_iter().any(present),
                    (Op::Ne, Value::Null) => vals.into_iter().any(present),
                    (Op::Ne, _) => !vals.into_iter().any(|v| compare(v, Op::Eq, lit, exact)),
                    _ => vals.into_iter().any(|v| compare(v, *op, lit, exact)),
                }
            }
            Node::Values(path, inner) => values(path, obj, top, true)
                .into_iter()
                .any(|v| v.as_object().is_some_and(|element| inner.eval(element, false))),
        }
    }

    /// Whether one value of a multi-valued attribute matches (for PATCH `attr[filter]` paths).
    pub(crate) fn matches_element(&self, element: &Value) -> bool {
        element.as_object().is_some_and(|e| self.eval(e, false))
    }
}

fn is_case_exact(attr: &str) -> bool {
    attr.eq_ignore_ascii_case("id") || attr.eq_ignore_ascii_case(EXTERNAL_ID)
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The values a path names in `obj`: each value of a multi-valued attribute separately; a complex
/// value compared without a sub-attribute stands for its `value` sub-attribute.
/// `raw`: complex values as they are (for `attr[filter]`).
fn values<'a>(path: &AttrPath, obj: &'a Map<String, Value>, top: bool, raw: bool) -> Vec<&'a Value> {
    let container = match path.container {
        Container::Core => obj,
        Container::Mail if top => match obj.get(MAIL_SCHEMA).and_then(Value::as_object) {
            Some(ext) => ext,
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let Some(v) = get_ci(container, &path.attr) else { return Vec::new() };
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    match &path.sub {
        Some(sub) => items
            .into_iter()
            .filter_map(|i| i.as_object().and_then(|o| get_ci(o, sub)))
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                v => vec![v],
            })
            .collect(),
        None if raw => items,
        None => items.into_iter().map(|i| i.as_object().and_then(|o| get_ci(o, "value")).unwrap_or(i)).collect(),
    }
}

fn compare(v: &Value, op: Op, lit: &Value, exact: bool) -> bool {
    match (v, lit) {
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if exact { (a.clone(), b.clone()) } else { (a.to_lowercase(), b.to_lowercase()) };
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Co => a.contains(&b),
                Op::Sw => a.starts_with(&b),
                Op::Ew => a.ends_with(&b),
                _ => {
                    let ord = match (date_time(&a), date_time(&b)) {
                        (Some(x), Some(y)) => x.cmp(&y),
                        _ => a.cmp(&b),
                    };
                    ordered(op, ord)
                }
            }
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(|ord| ordered(op, ord)),
            _ => false,
        },
        (Value::Bool(a), Value::Bool(b)) => match op {
            Op::Eq => a == b,
            Op::Ne => a != b,
            _ => false,
        },
        _ => false,
    }
}

fn ordered(op: Op, ord: Ordering) -> bool {
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Co | Op::Sw | Op::Ew => false,
    }
}

/// An RFC 3339 date-time (lowercased, as compared) as nanoseconds since the epoch, so that
/// `meta.lastModified gt "2024-01-01T00:00:00.000+01:00"` compares instants, not text.
fn date_time(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits].bytes().take(9).enumerate() {
            nanos += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':' => {
            let (oh, om) = (num(s.len() - 5..s.len() - 3)?, num(s.len() - 2..s.len())?);
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let (y, mo) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Str(String),
    Word(String),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::LBracket => "[".into(),
            Tok::RBracket => "]".into(),
            Tok::Str(s) => format!("string {}", shown_max(&format!("{s:?}"), SHOWN)),
            Tok::Word(w) => shown_max(w, SHOWN),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, ScimError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            b'[' => {
                out.push(Tok::LBracket);
                i += 1;
            }
            b']' => {
                out.push(Tok::RBracket);
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if i >= b.len() {
                    return Err(ScimError::invalid_filter("a string is not closed"));
                }
                i += 1;
                let text: String = serde_json::from_str(&s[start..i])
                    .map_err(|_| ScimError::invalid_filter(format!("bad string {}", shown_max(&s[start..i], SHOWN))))?;
                out.push(Tok::Str(text));
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b'[' | b']' | b'"') {
                    i += 1;
                }
                out.push(Tok::Word(s[start..i].to_string()));
            }
        }
    }
    Ok(out)
}

/// ATTRNAME of RFC 7643 2.1 (`$ref` too).
fn is_name(n: &str) -> bool {
    n == "$ref"
        || (n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
}

/// `[URN:]attr[.sub]`; `bare_urn`: a bare extension URN is a path (PATCH), with an empty `attr`.
fn attr_path(word: &str, bare_urn: bool) -> Result<AttrPath, ScimError> {
    let bad = || ScimError::invalid_filter(format!("{} is not an attribute path", shown_max(word, SHOWN)));
    let (container, rest) = split_urn(word);
    let rest = match container {
        Container::Other => word.rsplit_once(':').map(|(_, r)| r).ok_or_else(bad)?,
        _ => rest,
    };
    if rest.is_empty() {
        return if bare_urn && container == Container::Mail {
            Ok(AttrPath { container, attr: String::new(), sub: None })
        } else {
            Err(bad())
        };
    }
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    if !is_name(attr) || sub.is_some_and(|s| !is_name(s)) {
        return Err(bad());
    }
    Ok(AttrPath { container, attr: attr.to_string(), sub: sub.map(str::to_string) })
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn error(&self, what: &str) -> ScimError {
        ScimError::invalid_filter(format!("{what} at token {}", self.pos + 1))
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
    }

    fn deeper(&mut self) -> Result<(), ScimError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ScimError::invalid_filter(format!("the filter nests deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    /// `inside`: within `attr[...]`, where another `[...]` may not appear.
    fn or_expr(&mut self, inside: bool) -> Result<Node, ScimError> {
        let mut nodes = vec![self.and_expr(inside)?];
        while self.keyword("or") {
            self.pos += 1;
            nodes.push(self.and_expr(inside)?);
        }
        Ok(if nodes.len() == 1 { nodes.pop().unwrap_or(Node::Or(Vec::new())) } else { Node::Or(nodes) })
    }

    fn and_expr(&mut self, inside: bool) -> Result<Node, ScimError> {
        let mut nodes = vec![self.unary(inside)?];
        while self.keyword("and") {
            self.pos += 1;
            nodes.push(self.unary(inside)?);
        }
        Ok(if nodes.len() == 1 { nodes.pop().unwrap_or(Node::And(Vec::new())) } else { Node::And(nodes) })
    }

    fn unary(&mut self, inside: bool) -> Result<Node, ScimError> {
        if self.keyword("not") {
            self.pos += 1;
            self.deeper()?;
            if self.next() != Some(Tok::LParen) {
                return Err(self.error("not must be followed by ("));
            }
            let inner = self.or_expr(inside)?;
            if self.next() != Some(Tok::RParen) {
                return Err(self.error("missing )"));
            }
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        match self.next() {
            Some(Tok::LParen) => {
                self.deeper()?;
                let inner = self.or_expr(inside)?;
                if self.next() != Some(Tok::RParen) {
                    return Err(self.error("missing )"));
                }
                self.depth -= 1;
                Ok(inner)
            }
            Some(Tok::Word(w)) => self.attr_expr(&w, inside),
            Some(t) => Err(self.error(&format!("unexpected {}", t.describe()))),
            None => Err(self.error("the filter ends early")),
        }
    }

    fn attr_expr(&mut self, word: &str, inside: bool) -> Result<Node, ScimError> {
        let path = attr_path(word, false)?;
        if self.peek() == Some(&Tok::LBracket) {
            if inside || path.sub.is_some() {
                return Err(self.error("a [filter] cannot be nested or follow a sub-attribute"));
            }
            self.pos += 1;
            self.deeper()?;
            let inner = self.or_expr(true)?;
            if self.next() != Some(Tok::RBracket) {
                return Err(self.error("missing ]"));
            }
            self.depth -= 1;
            return Ok(Node::Values(path, Box::new(inner)));
        }
        let op = match self.next() {
            Some(Tok::Word(w)) => w.to_ascii_lowercase(),
            _ => return Err(self.error(&format!("{} needs an operator", shown_max(word, SHOWN)))),
        };
        let op = match op.as_str() {
            "pr" => return Ok(Node::Present(path)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(self.error(&format!("unknown operator {}", shown_max(other, SHOWN)))),
        };
        let lit = match self.next() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            Some(Tok::Word(w)) => match serde_json::from_str::<serde_json::Number>(&w) {
                Ok(n) => Value::Number(n),
                Err(_) => return Err(self.error(&format!("{} is not a value", shown_max(&w, SHOWN)))),
            },
            _ => return Err(self.error("a comparison needs a value")),
        };
        let text_only = matches!(op, Op::Co | Op::Sw | Op::Ew);
        let ordering = matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le);
        match &lit {
            // RFC 7644 3.4.2.2: gt/ge/lt/le on booleans are invalid filters.
            Value::Bool(_) | Value::Null if text_only || ordering => {
                Err(self.error("this operator needs a string or number value"))
            }
            Value::Number(_) if text_only => Err(self.error("co, sw and ew need a string value")),
            _ => Ok(Node::Compare(path, op, lit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::resource::USER_SCHEMA;
    use serde_json::json;

    fn rep() -> Value {
        json!({
            "schemas": [USER_SCHEMA, MAIL_SCHEMA],
            "id": "ABCdef",
            "externalId": "Ext-1",
            "userName": "Alice@Example.org",
            "name": {"givenName": "Alice", "familyName": "Smith"},
            "active": true,
            "emails": [{"value": "alice@example.org", "type": "work", "primary": true},
                       {"value": "a@home.example", "type": "home"}],
            MAIL_SCHEMA: {"mailQuota": "1G"},
            "meta": {"lastModified": "2024-05-01T10:00:00Z", "version": "W/\"3\""}
        })
    }

    fn m(f: &str) -> bool {
        Filter::parse(f).unwrap_or_else(|e| panic!("{f}: {e}")).matches(&rep())
    }

    fn refused(f: &str) {
        let e = Filter::parse(f).expect_err(f);
        assert_eq!(e.scim_type, Some("invalidFilter"), "{f}");
    }

    #[test]
    fn a_filter_on_user_name_is_case_insensitive() {
        assert!(m(r#"userName eq "alice@example.org""#));
        assert!(m(r#"USERNAME Eq "ALICE@EXAMPLE.ORG""#));
        assert!(!m(r#"userName eq "bob@example.org""#));
    }

    #[test]
    fn id_and_external_id_compare_case_exactly() {
        assert!(m(r#"externalId eq "Ext-1""#));
        assert!(!m(r#"externalId eq "ext-1""#));
        assert!(m(r#"id eq "ABCdef""#));
        assert!(!m(r#"id eq "abcdef""#));
    }

    #[test]
    fn ne_co_sw_ew_compare_strings() {
        assert!(m(r#"userName ne "bob@example.org""#));
        assert!(!m(r#"userName ne "alice@example.org""#));
        assert!(m(r#"userName co "@EXAMPLE""#));
        assert!(m(r#"userName sw "alice""#));
        assert!(m(r#"userName ew ".org""#));
        assert!(!m(r#"userName sw "bob""#));
    }

    #[test]
    fn ne_on_an_absent_attribute_matches() {
        assert!(m(r#"title ne "x""#));
        assert!(!m(r#"title eq "x""#));
    }

    #[test]
    fn pr_tells_present_from_absent() {
        assert!(m("name pr"));
        assert!(m("emails pr"));
        assert!(!m("title pr"));
    }

    #[test]
    fn sub_attributes_and_multi_valued_attributes_match_on_any_value() {
        assert!(m(r#"name.familyName eq "smith""#));
        assert!(m(r#"emails.value eq "a@home.example""#));
        assert!(m(r#"emails.type eq "home""#));
        assert!(!m(r#"emails.type eq "other""#));
    }

    #[test]
    fn a_complex_value_without_a_sub_attribute_stands_for_its_value() {
        assert!(m(r#"emails eq "alice@example.org""#));
    }

    #[test]
    fn a_value_path_needs_one_value_to_match_the_whole_inner_filter() {
        assert!(m(r#"emails[type eq "work" and value co "@example.org"]"#));
        assert!(!m(r#"emails[type eq "home" and value co "@example.org"]"#));
        assert!(m(r#"emails[primary eq true]"#));
    }

    #[test]
    fn urn_prefixed_names_reach_core_and_extension_attributes() {
        assert!(m(&format!(r#"{USER_SCHEMA}:userName sw "ALICE""#)));
        assert!(m(&format!(r#"{USER_SCHEMA}:name.givenName eq "alice""#)));
        assert!(m(&format!(r#"{MAIL_SCHEMA}:mailQuota eq "1g""#)));
        assert!(!m(r#"urn:other:schema:User:userName pr"#));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_negates() {
        assert!(m(r#"userName eq "x" and active eq true or title pr or active eq true"#));
        assert!(!m(r#"userName eq "x" and (title pr or active eq true)"#));
        assert!(m(r#"not (userName eq "x")"#));
        assert!(!m(r#"NOT(active eq true)"#));
    }

    #[test]
    fn booleans_numbers_and_null_are_values() {
        assert!(m("active eq true"));
        assert!(!m("active eq false"));
        assert!(m("title eq null"));
        assert!(m("userName ne null"));
        assert!(!m("active eq 1"));
    }

    #[test]
    fn numbers_compare_numerically() {
        let f = Filter::parse("x gt 9").unwrap();
        assert!(f.matches(&json!({"x": 10})));
        assert!(!f.matches(&json!({"x": 9.0})));
        assert!(Filter::parse("x le 1.5e1").unwrap().matches(&json!({"x": 15})));
    }

    #[test]
    fn date_times_compare_as_instants() {
        assert!(m(r#"meta.lastModified gt "2024-05-01T09:59:59Z""#));
        assert!(!m(r#"meta.lastModified gt "2024-05-01T10:00:00Z""#));
        assert!(m(r#"meta.lastModified ge "2024-05-01T10:00:00.000Z""#));
        assert!(m(r#"meta.lastModified lt "2024-05-01T11:30:00+01:00""#));
        assert!(!m(r#"meta.lastModified lt "2024-05-01T10:30:00+01:00""#));
    }

    #[test]
    fn strings_escape_as_in_json() {
        let f = Filter::parse(r#"title eq "a \"b\" \u00e9""#).unwrap();
        assert!(f.matches(&json!({"title": "A \"B\" É"})));
    }

    #[test]
    fn ordering_operators_on_booleans_or_null_are_invalid() {
        refused("active gt true");
        refused("title lt null");
        refused("title co 3");
    }

    #[test]
    fn malformed_filters_are_invalid_filters() {
        for f in [
            "",
            "userName",
            "userName eq",
            "userName eq \"x",
            "userName zz \"x\"",
            "(userName pr",
            "userName pr)",
            "not userName pr",
            "emails[type eq \"x\"",
            "emails[type[value pr]]",
            "1abc pr",
            "userName eq bare",
            "userName pr and",
            "a.b.c pr",
            "name.givenName[value pr]",
        ] {
            refused(f);
        }
    }

    #[test]
    fn a_filter_longer_than_1024_bytes_is_refused() {
        let long = format!(r#"userName eq "{}""#, "a".repeat(1020));
        let e = Filter::parse(&long).unwrap_err();
        assert!(e.detail.contains("1024"));
    }

    #[test]
    fn nesting_deeper_than_16_is_refused() {
        let ok = format!("{}userName pr{}", "(".repeat(16), ")".repeat(16));
        assert!(Filter::parse(&ok).is_ok());
        refused(&format!("{}userName pr{}", "(".repeat(17), ")".repeat(17)));
        refused(&format!("{}userName pr{}", "not(".repeat(17), ")".repeat(17)));
    }

    #[test]
    fn long_and_chains_do_not_nest() {
        let f = vec!["active eq true"; 50].join(" and ");
        assert!(m(&f));
    }

    #[test]
    fn refusals_quote_client_text_escaped() {
        let e = Filter::parse("user\u{1b}Name zz 1").unwrap_err();
        assert!(!e.detail.contains('\u{1b}'));
    }

    #[test]
    fn a_patch_path_may_carry_a_value_filter_and_a_sub_attribute() {
        let p = parse_path(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.attr.attr, "emails");
        assert_eq!(p.sub.as_deref(), Some("value"));
        assert!(p.filter.unwrap().matches_element(&json!({"type": "Work"})));
    }

    #[test]
    fn a_patch_path_may_be_a_bare_extension_urn_or_a_urn_prefixed_attribute() {
        let p = parse_path(MAIL_SCHEMA).unwrap();
        assert_eq!((p.attr.container, p.attr.attr.as_str()), (Container::Mail, ""));
        let p = parse_path(&format!("{MAIL_SCHEMA}:mailQuota")).unwrap();
        assert_eq!((p.attr.container, p.attr.attr.as_str()), (Container::Mail, "mailQuota"));
        let p = parse_path("name.givenName").unwrap();
        assert_eq!((p.attr.attr.as_str(), p.attr.sub.as_deref()), ("name", Some("givenName")));
    }

    #[test]
    fn malformed_patch_paths_are_invalid_paths() {
        for bad in
            ["", "emails[", "emails[type eq \"w\"]value", "emails[type eq \"w\"].", "a b", "name.givenName[x pr]"]
        {
            let e = parse_path(bad).expect_err(bad);
            assert_eq!(e.scim_type, Some("invalidPath"), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, .. Default::default() })]
        /// Whatever a client sends as a filter or a path, the answer is a value or a refusal, never a panic.
        #[test]
        fn arbitrary_filters_and_paths_never_panic(s in "(?s).{0,200}") {
            if let Ok(f) = Filter::parse(&s) {
                f.matches(&rep());
            }
            let _ = parse_path(&s);
        }

        #[test]
        fn filter_like_text_never_panics(s in r#"([a-zA-Z.:\[\]()" ]|eq|and|or|not|pr|gt|true|null|1|-|\+|\\|é|0-9T:Z){0,60}"#) {
            if let Ok(f) = Filter::parse(&s) {
                f.matches(&rep());
            }
            let _ = parse_path(&s);
        }
    }

    #[test]
    fn odd_date_times_never_panic() {
        for s in
            ["2024-01-01t00:00:00é1234", "2024-01-01t00:00:00.", "2024-01-01t00:00:00+0é:00", "9999-99-99t99:99:99z"]
        {
            let _ = date_time(s);
        }
        assert_eq!(date_time("1970-01-01t00:00:01z"), Some(1_000_000_000));
    }
}
