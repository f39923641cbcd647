//! A specialised decoder for the common shape of an audit event line, in front of serde.
//!
//! Decoding is the largest share of replay CPU, and serde's derived visitor spends much of it
//! in generic machinery. This parser knows the `Event` layout: it reads the modelled fields
//! straight into [`AuditEvent`], skips (while fully validating) everything else, and finds
//! string ends eight bytes at a time. It is only a fast path: the moment it meets anything it
//! does not handle exactly like serde (an escaped key, a duplicate field, an `EventList`, a
//! number outside `i32`, a lone surrogate escape, deep nesting, invalid JSON), it gives up and the
//! caller decodes the record with serde, which also produces any error message. So a record
//! it accepts decodes to the same event serde would produce (checked in the tests on every
//! corpus event and on generated ones), and a record serde rejects it never accepts.

use super::model::{AuditEvent, Level, ObjectRef, RawJson, ResponseStatus, Stage, UserInfo};
use super::text::Text;

/// Nesting beyond this is left to serde (whose own limit is 128).
const MAX_DEPTH: u32 = 100;

/// Offset in `bytes` of the first `"`, `\\` or control character, eight bytes at a time: a
/// byte `b` is flagged when `b ^ c` has a zero byte (for `"` and `\\`) or `b < 0x20`, using
/// the classic "has a zero byte" bit trick on each 64-bit word.
fn find_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (v.wrapping_sub(ONES * 0x20) & !v);
        let found = found & HIGH;
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| offset + i)
}

/// The modelled keys of each object, in the order the apiserver writes them (see
/// [`Parser::object`]); a key's index is what the field dispatch matches on.
const EVENT_KEYS: &[&str] = &[
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "impersonatedUser",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
    "timestamp",
    "items",
];
const USER_KEYS: &[&str] = &["username", "uid", "groups", "extra"];
const REF_KEYS: &[&str] = &[
    "resource",
    "namespace",
    "name",
    "uid",
    "apiGroup",
    "apiVersion",
    "resourceVersion",
    "subresource",
];
/// metav1.Status writes metadata, status, message, reason, details, code.
const STATUS_KEYS: &[&str] = &["status", "message", "reason", "details", "code"];

/// The event in `text`, or `None` when serde must decide.
#[cfg(test)]
pub(super) fn parse(text: &str) -> Option<AuditEvent<'_>> {
    let mut event = AuditEvent::default();
    parse_into(text, &mut event).then_some(event)
}

