//! Native Sigma rules (`logsource: {product: kubernetes, service: audit}`), loaded from the
//! same rule paths as auditwatch's own files and compiled into the same match blocks, so they
//! share the engine, one-request-one-match, throttling and alerting.
//!
//! Supported: selections as maps (AND of fields) or lists of maps (OR), value lists (OR),
//! `null` (the field is absent), the modifiers `contains`, `startswith`, `endswith`, `re`,
//! `cidr`, `all`, `exists`, and conditions with `and`, `or`, `not`, parentheses, `1 of` /
//! `all of` a selection pattern or `them`. Strings compare case-insensitively with Sigma's
//! `*`/`?` wildcards. Field names are dotted paths into the audit event, looked up verbatim
//! (as the SigmaHQ rules are written); a field the event model does not have never matches.
//! Correlation rules of type `event_count` and `value_count` (with `gte`/`gt`) become count and
//! distinct-count windows over the rules they name; `temporal` and `temporal_ordered` become
//! sequence windows whose steps are those rules. Not supported (a load error says so):
//! correlations of correlations, field name `aliases`, upper bounds, keyword (field-less)
//! detections, other logsources.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde_yaml::Value;

use super::fields::{Accepted, FieldCriterion, Quantifier, ValuePath};
use super::{Matcher, Origin, Patterns, Rule, RuleId, Severity, SigmaMatch};

/// Whether a YAML document is a Sigma rule rather than an auditwatch rule file.
pub fn is_sigma(doc: &Value) -> bool {
    doc.get("detection").is_some() || doc.get("correlation").is_some()
}

/// A problem in a Sigma rule: the dotted key path it is about, and why.
pub type SigmaError = (String, String);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compiles one Sigma rule document. `name` is the rule's name (its `name:` or the file's).
pub fn compile(doc: &Value, name: &str, file: &Arc<str>) -> Result<Rule, SigmaError> {
    let err = |key: &str, msg: String| (key.to_owned(), msg);
    let logsource = doc.get("logsource").cloned().unwrap_or(Value::Null);
    let product = logsource
        .get("product")
        .and_then(Value::as_str)
        .unwrap_or("");
    let service = logsource
        .get("service")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !product.eq_ignore_ascii_case("kubernetes") || !service.eq_ignore_ascii_case("audit") {
        return Err(err(
            "logsource",
            format!(
                "logsource product {product:?}, service {service:?}: auditwatch reads Sigma rules for product: kubernetes, service: audit"
            ),
        ));
    }
    let title = doc
        .get("title")
        .and_then(Value::as_str)
        .ok_or_else(|| err("title", "a Sigma rule needs a title".into()))?;
    let detection = doc
        .get("detection")
        .and_then(Value::as_mapping)
        .ok_or_else(|| err("detection", "detection must be a map".into()))?;
    let mut selections: BTreeMap<String, Matcher> = BTreeMap::new();
    let mut condition: Option<Vec<String>> = None;
    for (key, value) in detection {
        let key = key
            .as_str()
            .ok_or_else(|| err("detection", "selection names must be strings".into()))?;
        if key == "condition" {
            condition = Some(match value {
                Value::String(c) => vec![c.clone()],
                Value::Sequence(list) => list.iter().filter_map(text).collect(),
                _ => return Err(err("detection.condition", "must be a string".into())),
            });
            continue;
        }
        if key == "timeframe" {
            return Err(err(
                "detection.timeframe",
                "timeframe belongs to correlation rules, which are not supported yet".into(),
            ));
        }
        let m = selection(value).map_err(|m| err(&format!("detection.{key}"), m))?;
        selections.insert(key.to_owned(), m);
    }
    let condition = condition.ok_or_else(|| err("detection", "no condition".into()))?;
    let mut alternatives = Vec::new();
    for c in &condition {
        let tokens = tokenize(c);
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
            selections: &selections,
        };
        let m = p
            .or()
            .and_then(|m| {
                if p.at == tokens.len() {
                    Ok(m)
                } else {
                    Err(format!("unexpected {:?}", tokens[p.at]))
                }
            })
            .map_err(|m| err("detection.condition", format!("{c:?}: {m}")))?;
        alternatives.push(m);
    }
    let matcher = if alternatives.len() == 1 {
        alternatives.remove(0)
    } else {
        or(alternatives)
    };
    let mut rule = metadata(doc, name, file, title);
    rule.matcher = matcher;
    Ok(rule)
}

