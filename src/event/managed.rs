//! Audit logs as managed Kubernetes services deliver them, unwrapped into native
//! `audit.k8s.io` events so that everything downstream (rules, windows, alerts) is the same:
//!
//! - **EKS** ships native events to CloudWatch Logs. They arrive as a CloudWatch Logs
//!   subscription payload (`{"messageType":"DATA_MESSAGE","logEvents":[{"message":"<event>"}]}`),
//!   usually gzip-compressed and base64-encoded (what a subscription filter hands to Lambda or
//!   Kinesis, one payload per line), inside a Kinesis Firehose HTTP-endpoint request
//!   (`{"records":[{"data":"<base64>"}]}`), or as `aws logs filter-log-events` output
//!   (`{"events":[{"message":...}]}`).
//! - **AKS** diagnostic settings send Azure Monitor records
//!   (`{"records":[{"category":"kube-audit","properties":{"log":"<event as a JSON string>"}}]}`)
//!   to Event Hub or storage. Records of other categories (kube-apiserver logs, ...) are skipped.
//! - **GKE** writes Cloud Audit Log entries (`protoPayload.methodName` =
//!   `io.k8s.core.v1.pods.create`, `authenticationInfo.principalEmail`, gRPC `status.code`),
//!   a different schema that is mapped field by field onto the event (docs/inputs.md), also
//!   when wrapped in a Pub/Sub push request (`{"message":{"data":"<base64 entry>"}}`).
//!
//! Native events are never touched here: the decoder tries them first, zero-copy, and only a
//! record that is not a native event is offered to [`unwrap`]. The managed shapes allocate
//! (they are JSON inside JSON), which is fine for their volumes.

use std::io::Read;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::decode::DecodeErrorKind;
use super::time::Span;

/// How a source's records are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Native events, and any managed shape recognised by its keys.
    #[default]
    Auto,
    /// `audit.k8s.io` events only (log backend, webhook backend).
    Native,
    Eks,
    Aks,
    Gke,
}

impl InputFormat {
    /// How far out of event-time order this format's events arrive, at most, under the
    /// delivery's documented defaults: the default lateness of a source of this format.
    pub const fn lateness(self) -> Span {
        match self {
            // The apiserver's webhook backend batches for up to 30 s
            // (--audit-webhook-batch-max-wait) and every apiserver of an HA control plane
            // sends its own batches; twice that, for slow batches and clock skew. A log file
            // of one apiserver is in order.
            InputFormat::Auto | InputFormat::Native => Span::from_secs(60),
            // CloudWatch Logs subscription to Kinesis Data Firehose: Firehose buffers up to
            // its buffering interval (300 s by default, 900 s at most) before a delivery, and
            // each apiserver's log stream is delivered on its own.
            InputFormat::Eks => Span::from_secs(15 * 60),
            // Azure diagnostic settings to Event Hubs, and Cloud Logging sinks to Pub/Sub: no
            // documented bound (Pub/Sub does not order messages without ordering keys, which
            // log sinks do not set); minutes in practice. Raise `lateness` on the source if
            // the late-events metric says so.
            InputFormat::Aks | InputFormat::Gke => Span::from_secs(5 * 60),
        }
    }
}

/// What a managed record held.
#[derive(Debug, Default, PartialEq)]
pub struct Unwrapped {
    /// Native events as JSON text, in order.
    pub events: Vec<String>,
    /// Records of the envelope that are not audit events (other AKS categories, CloudWatch
    /// control messages), skipped on purpose.
    pub skipped: usize,
}

fn not_event(message: impl Into<String>) -> DecodeErrorKind {
    DecodeErrorKind::NotAnEvent(message.into(), None)
}

