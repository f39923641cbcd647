//! The `audit.k8s.io` `Event`, as a borrowed, typed view over one JSON record.
//!
//! Every field of `audit.k8s.io/v1` is modelled (v1beta1 and apiVersion-less events decode into
//! the same struct). Strings borrow from the input line; the large, rarely read parts
//! (`requestObject`, `responseObject`, `annotations`, `user.extra`, `responseStatus.details`) are
//! kept as raw JSON and parsed only when a rule asks for them. That is what keeps decoding well
//! below the cost of a generic `serde_json::Value` parse.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::text::Text;
use super::time::EventTime;

/// A JSON value kept as its text, checked to be valid JSON when the record was decoded and
/// parsed only when a rule reads into it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    /// `text` must be one valid JSON value (the decoders guarantee it).
    pub(crate) fn new(text: &'a str) -> RawJson<'a> {
        RawJson(text)
    }

    /// The value's JSON text.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

impl std::fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawJson<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(|raw| RawJson(raw.get()))
    }
}

/// The Kubernetes API verbs of resource requests (non-resource requests use HTTP methods).
pub const RESOURCE_VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// How much of the request the audit policy recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
    #[default]
    #[serde(other)]
    Unknown,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::None,
        Level::Metadata,
        Level::Request,
        Level::RequestResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
            Level::Unknown => "",
        }
    }
}

/// The point in the request's life at which the record was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
    #[default]
    #[serde(other)]
    Unknown,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::RequestReceived,
        Stage::ResponseStarted,
        Stage::ResponseComplete,
        Stage::Panic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
            Stage::Unknown => "",
        }
    }
}

/// `authentication.k8s.io/v1` `UserInfo`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserInfo<'a> {
    #[serde(borrow)]
    pub username: Text<'a>,
    #[serde(borrow)]
    pub uid: Text<'a>,
    #[serde(borrow)]
    pub groups: Vec<Text<'a>>,
    /// `map[string][]string`, kept raw.
    #[serde(borrow)]
    pub extra: Option<RawJson<'a>>,
}

/// `audit.k8s.io/v1` `ObjectReference`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    #[serde(borrow)]
    pub resource: Text<'a>,
    #[serde(borrow)]
    pub namespace: Text<'a>,
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow)]
    pub uid: Text<'a>,
    #[serde(borrow)]
    pub api_group: Text<'a>,
    #[serde(borrow)]
    pub api_version: Text<'a>,
    #[serde(borrow)]
    pub resource_version: Text<'a>,
    #[serde(borrow)]
    pub subresource: Text<'a>,
}

/// `meta/v1` `Status` as recorded in `responseStatus`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResponseStatus<'a> {
    pub code: i32,
    #[serde(borrow)]
    pub status: Text<'a>,
    #[serde(borrow)]
    pub reason: Text<'a>,
    #[serde(borrow)]
    pub message: Text<'a>,
    #[serde(borrow)]
    pub details: Option<RawJson<'a>>,
}

/// One audit record. Decode with [`crate::event::decode_record`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuditEvent<'a> {
    #[serde(borrow)]
    pub kind: Option<Text<'a>>,
    #[serde(borrow)]
    pub api_version: Option<Text<'a>>,
    pub level: Level,
    #[serde(borrow, rename = "auditID")]
    pub audit_id: Text<'a>,
    pub stage: Stage,
    #[serde(borrow, rename = "requestURI")]
    pub request_uri: Text<'a>,
    #[serde(borrow)]
    pub verb: Text<'a>,
    #[serde(borrow)]
    pub user: UserInfo<'a>,
    #[serde(borrow)]
    pub impersonated_user: Option<UserInfo<'a>>,
    #[serde(borrow, rename = "sourceIPs")]
    pub source_ips: Vec<Text<'a>>,
    #[serde(borrow)]
    pub user_agent: Text<'a>,
    #[serde(borrow)]
    pub object_ref: Option<ObjectRef<'a>>,
    #[serde(borrow)]
    pub response_status: Option<ResponseStatus<'a>>,
    #[serde(borrow)]
    pub request_object: Option<RawJson<'a>>,
    #[serde(borrow)]
    pub response_object: Option<RawJson<'a>>,
    #[serde(borrow)]
    pub request_received_timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub stage_timestamp: Option<Text<'a>>,
    /// Legacy (pre-1.10 / v1alpha1-era) top-level timestamp; old logs carry only this.
    #[serde(borrow)]
    pub timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    pub annotations: Option<RawJson<'a>>,
    /// Present only when the record is an `EventList`; see `decode_record`.
    #[serde(borrow)]
    pub(crate) items: Option<Vec<&'a RawValue>>,
    /// Event time, filled in by the decoder: `stageTimestamp`, else `requestReceivedTimestamp`,
    /// else the legacy `timestamp`. `None` when the record carries none of them.
    #[serde(skip)]
    pub time: Option<EventTime>,
}

static EMPTY_OBJECT_REF: ObjectRef<'static> = ObjectRef {
    resource: Text::EMPTY,
    namespace: Text::EMPTY,
    name: Text::EMPTY,
    uid: Text::EMPTY,
    api_group: Text::EMPTY,
    api_version: Text::EMPTY,
    resource_version: Text::EMPTY,
    subresource: Text::EMPTY,
};

impl<'a> AuditEvent<'a> {
    /// The user the request acted as: the impersonated user when there is one, else the
    /// authenticated user. Key "per user" windows on this, or impersonation hides the actor.
    pub fn effective_user(&self) -> &UserInfo<'a> {
        match &self.impersonated_user {
            Some(u) if !u.username.is_empty() => u,
            _ => &self.user,
        }
    }

    /// `objectRef`, or an all-empty reference for non-resource requests (`/healthz`, `/api`).
    pub fn object_ref(&self) -> &ObjectRef<'a> {
        self.object_ref.as_ref().unwrap_or(&EMPTY_OBJECT_REF)
    }

    /// `responseStatus.code`, or 0 when the record has no response yet (`RequestReceived`).
    pub fn response_code(&self) -> i32 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// Reads one annotation without building a map.
    pub fn annotation(&self, key: &str) -> Option<String> {
        let raw = self.annotations?;
        let map: std::collections::HashMap<Text, Text> = serde_json::from_str(raw.get()).ok()?;
        map.get(key).map(|v| v.as_str().to_owned())
    }
}