/// A rule with a Sigma document's name, level, description, author, labels, tags and
/// references, matching everything until the caller sets its matcher.
fn metadata(doc: &Value, name: &str, file: &Arc<str>, title: &str) -> Rule {
    let severity = match doc.get("level").and_then(Value::as_str).unwrap_or("medium") {
        "informational" => Severity::Info,
        "low" => Severity::Low,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => Severity::Medium,
    };
    let strings = |key: &str| -> Vec<String> {
        match doc.get(key) {
            Some(Value::Sequence(items)) => items.iter().filter_map(text).collect(),
            Some(v) => text(v).into_iter().collect(),
            None => Vec::new(),
        }
    };
    let mut labels = BTreeMap::new();
    labels.insert("source".to_owned(), "sigma".to_owned());
    if let Some(id) = doc.get("id").and_then(text) {
        labels.insert("sigma_id".to_owned(), id);
    }
    if let Some(status) = doc.get("status").and_then(text) {
        labels.insert("sigma_status".to_owned(), status);
    }
    let description = match doc.get("description").and_then(Value::as_str) {
        Some(d) => format!("{title}: {}", d.trim()),
        None => title.to_owned(),
    };
    let mut legacy = DefaultHasher::new();
    format!("{doc:?}").hash(&mut legacy);
    Rule {
        name: Arc::from(name),
        description: Some(Arc::from(description.as_str())),
        severity,
        severity_when: Vec::new(),
        enabled: true,
        matcher: Matcher::default(),
        condition: None,
        summary: None,
        labels: Arc::new(labels),
        notify: None,
        group_by: Vec::new(),
        window: None,
        steps: Vec::new(),
        throttle: None,
        // DRL 1.1: matches of a Sigma rule must credit its author.
        author: doc
            .get("author")
            .and_then(text)
            .map(|a| Arc::from(a.as_str())),
        tags: strings("tags"),
        references: strings("references"),
        origin: Origin {
            file: Arc::clone(file),
            line: 0,
            column: 0,
        },
        id: RuleId::of_yaml(doc),
        legacy_fingerprint: legacy.finish(),
    }
}

