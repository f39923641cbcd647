//! Compiled `match` blocks: the cheap, declarative prefilter that runs before any script.
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

use std::net::IpAddr;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;

use super::fields::{FieldCriterion, ObjectCache, ValuePath};
use crate::event::{AuditEvent, Level, Stage};

/// One string pattern. `*` and `?` and `[...]` are globs; anything else is exact.
#[derive(Debug, Clone)]
enum Pattern {
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
    fn compile(p: &str) -> Result<Pattern, String> {
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

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => **e == *s,
            Pattern::Prefix(p) => s.starts_with(&**p),
            Pattern::Suffix(p) => s.ends_with(&**p),
            Pattern::Contains(p) => s.contains(&**p),
            Pattern::Glob(g) => g.is_match(s),
            Pattern::Regex(r) => r.is_match(s),
            Pattern::Cidr(net) => s.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
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
                if matches!(how, SigmaMatch::Contains | SigmaMatch::EndsWith) {
                    glob.push('*');
                }
                let mut chars = value.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(e @ ('*' | '?' | '\\')) => push_literal(&mut glob, e),
                            Some(other) => {
                                push_literal(&mut glob, '\\');
                                push_literal(&mut glob, other);
                            }
                            None => push_literal(&mut glob, '\\'),
                        },
                        '*' | '?' => glob.push(c),
                        _ => push_literal(&mut glob, c),
                    }
                }
                if matches!(how, SigmaMatch::Contains | SigmaMatch::StartsWith) {
                    glob.push('*');
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
                Pattern::Glob(matcher)
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

/// `[group/]resource[/subresource]`.
#[derive(Debug, Clone)]
pub struct ResourcePattern {
    /// `None`: any group.
    group: Option<Pattern>,
    resource: Pattern,
    /// `None`: no subresource; `Some(Any)`: any subresource.
    subresource: Option<Pattern>,
}

/// API groups whose names have no dot, so `apps/deployments` is read as group/resource.
const DOTLESS_GROUPS: &[&str] = &[
    "core",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
];

/// A resource pattern without wildcards (except "any subresource").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactResource<'a> {
    /// `None`: any group.
    pub group: Option<&'a str>,
    pub resource: &'a str,
    pub subresource: Subresource<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource<'a> {
    /// The resource itself.
    None,
    Any,
    Exact(&'a str),
}

impl ResourcePattern {
    /// The pattern's parts when each is exact or absent; `None` for wildcard resources.
    pub fn exact(&self) -> Option<ExactResource<'_>> {
        fn exact(p: &Pattern) -> Option<&str> {
            match p {
                Pattern::Exact(e) => Some(e),
                _ => None,
            }
        }
        let group = match &self.group {
            None => None,
            Some(g) => Some(exact(g)?),
        };
        let subresource = match &self.subresource {
            None => Subresource::None,
            Some(Pattern::Any) => Subresource::Any,
            Some(s) => Subresource::Exact(exact(s)?),
        };
        Some(ExactResource {
            group,
            resource: exact(&self.resource)?,
            subresource,
        })
    }

    /// The resource name when it is exact (whatever the group and subresource).
    pub fn exact_resource(&self) -> Option<&str> {
        match &self.resource {
            Pattern::Exact(e) => Some(e),
            _ => None,
        }
    }

    pub fn parse(text: &str) -> Result<ResourcePattern, String> {
        let parts: Vec<&str> = text.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "invalid resource {text:?}: expected [group/]resource[/subresource], e.g. pods, pods/exec, networking.k8s.io/ingresses"
            ));
        }
        let is_group = |g: &str| g.contains('.') || DOTLESS_GROUPS.contains(&g) || g == "*";
        let (group, resource, sub) = match parts.as_slice() {
            [r] => (None, *r, None),
            [a, b] if is_group(a) => (Some(*a), *b, None),
            [r, s] => (None, *r, Some(*s)),
            [g, r, s] => (Some(*g), *r, Some(*s)),
            _ => {
                return Err(format!(
                    "invalid resource {text:?}: expected at most group/resource/subresource"
                ));
            }
        };
        let group = match group {
            None | Some("*") => None,
            Some("core") => Some(Pattern::Exact("".into())),
            Some(g) => Some(Pattern::compile(g)?),
        };
        Ok(ResourcePattern {
            group,
            resource: Pattern::compile(resource)?,
            subresource: sub.map(Pattern::compile).transpose()?,
        })
    }

    fn matches(&self, group: &str, resource: &str, subresource: &str) -> bool {
        if let Some(g) = &self.group
            && !g.matches(group)
        {
            return false;
        }
        if !self.resource.matches(resource) {
            return false;
        }
        match &self.subresource {
            None => subresource.is_empty(),
            Some(p) => !subresource.is_empty() && p.matches(subresource),
        }
    }
}

