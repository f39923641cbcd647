//! Rhai conditions: the sandboxed engine, the helpers rule authors get, and the event as seen
//! from a script.
//!
//! Scripts only run after a rule's `match` block passed, so the event is converted to a Rhai map
//! at most once per event and only for the few events that get this far. The engine has no
//! file, network or module access, `eval` is disabled, and every run is capped in operations,
//! call depth and data sizes so a runaway script costs one counted error, not the stream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};

use crate::event::RawJson;
use ipnet::IpNet;
use rhai::{AST, Array, Dynamic, Engine, ImmutableString, Map, Scope};

use crate::event::{AuditEvent, UserInfo};

/// Limits applied to every script run.
#[derive(Clone, Copy, Debug)]
pub struct ScriptLimits {
    pub max_operations: u64,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 100_000,
        }
    }
}

/// Builds the sandboxed Rhai engine with auditwatch's helpers registered.
pub fn build_engine(limits: ScriptLimits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(1 << 20)
        .set_max_array_size(100_000)
        .set_max_map_size(100_000)
        .set_strict_variables(true)
        .disable_symbol("eval");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});

    // Safe navigation by default: reading a property of a missing value yields `()`, so
    // `event.requestObject.spec.hostNetwork` is `()` on a Metadata-level event instead of an
    // error. (Rhai falls back to the indexer for unknown properties.)
    engine.register_indexer_get(|_: &mut (), _: ImmutableString| Dynamic::UNIT);
    engine.register_indexer_get(|_: &mut (), _: i64| Dynamic::UNIT);

    let globs = GlobCache::default();
    let cache = globs.clone();
    engine.register_fn(
        "glob",
        move |text: &str, pattern: &str| -> Result<bool, Box<rhai::EvalAltResult>> {
            cache.matches(text, pattern).map_err(|e| e.into())
        },
    );
    let cache = globs.clone();
    engine.register_fn(
        "glob",
        move |text: &str, patterns: Array| -> Result<bool, Box<rhai::EvalAltResult>> {
            for p in &patterns {
                if let Some(p) = p.read_lock::<ImmutableString>()
                    && cache.matches(text, &p)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        },
    );
    engine.register_fn("glob", |_: (), _: Dynamic| false);

    let cache: Arc<Mutex<HashMap<String, regex::Regex>>> = Arc::default();
    engine.register_fn(
        "regex",
        move |text: &str, pattern: &str| -> Result<bool, Box<rhai::EvalAltResult>> {
            regex_match(&cache, text, pattern).map_err(|e| e.into())
        },
    );
    engine.register_fn("regex", |_: (), _: &str| false);

    engine.register_fn("cidr", |ip: &str, net: &str| cidr_match(ip, net));
    engine.register_fn("cidr", |ip: &str, nets: Array| {
        nets.iter().any(|n| {
            n.read_lock::<ImmutableString>()
                .is_some_and(|n| cidr_match(ip, &n))
        })
    });
    engine.register_fn("cidr", |ips: Array, net: Dynamic| {
        ips.iter().any(|ip| {
            ip.read_lock::<ImmutableString>().is_some_and(|ip| {
                if let Some(n) = net.read_lock::<ImmutableString>() {
                    cidr_match(&ip, &n)
                } else if let Some(ns) = net.read_lock::<Array>() {
                    ns.iter().any(|n| {
                        n.read_lock::<ImmutableString>()
                            .is_some_and(|n| cidr_match(&ip, &n))
                    })
                } else {
                    false
                }
            })
        })
    });
    engine.register_fn("cidr", |_: (), _: Dynamic| false);

    engine.register_fn("has", |value: Dynamic, path: &str| {
        !walk(&value, path).is_unit()
    });
    // Not `get`: Rhai's built-in `map.get(key)` would win over it for maps.
    engine.register_fn("get_path", |value: Dynamic, path: &str| walk(&value, path));
    engine.register_fn(
        "get_path",
        |value: Dynamic, path: &str, default: Dynamic| {
            let found = walk(&value, path);
            if found.is_unit() { default } else { found }
        },
    );
    engine.register_fn("object_get", |event: Dynamic, path: &str| {
        object_get(&event, path)
    });
    engine.register_fn("json_pointer", |value: Dynamic, pointer: &str| {
        json_pointer(&value, pointer)
    });
    engine.register_fn("any_in", |items: Dynamic, set: Array| any_in(&items, &set));
    engine.register_fn("all_in", |items: Dynamic, set: Array| all_in(&items, &set));
    engine.register_fn("starts_with_any", |text: &str, prefixes: Array| {
        prefixes.iter().any(|p| {
            p.read_lock::<ImmutableString>()
                .is_some_and(|p| text.starts_with(p.as_str()))
        })
    });
    engine.register_fn("starts_with_any", |_: (), _: Array| false);
    // By reference, so `event.requestObject.containers()` does not copy the object first.
    engine.register_fn("pod_spec", |obj: &mut Dynamic| pod_spec(obj));
    engine.register_fn("containers", |obj: &mut Dynamic| containers(obj));
    engine.register_fn("pod_spec_get", |obj: &mut Dynamic, field: &str| {
        pod_spec_get(obj, field)
    });
    engine.register_fn("is_public_ip", |ip: &str| {
        ip.parse::<IpAddr>().is_ok_and(is_globally_routable)
    });
    engine.register_fn("is_public_ip", |_: ()| false);
    // URL query strings (exec and attach put the command there: `?command=sh&command=-c`).
    engine.register_fn("url_decode", |text: &str| url_decode(text));
    engine.register_fn("url_decode", |_: ()| Dynamic::from(ImmutableString::new()));
    engine.register_fn("query_values", |uri: &str, name: &str| {
        query_values(uri, name)
    });
    engine.register_fn("query_values", |_: (), _: &str| Array::new());
    engine.register_fn("is_empty", |_: ()| true);
    engine.register_fn("len", |_: ()| 0_i64);
    engine
}