/// Compiles a Sigma correlation rule onto auditwatch's windows: `event_count` becomes a count
/// window, `value_count` a distinct-count window, `temporal`/`temporal_ordered` a sequence
/// window (one step per rule), over the events of the rules it names (by
/// `name` or `id`), grouped by its `group-by` fields. Returns the rule and the names of the
/// rules it consumes (which, unless `generate: true`, no longer alert on their own).
pub fn compile_correlation(
    doc: &Value,
    name: &str,
    file: &Arc<str>,
    base: &[Rule],
) -> Result<(Rule, Vec<Arc<str>>, bool), SigmaError> {
    let err = |key: &str, msg: String| (key.to_owned(), msg);
    let c = doc
        .get("correlation")
        .ok_or_else(|| err("correlation", "missing".into()))?;
    let title = doc
        .get("title")
        .and_then(Value::as_str)
        .ok_or_else(|| err("title", "a Sigma rule needs a title".into()))?;
    let kind = c.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(
        kind,
        "event_count" | "value_count" | "temporal" | "temporal_ordered"
    ) {
        return Err(err(
            "correlation.type",
            format!(
                "correlation type {kind:?} is not supported (event_count, value_count, temporal and temporal_ordered are)"
            ),
        ));
    }
    if c.get("aliases").is_some() {
        return Err(err(
            "correlation.aliases",
            "field name aliases are not supported: group-by fields are read from every referenced rule's events as they are".into(),
        ));
    }
    let names: Vec<String> = match c.get("rules") {
        Some(Value::Sequence(items)) => items.iter().filter_map(text).collect(),
        Some(v) => text(v).into_iter().collect(),
        None => Vec::new(),
    };
    if names.is_empty() {
        return Err(err(
            "correlation.rules",
            "name the rules to correlate".into(),
        ));
    }
    let mut matchers = Vec::new();
    let mut consumed = Vec::new();
    for n in &names {
        let found = base
            .iter()
            .find(|r| &*r.name == n || r.labels.get("sigma_id") == Some(n))
            .ok_or_else(|| {
                err(
                    "correlation.rules",
                    format!(
                        "no Sigma detection rule named or with id {n:?} is loaded (a correlation cannot name another correlation)"
                    ),
                )
            })?;
        matchers.push(found.matcher.clone());
        consumed.push(Arc::clone(&found.name));
    }
    let over = c
        .get("timespan")
        .and_then(text)
        .ok_or_else(|| {
            err(
                "correlation.timespan",
                "a correlation needs a timespan".into(),
            )
        })
        .and_then(|t| crate::event::Span::parse(&t).map_err(|e| err("correlation.timespan", e)))?;
    let group_by = match c.get("group-by") {
        Some(Value::Sequence(items)) => items.iter().filter_map(text).collect(),
        Some(v) => text(v).into_iter().collect(),
        None => Vec::new(),
    }
    .iter()
    .map(|f| {
        crate::event::field::FieldPath::parse(f)
            .map_err(|e| err("correlation.group-by", format!("{f}: {e}")))
    })
    .collect::<Result<Vec<_>, _>>()?;
    let temporal = kind.starts_with("temporal");
    let threshold = match c.get("condition") {
        // temporal: "the count of different event types", all of them unless a condition says.
        None if temporal => names.len() as u64,
        None => return Err(err("correlation.condition", "missing".into())),
        Some(cond) => threshold(cond)?,
    };
    let window = match kind {
        "value_count" => {
            let field = c
                .get("condition")
                .and_then(|cond| cond.get("field"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(
                        "correlation.condition.field",
                        "value_count needs condition.field".into(),
                    )
                })?;
            let field = crate::event::field::FieldPath::parse(field)
                .map_err(|e| err("correlation.condition.field", e))?;
            super::WindowSpec::Distinct {
                over,
                threshold,
                field,
            }
        }
        "event_count" => super::WindowSpec::Count { over, threshold },
        _ => {
            let n = names.len() as u64;
            if n > super::MAX_SEQUENCE_STEPS {
                return Err(err(
                    "correlation.rules",
                    format!(
                        "a temporal correlation names at most {} rules",
                        super::MAX_SEQUENCE_STEPS
                    ),
                ));
            }
            let ordered = kind == "temporal_ordered";
            if threshold > n || (ordered && threshold != n) {
                return Err(err(
                    "correlation.condition",
                    if ordered {
                        format!(
                            "temporal_ordered fires when all {n} rules matched in order: leave the condition out or use gte: {n}"
                        )
                    } else {
                        format!(
                            "the condition counts distinct rules, and this correlation names {n}"
                        )
                    },
                ));
            }
            super::WindowSpec::Sequence {
                over,
                steps: consumed.clone(),
                threshold,
                ordered,
            }
        }
    };
    let mut rule = metadata(doc, name, file, title);
    if temporal {
        rule.steps = matchers.clone();
    }
    rule.matcher = if matchers.len() == 1 {
        matchers.remove(0)
    } else {
        or(matchers)
    };
    rule.window = Some(window);
    rule.group_by = group_by;
    let generate = c.get("generate").and_then(Value::as_bool).unwrap_or(false);
    Ok((rule, consumed, generate))
}

/// The firing threshold of a correlation condition: a lower bound (`gte`/`gt`).
fn threshold(cond: &Value) -> Result<u64, SigmaError> {
    let err = |msg: &str| ("correlation.condition".to_owned(), msg.to_owned());
    if ["lt", "lte", "eq", "neq"]
        .iter()
        .any(|k| cond.get(*k).is_some())
    {
        return Err(err(
            "upper bounds and equality are not supported; use gte or gt",
        ));
    }
    let bound = |k: &str| cond.get(k).and_then(Value::as_u64);
    match (bound("gte"), bound("gt")) {
        (Some(n), None) => Ok(n.max(1)),
        (None, Some(n)) => Ok(n + 1),
        _ => Err(err(
            "only a lower bound (gte or gt) is supported: auditwatch fires when a group reaches it",
        )),
    }
}

/// A matcher that never matches / always matches.
fn never() -> Matcher {
    Matcher {
        except: vec![Matcher::default()],
        ..Matcher::default()
    }
}

fn or(items: Vec<Matcher>) -> Matcher {
    Matcher {
        any: items,
        ..Matcher::default()
    }
}

fn not(m: Matcher) -> Matcher {
    Matcher {
        except: vec![m],
        ..Matcher::default()
    }
}

/// All of `items`: nothing of them fails.
fn and(items: Vec<Matcher>) -> Matcher {
    Matcher {
        except: items.into_iter().map(not).collect(),
        ..Matcher::default()
    }
}

