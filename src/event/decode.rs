//! Turning one JSON record into audit events, with errors that say where and why.
//!
//! A record is whatever one unit of input holds: a line of the log backend's file, a whole
//! document, or a webhook body. It may be a single `Event`, an `EventList` (the webhook
//! backend's batch; its items usually lack `kind`/`apiVersion`), or a JSON array of either.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use thiserror::Error;

use super::model::AuditEvent;
use super::time::EventTime;

/// Where a record came from, for error messages and alert provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// File name, `<stdin>`, or a source name such as `webhook`.
    pub source: Arc<str>,
    /// 1-based line number of the record's first byte.
    pub line: u64,
    /// 0-based byte offset of the record in the source.
    pub offset: u64,
    /// Index within an `EventList` or array, when the record was one.
    pub item: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)?;
        if let Some(item) = self.item {
            write!(f, " (item {item}, byte {})", self.offset)?;
        }
        Ok(())
    }
}

/// Line and column (1-based) inside the record's text, where the JSON parser stopped.
pub type TextLocation = Option<(usize, usize)>;

/// Why a record was rejected. The stream goes on after any of these.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    #[error("invalid JSON: {0}")]
    Json(String, TextLocation),
    #[error("not an audit event: {0}")]
    NotAnEvent(String, TextLocation),
    #[error(
        "invalid {field} {value:?}: expected an RFC 3339 time such as 2024-01-31T12:00:00.000000Z"
    )]
    BadTimestamp { field: &'static str, value: String },
}

impl DecodeErrorKind {
    pub fn location(&self) -> TextLocation {
        match self {
            DecodeErrorKind::Json(_, at) | DecodeErrorKind::NotAnEvent(_, at) => *at,
            DecodeErrorKind::BadTimestamp { .. } => None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub position: Position,
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    /// `file:line:column: reason` for a line or document; `file:line (item i, byte b)` plus the
    /// place inside the item for an `EventList` item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.position;
        match (self.kind.location(), p.item) {
            (Some((line, column)), None) => write!(
                f,
                "{}:{}:{}: {}",
                p.source,
                p.line + line as u64 - 1,
                column,
                self.kind
            ),
            (Some((line, column)), Some(_)) => {
                write!(f, "{p}: {} (item line {line}, column {column})", self.kind)
            }
            (None, _) => write!(f, "{p}: {}", self.kind),
        }
    }
}

/// The decoded content of one record.
// Not boxed: this is the hot path, and a box costs an allocation and a copy per event.
#[allow(clippy::large_enum_variant)]
pub enum Record<'a> {
    Event(AuditEvent<'a>),
    /// An `EventList` or a JSON array: the raw items, to be decoded one by one with
    /// [`decode_event`] so that one bad item does not cost the whole batch.
    Batch(Vec<&'a RawValue>),
}

/// Decodes one record (a line or a document).
pub fn decode_record(text: &str) -> Result<Record<'_>, DecodeErrorKind> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(json_error)?;
        return Ok(Record::Batch(items));
    }
    // The fast path decodes in place, into the record it returns.
    let mut record = Record::Event(AuditEvent::default());
    if let Record::Event(event) = &mut record
        && super::fast::parse_into(text, event)
    {
        validate(event)?;
        return Ok(record);
    }
    let mut event: AuditEvent = serde_json::from_str(text).map_err(json_error)?;
    if event.kind.as_deref() == Some("EventList") {
        return Ok(Record::Batch(event.items.take().unwrap_or_default()));
    }
    validate(&mut event)?;
    Ok(Record::Event(event))
}

/// Decodes one item that must be a single event (an `EventList` item, or a known-single record).
pub fn decode_event(text: &str) -> Result<AuditEvent<'_>, DecodeErrorKind> {
    let mut event = AuditEvent::default();
    if !super::fast::parse_into(text, &mut event) {
        event = serde_json::from_str(text).map_err(json_error)?;
    }
    validate(&mut event)?;
    Ok(event)
}

fn json_error(e: serde_json::Error) -> DecodeErrorKind {
    let at = Some((e.line(), e.column()));
    let text = e.to_string();
    // The location goes into the position; drop serde_json's " at line L column C".
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    if e.is_data() {
        // Valid JSON of the wrong shape, e.g. Falco's `{"kind": 0}` test case.
        DecodeErrorKind::NotAnEvent(message, at)
    } else {
        DecodeErrorKind::Json(message, at)
    }
}

fn validate(event: &mut AuditEvent<'_>) -> Result<(), DecodeErrorKind> {
    match event.kind.as_deref() {
        None | Some("Event") | Some("") => {}
        Some(other) => {
            return Err(DecodeErrorKind::NotAnEvent(
                format!("kind is {other:?}, expected \"Event\" or \"EventList\""),
                None,
            ));
        }
    }
    if let Some(api) = event.api_version.as_deref()
        && !api.is_empty()
        && !api.starts_with("audit.k8s.io/")
    {
        return Err(DecodeErrorKind::NotAnEvent(
            format!("apiVersion is {api:?}, expected audit.k8s.io/v1 or audit.k8s.io/v1beta1"),
            None,
        ));
    }
    if event.kind.is_none()
        && event.audit_id.is_empty()
        && event.verb.is_empty()
        && event.request_uri.is_empty()
    {
        return Err(DecodeErrorKind::NotAnEvent(
            "no kind, auditID, verb or requestURI".into(),
            None,
        ));
    }
    event.time = event_time(event)?;
    Ok(())
}