/// Compiled glob patterns, shared by the `glob` helpers of one engine (patterns in rules are
/// few and fixed; compiling one per call would dominate a rule's cost). A pattern that does not
/// compile is an error of the script, counted like any other, not a silent `false`.
#[derive(Clone, Default)]
struct GlobCache(Arc<Mutex<HashMap<String, globset::GlobMatcher>>>);

impl GlobCache {
    fn matches(&self, text: &str, pattern: &str) -> Result<bool, String> {
        let Ok(mut cache) = self.0.lock() else {
            return Err("glob cache poisoned".into());
        };
        if let Some(m) = cache.get(pattern) {
            return Ok(m.is_match(text));
        }
        let m = compile_glob(pattern)?;
        if cache.len() > 4096 {
            cache.clear();
        }
        let hit = m.is_match(text);
        cache.insert(pattern.to_owned(), m);
        Ok(hit)
    }
}

/// A glob for the `glob` helper, within the limits rule files have.
pub fn compile_glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    let wildcards = pattern
        .chars()
        .filter(|c| matches!(c, '*' | '?' | '[' | '{'))
        .count();
    if pattern.len() > super::pattern::MAX_PATTERN_BYTES
        || wildcards > super::pattern::MAX_WILDCARDS
    {
        return Err(format!(
            "glob of {} bytes and {wildcards} wildcards; at most {} and {}",
            pattern.len(),
            super::pattern::MAX_PATTERN_BYTES,
            super::pattern::MAX_WILDCARDS
        ));
    }
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid glob {pattern:?}: {}", e.kind()))
}

/// A regular expression for the `regex` helper, within the limits rule files have.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > super::pattern::MAX_PATTERN_BYTES {
        return Err(format!(
            "regular expression of {} bytes; at most {}",
            pattern.len(),
            super::pattern::MAX_PATTERN_BYTES
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // regex's syntax errors draw the pattern over several lines; keep the reason.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or_default().trim();
            let why = why.strip_prefix("error: ").unwrap_or(why);
            format!("invalid regular expression {pattern:?}: {why}")
        })
}

fn regex_match(
    cache: &Mutex<HashMap<String, regex::Regex>>,
    text: &str,
    pattern: &str,
) -> Result<bool, String> {
    let Ok(mut cache) = cache.lock() else {
        return Err("regex cache poisoned".into());
    };
    if let Some(re) = cache.get(pattern) {
        return Ok(re.is_match(text));
    }
    let re = compile_regex(pattern)?;
    if cache.len() > 1024 {
        cache.clear();
    }
    let hit = re.is_match(text);
    cache.insert(pattern.to_owned(), re);
    Ok(hit)
}

/// The `regex` and `glob` calls of a compiled condition whose pattern is a literal, checked
/// now: `(line, column, message)` for each that does not compile. A pattern known when rules
/// load fails when they load, not silently at every event.
pub fn literal_pattern_errors(ast: &AST) -> Vec<(usize, usize, String)> {
    use rhai::{ASTNode, Expr};
    let mut errors = Vec::new();
    let mut check = |expr: &Expr, helper: &str| {
        let mut owned: Vec<(ImmutableString, rhai::Position)> = Vec::new();
        let mut literals: Vec<(&ImmutableString, rhai::Position)> = Vec::new();
        match expr {
            Expr::StringConstant(s, pos) => literals.push((s, *pos)),
            Expr::Array(items, _) => {
                for item in items.iter() {
                    if let Expr::StringConstant(s, pos) = item {
                        literals.push((s, *pos));
                    }
                }
            }
            // A literal array of strings, folded into a constant when compiled.
            Expr::DynamicConstant(value, pos) => {
                if let Some(items) = value.read_lock::<Array>() {
                    for item in items.iter() {
                        if let Some(s) = item.read_lock::<ImmutableString>() {
                            owned.push((s.clone(), *pos));
                        }
                    }
                }
            }
            _ => {}
        }
        literals.extend(owned.iter().map(|(s, p)| (s, *p)));
        for (text, pos) in literals {
            let result = if helper == "regex" {
                compile_regex(text).map(drop)
            } else {
                compile_glob(text).map(drop)
            };
            if let Err(e) = result {
                errors.push((
                    pos.line().unwrap_or(1),
                    pos.position().unwrap_or(1),
                    format!("{helper}(): {e}"),
                ));
            }
        }
    };
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            // regex(text, "pattern"), glob(text, "pattern" or [...])
            Some(ASTNode::Expr(Expr::FnCall(call, _)))
                if matches!(call.name.as_str(), "regex" | "glob") && call.args.len() == 2 =>
            {
                check(&call.args[1], call.name.as_str());
            }
            // text.regex("pattern")
            Some(ASTNode::Expr(Expr::MethodCall(call, _)))
                if matches!(call.name.as_str(), "regex" | "glob") && call.args.len() == 1 =>
            {
                check(&call.args[0], call.name.as_str());
            }
            _ => {}
        }
        true
    });
    errors
}

/// Whether an address is globally routable: outside every special-purpose block of the IANA
/// registries (private, loopback, link-local, shared 100.64/10, documentation, benchmarking,
/// multicast, reserved, unique-local, ...). The test behind "from a public IP" rules.
pub fn is_globally_routable(ip: IpAddr) -> bool {
    const SPECIAL_V4: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ];
    const SPECIAL_V6: &[&str] = &[
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];
    static SPECIAL: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
        SPECIAL_V4
            .iter()
            .chain(SPECIAL_V6)
            .map(|b| b.parse().expect("static CIDR"))
            .collect()
    });
    !SPECIAL.iter().any(|net| net.contains(&ip))
}

/// Percent-decodes `text` (`+` stays a plus: this is for paths and whole URIs).
fn url_decode(text: &str) -> Dynamic {
    // Percent-decoding only: `+`, `&` and `=` stay as they are (a form parser would split the
    // text at `&` and `=` and turn `+` into a space).
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    Dynamic::from(ImmutableString::from(decoded.as_ref()))
}

