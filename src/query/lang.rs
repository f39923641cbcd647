//! The filter language of `auditwatch query`:
//!
//! ```text
//! responseStatus.code=403 and verb=list
//! responsestatus_code = 403 and (username = "system:anonymous" or username = alice*)
//! not verb in (get, list, watch) and requestReceivedTimestamp > 2025-01-01T00:00:00Z
//! ```
//!
//! Fields are the rule field paths (`user.username`, `objectRef.resource`, ...) or their
//! lower-case aliases: the path in lower case with dots as underscores (`responsestatus_code`,
//! `objectref_namespace`), and a few short names (`username`, `resource`, `code`, ...). Values
//! are bare words or quoted strings; `*` and `?` are wildcards for `=` and `!=`; `<`, `<=`,
//! `>`, `>=` compare numbers, and times when the value is a time. `and` binds tighter than
//! `or`; `not` applies to the comparison or parenthesised group after it. Every error names
//! the column of the query text it is about.

use std::fmt;

use crate::event::field::{FieldPath, FieldValue};
use crate::event::{AuditEvent, EventTime};
use crate::rules::Patterns;

/// A query that does not parse: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for QueryError {}

/// Short names accepted besides the lower-case paths.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("username", "user.username"),
    ("user", "user.username"),
    ("groups", "user.groups"),
    ("effective_username", "effectiveUser.username"),
    ("resource", "objectRef.resource"),
    ("subresource", "objectRef.subresource"),
    ("namespace", "objectRef.namespace"),
    ("name", "objectRef.name"),
    ("apigroup", "objectRef.apiGroup"),
    ("code", "responseStatus.code"),
    ("status_code", "responseStatus.code"),
    ("reason", "responseStatus.reason"),
    ("sourceip", "sourceIP"),
    ("source_ip", "sourceIP"),
    ("useragent", "userAgent"),
    ("user_agent", "userAgent"),
    ("uri", "requestURI"),
    ("request_uri", "requestURI"),
    ("auditid", "auditID"),
    ("audit_id", "auditID"),
    ("time", "stageTimestamp"),
];

/// The rule field paths whose lower-case underscore forms are aliases.
const PATHS: &[&str] = &[
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "userAgent",
    "sourceIP",
    "sourceIPs",
    "user.username",
    "user.uid",
    "user.groups",
    "impersonatedUser.username",
    "impersonatedUser.groups",
    "effectiveUser.username",
    "effectiveUser.groups",
    "objectRef.resource",
    "objectRef.subresource",
    "objectRef.namespace",
    "objectRef.name",
    "objectRef.apiGroup",
    "objectRef.apiVersion",
    "responseStatus.code",
    "responseStatus.status",
    "responseStatus.reason",
    "responseStatus.message",
    "requestReceivedTimestamp",
    "stageTimestamp",
];

/// A field of the query language: the rule field path it stands for.
#[derive(Debug, Clone)]
pub struct Field {
    pub path: FieldPath,
    /// As the user wrote it, for column headers.
    pub written: String,
}

impl Field {
    /// A field name as written in a query or `--groupby`: an alias or a rule field path.
    pub fn parse(name: &str) -> Result<Field, String> {
        let lower = name.to_ascii_lowercase();
        let target = SHORT_NAMES
            .iter()
            .find(|(alias, _)| *alias == lower)
            .map(|(_, path)| (*path).to_owned())
            .or_else(|| {
                PATHS
                    .iter()
                    .find(|p| p.to_ascii_lowercase().replace('.', "_") == lower)
                    .map(|p| (*p).to_owned())
            })
            .unwrap_or_else(|| name.to_owned());
        let path = FieldPath::parse(&target).map_err(|e| {
            format!("{e} (aliases: the path in lower case with `_` for `.`, e.g. responsestatus_code, or username, resource, namespace, code)")
        })?;
        Ok(Field {
            path,
            written: name.to_owned(),
        })
    }
}

/// How a comparison compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value to compare with, read every way it could be meant.
#[derive(Debug, Clone)]
pub struct Value {
    pub text: String,
    /// For `=` and `!=`: the text as a pattern (wildcards).
    pattern: Patterns,
    number: Option<f64>,
    time: Option<EventTime>,
}

impl Value {
    /// The value as a number, when it reads as one.
    pub fn number(&self) -> Option<f64> {
        self.number
    }

    /// Whether `text` matches the value as a pattern (what `=` does with a string).
    pub fn matches_text(&self, text: &str) -> bool {
        self.pattern.matches(text)
    }

