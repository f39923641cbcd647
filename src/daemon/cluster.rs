//! `auditwatch run` in cluster mode (`cluster:` in the config; docs/scale.md): receivers and
//! engine workers that share their work through NATS JetStream ([`crate::cluster`]).
//!
//! - **Receivers** serve the webhook sources. An accepted batch is published to the events
//!   stream and answered 200 only after JetStream acknowledged it; while NATS is away they
//!   answer 503 with `Retry-After`, so the apiserver keeps the batch and retries.
//! - **Workers** hold partitions. For each partition it may hold a worker runs a keeper: it
//!   takes the partition's lease when nobody holds it, then [`hold`]s it: rebuilds the state
//!   from the snapshot in JetStream (the events stream sequence it covers, the alerts that may
//!   still be undelivered), runs the same engine thread as the single-process daemon over the
//!   events from that sequence on, writes each alert to the alerts stream before delivery,
//!   claims each delivery in the shared ledger, stores a snapshot every `snapshot.interval`,
//!   and renews the lease. A worker that loses its lease stops that partition at once; one
//!   that stops cleanly stores a last snapshot and releases the lease so a standby takes over
//!   without waiting for the TTL.
//!
//! The local state directory only caches what a partition's holder needs while it holds it:
//! it is rebuilt from JetStream on every takeover.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pipeline::{AlertReplica, Feedback, Pipeline, PipelineOptions};
use super::shutdown::Shutdown;
use super::{
    Listeners, RuleSource, announce_webhook, prime_metrics, source_label_keys, source_timings,
};
use crate::alert::Alert;
use crate::cluster::alerts::AlertStream;
use crate::cluster::claims::LedgerClaims;
use crate::cluster::lease::{Lease, Renewal};
use crate::cluster::publish::{Connection, StreamForward};
use crate::cluster::snapshots::{Found, Pointer, SnapshotStore};
use crate::cluster::{
    ClusterConfig, ENCODING_HEADER, LINES_HEADER, Nats, ORIGIN_HEADER, SOURCE_HEADER, events_filter,
};
use crate::config::Config;
use crate::engine::Engine;
use crate::log_gate::LogGate;
use crate::metrics::Metrics;
use crate::notify::silence::{SilenceDesk, Silences};
use crate::notify::{Notify, NotifyOptions};
use crate::rules::RuleSet;
use crate::source::tail::Follower;
use crate::source::webhook::{Handoff, Webhook, WebhookDeps};
use crate::source::{Backlog, Batch, Encoding, Input, Progress, Shape, SourceConfig};
use crate::state::{AlertJournal, FileCheckpoint, StateDir, StateSnapshot};