/// The decoded values of query parameter `name` in a request URI, in order.
fn query_values(uri: &str, name: &str) -> Array {
    let Some((_, query)) = uri.split_once('?') else {
        return Array::new();
    };
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| Dynamic::from(ImmutableString::from(v.into_owned())))
        .collect()
}

fn cidr_match(ip: &str, net: &str) -> bool {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return false;
    };
    if let Ok(n) = net.parse::<IpNet>() {
        return n.contains(&addr);
    }
    net.parse::<IpAddr>().is_ok_and(|n| n == addr)
}

/// Walks a dotted path (`spec.containers.0.image`) through maps and arrays. Navigates by
/// reference and clones only the value found (subtrees can be large).
fn walk(value: &Dynamic, path: &str) -> Dynamic {
    let segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    walk_segments(value, &segs, false)
}

fn walk_segments(value: &Dynamic, segs: &[&str], pointer: bool) -> Dynamic {
    let Some((first, rest)) = segs.split_first() else {
        return value.clone();
    };
    let unescaped;
    let key = if pointer {
        unescaped = first.replace("~1", "/").replace("~0", "~");
        unescaped.as_str()
    } else {
        first
    };
    if let Some(map) = value.read_lock::<Map>() {
        return map
            .get(key)
            .map_or(Dynamic::UNIT, |v| walk_segments(v, rest, pointer));
    }
    if let Some(arr) = value.read_lock::<Array>() {
        return key
            .parse::<usize>()
            .ok()
            .and_then(|i| arr.get(i))
            .map_or(Dynamic::UNIT, |v| walk_segments(v, rest, pointer));
    }
    Dynamic::UNIT
}

/// A field of the object as written: `responseObject` when the audit level recorded it (it is
/// the resulting object, even for a patch), else `requestObject`. Copies only the field.
fn object_get(event: &Dynamic, path: &str) -> Dynamic {
    let mut segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let has_response = event
        .read_lock::<Map>()
        .is_some_and(|m| m.get("responseObject").is_some_and(|o| o.is_map()));
    segs.insert(
        0,
        if has_response {
            "responseObject"
        } else {
            "requestObject"
        },
    );
    walk_segments(event, &segs, false)
}

/// RFC 6901 JSON pointer (`/metadata/annotations/a~1b`).
fn json_pointer(value: &Dynamic, pointer: &str) -> Dynamic {
    if pointer.is_empty() {
        return value.clone();
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Dynamic::UNIT;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    walk_segments(value, &segs, true)
}

/// Where the pod spec sits in `obj` (see [`super::fields::pod_spec_location`]).
fn pod_spec_path(obj: &Dynamic) -> Option<&'static [&'static str]> {
    let map = obj.read_lock::<Map>()?;
    let kind = map
        .get("kind")
        .and_then(|k| k.read_lock::<ImmutableString>().map(|s| s.clone()));
    Some(super::fields::pod_spec_location(
        kind.as_deref(),
        map.contains_key("containers"),
    ))
}

/// The pod spec inside `obj` (see [`pod_spec_path`]); `()` when there is none.
fn pod_spec(obj: &Dynamic) -> Dynamic {
    match pod_spec_path(obj) {
        Some(path) => walk_segments(obj, path, false),
        None => Dynamic::UNIT,
    }
}

/// One field of the pod spec inside `obj`, without copying the rest of the spec.
fn pod_spec_get(obj: &Dynamic, field: &str) -> Dynamic {
    let Some(path) = pod_spec_path(obj) else {
        return Dynamic::UNIT;
    };
    let mut segs: Vec<&str> = path.to_vec();
    segs.extend(field.split('.').filter(|s| !s.is_empty()));
    walk_segments(obj, &segs, false)
}

/// Every container of the pod spec inside `obj`: containers, initContainers and
/// ephemeralContainers.
fn containers(obj: &Dynamic) -> Array {
    let mut out = Array::new();
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        if let Ok(list) = pod_spec_get(obj, field).into_array() {
            out.extend(list);
        }
    }
    out
}

fn as_strings(v: &Dynamic) -> Vec<String> {
    if let Some(arr) = v.read_lock::<Array>() {
        arr.iter().map(|d| d.to_string()).collect()
    } else if v.is_unit() {
        Vec::new()
    } else {
        vec![v.to_string()]
    }
}

fn any_in(items: &Dynamic, set: &Array) -> bool {
    let set: Vec<String> = set.iter().map(|d| d.to_string()).collect();
    as_strings(items).iter().any(|i| set.contains(i))
}

fn all_in(items: &Dynamic, set: &Array) -> bool {
    let set: Vec<String> = set.iter().map(|d| d.to_string()).collect();
    as_strings(items).iter().all(|i| set.contains(i))
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    pub ast: AST,
    /// Which raw object parts the script reads; the others are not converted for it.
    pub needs: ObjectNeeds,
}

/// The parts of the event a script may read: the top-level keys it names, and the expensive
/// raw parts. The `event` value is built with those only (building all of it cost more than
/// a short condition does), once per event and shared by every condition run on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectNeeds {
    pub request_object: bool,
    pub response_object: bool,
    /// The small raw parts: `annotations`, `responseStatus.details`, the users' `extra`.
    pub raw_parts: bool,
    /// The top-level keys read, as bits over [`EVENT_KEYS`].
    pub fields: u32,
}

/// The top-level keys of the `event` value scripts see.
pub const EVENT_KEYS: [&str; 21] = [
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "impersonatedUser",
    "effectiveUser",
    "sourceIP",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "annotations",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "timestamp",
];

/// Every top-level key.
pub const ALL_EVENT_KEYS: u32 = (1 << EVENT_KEYS.len()) - 1;

