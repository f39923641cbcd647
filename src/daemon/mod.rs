//! `auditwatch run`: the long-running service. Wires the sources (webhook, files, stdin) to
//! the engine thread through bounded queues, persists what it accepts, reloads rules and
//! credentials, serves health and metrics, and shuts down without losing anything.
//!
//! [`run`] is three steps: [`recover`] what the previous process left, [`Daemon::start`]
//! everything, and [`Daemon::shutdown`] in an order that loses nothing (see [`shutdown`]).
//! Threads: the engine ([`pipeline`]), the journal writer ([`crate::state::writer`]), one per
//! followed file, and a small tokio runtime for everything that waits on the network or the
//! clock.

pub mod archiver;
pub mod cluster;
pub mod pipeline;
pub mod recover;
pub mod reload;
pub mod segments;
pub mod shutdown;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{Known, Metrics};
use crate::net::reload::Reloadable;
use crate::notify::{Notify, NotifyOptions};
use crate::rules::{LoadOptions, RuleSet, ScriptLimits};
use crate::source::tail::Follower;
use crate::source::webhook::{Webhook, WebhookDeps};
use crate::source::{Backlog, Batch, Encoding, Input, Progress, Shape, SourceConfig};
use crate::state::{AlertJournal, JournalHandle, SharedAlertJournal, StateDir};
use pipeline::{Feedback, Pipeline, PipelineOptions, SourceTiming};
use shutdown::Shutdown;

/// Where the rules come from.
#[derive(Debug, Clone)]
pub enum RuleSource {
    Paths(Vec<PathBuf>),
    /// The packs compiled into the binary (nothing to watch).
    Bundled,
}

impl RuleSource {
    /// The config's `rules`, else `rules/` if it exists, else the bundled packs.
    pub fn from_config(config: &Config) -> RuleSource {
        if !config.rules.is_empty() {
            return RuleSource::Paths(config.rules.clone());
        }
        let local = PathBuf::from("rules");
        if local.is_dir() {
            RuleSource::Paths(vec![local])
        } else {
            RuleSource::Bundled
        }
    }

    pub fn load(&self, opts: &LoadOptions) -> Result<RuleSet, crate::rules::LoadError> {
        match self {
            RuleSource::Paths(p) => crate::rules::load_paths(p, opts),
            RuleSource::Bundled => crate::bundled::load(opts),
        }
    }

    /// A cheap fingerprint of the rule files (names, sizes, modification times), to notice
    /// edits without reading them; `None` when they cannot be listed right now.
    fn stamp(&self) -> Option<Vec<(PathBuf, u64, Option<SystemTime>)>> {
        let RuleSource::Paths(paths) = self else {
            return None;
        };
        let files = crate::rules::collect_rule_files(paths).ok()?;
        Some(
            files
                .into_iter()
                .map(|f| {
                    let meta = std::fs::metadata(&f).ok();
                    let len = meta.as_ref().map_or(0, |m| m.len());
                    let modified = meta.and_then(|m| m.modified().ok());
                    (f, len, modified)
                })
                .collect(),
        )
    }
}

/// How `auditwatch run` was started.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Set damaged journal segments aside (keeping their readable records) instead of
    /// refusing to start.
    pub skip_corrupt: bool,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, rules: RuleSource, options: RunOptions) -> anyhow::Result<()> {
    if config.cluster.is_some() {
        return cluster::run(config, rules);
    }
    let metrics = Arc::new(Metrics::new());
    let (rule_set, load_opts) = load_rules(&config, &rules)?;
    tracing::info!(
        rules = rule_set.rules.len(),
        files = rule_set.files.len(),
        source = ?rules,
        "rules loaded"
    );
    prime_metrics(&metrics, &config, &rule_set);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("auditwatch-io")
        .build()?;
    let recovered = recover_state(&config, rule_set, &metrics, &runtime, options)?;
    let daemon = Daemon::start(config, rules, load_opts, recovered, metrics, &runtime)?;
    runtime.block_on(shutdown::termination_signal());
    daemon.shutdown(runtime)
}