/// Unwraps a record that was not a native event. `Ok(None)`: not a managed shape either (the
/// caller reports its original error).
pub fn unwrap(format: InputFormat, text: &str) -> Result<Option<Unwrapped>, DecodeErrorKind> {
    let mut out = Unwrapped::default();
    let trimmed = text.trim();
    let value = if !trimmed.starts_with(['{', '[']) {
        // A compressed CloudWatch Logs payload on a line of its own.
        if !matches!(format, InputFormat::Auto | InputFormat::Eks) || !trimmed.starts_with("H4sI") {
            return Ok(None);
        }
        inflate_json(trimmed)?
    } else {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        }
    };
    let found = match format {
        InputFormat::Native => false,
        InputFormat::Auto => any_shape(&value, &mut out)?,
        InputFormat::Eks => eks(&value, &mut out)?,
        InputFormat::Aks => aks(&value, &mut out)?,
        InputFormat::Gke => gke_any(&value, &mut out)?,
    };
    Ok(found.then_some(out))
}

/// Why a record is refused under an explicit managed format it is not in.
pub fn not_in_format(format: InputFormat) -> DecodeErrorKind {
    not_event(format!("not in the {format:?} input format"))
}

/// How many events (or batch items) a record holds under `format`, or why it holds none: the
/// check the webhook makes before accepting a body, with the same dispatch as decoding
/// (native first unless the format is an explicit managed one).
///
/// A body is refused when not one of its items is an audit event (`[1,2,3]`,
/// `{"items":[1,2,3]}`, an `EventList` without items): the items are decoded until the first
/// event, so a good batch costs one event's decoding here and a bad one is refused whole.
/// Envelopes that hold only records skipped on purpose (a CloudWatch control message) count
/// zero items and are accepted.
pub fn count_items(format: InputFormat, text: &str) -> Result<usize, DecodeErrorKind> {
    let native = match format {
        InputFormat::Auto | InputFormat::Native => super::decode::decode_record(text),
        _ => Err(not_in_format(format)),
    };
    match native {
        Ok(super::decode::Record::Batch(items)) => {
            require_an_event(items.len(), items.iter().map(|i| i.get()))?;
            Ok(items.len())
        }
        Ok(super::decode::Record::Event(_)) => Ok(1),
        Err(e) => match unwrap(format, text)? {
            Some(u) if u.events.is_empty() && u.skipped > 0 => Ok(0),
            Some(u) => {
                require_an_event(u.events.len(), u.events.iter().map(String::as_str))?;
                Ok(u.events.len())
            }
            None => Err(e),
        },
    }
}

/// `Ok` once one of the items decodes as an event; else why none does (with the first item's
/// reason).
fn require_an_event<'a>(
    count: usize,
    mut items: impl Iterator<Item = &'a str>,
) -> Result<(), DecodeErrorKind> {
    let Some(first) = items.next() else {
        return Err(not_event("the batch has no items"));
    };
    let first_error = match super::decode::decode_event(first) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if items.any(|item| super::decode::decode_event(item).is_ok()) {
        return Ok(());
    }
    Err(not_event(format!(
        "none of the {count} items is an audit event (item 0: {first_error})"
    )))
}

fn any_shape(v: &Value, out: &mut Unwrapped) -> Result<bool, DecodeErrorKind> {
    Ok(eks(v, out)? || aks(v, out)? || gke_any(v, out)?)
}

/// base64 → (gunzip if gzip) → JSON.
fn inflate_json(b64: &str) -> Result<Value, DecodeErrorKind> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| not_event(format!("invalid base64: {e}")))?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| not_event(format!("invalid gzip data: {e}")))?;
        s
    } else {
        String::from_utf8(bytes).map_err(|_| not_event("base64 data is not UTF-8 text"))?
    };
    serde_json::from_str(&text).map_err(|e| not_event(format!("decoded data is not JSON: {e}")))
}