fn key_bit(name: &str) -> u32 {
    EVENT_KEYS
        .iter()
        .position(|k| *k == name)
        .map_or(0, |i| 1 << i)
}

impl ObjectNeeds {
    /// Decides from the script's text. Every `event` must be followed by a property
    /// (`event.verb`, `event?.requestObject`); anything else (passing `event` whole to a
    /// function, storing it, indexing it, calling a method on it) counts as reading
    /// everything. Over-reading is only slower; under-reading cannot happen, because the
    /// script has no other way to reach the event.
    pub fn of_script(source: &str) -> ObjectNeeds {
        static USE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"\bevent\b(?:\s*\??\.\s*([A-Za-z_][A-Za-z0-9_]*)(\s*\()?)?")
                .expect("static regex")
        });
        let mut fields = 0;
        let mut whole = false;
        for found in USE.captures_iter(source) {
            match (found.get(1), found.get(2)) {
                (Some(key), None) => fields |= key_bit(key.as_str()),
                _ => whole = true,
            }
        }
        let raw_parts = whole
            || ["annotations", "details", "extra"]
                .iter()
                .any(|part| source.contains(part));
        ObjectNeeds {
            request_object: whole || source.contains("requestObject"),
            response_object: whole || source.contains("responseObject"),
            raw_parts,
            fields: if whole { ALL_EVENT_KEYS } else { fields },
        }
    }

    fn covers(&self, needs: &ObjectNeeds) -> bool {
        needs.request_object <= self.request_object
            && needs.response_object <= self.response_object
            && needs.raw_parts <= self.raw_parts
            && needs.fields & !self.fields == 0
    }
}

/// The scope every condition is compiled against: `event` and `lists`.
///
/// They are declared as plain variables, not constants: Rhai's optimizer folds constants from
/// the compile-time scope into the AST, which would bake this placeholder event into the rule.
pub fn compile_scope(lists: &Dynamic) -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push_dynamic("event", Dynamic::from_map(Map::new()));
    scope.push_dynamic("lists", lists.clone());
    scope
}

/// Converts the named lists into the shared `lists` map scripts read.
pub fn lists_dynamic(lists: &std::collections::BTreeMap<String, Vec<String>>) -> Dynamic {
    let mut map = Map::new();
    for (name, items) in lists {
        let arr: Array = items.iter().map(|s| Dynamic::from(s.clone())).collect();
        map.insert(name.as_str().into(), Dynamic::from_array(arr));
    }
    Dynamic::from_map(map).into_shared()
}

fn s(v: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(v))
}

/// A raw JSON part as a Rhai value: straight from the text, or, for a part nested deeper
/// than serde_json allows, with the deep subtrees cut (`cut` is set; see
/// [`crate::event::nested`]).
fn raw(v: Option<RawJson<'_>>, cut: &std::cell::Cell<bool>) -> Dynamic {
    let Some(r) = v else {
        return Dynamic::UNIT;
    };
    match serde_json::from_str::<Dynamic>(r.get()) {
        Ok(d) => d,
        Err(e) if crate::event::nested::is_too_deep(&e) => {
            crate::event::nested::parse(r.get(), cut)
                .ok()
                .and_then(|v| rhai::serde::to_dynamic(v).ok())
                .unwrap_or(Dynamic::UNIT)
        }
        Err(_) => Dynamic::UNIT,
    }
}

/// A large object for scripts. Plain (not shared) maps and arrays: Rhai's data-size checks
/// do not support shared values nested inside data.
fn raw_object(v: Option<RawJson<'_>>, cut: &std::cell::Cell<bool>) -> Dynamic {
    raw(v, cut)
}

/// Adds the parts `needs` asks for and `event` (from [`event_dynamic`]) lacks. `cut` is set
/// when a part was nested too deep and had subtrees cut.
pub fn add_objects(
    event: &Dynamic,
    ev: &AuditEvent<'_>,
    needs: ObjectNeeds,
    has: &mut ObjectNeeds,
    cut: &std::cell::Cell<bool>,
) {
    if has.covers(&needs) {
        return;
    }
    // `event` is shared: a clone is a second handle on the same map.
    let mut handle = event.clone();
    let Some(mut map) = handle.write_lock::<Map>() else {
        return;
    };
    let before = *has;
    let raw_parts = needs.raw_parts || before.raw_parts;
    let missing = needs.fields & !before.fields;
    for (i, key) in EVENT_KEYS.iter().enumerate() {
        if missing & (1 << i) != 0 {
            map.insert((*key).into(), event_key(ev, key, raw_parts, cut));
        }
    }
    *has = ObjectNeeds {
        request_object: needs.request_object || before.request_object,
        response_object: needs.response_object || before.response_object,
        raw_parts,
        fields: before.fields | missing,
    };
    // An object is parsed once: when it is wanted and its key is there, unless it was both
    // wanted and there before this call.
    let parse_now = |key: &str, wanted: bool, wanted_before: bool| {
        wanted
            && has.fields & key_bit(key) != 0
            && !(wanted_before && before.fields & key_bit(key) != 0)
    };
    if parse_now("requestObject", has.request_object, before.request_object) {
        map.insert("requestObject".into(), raw_object(ev.request_object, cut));
    }
    if parse_now(
        "responseObject",
        has.response_object,
        before.response_object,
    ) {
        map.insert("responseObject".into(), raw_object(ev.response_object, cut));
    }
    if raw_parts && !before.raw_parts {
        // The keys added above carry their raw parts already; the older ones get them now.
        for key in [
            "user",
            "impersonatedUser",
            "effectiveUser",
            "responseStatus",
            "annotations",
        ] {
            if before.fields & key_bit(key) != 0 {
                map.insert(key.into(), event_key(ev, key, true, cut));
            }
        }
    }
}

