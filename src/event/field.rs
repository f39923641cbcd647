//! Dotted field paths into an audit event: `user.username`, `objectRef.namespace`,
//! `effectiveUser.username`, `requestObject.spec.containers[0].image`,
//! `annotations["authorization.k8s.io/decision"]`.
//!
//! Paths are parsed once when rules load; resolving one on an event is a match on an enum for
//! the typed fields and a lazy JSON walk for the raw object parts.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::model::{AuditEvent, RawJson, UserInfo};

/// Which user block a user path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    User,
    Impersonated,
    Effective,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserField {
    Username,
    Uid,
    Groups,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefField {
    Resource,
    Namespace,
    Name,
    Uid,
    ApiGroup,
    ApiVersion,
    ResourceVersion,
    Subresource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusField {
    Code,
    Status,
    Reason,
    Message,
}

/// The raw-JSON parts of an event that a path can walk into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawPart {
    RequestObject,
    ResponseObject,
    Annotations,
    UserExtra,
    StatusDetails,
}

/// One step of a path. `Each` (`[*]` or `.*`) and `Keys` (`@keys`) are wildcards, accepted
/// only in match-block `fields` paths (`crate::rules::fields`); field paths reject them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    Each,
    Keys,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Level,
    AuditId,
    Stage,
    RequestUri,
    Verb,
    UserAgent,
    ApiVersion,
    SourceIps,
    SourceIp(usize),
    User(Who, UserField),
    ObjectRef(RefField),
    Status(StatusField),
    RequestReceivedTimestamp,
    StageTimestamp,
    Raw(RawPart, Vec<Step>),
}

/// A parsed field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    target: Target,
}

