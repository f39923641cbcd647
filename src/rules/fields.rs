//! Declarative field criteria in match blocks (`fields`, `absent`, `present`): checks on the
//! event and on its request/response objects, evaluated in Rust without a script.
//!
//! ```yaml
//! match:
//!   fields:
//!     object.kind: [Ingress]
//!     pod.containers[*].securityContext.privileged: [true]
//!     object.metadata.annotations.@keys: [$dangerous_ingress_annotations]
//!   absent: [object.spec.tls]
//! ```
//! Roots: `requestObject.`, `responseObject.`, `object.` (the object as written:
//! `responseObject` when recorded, else `requestObject`), `pod.` (the pod spec inside the
//! written object, for Pods, workload templates and CronJobs), or any typed event field
//! (`user.username`, `objectRef.namespace`, ...). `[*]` (or `.*`) visits every element of an
//! array or value of a map; `@keys` yields a map's keys. A criterion holds when any value the
//! path reaches is accepted; `null` accepts a missing value (an element without the key, when
//! the path went through `[*]`).
//!
//! Each object is parsed at most once per event, only when a rule that passed its cheaper
//! criteria asks for it, and shared by all rules. The parse is pruned: the paths every loaded
//! rule reads form an [`ObjectPaths`] trie, and subtrees outside it are skipped without being
//! built (a pod's spec is kilobytes; the rules read a few fields of it).

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::pattern::Patterns;
use crate::event::field::{FieldPath, FieldValue, Step, split_steps};
use crate::event::{AuditEvent, nested};

/// Which object a path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Request,
    Response,
    Written,
    Pod,
}

#[derive(Debug, Clone)]
enum Target {
    Object(Root, Vec<Step>),
    Event(FieldPath),
}

/// A path as written in a rule.
#[derive(Debug, Clone)]
pub struct ValuePath {
    target: Target,
    /// `.@repository` at the end: text values are read as container image references and
    /// reduced to their repository.
    image_repository: bool,
}

impl ValuePath {
    /// The typed event field this path names (`verb`, `objectRef.resource`, ...), if it is
    /// one read as is.
    pub fn event_field(&self) -> Option<&str> {
        match &self.target {
            Target::Event(path) if !self.image_repository => Some(path.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for ValuePath {
    /// The path as a rule writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Event(path) => write!(f, "{path}")?,
            Target::Object(root, steps) => {
                f.write_str(match root {
                    Root::Request => "requestObject",
                    Root::Response => "responseObject",
                    Root::Written => "object",
                    Root::Pod => "pod",
                })?;
                for step in steps {
                    match step {
                        Step::Key(k) => write!(f, ".{k}")?,
                        Step::Index(i) => write!(f, "[{i}]")?,
                        Step::Each => f.write_str("[*]")?,
                        Step::Keys => f.write_str(".@keys")?,
                    }
                }
            }
        }
        if self.image_repository {
            f.write_str(".@repository")?;
        }
        Ok(())
    }
}

/// An image reference's repository: without the tag and the digest
/// (`registry:5000/team/nginx:1.25@sha256:...` → `registry:5000/team/nginx`), which is what
/// image allow-lists name.
pub fn image_repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// Values a criterion accepts.
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    pub strings: Option<Patterns>,
    pub bools: Vec<bool>,
    pub numbers: Vec<f64>,
    pub null: bool,
}

#[derive(Debug, Clone)]
pub struct FieldCriterion {
    pub path: ValuePath,
    pub accepted: Accepted,
    pub quantifier: Quantifier,
}

/// How many of the values a path reaches must be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantifier {
    /// At least one (`fields`).
    #[default]
    Any,
    /// At least one value is reached and every one is accepted (`every`).
    Every,
}

/// The parts of an object some rule reads: a trie of keys. `all` keeps a whole subtree.
#[derive(Debug, Default, Clone)]
pub struct Trie {
    keys: HashMap<String, Trie>,
    each: Option<Box<Trie>>,
    all: bool,
}

impl Trie {
    fn insert(&mut self, steps: &[Step]) {
        if self.all {
            return;
        }
        match steps.split_first() {
            None | Some((Step::Keys, _)) => {
                // A leaf (compared or tested for presence) or a map whose keys are read.
                *self = Trie {
                    all: true,
                    ..Trie::default()
                };
            }
            Some((Step::Key(k), rest)) => self.keys.entry(k.clone()).or_default().insert(rest),
            Some((Step::Index(_) | Step::Each, rest)) => {
                self.each.get_or_insert_with(Box::default).insert(rest)
            }
        }
    }
}

