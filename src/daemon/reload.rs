//! What follows its files while the daemon runs: the rule set (SIGHUP, or a rule file changed)
//! and credentials (tokens, password files, TLS material: SIGHUP, or a file changed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RuleSource;
use crate::metrics::Metrics;
use crate::rules::LoadOptions;
use crate::source::Input;

/// Reloads the rules on SIGHUP and, with `watch`, when their files change (checked every
/// `watch`). A rule set that does not load (or names unknown notifiers) is refused and the
/// running one stays.
/// `(rules, current)`: where the rules are read from, and the running set for other readers
/// (the console), replaced on each successful reload.
pub async fn rules_loop(
    (rules, current): (RuleSource, crate::rules::SharedRules),
    opts: LoadOptions,
    notify_names: std::collections::BTreeSet<String>,
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
                    crate::notify::check_rule_notifiers(&set, &notify_names).map(|()| set)
                })
            });
        match loaded {
            Ok(Ok(set)) => {
                metrics.rule_reload(true);
                tracing::info!(
                    reason = why,
                    rules = set.rules.len(),
                    "new rule set validated"
                );
                let set = Arc::new(set);
                if let Ok(mut c) = current.write() {
                    *c = Arc::clone(&set);
                }
                if tx.send(Input::Reload(set)).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                metrics.rule_reload(false);
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
pub async fn credentials_loop(
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
                    metrics.credential_reloaded(r.name(), true);
                    tracing::info!(
                        what = r.name(),
                        reason = if force { "SIGHUP" } else { "file changed" },
                        "reloaded"
                    );
                }
                Reload::Failed(e) => {
                    metrics.credential_reloaded(r.name(), false);
                    tracing::error!(what = r.name(), error = %e, "cannot reload; the previous one stays in effect");
                }
            }
        }
    }
}