/// One top-level key of the `event` value. The raw objects start as `()`: [`add_objects`]
/// parses them for the scripts that read them; `raw_parts` fills in `annotations`,
/// `responseStatus.details` and the users' `extra` (empty otherwise).
fn event_key(
    ev: &AuditEvent<'_>,
    key: &str,
    raw_parts: bool,
    cut: &std::cell::Cell<bool>,
) -> Dynamic {
    let user = |u: Option<&UserInfo<'_>>| user_map(u, raw_parts, cut);
    match key {
        "kind" => s(ev.kind.as_deref().unwrap_or("Event")),
        "apiVersion" => s(ev.api_version.as_deref().unwrap_or("")),
        "level" => s(ev.level.as_str()),
        "auditID" => s(&ev.audit_id),
        "stage" => s(ev.stage.as_str()),
        "requestURI" => s(&ev.request_uri),
        "verb" => s(&ev.verb),
        "user" => user(Some(&ev.user)),
        "impersonatedUser" => user(ev.impersonated_user.as_ref()),
        "effectiveUser" => user(Some(ev.effective_user())),
        "sourceIP" => s(ev.source_ips.first().map_or("", |t| t.as_str())),
        "sourceIPs" => Dynamic::from_array(ev.source_ips.iter().map(|ip| s(ip)).collect()),
        "userAgent" => s(&ev.user_agent),
        "objectRef" => {
            let r = ev.object_ref();
            let mut oref = Map::new();
            for (k, v) in [
                ("resource", &r.resource),
                ("namespace", &r.namespace),
                ("name", &r.name),
                ("uid", &r.uid),
                ("apiGroup", &r.api_group),
                ("apiVersion", &r.api_version),
                ("resourceVersion", &r.resource_version),
                ("subresource", &r.subresource),
            ] {
                oref.insert(k.into(), s(v));
            }
            Dynamic::from_map(oref)
        }
        "responseStatus" => {
            let st = ev.response_status.as_ref();
            let mut status = Map::new();
            status.insert(
                "code".into(),
                Dynamic::from_int(i64::from(st.map_or(0, |s| s.code))),
            );
            status.insert("status".into(), s(st.map_or("", |s| &s.status)));
            status.insert("reason".into(), s(st.map_or("", |s| &s.reason)));
            status.insert("message".into(), s(st.map_or("", |s| &s.message)));
            let details = if raw_parts {
                raw(st.and_then(|s| s.details), cut)
            } else {
                Dynamic::UNIT
            };
            status.insert("details".into(), details);
            Dynamic::from_map(status)
        }
        "annotations" if raw_parts => raw_map(ev.annotations, cut),
        "annotations" => Dynamic::from_map(Map::new()),
        "requestReceivedTimestamp" => s(ev.request_received_timestamp.as_deref().unwrap_or("")),
        "stageTimestamp" => s(ev.stage_timestamp.as_deref().unwrap_or("")),
        "timestamp" => s(ev.timestamp.as_deref().unwrap_or("")),
        // requestObject, responseObject: parsed on demand.
        _ => Dynamic::UNIT,
    }
}

/// A raw JSON object for scripts; an empty map when absent.
fn raw_map(v: Option<RawJson<'_>>, cut: &std::cell::Cell<bool>) -> Dynamic {
    let value = raw(v, cut);
    if value.is_unit() {
        Dynamic::from_map(Map::new())
    } else {
        value
    }
}

fn user_map(u: Option<&UserInfo<'_>>, raw_parts: bool, cut: &std::cell::Cell<bool>) -> Dynamic {
    let mut m = Map::new();
    m.insert("username".into(), s(u.map_or("", |u| &u.username)));
    m.insert("uid".into(), s(u.map_or("", |u| &u.uid)));
    let groups: Array = u
        .map(|u| u.groups.iter().map(|g| s(g)).collect())
        .unwrap_or_default();
    m.insert("groups".into(), Dynamic::from_array(groups));
    let extra = if raw_parts {
        raw_map(u.and_then(|u| u.extra), cut)
    } else {
        Dynamic::from_map(Map::new())
    };
    m.insert("extra".into(), extra);
    Dynamic::from_map(m)
}

/// The event as the `event` variable, with the top-level keys in `fields` (bits over
/// [`EVENT_KEYS`]; every key present, empty when absent in the event), including
/// `effectiveUser` and `sourceIP` (the first source address). The parts kept as raw JSON
/// (`requestObject`, `responseObject`, `annotations`, `responseStatus.details`, the users'
/// `extra`) start empty; [`add_objects`] parses them in for the scripts that read them.
pub fn event_dynamic(ev: &AuditEvent<'_>, fields: u32) -> Dynamic {
    let cut = std::cell::Cell::new(false);
    let mut m = Map::new();
    for (i, key) in EVENT_KEYS.iter().enumerate() {
        if fields & (1 << i) != 0 {
            m.insert((*key).into(), event_key(ev, key, false, &cut));
        }
    }
    Dynamic::from_map(m).into_shared()
}

/// Why a condition did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionError {
    /// The script failed (a type error, a limit of Rhai's, a panic inside Rhai).
    Script(String),
    /// It ran past `engine.condition_timeout` and was stopped.
    TimedOut(std::time::Duration),
}

impl std::fmt::Display for ConditionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionError::Script(e) => f.write_str(e),
            ConditionError::TimedOut(limit) => write!(
                f,
                "stopped after running past its time budget of {limit:?} (engine.condition_timeout)"
            ),
        }
    }
}

/// When the running condition must stop (nanoseconds after `base`, plus one; 0: no limit).
struct Deadline {
    base: std::time::Instant,
    at: std::sync::atomic::AtomicU64,
}

/// How often (in Rhai operations) the clock is read: one `Instant::now()` per 128 operations
/// costs well under 1% of a script's time, and bounds the overrun to 128 operations.
const CLOCK_EVERY: u64 = 128;

