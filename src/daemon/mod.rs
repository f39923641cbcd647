//! `auditwatch run`: the long-running service. Wires the sources (webhook, files, stdin) to
//! the engine thread through bounded queues, persists what it accepts, reloads rules, serves
//! health and metrics, and shuts down without losing anything.
//!
//! Threads: the engine ([`pipeline`]), the journal writer ([`ingest`]), one per followed file,
//! and a small tokio runtime for everything that waits on the network or the clock.

pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod recover;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::notify::{Notify, NotifyOptions};
use crate::rules::{LoadOptions, RuleSet, ScriptLimits};
use crate::source::tail::{Follower, Sink};
use crate::source::webhook::{Webhook, WebhookDeps};
use crate::state::{AlertJournal, StateDir};
use ingest::JournalMsg;
use pipeline::{Batch, Feedback, Input, Pipeline, PipelineOptions, Progress, Shape};

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
    /// edits without reading them.
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
    let metrics = Arc::new(Metrics::new());
    let load_opts = LoadOptions {
        script_limits: ScriptLimits {
            max_operations: config.engine.max_operations,
        },
    };
    let rule_set = rules.load(&load_opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::notify::check_rule_notifiers(&rule_set, &config.notifiers)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        rules = rule_set.rules.len(),
        files = rule_set.files.len(),
        source = ?rules,
        "rules loaded"
    );
    {
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
        metrics.prime(&crate::metrics::Known {
            sources: &sources,
            rules: &rules,
            notifiers: &notifiers,
            engine_queue: config.pipeline.queue,
            notify_queue: config.delivery.queue,
            journal_max: config.journal.max_size.0,
        });
    }
    let state = StateDir::new(&config.state_dir).context("state dir")?;
    let mut engine = Engine::new(Arc::new(rule_set), config.engine_options());
    let alerts = AlertJournal::open(&state.alerts_path(), config.journal.fsync)
        .with_context(|| format!("alert journal {}", state.alerts_path().display()))?;
    let alerts_len = alerts.len();
    let alerts = Arc::new(std::sync::Mutex::new(alerts));
    let recover::Recovered {
        snapshot,
        journal,
        pending,
    } = recover::recover(
        &state,
        &config.journal,
        alerts_len,
        options.skip_corrupt,
        &metrics,
    )?;
    if let Some(snap) = &snapshot {
        let restored = engine.restore(snap.engine.clone());
        tracing::info!(
            rules_restored = restored,
            journal_seq = snap.journal_seq,
            files = snap.files.len(),
            "state restored from snapshot"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("auditwatch-io")
        .build()?;
    let notify = Notify::start(
        NotifyOptions {
            state_dir: config.state_dir.clone(),
            alert_journal: state.alerts_path(),
            alert_journal_len: alerts_len,
            notifiers: config.notifiers.clone(),
            route: config.route.clone(),
            delivery: config.delivery.clone(),
            silence_limits: config.silences.clone(),
        },
        Arc::clone(&metrics),
        runtime.handle(),
    )?;
    if !config.notifiers.is_empty() {
        tracing::info!(
            notifiers = ?config.notifiers.iter().map(|(n, c)| format!("{n} ({})", c.kind())).collect::<Vec<_>>(),
            "alert delivery ready"
        );
    }
    let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
    let backlog = pipeline::Backlog::default();
    let journal_size = Arc::new(AtomicU64::new(0));
    let mut pipeline = Pipeline::new(
        engine,
        state.clone(),
        Arc::clone(&alerts),
        Arc::clone(&metrics),
        PipelineOptions {
            stdout: config.alerts.stdout,
            snapshot_every: config.snapshot.interval.std(),
            idle_after: config.engine.idle_after.std(),
            lateness: config.engine.lateness.0,
            journal_size: Arc::clone(&journal_size),
            journal_max: config.journal.max_size.0,
            // Without notifiers there is nothing to hand over (no copies of every alert).
            notify: (!config.notifiers.is_empty()).then(|| notify.submitter()),
            backlog: backlog.clone(),
            formats: config
                .sources
                .iter()
                .map(|s| (s.name().to_owned(), s.input_format()))
                .collect(),
        },
        snapshot.as_ref(),
        feedback_tx,
    )
    .context("reading the alert journal")?;

    // Replay what was accepted but not yet reflected in the snapshot.
    if !pending.is_empty() {
        tracing::info!(batches = pending.len(), "replaying the ingest journal");
        for (seq, payload) in pending {
            let (source, body) = ingest::decode_payload(&payload);
            pipeline.process(Batch {
                source: Arc::from(source),
                data: body.to_vec(),
                shape: Shape::Document,
                progress: Progress::Journal(seq),
                received: Instant::now(),
            });
        }
        pipeline.snapshot();
    }
    let checkpoints = pipeline.file_checkpoints().clone();

    let (engine_tx, engine_rx) = mpsc::channel::<Input>(config.pipeline.queue);
    let (journal_tx, journal_rx) = mpsc::channel(1024);
    journal_size.store(journal.size(), Ordering::Relaxed);
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || pipeline.run(engine_rx))?;
    let journal_thread = {
        let size = Arc::clone(&journal_size);
        let metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || ingest::run(journal, journal_rx, size, metrics))?
    };

    let stop = CancellationToken::new();
    let stop_files = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));

    // Connection caps that together fit the descriptor limit, with a reserve for state files.
    let listeners = config
        .sources
        .iter()
        .filter(|s| matches!(s, SourceConfig::Webhook(_)))
        .count()
        + usize::from(config.http.listen.is_some());
    let fd_limit = crate::net::serve::fd_limit();
    let cap = |wanted: usize| crate::net::serve::connection_cap(wanted, listeners, fd_limit);

    let result: anyhow::Result<()> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut file_threads = Vec::new();
        let mut reloadables: Vec<Arc<dyn crate::net::reload::Reloadable>> = Vec::new();
        for source in &config.sources {
            match source {
                SourceConfig::Webhook(cfg) => {
                    let hook = Webhook::bind(
                        cfg,
                        WebhookDeps {
                            engine: engine_tx.clone(),
                            journal: journal_tx.clone(),
                            journal_size: Arc::clone(&journal_size),
                            journal_max: config.journal.max_size.0,
                            metrics: Arc::clone(&metrics),
                            max_connections: cap(cfg.connections.max),
                        },
                    )
                    .await?;
                    let max_connections = cap(cfg.connections.max);
                    metrics
                        .connections_max
                        .with_label_values(&[&cfg.name])
                        .set(max_connections as i64);
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
                    reloadables.extend(hook.reloadables());
                    tasks.spawn(hook.serve(stop.clone()));
                }
                SourceConfig::File(cfg) => {
                    let follower = Follower::new(&cfg.name, &cfg.path, cfg.poll_interval.std())
                        .count_truncations(metrics.file_truncations.with_label_values(&[&cfg.name]));
                    let checkpoint = checkpoints.get(&cfg.name).copied();
                    let start = cfg.start_at;
                    let mut sink = engine_tx.clone();
                    let stop = Arc::clone(&stop_files);
                    tracing::info!(source = %cfg.name, path = %cfg.path.display(), resume = ?checkpoint, "following file");
                    file_threads.push(
                        std::thread::Builder::new()
                            .name(format!("file:{}", cfg.name))
                            .spawn(move || follower.run(checkpoint, start, &mut sink, &stop))?,
                    );
                }
                SourceConfig::Stdin(cfg) => {
                    let name: Arc<str> = Arc::from(cfg.name.as_str());
                    let mut sink = engine_tx.clone();
                    // Not joined at shutdown: a read from a terminal cannot be interrupted.
                    std::thread::Builder::new()
                        .name("stdin".into())
                        .spawn(move || read_stdin(name, &mut sink))?;
                }
            }
        }
        if let Some(addr) = config.http.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("http.listen {addr}"))?;
            let tls = config
                .http
                .tls
                .as_ref()
                .map(|t| crate::net::tls::reloading("http", t))
                .transpose()
                .map_err(|e| anyhow::anyhow!("http.tls: {e}"))?;
            let auth = crate::net::auth::Authenticator::new("http", &config.http.auth)
                .map_err(|e| anyhow::anyhow!("http.auth: {e}"))?;
            reloadables.extend(tls.iter().map(|t| Arc::clone(t) as Arc<dyn crate::net::reload::Reloadable>));
            reloadables.extend(auth.iter().flat_map(|a| a.reloadables()));
            let mut limits = config.http.connections.limits();
            limits.max_connections = cap(limits.max_connections);
            metrics
                .connections_max
                .with_label_values(&["http"])
                .set(limits.max_connections as i64);
            tracing::info!(
                addr = %listener.local_addr()?,
                tls = tls.is_some(),
                auth = auth.is_some(),
                max_connections = limits.max_connections,
                "metrics and health on /metrics, /healthz, /readyz; silences API on /api/v1/silences"
            );
            if auth.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(%addr, "http.insecure: the silences API is open to anyone who can reach this address");
            }
            if auth.as_ref().is_some_and(|a| a.offers_basic()) && tls.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(%addr, "basic auth over plain HTTP: passwords cross the network in clear; set http.tls");
            }
            http::prime_metrics(&metrics);
            let guard = Arc::new(http::Guard {
                auth,
                allowed_hosts: config.http.allowed_hosts.clone(),
                metrics: Arc::clone(&metrics),
            });
            let app = http::router(
                http::Ops {
                    metrics: Arc::clone(&metrics),
                    ready: Arc::clone(&ready),
                    silences: Arc::clone(&notify.silences),
                    journal: Arc::clone(&alerts),
                    backlog: backlog.clone(),
                    max_lag: config.engine.max_lag.std(),
                },
                Arc::clone(&guard),
            );
            let events: Arc<dyn crate::net::serve::ConnEvents> = guard;
            tasks.spawn(crate::net::serve::serve(
                listener,
                tls,
                app,
                limits,
                events,
                stop.clone(),
                Duration::from_secs(5),
            ));
        }

        // Tokens, passwords and certificates follow their files.
        for r in &reloadables {
            for result in ["ok", "error"] {
                metrics
                    .credential_reloads
                    .with_label_values(&[r.name(), result]);
            }
        }
        if !reloadables.is_empty() {
            let every = config.reload.interval.std();
            let metrics = Arc::clone(&metrics);
            let stop = stop.clone();
            tasks.spawn(credentials_loop(reloadables, every, metrics, stop));
        }

        // The clock: ticks move event time on while the stream is quiet.
        {
            let tx = engine_tx.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => {
                            // Never block the clock on a full queue: the next tick will do.
                            let _ = tx.try_send(Input::Tick);
                        }
                    }
                }
            });
        }

        // Snapshots let the journal shed the segments they cover.
        {
            let journal_tx = journal_tx.clone();
            let stop = stop.clone();
            let mut feedback_rx = feedback_rx;
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        feedback = feedback_rx.recv() => match feedback {
                            Some(Feedback::Snapshotted { journal_seq }) => {
                                let _ = journal_tx.send(JournalMsg::Compact(journal_seq)).await;
                            }
                            None => break,
                        },
                    }
                }
            });
        }

        // Rule reloads: SIGHUP, and file changes when watching.
        {
            let tx = engine_tx.clone();
            let stop = stop.clone();
            let rules = rules.clone();
            let metrics = Arc::clone(&metrics);
            let watch = config.reload.watch.then(|| config.reload.interval.std());
            let notifiers = config.notifiers.clone();
            tasks.spawn(reload_loop(rules, load_opts, notifiers, tx, metrics, watch, stop));
        }

        drop(journal_tx);
        ready.store(true, Ordering::Relaxed);
        tracing::info!(state_dir = %config.state_dir.display(), "auditwatch running");
        wait_for_termination().await;
        tracing::info!("shutting down: no new requests; draining what was accepted");
        ready.store(false, Ordering::Relaxed);

        stop.cancel();
        stop_files.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        for t in file_threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    });
    // Every webhook handler is gone: the journal thread drains and ends.
    drop(journal_size);
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
    result?;
    tracing::info!("stopped");
    Ok(())
}