/// A compiled match block.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub verbs: Option<Patterns>,
    /// Set when `verbs` are all exact: the engine only offers events with one of those verbs
    /// to this rule, so the check is skipped. Only on a rule's top-level block.
    pub verbs_indexed: bool,
    pub resources: Option<Vec<ResourcePattern>>,
    pub namespaces: Option<Patterns>,
    pub names: Option<Patterns>,
    pub users: Option<Patterns>,
    pub effective_users: Option<Patterns>,
    pub groups: Option<Patterns>,
    /// Inclusive ranges.
    pub response_codes: Option<Vec<(i32, i32)>>,
    pub stages: Option<Vec<Stage>>,
    pub levels: Option<Vec<Level>>,
    pub source_ips: Option<Vec<IpNet>>,
    pub user_agents: Option<Patterns>,
    pub request_uris: Option<Patterns>,
    pub fields: Vec<FieldCriterion>,
    pub absent: Vec<ValuePath>,
    pub present: Vec<ValuePath>,
    pub any: Vec<Matcher>,
    pub except: Vec<Matcher>,
}

impl Matcher {
    /// True when the event passes every criterion and no exception. `objects` holds the
    /// event's parsed objects, shared by all rules for this event.
    pub fn matches(&self, ev: &AuditEvent<'_>, objects: &ObjectCache<'_>) -> bool {
        // An exception is evaluated in full, its own exceptions included ("system:* users,
        // except service accounts"); compiled Sigma `not`s nest the same way.
        self.matches_positive(ev, objects) && !self.except.iter().any(|x| x.matches(ev, objects))
    }

    fn matches_positive(&self, ev: &AuditEvent<'_>, objects: &ObjectCache<'_>) -> bool {
        // Typed criteria first: they are cheap and rule most events out.
        if !self.matches_typed(ev) {
            return false;
        }
        self.fields.iter().all(|c| c.matches(ev, objects))
            && self.absent.iter().all(|p| !p.present(ev, objects))
            && self.present.iter().all(|p| p.present(ev, objects))
            && (self.any.is_empty() || self.any.iter().any(|m| m.matches(ev, objects)))
    }

    /// Adds the object paths this block (and its nested blocks) reads.
    pub fn collect_object_paths(&self, out: &mut crate::rules::fields::ObjectPaths) {
        for c in &self.fields {
            out.add(&c.path);
        }
        for p in self.absent.iter().chain(&self.present) {
            out.add(p);
        }
        for m in self.any.iter().chain(&self.except) {
            m.collect_object_paths(out);
        }
    }

    fn matches_typed(&self, ev: &AuditEvent<'_>) -> bool {
        // Exact verb lists are guaranteed by the engine's verb index already.
        if let Some(v) = &self.verbs
            && !self.verbs_indexed
            && !v.matches(&ev.verb)
        {
            return false;
        }
        if let Some(stages) = &self.stages
            && !stages.contains(&ev.stage)
        {
            return false;
        }
        if let Some(codes) = &self.response_codes {
            let Some(status) = &ev.response_status else {
                return false;
            };
            if !codes
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status.code))
            {
                return false;
            }
        }
        let oref = ev.object_ref();
        if let Some(res) = &self.resources
            && !res
                .iter()
                .any(|r| r.matches(&oref.api_group, &oref.resource, &oref.subresource))
        {
            return false;
        }
        if let Some(p) = &self.namespaces
            && !p.matches(&oref.namespace)
        {
            return false;
        }
        if let Some(p) = &self.names
            && !p.matches(&oref.name)
        {
            return false;
        }
        if let Some(levels) = &self.levels
            && !levels.contains(&ev.level)
        {
            return false;
        }
        if let Some(p) = &self.users
            && !p.matches(&ev.user.username)
        {
            return false;
        }
        if let Some(p) = &self.effective_users
            && !p.matches(&ev.effective_user().username)
        {
            return false;
        }
        if let Some(p) = &self.groups
            && !ev.user.groups.iter().any(|g| p.matches(g))
        {
            return false;
        }
        if let Some(p) = &self.user_agents
            && !p.matches(&ev.user_agent)
        {
            return false;
        }
        if let Some(p) = &self.request_uris
            && !p.matches(&ev.request_uri)
        {
            return false;
        }
        if let Some(nets) = &self.source_ips {
            let inside = ev.source_ips.iter().any(|ip| {
                ip.parse::<IpAddr>()
                    .is_ok_and(|addr| nets.iter().any(|n| n.contains(&addr)))
            });
            if !inside {
                return false;
            }
        }
        true
    }
}