/// The tries of the request and response objects, for all loaded rules.
#[derive(Debug, Default, Clone)]
pub struct ObjectPaths {
    request: Option<Trie>,
    response: Option<Trie>,
    /// A path read `responseObject.` explicitly (only the RequestResponse level records it).
    response_only: bool,
}

/// Every place a pod spec may sit: what [`pod_spec_location`] can return (a test checks it).
const POD_SPEC_PREFIXES: &[&[&str]] = &[
    &["spec"],
    &["spec", "template", "spec"],
    &["spec", "jobTemplate", "spec", "template", "spec"],
    &["template", "spec"],
    &[],
];

impl ObjectPaths {
    /// The objects these paths need recorded: (`requestObject` or the written object at all,
    /// `responseObject` specifically).
    pub fn needs(&self) -> (bool, bool) {
        (
            self.request.is_some() || self.response.is_some(),
            self.response_only,
        )
    }

    /// Adds the object paths a criterion reads.
    pub fn add(&mut self, path: &ValuePath) {
        let Target::Object(root, steps) = &path.target else {
            return;
        };
        let mut paths: Vec<Vec<Step>> = Vec::new();
        if *root == Root::Pod {
            // What pod_spec() looks at, then the path under every place a pod spec may be.
            paths.push(vec![Step::Key("kind".into())]);
            paths.push(vec![Step::Key("containers".into())]);
            for prefix in POD_SPEC_PREFIXES {
                let mut p: Vec<Step> = prefix.iter().map(|k| Step::Key((*k).into())).collect();
                p.extend(steps.iter().cloned());
                paths.push(p);
            }
        } else {
            paths.push(steps.clone());
        }
        let (request, response) = match root {
            Root::Request => (true, false),
            Root::Response => {
                self.response_only = true;
                (false, true)
            }
            Root::Written | Root::Pod => (true, true),
        };
        for p in &paths {
            if request {
                self.request.get_or_insert_with(Trie::default).insert(p);
            }
            if response {
                self.response.get_or_insert_with(Trie::default).insert(p);
            }
        }
    }
}

