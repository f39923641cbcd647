//! The state's settings in the config file: how the ingest journal is kept (`journal:`) and
//! how often the engine's state is snapshotted (`snapshot:`).

use serde::Deserialize;

use crate::event::Span;
use crate::units::{ByteSize, Duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement (batches that arrive together share one fsync).
    Always,
    /// Never fsync: survives a killed process, not a crashed machine.
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    pub fsync: FsyncPolicy,
    /// When the journal holds this much not yet covered by a snapshot, the webhook answers
    /// 503 until a snapshot lets it compact.
    pub max_size: ByteSize,
    pub segment_size: ByteSize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            fsync: FsyncPolicy::Always,
            max_size: ByteSize(1 << 30),
            segment_size: ByteSize(64 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub interval: Duration,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            interval: Duration(Span::from_secs(30)),
        }
    }
}
