//! The shared delivery ledger: one key per (partition, notifier, alert) in the
//! `auditwatch-ledger` bucket, `claimed` while a worker sends and the outcome once it is
//! known. It implements delivery's [`DeliveryClaims`] hook.
//!
//! A claim is taken with `create`, so of two workers that both hold an alert (the old holder
//! of a partition that has not noticed yet, and its successor) only one sends. A claim whose
//! holder stopped renewing it for `stale_after` is taken over with a revision-checked update:
//! that holder died between claiming and recording an outcome, and the alert may or may not
//! have reached the notifier, so it is sent again with the same notification ID (the
//! receiver's idempotency key). That is the one case left where a receiver can see an alert
//! twice; `docs/scale.md` says so.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::key_token;
use crate::notify::claim::{Claim, ClaimFuture, DeliveryClaims};
use crate::notify::ledger::Outcome;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `None` while claimed.
    outcome: Option<Outcome>,
    by: String,
    /// When it was written, in Unix milliseconds.
    at: u64,
}

pub struct LedgerClaims {
    store: kv::Store,
    partition: String,
    member: String,
    stale_after: Duration,
}

impl LedgerClaims {
    pub fn new(
        nats: &super::Nats,
        partition: &str,
        member: &str,
        stale_after: Duration,
    ) -> LedgerClaims {
        LedgerClaims {
            store: nats.ledger.clone(),
            partition: partition.to_owned(),
            member: member.to_owned(),
            stale_after,
        }
    }

    fn key(&self, notifier: &str, alert_id: &str) -> String {
        format!(
            "{}.{}.{}",
            self.partition,
            key_token(notifier),
            key_token(alert_id)
        )
    }

    fn record(&self, outcome: Option<Outcome>) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&Record {
            outcome,
            by: self.member.clone(),
            at: unix_millis(),
        })
        .map_err(|e| e.to_string())
    }

    async fn claim_key(&self, key: String) -> Result<Claim, String> {
        match self.store.create(&key, self.record(None)?.into()).await {
            Ok(_) => return Ok(Claim::Won),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
        let Some(entry) = self.store.entry(&key).await.map_err(|e| e.to_string())? else {
            // Gone in between (expired): try again next time.
            return Ok(Claim::Busy);
        };
        let record: Record = serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
        if let Some(outcome) = record.outcome {
            return Ok(Claim::Settled(outcome));
        }
        let age = Duration::from_millis(unix_millis().saturating_sub(record.at));
        if record.by != self.member && age < self.stale_after {
            return Ok(Claim::Busy);
        }
        // Ours (a retry, refreshed), or abandoned by a holder that died mid-send.
        if record.by != self.member {
            tracing::warn!(key, claimed_by = %record.by, ?age, "delivery: taking over a claim its holder never settled; the notifier may see this alert twice (same notification ID)");
        }
        match self
            .store
            .update(&key, self.record(None)?.into(), entry.revision)
            .await
        {
            Ok(_) => Ok(Claim::Won),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Claim::Busy),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DeliveryClaims for LedgerClaims {
    fn claim<'a>(&'a self, notifier: &'a str, alert_id: &'a str) -> ClaimFuture<'a, Claim> {
        Box::pin(self.claim_key(self.key(notifier, alert_id)))
    }

    fn settle<'a>(
        &'a self,
        notifier: &'a str,
        alert_id: &'a str,
        outcome: Outcome,
    ) -> ClaimFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(notifier, alert_id);
            self.store
                .put(&key, self.record(Some(outcome))?.into())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
