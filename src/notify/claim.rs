//! Delivery claims: the hook that lets several processes share one delivery ledger.
//!
//! The single-process daemon needs none (its ledger file is the only one). In cluster mode a
//! partition can move to another worker while its alerts are in flight, and the new holder
//! replays them; before sending an alert to a notifier a worker claims the pair (notifier,
//! alert) in the shared ledger, and afterwards records the outcome there. Only one claim
//! wins; an alert another process already settled is not sent again.

use std::future::Future;
use std::pin::Pin;

use super::ledger::Outcome;

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This process sends it.
    Won,
    /// Already settled (by this process before a restart, or by another).
    Settled(Outcome),
    /// Another process claimed it and may be sending it right now: ask again later.
    Busy,
}

pub type ClaimFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

pub trait DeliveryClaims: Send + Sync {
    fn claim<'a>(&'a self, notifier: &'a str, alert_id: &'a str) -> ClaimFuture<'a, Claim>;
    fn settle<'a>(
        &'a self,
        notifier: &'a str,
        alert_id: &'a str,
        outcome: Outcome,
    ) -> ClaimFuture<'a, ()>;
}
