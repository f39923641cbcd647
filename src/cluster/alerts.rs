//! The alert journal in cluster mode: the `AUDITWATCH_ALERTS` stream, one subject per
//! partition, every alert in the order its partition fired it.
//!
//! A worker writes an alert here (and waits for the acknowledgement) before handing it to
//! delivery, so an alert is either in the stream or was never announced. On takeover the new
//! holder reads its partition's alerts after the snapshot pointer's `alerts_after`: those are
//! the alerts the replay may fire again (not written twice) and the ones possibly not yet
//! delivered (the delivery ledger says which). Alerts fired by one batch share a message (JSON
//! lines); its `Nats-Msg-Id` names the partition and the alerts, so a retried write within
//! the duplicate window is stored once.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;

use super::{ClusterError, alerts_subject};
use crate::alert::Alert;

/// A message of alerts is closed once it holds this much (one alert may make it larger).
pub const MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AlertStream {
    js: async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
}

impl AlertStream {
    pub fn new(nats: &super::Nats) -> AlertStream {
        AlertStream {
            js: nats.js.clone(),
            stream: nats.alerts.clone(),
        }
    }

    /// Stores `alerts` in order; returns each one's stream sequence. Alerts fired together
    /// travel together, as JSON lines in messages of up to [`MESSAGE_BYTES`]: each message
    /// is one replicated write, whatever the number of alerts in it.
    pub async fn publish(
        &self,
        partition: &str,
        alerts: &[Alert],
    ) -> Result<Vec<u64>, ClusterError> {
        let subject = alerts_subject(partition);
        let mut acks = Vec::new();
        let mut i = 0;
        while i < alerts.len() {
            let (first, mut body) = (i, Vec::new());
            while i < alerts.len() && (body.is_empty() || body.len() < MESSAGE_BYTES) {
                serde_json::to_writer(&mut body, &alerts[i])
                    .map_err(|e| ClusterError::js("alert", e))?;
                body.push(b'\n');
                i += 1;
            }
            // The same alerts sent again (a retry) are stored once.
            let id = format!(
                "{partition}:{}:{}:{}",
                alerts[first].id,
                alerts[i - 1].id,
                i - first
            );
            let message = PublishMessage::build().payload(body.into()).message_id(id);
            let ack = self
                .js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| ClusterError::js("alerts stream", e))?;
            acks.push((i - first, ack));
        }
        let mut seqs = Vec::with_capacity(alerts.len());
        for (n, ack) in acks {
            let seq = ack
                .await
                .map_err(|e| ClusterError::js("alerts stream", e))?
                .sequence;
            seqs.extend(std::iter::repeat_n(seq, n));
        }
        Ok(seqs)
    }

    /// The partition's alerts stored after sequence `after`, in order.
    pub async fn read_after(
        &self,
        partition: &str,
        after: u64,
    ) -> Result<Vec<(u64, Alert)>, ClusterError> {
        // A consumer placed on a server that just died times out until the cluster notices
        // (a few seconds): ask again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.read_once(partition, after).await {
                Ok(alerts) => return Ok(alerts),
                Err(e) if attempt < 5 => {
                    tracing::warn!(partition, error = %e, attempt, "cannot read the alerts stream; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_once(
        &self,
        partition: &str,
        after: u64,
    ) -> Result<Vec<(u64, Alert)>, ClusterError> {
        let what = || format!("alerts of {partition}");
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: alerts_subject(partition),
                deliver_policy: if after == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    }
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: std::time::Duration::from_secs(60),
                // In memory, on one server: a read, not a position to keep.
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::js(what(), e))?;
        let expected = consumer.cached_info().num_pending as usize;
        let mut out = Vec::with_capacity(expected);
        if expected == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::js(what(), e))?;
        let mut read = 0;
        while read < expected {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| ClusterError::js(what(), "no message within 10 s"))?;
            let Some(message) = next else { break };
            let message = message.map_err(|e| ClusterError::js(what(), e))?;
            read += 1;
            let seq = message
                .info()
                .map_err(|e| ClusterError::js(what(), e))?
                .stream_sequence;
            for line in message
                .payload
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                match serde_json::from_slice::<Alert>(line) {
                    Ok(a) => out.push((seq, a)),
                    Err(e) => {
                        tracing::error!(partition, seq, error = %e, "an alert in the alerts stream cannot be read; skipped");
                    }
                }
            }
        }
        Ok(out)
    }
}