/// Runs conditions for one engine: owns the Rhai engine they run on (with a clock that stops
/// a run past its time budget) and the scope they see (`event`, `lists`, then the script's own
/// variables, dropped after each run).
///
/// Rhai counts operations, not time, and one operation can cost microseconds (building a map,
/// copying a large array): 100,000 of them took 5 s per event. So each run also has a wall
/// clock budget, checked from Rhai's progress callback.
pub struct ConditionRunner {
    engine: Engine,
    scope: Scope<'static>,
    deadline: Arc<Deadline>,
    timeout: std::time::Duration,
    /// The current event as `event`, built at the first condition that runs on it.
    event: Option<Dynamic>,
    /// The event's raw parts already added to `event`.
    has: ObjectNeeds,
    /// An object of the current event was nested too deep and cut.
    cut: std::cell::Cell<bool>,
}

/// Scope entries that outlive a run: `event` and `lists`.
const BASE_SCOPE: usize = 2;

impl ConditionRunner {
    /// A runner for the conditions of `rules`; a run stops after `timeout`.
    pub fn new(rules: &super::RuleSet, timeout: std::time::Duration) -> ConditionRunner {
        ConditionRunner::with(rules.script_limits(), rules.lists_value().clone(), timeout)
    }

    /// A runner with these limits and `lists` value.
    pub fn with(
        limits: ScriptLimits,
        lists: Dynamic,
        timeout: std::time::Duration,
    ) -> ConditionRunner {
        let mut engine = build_engine(limits);
        let deadline = Arc::new(Deadline {
            base: std::time::Instant::now(),
            at: std::sync::atomic::AtomicU64::new(0),
        });
        let clock = Arc::clone(&deadline);
        engine.on_progress(move |ops| {
            if ops % CLOCK_EVERY != 0 {
                return None;
            }
            let at = clock.at.load(std::sync::atomic::Ordering::Relaxed);
            let now = clock.base.elapsed().as_nanos() as u64 + 1;
            (at != 0 && now > at).then(|| Dynamic::from("timeout"))
        });
        let mut scope = Scope::new();
        scope.push_dynamic("event", Dynamic::UNIT);
        scope.push_dynamic("lists", lists);
        ConditionRunner {
            engine,
            scope,
            deadline,
            timeout,
            event: None,
            has: ObjectNeeds::default(),
            cut: std::cell::Cell::new(false),
        }
    }

    /// A new event: the next run converts it (once, for every condition that runs on it).
    pub fn begin_event(&mut self) {
        self.event = None;
        self.has = ObjectNeeds::default();
        self.cut.set(false);
    }

    /// Whether an object of the current event had parts nested too deep to read (cut).
    pub fn objects_cut(&self) -> bool {
        self.cut.get()
    }

