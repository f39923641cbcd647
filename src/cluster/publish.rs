//! The receiver's side: a batch the webhook accepted is published to the events stream, and
//! the webhook answers 200 only once JetStream acknowledged it (stored on a majority of its
//! replicas). That acknowledgement replaces the local ingest journal in cluster mode.
//!
//! Each message carries `Nats-Msg-Id`, a hash of (source, sender, body): an apiserver that
//! retries a batch whose answer it lost (within `cluster.duplicate_window`) has it stored once.
//!
//! Bodies are compressed with zstd (level 1) before publishing: audit JSON shrinks about
//! tenfold, and every byte is stored three times and read back by a worker, so the NATS
//! servers' CPU and disk go down by about as much for a few milliseconds of a receiver's CPU
//! per batch.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;

use super::{
    ClusterConfig, ENCODING_HEADER, LINES_HEADER, Nats, ORIGIN_HEADER, SOURCE_HEADER,
    events_subject,
};
use crate::source::webhook::{Forward, ForwardBatch, ForwardError};

/// The NATS connection once it is made (receivers serve, and refuse with 503, before that).
pub type Connection = Arc<OnceLock<Nats>>;

/// Room left in a message for its headers.
const HEADER_ROOM: usize = 1024;

pub struct StreamForward {
    nats: Connection,
    cluster: ClusterConfig,
    timeout: Duration,
}

impl StreamForward {
    pub fn new(nats: Connection, cluster: &ClusterConfig) -> StreamForward {
        StreamForward {
            nats,
            timeout: cluster.publish_timeout.std(),
            cluster: cluster.clone(),
        }
    }
}

/// `Nats-Msg-Id` of a batch: the same batch sent again gets the same ID.
pub fn message_id(source: &str, origin: Option<&str>, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [source.as_bytes(), origin.unwrap_or("").as_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(body);
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl StreamForward {
    /// Publishes one batch and waits for JetStream's acknowledgement. `lines`: the batch is
    /// lines of a file from this line and byte offset (which also tell apart two equal
    /// batches from different places of the file).
    pub async fn publish(
        &self,
        source: &str,
        origin: Option<&str>,
        body: &[u8],
        lines: Option<(u64, u64)>,
    ) -> Result<(), ForwardError> {
        let Some(nats) = self.nats.get() else {
            return Err(ForwardError::Unavailable(
                "not connected to NATS yet".into(),
            ));
        };
        if !nats.connected() {
            return Err(ForwardError::Unavailable(
                "the NATS connection is down".into(),
            ));
        }
        let place = lines.map(|(line, offset)| format!("{line} {offset}"));
        let id = match &place {
            Some(p) => message_id(source, Some(&format!("{}@{p}", origin.unwrap_or(""))), body),
            None => message_id(source, origin, body),
        };
        let compressed = zstd::bulk::compress(body, 1)
            .map_err(|e| ForwardError::Unavailable(format!("cannot compress: {e}")))?;
        let max = nats.client.server_info().max_payload;
        if compressed.len() + HEADER_ROOM > max {
            return Err(ForwardError::TooLarge {
                max: max.saturating_sub(HEADER_ROOM),
            });
        }
        let partition = self.cluster.partition_for(origin);
        let mut headers = HeaderMap::new();
        headers.insert(SOURCE_HEADER, source);
        headers.insert(ENCODING_HEADER, "zstd");
        if let Some(o) = origin {
            headers.insert(ORIGIN_HEADER, o);
        }
        if let Some(p) = &place {
            headers.insert(LINES_HEADER, p.as_str());
        }
        let message = PublishMessage::build()
            .payload(compressed.into())
            .headers(headers)
            .message_id(id);
        let subject = events_subject(&partition, source);
        let published = tokio::time::timeout(self.timeout, async {
            nats.js
                .send_publish(subject, message)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        match published {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(why)) => Err(ForwardError::Unavailable(format!(
                "JetStream did not store the batch: {why}"
            ))),
            Err(_) => Err(ForwardError::Unavailable(format!(
                "JetStream did not acknowledge within {:?}",
                self.timeout
            ))),
        }
    }
}

impl Forward for StreamForward {
    fn forward(
        &self,
        batch: ForwardBatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ForwardError>> + Send + '_>>
    {
        Box::pin(async move {
            self.publish(&batch.source, batch.origin.as_deref(), &batch.body, None)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_batch_has_the_same_id_and_another_sender_another() {
        let a = message_id("audit", Some("10.0.0.1"), b"{\"items\":[]}");
        assert_eq!(a, message_id("audit", Some("10.0.0.1"), b"{\"items\":[]}"));
        assert_ne!(a, message_id("audit", Some("10.0.0.2"), b"{\"items\":[]}"));
        assert_ne!(a, message_id("audi", Some("t10.0.0.1"), b"{\"items\":[]}"));
        assert_eq!(a.len(), 32);
    }
}
