//! Cluster mode on NATS JetStream: what several auditwatch processes share so that any number
//! of stateless receivers and a few engine workers act as one daemon, and a worker can die
//! without losing or repeating an alert.
//!
//! This module is the NATS side only: the names of the streams and buckets, connecting, and
//! one small type per shared thing ([`publish::StreamForward`] for receivers, [`lease::Lease`]
//! for who holds a partition, [`snapshots::SnapshotStore`], [`alerts::AlertStream`] and
//! [`claims::LedgerClaims`]). Wiring them to the engine and delivery is `daemon::cluster`'s job;
//! what the design guarantees, and where it does not, is in `docs/scale.md`.
//!
//! Everything on NATS lives under fixed names, with the partition in the subject or key:
//!
//! | what | kind | name |
//! |---|---|---|
//! | accepted batches | stream | `AUDITWATCH_EVENTS`, subjects `auditwatch.events.<partition>.<source>` |
//! | alerts, in the order a partition fired them | stream | `AUDITWATCH_ALERTS`, subjects `auditwatch.alerts.<partition>` |
//! | who holds a partition | KV, entries expire after the lease TTL | `auditwatch-leases` |
//! | where a partition's latest snapshot is | KV | `auditwatch-snapshots` |
//! | snapshots | object store | `auditwatch-snapshots` |
//! | which alert reached which notifier | KV | `auditwatch-ledger` |
//! | how far a receiver published each file it follows | KV | `auditwatch-positions` |

pub mod alerts;
pub mod claims;
pub mod lease;
pub mod publish;
pub mod snapshots;

use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;
use thiserror::Error;

use crate::units::Duration as ConfigDuration;

pub const EVENTS_STREAM: &str = "AUDITWATCH_EVENTS";
pub const ALERTS_STREAM: &str = "AUDITWATCH_ALERTS";
pub const LEASES_BUCKET: &str = "auditwatch-leases";
pub const SNAPSHOTS_BUCKET: &str = "auditwatch-snapshots";
pub const LEDGER_BUCKET: &str = "auditwatch-ledger";
pub const POSITIONS_BUCKET: &str = "auditwatch-positions";

/// What a process does in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves the webhook sources and publishes what they accept.
    Receiver,
    /// Holds partitions: evaluates their events and delivers their alerts.
    Worker,
    /// Both in one process.
    #[default]
    Both,
}

impl Role {
    pub fn receives(self) -> bool {
        matches!(self, Role::Receiver | Role::Both)
    }

    pub fn works(self) -> bool {
        matches!(self, Role::Worker | Role::Both)
    }
}

/// `cluster:` in the daemon's config. Absent: the single-process daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`); any nodes of the NATS cluster.
    pub nats: Vec<String>,
    pub role: Role,
    /// The Kubernetes cluster this receiver's batches come from: its partition.
    pub name: String,
    /// Split this cluster's batches over `shards` partitions (`<name>-0` …) by a hash of the
    /// sender's address, for a cluster too busy for one worker. Windows are per partition.
    pub shards: u32,
    /// Partitions this worker may hold.
    pub partitions: Vec<String>,
    /// At most this many partitions held at once (default: all of `partitions`).
    pub max_partitions: Option<usize>,
    /// A partition whose holder has not renewed its lease for this long is taken over.
    pub lease_ttl: ConfigDuration,
    /// JetStream replicas of every stream and bucket (3 in production; at most the number of
    /// NATS servers).
    pub replicas: usize,
    /// How long the events stream keeps batches (and so how far back a rebuild can replay).
    pub retention: ConfigDuration,
    /// How long a receiver waits for JetStream to acknowledge a batch before answering 503.
    pub publish_timeout: ConfigDuration,
    /// An apiserver's retry of a batch within this window is stored once.
    pub duplicate_window: ConfigDuration,
    /// A NATS credentials file (`.creds`), or a file holding a token.
    pub credentials_file: Option<std::path::PathBuf>,
    pub token_file: Option<std::path::PathBuf>,
    /// This process's name on NATS and in leases and the ledger (default: host name and PID).
    pub member: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: Vec::new(),
            role: Role::Both,
            name: "default".into(),
            shards: 1,
            partitions: Vec::new(),
            max_partitions: None,
            lease_ttl: ConfigDuration(crate::event::Span::from_secs(5)),
            replicas: 3,
            retention: ConfigDuration(crate::event::Span::from_secs(7 * 24 * 3600)),
            publish_timeout: ConfigDuration(crate::event::Span::from_secs(5)),
            duplicate_window: ConfigDuration(crate::event::Span::from_secs(120)),
            credentials_file: None,
            token_file: None,
            member: None,
        }
    }
}