/// Loads the rules with the config's script limits, and checks the notifiers their own
/// `notify` lists name.
fn load_rules(config: &Config, rules: &RuleSource) -> anyhow::Result<(RuleSet, LoadOptions)> {
    let load_opts = LoadOptions {
        script_limits: ScriptLimits {
            max_operations: config.engine.max_operations,
        },
    };
    let rule_set = rules.load(&load_opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::notify::check_rule_notifiers(&rule_set, &config.notify_names())
        .map_err(anyhow::Error::msg)?;
    Ok((rule_set, load_opts))
}

/// Creates every series whose labels the config and the components know, at zero.
fn prime_metrics(metrics: &Metrics, config: &Config, rule_set: &RuleSet) {
    let sources: Vec<(&str, bool)> = config
        .sources
        .iter()
        .map(|s| (s.name(), matches!(s, SourceConfig::Webhook(_))))
        .collect();
    let rules: Vec<(&str, &str)> = rule_set
        .rules
        .iter()
        .map(|r| (&*r.name, r.severity.as_str()))
        .collect();
    let notifiers: Vec<&str> = config.notifiers.keys().map(String::as_str).collect();
    let outcomes: Vec<&str> = crate::notify::ledger::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    metrics.prime(&Known {
        sources: &sources,
        rules: &rules,
        notifiers: &notifiers,
        engine_queue: config.pipeline.queue,
        notify_queue: config.delivery.queue,
        journal_max: config.journal.max_size.0,
        webhook_refusals: &crate::source::webhook::REFUSE_REASONS,
        http_refusals: if config.http.listen.is_some() {
            &crate::ops::REFUSE_REASONS
        } else {
            &[]
        },
        notification_outcomes: &outcomes,
        state_problems: &recover::PROBLEMS,
        credentials: &[],
    });
}

/// Each source's input format, lateness and label tag, by source name.
fn source_timings(config: &Config) -> std::collections::HashMap<String, SourceTiming> {
    config
        .sources
        .iter()
        .map(|s| {
            let timing = SourceTiming {
                format: s.input_format(),
                lateness: s.lateness(config.engine.lateness.0),
                tag: Arc::from(crate::window::source_tag(s.labels())),
            };
            (s.name().to_owned(), timing)
        })
        .collect()
}

/// The names of every label the sources carry, sorted.
fn source_label_keys(config: &Config) -> Vec<String> {
    let mut keys: Vec<String> = config
        .sources
        .iter()
        .flat_map(|s| s.labels().keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What start-up recovered: the engine thread, ready to run, and what the rest is built on.
struct Recovered {
    pipeline: Pipeline,
    journal: JournalHandle,
    journal_thread: std::thread::JoinHandle<()>,
    alerts: SharedAlertJournal,
    notify: Notify,
    backlog: Backlog,
    feedback: mpsc::UnboundedReceiver<Feedback>,
    /// Where each file source resumes.
    resume: std::collections::BTreeMap<String, crate::state::FileCheckpoint>,
    /// The journal position the archive holds (`u64::MAX` when archiving is off).
    archived_seq: u64,
}

/// Step 1: the state directory. Restores the engine from the snapshot, starts delivery of what
/// the alert journal holds undelivered, and replays the ingest journal past the snapshot.
fn recover_state(
    config: &Config,
    rule_set: RuleSet,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Runtime,
    options: RunOptions,
) -> anyhow::Result<Recovered> {
    let state = StateDir::new(&config.state_dir).context("state dir")?;
    let mut engine = Engine::new(Arc::new(rule_set), config.engine.options());
    let alerts = AlertJournal::open(&state.alerts_path(), config.journal.fsync)
        .with_context(|| format!("alert journal {}", state.alerts_path().display()))?;
    let alerts_len = alerts.len();
    let alerts = Arc::new(std::sync::Mutex::new(alerts));
    let archive = if config.archive.enabled {
        let archive = archiver::open(&config.archive, &config.state_dir)?;
        let position = archiver::ArchivePosition::of(&archive);
        Some((archive, position))
    } else {
        metrics.archive_ready(false);
        None
    };
    let recover::Recovered {
        snapshot,
        journal,
        pending,
    } = recover::recover(
        &state,
        &config.journal,
        alerts_len,
        options.skip_corrupt,
        archive
            .as_ref()
            .map(|(_, p)| p.as_ref().map_or(0, |p| p.journal_seq)),
        metrics,
    )?;
    let snapshot_seq = snapshot.as_ref().map_or(0, |s| s.journal_seq);
    if let Some(snap) = &snapshot {
        let restored = engine.restore(snap.engine.clone());
        tracing::info!(
            rules_restored = restored,
            journal_seq = snap.journal_seq,
            files = snap.files.len(),
            "state restored from snapshot"
        );
    }
    let notify = Notify::start(
        NotifyOptions {
            state_dir: config.state_dir.clone(),
            alert_journal: state.alerts_path(),
            alert_journal_len: alerts_len,
            notifiers: config.notifiers.clone(),
            route: config.route.clone(),
            delivery: config.delivery.clone(),
            silence_limits: config.silences.clone(),
            inhibit_rules: config.inhibit_rules.clone(),
            time_intervals: config.time_intervals.clone(),
            console_url: config.http.console_url(),
            receivers: config.receiver_notifiers.clone(),
            claims: None,
            silences: None,
        },
        Arc::clone(metrics),
        runtime.handle(),
    )?;
    if !config.notifiers.is_empty() {
        tracing::info!(
            notifiers = ?config.notifiers.iter().map(|(n, c)| format!("{n} ({})", c.kind())).collect::<Vec<_>>(),
            "alert delivery ready"
        );
    }
    let (journal, journal_thread) =
        crate::state::writer::start(journal, config.journal.max_size.0, Arc::clone(metrics))?;
    let (feedback_tx, feedback) = mpsc::unbounded_channel();
    let backlog = Backlog::default();
    let mut archived_seq = u64::MAX;
    let mut archived_files = None;
    let archiver = match archive {
        Some((archive, position)) => {
            // Nothing sealed yet (a new archive, or killed before its first seal): what the
            // journal still holds, and the files from their start.
            let position = position.unwrap_or_default();
            archived_seq = position.journal_seq;
            archived_files = Some(position.files.clone());
            tracing::info!(archive = %archive.dir().display(), head = archive.head(), journal_seq = position.journal_seq, "archiving every accepted event");
            let sealed = feedback_tx.clone();
            Some(archiver::Archiver::start(
                archive,
                position,
                config.archive.retention(),
                Arc::clone(metrics),
                (journal.size_gauge(), config.journal.max_size.0),
                Box::new(move |journal_seq| {
                    let _ = sealed.send(Feedback::Archived { journal_seq });
                }),
            )?)
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(
        engine,
        state,
        Arc::clone(&alerts),
        Arc::clone(metrics),
        PipelineOptions {
            stdout: config.alerts.stdout,
            storm: config.alerts.storm.clone(),
            snapshot_every: config.snapshot.interval.std(),
            idle_after: config.engine.idle_after.std(),
            journal_size: journal.size_gauge(),
            journal_max: config.journal.max_size.0,
            // Without notifiers there is nothing to hand over (no copies of every alert).
            notify: (!config.notifiers.is_empty()).then(|| notify.submitter()),
            backlog: backlog.clone(),
            archiver,
            replica: None,
            sources: source_timings(config),
            source_label_keys: source_label_keys(config),
        },
        snapshot.as_ref(),
        feedback_tx,
    )
    .context("reading the alert journal")?;
    // What was accepted but is not reflected in the snapshot yet.
    if !pending.is_empty() {
        tracing::info!(batches = pending.len(), "replaying the ingest journal");
        for (seq, payload) in pending {
            let record = crate::state::journal::decode_batch(&payload);
            let batch = Batch {
                source: Arc::from(record.source),
                origin: record.origin.map(Arc::from),
                data: record.body.to_vec(),
                encoding: Encoding::Plain,
                shape: Shape::Document,
                progress: Progress::Journal(seq),
                received: Instant::now(),
            };
            // Evaluated before the restart, not yet in a sealed segment: archived only.
            if seq <= snapshot_seq {
                pipeline.archive_only(batch);
            } else {
                pipeline.process(batch);
            }
        }
        pipeline.snapshot();
    }
    let resume = pipeline.resume_from(archived_files.as_ref());
    Ok(Recovered {
        pipeline,
        journal,
        journal_thread,
        alerts,
        notify,
        backlog,
        feedback,
        resume,
        archived_seq,
    })
}

/// The running daemon: what step 3 stops.
pub struct Daemon {
    shutdown: Shutdown,
    ready: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    file_threads: Vec<std::thread::JoinHandle<()>>,
    journal: JournalHandle,
    journal_thread: std::thread::JoinHandle<()>,
    engine_tx: mpsc::Sender<Input>,
    engine_thread: std::thread::JoinHandle<()>,
    notify: Notify,
}

impl Daemon {
    /// Step 2: the engine thread, the sources, the operations endpoint, the clock, compaction
    /// and the reload loops. Ready once this returns.
    fn start(
        config: Config,
        rules: RuleSource,
        load_opts: LoadOptions,
        recovered: Recovered,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Daemon> {
        let Recovered {
            pipeline,
            journal,
            journal_thread,
            alerts,
            notify,
            backlog,
            feedback,
            resume: checkpoints,
            archived_seq,
        } = recovered;
        let shared_rules: crate::rules::SharedRules =
            Arc::new(std::sync::RwLock::new(pipeline.rules()));
        let (engine_tx, engine_rx) = mpsc::channel::<Input>(config.pipeline.queue);
        let engine_thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || pipeline.run(engine_rx))?;
        let shutdown = Shutdown::default();
        let ready = Arc::new(AtomicBool::new(false));
        let mut daemon = Daemon {
            shutdown: shutdown.clone(),
            ready: Arc::clone(&ready),
            tasks: tokio::task::JoinSet::new(),
            file_threads: Vec::new(),
            journal: journal.clone(),
            journal_thread,
            engine_tx: engine_tx.clone(),
            engine_thread,
            notify,
        };
        let _guard = runtime.enter();
        let listeners = Listeners::of(&config);
        let mut reloadables: Vec<Arc<dyn Reloadable>> = Vec::new();
        for source in &config.sources {
            match source {
                SourceConfig::Webhook(cfg) => {
                    let hook = runtime.block_on(Webhook::bind(
                        cfg,
                        WebhookDeps {
                            handoff: crate::source::webhook::Handoff::Local {
                                engine: engine_tx.clone(),
                                journal: journal.clone(),
                            },
                            metrics: Arc::clone(&metrics),
                            max_connections: listeners.cap(cfg.connections.max),
                        },
                    ))?;
                    announce_webhook(cfg, &hook, &metrics, listeners.cap(cfg.connections.max))?;
                    reloadables.extend(hook.reloadables());
                    daemon.tasks.spawn(hook.serve(shutdown.token()));
                }
                SourceConfig::File(cfg) if cfg.path.is_dir() => {
                    let archive = config
                        .archive
                        .dir
                        .clone()
                        .unwrap_or_else(|| config.state_dir.join("archive"));
                    if config.archive.enabled
                        && std::fs::canonicalize(&cfg.path).ok()
                            == std::fs::canonicalize(&archive).ok()
                    {
                        anyhow::bail!(
                            "source {}: {} is this daemon's own archive; it would read what it writes",
                            cfg.name,
                            cfg.path.display()
                        );
                    }
                    let follower = segments::SegmentFollower::new(
                        &cfg.name,
                        &cfg.path,
                        cfg.poll_interval.std(),
                    );
                    let checkpoint = checkpoints.get(&cfg.name).copied();
                    let (start, mut sink, stop) =
                        (cfg.start_at, engine_tx.clone(), shutdown.flag());
                    tracing::info!(source = %cfg.name, dir = %cfg.path.display(), resume = ?checkpoint, "following archive segments");
                    daemon.file_threads.push(
                        std::thread::Builder::new()
                            .name(format!("segments:{}", cfg.name))
                            .spawn(move || follower.run(checkpoint, start, &mut sink, &stop))?,
                    );
                }
                SourceConfig::File(cfg) => {
                    let follower = Follower::new(&cfg.name, &cfg.path, cfg.poll_interval.std())
                        .count_truncations(metrics.file_truncations(&cfg.name));
                    let checkpoint = checkpoints.get(&cfg.name).copied();
                    let (start, mut sink, stop) =
                        (cfg.start_at, engine_tx.clone(), shutdown.flag());
                    tracing::info!(source = %cfg.name, path = %cfg.path.display(), resume = ?checkpoint, "following file");
                    daemon.file_threads.push(
                        std::thread::Builder::new()
                            .name(format!("file:{}", cfg.name))
                            .spawn(move || follower.run(checkpoint, start, &mut sink, &stop))?,
                    );
                }
                SourceConfig::Stdin(cfg) => {
                    let (name, mut sink) = (Arc::from(cfg.name.as_str()), engine_tx.clone());
                    // Not joined at shutdown: a read from a terminal cannot be interrupted.
                    std::thread::Builder::new()
                        .name("stdin".into())
                        .spawn(move || crate::source::stdin::read_stdin(name, &mut sink))?;
                }
            }
        }
        if let Some(addr) = config.http.listen {
            let ops = crate::ops::Ops {
                metrics: Arc::clone(&metrics),
                ready: Arc::clone(&ready),
                desk: crate::notify::silence::SilenceDesk {
                    silences: Arc::clone(&daemon.notify.silences),
                    journal: alerts,
                },
                backlog,
                max_lag: config.engine.max_lag.std(),
            };
            let console = config.http.console.then(|| crate::console::ConsoleOptions {
                metrics: Arc::clone(&metrics),
                desk: ops.desk.clone(),
                deliveries: Arc::clone(&daemon.notify.deliveries),
                rules: Arc::clone(&shared_rules),
                alerts_path: config.state_dir.join("alerts.jsonl"),
                archive_dir: config
                    .archive
                    .enabled
                    .then(|| archiver::archive_dir(&config.archive, &config.state_dir)),
                source_labels: config
                    .sources
                    .iter()
                    .map(|s| (s.name().to_owned(), s.labels().clone()))
                    .collect(),
                auth: None,
                allowed_hosts: Vec::new(),
                tls: false,
            });
            let cap = listeners.cap(config.http.connections.max);
            let serve =
                runtime.block_on(crate::ops::bind(addr, &config.http, ops, console, cap))?;
            reloadables.extend(serve.reloadables());
            daemon.tasks.spawn(serve.serve(shutdown.token()));
        }
        daemon.spawn_clock(&engine_tx);
        daemon.spawn_compaction(feedback, 0, archived_seq);
        if !reloadables.is_empty() {
            for r in &reloadables {
                metrics.credential_reloaded_primed(r.name());
            }
            let every = config.reload.interval.std();
            let stop = shutdown.token();
            let metrics = Arc::clone(&metrics);
            daemon
                .tasks
                .spawn(reload::credentials_loop(reloadables, every, metrics, stop));
        }
        let watch = config.reload.watch.then(|| config.reload.interval.std());
        daemon.tasks.spawn(reload::rules_loop(
            (rules, shared_rules),
            load_opts,
            config.notify_names(),
            engine_tx,
            metrics,
            watch,
            shutdown.token(),
        ));
        ready.store(true, Ordering::Relaxed);
        tracing::info!(state_dir = %config.state_dir.display(), "auditwatch running");
        Ok(daemon)
    }

    /// The clock: ticks move event time on while the stream is quiet.
    fn spawn_clock(&mut self, engine: &mpsc::Sender<Input>) {
        let (tx, stop) = (engine.clone(), self.shutdown.token());
        self.tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    // Never block the clock on a full queue: the next tick will do.
                    _ = every.tick() => { let _ = tx.try_send(Input::Tick); }
                }
            }
        });
    }

    /// The journal sheds the segments both a snapshot and the archive cover.
    fn spawn_compaction(
        &mut self,
        mut feedback: mpsc::UnboundedReceiver<Feedback>,
        mut snapshotted: u64,
        mut archived: u64,
    ) {
        let (journal, stop) = (self.journal.clone(), self.shutdown.token());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    f = feedback.recv() => {
                        match f {
                            Some(Feedback::Snapshotted { journal_seq }) => snapshotted = journal_seq,
                            Some(Feedback::Archived { journal_seq }) => archived = journal_seq,
                            None => break,
                        }
                        journal.compact(snapshotted.min(archived)).await;
                    }
                }
            }
        });
    }

    /// Step 3: stops in the order of [`shutdown`]: nothing accepted is lost.
    pub fn shutdown(self, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
        let Daemon {
            shutdown,
            ready,
            mut tasks,
            file_threads,
            journal,
            journal_thread,
            engine_tx,
            engine_thread,
            notify,
        } = self;
        tracing::info!("shutting down: no new requests; draining what was accepted");
        ready.store(false, Ordering::Relaxed);
        shutdown.begin();
        runtime.block_on(async {
            while tasks.join_next().await.is_some() {}
            for t in file_threads {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        });
        // Every webhook handler is gone: the journal writer drains and ends.
        drop(journal);
        let _ = journal_thread.join();
        // Everything accepted is queued ahead of this.
        if engine_tx.blocking_send(Input::Shutdown).is_err() {
            bail!("the engine thread ended early");
        }
        drop(engine_tx);
        if engine_thread.join().is_err() {
            bail!("the engine thread panicked");
        }
        // Every alert is in the alert journal and handed to delivery; give sends in flight a
        // moment, then stop (the rest goes out after the next start).
        runtime.block_on(notify.shutdown(Duration::from_secs(2)));
        runtime.shutdown_timeout(Duration::from_secs(1));
        tracing::info!("stopped");
        Ok(())
    }
}