/// EKS through CloudWatch Logs: a subscription payload, a Firehose request, or
/// filter-log-events output.
fn eks(v: &Value, out: &mut Unwrapped) -> Result<bool, DecodeErrorKind> {
    if let Some(events) = v.get("logEvents").or_else(|| v.get("events")) {
        if v.get("messageType").and_then(Value::as_str) == Some("CONTROL_MESSAGE") {
            out.skipped += 1;
            return Ok(true);
        }
        let events = events
            .as_array()
            .ok_or_else(|| not_event("logEvents is not an array"))?;
        for (i, e) in events.iter().enumerate() {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .ok_or_else(|| not_event(format!("logEvents[{i}] has no message")))?;
            out.events.push(message.to_owned());
        }
        return Ok(true);
    }
    if v.get("messageType").and_then(Value::as_str) == Some("CONTROL_MESSAGE") {
        out.skipped += 1;
        return Ok(true);
    }
    // Firehose HTTP endpoint delivery: records of base64 data, each a (gzipped) payload.
    if let Some(records) = v.get("records").and_then(Value::as_array)
        && records.first().is_some_and(|r| r.get("data").is_some())
    {
        for (i, r) in records.iter().enumerate() {
            let data = r
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| not_event(format!("records[{i}] has no data")))?;
            let inner = inflate_json(data)?;
            if !eks(&inner, out)? {
                return Err(not_event(format!(
                    "records[{i}] is not a CloudWatch Logs payload"
                )));
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// AKS diagnostic records: an envelope with `records`, one record, or an array of records.
fn aks(v: &Value, out: &mut Unwrapped) -> Result<bool, DecodeErrorKind> {
    let records: Vec<&Value> = if let Some(r) = v.get("records").and_then(Value::as_array) {
        r.iter().collect()
    } else if v.get("category").is_some() && v.get("properties").is_some()
        || v.get("category").is_some() && v.get("operationName").is_some()
    {
        vec![v]
    } else if let Some(items) = v.as_array()
        && items.first().is_some_and(|i| i.get("category").is_some())
    {
        items.iter().collect()
    } else {
        return Ok(false);
    };
    for (i, r) in records.iter().enumerate() {
        let category = r.get("category").and_then(Value::as_str).unwrap_or("");
        if !category.eq_ignore_ascii_case("kube-audit")
            && !category.eq_ignore_ascii_case("kube-audit-admin")
        {
            out.skipped += 1;
            continue;
        }
        let log = r.get("properties").and_then(|p| p.get("log"));
        match log {
            Some(Value::String(s)) => out.events.push(s.clone()),
            // Some exports store the event as an object rather than a string.
            Some(obj @ Value::Object(_)) => out.events.push(obj.to_string()),
            _ => {
                return Err(not_event(format!(
                    "AKS record {i} ({category}) has no properties.log"
                )));
            }
        }
    }
    Ok(true)
}

/// GKE Cloud Audit Log entries: one entry, an array of entries, or a Pub/Sub push request.
fn gke_any(v: &Value, out: &mut Unwrapped) -> Result<bool, DecodeErrorKind> {
    if let Some(data) = v
        .get("message")
        .and_then(|m| m.get("data"))
        .and_then(Value::as_str)
    {
        let inner = inflate_json(data)?;
        return gke_any(&inner, out);
    }
    if let Some(items) = v.as_array() {
        if items
            .first()
            .is_none_or(|i| i.get("protoPayload").is_none())
        {
            return Ok(false);
        }
        for item in items {
            gke_entry(item, out)?;
        }
        return Ok(true);
    }
    if v.get("protoPayload").is_some() {
        gke_entry(v, out)?;
        return Ok(true);
    }
    Ok(false)
}

fn gke_entry(entry: &Value, out: &mut Unwrapped) -> Result<(), DecodeErrorKind> {
    match gke_event(entry)? {
        Some(ev) => out.events.push(ev.to_string()),
        None => out.skipped += 1,
    }
    Ok(())
}

/// What a GKE `methodName` names: `io.k8s.<group>.<version>.<resource>[.<subresource>].<verb>`.
#[derive(Debug, PartialEq)]
struct Method {
    group: String,
    version: String,
    resource: String,
    subresource: String,
    verb: String,
}

fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    digits.len() < rest.len()
        && (digits.is_empty()
            || ["alpha", "beta"].iter().any(|p| {
                digits
                    .strip_prefix(p)
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            }))
}

/// API groups that GKE writes without their `.k8s.io` domain, and the legacy dotless groups.
fn group_from_method(prefix: &[&str]) -> String {
    match prefix {
        ["io", "k8s", "core"] | ["io", "k8s"] => String::new(),
        [
            "io",
            "k8s",
            g @ ("apps" | "batch" | "autoscaling" | "policy" | "extensions"),
        ] => (*g).to_owned(),
        ["io", "k8s", "rbac"] | ["io", "k8s", "authorization", "rbac"] => {
            "rbac.authorization.k8s.io".into()
        }
        ["io", "k8s", rest @ ..] => {
            let mut parts: Vec<&str> = rest.to_vec();
            parts.reverse();
            format!("{}.k8s.io", parts.join("."))
        }
        other => {
            let mut parts: Vec<&str> = other.to_vec();
            parts.reverse();
            parts.join(".")
        }
    }
}

fn parse_method(method: &str) -> Option<Method> {
    let parts: Vec<&str> = method.split('.').collect();
    let at = parts.iter().position(|p| is_version(p))?;
    let rest = &parts[at + 1..];
    let (resource, subresource, verb) = match rest {
        [r, v] => (*r, "", *v),
        [r, s, v] => (*r, *s, *v),
        _ => return None,
    };
    Some(Method {
        group: group_from_method(&parts[..at]),
        version: parts[at].to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        verb: verb.to_owned(),
    })
}

/// gRPC status code → the HTTP status the apiserver answered.
fn http_code(grpc: i64) -> i64 {
    match grpc {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Maps one Cloud Audit Log entry onto an audit event; `None` for entries of other services.
fn gke_event(entry: &Value) -> Result<Option<Value>, DecodeErrorKind> {
    let p = &entry["protoPayload"];
    let service = p["serviceName"].as_str().unwrap_or("k8s.io");
    if service != "k8s.io" {
        return Ok(None);
    }
    let method = p["methodName"]
        .as_str()
        .ok_or_else(|| not_event("GKE entry without protoPayload.methodName"))?;
    let mut ev = Map::new();
    ev.insert("kind".into(), json!("Event"));
    ev.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
    let s = |v: &Value| v.as_str().map(str::to_owned);
    match parse_method(method) {
        Some(m) => {
            ev.insert("verb".into(), json!(m.verb));
            // resourceName: `<group or core>/<version>/[namespaces/<ns>/]<resource>/<name>[/<sub>]`.
            let name_parts: Vec<&str> = p["resourceName"]
                .as_str()
                .unwrap_or("")
                .split('/')
                .collect();
            let (mut namespace, mut name) = (String::new(), String::new());
            if let Some(i) = name_parts.iter().position(|x| *x == "namespaces")
                && name_parts.get(i + 2) == Some(&m.resource.as_str())
            {
                namespace = name_parts.get(i + 1).copied().unwrap_or("").to_owned();
                name = name_parts.get(i + 3).copied().unwrap_or("").to_owned();
            } else if let Some(i) = name_parts.iter().position(|x| *x == m.resource) {
                name = name_parts.get(i + 1).copied().unwrap_or("").to_owned();
            }
            if m.resource == "namespaces" && namespace.is_empty() {
                namespace = name.clone();
            }
            let mut object_ref = Map::new();
            object_ref.insert("resource".into(), json!(m.resource));
            if !m.subresource.is_empty() {
                object_ref.insert("subresource".into(), json!(m.subresource));
            }
            if !namespace.is_empty() {
                object_ref.insert("namespace".into(), json!(namespace));
            }
            if !name.is_empty() {
                object_ref.insert("name".into(), json!(name));
            }
            object_ref.insert("apiGroup".into(), json!(m.group));
            object_ref.insert("apiVersion".into(), json!(m.version));
            ev.insert("objectRef".into(), Value::Object(object_ref));
            let uri = match s(&p["requestURI"]) {
                Some(u) => u,
                None => {
                    let base = if m.group.is_empty() {
                        format!("/api/{}", m.version)
                    } else {
                        format!("/apis/{}/{}", m.group, m.version)
                    };
                    let ns = if namespace.is_empty() || m.resource == "namespaces" {
                        String::new()
                    } else {
                        format!("/namespaces/{namespace}")
                    };
                    let mut uri = format!("{base}{ns}/{}", m.resource);
                    if !name.is_empty() {
                        uri.push('/');
                        uri.push_str(&name);
                    }
                    if !m.subresource.is_empty() {
                        uri.push('/');
                        uri.push_str(&m.subresource);
                    }
                    uri
                }
            };
            ev.insert("requestURI".into(), json!(uri));
        }
        None => {
            // Non-resource requests: io.k8s.readyz, io.k8s.core.v1.healthz.get (no objectRef).
            let path = method
                .strip_prefix("io.k8s.")
                .unwrap_or(method)
                .split('.')
                .find(|p| !is_version(p) && *p != "core")
                .unwrap_or("");
            ev.insert("verb".into(), json!("get"));
            ev.insert(
                "requestURI".into(),
                json!(s(&p["requestURI"]).unwrap_or_else(|| format!("/{path}"))),
            );
        }
    }
    let auth = &p["authenticationInfo"];
    let mut user = Map::new();
    if let Some(email) = s(&auth["principalEmail"]) {
        user.insert("username".into(), json!(email));
    }
    ev.insert("user".into(), Value::Object(user));
    if let Some(ip) = s(&p["requestMetadata"]["callerIP"]) {
        ev.insert("sourceIPs".into(), json!([ip]));
    }
    if let Some(ua) = s(&p["requestMetadata"]["callerSuppliedUserAgent"]) {
        ev.insert("userAgent".into(), json!(ua));
    }
    let grpc = p["status"]["code"].as_i64().unwrap_or(0);
    let mut status = Map::new();
    status.insert("code".into(), json!(http_code(grpc)));
    if let Some(msg) = s(&p["status"]["message"]) {
        status.insert("message".into(), json!(msg));
    }
    ev.insert("responseStatus".into(), Value::Object(status));
    let has_body = p.get("request").is_some() || p.get("response").is_some();
    if let Some(r) = p.get("request") {
        ev.insert("requestObject".into(), r.clone());
    }
    if let Some(r) = p.get("response") {
        ev.insert("responseObject".into(), r.clone());
    }
    ev.insert(
        "level".into(),
        json!(if has_body {
            "RequestResponse"
        } else {
            "Metadata"
        }),
    );
    // operation.id is the apiserver's audit ID; first/last mark the stages.
    let op = &entry["operation"];
    if let Some(id) = s(&op["id"]).or_else(|| s(&entry["insertId"])) {
        ev.insert("auditID".into(), json!(id));
    }
    let stage = match (op["first"].as_bool(), op["last"].as_bool()) {
        (Some(true), Some(false)) | (Some(true), None) => "RequestReceived",
        _ => "ResponseComplete",
    };
    ev.insert("stage".into(), json!(stage));
    if let Some(ts) = s(&entry["timestamp"]) {
        ev.insert("stageTimestamp".into(), json!(ts));
        ev.insert("requestReceivedTimestamp".into(), json!(ts));
    }
    // The authorizer's decision, as the apiserver annotates it.
    if let Some(granted) = p["authorizationInfo"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a["granted"].as_bool())
    {
        let decision = if granted { "allow" } else { "forbid" };
        ev.insert(
            "annotations".into(),
            json!({ "authorization.k8s.io/decision": decision }),
        );
    }
    Ok(Some(Value::Object(ev)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip_b64(text: &str) -> String {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    }

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a1","verb":"get","user":{"username":"alice"},"objectRef":{"resource":"secrets","namespace":"prod","name":"db"}}"#;

    /// Issue 16.4: bodies without a single audit event were answered 200 with a WARN per item.
    #[test]
    fn a_body_without_any_audit_event_is_refused() {
        for body in [
            "[1,2,3]",
            r#"{"items":[1,2,3]}"#,
            r#"{"kind":"EventList","items":null}"#,
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#,
            r#"{"kind":"EventList","items":[{"foo":1},"x",null]}"#,
            "[]",
        ] {
            let e = count_items(InputFormat::Auto, body).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecodeErrorKind::NotAnEvent(..) | DecodeErrorKind::Json(..)
                ),
                "{body}: {e}"
            );
        }
        let e = count_items(InputFormat::Auto, "[1,2,3]").unwrap_err();
        assert!(e.to_string().contains("none of the 3 items"), "{e}");
        // One good item is enough: the bad ones are reported by the engine, item by item.
        let mixed = format!(r#"{{"kind":"EventList","items":[1,{EVENT},"x"]}}"#);
        assert_eq!(count_items(InputFormat::Auto, &mixed).unwrap(), 3);
        let control = json!({"messageType": "CONTROL_MESSAGE", "logEvents": []}).to_string();
        assert_eq!(count_items(InputFormat::Auto, &control).unwrap(), 0);
    }

    #[test]
    fn eks_subscription_payload_plain_compressed_and_through_firehose() {
        let payload = json!({
            "messageType": "DATA_MESSAGE",
            "owner": "123456789012",
            "logGroup": "/aws/eks/prod/cluster",
            "logStream": "kube-apiserver-audit-abc",
            "logEvents": [{"id": "1", "timestamp": 1, "message": EVENT}, {"id": "2", "timestamp": 2, "message": EVENT}],
        })
        .to_string();
        let plain = unwrap(InputFormat::Auto, &payload).unwrap().unwrap();
        assert_eq!(plain.events, [EVENT, EVENT]);
        let compressed = gzip_b64(&payload);
        assert_eq!(
            unwrap(InputFormat::Auto, &compressed).unwrap().unwrap(),
            plain
        );
        let firehose = json!({"requestId": "r", "timestamp": 3, "records": [{"data": compressed}, {"data": compressed}]}).to_string();
        assert_eq!(
            unwrap(InputFormat::Eks, &firehose)
                .unwrap()
                .unwrap()
                .events
                .len(),
            4
        );
        let control = json!({"messageType": "CONTROL_MESSAGE", "logEvents": [{"message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}).to_string();
        assert_eq!(
            unwrap(InputFormat::Auto, &control).unwrap().unwrap(),
            Unwrapped {
                events: vec![],
                skipped: 1
            }
        );
        // An explicit format does not guess.
        assert_eq!(unwrap(InputFormat::Aks, &payload).unwrap(), None);
        assert_eq!(unwrap(InputFormat::Native, &payload).unwrap(), None);
    }

    #[test]
    fn aks_records_keep_audit_categories_only() {
        let body = json!({"records": [
            {"category": "kube-audit", "properties": {"log": EVENT, "stream": "stdout", "pod": "kube-apiserver-1"}},
            {"category": "kube-apiserver", "properties": {"log": "I1123 started"}},
            {"category": "kube-audit-admin", "properties": {"log": EVENT}},
        ]})
        .to_string();
        let u = unwrap(InputFormat::Auto, &body).unwrap().unwrap();
        assert_eq!((u.events.len(), u.skipped), (2, 1));
        let broken = json!({"records": [{"category": "kube-audit", "properties": {}}]}).to_string();
        assert_eq!(
            unwrap(InputFormat::Auto, &broken).unwrap_err().to_string(),
            "not an audit event: AKS record 0 (kube-audit) has no properties.log"
        );
    }

    #[test]
    fn gke_method_names() {
        let m = |s: &str| parse_method(s).map(|m| (m.group, m.resource, m.subresource, m.verb));
        let t = |g: &str, r: &str, s: &str, v: &str| Some((g.into(), r.into(), s.into(), v.into()));
        assert_eq!(
            m("io.k8s.core.v1.pods.exec.create"),
            t("", "pods", "exec", "create")
        );
        assert_eq!(
            m("io.k8s.apps.v1.deployments.update"),
            t("apps", "deployments", "", "update")
        );
        assert_eq!(
            m("io.k8s.authorization.rbac.v1.clusterrolebindings.create"),
            t(
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
                "create"
            )
        );
        assert_eq!(
            m("io.k8s.networking.v1.ingresses.patch"),
            t("networking.k8s.io", "ingresses", "", "patch")
        );
        assert_eq!(
            m("io.cert-manager.v1.certificates.create"),
            t("cert-manager.io", "certificates", "", "create")
        );
        assert_eq!(
            m("io.k8s.autoscaling.v2beta2.horizontalpodautoscalers.get"),
            t("autoscaling", "horizontalpodautoscalers", "", "get")
        );
        assert_eq!(m("io.k8s.readyz"), None);
    }

    #[test]
    fn gke_entry_maps_onto_the_event_model() {
        let entry = json!({
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "mallory@example.com"},
                "authorizationInfo": [{"granted": false, "permission": "io.k8s.core.v1.secrets.get"}],
                "methodName": "io.k8s.core.v1.secrets.get",
                "requestMetadata": {"callerIP": "203.0.113.9", "callerSuppliedUserAgent": "kubectl/v1.31.0"},
                "resourceName": "core/v1/namespaces/prod/secrets/db",
                "serviceName": "k8s.io",
                "status": {"code": 7, "message": "PERMISSION_DENIED"}
            },
            "operation": {"id": "9b1f", "first": true, "last": true, "producer": "k8s.io"},
            "timestamp": "2026-11-23T10:00:00.123456Z",
            "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod"}}
        });
        let u = unwrap(InputFormat::Auto, &entry.to_string())
            .unwrap()
            .unwrap();
        let ev = crate::event::decode_event(&u.events[0]).unwrap();
        assert_eq!(ev.verb.as_str(), "get");
        assert_eq!(ev.audit_id.as_str(), "9b1f");
        assert_eq!(ev.user.username.as_str(), "mallory@example.com");
        assert_eq!(ev.source_ips[0].as_str(), "203.0.113.9");
        assert_eq!(ev.response_code(), 403);
        let r = ev.object_ref();
        assert_eq!(
            (r.resource.as_str(), r.namespace.as_str(), r.name.as_str()),
            ("secrets", "prod", "db")
        );
        assert_eq!(
            ev.request_uri.as_str(),
            "/api/v1/namespaces/prod/secrets/db"
        );
        assert_eq!(ev.time.unwrap().to_string(), "2026-11-23T10:00:00.123456Z");
        assert_eq!(
            ev.annotation("authorization.k8s.io/decision").as_deref(),
            Some("forbid")
        );
        // Through a Pub/Sub push subscription.
        let push = json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode(entry.to_string()), "messageId": "1"}, "subscription": "projects/p/subscriptions/s"});
        assert_eq!(
            unwrap(InputFormat::Gke, &push.to_string())
                .unwrap()
                .unwrap(),
            u
        );
        // Entries of other services are skipped.
        let compute = json!({"protoPayload": {"serviceName": "compute.googleapis.com", "methodName": "compute.instances.list"}});
        assert_eq!(
            unwrap(InputFormat::Auto, &compute.to_string())
                .unwrap()
                .unwrap()
                .skipped,
            1
        );
    }
}