/// What a path resolved to.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'e> {
    Missing,
    Str(Cow<'e, str>),
    Int(i64),
    List(Vec<Cow<'e, str>>),
    Json(Value),
}

impl FieldValue<'_> {
    /// The value as one string, as used in group keys and alert groups. Lists join with `,`.
    pub fn to_key_string(&self) -> String {
        match self {
            FieldValue::Missing => String::new(),
            FieldValue::Str(s) => s.to_string(),
            FieldValue::Int(i) => i.to_string(),
            FieldValue::List(items) => items.join(","),
            FieldValue::Json(Value::String(s)) => s.clone(),
            FieldValue::Json(Value::Null) => String::new(),
            FieldValue::Json(v) => v.to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            FieldValue::Missing => Value::Null,
            FieldValue::Str(s) => Value::String(s.to_string()),
            FieldValue::Int(i) => Value::from(*i),
            FieldValue::List(items) => items.iter().map(|s| Value::from(s.as_ref())).collect(),
            FieldValue::Json(v) => v.clone(),
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parses a path; the error says what is accepted.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let steps = split_steps(text)?;
        if steps.iter().any(|s| matches!(s, Step::Each | Step::Keys)) {
            return Err(format!(
                "invalid field path {text:?}: [*] and @keys are only allowed in match `fields` paths"
            ));
        }
        let first = match steps.first() {
            Some(Step::Key(k)) => k.as_str(),
            _ => return Err(format!("unknown field {text:?}")),
        };
        let rest = &steps[1..];
        let key_at = |i: usize| match rest.get(i) {
            Some(Step::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        let simple = |t: Target| {
            if rest.is_empty() {
                Ok(t)
            } else {
                Err(format!("field {first:?} has no sub-fields (in {text:?})"))
            }
        };
        let target = match first {
            "level" => simple(Target::Level)?,
            "auditID" => simple(Target::AuditId)?,
            "stage" => simple(Target::Stage)?,
            "requestURI" => simple(Target::RequestUri)?,
            "verb" => simple(Target::Verb)?,
            "userAgent" => simple(Target::UserAgent)?,
            "apiVersion" => simple(Target::ApiVersion)?,
            "requestReceivedTimestamp" => simple(Target::RequestReceivedTimestamp)?,
            "stageTimestamp" => simple(Target::StageTimestamp)?,
            "sourceIP" => simple(Target::SourceIp(0))?,
            "sourceIPs" => match rest {
                [] => Target::SourceIps,
                [Step::Index(i)] => Target::SourceIp(*i),
                _ => {
                    return Err(format!(
                        "sourceIPs takes an index, e.g. sourceIPs[0] (in {text:?})"
                    ));
                }
            },
            "user" | "impersonatedUser" | "effectiveUser" => {
                let who = match first {
                    "user" => Who::User,
                    "impersonatedUser" => Who::Impersonated,
                    _ => Who::Effective,
                };
                match (key_at(0), rest.len()) {
                    (Some("username"), 1) => Target::User(who, UserField::Username),
                    (Some("uid"), 1) => Target::User(who, UserField::Uid),
                    (Some("groups"), 1) => Target::User(who, UserField::Groups),
                    (Some("extra"), _) if who == Who::User => {
                        Target::Raw(RawPart::UserExtra, rest[1..].to_vec())
                    }
                    _ => {
                        return Err(format!(
                            "unknown field {text:?}: {first} has username, uid, groups{}",
                            if who == Who::User { ", extra" } else { "" }
                        ));
                    }
                }
            }
            "objectRef" => {
                let field = match (key_at(0), rest.len()) {
                    (Some("resource"), 1) => RefField::Resource,
                    (Some("namespace"), 1) => RefField::Namespace,
                    (Some("name"), 1) => RefField::Name,
                    (Some("uid"), 1) => RefField::Uid,
                    (Some("apiGroup"), 1) => RefField::ApiGroup,
                    (Some("apiVersion"), 1) => RefField::ApiVersion,
                    (Some("resourceVersion"), 1) => RefField::ResourceVersion,
                    (Some("subresource"), 1) => RefField::Subresource,
                    _ => {
                        return Err(format!(
                            "unknown field {text:?}: objectRef has resource, namespace, name, uid, apiGroup, apiVersion, resourceVersion, subresource"
                        ));
                    }
                };
                Target::ObjectRef(field)
            }
            "responseStatus" => match (key_at(0), rest.len()) {
                (Some("code"), 1) => Target::Status(StatusField::Code),
                (Some("status"), 1) => Target::Status(StatusField::Status),
                (Some("reason"), 1) => Target::Status(StatusField::Reason),
                (Some("message"), 1) => Target::Status(StatusField::Message),
                (Some("details"), _) => Target::Raw(RawPart::StatusDetails, rest[1..].to_vec()),
                _ => {
                    return Err(format!(
                        "unknown field {text:?}: responseStatus has code, status, reason, message, details"
                    ));
                }
            },
            "requestObject" => Target::Raw(RawPart::RequestObject, rest.to_vec()),
            "responseObject" => Target::Raw(RawPart::ResponseObject, rest.to_vec()),
            "annotations" => {
                // Annotation keys contain dots: `annotations.authorization.k8s.io/decision`
                // means the key "authorization.k8s.io/decision".
                let key = text
                    .strip_prefix("annotations.")
                    .map(|k| k.to_owned())
                    .or_else(|| key_at(0).map(str::to_owned));
                match key {
                    Some(k) if rest.len() == 1 || text.starts_with("annotations.") => {
                        let k = match rest {
                            [Step::Key(bracketed)] if !text.starts_with("annotations.") => {
                                bracketed.clone()
                            }
                            _ => k,
                        };
                        Target::Raw(RawPart::Annotations, vec![Step::Key(k)])
                    }
                    _ => Target::Raw(RawPart::Annotations, rest.to_vec()),
                }
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} in {text:?}; fields are level, auditID, stage, requestURI, verb, user.*, impersonatedUser.*, effectiveUser.*, sourceIPs, userAgent, objectRef.*, responseStatus.*, requestObject.*, responseObject.*, annotations.*, requestReceivedTimestamp, stageTimestamp"
                ));
            }
        };
        Ok(FieldPath {
            text: text.to_owned(),
            target,
        })
    }

    pub fn resolve<'e>(&self, ev: &'e AuditEvent<'_>) -> FieldValue<'e> {
        fn s<'e>(v: &'e str) -> FieldValue<'e> {
            if v.is_empty() {
                FieldValue::Missing
            } else {
                FieldValue::Str(Cow::Borrowed(v))
            }
        }
        fn user_of<'x, 'a>(ev: &'x AuditEvent<'a>, who: Who) -> Option<&'x UserInfo<'a>> {
            match who {
                Who::User => Some(&ev.user),
                Who::Impersonated => ev.impersonated_user.as_ref(),
                Who::Effective => Some(ev.effective_user()),
            }
        }
        match &self.target {
            Target::Level => s(ev.level.as_str()),
            Target::AuditId => s(&ev.audit_id),
            Target::Stage => s(ev.stage.as_str()),
            Target::RequestUri => s(&ev.request_uri),
            Target::Verb => s(&ev.verb),
            Target::UserAgent => s(&ev.user_agent),
            Target::ApiVersion => ev.api_version.as_deref().map_or(FieldValue::Missing, s),
            Target::RequestReceivedTimestamp => ev
                .request_received_timestamp
                .as_deref()
                .map_or(FieldValue::Missing, s),
            Target::StageTimestamp => ev.stage_timestamp.as_deref().map_or(FieldValue::Missing, s),
            Target::SourceIps => FieldValue::List(
                ev.source_ips
                    .iter()
                    .map(|t| Cow::Borrowed(t.as_str()))
                    .collect(),
            ),
            Target::SourceIp(i) => ev.source_ips.get(*i).map_or(FieldValue::Missing, |t| s(t)),
            Target::User(who, field) => match (user_of(ev, *who), field) {
                (None, _) => FieldValue::Missing,
                (Some(u), UserField::Username) => s(&u.username),
                (Some(u), UserField::Uid) => s(&u.uid),
                (Some(u), UserField::Groups) => {
                    FieldValue::List(u.groups.iter().map(|t| Cow::Borrowed(t.as_str())).collect())
                }
            },
            Target::ObjectRef(field) => {
                let r = ev.object_ref();
                s(match field {
                    RefField::Resource => &r.resource,
                    RefField::Namespace => &r.namespace,
                    RefField::Name => &r.name,
                    RefField::Uid => &r.uid,
                    RefField::ApiGroup => &r.api_group,
                    RefField::ApiVersion => &r.api_version,
                    RefField::ResourceVersion => &r.resource_version,
                    RefField::Subresource => &r.subresource,
                })
            }
            Target::Status(field) => match (&ev.response_status, field) {
                (None, _) => FieldValue::Missing,
                (Some(st), StatusField::Code) => FieldValue::Int(i64::from(st.code)),
                (Some(st), StatusField::Status) => s(&st.status),
                (Some(st), StatusField::Reason) => s(&st.reason),
                (Some(st), StatusField::Message) => s(&st.message),
            },
            Target::Raw(part, steps) => {
                let raw = match part {
                    RawPart::RequestObject => ev.request_object,
                    RawPart::ResponseObject => ev.response_object,
                    RawPart::Annotations => ev.annotations,
                    RawPart::UserExtra => ev.user.extra,
                    RawPart::StatusDetails => ev.response_status.as_ref().and_then(|s| s.details),
                };
                walk_raw(raw, steps)
            }
        }
    }
}

