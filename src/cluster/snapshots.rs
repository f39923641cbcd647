//! A partition's engine snapshot, shared so that whoever takes the partition over resumes
//! where its holder left off.
//!
//! The snapshot bytes go to the object store (they can be larger than a NATS message); a
//! small pointer in the `auditwatch-snapshots` KV bucket says which object is current, the
//! events-stream sequence it covers, and the alerts-stream sequence from which alerts may
//! still be undelivered or fired again. The pointer is updated with the revision its writer
//! last saw, so a holder that lost its partition cannot overwrite its successor's pointer.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::ClusterError;

/// Bumped when [`Pointer`] changes shape.
pub const POINTER_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pointer {
    pub version: u32,
    pub object: String,
    /// Events-stream sequence the snapshot covers (evaluated up to and including it).
    pub stream_seq: u64,
    /// Alerts-stream sequence after which alerts are read again on takeover.
    pub alerts_after: u64,
    pub member: String,
}

#[derive(Clone)]
pub struct SnapshotStore {
    pointers: kv::Store,
    objects: async_nats::jetstream::object_store::ObjectStore,
}

/// A snapshot as read back, with the pointer revision for the next write.
pub struct Loaded {
    pub pointer: Pointer,
    pub bytes: Vec<u8>,
    pub revision: u64,
}

/// What is there when a partition is taken.
pub enum Found {
    Nothing,
    Snapshot(Loaded),
    /// A pointer this version cannot read (another auditwatch version wrote it).
    Unreadable {
        why: String,
        revision: u64,
    },
}

impl SnapshotStore {
    pub fn new(nats: &super::Nats) -> SnapshotStore {
        SnapshotStore {
            pointers: nats.snapshot_pointers.clone(),
            objects: nats.snapshot_objects.clone(),
        }
    }

    pub async fn load(&self, partition: &str) -> Result<Found, ClusterError> {
        let what = || format!("snapshot of {partition}");
        let Some(entry) = self
            .pointers
            .entry(partition)
            .await
            .map_err(|e| ClusterError::js(what(), e))?
        else {
            return Ok(Found::Nothing);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(Found::Nothing);
        }
        let pointer: Pointer = match serde_json::from_slice(&entry.value) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Found::Unreadable {
                    why: format!("pointer: {e}"),
                    revision: entry.revision,
                });
            }
        };
        if pointer.version != POINTER_VERSION {
            return Ok(Found::Unreadable {
                why: format!(
                    "pointer version {} (this build reads {POINTER_VERSION})",
                    pointer.version
                ),
                revision: entry.revision,
            });
        }
        let mut object = match self.objects.get(&pointer.object).await {
            Ok(o) => o,
            Err(e) => {
                return Ok(Found::Unreadable {
                    why: format!("object {}: {e}", pointer.object),
                    revision: entry.revision,
                });
            }
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ClusterError::js(what(), e))?;
        Ok(Found::Snapshot(Loaded {
            pointer,
            bytes,
            revision: entry.revision,
        }))
    }

    /// Stores a snapshot and points at it. `revision`: the pointer revision this holder last
    /// saw (`None`: there was no pointer). Returns the new revision and the object's name;
    /// [`ClusterError::Fenced`] when another holder moved the pointer since (this one must
    /// stop).
    pub async fn save(
        &self,
        partition: &str,
        mut pointer: Pointer,
        bytes: Vec<u8>,
        revision: Option<u64>,
    ) -> Result<(u64, String), ClusterError> {
        let what = || format!("snapshot of {partition}");
        pointer.version = POINTER_VERSION;
        pointer.object = format!(
            "{partition}/{}-{}",
            pointer.stream_seq,
            revision.unwrap_or(0)
        );
        let mut reader = std::io::Cursor::new(bytes);
        self.objects
            .put(pointer.object.as_str(), &mut reader)
            .await
            .map_err(|e| ClusterError::js(what(), e))?;
        let value = serde_json::to_vec(&pointer).map_err(|e| ClusterError::js(what(), e))?;
        let written = match revision {
            Some(r) => self
                .pointers
                .update(partition, value.into(), r)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => ClusterError::Fenced { what: what() },
                    _ => ClusterError::js(what(), e),
                }),
            None => self
                .pointers
                .create(partition, value.into())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => ClusterError::Fenced { what: what() },
                    _ => ClusterError::js(what(), e),
                }),
        };
        match written {
            Ok(new) => Ok((new, pointer.object)),
            Err(e) => {
                // Ours is not current: do not leave it behind.
                let _ = self.objects.delete(&pointer.object).await;
                Err(e)
            }
        }
    }

    /// Deletes an object a newer snapshot replaced.
    pub async fn forget(&self, object: &str) {
        if let Err(e) = self.objects.delete(object).await {
            tracing::debug!(object, error = %e, "cannot delete a replaced snapshot object");
        }
    }
}
