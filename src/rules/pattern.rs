//! String patterns of rules: exact values, globs and Sigma's values, compiled once.
//!
//! Patterns are classified when rules load (exact, prefix, suffix, contains, or a full glob via
//! globset) so that the common cases cost a string comparison, not a glob engine call. Long
//! lists of exact values are a hash set, and a compiled list is shared (`Arc`) by every rule
//! that names it, so a 5,000-item list used by 1,000 rules is compiled once.
//!
//! A glob is compiled to an automaton whose size grows with its wildcards, so a glob has at
//! most [`MAX_WILDCARDS`] of them and [`MAX_PATTERN_BYTES`] bytes: a glob of 10,000 stars
//! loaded and then took 7.7 s per match.

use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;
use std::net::IpAddr;

/// One string pattern. `*` and `?` and `[...]` are globs; anything else is exact.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    Glob(GlobMatcher),
    /// Sigma `|re`.
    Regex(regex::Regex),
    /// Sigma `|cidr`: the value is an IP address inside the network.
    Cidr(IpNet),
    /// A Sigma value without inner wildcards, compared case-insensitively: ASCII text is
    /// compared byte by byte (no glob machinery on the hot path); other text goes to the
    /// equivalent Unicode-aware glob, so the result is always the glob's.
    Folded(Box<Folded>),
}

/// Where a [`Pattern::Folded`] literal must sit in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    Whole,
    Start,
    End,
    Anywhere,
}

#[derive(Debug, Clone)]
pub(crate) struct Folded {
    anchor: Anchor,
    /// ASCII, lower case.
    literal: Box<str>,
    glob: GlobMatcher,
}

impl Folded {
    fn matches(&self, s: &str) -> bool {
        if !s.is_ascii() {
            return self.glob.is_match(s);
        }
        let (text, lit) = (s.as_bytes(), self.literal.as_bytes());
        if text.len() < lit.len() {
            return false;
        }
        match self.anchor {
            Anchor::Whole => text.eq_ignore_ascii_case(lit),
            Anchor::Start => text[..lit.len()].eq_ignore_ascii_case(lit),
            Anchor::End => text[text.len() - lit.len()..].eq_ignore_ascii_case(lit),
            Anchor::Anywhere => contains_folded(text, lit),
        }
    }
}

/// Whether `text` contains `lit` (ASCII lower case), ignoring ASCII case.
fn contains_folded(text: &[u8], lit: &[u8]) -> bool {
    let Some(&first) = lit.first() else {
        return true;
    };
    let last_start = text.len() - lit.len();
    let mut from = 0;
    while from <= last_start {
        let Some(at) = memchr::memchr2(first, first.to_ascii_uppercase(), &text[from..=last_start])
        else {
            return false;
        };
        let at = from + at;
        if text[at..at + lit.len()].eq_ignore_ascii_case(lit) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Wildcards (`*`, `?`, `[`, `{`) one glob may have.
pub const MAX_WILDCARDS: usize = 64;
/// Longest pattern (glob, value or regular expression), in bytes.
pub const MAX_PATTERN_BYTES: usize = 4096;

fn wildcards(p: &str) -> usize {
    p.chars()
        .filter(|c| matches!(c, '*' | '?' | '[' | '{'))
        .count()
}

fn check_size(p: &str, what: &str) -> Result<(), String> {
    if p.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "{what} of {} bytes; at most {MAX_PATTERN_BYTES}",
            p.len()
        ));
    }
    Ok(())
}