impl ClusterConfig {
    /// What the config file cannot say by its shape alone.
    pub fn validate(&self, source_names: &[&str]) -> Result<(), String> {
        if self.nats.is_empty() {
            return Err("cluster.nats: name at least one NATS server URL".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "cluster.replicas: {} (JetStream allows 1 to 5)",
                self.replicas
            ));
        }
        if self.shards == 0 {
            return Err("cluster.shards: at least 1".into());
        }
        let ttl = self.lease_ttl.std();
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err("cluster.lease_ttl: between 1s and 60s".into());
        }
        check_token("cluster.name", &self.name)?;
        if self.role.receives() {
            for s in source_names {
                check_token("sources[].name", s)?;
            }
        }
        if self.role.works() {
            if self.partitions.is_empty() {
                return Err(format!(
                    "cluster.partitions: a worker needs the partitions it may hold (e.g. [{}])",
                    self.name
                ));
            }
            for p in &self.partitions {
                check_token("cluster.partitions[]", p)?;
            }
        }
        if self.max_partitions == Some(0) {
            return Err("cluster.max_partitions: at least 1".into());
        }
        Ok(())
    }

    /// The partition a batch from `origin` belongs to.
    pub fn partition_for(&self, origin: Option<&str>) -> String {
        if self.shards <= 1 {
            return self.name.clone();
        }
        let h = origin.map_or(0, |o| {
            o.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        });
        format!("{}-{}", self.name, h % u64::from(self.shards))
    }

    /// The name of this host's files in the positions bucket: `member`, else the host name
    /// (stable across restarts, unlike the default member name).
    pub fn host_name(&self) -> String {
        self.member.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "auditwatch".into())
        })
    }

    /// This process's member name.
    pub fn member_name(&self) -> String {
        if let Some(m) = &self.member {
            return m.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "auditwatch".into());
        format!("{host}-{}", std::process::id())
    }
}

/// Partition, cluster and source names become subject tokens and keys.
fn check_token(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{what}: {value:?} must be 1 to 64 letters, digits, '-' or '_' in cluster mode (it names NATS subjects and keys)"
        ));
    }
    Ok(())
}

/// A key or subject token for a name that may hold any character (notifier names).
pub fn key_token(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return name.to_owned();
    }
    // `=` never appears in a name kept as it is.
    let mut out = String::from("=");
    for b in name.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot reach NATS at {servers}: {why}")]
    Connect { servers: String, why: String },
    #[error("cluster.{field}: cannot read {path}: {why}")]
    Credentials {
        field: &'static str,
        path: String,
        why: String,
    },
    #[error("JetStream {what}: {why}")]
    JetStream { what: String, why: String },
    /// A revision-checked write found a newer revision: another member wrote since.
    #[error("{what}: another worker wrote it since this one read it")]
    Fenced { what: String },
}