/// Runs a receiver, a worker or both until SIGTERM or SIGINT.
pub fn run(config: Config, rules: RuleSource) -> anyhow::Result<()> {
    let Some(cluster) = config.cluster.clone() else {
        anyhow::bail!("cluster mode without a cluster: section");
    };
    let member = cluster.member_name();
    let metrics = Arc::new(Metrics::new());
    let (rule_set, _) = super::load_rules(&config, &rules)?;
    prime_metrics(&metrics, &config, &rule_set);
    for p in &cluster.partitions {
        metrics.cluster_partition_held(p, false);
    }
    tracing::info!(
        member = %member,
        role = ?cluster.role,
        nats = %cluster.nats.join(","),
        partitions = ?cluster.partitions,
        rules = rule_set.rules.len(),
        "cluster mode"
    );
    if config.archive.enabled && cluster.role.works() {
        tracing::info!(
            "cluster mode keeps no local archive: the events stream keeps every batch for cluster.retention"
        );
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("state dir {}", config.state_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("auditwatch-io")
        .build()?;
    let shutdown = Shutdown::default();
    let ready = Arc::new(AtomicBool::new(false));
    let conn: Connection = Arc::new(OnceLock::new());
    let mut tasks = tokio::task::JoinSet::new();
    let _guard = runtime.enter();
    tasks.spawn(connect(
        cluster.clone(),
        member.clone(),
        Arc::clone(&conn),
        Arc::clone(&metrics),
        Arc::clone(&ready),
        shutdown.token(),
    ));
    let listeners = Listeners::of(&config);
    if cluster.role.receives() {
        let forward = Arc::new(StreamForward::new(Arc::clone(&conn), &cluster));
        for source in &config.sources {
            if let SourceConfig::File(cfg) = source {
                if cfg.path.is_dir() {
                    anyhow::bail!(
                        "source {}: {} is a directory; cluster mode follows log files, not archive segments",
                        cfg.name,
                        cfg.path.display()
                    );
                }
                tasks.spawn(publish_file(
                    cfg.clone(),
                    Arc::clone(&forward),
                    cluster.host_name(),
                    Arc::clone(&conn),
                    Arc::clone(&metrics),
                    shutdown.token(),
                ));
                continue;
            }
            let SourceConfig::Webhook(cfg) = source else {
                continue;
            };
            let hook = runtime.block_on(Webhook::bind(
                cfg,
                WebhookDeps {
                    handoff: Handoff::Forward(forward.clone()),
                    metrics: Arc::clone(&metrics),
                    max_connections: listeners.cap(cfg.connections.max),
                },
            ))?;
            announce_webhook(cfg, &hook, &metrics, listeners.cap(cfg.connections.max))?;
            tasks.spawn(hook.serve(shutdown.token()));
        }
    }
    let silences = Arc::new(Mutex::new(Silences::open(
        &config.state_dir.join("silences.json"),
        config.silences.clone(),
    )?));
    let config = Arc::new(config);
    if cluster.role.works() {
        let worker = Arc::new(Worker {
            config: Arc::clone(&config),
            cluster: cluster.clone(),
            member: member.clone(),
            conn: Arc::clone(&conn),
            metrics: Arc::clone(&metrics),
            rules: Arc::new(rule_set),
            silences: Arc::clone(&silences),
            runtime: runtime.handle().clone(),
            held: AtomicUsize::new(0),
        });
        for partition in &cluster.partitions {
            tasks.spawn(keep(
                Arc::clone(&worker),
                partition.clone(),
                shutdown.token(),
            ));
        }
    }
    if let Some(addr) = config.http.listen {
        let journal =
            AlertJournal::open(&config.state_dir.join("alerts.jsonl"), config.journal.fsync)
                .context("alert journal (silence records)")?;
        let ops = crate::ops::Ops {
            metrics: Arc::clone(&metrics),
            ready: Arc::clone(&ready),
            desk: SilenceDesk {
                silences,
                journal: Arc::new(Mutex::new(journal)),
            },
            backlog: Backlog::default(),
            max_lag: config.engine.max_lag.std(),
        };
        let cap = listeners.cap(config.http.connections.max);
        let serve = runtime.block_on(crate::ops::bind(addr, &config.http, ops, None, cap))?;
        tasks.spawn(serve.serve(shutdown.token()));
    }
    runtime.block_on(super::shutdown::termination_signal());
    tracing::info!(
        "shutting down: no new requests; partitions store a last snapshot and release their leases"
    );
    ready.store(false, Ordering::Relaxed);
    shutdown.begin();
    runtime.block_on(async { while tasks.join_next().await.is_some() {} });
    runtime.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
}

/// Connects (again and again until it can), then keeps `/readyz` and the metric in step with
/// the connection.
async fn connect(
    cluster: ClusterConfig,
    member: String,
    conn: Connection,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let gate = LogGate::per_minute();
    metrics.cluster_connected(false);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = Nats::connect(&cluster, &member) => r,
        };
        match attempt {
            Ok(nats) => {
                tracing::info!(nats = %cluster.nats.join(","), replicas = cluster.replicas, "connected to NATS; streams and buckets ready");
                let _ = conn.set(nats);
                break;
            }
            Err(e) => {
                if let Some(held_back) = gate.admit() {
                    tracing::error!(error = %e, held_back, "NATS is not usable; /readyz stays false and the webhook answers 503 until it is; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    let mut was_up = true;
    loop {
        let up = conn.get().is_some_and(Nats::connected);
        metrics.cluster_connected(up);
        if !stop.is_cancelled() {
            ready.store(up, Ordering::Relaxed);
        }
        if up != was_up {
            if up {
                tracing::info!("NATS connection back");
            } else {
                tracing::warn!(
                    "NATS connection lost: the webhook answers 503 and workers pause until it is back"
                );
            }
            was_up = up;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// What every partition keeper of this worker shares.
struct Worker {
    config: Arc<Config>,
    cluster: ClusterConfig,
    member: String,
    conn: Connection,
    metrics: Arc<Metrics>,
    rules: Arc<RuleSet>,
    silences: Arc<Mutex<Silences>>,
    runtime: tokio::runtime::Handle,
    /// Partitions held right now.
    held: AtomicUsize,
}

impl Worker {
    fn max_held(&self) -> usize {
        self.cluster
            .max_partitions
            .unwrap_or(self.cluster.partitions.len())
    }

    /// How often a standby looks whether the lease is free.
    fn poll(&self) -> Duration {
        (self.cluster.lease_ttl.std() / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// Takes `partition` whenever nobody holds it (and this worker has room), and holds it.
async fn keep(worker: Arc<Worker>, partition: String, stop: CancellationToken) {
    let gate = LogGate::per_minute();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if let Some(nats) = worker.conn.get().filter(|n| n.connected())
            && worker.held.load(Ordering::Relaxed) < worker.max_held()
        {
            match Lease::try_take(&nats.leases, &partition, &worker.member).await {
                Ok(Some(lease)) => {
                    worker.held.fetch_add(1, Ordering::Relaxed);
                    worker.metrics.cluster_partition_held(&partition, true);
                    let taken = Instant::now();
                    tracing::info!(partition, revision = lease.revision(), "partition taken");
                    if let Err(e) = hold(&worker, nats.clone(), lease, &stop).await {
                        tracing::error!(partition, error = %format!("{e:#}"), held_for = ?taken.elapsed(), "partition given up");
                    }
                    worker.held.fetch_sub(1, Ordering::Relaxed);
                    worker.metrics.cluster_partition_held(&partition, false);
                }
                Ok(None) => {}
                Err(e) => {
                    if let Some(held_back) = gate.admit() {
                        tracing::warn!(partition, error = %e, held_back, "cannot read the partition's lease; trying again");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(worker.poll()) => {}
        }
    }
}

/// Where a partition resumes, as found in JetStream.
struct Resume {
    snapshot: Option<StateSnapshot>,
    /// Pointer revision for the next snapshot write (none: no pointer yet).
    revision: Option<u64>,
    alerts_after: u64,
    how: &'static str,
}

/// Reads the partition's snapshot pointer and object, into `state`.
async fn resume_point(
    partition: &str,
    store: &SnapshotStore,
    state: &StateDir,
) -> anyhow::Result<Resume> {
    let rebuild = |why: String, revision: Option<u64>| {
        tracing::warn!(
            partition,
            why,
            "the stored snapshot cannot be used: rebuilding by replaying the events stream from its oldest retained batch"
        );
        Resume {
            snapshot: None,
            revision,
            alerts_after: 0,
            how: "rebuild",
        }
    };
    match store.load(partition).await? {
        Found::Nothing => Ok(Resume {
            snapshot: None,
            revision: None,
            alerts_after: 0,
            how: "empty",
        }),
        Found::Unreadable { why, revision } => Ok(rebuild(why, Some(revision))),
        Found::Snapshot(loaded) => {
            let path = state.root.join("taken-over.msgpack");
            std::fs::write(&path, &loaded.bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            let read = crate::state::read_snapshot(&path);
            let _ = std::fs::remove_file(&path);
            match read {
                Ok(Some(snap)) => Ok(Resume {
                    snapshot: Some(snap),
                    revision: Some(loaded.revision),
                    alerts_after: loaded.pointer.alerts_after,
                    how: "snapshot",
                }),
                Ok(None) => Ok(rebuild("empty object".into(), Some(loaded.revision))),
                Err(e) => Ok(rebuild(e.to_string(), Some(loaded.revision))),
            }
        }
    }
}

/// Holds a partition until the lease is lost or the worker stops.
async fn hold(
    worker: &Arc<Worker>,
    nats: Nats,
    lease: Lease,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let partition = lease.partition().to_owned();
    let config = &worker.config;
    let dir = config.state_dir.join("partitions").join(&partition);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("clearing {}", dir.display())),
    }
    let state = StateDir::new(&dir).context("partition state dir")?;
    let store = SnapshotStore::new(&nats);
    let resume = resume_point(&partition, &store, &state).await?;
    // Alerts fired (and maybe not delivered) since the snapshot: not written twice, and
    // delivered unless the shared ledger says they were.
    let alert_stream = AlertStream::new(&nats);
    let earlier = alert_stream
        .read_after(&partition, resume.alerts_after)
        .await?;
    // A cache of the alerts stream (the durable copy, acknowledged by a majority of the NATS
    // servers before delivery): no fsync.
    let mut journal = AlertJournal::open(&state.alerts_path(), crate::state::FsyncPolicy::Never)
        .context("partition alert journal")?;
    let earlier_alerts: Vec<Alert> = earlier.iter().map(|(_, a)| a.clone()).collect();
    let offsets = journal.append(&earlier_alerts)?;
    let seq_of: BTreeMap<u64, u64> = offsets
        .iter()
        .copied()
        .zip(earlier.iter().map(|(seq, _)| *seq))
        .collect();
    let journal_len = journal.len();
    let alerts = Arc::new(Mutex::new(journal));
    let mut snapshot = resume.snapshot;
    if let Some(s) = snapshot.as_mut() {
        // Every alert in the fresh local journal counts as possibly fired again.
        s.alert_journal_len = 0;
        s.files.clear();
    }
    let start_seq = snapshot.as_ref().map_or(0, |s| s.journal_seq);
    worker.metrics.cluster_takeover(&partition, resume.how);
    worker.metrics.cluster_evaluated(&partition, start_seq);
    tracing::info!(
        partition,
        resumed = resume.how,
        from_sequence = start_seq + 1,
        alerts_rechecked = earlier.len(),
        "partition state rebuilt from JetStream"
    );
    let mut engine = Engine::new(Arc::clone(&worker.rules), config.engine.options());
    if let Some(s) = &snapshot {
        engine.restore(s.engine.clone());
    }
    let claims = LedgerClaims::new(
        &nats,
        &partition,
        &worker.member,
        // Only a worker that took the partition over meets another member's claim (the old
        // holder's delivery stops with the partition): one older than this was left by a
        // holder that died mid-send.
        (config.delivery.timeout.std() * 2 + worker.cluster.lease_ttl.std())
            .max(Duration::from_secs(10)),
    );
    let notify = Notify::start(
        NotifyOptions {
            state_dir: dir.clone(),
            alert_journal: state.alerts_path(),
            alert_journal_len: journal_len,
            notifiers: config.notifiers.clone(),
            route: config.route.clone(),
            // The outcomes that count are in the shared ledger; the local one is a cache.
            delivery: crate::notify::config::DeliveryConfig {
                fsync: crate::state::FsyncPolicy::Never,
                ..config.delivery.clone()
            },
            silence_limits: config.silences.clone(),
            inhibit_rules: config.inhibit_rules.clone(),
            time_intervals: config.time_intervals.clone(),
            console_url: config.http.console_url(),
            receivers: config.receiver_notifiers.clone(),
            claims: Some(Arc::new(claims)),
            silences: Some(Arc::clone(&worker.silences)),
        },
        Arc::clone(&worker.metrics),
        &worker.runtime,
    )?;
    let part_stop = stop.child_token();
    let lost = Arc::new(AtomicBool::new(false));
    let seq_of = Arc::new(Mutex::new(seq_of));
    let (feedback_tx, feedback) = mpsc::unbounded_channel();
    // Everything in the rebuilt local journal is in the alerts stream already.
    let stored_len = Arc::new(AtomicU64::new(journal_len));
    let (replica_tx, replica_rx) = std::sync::mpsc::sync_channel(256);
    let backlog = Arc::new(AtomicU64::new(UNKNOWN_BACKLOG));
    let (engine_tx, engine_rx) = mpsc::channel::<Input>(config.pipeline.queue);
    let replica = ReplicaWriter {
        waiting: Waiting {
            stream: Arc::clone(&backlog),
            engine: engine_tx.downgrade(),
        },
        stream: alert_stream,
        partition: partition.clone(),
        runtime: worker.runtime.clone(),
        seq_of: Arc::clone(&seq_of),
        stored_len: Arc::clone(&stored_len),
        notify: (!config.notifiers.is_empty()).then(|| notify.submitter()),
        stop: part_stop.clone(),
    };
    let replica_thread = std::thread::Builder::new()
        .name(format!("alerts:{partition}"))
        .spawn(move || replica.run(replica_rx))?;
    let pipeline = Pipeline::new(
        engine,
        state.clone(),
        Arc::clone(&alerts),
        Arc::clone(&worker.metrics),
        PipelineOptions {
            stdout: config.alerts.stdout,
            storm: config.alerts.storm.clone(),
            snapshot_every: config.snapshot.interval.std(),
            idle_after: config.engine.idle_after.std(),
            journal_size: Arc::new(AtomicU64::new(0)),
            journal_max: u64::MAX,
            notify: None,
            backlog: Backlog::default(),
            archiver: None,
            replica: Some(Box::new(Replica {
                jobs: replica_tx,
                part_stop: part_stop.clone(),
            })),
            sources: source_timings(config),
            source_label_keys: source_label_keys(config),
        },
        snapshot.as_ref(),
        feedback_tx,
    )
    .context("starting the partition's engine")?;
    let engine_thread = std::thread::Builder::new()
        .name(format!("engine:{partition}"))
        .spawn(move || pipeline.run(engine_rx))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consume(
        Feed {
            nats: nats.clone(),
            partition: partition.clone(),
            engine: engine_tx.clone(),
            metrics: Arc::clone(&worker.metrics),
            backlog: Arc::clone(&backlog),
            max_batch_bytes: max_batch_bytes(config),
        },
        start_seq,
        part_stop.clone(),
    ));
    {
        // The clock, while the engine has all the stream holds (see `consume`).
        let (tx, stop) = (engine_tx.clone(), part_stop.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        if backlog.load(Ordering::Relaxed) == 0 {
                            let _ = tx.try_send(Input::Tick);
                        }
                    }
                }
            }
        });
    }
    let renewing = tokio::spawn(renew(
        lease,
        worker.cluster.lease_ttl.std(),
        Arc::clone(&lost),
        part_stop.clone(),
    ));
    let uploading = tokio::spawn(upload_snapshots(Uploads {
        partition: partition.clone(),
        store,
        state: state.clone(),
        dir: dir.clone(),
        revision: resume.revision,
        alerts_after: resume.alerts_after,
        seq_of,
        stored_len,
        member: worker.member.clone(),
        lost: Arc::clone(&lost),
        part_stop: part_stop.clone(),
        metrics: Arc::clone(&worker.metrics),
        feedback,
    }));
    part_stop.cancelled().await;
    // The consumer and the clock stop first: everything they handed over is evaluated and
    // in the last snapshot.
    while tasks.join_next().await.is_some() {}
    let _ = engine_tx.send(Input::Shutdown).await;
    drop(engine_tx);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = engine_thread.join();
        // The engine is gone with its end of the replica's queue: the replica stores (or, with
        // the lease lost, gives up) what is left, then ends.
        let _ = replica_thread.join();
    })
    .await;
    let _ = uploading.await;
    notify.shutdown(Duration::from_secs(2)).await;
    let lease = renewing.await.ok().flatten();
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("another worker holds the partition now");
    }
    if let Some(lease) = lease {
        lease.release().await;
    }
    tracing::info!(partition, "partition released");
    Ok(())
}

/// Where a partition's consumer hands batches, and what it tells.
struct Feed {
    nats: Nats,
    partition: String,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    /// How many batches the stream holds for the partition beyond the last one read
    /// ([`UNKNOWN_BACKLOG`] while no consumer has said); 0: the engine has everything the
    /// stream holds (see [`consume`]).
    backlog: Arc<AtomicU64>,
    /// The largest batch a worker decompresses.
    max_batch_bytes: usize,
}

/// How long a consumer may stay silent before it is replaced: a consumer whose server died
/// says nothing, and the client notices only much later.
const CONSUMER_SILENCE: Duration = Duration::from_secs(3);

/// Under a backlog the engine's queue is full. Sending each batch as a slot frees up would
/// wake the consumer's task once per batch, on a core an engine thread needs; it waits for
/// this many free slots instead and fills them as batches come.
const SEND_GROUP: usize = 16;

/// Hands `input` to the engine: into a slot taken ahead if there is one, else into a free
/// slot, else into the first of [`SEND_GROUP`] slots waited for (the rest kept in `permits`
/// for the next batches). False once the engine is gone or `stop` is cancelled.
async fn send_grouped<'a>(
    engine: &'a mpsc::Sender<Input>,
    permits: &mut Option<mpsc::PermitIterator<'a, Input>>,
    input: Input,
    stop: &CancellationToken,
) -> bool {
    if let Some(permit) = permits.as_mut().and_then(Iterator::next) {
        permit.send(input);
        return true;
    }
    let input = match engine.try_send(input) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(input)) => input,
    };
    let group = SEND_GROUP.min(engine.max_capacity());
    let reserved = tokio::select! {
        _ = stop.cancelled() => return false,
        r = engine.reserve_many(group) => r,
    };
    let Ok(mut reserved) = reserved else {
        return false;
    };
    if let Some(permit) = reserved.next() {
        permit.send(input);
    }
    *permits = Some(reserved);
    true
}

/// The backlog while no consumer has told it: not caught up.
const UNKNOWN_BACKLOG: u64 = u64::MAX;

/// Feeds the partition's batches, from `last + 1` on, to the engine thread. An error (NATS
/// away), or silence, starts a new consumer from where this one stopped: the engine just
/// waits. `backlog` says whether the engine has everything the stream holds (0): only then may
/// quiet move event time on (a stalled consumer is not a quiet cluster).
async fn consume(feed: Feed, mut last: u64, stop: CancellationToken) {
    let Feed {
        nats,
        partition,
        engine,
        metrics,
        backlog,
        max_batch_bytes,
    } = feed;
    let gate = LogGate::per_minute();
    let bad_gate = LogGate::per_minute();
    loop {
        backlog.store(UNKNOWN_BACKLOG, Ordering::Relaxed);
        let consumer = nats
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: events_filter(&partition),
                deliver_policy: match last {
                    0 => DeliverPolicy::All,
                    n => DeliverPolicy::ByStartSequence {
                        start_sequence: n + 1,
                    },
                },
                // A batch is one message of up to a few MiB: pull a bounded number at a time, or the
                // server's buffer for this connection overflows (a slow consumer, whose
                // messages it drops and the consumer then has to fetch again).
                max_batch: 64,
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(mut c) => {
                let pending = c.info().await.map_or(UNKNOWN_BACKLOG, |i| i.num_pending);
                backlog.store(pending, Ordering::Relaxed);
                c.messages().await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match messages {
            Err(e) => {
                if let Some(held_back) = gate.admit() {
                    tracing::warn!(partition, error = %e, held_back, "cannot read the events stream; the partition waits");
                }
            }
            Ok(mut messages) => {
                // Slots of the engine's queue taken ahead (see `SEND_GROUP`).
                let mut permits: Option<mpsc::PermitIterator<'_, Input>> = None;
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = tokio::time::timeout(CONSUMER_SILENCE, messages.next()) => m,
                    };
                    let message = match next {
                        // Quiet, or a dead consumer: a fresh one tells which.
                        Err(_) => break,
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            if let Some(held_back) = gate.admit() {
                                tracing::warn!(partition, error = %e, held_back, "the events stream consumer failed; resuming after the last batch read");
                            }
                            break;
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    let Ok(info) = message.info() else { continue };
                    let seq = info.stream_sequence;
                    backlog.store(info.pending, Ordering::Relaxed);
                    if seq <= last {
                        continue;
                    }
                    let header = |name: &str| {
                        message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| Arc::<str>::from(v.as_str()))
                    };
                    let source = header(SOURCE_HEADER).unwrap_or_else(|| Arc::from("unknown"));
                    // Inflated by the engine thread (see `Encoding`).
                    let encoding = match header(ENCODING_HEADER).as_deref() {
                        None => Encoding::Plain,
                        Some("zstd") => Encoding::Zstd {
                            max: max_batch_bytes,
                        },
                        Some(other) => {
                            metrics.source(&source).rejected.inc();
                            if let Some(held_back) = bad_gate.admit() {
                                tracing::warn!(partition, sequence = seq, source = %source, encoding = other, held_back, "a batch in the events stream has an unknown encoding; skipped");
                            }
                            last = seq;
                            continue;
                        }
                    };
                    // Lines of a file: their place, for positions in errors.
                    let shape = header(LINES_HEADER)
                        .and_then(|v| {
                            let (line, offset) = v.split_once(' ')?;
                            Some(Shape::Lines {
                                first_line: line.parse().ok()?,
                                offset: offset.parse().ok()?,
                            })
                        })
                        .unwrap_or(Shape::Document);
                    let batch = Batch {
                        source,
                        origin: header(ORIGIN_HEADER),
                        data: message.payload.to_vec(),
                        encoding,
                        shape,
                        progress: Progress::Journal(seq),
                        received: Instant::now(),
                    };
                    if !send_grouped(&engine, &mut permits, Input::Batch(batch), &stop).await {
                        return;
                    }
                    last = seq;
                    metrics.cluster_evaluated(&partition, seq);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Renews the lease every third of the TTL until `stop`; sets `lost` and stops the partition
/// when another worker has it. Returns the lease, still held, unless it was lost.
async fn renew(
    mut lease: Lease,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Option<Lease> {
    let gate = LogGate::per_minute();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Some(lease),
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match lease.renew().await {
            Ok(Renewal::Held) => {}
            Ok(Renewal::Lost { holder }) => {
                tracing::error!(
                    partition = lease.partition(),
                    holder,
                    "the partition's lease is another worker's now: stopping it here"
                );
                lost.store(true, Ordering::Relaxed);
                stop.cancel();
                return None;
            }
            Err(e) => {
                if let Some(held_back) = gate.admit() {
                    tracing::warn!(partition = lease.partition(), error = %e, held_back, "cannot renew the lease (NATS away?); nobody can take it meanwhile");
                }
            }
        }
    }
}

/// Alerts the engine thread wrote, on their way to the alerts stream and then delivery.
struct ReplicaJob {
    alerts: Vec<Alert>,
    offsets: Vec<u64>,
    end: u64,
}

/// The engine thread's side: hands alerts to the replica thread (blocking only while that is
/// far behind), so evaluation does not wait for NATS's acknowledgement.
struct Replica {
    jobs: std::sync::mpsc::SyncSender<ReplicaJob>,
    /// Stops the partition if the replica thread is gone.
    part_stop: CancellationToken,
}

impl AlertReplica for Replica {
    fn replicate(&mut self, alerts: &[Alert], offsets: &[u64], end: u64) {
        let job = ReplicaJob {
            alerts: alerts.to_vec(),
            offsets: offsets.to_vec(),
            end,
        };
        if self.jobs.send(job).is_err() && !self.part_stop.is_cancelled() {
            // Its snapshots cannot be stored past these alerts either: give the partition up,
            // and whoever takes it next fires them again from the last stored snapshot.
            tracing::error!(
                "the alerts replica stopped; giving the partition up so these alerts are fired again by its next holder"
            );
            self.part_stop.cancel();
        }
    }
}

/// The replica thread: stores each job's alerts in the alerts stream (in order, retrying while
/// NATS is away), records their sequences, then hands them to delivery. Nothing is delivered
/// before it is stored.
struct ReplicaWriter {
    stream: AlertStream,
    partition: String,
    runtime: tokio::runtime::Handle,
    /// Local alert-journal offset → alerts-stream sequence.
    seq_of: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// The alert-journal length up to which every alert is stored.
    stored_len: Arc<AtomicU64>,
    notify: Option<crate::notify::Submitter>,
    stop: CancellationToken,
    /// The partition's batches not evaluated yet (see [`pace`]).
    waiting: Waiting,
}

impl ReplicaWriter {
    fn run(self, jobs: std::sync::mpsc::Receiver<ReplicaJob>) {
        let gate = LogGate::per_minute();
        let mut last_write: Option<Instant> = None;
        while let Ok(first) = jobs.recv() {
            let job = gather(
                first,
                &jobs,
                last_write.map_or_else(Instant::now, |t| t + pace(self.waiting.batches())),
            );
            last_write = Some(Instant::now());
            let seqs = loop {
                // The timer is made inside the runtime (this is a plain thread).
                let stored = self.runtime.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        self.stream.publish(&self.partition, &job.alerts),
                    )
                    .await
                });
                match stored {
                    Ok(Ok(seqs)) => break Some(seqs),
                    Ok(Err(e)) => {
                        if let Some(held_back) = gate.admit() {
                            tracing::error!(partition = %self.partition, error = %e, held_back, "cannot store alerts in the alerts stream; they wait (nothing is delivered before it is stored)");
                        }
                    }
                    Err(_) => {
                        if let Some(held_back) = gate.admit() {
                            tracing::error!(partition = %self.partition, held_back, "the alerts stream did not acknowledge within 10 s; the alerts wait");
                        }
                    }
                }
                if self.stop.is_cancelled() {
                    // Given up with the partition: its next holder fires them again.
                    break None;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            let Some(seqs) = seqs else { continue };
            if let Ok(mut map) = self.seq_of.lock() {
                map.extend(job.offsets.iter().copied().zip(seqs));
            }
            self.stored_len.store(job.end, Ordering::Release);
            if let Some(notify) = &self.notify {
                notify.submit(&job.alerts, &job.offsets, job.end);
            }
        }
    }
}

/// The least time between two writes of the replica. Every write is one replicated message,
/// and each costs the three NATS servers 1-2 ms of CPU together (the cluster bench measures
/// it: their goroutines wake on all three for every raft round), whatever its size. Under
/// load the engine hands over alerts every few milliseconds, one batch's at a time: written
/// one by one they kept a third of a core busy in NATS. Alerts that come while the last write
/// is younger than the pace wait for the rest of it and go together; an alert after a quiet
/// spell is written at once.
///
/// Live, the pace is 5 ms: at most 200 writes a second, and at most 5 ms added to an alert's
/// latency. While the partition works through a backlog (16 batches or more waiting, in the
/// stream or in the engine's queue: some 40 ms of evaluation at full speed, after a takeover
/// or in a worker that cannot keep up) its alerts are late by the backlog already, and the
/// CPU matters more: 100 ms, at most 10 writes a second.
fn pace(waiting: u64) -> Duration {
    if waiting >= 16 {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(5)
    }
}

/// What a partition has not evaluated yet, in batches: what its consumer has not handed on
/// (the stream's count of the messages after the last one received, so including those the
/// client holds), and the engine's queue. The queue counts: it holds up to
/// `pipeline.queue` batches, and with the stream alone the replica saw a backlog of 0 while
/// the engine still had 64 batches to go.
struct Waiting {
    stream: Arc<AtomicU64>,
    engine: mpsc::WeakSender<Input>,
}

impl Waiting {
    fn batches(&self) -> u64 {
        let queued = self
            .engine
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        self.stream
            .load(Ordering::Relaxed)
            .saturating_add(queued as u64)
    }
}

/// `first`, joined (in order) by the jobs that arrive before `not_before` and any already
/// waiting: one write instead of one per batch. It sleeps through the wait rather than waking
/// for each job (the engine hands one over per batch that fired): every wake-up is a context
/// switch on a core an engine thread needs. The channel holds 256 jobs, more than a pace's
/// worth of batches.
fn gather(
    mut first: ReplicaJob,
    jobs: &std::sync::mpsc::Receiver<ReplicaJob>,
    not_before: Instant,
) -> ReplicaJob {
    if let Some(left) = not_before.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    while let Ok(next) = jobs.try_recv() {
        first.alerts.extend(next.alerts);
        first.offsets.extend(next.offsets);
        first.end = next.end;
    }
    first
}

struct Uploads {
    partition: String,
    store: SnapshotStore,
    state: StateDir,
    dir: PathBuf,
    revision: Option<u64>,
    alerts_after: u64,
    seq_of: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// How far the replica has stored the alert journal (see [`ReplicaWriter`]).
    stored_len: Arc<AtomicU64>,
    member: String,
    lost: Arc<AtomicBool>,
    part_stop: CancellationToken,
    metrics: Arc<Metrics>,
    feedback: mpsc::UnboundedReceiver<Feedback>,
}

/// Stores each snapshot the engine thread writes in JetStream, until the engine stops.
async fn upload_snapshots(mut u: Uploads) {
    let mut previous: Option<String> = None;
    while let Some(f) = u.feedback.recv().await {
        let Feedback::Snapshotted { .. } = f else {
            continue;
        };
        if u.lost.load(Ordering::Relaxed) {
            continue;
        }
        // A copy: the writer may put the next snapshot in place meanwhile.
        let copy = u.dir.join("upload.msgpack");
        let read = std::fs::copy(u.state.snapshot_path(), &copy)
            .map_err(|e| e.to_string())
            .and_then(|_| std::fs::read(&copy).map_err(|e| e.to_string()))
            .and_then(|bytes| match crate::state::read_snapshot(&copy) {
                Ok(Some(s)) => Ok((bytes, s)),
                Ok(None) => Err("no snapshot file".into()),
                Err(e) => Err(e.to_string()),
            });
        let _ = std::fs::remove_file(&copy);
        let (bytes, snap) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(partition = %u.partition, error = %e, "cannot read the snapshot just written; not stored in JetStream");
                u.metrics.cluster_snapshot(&u.partition, false);
                continue;
            }
        };
        // A pointer past an alert not yet in the alerts stream would lose it: wait for the
        // replica to store every alert the snapshot's batches fired.
        let mut stopping_since: Option<Instant> = None;
        while u.stored_len.load(Ordering::Acquire) < snap.alert_journal_len
            && !u.lost.load(Ordering::Relaxed)
        {
            // Stopping: the replica gets a while to finish, then this snapshot is not stored
            // (the previous one stays, and the next holder replays from it).
            if u.part_stop.is_cancelled()
                && stopping_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_secs(10)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if u.stored_len.load(Ordering::Acquire) < snap.alert_journal_len {
            tracing::warn!(partition = %u.partition, "snapshot not stored: alerts it covers are not in the alerts stream yet");
            continue;
        }
        // Alerts from here on may fire again on replay (after the snapshot) or be undelivered
        // (after the delivery cursor): the next holder reads them again.
        let cursor = std::fs::read_to_string(u.dir.join("delivery").join("cursor"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let from = snap.alert_journal_len.min(cursor);
        if let Ok(mut map) = u.seq_of.lock() {
            match map.range(from..).next() {
                Some((_, seq)) => u.alerts_after = seq.saturating_sub(1),
                None => {
                    if let Some(last) = map.values().max() {
                        u.alerts_after = u.alerts_after.max(*last);
                    }
                }
            }
            // Older entries are never needed again.
            let keep = map.split_off(&from);
            *map = keep;
        }
        let pointer = Pointer {
            version: 0,
            object: String::new(),
            stream_seq: snap.journal_seq,
            alerts_after: u.alerts_after,
            member: u.member.clone(),
        };
        match u
            .store
            .save(&u.partition, pointer.clone(), bytes, u.revision)
            .await
        {
            Ok((revision, object)) => {
                u.revision = Some(revision);
                u.metrics.cluster_snapshot(&u.partition, true);
                tracing::debug!(partition = %u.partition, stream_seq = snap.journal_seq, alerts_after = u.alerts_after, "snapshot stored in JetStream");
                if let Some(old) = previous.take() {
                    u.store.forget(&old).await;
                }
                previous = Some(object);
            }
            Err(e) => {
                u.metrics.cluster_snapshot(&u.partition, false);
                tracing::error!(partition = %u.partition, error = %e, "cannot store the snapshot in JetStream (another worker took the partition, or NATS is away)");
                if matches!(e, crate::cluster::ClusterError::Fenced { .. }) {
                    u.lost.store(true, Ordering::Relaxed);
                    u.part_stop.cancel();
                }
            }
        }
    }
}

/// What a worker inflates a batch to at most: the largest `max_body` of the webhook sources,
/// and never less than [`FILE_BATCH_BOUND`], since a receiver's file source publishes batches
/// of whole lines whose size no webhook limit sets (a worker's config need not even list the
/// receivers' sources).
fn max_batch_bytes(config: &Config) -> usize {
    config
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Webhook(w) => Some(w.max_body.0 as usize),
            _ => None,
        })
        .fold(FILE_BATCH_BOUND, usize::max)
}

/// A file source's batch is up to 1 MiB of lines plus the rest of a line cut there; a batch
/// beyond this is counted as rejected, with its stream sequence in the log.
const FILE_BATCH_BOUND: usize = crate::source::tail::CUT_BOUND as usize;

/// A file source's entry in the positions bucket (key `<source>.<host>`).
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    /// Everything before this is in the stream.
    #[serde(flatten)]
    done: FileCheckpoint,
    /// The end of the batch from `done` that is being published: it may be in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publishing: Option<FileCheckpoint>,
}

/// A receiver's file source: follows the file as the single-process daemon does and
/// publishes each batch of lines, recording in the positions bucket first the batch it is
/// about to publish, then (unless the next batch's record follows at once) that it is done.
/// The follower waits while a batch or its record is not stored: nothing is skipped.
///
/// A receiver killed between the two records resumes at the batch's start and reads it back
/// to exactly its old end, however much the file grew: the same bytes from the same place
/// under the same message ID, which the stream stores once if it comes within
/// `cluster.duplicate_window` (docs/scale.md).
async fn publish_file(
    cfg: crate::source::FileConfig,
    forward: Arc<StreamForward>,
    host: String,
    conn: Connection,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let nats = loop {
        if let Some(n) = conn.get() {
            break n.clone();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let key = format!("{}.{}", cfg.name, crate::cluster::key_token(&host));
    let position = loop {
        match nats.positions.get(key.clone()).await {
            Ok(v) => break v.and_then(|b| serde_json::from_slice::<FilePosition>(&b).ok()),
            Err(e) => {
                tracing::warn!(source = %cfg.name, error = %e, "cannot read the file's position; trying again")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    tracing::info!(source = %cfg.name, path = %cfg.path.display(), resume = ?position, "following file, publishing to JetStream");
    let (checkpoint, begun) = match position {
        Some(p) => (Some(p.done), p.publishing),
        None => (None, None),
    };
    let (mut tx, mut rx) = mpsc::channel::<Input>(8);
    let follower = Follower::new(&cfg.name, &cfg.path, cfg.poll_interval.std())
        .count_truncations(metrics.file_truncations(&cfg.name))
        .first_batch_ends_at(begun);
    let flag = Arc::new(AtomicBool::new(false));
    let thread = {
        let (flag, start) = (Arc::clone(&flag), cfg.start_at);
        std::thread::Builder::new()
            .name(format!("file:{}", cfg.name))
            .spawn(move || follower.run(checkpoint, start, &mut tx, &flag))
    };
    let gate = LogGate::per_minute();
    let retry = |what: &'static str| Retry {
        stop: &stop,
        gate: &gate,
        source: &cfg.name,
        what,
    };
    let record = async |position: &FilePosition| {
        let value = serde_json::to_vec(position).unwrap_or_default();
        nats.positions
            .put(key.clone(), value.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let mut next = None;
    loop {
        let input = match next.take() {
            Some(i) => Some(i),
            None => tokio::select! {
                _ = stop.cancelled() => break,
                i = rx.recv() => i,
            },
        };
        let batch = match input {
            None => break,
            Some(Input::Batch(b)) => b,
            Some(_) => continue,
        };
        // A follower hands on lines of a file, each batch with the checkpoint after it.
        let (Shape::Lines { first_line, offset }, Progress::File(end)) =
            (batch.shape, batch.progress)
        else {
            continue;
        };
        let start = FileCheckpoint {
            offset,
            line: first_line.saturating_sub(1),
            ..end
        };
        let begun = FilePosition {
            done: start,
            publishing: Some(end),
        };
        if !retry("record the batch being published")
            .until_ok(|| record(&begun))
            .await
        {
            break;
        }
        let publish = || async {
            forward
                .publish(
                    &batch.source,
                    Some(&host),
                    &batch.data,
                    Some((first_line, offset)),
                )
                .await
                .map_err(|e| e.to_string())
        };
        if !retry("publish the file's lines").until_ok(publish).await {
            break;
        }
        // The next batch's record says this one is done; otherwise say it now.
        next = rx.try_recv().ok();
        if !matches!(next, Some(Input::Batch(_))) {
            let done = FilePosition {
                done: end,
                publishing: None,
            };
            if !retry("record the file's position")
                .until_ok(|| record(&done))
                .await
            {
                break;
            }
        }
    }
    flag.store(true, Ordering::Relaxed);
    drop(rx);
    if let Ok(t) = thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// A step of a file source that is tried again every 500 ms until it succeeds: the follower
/// waits meanwhile, so nothing is skipped.
struct Retry<'a> {
    stop: &'a CancellationToken,
    gate: &'a LogGate,
    source: &'a str,
    what: &'static str,
}

impl Retry<'_> {
    /// False if stopped before `attempt` succeeded.
    async fn until_ok<F, Fut>(self, mut attempt: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            match attempt().await {
                Ok(()) => return true,
                Err(e) => {
                    if let Some(held_back) = self.gate.admit() {
                        tracing::warn!(source = %self.source, error = %e, held_back, "cannot {}; the follower waits", self.what);
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;
    use crate::rules::Severity;

    fn job(rule: &str, offset: u64) -> ReplicaJob {
        ReplicaJob {
            alerts: vec![alert(rule, Severity::Info, &[])],
            offsets: vec![offset],
            end: offset + 1,
        }
    }

    #[test]
    fn a_file_position_reads_what_earlier_versions_wrote() {
        let cp = FileCheckpoint {
            dev: 1,
            ino: 2,
            offset: 300,
            line: 3,
            head_len: 10,
            head_crc: 7,
        };
        let old = serde_json::to_vec(&cp).unwrap();
        let read: FilePosition = serde_json::from_slice(&old).unwrap();
        assert_eq!(
            read,
            FilePosition {
                done: cp,
                publishing: None
            }
        );
        let begun = FilePosition {
            done: cp,
            publishing: Some(FileCheckpoint {
                offset: 900,
                line: 9,
                ..cp
            }),
        };
        let json = serde_json::to_vec(&begun).unwrap();
        assert_eq!(
            serde_json::from_slice::<FilePosition>(&json).unwrap(),
            begun
        );
    }

    #[test]
    fn what_waits_counts_the_engines_queue_beside_the_stream() {
        let (tx, mut rx) = mpsc::channel::<Input>(4);
        let stream = Arc::new(AtomicU64::new(10));
        let waiting = Waiting {
            stream: Arc::clone(&stream),
            engine: tx.downgrade(),
        };
        assert_eq!(waiting.batches(), 10);
        for _ in 0..3 {
            tx.try_send(Input::Tick).unwrap();
        }
        assert_eq!(waiting.batches(), 13);
        stream.store(0, Ordering::Relaxed);
        assert_eq!(
            waiting.batches(),
            3,
            "the stream is read, the engine is not done"
        );
        let _ = rx.try_recv();
        assert_eq!(waiting.batches(), 2);
        stream.store(UNKNOWN_BACKLOG, Ordering::Relaxed);
        assert_eq!(waiting.batches(), UNKNOWN_BACKLOG);
        drop(tx);
        stream.store(0, Ordering::Relaxed);
        assert_eq!(waiting.batches(), 0, "no engine, nothing queued");
    }

    #[test]
    fn the_replica_writes_what_came_within_the_pace_as_one_in_order() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(job("b", 1)).unwrap();
        tx.send(job("c", 2)).unwrap();
        let started = Instant::now();
        let joined = gather(job("a", 0), &rx, started + Duration::from_millis(50));
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "slept the pace"
        );
        let rules: Vec<&str> = joined.alerts.iter().map(|a| &*a.rule).collect();
        assert_eq!(rules, ["a", "b", "c"]);
        assert_eq!(joined.offsets, [0, 1, 2]);
        assert_eq!(joined.end, 3);
        // With the pace over, what waits is taken at once, and nothing more is waited for.
        tx.send(job("e", 4)).unwrap();
        let joined = gather(job("d", 3), &rx, Instant::now());
        assert_eq!(joined.offsets, [3, 4]);
        assert_eq!(joined.end, 5);
    }

    #[test]
    fn a_worker_inflates_file_batches_whatever_the_webhook_limit() {
        let config = |sources: &str| {
            crate::config::Config::parse(
                "c.yaml",
                &format!("cluster: {{ nats: [nats://127.0.0.1:4222], partitions: [prod] }}\nsources:\n{sources}"),
            )
            .unwrap()
        };
        let small = config("  - webhook: { name: audit, max_body: 1MiB }\n");
        assert_eq!(max_batch_bytes(&small), FILE_BATCH_BOUND);
        let large = config("  - webhook: { name: audit, max_body: 64MiB }\n");
        assert_eq!(max_batch_bytes(&large), 64 << 20);
        let none = config("  - file: { name: log, path: /var/log/a.log }\n");
        assert_eq!(max_batch_bytes(&none), FILE_BATCH_BOUND);
    }

    #[test]
    fn the_pace_is_short_live_and_long_behind() {
        assert_eq!(pace(0), Duration::from_millis(5));
        assert_eq!(pace(15), Duration::from_millis(5));
        assert_eq!(pace(16), Duration::from_millis(100));
    }
}