/// Decodes `text` into `event` (a default event), in place: the event is large, and moving
/// it costs. False when serde must decide; `event` then holds a partial decode to discard.
pub(super) fn parse_into<'a>(text: &'a str, event: &mut AuditEvent<'a>) -> bool {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    if p.event(event).is_none() {
        return false;
    }
    p.ws();
    p.at == p.bytes.len()
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// Marks a field as seen; `None` when it was seen before (serde rejects duplicate fields).
fn first(seen: &mut u32, bit: usize) -> Option<()> {
    let mask = 1 << bit;
    if *seen & mask != 0 {
        return None;
    }
    *seen |= mask;
    Some(())
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `null`, consumed, if it comes next.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A string without escapes, borrowed from the input.
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + find_special(self.bytes.get(start..)?)?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are next to an ASCII quote, so they are character boundaries.
        self.text.get(start..end)
    }

    /// A string value: borrowed, or unescaped into an owned string when it has escapes.
    fn string(&mut self) -> Option<Text<'a>> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + find_special(self.bytes.get(start..)?)?;
        match self.bytes[end] {
            b'"' => {
                self.at = end + 1;
                self.text.get(start..end).map(Text::from)
            }
            b'\\' => self.unescape(start, end),
            _ => None,
        }
    }

    /// The rest of a string with escapes, from `start`; `first` is the first backslash.
    fn unescape(&mut self, start: usize, first: usize) -> Option<Text<'a>> {
        let mut out = String::with_capacity(first - start + 16);
        out.push_str(self.text.get(start..first)?);
        self.at = first;
        loop {
            // At a backslash.
            self.at += 1;
            let c = match *self.bytes.get(self.at)? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let unit = self.hex4()?;
                    match unit {
                        0xD800..=0xDBFF => {
                            // A surrogate pair: the low half must follow as `\uXXXX`.
                            if self.bytes.get(self.at + 1..self.at + 3)? != b"\\u" {
                                return None;
                            }
                            self.at += 2;
                            let low = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return None;
                            }
                            let code = 0x10000
                                + ((u32::from(unit) - 0xD800) << 10)
                                + (u32::from(low) - 0xDC00);
                            char::from_u32(code)?
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => char::from_u32(u32::from(unit))?,
                    }
                }
                _ => return None,
            };
            out.push(c);
            self.at += 1;
            let run = self.at;
            let end = run + find_special(self.bytes.get(run..)?)?;
            out.push_str(self.text.get(run..end)?);
            self.at = end;
            match self.bytes[end] {
                b'"' => {
                    self.at = end + 1;
                    return Some(Text(std::borrow::Cow::Owned(out)));
                }
                b'\\' => {}
                _ => return None,
            }
        }
    }

    /// Four hex digits after `\u` (the parser is at the `u`); leaves it at the last digit.
    fn hex4(&mut self) -> Option<u16> {
        let hex = self.bytes.get(self.at + 1..self.at + 5)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.at += 4;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }

    /// A string field (`null` reads as empty, as [`Text`]'s serde impl does).
    fn text(&mut self) -> Option<Text<'a>> {
        if self.null()? {
            return Some(Text::EMPTY);
        }
        self.string()
    }

    fn opt_text(&mut self) -> Option<Option<Text<'a>>> {
        if self.null()? {
            return Some(None);
        }
        self.string().map(Some)
    }

    fn texts(&mut self) -> Option<Vec<Text<'a>>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(out);
        }
        loop {
            out.push(self.text()?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    fn raw(&mut self) -> Option<Option<RawJson<'a>>> {
        if self.null()? {
            return Some(None);
        }
        self.ws();
        let start = self.at;
        self.skip(0)?;
        Some(Some(RawJson::new(self.text.get(start..self.at)?)))
    }

    /// An `i32`, written as a plain JSON integer.
    fn int(&mut self) -> Option<i32> {
        self.ws();
        let start = self.at;
        self.number()?;
        match self.text.get(start..self.at)? {
            // serde_json reads `-0` as a float (to keep its sign), which is not an `i32`.
            "-0" => None,
            digits => digits.parse().ok(),
        }
    }

    /// Calls `field` for each key of an object with the key's index in `keys` (`None` for a
    /// key not listed); the callback reads the value. `keys` lists the modelled keys in the
    /// order the apiserver writes them, so the next key is first compared with the one after
    /// the previous match, which skips scanning and dispatching on it in the common case.
    fn object(
        &mut self,
        keys: &[&str],
        mut field: impl FnMut(&mut Self, Option<usize>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        let mut next = 0;
        loop {
            self.ws();
            let index = match keys.get(next) {
                Some(key) if self.quoted(key) => Some(next),
                _ => {
                    let key = self.str()?;
                    keys.iter().position(|k| *k == key)
                }
            };
            if let Some(i) = index {
                next = i + 1;
            }
            self.eat(b':')?;
            field(self, index)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads an object of a modelled block: `read` gets the index in `keys` of each modelled
    /// key; unmodelled keys are skipped, and a repeated key gives up (serde rejects those).
    fn fields(
        &mut self,
        keys: &[&str],
        mut read: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let mut seen = 0u32;
        self.object(keys, |p, key| match key {
            Some(i) => {
                first(&mut seen, i)?;
                read(p, i)
            }
            None => p.skip(0),
        })
    }

    /// Consumes `"key"` if it comes next, exactly.
    fn quoted(&mut self, key: &str) -> bool {
        let end = self.at + key.len() + 2;
        match self.bytes.get(self.at..end) {
            Some([b'"', inner @ .., b'"']) if inner == key.as_bytes() => {
                self.at = end;
                true
            }
            _ => false,
        }
    }

    fn event(&mut self, ev: &mut AuditEvent<'a>) -> Option<()> {
        self.fields(EVENT_KEYS, |p, i| {
            match i {
                0 => {
                    ev.kind = p.opt_text()?;
                    // An EventList is a batch: serde's path handles it.
                    if ev.kind.as_deref() == Some("EventList") {
                        return None;
                    }
                }
                1 => ev.api_version = p.opt_text()?,
                2 => {
                    ev.level = match p.str()? {
                        "None" => Level::None,
                        "Metadata" => Level::Metadata,
                        "Request" => Level::Request,
                        "RequestResponse" => Level::RequestResponse,
                        _ => Level::Unknown,
                    }
                }
                3 => ev.audit_id = p.text()?,
                4 => {
                    ev.stage = match p.str()? {
                        "RequestReceived" => Stage::RequestReceived,
                        "ResponseStarted" => Stage::ResponseStarted,
                        "ResponseComplete" => Stage::ResponseComplete,
                        "Panic" => Stage::Panic,
                        _ => Stage::Unknown,
                    }
                }
                5 => ev.request_uri = p.text()?,
                6 => ev.verb = p.text()?,
                7 => ev.user = p.user()?,
                8 => ev.impersonated_user = if p.null()? { None } else { Some(p.user()?) },
                9 => ev.source_ips = p.texts()?,
                10 => ev.user_agent = p.text()?,
                11 => {
                    ev.object_ref = if p.null()? {
                        None
                    } else {
                        Some(p.object_ref()?)
                    }
                }
                12 => ev.response_status = if p.null()? { None } else { Some(p.status()?) },
                13 => ev.request_object = p.raw()?,
                14 => ev.response_object = p.raw()?,
                15 => ev.request_received_timestamp = p.opt_text()?,
                16 => ev.stage_timestamp = p.opt_text()?,
                17 => ev.annotations = p.raw()?,
                18 => ev.timestamp = p.opt_text()?,
                // `items`: a batch, for serde's path.
                _ => return None,
            }
            Some(())
        })
    }

    fn user(&mut self) -> Option<UserInfo<'a>> {
        let mut user = UserInfo::default();
        self.fields(USER_KEYS, |p, i| {
            match i {
                0 => user.username = p.text()?,
                1 => user.uid = p.text()?,
                2 => user.groups = p.texts()?,
                _ => user.extra = p.raw()?,
            }
            Some(())
        })?;
        Some(user)
    }

    fn object_ref(&mut self) -> Option<ObjectRef<'a>> {
        let mut o = ObjectRef::default();
        self.fields(REF_KEYS, |p, i| {
            let slot = match i {
                0 => &mut o.resource,
                1 => &mut o.namespace,
                2 => &mut o.name,
                3 => &mut o.uid,
                4 => &mut o.api_group,
                5 => &mut o.api_version,
                6 => &mut o.resource_version,
                _ => &mut o.subresource,
            };
            *slot = p.text()?;
            Some(())
        })?;
        Some(o)
    }

    fn status(&mut self) -> Option<ResponseStatus<'a>> {
        let mut st = ResponseStatus::default();
        self.fields(STATUS_KEYS, |p, i| {
            match i {
                0 => st.status = p.text()?,
                1 => st.message = p.text()?,
                2 => st.reason = p.text()?,
                3 => st.details = p.raw()?,
                _ => st.code = p.int()?,
            }
            Some(())
        })?;
        Some(st)
    }

    /// Skips one JSON value, checking its grammar.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.object(&[], |p, _| p.skip(depth + 1))
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Skips a string, escapes included; a `\u` escape of a surrogate is left to serde.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let len = find_special(rest)?;
            self.at += len + 1;
            match rest[len] {
                b'"' => return Some(()),
                b'\\' => {}
                _ => return None,
            }
            match *self.bytes.get(self.at)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    if (0xD800..=0xDFFF).contains(&self.hex4()?) {
                        return None;
                    }
                    self.at += 1;
                }
                _ => return None,
            }
        }
    }

    /// Skips a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |p: &mut Self| {
            let start = p.at;
            while p.bytes.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            (p.at > start).then_some(())
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        if self.bytes.get(self.at) == Some(&b'0') {
            self.at += 1;
        } else {
            digits(self)?;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            digits(self)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde makes of `text`, in the same form as the fast path's result.
    fn serde(text: &str) -> Option<String> {
        serde_json::from_str::<AuditEvent>(text)
            .ok()
            .map(|e| format!("{e:?}"))
    }

    fn same(text: &str) -> bool {
        match parse(text) {
            Some(ev) => Some(format!("{ev:?}")) == serde(text),
            None => true,
        }
    }

    #[test]
    fn common_events_take_the_fast_path_and_match_serde() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns/pods","verb":"create","user":{"username":"alice","uid":"u","groups":["system:authenticated","dev"],"extra":{"scopes":["x"]}},"impersonatedUser":null,"sourceIPs":["10.0.0.1","::1"],"userAgent":"kubectl/v1.30","objectRef":{"resource":"pods","namespace":"ns","name":"p","apiVersion":"v1","subresource":""},"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"Pod","spec":{"containers":[{"image":"nginx","securityContext":{"privileged":true}}],"n":-1.5e3,"z":0,"t":[true,false,null,"\u00e9\n"]}},"responseObject":null,"requestReceivedTimestamp":"2024-01-01T00:00:00.000000Z","stageTimestamp":"2024-01-01T00:00:00.100000Z","annotations":{"authorization.k8s.io/decision":"allow"},"unknown":[1,{"x":[]}]}"#;
        let fast = parse(line).expect("fast path");
        assert_eq!(Some(format!("{fast:?}")), serde(line));
        assert_eq!(
            fast.request_object.map(|r| r.get().len()),
            Some(
                r#"{"kind":"Pod","spec":{"containers":[{"image":"nginx","securityContext":{"privileged":true}}],"n":-1.5e3,"z":0,"t":[true,false,null,"\u00e9\n"]}}"#
                    .len()
            )
        );
        // Escapes in fields are unescaped, as serde does.
        let escaped = r#"{"verb":"g\u0065t","user":{"username":"a\"b\\\/\n\ud83d\ude00","groups":["x\ty"]},"responseStatus":{"message":"User \"alice\" cannot"}}"#;
        let ev = parse(escaped).expect("fast path");
        assert_eq!(&*ev.verb, "get");
        assert_eq!(&*ev.user.username, "a\"b\\/\n\u{1f600}");
        assert!(same(escaped));
        // Whitespace between tokens, empty containers, nulls.
        let spaced = " {\n \"verb\" : \"get\" , \"user\" : { } , \"sourceIPs\" : [ ] ,\"objectRef\":null, \"responseStatus\": {\"code\": 0}}\t";
        assert!(parse(spaced).is_some());
        assert!(same(spaced));
    }

    #[test]
    fn anything_unusual_is_left_to_serde() {
        for text in [
            r#"{"v\u0065rb":"get"}"#,                     // escaped key
            r#"{"verb":"\ud800"}"#,                       // lone surrogate in a field
            r#"{"verb":"\ud83dx"}"#,                      // high surrogate without its pair
            r#"{"verb":"get","verb":"list"}"#,            // duplicate field (serde: error)
            r#"{"kind":"EventList","items":[]}"#,         // a batch
            r#"{"items":[]}"#,                            // a batch without kind
            r#"{"responseStatus":{"code":2.5}}"#,         // not an integer
            r#"{"responseStatus":{"code":-0}}"#,          // a float to serde_json
            r#"{"responseStatus":{"code":3000000000}}"#,  // outside i32
            r#"{"requestObject":{"a":"\ud800"}}"#,        // lone surrogate
            r#"{"requestObject":{"a":01}}"#,              // invalid number
            r#"{"requestObject":{"a":[1,]}}"#,            // trailing comma
            r#"{"requestObject":{"a":"tab	in string"}}"#, // raw control character
            r#"{"verb":"get"} x"#,                        // trailing characters
            r#"{"verb":"get""#,                           // truncated
            r#"{"level":5}"#,                             // wrong type
            r#"["not","an","object"]"#,
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
        let deep = format!(
            r#"{{"requestObject":{}1{}}}"#,
            "[".repeat(150),
            "]".repeat(150)
        );
        assert!(parse(&deep).is_none());
    }

    #[test]
    fn every_corpus_event_decodes_as_serde_decodes_it() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![
            root.join("tests/fixtures/audit2rbac-demo.log"),
            root.join("../shared/corpus/kubernetes/audit2rbac/demo.v1beta1-raw-501d132.log"),
        ];
        if let Ok(dir) =
            std::fs::read_dir(root.join("../shared/corpus/falco/trace_files/k8s_audit"))
        {
            files.extend(dir.flatten().map(|e| e.path()));
        }
        let (mut fast, mut lines) = (0, 0);
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            // Lines serde accepts (Falco's `{"kind": 0}` case is not an event).
            for line in text.lines().filter(|l| serde(l).is_some()) {
                lines += 1;
                if let Some(ev) = parse(line) {
                    fast += 1;
                    assert_eq!(
                        Some(format!("{ev:?}")),
                        serde(line),
                        "{}: {line}",
                        file.display()
                    );
                }
            }
        }
        assert!(lines >= 37, "{lines}");
        // Every real line takes the fast path.
        assert_eq!(fast, lines);
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        /// JSON-ish snippets: valid values of every kind plus near misses serde rejects.
        fn value() -> impl Strategy<Value = String> {
            let valid = prop::sample::select(vec![
                "\"get\"",
                "\"\"",
                "\"a\\\"b\"",
                "\"\\u00e9\\n\"",
                "\"\\ud83d\\ude00\"",
                "\"Metadata\"",
                "\"ResponseComplete\"",
                "\"Event\"",
                "0",
                "-0",
                "201",
                "403",
                "-7",
                "2.5",
                "1e3",
                "3000000000",
                "true",
                "false",
                "null",
            ]);
            let invalid = prop::sample::select(vec![
                "\"\\ud800\"",
                "\"\\udc00x\"",
                "\"\\q\"",
                "\"tab\tin\"",
                "\"EventList\"",
                "01",
                "-",
                "nul",
                "[1,]",
                "{",
                "\"unterminated",
            ]);
            let leaf = prop_oneof![
                6 => valid.prop_map(str::to_owned),
                3 => "[a-z0-9 ]{0,12}".prop_map(|s| format!("\"{s}\"")),
                1 => invalid.prop_map(str::to_owned),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                        let body: Vec<String> = kv
                            .into_iter()
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        format!("{{{}}}", body.join(" , "))
                    }),
                ]
            })
        }

        /// Any modelled key of any block, or an unmodelled one.
        fn key() -> impl Strategy<Value = String> {
            let all: Vec<&str> = [EVENT_KEYS, USER_KEYS, REF_KEYS, STATUS_KEYS]
                .concat()
                .into_iter()
                .chain(["other"])
                .collect();
            prop::sample::select(all).prop_map(str::to_owned)
        }

        /// A string value, mostly valid (escapes, surrogate pairs), sometimes not a string.
        fn text_value() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop_oneof![
                    "[a-zA-Z0-9:/. -]{0,16}".prop_map(|s| format!("\"{s}\"")),
                    prop::sample::select(vec![
                        "\"a\\\"b\"", "\"\\u00e9\\n\"", "\"\\ud83d\\ude00\"", "\"\\/\\b\\f\\r\\t\"",
                        "\"Metadata\"", "\"ResponseComplete\"", "\"Panic\"", "\"Event\"",
                    ]).prop_map(str::to_owned),
                ],
                1 => Just("null".to_owned()),
                1 => value(),
            ]
        }

        fn int_value() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "0",
                "-0",
                "201",
                "403",
                "-7",
                "2147483647",
                "2147483648",
                "-2147483648",
                "2.5",
                "1e3",
                "01",
                "\"403\"",
                "null",
            ])
            .prop_map(str::to_owned)
        }

        /// An object of one modelled block: its own keys (typed values), sometimes others.
        fn block(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
            let entry = prop_oneof![
                6 => prop::sample::select(keys).prop_flat_map(|k| {
                    let v = match k {
                        "code" => int_value().boxed(),
                        "groups" => prop::collection::vec(text_value(), 0..3)
                            .prop_map(|v| format!("[{}]", v.join(",")))
                            .boxed(),
                        "extra" | "details" => value().boxed(),
                        _ => text_value().boxed(),
                    };
                    (Just(k.to_owned()), v)
                }),
                1 => (key(), value()),
            ];
            prop::collection::vec(entry, 0..5).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            })
        }

        /// A top-level field with a value of its type most of the time.
        fn field() -> impl Strategy<Value = (String, String)> {
            // The string fields of the event; the raw parts (and an unmodelled key).
            const TEXT: &[&str] = &[
                "kind",
                "apiVersion",
                "level",
                "auditID",
                "stage",
                "requestURI",
                "verb",
                "userAgent",
                "requestReceivedTimestamp",
                "stageTimestamp",
                "timestamp",
            ];
            const RAW: &[&str] = &["requestObject", "responseObject", "annotations", "other"];
            let named =
                |keys: &'static [&'static str]| prop::sample::select(keys).prop_map(str::to_owned);
            prop_oneof![
                4 => (named(TEXT), text_value()),
                2 => (named(RAW), value()),
                1 => (Just("sourceIPs".to_owned()), prop::collection::vec(text_value(), 0..3).prop_map(|v| format!("[{}]", v.join(",")))),
                2 => (named(&["user", "impersonatedUser"]), block(USER_KEYS)),
                2 => (Just("objectRef".to_owned()), block(REF_KEYS)),
                2 => (Just("responseStatus".to_owned()), block(STATUS_KEYS)),
                1 => (key(), value()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the fast path accepts, serde accepts and decodes to the same event.
            #[test]
            fn fast_path_never_disagrees_with_serde(
                fields in prop::collection::vec(field(), 0..6),
                pad in prop::sample::select(vec!["", " ", "\n\t "]),
            ) {
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("{pad}\"{k}\"{pad}:{pad}{v}")).collect();
                let text = format!("{pad}{{{}}}{pad}", body.join(","));
                if let Some(ev) = parse(&text) {
                    prop_assert_eq!(Some(format!("{ev:?}")), serde(&text), "{}", text);
                }
            }
        }
    }
}