impl ClusterError {
    pub fn js(what: impl Into<String>, why: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

/// A connection to NATS with every stream and bucket this mode uses.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: jetstream::stream::Stream,
    pub alerts: jetstream::stream::Stream,
    pub leases: jetstream::kv::Store,
    pub snapshot_pointers: jetstream::kv::Store,
    pub snapshot_objects: jetstream::object_store::ObjectStore,
    pub ledger: jetstream::kv::Store,
    pub positions: jetstream::kv::Store,
}

impl Nats {
    /// Connects once (no retry: the caller decides) and creates what is missing.
    pub async fn connect(cfg: &ClusterConfig, member: &str) -> Result<Nats, ClusterError> {
        let servers = cfg.nats.join(",");
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("auditwatch {member}"))
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None);
        if let Some(path) = &cfg.credentials_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| ClusterError::Credentials {
                    field: "credentials_file",
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
        }
        if let Some(path) = &cfg.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| ClusterError::Credentials {
                field: "token_file",
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            opts = opts.token(token.trim().to_owned());
        }
        let client =
            opts.connect(cfg.nats.as_slice())
                .await
                .map_err(|e| ClusterError::Connect {
                    servers: servers.clone(),
                    why: e.to_string(),
                })?;
        let js = jetstream::new(client.clone());
        let replicas = cfg.replicas;
        let stream = |name: &str, subjects: &str| jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            num_replicas: replicas,
            max_age: cfg.retention.std(),
            duplicate_window: cfg.duplicate_window.std(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let bucket = |name: &str, max_age: Duration| jetstream::kv::Config {
            bucket: name.into(),
            history: 1,
            max_age,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let events = ensure_stream(&js, stream(EVENTS_STREAM, "auditwatch.events.>")).await?;
        let alerts = ensure_stream(&js, stream(ALERTS_STREAM, "auditwatch.alerts.>")).await?;
        let leases = ensure_kv(&js, bucket(LEASES_BUCKET, cfg.lease_ttl.std())).await?;
        // Pointers never expire; ledger entries outlive the alerts they settle.
        let snapshot_pointers = ensure_kv(&js, bucket(SNAPSHOTS_BUCKET, Duration::ZERO)).await?;
        let ledger = ensure_kv(&js, bucket(LEDGER_BUCKET, cfg.retention.std())).await?;
        let positions = ensure_kv(&js, bucket(POSITIONS_BUCKET, Duration::ZERO)).await?;
        let snapshot_objects = match js.get_object_store(SNAPSHOTS_BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(jetstream::object_store::Config {
                    bucket: SNAPSHOTS_BUCKET.into(),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::js(format!("object store {SNAPSHOTS_BUCKET}"), e))?,
        };
        Ok(Nats {
            client,
            js,
            events,
            alerts,
            leases,
            snapshot_pointers,
            snapshot_objects,
            ledger,
            positions,
        })
    }

    /// Whether the connection is up right now.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let name = config.name.clone();
    if let Ok(s) = js.get_stream(&name).await {
        return Ok(s);
    }
    match js.create_stream(config).await {
        Ok(s) => Ok(s),
        // Another process created it in between.
        Err(e) => js
            .get_stream(&name)
            .await
            .map_err(|_| ClusterError::js(format!("stream {name}"), e)),
    }
}

/// A KV bucket. Its stream is created here, the way the client's `create_key_value` would,
/// because that call first reads the account's info in a shape only NATS 2.10 and later
/// send (Debian's 2.9 fails it).
async fn ensure_kv(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
) -> Result<jetstream::kv::Store, ClusterError> {
    let bucket = config.bucket.clone();
    if let Ok(s) = js.get_key_value(&bucket).await {
        return Ok(s);
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_age: config.max_age,
        storage: config.storage,
        num_replicas: config.num_replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let created = js.create_stream(stream).await.err();
    js.get_key_value(&bucket).await.map_err(|e| {
        ClusterError::js(
            format!("bucket {bucket}"),
            created.map_or_else(|| e.to_string(), |c| c.to_string()),
        )
    })
}

/// The subject of a partition's batches from `source`.
pub fn events_subject(partition: &str, source: &str) -> String {
    format!("auditwatch.events.{partition}.{source}")
}

/// Every subject of a partition's batches.
pub fn events_filter(partition: &str) -> String {
    format!("auditwatch.events.{partition}.>")
}

pub fn alerts_subject(partition: &str) -> String {
    format!("auditwatch.alerts.{partition}")
}

/// Header names on published batches.
pub const SOURCE_HEADER: &str = "Auditwatch-Source";
pub const ORIGIN_HEADER: &str = "Auditwatch-Origin";
/// `zstd` when the body is compressed (receivers compress every batch).
pub const ENCODING_HEADER: &str = "Auditwatch-Encoding";
/// `<first line> <byte offset>` when the body is lines of a file (absent: one document).
pub const LINES_HEADER: &str = "Auditwatch-Lines";

/// Inflates zstd bodies from the events stream into one buffer it keeps, refusing any that
/// would inflate to more than a bound. A receiver writes one frame that states its size, so
/// the buffer is sized once and reused: a worker inflates hundreds of batches a second, and a
/// fresh buffer for each cost more in page faults than the inflating itself. Anything else
/// (several frames, no stated size) is inflated as a stream, still bounded; a stated size
/// above the bound is refused before anything is allocated.
#[derive(Default)]
pub struct Inflater {
    context: Option<zstd::bulk::Decompressor<'static>>,
    buffer: Vec<u8>,
}

impl Inflater {
    /// The buffer shrinks back after a batch this much larger than usual.
    const KEEP: usize = 16 << 20;

    pub fn inflate(&mut self, body: &[u8], max: usize) -> Result<&[u8], String> {
        let too_large = || format!("larger than {max} bytes once decompressed");
        if self.buffer.capacity() > Self::KEEP {
            self.buffer = Vec::new();
        }
        self.buffer.clear();
        match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(n)) if n > max as u64 => return Err(too_large()),
            Ok(Some(n)) => {
                if self.context.is_none() {
                    self.context = zstd::bulk::Decompressor::new().ok();
                }
                if let Some(context) = self.context.as_mut() {
                    self.buffer.reserve(n as usize);
                    if context
                        .decompress_to_buffer(body, &mut self.buffer)
                        .is_ok_and(|len| len as u64 == n)
                    {
                        return Ok(&self.buffer);
                    }
                    self.buffer.clear();
                }
            }
            _ => {}
        }
        use std::io::Read;
        let decoder = zstd::stream::read::Decoder::new(body)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        decoder
            .take(max as u64 + 1)
            .read_to_end(&mut self.buffer)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        if self.buffer.len() > max {
            return Err(too_large());
        }
        Ok(&self.buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_subjects_are_refused() {
        let mut c = ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            partitions: vec!["prod".into()],
            ..Default::default()
        };
        assert!(c.validate(&["audit"]).is_ok());
        let err = c.validate(&["audit.>"]).unwrap_err();
        assert!(err.contains("sources[].name"), "{err}");
        c.name = "prod eu".into();
        assert!(c.validate(&["audit"]).unwrap_err().contains("cluster.name"));
        c.name = "prod".into();
        c.partitions = vec![];
        assert!(c.validate(&[]).unwrap_err().contains("cluster.partitions"));
    }

    #[test]
    fn shards_split_a_cluster_by_sender_and_keep_a_sender_on_one() {
        let c = ClusterConfig {
            name: "prod".into(),
            shards: 4,
            ..Default::default()
        };
        let a = c.partition_for(Some("10.0.0.1"));
        assert_eq!(a, c.partition_for(Some("10.0.0.1")));
        assert!(a.starts_with("prod-"));
        let seen: std::collections::BTreeSet<String> = (0..64)
            .map(|i| c.partition_for(Some(&format!("10.0.0.{i}"))))
            .collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        let one = ClusterConfig::default();
        assert_eq!(one.partition_for(Some("x")), "default");
    }

    #[test]
    fn bodies_inflate_within_their_bound() {
        let mut inflater = Inflater::default();
        let body = br#"{"kind":"EventList","items":[]}"#.repeat(100);
        let one = zstd::bulk::compress(&body, 1).unwrap();
        assert_eq!(inflater.inflate(&one, body.len()).unwrap(), &body[..]);
        // A bomb that states its size is refused before anything is allocated; one that does
        // not (a streaming encoder) is cut at the bound.
        let bomb = zstd::bulk::compress(&vec![b' '; 8 << 20], 19).unwrap();
        let err = inflater.inflate(&bomb, 1 << 20).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        assert!(inflater.buffer.capacity() < 1 << 20);
        let mut streamed = Vec::new();
        {
            use std::io::Write;
            let mut w = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
            w.write_all(&vec![b' '; 8 << 20]).unwrap();
            w.finish().unwrap();
        }
        let stated = zstd::zstd_safe::get_frame_content_size(&streamed);
        assert_eq!(stated.ok().flatten(), None);
        let err = inflater.inflate(&streamed, 1 << 20).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        assert_eq!(inflater.inflate(&streamed, 8 << 20).unwrap().len(), 8 << 20);
        // Several frames: the first frame's size is not the whole.
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(
            inflater.inflate(&two, 2 * body.len()).unwrap(),
            &body.repeat(2)[..]
        );
        assert!(inflater.inflate(&two, body.len()).is_err());
        assert!(inflater.inflate(b"not zstd at all", 1 << 20).is_err());
        // And the buffer is reused afterwards.
        assert_eq!(inflater.inflate(&one, body.len()).unwrap(), &body[..]);
    }

    #[test]
    fn notifier_names_become_safe_keys() {
        assert_eq!(key_token("ops-webhook"), "ops-webhook");
        assert_eq!(key_token("team/slack/0"), "=7465616d2f736c61636b2f30");
        assert_ne!(key_token("a.b"), key_token("a_b"));
    }
}
