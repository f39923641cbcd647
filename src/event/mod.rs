//! The `audit.k8s.io` event model and its decoding: the left end of the pipeline.
//!
//! `model` is the typed, borrowed view of one event; `decode` turns records into events with
//! positioned errors (through `fast`, a specialised parser for the common event shape, with
//! serde behind it); `field` resolves the dotted field paths that rules use (`user.username`,
//! `objectRef.namespace`, `requestObject.spec.hostNetwork`); `managed` unwraps the shapes EKS,
//! AKS and GKE deliver their audit logs in.

mod decode;
mod each;
mod fast;
pub mod field;
pub mod managed;
mod model;
pub mod nested;
mod text;
mod time;

pub use decode::{DecodeError, DecodeErrorKind, Position, Record, decode_event, decode_record};
pub use each::decode_each;
pub use managed::InputFormat;
pub use model::{
    AuditEvent, Level, ObjectRef, RESOURCE_VERBS, RawJson, ResponseStatus, Stage, UserInfo,
};
pub use text::Text;
pub use time::{EventTime, Span};