impl Pattern {
    pub(crate) fn compile(p: &str) -> Result<Pattern, String> {
        let is_glob_char = |c: char| matches!(c, '*' | '?' | '[' | '{');
        if !p.contains(is_glob_char) {
            return Ok(Pattern::Exact(p.into()));
        }
        check_size(p, "a glob")?;
        if p == "*" {
            return Ok(Pattern::Any);
        }
        let inner = p.trim_matches('*');
        if !inner.contains(is_glob_char) {
            let lead = p.starts_with('*');
            let trail = p.ends_with('*');
            return Ok(match (lead, trail) {
                (true, true) => Pattern::Contains(inner.into()),
                (true, false) => Pattern::Suffix(inner.into()),
                (false, true) => Pattern::Prefix(inner.into()),
                (false, false) => Pattern::Exact(inner.into()),
            });
        }
        let n = wildcards(p);
        if n > MAX_WILDCARDS {
            let shown: String = p.chars().take(40).collect();
            return Err(format!(
                "the glob {shown:?}... has {n} wildcards; at most {MAX_WILDCARDS} (split it into several patterns, or use a regex in a condition)"
            ));
        }
        Glob::new(p)
            .map(|g| Pattern::Glob(g.compile_matcher()))
            .map_err(|e| format!("invalid glob {p:?}: {}", e.kind()))
    }

    /// Wildcards of a compiled glob (0 for the cheap kinds), for the rule set's budget.
    fn glob_weight(&self) -> usize {
        match self {
            Pattern::Glob(g) => wildcards(g.glob().glob()).max(1),
            Pattern::Regex(r) => r.as_str().len() / 8 + 1,
            _ => 0,
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => **e == *s,
            Pattern::Prefix(p) => s.starts_with(&**p),
            Pattern::Suffix(p) => s.ends_with(&**p),
            Pattern::Contains(p) => s.contains(&**p),
            Pattern::Glob(g) => g.is_match(s),
            Pattern::Regex(r) => r.is_match(s),
            Pattern::Cidr(net) => s.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
            Pattern::Folded(f) => f.matches(s),
        }
    }
}

/// How a Sigma value is compared (its modifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaMatch {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
    Regex,
    Cidr,
}

impl Patterns {
    /// One Sigma value as a pattern: case-insensitive, with Sigma's wildcards (`*`, `?`;
    /// `\*`, `\?` and `\\` for the literal characters) and nothing else special.
    pub fn sigma(value: &str, how: SigmaMatch) -> Result<Patterns, String> {
        check_size(value, "a value")?;
        let pattern = match how {
            SigmaMatch::Regex => Pattern::Regex(
                regex::RegexBuilder::new(value)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid regular expression: {e}"))?,
            ),
            SigmaMatch::Cidr => Pattern::Cidr(
                value
                    .parse()
                    .map_err(|_| format!("invalid CIDR network {value:?}"))?,
            ),
            _ => {
                let mut glob = String::new();
                // Runs of `*` are one `*`: globset reads `**/` as "any directories", which
                // also matches nothing (`*/` of a Sigma `contains` must still need a `/`).
                let mut star = false;
                let push_star = |glob: &mut String, star: &mut bool| {
                    if !*star {
                        glob.push('*');
                    }
                    *star = true;
                };
                if matches!(how, SigmaMatch::Contains | SigmaMatch::EndsWith) {
                    push_star(&mut glob, &mut star);
                }
                let mut chars = value.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '*' => {
                            push_star(&mut glob, &mut star);
                            continue;
                        }
                        '\\' => match chars.next() {
                            Some(e @ ('*' | '?' | '\\')) => push_literal(&mut glob, e),
                            Some(other) => {
                                push_literal(&mut glob, '\\');
                                push_literal(&mut glob, other);
                            }
                            None => push_literal(&mut glob, '\\'),
                        },
                        '?' => glob.push(c),
                        _ => push_literal(&mut glob, c),
                    }
                    star = false;
                }
                if matches!(how, SigmaMatch::Contains | SigmaMatch::StartsWith) {
                    push_star(&mut glob, &mut star);
                }
                let n = wildcards(&glob);
                if n > MAX_WILDCARDS {
                    return Err(format!(
                        "value {value:?} has {n} wildcards; at most {MAX_WILDCARDS}"
                    ));
                }
                let matcher = globset::GlobBuilder::new(&glob)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("invalid value {value:?}: {}", e.kind()))?
                    .compile_matcher();
                match folded_literal(value, how) {
                    Some((anchor, literal)) => Pattern::Folded(Box::new(Folded {
                        anchor,
                        literal,
                        glob: matcher,
                    })),
                    None => Pattern::Glob(matcher),
                }
            }
        };
        Ok(Patterns::from_patterns(vec![pattern]))
    }

    /// Any of several pattern lists.
    pub fn union(lists: Vec<Patterns>) -> Patterns {
        let mut all = Vec::new();
        for list in lists {
            all.extend(list.0.exact.iter().map(|e| Pattern::Exact(e.clone())));
            all.extend(list.0.others.iter().cloned());
        }
        Patterns::from_patterns(all)
    }
}