async fn reload_loop(
    rules: RuleSource,
    opts: LoadOptions,
    notifiers: std::collections::BTreeMap<String, crate::notify::config::NotifierConfig>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    watch: Option<Duration>,
    stop: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut stamp = rules.stamp();
    let mut every = tokio::time::interval(watch.unwrap_or(Duration::from_secs(3600)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => "SIGHUP",
            _ = every.tick(), if watch.is_some() => {
                // Files that cannot be listed right now (out of descriptors, a directory
                // being replaced) are not a change: look again at the next tick.
                let Some(now) = rules.stamp() else { continue };
                if Some(&now) == stamp.as_ref() { continue; }
                stamp = Some(now);
                "rule files changed"
            }
        };
        let loader = rules.clone();
        let opts = opts.clone();
        let loaded = tokio::task::spawn_blocking(move || loader.load(&opts))
            .await
            .map(|r| {
                r.map_err(|e| e.to_string()).and_then(|set| {
                    crate::notify::check_rule_notifiers(&set, &notifiers).map(|()| set)
                })
            });
        match loaded {
            Ok(Ok(set)) => {
                metrics.rule_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    reason = why,
                    rules = set.rules.len(),
                    "new rule set validated"
                );
                if tx.send(Input::Reload(Arc::new(set))).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                metrics.rule_reloads.with_label_values(&["invalid"]).inc();
                for line in e.to_string().lines() {
                    tracing::error!(reason = why, error = %line, "rule reload refused; the previous rules keep running");
                }
            }
            Err(e) => tracing::error!(error = %e, "rule reload task failed"),
        }
    }
}

