//! A compact reference to one contributing request: the row an alert's event table shows
//! (who, verb, object, source IP, time, code) plus its auditID.
//!
//! Windows keep one of these per hit for as long as the hit is in the window, so it is one
//! allocation: the five strings packed into one buffer.

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::event::{AuditEvent, EventTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRef {
    pub time: EventTime,
    /// `responseStatus.code`; 0 when the record has none (e.g. `RequestReceived`).
    pub code: u16,
    /// audit_id, user, verb, object, source_ip, concatenated.
    text: Box<str>,
    /// End offsets in `text` of the first four fields.
    ends: [u32; 4],
}

impl EventRef {
    pub fn new(
        time: EventTime,
        code: u16,
        audit_id: &str,
        user: &str,
        verb: &str,
        object: &str,
        source_ip: &str,
    ) -> EventRef {
        let mut text =
            String::with_capacity(audit_id.len() + user.len() + verb.len() + object.len() + 16);
        let mut ends = [0u32; 4];
        for (i, part) in [audit_id, user, verb, object].into_iter().enumerate() {
            text.push_str(part);
            ends[i] = text.len() as u32;
        }
        text.push_str(source_ip);
        EventRef {
            time,
            code,
            text: text.into_boxed_str(),
            ends,
        }
    }

    /// The row for `ev`: the effective user (the impersonated one when there is one), the
    /// object as `resource[/subresource] namespace/name` (the request URI for non-resource
    /// requests), the first source IP.
    pub fn of(ev: &AuditEvent<'_>, time: EventTime) -> EventRef {
        // Written straight into the packed buffer: this runs for every window hit.
        let user: &str = &ev.effective_user().username;
        let source_ip: &str = ev.source_ips.first().map_or("", |ip| ip.as_ref());
        let mut text = String::with_capacity(ev.audit_id.len() + user.len() + 96);
        let mut ends = [0u32; 4];
        text.push_str(&ev.audit_id);
        ends[0] = text.len() as u32;
        text.push_str(user);
        ends[1] = text.len() as u32;
        text.push_str(&ev.verb);
        ends[2] = text.len() as u32;
        match &ev.object_ref {
            Some(o) if !o.resource.is_empty() => {
                text.push_str(&o.resource);
                if !o.subresource.is_empty() {
                    text.push('/');
                    text.push_str(&o.subresource);
                }
                if !o.namespace.is_empty() || !o.name.is_empty() {
                    text.push(' ');
                    if !o.namespace.is_empty() {
                        text.push_str(&o.namespace);
                        text.push('/');
                    }
                    text.push_str(&o.name);
                }
            }
            _ => text.push_str(&ev.request_uri),
        }
        ends[3] = text.len() as u32;
        text.push_str(source_ip);
        let code = ev
            .response_status
            .as_ref()
            .map_or(0, |s| u16::try_from(s.code).unwrap_or(0));
        EventRef {
            time,
            code,
            text: text.into_boxed_str(),
            ends,
        }
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends.get(i).map_or(self.text.len(), |&e| e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    pub fn audit_id(&self) -> &str {
        self.field(0)
    }
    pub fn user(&self) -> &str {
        self.field(1)
    }
    pub fn verb(&self) -> &str {
        self.field(2)
    }
    pub fn object(&self) -> &str {
        self.field(3)
    }
    pub fn source_ip(&self) -> &str {
        self.field(4)
    }

    /// Heap bytes held (for memory accounting in tests and benches).
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
    }
}

impl Serialize for EventRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("audit_id", self.audit_id())?;
        map.serialize_entry("user", self.user())?;
        map.serialize_entry("verb", self.verb())?;
        map.serialize_entry("object", self.object())?;
        map.serialize_entry("source_ip", self.source_ip())?;
        map.serialize_entry("code", &self.code)?;
        map.end()
    }
}

#[derive(Deserialize)]
struct Fields {
    time: EventTime,
    #[serde(default)]
    audit_id: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    verb: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    source_ip: String,
    #[serde(default)]
    code: u16,
}

impl<'de> Deserialize<'de> for EventRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EventRef, D::Error> {
        let f = Fields::deserialize(d)?;
        Ok(EventRef::new(
            f.time,
            f.code,
            &f.audit_id,
            &f.user,
            &f.verb,
            &f.object,
            &f.source_ip,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_record;

    #[test]
    fn fields_come_back_and_round_trip() {
        let line = r#"{"auditID":"a-1","stage":"ResponseComplete","verb":"create","user":{"username":"admin"},"impersonatedUser":{"username":"bob"},"sourceIPs":["10.0.0.9","10.0.0.1"],"objectRef":{"resource":"pods","subresource":"exec","namespace":"shop","name":"web-3"},"responseStatus":{"code":101},"stageTimestamp":"2025-03-14T09:08:00Z"}"#;
        let crate::event::Record::Event(ev) = decode_record(line).unwrap() else {
            panic!("an event")
        };
        let time = ev.time.unwrap();
        let r = EventRef::of(&ev, time);
        assert_eq!(
            (r.audit_id(), r.user(), r.verb(), r.object(), r.source_ip()),
            ("a-1", "bob", "create", "pods/exec shop/web-3", "10.0.0.9")
        );
        assert_eq!(r.code, 101);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2025-03-14T09:08:00Z","audit_id":"a-1","user":"bob","verb":"create","object":"pods/exec shop/web-3","source_ip":"10.0.0.9","code":101}"#
        );
        let back: EventRef = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let packed = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<EventRef>(&packed).unwrap(), r);
    }

    #[test]
    fn non_resource_requests_show_the_uri() {
        let line = r#"{"auditID":"b","verb":"get","requestURI":"/healthz","user":{"username":"system:anonymous"},"timestamp":"2017-09-11T20:01:37Z"}"#;
        let crate::event::Record::Event(ev) = decode_record(line).unwrap() else {
            panic!("an event")
        };
        let r = EventRef::of(&ev, ev.time.unwrap());
        assert_eq!((r.object(), r.source_ip(), r.code), ("/healthz", "", 0));
    }
}