    fn new(text: String, column: usize) -> Result<Value, QueryError> {
        let pattern = Patterns::compile(std::slice::from_ref(&text))
            .map_err(|e| QueryError { column, message: e })?;
        Ok(Value {
            number: text.parse().ok(),
            time: EventTime::parse_rfc3339(&text),
            pattern,
            text,
        })
    }
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Expr {
    /// No filter: every event.
    All,
    Compare(Field, Op, Value),
    In(Field, Vec<Value>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Whether `ev` passes.
    pub fn matches(&self, ev: &AuditEvent<'_>) -> bool {
        match self {
            Expr::All => true,
            Expr::Compare(f, op, v) => compare(&f.path.resolve(ev), *op, v),
            Expr::In(f, values) => {
                let got = f.path.resolve(ev);
                values.iter().any(|v| compare(&got, Op::Eq, v))
            }
            Expr::Not(e) => !e.matches(ev),
            Expr::And(a, b) => a.matches(ev) && b.matches(ev),
            Expr::Or(a, b) => a.matches(ev) || b.matches(ev),
        }
    }

    /// The fields the filter reads.
    pub fn fields(&self) -> Vec<&Field> {
        match self {
            Expr::All => Vec::new(),
            Expr::Compare(f, ..) | Expr::In(f, _) => vec![f],
            Expr::Not(e) => e.fields(),
            Expr::And(a, b) | Expr::Or(a, b) => {
                let mut all = a.fields();
                all.extend(b.fields());
                all
            }
        }
    }
}

/// One value the field resolved to against `v`. Lists (groups, source IPs) match when any
/// element does (`!=`: when none does).
pub(super) fn compare(got: &FieldValue<'_>, op: Op, v: &Value) -> bool {
    if let FieldValue::List(items) = got {
        return match op {
            Op::Ne => !items.iter().any(|i| compare_one(i, Op::Eq, v)),
            _ => items.iter().any(|i| compare_one(i, op, v)),
        };
    }
    let owned;
    let text: &str = match got {
        FieldValue::Str(s) => s,
        FieldValue::Missing => {
            return match op {
                Op::Eq => v.text.is_empty(),
                Op::Ne => !v.text.is_empty(),
                _ => false,
            };
        }
        FieldValue::Int(i) => {
            if let Some(n) = v.number {
                let x = *i as f64;
                return match op {
                    Op::Eq => x == n,
                    Op::Ne => x != n,
                    Op::Lt => x < n,
                    Op::Le => x <= n,
                    Op::Gt => x > n,
                    Op::Ge => x >= n,
                };
            }
            owned = i.to_string();
            &owned
        }
        other => {
            owned = other.to_key_string();
            &owned
        }
    };
    compare_one(text, op, v)
}

fn compare_one(text: &str, op: Op, v: &Value) -> bool {
    match op {
        Op::Eq => v.pattern.matches(text),
        Op::Ne => !v.pattern.matches(text),
        _ => {
            let ordering = match (v.time, v.number) {
                (Some(t), _) => EventTime::parse_rfc3339(text).map(|x| x.cmp(&t)),
                (None, Some(n)) => text.parse::<f64>().ok().and_then(|x| x.partial_cmp(&n)),
                (None, None) => Some(text.cmp(v.text.as_str())),
            };
            ordering.is_some_and(|o| match op {
                Op::Lt => o.is_lt(),
                Op::Le => o.is_le(),
                Op::Gt => o.is_gt(),
                Op::Ge => o.is_ge(),
                Op::Eq | Op::Ne => false,
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
    Open,
    Close,
    Comma,
}

/// Tokens with their 1-based columns.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((Token::Open, column));
                i += 1;
            }
            ')' => {
                out.push((Token::Close, column));
                i += 1;
            }
            ',' => {
                out.push((Token::Comma, column));
                i += 1;
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => (Op::Eq, 2),
                    ('=', _) => (Op::Eq, 1),
                    ('!', Some('=')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('>', _) => (Op::Gt, 1),
                    _ => {
                        return Err(QueryError {
                            column,
                            message: "`!` is only part of `!=`; use `not` to negate".into(),
                        });
                    }
                };
                out.push((Token::Op(op), column));
                i += len;
            }
            '"' | '\'' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(QueryError {
                                column,
                                message: format!("unterminated string: no closing {quote}"),
                            });
                        }
                        Some('\\') if chars.get(i + 1).is_some() => {
                            value.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&ch) if ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            value.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((Token::Quoted(value), column));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(
                        chars[i],
                        '(' | ')' | ',' | '=' | '!' | '<' | '>' | '"' | '\''
                    )
                {
                    i += 1;
                }
                out.push((Token::Word(chars[start..i].iter().collect()), column));
            }
        }
    }
    Ok(out)
}

/// Parses a filter; an empty text is [`Expr::All`].
pub fn parse(text: &str) -> Result<Expr, QueryError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(Expr::All);
    }
    let end = text.chars().count() + 1;
    let mut p = Parser { tokens, at: 0, end };
    let expr = p.or()?;
    match p.tokens.get(p.at) {
        None => Ok(expr),
        Some((t, column)) => Err(QueryError {
            column: *column,
            message: match t {
                Token::Close => "`)` without a matching `(`".into(),
                _ => "expected `and`, `or` or the end of the query".into(),
            },
        }),
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    /// The column just past the text, for errors at its end.
    end: usize,
}