/// Reloads tokens, password files and TLS material when their files change (checked every
/// `every`) and on SIGHUP. A file that does not load keeps the previous value in effect.
async fn credentials_loop(
    reloadables: Vec<Arc<dyn crate::net::reload::Reloadable>>,
    every: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    use crate::net::reload::Reload;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let force = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
        };
        for r in &reloadables {
            // Reading a few small files: cheap enough for the runtime thread.
            match r.check(force) {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    metrics
                        .credential_reloads
                        .with_label_values(&[r.name(), "ok"])
                        .inc();
                    tracing::info!(
                        what = r.name(),
                        reason = if force { "SIGHUP" } else { "file changed" },
                        "reloaded"
                    );
                }
                Reload::Failed(e) => {
                    metrics
                        .credential_reloads
                        .with_label_values(&[r.name(), "error"])
                        .inc();
                    tracing::error!(what = r.name(), error = %e, "cannot reload; the previous one stays in effect");
                }
            }
        }
    }
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Reads stdin line-wise into the engine until EOF.
fn read_stdin(name: Arc<str>, sink: &mut dyn Sink) {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut partial: Vec<u8> = Vec::new();
    let (mut line, mut offset) = (1u64, 0u64);
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "stdin read failed");
                break;
            }
        };
        partial.extend_from_slice(&buf[..n]);
        let Some(last) = memchr::memrchr(b'\n', &partial) else {
            continue;
        };
        let rest = partial.split_off(last + 1);
        let data = std::mem::replace(&mut partial, rest);
        let lines = memchr::memchr_iter(b'\n', &data).count() as u64;
        let len = data.len() as u64;
        let batch = Batch {
            source: Arc::clone(&name),
            data,
            shape: Shape::Lines {
                first_line: line,
                offset,
            },
            progress: Progress::None,
            received: Instant::now(),
        };
        if !sink.send(Input::Batch(batch)) {
            return;
        }
        line += lines;
        offset += len;
    }
    if !partial.trim_ascii().is_empty() {
        sink.send(Input::Batch(Batch {
            source: Arc::clone(&name),
            data: partial,
            shape: Shape::Lines {
                first_line: line,
                offset,
            },
            progress: Progress::None,
            received: Instant::now(),
        }));
    }
    tracing::info!(source = %name, "stdin closed");
}