/// Parses `403`, `4xx`, `400-499`.
pub fn parse_code_range(text: &str) -> Result<(i32, i32), String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid response code {text:?}: expected a code (403), a class (4xx) or a range (400-499)"
        )
    };
    if let Some(class) = t.strip_suffix("xx").or_else(|| t.strip_suffix("XX")) {
        let d: i32 = class.parse().map_err(|_| bad())?;
        if !(1..=5).contains(&d) {
            return Err(bad());
        }
        return Ok((d * 100, d * 100 + 99));
    }
    if let Some((lo, hi)) = t.split_once('-') {
        let lo: i32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: i32 = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(bad());
        }
        return Ok((lo, hi));
    }
    let c: i32 = t.parse().map_err(|_| bad())?;
    Ok((c, c))
}

/// Parses an address (`10.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid address or CIDR {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    #[test]
    fn patterns_cover_exact_prefix_suffix_contains_and_glob() {
        let p = Patterns::compile(&[
            "admin".into(),
            "system:serviceaccount:*".into(),
            "*@example.com".into(),
            "*evil*".into(),
            "user-[0-9]".into(),
        ])
        .unwrap();
        for yes in [
            "admin",
            "system:serviceaccount:a:b",
            "x@example.com",
            "my-evil-1",
            "user-7",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["admin2", "system:node:x", "x@example.org", "user-x"] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(Pattern::compile("a[").is_err());
    }

    #[test]
    fn resources_follow_rbac_conventions() {
        let check = |pat: &str, g: &str, r: &str, s: &str| {
            ResourcePattern::parse(pat).unwrap().matches(g, r, s)
        };
        assert!(check("pods", "", "pods", ""));
        assert!(!check("pods", "", "pods", "exec"));
        assert!(check("pods/exec", "", "pods", "exec"));
        assert!(check("pods/*", "", "pods", "log"));
        assert!(check(
            "networking.k8s.io/ingresses",
            "networking.k8s.io",
            "ingresses",
            ""
        ));
        assert!(!check(
            "networking.k8s.io/ingresses",
            "extensions",
            "ingresses",
            ""
        ));
        assert!(check("ingresses", "extensions", "ingresses", ""));
        assert!(check("apps/deployments", "apps", "deployments", ""));
        assert!(check("core/secrets", "", "secrets", ""));
        assert!(!check("core/secrets", "example.io", "secrets", ""));
        assert!(check("*/pods/exec", "", "pods", "exec"));
        assert!(ResourcePattern::parse("pods//exec").is_err());
    }

    #[test]
    fn code_ranges() {
        assert_eq!(parse_code_range("4xx").unwrap(), (400, 499));
        assert_eq!(parse_code_range("401").unwrap(), (401, 401));
        assert_eq!(parse_code_range("500-599").unwrap(), (500, 599));
        assert!(parse_code_range("6xx").is_err());
        assert!(
            parse_code_range("nope")
                .unwrap_err()
                .contains("a class (4xx)")
        );
    }

    #[test]
    fn source_ips_and_exceptions() {
        let ev = decode_event(
            r#"{"auditID":"1","verb":"get","sourceIPs":["10.1.2.3"],"user":{"username":"bob"},"objectRef":{"resource":"secrets","namespace":"prod"},"responseStatus":{"code":200}}"#,
        )
        .unwrap();
        let mut m = Matcher {
            source_ips: Some(vec![parse_net("10.0.0.0/8").unwrap()]),
            response_codes: Some(vec![(200, 299)]),
            ..Matcher::default()
        };
        let paths = crate::rules::fields::ObjectPaths::default();
        let objects = ObjectCache::new(&paths);
        assert!(m.matches(&ev, &objects));
        m.except.push(Matcher {
            namespaces: Some(Patterns::compile(&["prod".into()]).unwrap()),
            ..Matcher::default()
        });
        assert!(!m.matches(&ev, &objects));
    }
}