/// A selection: a map (every field holds) or a list of maps (any of them).
fn selection(v: &Value) -> Result<Matcher, String> {
    match v {
        Value::Mapping(map) => {
            let mut parts = Vec::new();
            for (k, values) in map {
                let key = k.as_str().ok_or("field names must be strings")?;
                parts.push(field(key, values)?);
            }
            Ok(and(parts))
        }
        Value::Sequence(items) if items.iter().all(Value::is_mapping) => {
            items.iter().map(selection).collect::<Result<_, _>>().map(or)
        }
        Value::Sequence(_) | Value::String(_) => Err(
            "keyword (field-less) detections are not supported: audit events are structured, name the field".into(),
        ),
        _ => Err("a selection is a map of fields or a list of maps".into()),
    }
}

/// One `field|modifier...: value(s)` item.
fn field(key: &str, values: &Value) -> Result<Matcher, String> {
    let mut parts = key.split('|');
    let name = parts.next().unwrap_or_default();
    let mut how = SigmaMatch::Equals;
    let mut all = false;
    let mut exists = false;
    for m in parts {
        how = match m {
            "contains" => SigmaMatch::Contains,
            "startswith" => SigmaMatch::StartsWith,
            "endswith" => SigmaMatch::EndsWith,
            "re" => SigmaMatch::Regex,
            "cidr" => SigmaMatch::Cidr,
            "all" => {
                all = true;
                how
            }
            "exists" => {
                exists = true;
                how
            }
            other => return Err(format!("{key}: modifier {other:?} is not supported")),
        };
    }
    let list: Vec<&Value> = match values {
        Value::Sequence(items) => items.iter().collect(),
        v => vec![v],
    };
    // Field names the event model does not have never match (SigmaHQ rules that name them
    // are dead as written; see docs/rules.md).
    let Ok(path) = ValuePath::parse(name) else {
        let any_null = list.iter().any(|v| v.is_null());
        return Ok(
            if any_null || (exists && list.first().and_then(|v| v.as_bool()) == Some(false)) {
                Matcher::default()
            } else {
                never()
            },
        );
    };
    if exists {
        let want = list
            .first()
            .and_then(|v| v.as_bool())
            .ok_or(format!("{key}: exists takes true or false"))?;
        return Ok(if want {
            Matcher {
                present: vec![path],
                ..Matcher::default()
            }
        } else {
            Matcher {
                absent: vec![path],
                ..Matcher::default()
            }
        });
    }
    let criterion = |v: &Value| -> Result<FieldCriterion, String> {
        let mut accepted = Accepted::default();
        match v {
            Value::Null => accepted.null = true,
            Value::Bool(b) => {
                accepted.bools.push(*b);
                accepted.strings = Some(Patterns::sigma(&b.to_string(), SigmaMatch::Equals)?);
            }
            Value::Number(n) => {
                if how == SigmaMatch::Equals
                    && let Some(x) = n.as_f64()
                {
                    accepted.numbers.push(x);
                }
                accepted.strings = Some(Patterns::sigma(&n.to_string(), how)?);
            }
            Value::String(s) => {
                accepted.strings =
                    Some(Patterns::sigma(s, how).map_err(|e| format!("{key}: {e}"))?);
                // A number written as a string still equals the number.
                if how == SigmaMatch::Equals
                    && let Ok(x) = s.parse::<f64>()
                {
                    accepted.numbers.push(x);
                }
            }
            _ => {
                return Err(format!(
                    "{key}: values are strings, numbers, booleans or null"
                ));
            }
        }
        Ok(FieldCriterion {
            path: path.clone(),
            accepted,
            quantifier: Quantifier::Any,
        })
    };
    if all {
        let criteria = list
            .iter()
            .map(|v| criterion(v))
            .collect::<Result<_, _>>()?;
        return Ok(Matcher {
            fields: criteria,
            ..Matcher::default()
        });
    }
    let alternatives: Vec<Matcher> = list
        .iter()
        .map(|v| {
            criterion(v).map(|c| Matcher {
                fields: vec![c],
                ..Matcher::default()
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(if alternatives.len() == 1 {
        alternatives.into_iter().next().unwrap_or_default()
    } else {
        or(alternatives)
    })
}

fn tokenize(condition: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in condition.chars() {
        match c {
            '(' | ')' => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Recursive descent over a condition: `or` < `and` < `not` < atoms.
struct Parser<'a> {
    tokens: &'a [String],
    at: usize,
    selections: &'a BTreeMap<String, Matcher>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Matcher, String> {
        self.chain("or", Self::and, or)
    }

    fn and(&mut self) -> Result<Matcher, String> {
        self.chain("and", Self::not, and)
    }

    /// `operand (op operand)*`, combined when there is more than one operand.
    fn chain(
        &mut self,
        op: &str,
        operand: fn(&mut Self) -> Result<Matcher, String>,
        combine: fn(Vec<Matcher>) -> Matcher,
    ) -> Result<Matcher, String> {
        let mut items = vec![operand(self)?];
        while self.peek() == Some(op) {
            self.at += 1;
            items.push(operand(self)?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            combine(items)
        })
    }

    fn not(&mut self) -> Result<Matcher, String> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(not(self.not()?));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Matcher, String> {
        let token = self.next().ok_or("the condition ends too early")?;
        match token.as_str() {
            "(" => {
                let m = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(m),
                    _ => Err("missing )".into()),
                }
            }
            "1" | "any" | "all" if self.peek() == Some("of") => {
                self.at += 1;
                let target = self
                    .next()
                    .ok_or("`of` needs a selection pattern or `them`")?;
                let chosen: Vec<Matcher> = self
                    .selections
                    .iter()
                    .filter(|(name, _)| {
                        target == "them" && !name.starts_with('_') || glob_match(&target, name)
                    })
                    .map(|(_, m)| m.clone())
                    .collect();
                if chosen.is_empty() {
                    return Err(format!("no selection matches {target:?}"));
                }
                Ok(if token == "all" {
                    and(chosen)
                } else {
                    or(chosen)
                })
            }
            name => self
                .selections
                .get(name)
                .cloned()
                .ok_or_else(|| format!("unknown selection {name:?}")),
        }
    }
}

/// Sigma's selection-name patterns: `*` only.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;
    use crate::rules::fields::{ObjectCache, ObjectPaths};

    fn rule(yaml: &str) -> Result<Rule, SigmaError> {
        let doc: Value = serde_yaml::from_str(yaml).unwrap();
        compile(&doc, "t", &Arc::from("t.yml"))
    }

    fn matches(r: &Rule, event: &str) -> bool {
        let ev = decode_event(event).unwrap();
        let mut paths = ObjectPaths::default();
        r.matcher.collect_object_paths(&mut paths);
        r.matcher.matches(&ev, &ObjectCache::new(&paths))
    }

    const HEAD: &str = "title: T\nauthor: someone\nlevel: high\nlogsource: { product: kubernetes, service: audit }\n";

    #[test]
    fn selections_modifiers_and_conditions() {
        let r = rule(&format!(
            "{HEAD}detection:\n  sel_verb: {{ verb: [create, UPDATE] }}\n  sel_res:\n    objectRef.resource|startswith: pod\n    objectRef.subresource: exec\n  filter:\n    - user.username|endswith: ':admin'\n    - sourceIPs|cidr: 10.0.0.0/8\n  condition: all of sel_* and not filter\n"
        ))
        .unwrap();
        assert_eq!(r.severity, Severity::High);
        assert_eq!(r.author.as_deref(), Some("someone"));
        let ev = |verb: &str, user: &str, ip: &str| {
            format!(
                r#"{{"auditID":"1","verb":"{verb}","user":{{"username":"{user}"}},"sourceIPs":["{ip}"],"objectRef":{{"resource":"pods","subresource":"exec"}}}}"#
            )
        };
        assert!(matches(&r, &ev("create", "bob", "192.0.2.1")));
        assert!(
            matches(&r, &ev("update", "bob", "192.0.2.1")),
            "case-insensitive"
        );
        assert!(!matches(&r, &ev("get", "bob", "192.0.2.1")));
        assert!(!matches(&r, &ev("create", "system:admin", "192.0.2.1")));
        assert!(!matches(&r, &ev("create", "bob", "10.1.2.3")));
    }

    #[test]
    fn numbers_nulls_unknown_fields_and_one_of_them() {
        let r = rule(&format!(
            "{HEAD}detection:\n  a: {{ responseStatus.code: [401, 403] }}\n  b: {{ hostPath: '*' }}\n  condition: 1 of them\n"
        ))
        .unwrap();
        let code =
            |c: u16| format!(r#"{{"auditID":"1","verb":"get","responseStatus":{{"code":{c}}}}}"#);
        assert!(matches(&r, &code(403)));
        assert!(!matches(&r, &code(200)), "an unknown field never matches");
        let r = rule(&format!(
            "{HEAD}detection:\n  s: {{ verb: get, objectRef.name: null }}\n  condition: s\n"
        ))
        .unwrap();
        assert!(matches(
            &r,
            r#"{"auditID":"1","verb":"get","objectRef":{"resource":"pods"}}"#
        ));
        assert!(!matches(
            &r,
            r#"{"auditID":"1","verb":"get","objectRef":{"resource":"pods","name":"x"}}"#
        ));
    }

    #[test]
    fn correlations_become_windows() {
        let base = rule(&format!(
            "{HEAD}id: base-1\ndetection:\n  s: {{ verb: get, objectRef.resource: secrets }}\n  condition: s\n"
        ))
        .unwrap();
        let corr = |body: &str| {
            let doc: Value =
                serde_yaml::from_str(&format!("title: C\ncorrelation:\n{body}")).unwrap();
            compile_correlation(&doc, "c", &Arc::from("c.yml"), std::slice::from_ref(&base))
        };
        let (r, consumed, generate) = corr(
            "  type: value_count\n  rules: base-1\n  group-by: [user.username]\n  timespan: 10m\n  condition: { field: objectRef.name, gt: 9 }\n",
        )
        .unwrap();
        assert!(matches!(
            r.window,
            Some(crate::rules::WindowSpec::Distinct { threshold: 10, .. })
        ));
        assert_eq!(r.group_by.len(), 1);
        assert_eq!((&*consumed[0], generate), ("t", false));
        let (r, _, _) =
            corr("  type: temporal_ordered\n  rules: [base-1, t]\n  timespan: 1m\n").unwrap();
        assert_eq!(
            r.window,
            Some(crate::rules::WindowSpec::Sequence {
                over: crate::event::Span::from_secs(60),
                steps: vec![Arc::from("t"), Arc::from("t")],
                threshold: 2,
                ordered: true,
            })
        );
        assert_eq!(r.steps.len(), 2);
        for (body, key, says) in [
            (
                "  type: temporal\n  rules: [base-1]\n  timespan: 1m\n  condition: { gte: 2 }\n",
                "correlation.condition",
                "names 1",
            ),
            (
                "  type: temporal_ordered\n  rules: [t, t]\n  timespan: 1m\n  condition: { gte: 1 }\n",
                "correlation.condition",
                "all 2 rules",
            ),
            (
                "  type: temporal\n  rules: [t]\n  timespan: 1m\n  aliases: { ip: { t: sourceIPs } }\n",
                "correlation.aliases",
                "not supported",
            ),
            (
                "  type: value_sum\n  rules: [t]\n  timespan: 1m\n  condition: { gte: 1 }\n",
                "correlation.type",
                "temporal_ordered are",
            ),
        ] {
            let e = corr(body).unwrap_err();
            assert_eq!(e.0, key, "{body}");
            assert!(e.1.contains(says), "{e:?}");
        }
        let e =
            corr("  type: event_count\n  rules: [nope]\n  timespan: 1m\n  condition: { gte: 2 }\n")
                .unwrap_err();
        assert!(e.1.contains("\"nope\""), "{e:?}");
        let e = corr(
            "  type: event_count\n  rules: [base-1]\n  timespan: 1m\n  condition: { lte: 2 }\n",
        )
        .unwrap_err();
        assert_eq!(e.0, "correlation.condition");
    }

    #[test]
    fn unsupported_parts_are_errors_with_their_key() {
        let e = rule(
            "title: T\nlogsource: { product: windows }\ndetection: { s: { a: b }, condition: s }\n",
        )
        .unwrap_err();
        assert_eq!(e.0, "logsource");
        let e = rule(&format!("{HEAD}detection:\n  k: [evil]\n  condition: k\n")).unwrap_err();
        assert_eq!(e.0, "detection.k");
        let e = rule(&format!(
            "{HEAD}detection:\n  s: {{ verb|base64: x }}\n  condition: s\n"
        ))
        .unwrap_err();
        assert!(e.1.contains("modifier \"base64\""), "{e:?}");
        let e = rule(&format!(
            "{HEAD}detection:\n  s: {{ verb: x }}\n  condition: s and t\n"
        ))
        .unwrap_err();
        assert!(e.1.contains("unknown selection \"t\""), "{e:?}");
    }
}
