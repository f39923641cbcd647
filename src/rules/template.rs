//! Alert summaries: minijinja templates over the event's fields and the alert's own.
//!
//! A template is checked when rules load (syntax, and every variable must be an event field or
//! an alert field). The event values it needs are captured when the event matches, so a
//! windowed alert that fires later does not keep whole events alive.

use std::sync::Arc;

use minijinja::Environment;
use serde_json::{Map, Value};

use crate::event::AuditEvent;
use crate::event::field::FieldPath;

/// Alert fields a template may use besides event fields.
pub const ALERT_VARS: &[&str] = &[
    "rule",
    "severity",
    "count",
    "group",
    "first_seen",
    "last_seen",
    "labels",
    "description",
    "suppressed",
    "kind",
];

const EVENT_OBJECTS: &[&str] = &[
    "user",
    "impersonatedUser",
    "effectiveUser",
    "objectRef",
    "responseStatus",
];

/// A variable the template reads from the event.
#[derive(Debug, Clone)]
enum EventVar {
    Path(FieldPath),
    Object(&'static str),
}

/// A compiled summary template.
#[derive(Debug, Clone)]
pub struct Summary {
    pub(crate) name: String,
    vars: Vec<(Arc<str>, EventVar)>,
    /// The alert fields the template reads (from [`ALERT_VARS`]); only these are built.
    alert_vars: Vec<&'static str>,
}

/// Event values captured for a later render.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Captured(Vec<(Arc<str>, Value)>);

impl Summary {
    /// Compiles `source` into `env` under `name`. The error is minijinja's, with a line.
    pub fn compile(
        env: &mut Environment<'static>,
        name: &str,
        source: &str,
    ) -> Result<Summary, (usize, String)> {
        env.add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| (e.line().unwrap_or(1), template_error_text(&e)))?;
        let template = env
            .get_template(name)
            .map_err(|e| (1, template_error_text(&e)))?;
        let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        names.sort();
        let mut vars = Vec::new();
        let mut alert_vars = Vec::new();
        for var in names {
            let root = var.split('.').next().unwrap_or_default();
            if let Some(v) = ALERT_VARS.iter().find(|v| **v == root) {
                // Only `group` and `labels` are maps; an attribute of a string or number would
                // fail at every render.
                if let Some(attr) = var.strip_prefix(root).and_then(|r| r.strip_prefix('.'))
                    && !matches!(root, "group" | "labels")
                {
                    return Err((
                        1,
                        format!(
                            "{root:?} is a single value, it has no attribute {attr:?} (only group and labels are maps)"
                        ),
                    ));
                }
                if !alert_vars.contains(v) {
                    alert_vars.push(*v);
                }
                continue;
            }
            if let Some(obj) = EVENT_OBJECTS.iter().find(|o| **o == var) {
                vars.push((Arc::from(var.as_str()), EventVar::Object(obj)));
                continue;
            }
            match FieldPath::parse(&var) {
                Ok(path) => vars.push((Arc::from(var.as_str()), EventVar::Path(path))),
                Err(why) => {
                    return Err((
                        1,
                        format!(
                            "unknown template variable {var:?}: {why}; alert fields are {}",
                            ALERT_VARS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Summary {
            name: name.to_owned(),
            vars,
            alert_vars,
        })
    }

    /// Whether the template reads the alert field `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.alert_vars.contains(&name)
    }

    /// Takes the values this template reads from `ev`.
    pub fn capture(&self, ev: &AuditEvent<'_>) -> Captured {
        Captured(
            self.vars
                .iter()
                .map(|(name, var)| {
                    let value = match var {
                        // Missing renders as nothing, not as minijinja's "none".
                        EventVar::Path(p) => match p.resolve(ev) {
                            crate::event::field::FieldValue::Missing => Value::from(""),
                            v => v.to_json(),
                        },
                        EventVar::Object(o) => object_json(ev, o),
                    };
                    (name.clone(), value)
                })
                .collect(),
        )
    }

    /// Renders with the captured event values plus the alert fields in `alert`.
    pub fn render(
        &self,
        env: &Environment<'static>,
        captured: &Captured,
        alert: Map<String, Value>,
    ) -> String {
        let mut root = Value::Object(alert);
        for (name, value) in &captured.0 {
            insert_path(&mut root, name, value.clone());
        }
        match env.get_template(&self.name) {
            Ok(t) => t
                .render(minijinja::Value::from(minijinja::value::Serde(&root)))
                .unwrap_or_else(|e| {
                    format!("<summary template failed: {}>", template_error_text(&e))
                }),
            Err(e) => format!("<summary template missing: {e}>"),
        }
    }
}

fn template_error_text(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn insert_path(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = cur else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        cur = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn object_json(ev: &AuditEvent<'_>, name: &str) -> Value {
    let user = |u: Option<&crate::event::UserInfo<'_>>| {
        serde_json::json!({
            "username": u.map_or("", |u| u.username.as_str()),
            "uid": u.map_or("", |u| u.uid.as_str()),
            "groups": u.map(|u| u.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
        })
    };
    match name {
        "user" => user(Some(&ev.user)),
        "impersonatedUser" => user(ev.impersonated_user.as_ref()),
        "effectiveUser" => user(Some(ev.effective_user())),
        "objectRef" => {
            let r = ev.object_ref();
            serde_json::json!({
                "resource": r.resource, "namespace": r.namespace, "name": r.name, "uid": r.uid,
                "apiGroup": r.api_group, "apiVersion": r.api_version,
                "resourceVersion": r.resource_version, "subresource": r.subresource,
            })
        }
        "responseStatus" => {
            let s = ev.response_status.as_ref();
            serde_json::json!({
                "code": s.map_or(0, |s| s.code),
                "status": s.map_or("", |s| s.status.as_str()),
                "reason": s.map_or("", |s| s.reason.as_str()),
                "message": s.map_or("", |s| s.message.as_str()),
            })
        }
        _ => Value::Null,
    }
}

/// The summary used when a rule has none: who did what to which object, and the outcome.
pub fn default_summary(ev: &AuditEvent<'_>) -> String {
    let r = ev.object_ref();
    let mut object = r.resource.to_string();
    if !r.subresource.is_empty() {
        object.push('/');
        object.push_str(&r.subresource);
    }
    let target = match (r.namespace.is_empty(), r.name.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!(" {}", r.name),
        (false, true) => format!(" in {}", r.namespace),
        (false, false) => format!(" {}/{}", r.namespace, r.name),
    };
    if object.is_empty() {
        object = ev.request_uri.to_string();
    }
    format!(
        "{} {} {}{} ({})",
        display_user(ev),
        ev.verb,
        object,
        target,
        ev.response_code()
    )
}

fn display_user(ev: &AuditEvent<'_>) -> String {
    let u = ev.user.username.as_str();
    let u = if u.is_empty() { "<anonymous>" } else { u };
    match &ev.impersonated_user {
        Some(imp) if !imp.username.is_empty() => format!("{u} (as {})", imp.username),
        _ => u.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    #[test]
    fn renders_event_and_alert_fields() {
        let mut env = Environment::new();
        let s = Summary::compile(
            &mut env,
            "r",
            "{{ user.username }} {{ verb }} {{ objectRef.namespace }}/{{ objectRef.name }} x{{ count }}",
        )
        .unwrap();
        let ev = decode_event(
            r#"{"auditID":"1","verb":"patch","user":{"username":"eve"},"objectRef":{"namespace":"web","name":"shop"}}"#,
        )
        .unwrap();
        let cap = s.capture(&ev);
        let mut alert = Map::new();
        alert.insert("count".into(), Value::from(3));
        assert_eq!(s.render(&env, &cap, alert), "eve patch web/shop x3");
    }

    #[test]
    fn rejects_unknown_variables_and_bad_syntax() {
        let mut env = Environment::new();
        let (_, err) = Summary::compile(&mut env, "a", "{{ usr.name }}").unwrap_err();
        assert!(
            err.starts_with("unknown template variable \"usr.name\""),
            "{err}"
        );
        let (_, err) = Summary::compile(&mut env, "c", "{{ rule.labels.team }}").unwrap_err();
        assert!(err.contains("\"rule\" is a single value"), "{err}");
        assert!(Summary::compile(&mut env, "d", "{{ labels.team }} {{ group[\"x\"] }}").is_ok());
        let (line, err) = Summary::compile(&mut env, "b", "ok\n{{ verb ").unwrap_err();
        assert_eq!(line, 2);
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn default_summary_names_actor_and_object() {
        let ev = decode_event(
            r#"{"auditID":"1","verb":"create","user":{"username":"system:admin"},"impersonatedUser":{"username":"bob"},"objectRef":{"resource":"pods","subresource":"exec","namespace":"ns","name":"p"},"responseStatus":{"code":101}}"#,
        )
        .unwrap();
        assert_eq!(
            default_summary(&ev),
            "system:admin (as bob) create pods/exec ns/p (101)"
        );
    }
}