/// A part of the event parsed down to what the rules read (the trie), at most
/// [`nested::MAX_DEPTH`] levels deep: a deeper subtree is cut and flagged, not the whole part
/// lost (see [`crate::event::nested`]).
struct Pruned<'t, 'c> {
    trie: &'t Trie,
    depth: usize,
    cut: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_, '_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.trie.all || self.depth >= nested::MAX_DEPTH {
            return nested::Capped {
                depth: self.depth,
                cut: self.cut,
            }
            .deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_, '_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    nested::scalar_visits!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Some(each) = &self.trie.each else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        };
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Pruned {
            trie: each,
            depth: self.depth + 1,
            cut: self.cut,
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<crate::event::Text<'de>>()? {
            match self
                .trie
                .keys
                .get(key.as_str())
                .or(self.trie.each.as_deref())
            {
                Some(t) => {
                    let v = map.next_value_seed(Pruned {
                        trie: t,
                        depth: self.depth + 1,
                        cut: self.cut,
                    })?;
                    out.insert(key.as_str().to_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

fn parse_part(
    raw: Option<crate::event::RawJson<'_>>,
    trie: Option<&Trie>,
    cut: &Cell<bool>,
) -> Option<Value> {
    let raw = raw?;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match trie {
        Some(trie) => Pruned {
            trie,
            depth: 0,
            cut,
        }
        .deserialize(&mut de)
        .ok(),
        None => nested::Capped { depth: 0, cut }.deserialize(&mut de).ok(),
    }
}

/// The event's objects, parsed on first use (pruned to what the rules read).
pub struct ObjectCache<'p> {
    paths: &'p ObjectPaths,
    request: OnceCell<Option<Value>>,
    response: OnceCell<Option<Value>>,
    /// A subtree nested too deep was cut from a parsed object.
    cut: Cell<bool>,
}

impl<'p> ObjectCache<'p> {
    pub fn new(paths: &'p ObjectPaths) -> ObjectCache<'p> {
        ObjectCache {
            paths,
            request: OnceCell::new(),
            response: OnceCell::new(),
            cut: Cell::new(false),
        }
    }

    /// Whether an object parsed so far had a subtree nested too deep (cut, and counted).
    pub fn too_deep(&self) -> bool {
        self.cut.get()
    }

    fn request(&self, ev: &AuditEvent<'_>) -> Option<&Value> {
        self.request
            .get_or_init(|| parse_part(ev.request_object, self.paths.request.as_ref(), &self.cut))
            .as_ref()
    }

    fn response(&self, ev: &AuditEvent<'_>) -> Option<&Value> {
        self.response
            .get_or_init(|| parse_part(ev.response_object, self.paths.response.as_ref(), &self.cut))
            .as_ref()
    }

    fn written(&self, ev: &AuditEvent<'_>) -> Option<&Value> {
        match self.response(ev) {
            Some(v) if v.is_object() => Some(v),
            _ => self.request(ev),
        }
    }
}

impl ValuePath {
    pub fn parse(text: &str) -> Result<ValuePath, String> {
        let (text, image_repository) = match text.strip_suffix(".@repository") {
            Some(rest) => (rest, true),
            None if text.contains("@repository") => {
                return Err(format!(
                    "invalid field path {text:?}: @repository must be the last step"
                ));
            }
            None => (text, false),
        };
        let mut steps = split_steps(text)?;
        let root = match steps.first() {
            Some(Step::Key(k)) => match k.as_str() {
                "requestObject" => Some(Root::Request),
                "responseObject" => Some(Root::Response),
                "object" => Some(Root::Written),
                "pod" => Some(Root::Pod),
                _ => None,
            },
            _ => None,
        };
        if let Some(root) = root {
            steps.remove(0);
            return Ok(ValuePath {
                target: Target::Object(root, steps),
                image_repository,
            });
        }
        FieldPath::parse(text).map(|p| ValuePath {
            target: Target::Event(p),
            image_repository,
        })
    }

    /// Calls `visit` with every value the path reaches (`None` for a missing one reached
    /// through `[*]`); stops early when `visit` returns true. Returns whether it did.
    fn any(
        &self,
        ev: &AuditEvent<'_>,
        cache: &ObjectCache<'_>,
        visit: &mut dyn FnMut(Option<&Value>) -> bool,
    ) -> bool {
        if self.image_repository {
            let mut reduced = |v: Option<&Value>| match v {
                Some(Value::String(s)) => visit(Some(&Value::String(image_repository(s).into()))),
                other => visit(other),
            };
            return self.reach(ev, cache, &mut reduced);
        }
        self.reach(ev, cache, visit)
    }

    fn reach(
        &self,
        ev: &AuditEvent<'_>,
        cache: &ObjectCache<'_>,
        visit: &mut dyn FnMut(Option<&Value>) -> bool,
    ) -> bool {
        match &self.target {
            Target::Event(path) => match path.resolve(ev) {
                FieldValue::Missing => visit(None),
                FieldValue::Str(s) => visit(Some(&Value::String(s.into_owned()))),
                FieldValue::Int(n) => visit(Some(&Value::from(n))),
                FieldValue::List(items) => items
                    .into_iter()
                    .any(|s| visit(Some(&Value::String(s.into_owned())))),
                // A list in the raw event (`user.extra.arn`): each element, like `[*]`.
                FieldValue::Json(Value::Array(items)) => items.iter().any(|v| visit(Some(v))),
                FieldValue::Json(v) => visit(Some(&v)),
            },
            Target::Object(root, steps) => {
                let base = match root {
                    Root::Request => cache.request(ev),
                    Root::Response => cache.response(ev),
                    Root::Written => cache.written(ev),
                    Root::Pod => cache.written(ev).and_then(pod_spec),
                };
                match base {
                    Some(v) => walk(v, steps, false, visit),
                    None => visit(None),
                }
            }
        }
    }

    /// Whether the path reaches any value that is not null, empty text, an empty array or an
    /// empty map.
    pub fn present(&self, ev: &AuditEvent<'_>, cache: &ObjectCache<'_>) -> bool {
        self.any(ev, cache, &mut |v| match v {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        })
    }
}

fn walk(
    value: &Value,
    steps: &[Step],
    through_each: bool,
    visit: &mut dyn FnMut(Option<&Value>) -> bool,
) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return visit(Some(value));
    };
    let missing = |visit: &mut dyn FnMut(Option<&Value>) -> bool| through_each && visit(None);
    match (step, value) {
        (Step::Key(k), Value::Object(map)) => match map.get(k) {
            Some(v) => walk(v, rest, through_each, visit),
            None => missing(visit),
        },
        (Step::Index(i), Value::Array(items)) => match items.get(*i) {
            Some(v) => walk(v, rest, through_each, visit),
            None => missing(visit),
        },
        (Step::Each, Value::Array(items)) => items.iter().any(|v| walk(v, rest, true, visit)),
        (Step::Each, Value::Object(map)) => map.values().any(|v| walk(v, rest, true, visit)),
        (Step::Keys, Value::Object(map)) => map
            .keys()
            .any(|k| walk(&Value::String(k.clone()), rest, through_each, visit)),
        _ => missing(visit),
    }
}

/// Where the pod spec sits in an object of `kind`: a Pod's `spec`, a workload's template
/// (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController), a
/// PodTemplate's `template.spec`, a CronJob's job template. Without a known kind (partial
/// events), a bare pod spec (`has_containers`) or the object's `spec`. Shared by the match-block
/// paths (`pod.`) and the Rhai helpers.
pub fn pod_spec_location(kind: Option<&str>, has_containers: bool) -> &'static [&'static str] {
    match kind {
        Some("Pod") => &["spec"],
        Some("CronJob") => &["spec", "jobTemplate", "spec", "template", "spec"],
        Some("PodTemplate") => &["template", "spec"],
        Some(
            "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "Job"
            | "ReplicationController",
        ) => &["spec", "template", "spec"],
        _ if has_containers => &[],
        _ => &["spec"],
    }
}

/// The pod spec inside `obj` (see [`pod_spec_location`]).
fn pod_spec(obj: &Value) -> Option<&Value> {
    let kind = obj.get("kind").and_then(Value::as_str);
    pod_spec_location(kind, obj.get("containers").is_some())
        .iter()
        .try_fold(obj, |v, k| v.get(k))
}

impl Accepted {
    fn accepts(&self, value: Option<&Value>) -> bool {
        match value {
            None | Some(Value::Null) => self.null,
            Some(Value::Bool(b)) => self.bools.contains(b),
            Some(Value::Number(n)) => n
                .as_f64()
                .is_some_and(|x| self.numbers.iter().any(|y| (x - y).abs() < f64::EPSILON)),
            Some(Value::String(s)) => self.strings.as_ref().is_some_and(|p| p.matches(s)),
            Some(_) => false,
        }
    }
}

impl FieldCriterion {
    pub fn matches(&self, ev: &AuditEvent<'_>, cache: &ObjectCache<'_>) -> bool {
        match self.quantifier {
            Quantifier::Any => self.path.any(ev, cache, &mut |v| self.accepted.accepts(v)),
            Quantifier::Every => {
                let mut reached = false;
                let rejected = self.path.any(ev, cache, &mut |v| {
                    reached = true;
                    !self.accepted.accepts(v)
                });
                reached && !rejected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    fn accept_strings(items: &[&str]) -> Accepted {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        Accepted {
            strings: Some(Patterns::compile(&items).unwrap()),
            ..Accepted::default()
        }
    }

    const DEPLOY: &str = r#"{"auditID":"1","verb":"patch","user":{"username":"dev"},"requestObject":{"spec":{"replicas":3}},"responseObject":{"kind":"Deployment","metadata":{"annotations":{"a.io/x":"1"}},"spec":{"template":{"spec":{"hostPID":true,"volumes":[{"name":"v","hostPath":{"path":"/etc"}},{"name":"w","emptyDir":{}}],"containers":[{"name":"a"},{"name":"b","securityContext":{"privileged":true}}]}}}}}"#;

    fn check(path: &str, accepted: Accepted) -> bool {
        let ev = decode_event(DEPLOY).unwrap();
        let path = ValuePath::parse(path).unwrap();
        // Unpruned and pruned parses must agree.
        let full = ObjectPaths::default();
        let mut pruned = ObjectPaths::default();
        pruned.add(&path);
        let c = FieldCriterion {
            path,
            accepted,
            quantifier: Quantifier::Any,
        };
        let a = c.matches(&ev, &ObjectCache::new(&full));
        let b = c.matches(&ev, &ObjectCache::new(&pruned));
        assert_eq!(a, b, "pruning changed the result");
        a
    }

    #[test]
    fn raw_event_lists_are_visited_element_by_element() {
        let ev = decode_event(
            r#"{"verb":"get","user":{"username":"eks:addon-manager","extra":{"arn":["a","arn:aws:sts::1:assumed-role/Lambda-X/s"]}}}"#,
        )
        .unwrap();
        let c = FieldCriterion {
            path: ValuePath::parse("user.extra.arn").unwrap(),
            accepted: accept_strings(&["*:assumed-role/Lambda-*"]),
            quantifier: Quantifier::Any,
        };
        let paths = ObjectPaths::default();
        assert!(c.matches(&ev, &ObjectCache::new(&paths)));
        let every = FieldCriterion {
            quantifier: Quantifier::Every,
            ..c
        };
        assert!(!every.matches(&ev, &ObjectCache::new(&paths)));
    }

    #[test]
    fn image_repository_drops_tag_and_digest_but_not_a_registry_port() {
        for (image, repo) in [
            ("nginx", "nginx"),
            ("nginx:1.25", "nginx"),
            (
                "docker.io/library/nginx:1.25@sha256:0a1b",
                "docker.io/library/nginx",
            ),
            ("registry:5000/team/app", "registry:5000/team/app"),
            ("registry:5000/team/app:v2", "registry:5000/team/app"),
            ("app@sha256:0a1b", "app"),
        ] {
            assert_eq!(image_repository(image), repo, "{image}");
        }
        assert!(ValuePath::parse("pod.containers[*].image.@repository").is_ok());
        assert!(ValuePath::parse("pod.containers[*].@repository.image").is_err());
    }

    #[test]
    fn wildcards_keys_and_roots() {
        let yes = || Accepted {
            bools: vec![true],
            ..Accepted::default()
        };
        assert!(check("pod.containers[*].securityContext.privileged", yes()));
        assert!(check("pod.hostPID", yes()));
        assert!(!check("pod.hostNetwork", yes()));
        assert!(check(
            "pod.volumes.*.hostPath.path",
            accept_strings(&["/etc"])
        ));
        assert!(check(
            "object.metadata.annotations.@keys",
            accept_strings(&["a.io/*"])
        ));
        assert!(check("object.kind", accept_strings(&["Deployment"])));
        assert!(check(
            "requestObject.spec.replicas",
            Accepted {
                numbers: vec![3.0],
                ..Accepted::default()
            }
        ));
        assert!(check("user.username", accept_strings(&["dev"])));
        let null = || Accepted {
            null: true,
            ..Accepted::default()
        };
        // The first container has no securityContext: reached through [*], so it counts.
        assert!(check("pod.containers[*].securityContext", null()));
        assert!(!check("object.spec.nothing", Accepted::default()));
    }

    #[test]
    fn presence() {
        let ev = decode_event(DEPLOY).unwrap();
        let full = ObjectPaths::default();
        let cache = ObjectCache::new(&full);
        let p = |s: &str| ValuePath::parse(s).unwrap().present(&ev, &cache);
        assert!(p("pod.volumes"));
        assert!(!p("pod.volumes[*].emptyDir"), "an empty map is not present");
        assert!(!p("object.spec.tls"));
        assert!(p("pod.volumes[*].hostPath"));
    }

    #[test]
    fn pruning_covers_every_pod_spec_location() {
        let kinds = [
            Some("Pod"),
            Some("CronJob"),
            Some("PodTemplate"),
            Some("Deployment"),
            Some("ReplicaSet"),
            Some("StatefulSet"),
            Some("DaemonSet"),
            Some("Job"),
            Some("ReplicationController"),
            Some("Other"),
            None,
        ];
        for kind in kinds {
            for bare in [true, false] {
                let loc = pod_spec_location(kind, bare);
                assert!(POD_SPEC_PREFIXES.contains(&loc), "{kind:?} {bare}: {loc:?}");
            }
        }
    }

    #[test]
    fn pruning_keeps_only_what_rules_read() {
        let mut paths = ObjectPaths::default();
        paths.add(&ValuePath::parse("pod.containers[*].securityContext.privileged").unwrap());
        let ev = decode_event(DEPLOY).unwrap();
        let cache = ObjectCache::new(&paths);
        let v = cache.response(&ev).unwrap();
        assert_eq!(
            v,
            &serde_json::json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{}, {"securityContext": {"privileged": true}}]}}}})
        );
    }
}
