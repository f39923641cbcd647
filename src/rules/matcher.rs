//! Compiled `match` blocks: the cheap, declarative prefilter that runs before any script.
//! The string patterns they use are in [`super::pattern`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::fields::{FieldCriterion, ObjectCache, ValuePath};
use super::pattern::Pattern;
pub use super::pattern::{Patterns, SigmaMatch};
use crate::event::{AuditEvent, Level, Stage};

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

/// One criterion of a match block on one event (see [`Matcher::explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Nesting under `any` and `except`.
    pub depth: usize,
    pub criterion: String,
    pub held: bool,
    /// The event's value the criterion looked at (empty for field criteria).
    pub value: String,
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
    /// The client address (`sourceIPs[0]`) is (true) or is not (false) globally routable:
    /// the declarative form of `is_public_ip(event.sourceIP)`, without running a script.
    pub public_source_ip: Option<bool>,
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

    /// Each criterion of this block on `ev`, in the rule file's words: its key, whether it
    /// held, and the event's value it looked at. Nested `any` and `except` blocks follow,
    /// indented. For `auditwatch explain`: evaluated one criterion at a time by the same code
    /// as [`Matcher::matches`].
    pub fn explain(&self, ev: &AuditEvent<'_>, objects: &ObjectCache<'_>) -> Vec<Explained> {
        let mut out = Vec::new();
        self.explain_into(ev, objects, 0, &mut out);
        out
    }

    fn explain_into(
        &self,
        ev: &AuditEvent<'_>,
        objects: &ObjectCache<'_>,
        depth: usize,
        out: &mut Vec<Explained>,
    ) {
        let oref = ev.object_ref();
        let only = |set: &dyn Fn(&mut Matcher)| {
            let mut m = Matcher::default();
            set(&mut m);
            m.matches_typed(ev)
        };
        let mut add = |criterion: &str, held: bool, value: String| {
            out.push(Explained {
                depth,
                criterion: criterion.to_owned(),
                held,
                value,
            });
        };
        if let Some(v) = &self.verbs {
            add("verbs", v.matches(&ev.verb), ev.verb.to_string());
        }
        if self.stages.is_some() {
            add(
                "stages",
                only(&|m| m.stages.clone_from(&self.stages)),
                ev.stage.as_str().into(),
            );
        }
        if self.response_codes.is_some() {
            let code = ev
                .response_status
                .as_ref()
                .map_or(String::new(), |s| s.code.to_string());
            add(
                "response_codes",
                only(&|m| m.response_codes.clone_from(&self.response_codes)),
                code,
            );
        }
        if self.resources.is_some() {
            let what = format!("{}/{}/{}", oref.api_group, oref.resource, oref.subresource);
            add(
                "resources",
                only(&|m| m.resources.clone_from(&self.resources)),
                what,
            );
        }
        if self.namespaces.is_some() {
            add(
                "namespaces",
                only(&|m| m.namespaces.clone_from(&self.namespaces)),
                oref.namespace.to_string(),
            );
        }
        if self.names.is_some() {
            add(
                "names",
                only(&|m| m.names.clone_from(&self.names)),
                oref.name.to_string(),
            );
        }
        if self.levels.is_some() {
            add(
                "levels",
                only(&|m| m.levels.clone_from(&self.levels)),
                ev.level.as_str().into(),
            );
        }
        if self.users.is_some() {
            add(
                "users",
                only(&|m| m.users.clone_from(&self.users)),
                ev.user.username.to_string(),
            );
        }
        if self.effective_users.is_some() {
            add(
                "effective_users",
                only(&|m| m.effective_users.clone_from(&self.effective_users)),
                ev.effective_user().username.to_string(),
            );
        }
        if self.groups.is_some() {
            let groups: Vec<&str> = ev.user.groups.iter().map(|g| &**g).collect();
            add(
                "groups",
                only(&|m| m.groups.clone_from(&self.groups)),
                groups.join(","),
            );
        }
        if self.user_agents.is_some() {
            add(
                "user_agents",
                only(&|m| m.user_agents.clone_from(&self.user_agents)),
                ev.user_agent.to_string(),
            );
        }
        if self.request_uris.is_some() {
            add(
                "request_uris",
                only(&|m| m.request_uris.clone_from(&self.request_uris)),
                ev.request_uri.to_string(),
            );
        }
        let ips: Vec<&str> = ev.source_ips.iter().map(|i| &**i).collect();
        if self.source_ips.is_some() {
            add(
                "source_ips",
                only(&|m| m.source_ips.clone_from(&self.source_ips)),
                ips.join(","),
            );
        }
        if self.public_source_ip.is_some() {
            add(
                "public_source_ip",
                only(&|m| m.public_source_ip = self.public_source_ip),
                ips.first().copied().unwrap_or_default().to_owned(),
            );
        }
        for c in &self.fields {
            add(
                &format!("fields: {}", c.path),
                c.matches(ev, objects),
                String::new(),
            );
        }
        for p in &self.absent {
            add(
                &format!("absent: {p}"),
                !p.present(ev, objects),
                String::new(),
            );
        }
        for p in &self.present {
            add(
                &format!("present: {p}"),
                p.present(ev, objects),
                String::new(),
            );
        }
        if !self.any.is_empty() {
            let held = self.any.iter().any(|m| m.matches(ev, objects));
            add(
                &format!("any (one of {} blocks)", self.any.len()),
                held,
                String::new(),
            );
            for (i, m) in self.any.iter().enumerate() {
                out.push(Explained {
                    depth: depth + 1,
                    criterion: format!("any[{i}]"),
                    held: m.matches(ev, objects),
                    value: String::new(),
                });
                m.explain_into(ev, objects, depth + 2, out);
            }
        }
        for (i, m) in self.except.iter().enumerate() {
            // An exception "holds" for the rule when it does not match.
            out.push(Explained {
                depth,
                criterion: format!("except[{i}] (must not match)"),
                held: !m.matches(ev, objects),
                value: String::new(),
            });
            m.explain_into(ev, objects, depth + 1, out);
        }
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
        if let Some(want) = self.public_source_ip {
            let public = ev
                .source_ips
                .first()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_some_and(super::script::is_globally_routable);
            if public != want {
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
    fn public_source_ip_reads_the_client_address() {
        let public = Matcher {
            public_source_ip: Some(true),
            ..Matcher::default()
        };
        let private = Matcher {
            public_source_ip: Some(false),
            ..Matcher::default()
        };
        let paths = crate::rules::fields::ObjectPaths::default();
        let objects = ObjectCache::new(&paths);
        for (ips, is_public) in [
            (r#"["8.8.8.8"]"#, true),
            (r#"["8.8.8.8","10.0.0.1"]"#, true),
            (r#"["10.0.0.1","8.8.8.8"]"#, false),
            (r#"["2001:db8::1"]"#, false),
            (r#"["not-an-ip"]"#, false),
            ("[]", false),
        ] {
            let text = format!(r#"{{"auditID":"1","verb":"get","sourceIPs":{ips}}}"#);
            let ev = decode_event(&text).unwrap();
            assert_eq!(public.matches(&ev, &objects), is_public, "{ips}");
            assert_eq!(private.matches(&ev, &objects), !is_public, "{ips}");
        }
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