/// The listeners the config opens, for connection caps that together fit the descriptor
/// limit with a reserve for state files.
struct Listeners {
    count: usize,
    fd_limit: Option<u64>,
}

impl Listeners {
    fn of(config: &Config) -> Listeners {
        let webhooks = config
            .sources
            .iter()
            .filter(|s| matches!(s, SourceConfig::Webhook(_)))
            .count();
        Listeners {
            count: webhooks + usize::from(config.http.listen.is_some()),
            fd_limit: crate::net::serve::fd_limit(),
        }
    }

    fn cap(&self, wanted: usize) -> usize {
        crate::net::serve::connection_cap(wanted, self.count, self.fd_limit)
    }
}

fn announce_webhook(
    cfg: &crate::source::webhook::WebhookConfig,
    hook: &Webhook,
    metrics: &Metrics,
    max_connections: usize,
) -> anyhow::Result<()> {
    metrics.set_connections_max(&cfg.name, max_connections);
    tracing::info!(
        source = %cfg.name,
        addr = %hook.local_addr()?,
        tls = cfg.tls.is_some(),
        client_certs = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        token = cfg.bearer_token_file.is_some(),
        max_connections,
        "webhook listening"
    );
    if !cfg.listen.ip().is_loopback()
        && cfg.bearer_token_file.is_none()
        && cfg.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
    {
        tracing::warn!(source = %cfg.name, addr = %cfg.listen, "this webhook accepts audit events from anyone who can reach it: set tls.client_ca or bearer_token_file");
    }
    Ok(())
}
