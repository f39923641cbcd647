//! A window's matching request ([`Hit`]), and the engine's event time as snapshots carry it
//! ([`ReorderSnapshot`]: until early firing, hits waited in a reorder buffer for the
//! watermark; snapshots written then still hold them, and restoring hands them to windows).

use serde::{Deserialize, Serialize};

use super::GroupKey;
use crate::alert::EventRef;
use crate::event::EventTime;
use crate::rules::Captured;

/// One matching request of a windowed rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub time: EventTime,
    pub key: GroupKey,
    /// The request (its auditID orders hits of equal time).
    pub event: EventRef,
    /// The `distinct` field's value, for distinct-count windows.
    pub distinct: Option<Box<str>>,
    /// Bit `i` set: the request matched step `i` of a sequence window.
    #[serde(default)]
    pub steps: u64,
    /// Event values the rule's summary template reads.
    pub captured: Captured,
}

/// The engine's event time in a snapshot, and the hits a reorder buffer held (older snapshots
/// only; empty when written now).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReorderSnapshot {
    pub newest: EventTime,
    pub watermark: EventTime,
    pub late: u64,
    pub forced: u64,
    /// (rule index, hit): what a reorder buffer held.
    pub pending: Vec<(usize, Hit)>,
}

impl ReorderSnapshot {
    /// Event time as the engine has it now (no pending hits).
    pub fn times((newest, watermark): (EventTime, EventTime), late: u64) -> ReorderSnapshot {
        ReorderSnapshot {
            newest,
            watermark,
            late,
            ..ReorderSnapshot::default()
        }
    }
}
