//! Who holds a partition: one key per partition in the `auditwatch-leases` bucket, whose
//! entries expire `lease_ttl` after their last write.
//!
//! A worker takes a partition with `create` (it fails while the key exists), then keeps it
//! by updating the key with the revision it last wrote, every third of the TTL. A holder that
//! dies stops renewing; the key expires and a standby's next `create` succeeds. A revision
//! check that fails means someone else took it: the holder stops evaluating at once.

use async_nats::jetstream::kv;

use super::ClusterError;

#[derive(Debug)]
pub struct Lease {
    store: kv::Store,
    partition: String,
    member: String,
    revision: u64,
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    Held,
    /// Another member holds it now.
    Lost {
        holder: String,
    },
}

impl Lease {
    /// Takes the partition if nobody holds it. `Ok(None)`: someone does.
    pub async fn try_take(
        store: &kv::Store,
        partition: &str,
        member: &str,
    ) -> Result<Option<Lease>, ClusterError> {
        match store
            .create(partition, member.as_bytes().to_vec().into())
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                store: store.clone(),
                partition: partition.to_owned(),
                member: member.to_owned(),
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(ClusterError::js(format!("lease {partition}"), e)),
        }
    }

    /// Who holds `partition` now, if anyone.
    pub async fn holder(
        store: &kv::Store,
        partition: &str,
    ) -> Result<Option<String>, ClusterError> {
        let entry = store
            .entry(partition)
            .await
            .map_err(|e| ClusterError::js(format!("lease {partition}"), e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The revision last written: a fencing token (it only grows).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Writes the key again. An error is NATS being unreachable: the lease may still be held
    /// (nobody can take it while NATS is down); call again.
    pub async fn renew(&mut self) -> Result<Renewal, ClusterError> {
        match self
            .store
            .update(
                &self.partition,
                self.member.as_bytes().to_vec().into(),
                self.revision,
            )
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(Renewal::Held)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Expired (NATS was away longer than the TTL) or taken.
                match Lease::holder(&self.store, &self.partition).await? {
                    Some(holder) if holder != self.member => Ok(Renewal::Lost { holder }),
                    _ => {
                        // Expired and nobody took it: take it again, state intact.
                        match Lease::try_take(&self.store, &self.partition, &self.member).await? {
                            Some(again) => {
                                self.revision = again.revision;
                                Ok(Renewal::Held)
                            }
                            None => Ok(Renewal::Lost {
                                holder: Lease::holder(&self.store, &self.partition)
                                    .await?
                                    .unwrap_or_default(),
                            }),
                        }
                    }
                }
            }
            Err(e) => Err(ClusterError::js(format!("lease {}", self.partition), e)),
        }
    }

    /// Gives the partition up at once (a clean stop), so a standby need not wait for the TTL.
    pub async fn release(self) {
        if let Err(e) = self
            .store
            .delete_expect_revision(&self.partition, Some(self.revision))
            .await
        {
            tracing::warn!(partition = %self.partition, error = %e, "cannot release the lease; a standby takes over when it expires");
        }
    }
}