fn event_time(event: &AuditEvent<'_>) -> Result<Option<EventTime>, DecodeErrorKind> {
    let candidates = [
        ("stageTimestamp", &event.stage_timestamp),
        (
            "requestReceivedTimestamp",
            &event.request_received_timestamp,
        ),
        ("timestamp", &event.timestamp),
    ];
    for (field, value) in candidates {
        if let Some(text) = value.as_deref().filter(|t| !t.is_empty()) {
            return match EventTime::parse_rfc3339(text) {
                Some(t) => Ok(Some(t)),
                None => Err(DecodeErrorKind::BadTimestamp {
                    field,
                    value: text.to_owned(),
                }),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Level, Stage};

    const EXEC: &str = r#"{"annotations":{"authorization.k8s.io/decision":"allow"},"auditID":"ca1ed9f4","kind":"Event","level":"Request","objectRef":{"apiVersion":"v1","name":"web-1","namespace":"default","resource":"pods","subresource":"exec"},"requestReceivedTimestamp":"2018-10-26T13:38:34.867116Z","requestURI":"/api/v1/namespaces/default/pods/web-1/exec?command=bash","responseStatus":{"code":101,"metadata":{}},"sourceIPs":["192.168.99.1"],"stage":"ResponseStarted","stageTimestamp":"2018-10-26T13:38:34.902914Z","user":{"groups":["system:masters"],"username":"minikube-user"},"verb":"create"}"#;

    fn single(text: &str) -> AuditEvent<'_> {
        match decode_record(text).unwrap() {
            Record::Event(e) => e,
            Record::Batch(_) => panic!("expected a single event"),
        }
    }

    #[test]
    fn decodes_every_field_group() {
        let e = single(EXEC);
        assert_eq!(e.stage, Stage::ResponseStarted);
        assert_eq!(e.level, Level::Request);
        assert_eq!(e.object_ref().subresource.as_str(), "exec");
        assert_eq!(e.response_code(), 101);
        assert_eq!(e.source_ips[0].as_str(), "192.168.99.1");
        assert_eq!(e.effective_user().username.as_str(), "minikube-user");
        assert_eq!(
            e.annotation("authorization.k8s.io/decision").as_deref(),
            Some("allow")
        );
        assert_eq!(e.time.unwrap().to_string(), "2018-10-26T13:38:34.902914Z");
    }

    #[test]
    fn falls_back_to_legacy_timestamp_and_impersonated_user() {
        let e = single(
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","timestamp":"2017-09-11T19:55:05Z","auditID":"a","verb":"list","user":{"username":"system:admin"},"impersonatedUser":{"username":"bob"}}"#,
        );
        assert_eq!(e.time.unwrap().to_string(), "2017-09-11T19:55:05Z");
        assert_eq!(e.effective_user().username.as_str(), "bob");
        assert_eq!(e.user.username.as_str(), "system:admin");
    }

    #[test]
    fn event_list_yields_its_items() {
        let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"auditID":"1","verb":"get"},{"auditID":"2","verb":"list"}]}"#;
        let Ok(Record::Batch(items)) = decode_record(body) else {
            panic!("expected a batch")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(decode_event(items[1].get()).unwrap().verb.as_str(), "list");
    }

    #[test]
    fn rejects_non_events_with_reasons() {
        let falco = decode_record(r#"{"kind": 0}"#).err().unwrap();
        assert_eq!(
            falco,
            DecodeErrorKind::NotAnEvent(
                "invalid type: integer `0`, expected a string".into(),
                Some((1, 10))
            )
        );
        let pod = decode_record(r#"{"kind":"Pod","apiVersion":"v1"}"#)
            .err()
            .unwrap();
        assert_eq!(
            pod.to_string(),
            "not an audit event: kind is \"Pod\", expected \"Event\" or \"EventList\""
        );
        let empty = decode_record("{}").err().unwrap();
        assert_eq!(
            empty.to_string(),
            "not an audit event: no kind, auditID, verb or requestURI"
        );
        let broken = decode_record(r#"{"auditID": "#).err().unwrap();
        assert_eq!(
            broken.to_string(),
            "invalid JSON: EOF while parsing a value"
        );
        let positioned = DecodeError {
            position: Position {
                source: "audit.log".into(),
                line: 7,
                offset: 0,
                item: None,
            },
            kind: broken,
        };
        assert_eq!(
            positioned.to_string(),
            "audit.log:7:12: invalid JSON: EOF while parsing a value"
        );
        let time = decode_record(r#"{"auditID":"x","stageTimestamp":"soon"}"#)
            .err()
            .unwrap();
        assert!(
            time.to_string()
                .starts_with("invalid stageTimestamp \"soon\"")
        );
    }
}