fn walk_raw<'e>(raw: Option<RawJson<'_>>, steps: &[Step]) -> FieldValue<'e> {
    let Some(raw) = raw else {
        return FieldValue::Missing;
    };
    let Ok(mut value) = serde_json::from_str::<Value>(raw.get()) else {
        return FieldValue::Missing;
    };
    for step in steps {
        let next = match (step, &mut value) {
            (Step::Key(k), Value::Object(map)) => map.remove(k),
            (Step::Index(i), Value::Array(items)) if *i < items.len() => {
                Some(items.swap_remove(*i))
            }
            // Wildcards never reach here: FieldPath::parse rejects them.
            _ => None,
        };
        match next {
            Some(v) => value = v,
            None => return FieldValue::Missing,
        }
    }
    match value {
        Value::Null => FieldValue::Missing,
        Value::String(s) => FieldValue::Str(Cow::Owned(s)),
        Value::Number(n) if n.is_i64() => FieldValue::Int(n.as_i64().unwrap_or_default()),
        other => FieldValue::Json(other),
    }
}

/// Splits `a.b[0]["c.d"]` (and `a[*].b`, `a.*`, `a.@keys`) into steps: the one path tokenizer
/// for field paths and match-block `fields` paths.
pub fn split_steps(text: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("invalid field path {text:?}: {why}");
    let bytes = text.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    if text.is_empty() {
        return Err(bad("empty"));
    }
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                if i == 0 || i + 1 == bytes.len() || bytes[i + 1] == b'.' {
                    return Err(bad("empty segment"));
                }
                i += 1;
            }
            b'[' => {
                let close = text[i..]
                    .find(']')
                    .map(|c| i + c)
                    .ok_or_else(|| bad("unclosed ["))?;
                let inner = &text[i + 1..close];
                if inner == "*" {
                    steps.push(Step::Each);
                } else if let Some(q) = inner
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                {
                    steps.push(Step::Key(q.to_owned()));
                } else {
                    let idx = inner
                        .parse::<usize>()
                        .map_err(|_| bad("[...] takes *, a number or a quoted key"))?;
                    steps.push(Step::Index(idx));
                }
                i = close + 1;
            }
            _ => {
                let end = text[i..].find(['.', '[']).map_or(bytes.len(), |e| i + e);
                let seg = &text[i..end];
                steps.push(match seg {
                    "*" if !steps.is_empty() => Step::Each,
                    "@keys" if !steps.is_empty() => Step::Keys,
                    _ => match seg.parse::<usize>() {
                        Ok(idx) if !steps.is_empty() => Step::Index(idx),
                        _ => Step::Key(seg.to_owned()),
                    },
                });
                i = end;
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    const POD: &str = r#"{"auditID":"1","verb":"create","user":{"username":"system:admin","groups":["a","b"],"extra":{"scopes":["x"]}},"impersonatedUser":{"username":"bob"},"sourceIPs":["10.0.0.1","::1"],"objectRef":{"resource":"pods","namespace":"ns1"},"responseStatus":{"code":201},"annotations":{"authorization.k8s.io/decision":"allow"},"requestObject":{"spec":{"hostNetwork":true,"containers":[{"image":"nginx"}]},"metadata":{"annotations":{"a.b/c":"d"}}}}"#;

    fn get(path: &str) -> FieldValue<'static> {
        let ev = decode_event(POD).unwrap();
        let v = FieldPath::parse(path).unwrap().resolve(&ev);
        // Detach from the event's lifetime for the assertions below.
        match v {
            FieldValue::Str(s) => FieldValue::Str(Cow::Owned(s.into_owned())),
            FieldValue::List(l) => {
                FieldValue::List(l.into_iter().map(|s| Cow::Owned(s.into_owned())).collect())
            }
            FieldValue::Missing => FieldValue::Missing,
            FieldValue::Int(i) => FieldValue::Int(i),
            FieldValue::Json(j) => FieldValue::Json(j),
        }
    }

    #[test]
    fn resolves_typed_fields() {
        assert_eq!(get("user.username").to_key_string(), "system:admin");
        assert_eq!(get("effectiveUser.username").to_key_string(), "bob");
        assert_eq!(get("user.groups").to_key_string(), "a,b");
        assert_eq!(get("sourceIPs[1]").to_key_string(), "::1");
        assert_eq!(get("sourceIP").to_key_string(), "10.0.0.1");
        assert_eq!(get("responseStatus.code"), FieldValue::Int(201));
        assert_eq!(get("objectRef.name"), FieldValue::Missing);
    }

    #[test]
    fn walks_raw_json() {
        assert_eq!(
            get("requestObject.spec.containers[0].image").to_key_string(),
            "nginx"
        );
        assert_eq!(
            get("requestObject.spec.containers.0.image").to_key_string(),
            "nginx"
        );
        assert_eq!(
            get("requestObject.spec.hostNetwork").to_key_string(),
            "true"
        );
        assert_eq!(
            get(r#"requestObject.metadata.annotations["a.b/c"]"#).to_key_string(),
            "d"
        );
        assert_eq!(
            get("annotations.authorization.k8s.io/decision").to_key_string(),
            "allow"
        );
        assert_eq!(
            get(r#"annotations["authorization.k8s.io/decision"]"#).to_key_string(),
            "allow"
        );
        assert_eq!(get("user.extra.scopes").to_key_string(), r#"["x"]"#);
        assert_eq!(get("requestObject.spec.nope.deeper"), FieldValue::Missing);
    }

    #[test]
    fn unknown_fields_are_rejected_with_the_choices() {
        let err = FieldPath::parse("objectRef.kind").unwrap_err();
        assert!(err.contains("objectRef has resource, namespace"), "{err}");
        let err = FieldPath::parse("usr.name").unwrap_err();
        assert!(err.starts_with("unknown field \"usr\""), "{err}");
        assert!(FieldPath::parse("user..name").is_err());
        assert!(FieldPath::parse("requestObject[x]").is_err());
        let err = FieldPath::parse("requestObject.spec.containers[*].image").unwrap_err();
        assert!(
            err.contains("only allowed in match `fields` paths"),
            "{err}"
        );
        assert_eq!(
            split_steps("a[*].b.*.@keys").unwrap(),
            vec![
                Step::Key("a".into()),
                Step::Each,
                Step::Key("b".into()),
                Step::Each,
                Step::Keys
            ]
        );
    }
}