/// A character that globset must read literally.
/// A Sigma value whose only wildcards are leading or trailing `*`s, with an ASCII literal
/// between them: where the literal must sit, and the literal in lower case.
fn folded_literal(value: &str, how: SigmaMatch) -> Option<(Anchor, Box<str>)> {
    let mut literal = String::new();
    let (mut lead, mut trail) = (false, false);
    let mut chars = value.chars().peekable();
    while chars.peek() == Some(&'*') {
        chars.next();
        lead = true;
    }
    while let Some(c) = chars.next() {
        if trail {
            // Text after a `*` that is not leading: an inner wildcard.
            return None;
        }
        match c {
            '\\' => match chars.next() {
                Some(e @ ('*' | '?' | '\\')) => literal.push(e),
                Some(other) => {
                    literal.push('\\');
                    literal.push(other);
                }
                None => literal.push('\\'),
            },
            '?' => return None,
            '*' => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                trail = true;
            }
            _ => literal.push(c),
        }
    }
    if !literal.is_ascii() {
        return None;
    }
    let start_free = lead || matches!(how, SigmaMatch::Contains | SigmaMatch::EndsWith);
    let end_free = trail || matches!(how, SigmaMatch::Contains | SigmaMatch::StartsWith);
    let anchor = match (start_free, end_free) {
        (false, false) => Anchor::Whole,
        (false, true) => Anchor::Start,
        (true, false) => Anchor::End,
        (true, true) => Anchor::Anywhere,
    };
    Some((anchor, literal.to_ascii_lowercase().into()))
}

fn push_literal(glob: &mut String, c: char) {
    if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
        glob.push('\\');
    }
    glob.push(c);
}

/// Any-of a list of patterns, shared by the rules that use the same list.
#[derive(Debug, Clone, Default)]
pub struct Patterns(Arc<PatternSet>);

/// Exact values a list holds before a hash set beats comparing them one by one.
const SET_FROM: usize = 8;

#[derive(Debug, Default)]
struct PatternSet {
    /// The exact values, in order (for [`Patterns::exact_values`]).
    exact: Vec<Box<str>>,
    /// The same as a set, for long lists.
    set: Option<std::collections::HashSet<Box<str>, foldhash::fast::FixedState>>,
    /// Every other kind, in order.
    others: Vec<Pattern>,
}

impl Patterns {
    pub fn compile(items: &[String]) -> Result<Patterns, String> {
        items
            .iter()
            .map(|p| Pattern::compile(p))
            .collect::<Result<Vec<_>, _>>()
            .map(Patterns::from_patterns)
    }

    fn from_patterns(patterns: Vec<Pattern>) -> Patterns {
        let mut set = PatternSet::default();
        for p in patterns {
            match p {
                Pattern::Exact(e) => set.exact.push(e),
                other => set.others.push(other),
            }
        }
        if set.exact.len() >= SET_FROM {
            set.set = Some(set.exact.iter().cloned().collect());
        }
        Patterns(Arc::new(set))
    }

    pub fn matches(&self, s: &str) -> bool {
        let p = &*self.0;
        let exact = match &p.set {
            Some(set) => set.contains(s),
            None => p.exact.iter().any(|e| **e == *s),
        };
        exact || p.others.iter().any(|o| o.matches(s))
    }

