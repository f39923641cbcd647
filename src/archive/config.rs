//! The daemon's `archive:` settings: where segments go, when they are sealed, how long they are
//! kept and which key signs the manifest.

use std::path::PathBuf;

use serde::Deserialize;

use crate::event::Span;
use crate::units::{ByteSize, Duration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// On by default: every accepted event is kept.
    pub enabled: bool,
    /// Default: `archive/` under the state directory.
    pub dir: Option<PathBuf>,
    /// A segment is sealed at this many events, this much raw JSON, or this age, whichever
    /// comes first. The age bounds how long an event waits before it is in a sealed (and
    /// verifiable, queryable) segment.
    pub segment_max_events: u64,
    pub segment_max_size: ByteSize,
    pub segment_max_age: Duration,
    pub retention: RetentionConfig,
    /// An Ed25519 key (PKCS#8, from `auditwatch keygen`) that signs each manifest entry.
    pub sign_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Sealed segments older than this are removed (default 90 days).
    pub max_age: Option<Duration>,
    /// The oldest segments are removed while the archive is larger than this.
    pub max_size: Option<ByteSize>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            dir: None,
            segment_max_events: 2_000_000,
            segment_max_size: ByteSize(2 << 30),
            segment_max_age: Duration(Span::from_secs(60)),
            retention: RetentionConfig {
                max_age: Some(Duration(Span::from_secs(90 * 86_400))),
                max_size: None,
            },
            sign_key: None,
        }
    }
}

impl ArchiveConfig {
    pub fn limits(&self) -> super::SegmentLimits {
        super::SegmentLimits {
            max_events: self.segment_max_events.max(1),
            max_raw_bytes: self.segment_max_size.0.max(1),
            max_age: self.segment_max_age.std(),
        }
    }

    pub fn retention(&self) -> super::Retention {
        super::Retention {
            max_age: self.retention.max_age.map(|d| d.std()),
            max_bytes: self.retention.max_size.map(|b| b.0),
        }
    }
}