    /// Runs `cond` on `ev` (the event of the last [`ConditionRunner::begin_event`]): the event
    /// is converted for Rhai at the first run, and the raw parts the condition reads are added
    /// when first needed. A panic inside Rhai (it has internal `unreachable!`s) becomes an
    /// error for this event instead of taking the engine down.
    pub fn run(&mut self, cond: &Condition, ev: &AuditEvent<'_>) -> Result<bool, ConditionError> {
        let value = match &self.event {
            Some(v) => v.clone(),
            None => {
                let v = event_dynamic(ev, 0);
                self.scope.set_value("event", v.clone());
                self.event = Some(v.clone());
                v
            }
        };
        add_objects(&value, ev, cond.needs, &mut self.has, &self.cut);
        let start = self.deadline.base.elapsed() + self.timeout;
        self.deadline.at.store(
            u64::try_from(start.as_nanos()).unwrap_or(u64::MAX - 1) + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        let (engine, scope) = (&self.engine, &mut self.scope);
        let run = std::panic::AssertUnwindSafe(|| {
            engine.eval_ast_with_scope::<Dynamic>(scope, &cond.ast)
        });
        let outcome = std::panic::catch_unwind(run);
        self.deadline
            .at
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.scope.rewind(BASE_SCOPE);
        let result: Dynamic = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if matches!(*e, rhai::EvalAltResult::ErrorTerminated(..)) => {
                return Err(ConditionError::TimedOut(self.timeout));
            }
            Ok(Err(e)) => return Err(ConditionError::Script(e.to_string())),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown".into());
                return Err(ConditionError::Script(format!(
                    "script engine panicked: {what}"
                )));
            }
        };
        result.as_bool().map_err(|got| {
            ConditionError::Script(format!("condition must evaluate to a bool, got {got}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;
    use std::collections::BTreeMap;

    fn run(script: &str, event: &str) -> Result<bool, String> {
        run_within(script, event, std::time::Duration::from_secs(60)).map_err(|e| e.to_string())
    }

    fn run_within(
        script: &str,
        event: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, ConditionError> {
        let engine = build_engine(ScriptLimits::default());
        let mut lists = BTreeMap::new();
        lists.insert("admins".to_string(), vec!["alice".to_string()]);
        let lists = lists_dynamic(&lists);
        let scope = compile_scope(&lists);
        let ast = engine
            .compile_with_scope(&scope, script)
            .map_err(|e| ConditionError::Script(e.to_string()))?;
        let ev = decode_event(event).unwrap();
        let needs = ObjectNeeds::of_script(script);
        let mut runner = ConditionRunner::with(ScriptLimits::default(), lists, timeout);
        runner.begin_event();
        runner.run(&Condition { ast, needs }, &ev)
    }

    const EV: &str = r#"{"auditID":"1","verb":"create","user":{"username":"alice","groups":["dev"]},"sourceIPs":["10.1.1.1"],"objectRef":{"resource":"pods","namespace":"prod"},"responseStatus":{"code":201},"requestObject":{"spec":{"hostNetwork":true,"containers":[{"image":"nginx","securityContext":{"privileged":true}}]},"metadata":{"annotations":{"a/b":"x"}}}}"#;
    const META: &str = r#"{"auditID":"2","verb":"get","user":{"username":"bob"}}"#;

    #[test]
    fn conditions_see_the_event_and_lists() {
        assert_eq!(run("event.user.username in lists.admins", EV), Ok(true));
        assert_eq!(run("event.responseStatus.code < 400", EV), Ok(true));
        assert_eq!(
            run("event.effectiveUser.username == \"alice\"", EV),
            Ok(true)
        );
        assert_eq!(
            run("event.requestObject.spec.hostNetwork == true", EV),
            Ok(true)
        );
    }

    #[test]
    fn missing_fields_are_unit_not_errors() {
        assert_eq!(
            run("event.requestObject.spec.hostNetwork == true", META),
            Ok(false)
        );
        assert_eq!(
            run(
                "event.requestObject.spec.containers[0].image == \"x\"",
                META
            ),
            Ok(false)
        );
        assert_eq!(run("event.objectRef.namespace == \"\"", META), Ok(true));
        assert_eq!(run("event.responseStatus.code == 0", META), Ok(true));
        assert_eq!(
            run("event.impersonatedUser.username == \"\"", META),
            Ok(true)
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(run("glob(event.user.username, \"al*\")", EV), Ok(true));
        assert_eq!(
            run(
                r#"query_values("/api/v1/pods/p/exec?command=cat&stdin=true&command=%2Fvar%2Frun+x", "command") == ["cat", "/var/run x"]"#,
                EV
            ),
            Ok(true)
        );
        assert_eq!(
            run(r#"query_values("/healthz", "command") == []"#, EV),
            Ok(true)
        );
        for (ip, public) in [
            ("8.8.8.8", true),
            ("54.212.83.236", true),
            ("2a00:1450::1", true),
            ("10.0.27.115", false),
            ("100.64.1.1", false),
            ("203.0.113.42", false),
            ("fd00::1", false),
            ("not-an-ip", false),
        ] {
            assert_eq!(
                run(&format!("is_public_ip(\"{ip}\")"), EV),
                Ok(public),
                "{ip}"
            );
        }
        assert_eq!(
            run(r#"url_decode("a%2Fb+c%20d") == "a/b+c d""#, EV),
            Ok(true)
        );
        assert_eq!(
            run("regex(event.objectRef.namespace, \"^pr(od|e)$\")", EV),
            Ok(true)
        );
        assert_eq!(run("event.sourceIP == \"10.1.1.1\"", EV), Ok(true));
        assert_eq!(run("type_of(event.sourceIP) == \"string\"", EV), Ok(true));
        assert_eq!(run("cidr(event.sourceIP, \"10.0.0.0/8\")", EV), Ok(true));
        assert_eq!(
            run("cidr(event.sourceIPs, [\"192.168.0.0/16\"])", EV),
            Ok(false)
        );
        assert_eq!(
            run("has(event, \"requestObject.spec.hostNetwork\")", EV),
            Ok(true)
        );
        assert_eq!(
            run("has(event, \"requestObject.spec.hostPID\")", EV),
            Ok(false)
        );
        assert_eq!(
            run(
                "get_path(event.requestObject, \"spec.containers.0.image\") == \"nginx\"",
                EV
            ),
            Ok(true)
        );
        assert_eq!(
            run("get_path(event, \"requestObject.x\", 5) == 5", META),
            Ok(true)
        );
        assert_eq!(
            run(
                "json_pointer(event.requestObject, \"/metadata/annotations/a~1b\") == \"x\"",
                EV
            ),
            Ok(true)
        );
        assert_eq!(
            run("any_in(event.user.groups, [\"dev\", \"ops\"])", EV),
            Ok(true)
        );
        assert_eq!(
            run("object_get(event, \"spec.hostNetwork\") == true", EV),
            Ok(true)
        );
        assert_eq!(run("object_get(event, \"spec.nope\") == ()", EV), Ok(true));
        assert_eq!(
            run(
                "event.requestObject.spec.containers.some(|c| c.securityContext?.privileged == true)",
                EV
            ),
            Ok(true)
        );
    }

    #[test]
    fn object_needs_follow_the_script() {
        let n = ObjectNeeds::of_script("event.requestObject.spec != ()");
        assert_eq!((n.request_object, n.response_object), (true, false));
        let n = ObjectNeeds::of_script("has(event, \"x\")");
        assert_eq!((n.request_object, n.response_object), (true, true));
        let n = ObjectNeeds::of_script("event.verb == \"get\"");
        assert_eq!(
            n,
            ObjectNeeds {
                fields: key_bit("verb"),
                ..ObjectNeeds::default()
            }
        );
        // Without the need, the objects are not there.
        assert_eq!(
            run(
                "event.verb == \"create\" && type_of(event.responseObject) == \"()\"",
                EV
            ),
            Ok(true)
        );
    }

    #[test]
    fn the_event_value_holds_the_keys_scripts_name() {
        let n = ObjectNeeds::of_script("event.verb == \"get\" && event?.user.username != \"\"");
        assert_eq!(n.fields, key_bit("verb") | key_bit("user"));
        // Anything but a property read of `event` reads it all.
        for whole in [
            "event.keys().len() > 0",
            "has(event, \"x\")",
            "let e = event; e.verb == \"x\"",
        ] {
            assert_eq!(
                ObjectNeeds::of_script(whole).fields,
                ALL_EVENT_KEYS,
                "{whole}"
            );
        }
        // Keys are added as later conditions of the same event need them; the raw parts a
        // later script wants reach the keys an earlier one built.
        let ev = r#"{"auditID":"9","verb":"get","user":{"username":"sa","extra":{"scope":["a"]}},"objectRef":{"resource":"pods"}}"#;
        let decoded = decode_event(ev).unwrap();
        let value = event_dynamic(&decoded, 0);
        let (mut has, cut) = (ObjectNeeds::default(), std::cell::Cell::new(false));
        add_objects(
            &value,
            &decoded,
            ObjectNeeds::of_script("event.user.username"),
            &mut has,
            &cut,
        );
        assert_eq!(value.read_lock::<Map>().unwrap().len(), 1);
        add_objects(
            &value,
            &decoded,
            ObjectNeeds::of_script("event.objectRef.resource == event.user.extra.scope[0]"),
            &mut has,
            &cut,
        );
        let map = value.read_lock::<Map>().unwrap();
        assert_eq!(map.len(), 2);
        let user = map["user"].read_lock::<Map>().unwrap();
        assert_eq!(user["extra"].read_lock::<Map>().unwrap().len(), 1);
    }

    #[test]
    fn raw_parts_are_parsed_for_the_scripts_that_read_them() {
        let ev = r#"{"auditID":"4","verb":"get","user":{"username":"sa","extra":{"scope":["a"]}},"impersonatedUser":{"username":"bob","extra":{"k":["v"]}},"responseStatus":{"code":403,"details":{"kind":"secrets"}},"annotations":{"authorization.k8s.io/decision":"forbid"}}"#;
        assert_eq!(
            run(
                r#"event.annotations["authorization.k8s.io/decision"] == "forbid""#,
                ev
            ),
            Ok(true)
        );
        assert_eq!(
            run(r#"event.responseStatus.details.kind == "secrets""#, ev),
            Ok(true)
        );
        assert_eq!(run(r#"event.user.extra.scope[0] == "a""#, ev), Ok(true));
        assert_eq!(
            run(r#"event.effectiveUser.extra.k[0] == "v""#, ev),
            Ok(true)
        );
        // A script that names none of them sees them empty (they are not parsed for it).
        let n = ObjectNeeds::of_script("event.verb == \"get\"");
        assert!(!n.raw_parts);
        assert_eq!(
            run(
                "event.annotations.len() == 0 && event.verb == \"get\"",
                META
            ),
            Ok(true)
        );
        // The event value is shared by the rules of one event: parts are added on demand.
        let decoded = decode_event(ev).unwrap();
        let value = event_dynamic(&decoded, 0);
        let mut has = ObjectNeeds::default();
        let cut = std::cell::Cell::new(false);
        add_objects(&value, &decoded, ObjectNeeds::default(), &mut has, &cut);
        assert!(!has.raw_parts);
        add_objects(
            &value,
            &decoded,
            ObjectNeeds::of_script("event.annotations"),
            &mut has,
            &cut,
        );
        assert!(has.raw_parts);
        let map = value.read_lock::<Map>().unwrap();
        let ann = map["annotations"].read_lock::<Map>().unwrap();
        assert_eq!(ann.len(), 1);
    }

    /// Issue 16.6: a condition that builds 20k nested maps cost 5 s per event under the
    /// operation cap. The wall clock stops it.
    #[test]
    fn a_condition_is_stopped_at_its_time_budget() {
        let costly = "let m = #{}; for i in 0..100000 { m = #{ inner: m, i: i }; } m.len() > 0";
        let started = std::time::Instant::now();
        let r = run_within(costly, META, std::time::Duration::from_millis(20));
        assert_eq!(
            r,
            Err(ConditionError::TimedOut(std::time::Duration::from_millis(
                20
            )))
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // The same runner goes on with the next condition.
        assert_eq!(run("event.verb == \"get\"", META), Ok(true));
    }

    /// A value nested past serde_json's limit in the object: the script still sees the rest.
    #[test]
    fn too_deep_objects_are_cut_not_lost() {
        let deep = format!(
            r#"{{"auditID":"d","verb":"create","requestObject":{{"spec":{{"hostPID":true,"x":{}1{}}}}}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        assert_eq!(
            run("event.requestObject.spec.hostPID == true", &deep),
            Ok(true)
        );
    }

    /// Issue 17: `url_decode("a%20b&c=d")` returned `"a bd"`: it went through a form parser.
    #[test]
    fn url_decode_only_percent_decodes() {
        let decoded = |t: &str| url_decode(t).into_string().unwrap();
        assert_eq!(decoded("a%20b&c=d"), "a b&c=d");
        assert_eq!(decoded("/api/v1/pods?x=1+2"), "/api/v1/pods?x=1+2");
        assert_eq!(decoded("%2Fetc%2Fpasswd"), "/etc/passwd");
        assert_eq!(decoded("100%"), "100%");
    }

    #[test]
    fn pod_helpers_find_specs_in_workloads() {
        let deploy = r#"{"auditID":"3","verb":"create","requestObject":{"kind":"Deployment","spec":{"template":{"spec":{"hostPID":true,"initContainers":[{"image":"busybox"}],"containers":[{"image":"app"}]}}}}}"#;
        assert_eq!(
            run("pod_spec(event.requestObject).hostPID == true", deploy),
            Ok(true)
        );
        assert_eq!(
            run("containers(event.requestObject).len() == 2", deploy),
            Ok(true)
        );
        assert_eq!(
            run("containers(event.requestObject).len() == 1", EV),
            Ok(true)
        );
        assert_eq!(
            run("containers(event.requestObject).len() == 0", META),
            Ok(true)
        );
        assert_eq!(
            run(
                "event.requestObject.pod_spec_get(\"hostPID\") == true",
                deploy
            ),
            Ok(true)
        );
        assert_eq!(
            run(
                "event.requestObject.pod_spec_get(\"hostNetwork\") == true",
                EV
            ),
            Ok(true)
        );
    }

    #[test]
    fn sandbox_limits_and_errors() {
        let err = run("let x = 0; loop { x += 1; }", EV).unwrap_err();
        assert!(err.contains("Too many operations"), "{err}");
        let err = run("eval(\"1\")", EV).unwrap_err();
        assert!(!err.is_empty());
        let err = run("event.verb", EV).unwrap_err();
        assert!(err.contains("must evaluate to a bool"), "{err}");
        let err = run("evnt.verb == \"x\"", EV).unwrap_err();
        assert!(err.contains("evnt"), "{err}");
    }
}