    /// The exact strings, when every pattern is exact (used to index rules by verb).
    /// Every value these patterns can match, in lower case, when each pattern matches one
    /// value only (exact values, and Sigma's case-insensitive values without wildcards).
    pub fn lowercase_values(&self) -> Option<Vec<String>> {
        let mut values: Vec<String> = self.0.exact.iter().map(|e| e.to_lowercase()).collect();
        for p in &self.0.others {
            match p {
                Pattern::Folded(f) if f.anchor == Anchor::Whole => {
                    values.push(f.literal.to_string())
                }
                _ => return None,
            }
        }
        Some(values)
    }

    pub fn exact_values(&self) -> Option<Vec<&str>> {
        self.0
            .others
            .is_empty()
            .then(|| self.0.exact.iter().map(|e| &**e).collect())
    }

    /// Whether both are the same compiled list (shared by rules that name it).
    pub fn same_list(&self, other: &Patterns) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Patterns held (exact values and others).
    pub fn len(&self) -> usize {
        self.0.exact.len() + self.0.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compile cost of the globs and regexes held (their wildcards), for the rule set's
    /// budget.
    pub fn glob_weight(&self) -> usize {
        self.0.others.iter().map(Pattern::glob_weight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob_of(p: &Patterns) -> Option<&Folded> {
        match p.0.others.first() {
            Some(Pattern::Folded(f)) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn sigma_literals_skip_the_glob() {
        for (value, how, anchor) in [
            ("delete", SigmaMatch::Equals, Anchor::Whole),
            ("/exec", SigmaMatch::EndsWith, Anchor::End),
            ("*/exec", SigmaMatch::Equals, Anchor::End),
            ("system:", SigmaMatch::StartsWith, Anchor::Start),
            ("kube*", SigmaMatch::Equals, Anchor::Start),
            ("Secret", SigmaMatch::Contains, Anchor::Anywhere),
        ] {
            let p = Patterns::sigma(value, how).unwrap();
            assert_eq!(glob_of(&p).map(|f| f.anchor), Some(anchor), "{value}");
        }
        // Inner wildcards and `?` keep the glob.
        for value in ["a*b", "a?", "*a*b*"] {
            let p = Patterns::sigma(value, SigmaMatch::Equals).unwrap();
            assert!(glob_of(&p).is_none(), "{value}");
        }
        let p = Patterns::sigma("Delete", SigmaMatch::Equals).unwrap();
        assert!(p.matches("DELETE") && p.matches("delete") && !p.matches("deleted"));
        // `**/` is not globset's "any directories" (which matches nothing) here.
        let p = Patterns::sigma("*/exec", SigmaMatch::Contains).unwrap();
        assert!(p.matches("pods/exec") && !p.matches("exec") && !p.matches("ñexec"));
        let p = Patterns::sigma("a**/b*c", SigmaMatch::Equals).unwrap();
        assert!(p.matches("aX/bYc") && !p.matches("abYc") && !p.matches("ñbc"));
        let p = Patterns::sigma("a\\*b", SigmaMatch::Equals).unwrap();
        assert!(p.matches("A*B") && !p.matches("aXb"));
    }

    proptest! {
        /// The byte-wise comparison gives the glob's answer on any text, ASCII or not.
        #[test]
        fn folded_literals_agree_with_their_glob(
            value in "[*]?[a-cA-C:/\\\\*]{0,5}[*]?",
            text in "[a-cA-C:/*\\\\\u{212a}\u{17f}]{0,8}",
            how in prop::sample::select(vec![
                SigmaMatch::Equals,
                SigmaMatch::Contains,
                SigmaMatch::StartsWith,
                SigmaMatch::EndsWith,
            ]),
        ) {
            let p = Patterns::sigma(&value, how).unwrap();
            if let Some(f) = glob_of(&p) {
                prop_assert_eq!(f.matches(&text), f.glob.is_match(&text), "{:?} {:?}", value, how);
            }
        }
    }
}