fn keyword(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(word))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(_, c)| *c)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, QueryError> {
        Err(QueryError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.peek().is_some_and(|t| keyword(t, "or")) {
            self.at += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while self.peek().is_some_and(|t| keyword(t, "and")) {
            self.at += 1;
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.peek().is_some_and(|t| keyword(t, "not")) {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, QueryError> {
        match self.peek() {
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return self.error("expected `)`");
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Word(name)) => {
                let (name, column) = (name.clone(), self.column());
                let field =
                    Field::parse(&name).map_err(|message| QueryError { column, message })?;
                self.at += 1;
                match self.peek() {
                    Some(Token::Op(op)) => {
                        let op = *op;
                        self.at += 1;
                        let value = self.value()?;
                        Ok(Expr::Compare(field, op, value))
                    }
                    Some(t) if keyword(t, "in") => {
                        self.at += 1;
                        Ok(Expr::In(field, self.list()?))
                    }
                    _ => self.error(format!(
                        "expected a comparison after {name:?}: =, !=, <, <=, >, >= or in (...)"
                    )),
                }
            }
            Some(_) => self.error("expected a field name, `not` or `(`"),
            None => self.error("the query ends where a comparison was expected"),
        }
    }

    fn value(&mut self) -> Result<Value, QueryError> {
        let column = self.column();
        let text = match self.peek() {
            Some(Token::Word(w)) if !["and", "or"].iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                w.clone()
            }
            Some(Token::Quoted(q)) => q.clone(),
            _ => {
                return self
                    .error("expected a value (a word, a number, a time or a quoted string)");
            }
        };
        self.at += 1;
        Value::new(text, column)
    }

    fn list(&mut self) -> Result<Vec<Value>, QueryError> {
        if self.peek() != Some(&Token::Open) {
            return self.error("expected `(` after `in`");
        }
        self.at += 1;
        let mut values = vec![self.value()?];
        loop {
            match self.peek() {
                Some(Token::Comma) => {
                    self.at += 1;
                    values.push(self.value()?);
                }
                Some(Token::Close) => {
                    self.at += 1;
                    return Ok(values);
                }
                _ => return self.error("expected `,` or `)` in the list"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    const EV: &str = r#"{"auditID":"a1","verb":"list","user":{"username":"alice","groups":["dev","system:authenticated"]},"sourceIPs":["10.0.0.9"],"objectRef":{"resource":"secrets","namespace":"prod"},"responseStatus":{"code":403},"requestReceivedTimestamp":"2025-01-01T00:00:05Z","stageTimestamp":"2025-01-01T00:00:05Z"}"#;

    fn check(q: &str) -> bool {
        parse(q)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .matches(&decode_event(EV).unwrap())
    }

    #[test]
    fn the_users_form_and_the_rule_paths_mean_the_same() {
        assert!(check("responsestatus_code=403 and verb=\"list\""));
        assert!(check("responseStatus.code = 403 and verb = list"));
        assert!(check("username=alice and code >= 400 and code < 500"));
        assert!(!check("code != 403"));
        assert!(check(
            "not (verb in (get, watch)) and resource in (secrets, configmaps)"
        ));
        assert!(check("username = ali* or username = bob"));
        assert!(check("groups = dev and not groups = admins"));
        assert!(check(
            "time > 2025-01-01T00:00:00Z and time <= '2025-01-01T00:00:05Z'"
        ));
        assert!(!check("time > 2025-01-01T00:00:05Z"));
        assert!(check("impersonatedUser.username = ''"));
        assert!(
            check("verb = list or verb = get and code = 200"),
            "and binds tighter"
        );
        assert!(check(""));
    }

    #[test]
    fn errors_point_at_their_column() {
        for (q, column, text) in [
            ("verb = list and", 16, "ends where a comparison"),
            ("verb list", 6, "expected a comparison"),
            ("(verb = list", 13, "expected `)`"),
            ("verb = list)", 12, "without a matching"),
            ("nosuch = 1", 1, "unknown field"),
            ("verb ! list", 6, "use `not`"),
            ("verb = 'list", 8, "unterminated"),
            ("verb in get", 9, "expected `(`"),
            ("verb in (get list)", 14, "expected `,` or `)`"),
            ("verb = and", 8, "expected a value"),
        ] {
            let e = parse(q).err().unwrap_or_else(|| panic!("{q} parsed"));
            assert_eq!(e.column, column, "{q}: {e}");
            assert!(e.message.contains(text), "{q}: {e}");
        }
    }
}
