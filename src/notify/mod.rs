//! Alert delivery: alerts → routes → silences → groups → per-notifier queues → receivers.
//!
//! The engine thread hands every alert it wrote to the alert journal to the **dispatcher**, a
//! plain thread that never touches the network: it routes, checks silences, groups
//! (`group_wait`, `group_interval`, `repeat_interval` as in Alertmanager) and offers finished
//! notifications to each notifier's bounded queue. One async **worker** per notifier sends,
//! retrying transient failures with exponential backoff and jitter, so a slow SMTP server
//! delays neither webhooks nor evaluation. Outcomes come back to the dispatcher, which records
//! them in the [`ledger::Ledger`]; alerts without an outcome are routed again after a restart.
//! Metrics notifiers are updated by the dispatcher directly.

pub mod claim;
pub mod config;
pub mod format;
pub mod inhibit;
pub mod interval;
pub mod ledger;
pub mod receivers;
pub mod recent;
pub mod route;
pub mod send;
pub mod silence;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::metrics::Metrics;
use crate::state::alerts::read_alerts;

use config::{DeliveryConfig, NotifierConfig, RouteConfig};
use format::Notification;
use ledger::{Entry, Ledger, Outcome};
use route::{Grouping, Router};
use send::{SendError, Sender};
use silence::Silences;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifier {name:?}: {message}")]
    Notifier { name: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Silences(#[from] silence::SilenceError),
}

/// Alerts whose outcomes the console can show.
const RECENT_DELIVERIES: usize = 20_000;

/// Everything delivery needs from the daemon.
pub struct NotifyOptions {
    pub state_dir: PathBuf,
    pub alert_journal: PathBuf,
    /// Alert-journal length when the daemon started: alerts before it are recovered here.
    pub alert_journal_len: u64,
    pub notifiers: BTreeMap<String, NotifierConfig>,
    pub route: RouteConfig,
    pub delivery: DeliveryConfig,
    pub silence_limits: silence::SilenceLimits,
    pub inhibit_rules: Vec<inhibit::InhibitRuleConfig>,
    pub time_intervals: Vec<interval::TimeIntervalConfig>,
    /// The console's base URL, for links in notifications (`generatorURL`).
    pub console_url: Option<String>,
    /// Each Alertmanager-style receiver's notifiers, for rules' own `notify` lists.
    pub receivers: BTreeMap<String, Vec<String>>,
    /// A ledger shared with other processes (cluster mode), consulted before every send.
    pub claims: Option<Arc<dyn claim::DeliveryClaims>>,
    /// Silences shared with other deliveries in this process (cluster mode: one per
    /// partition); `None`: opened from `state_dir`.
    pub silences: Option<Arc<Mutex<Silences>>>,
}

enum Msg {
    /// Alerts just written to the alert journal at these offsets; `end` is its new length.
    Alerts {
        alerts: Vec<(u64, Arc<Alert>)>,
        end: u64,
    },
    /// A worker finished with these alerts.
    Settled {
        notifier: Arc<str>,
        alerts: Vec<(u64, String)>,
        outcome: Outcome,
        /// A `repeat_interval` reminder: the alerts were settled before.
        repeat: bool,
    },
    Stop,
}

/// The daemon's handle on delivery.
pub struct Notify {
    tx: std_mpsc::SyncSender<Msg>,
    pub silences: Arc<Mutex<Silences>>,
    /// The latest alerts' outcomes per notifier, for the console.
    pub deliveries: recent::SharedDeliveries,
    dispatcher: Option<std::thread::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Notify {
    /// Opens the ledger and silences, builds every notifier, starts the workers on `runtime`
    /// and the dispatcher thread, and queues whatever the previous run left undelivered.
    pub fn start(
        opts: NotifyOptions,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Notify, NotifyError> {
        let dir = opts.state_dir.join("delivery");
        let ledger = Ledger::open(&dir, opts.delivery.fsync).map_err(|source| NotifyError::Io {
            path: dir.clone(),
            source,
        })?;
        let silences = match &opts.silences {
            Some(shared) => Arc::clone(shared),
            None => Arc::new(Mutex::new(Silences::open(
                &opts.state_dir.join("silences.json"),
                opts.silence_limits.clone(),
            )?)),
        };
        let deliveries = Arc::new(Mutex::new(recent::RecentDeliveries::new(RECENT_DELIVERIES)));
        if let Ok(mut d) = deliveries.lock() {
            for e in ledger.entries() {
                d.record(
                    &e.id,
                    recent::Delivery {
                        notifier: e.n.clone(),
                        outcome: e.o,
                        because: None,
                    },
                );
            }
        }
        let (tx, rx) = std_mpsc::sync_channel::<Msg>(1024);
        let stop = CancellationToken::new();
        let mut queues = HashMap::new();
        let mut metric_notifiers = HashMap::new();
        let mut workers = Vec::new();
        for (name, config) in &opts.notifiers {
            let name: Arc<str> = Arc::from(name.as_str());
            if let NotifierConfig::Metrics(m) = config {
                metric_notifiers.insert(name, m.active_for.std());
                continue;
            }
            let sender = send::build(
                config,
                opts.delivery.timeout.std(),
                opts.console_url.as_deref(),
            )
            .map_err(|message| NotifyError::Notifier {
                name: name.to_string(),
                message,
            })?
            .ok_or_else(|| NotifyError::Notifier {
                name: name.to_string(),
                message: "cannot send".into(),
            })?;
            let (qtx, qrx) = mpsc::channel::<Notification>(opts.delivery.queue.max(1));
            queues.insert(name.clone(), qtx);
            workers.push(runtime.spawn(worker(
                name,
                sender,
                qrx,
                tx.clone(),
                SendPolicy {
                    retry: opts.delivery.retry.clone(),
                    claims: opts.claims.clone(),
                },
                Arc::clone(&metrics),
                stop.clone(),
            )));
        }
        let intervals: Vec<Arc<interval::TimeInterval>> = opts
            .time_intervals
            .iter()
            .filter_map(|t| interval::TimeInterval::compile(t).ok().map(Arc::new))
            .collect();
        let inhibit_rules = opts
            .inhibit_rules
            .iter()
            .filter_map(|r| r.compile().ok())
            .collect();
        let resolve_timeout = opts.delivery.resolve_timeout.std();
        let mut dispatcher = Dispatcher {
            router: Router::new(&opts.route, &intervals).with_receivers(opts.receivers.clone()),
            inhibitor: inhibit::Inhibitor::new(inhibit_rules, resolve_timeout),
            resolve_timeout,
            queues,
            metric_notifiers,
            active: HashMap::new(),
            groups: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_by_notifier: HashMap::new(),
            end: opts.alert_journal_len,
            ledger,
            silences: Arc::clone(&silences),
            deliveries: Arc::clone(&deliveries),
            metrics,
            max_pending: opts.delivery.max_pending.max(1),
            last_notified: HashMap::new(),
        };
        let recovered = dispatcher.recover(&opts.alert_journal, opts.alert_journal_len);
        if recovered > 0 {
            tracing::info!(
                alerts = recovered,
                "delivery: re-queued alerts not delivered before the last stop"
            );
        }
        let handle = std::thread::Builder::new()
            .name("notify-dispatch".into())
            .spawn(move || dispatcher.run(rx))
            .map_err(|source| NotifyError::Io { path: dir, source })?;
        Ok(Notify {
            tx,
            silences,
            deliveries,
            dispatcher: Some(handle),
            workers,
            stop,
        })
    }

    /// What the engine thread uses to hand over alerts.
    pub fn submitter(&self) -> Submitter {
        Submitter(self.tx.clone())
    }

    /// Stops the workers (an in-flight send gets up to `grace`), records the outcomes they
    /// reported, then stops the dispatcher. Whatever is not delivered stays in the alert
    /// journal without an outcome and is sent after a restart.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        for w in self.workers.drain(..) {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                break;
            }
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(d) = self.dispatcher.take() {
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
    }
}

/// Hands alerts to the dispatcher.
#[derive(Clone)]
pub struct Submitter(std_mpsc::SyncSender<Msg>);

impl Submitter {
    /// Alerts just written to the alert journal at `offsets`; `end` is its length after them.
    /// Blocks only while the dispatcher is far behind (it never waits on the network).
    pub fn submit(&self, alerts: &[Alert], offsets: &[u64], end: u64) {
        let alerts = offsets
            .iter()
            .copied()
            .zip(alerts.iter().cloned().map(Arc::new))
            .collect();
        if self.0.send(Msg::Alerts { alerts, end }).is_err() {
            tracing::error!(
                "delivery dispatcher stopped; alerts stay in the alert journal until the next start"
            );
        }
    }
}

/// Builds every notifier once (templates compile, secrets and CA files read), for
/// `auditwatch run --check`.
pub fn check_notifiers(
    notifiers: &BTreeMap<String, NotifierConfig>,
    delivery: &DeliveryConfig,
) -> Result<(), String> {
    for (name, n) in notifiers {
        send::build(n, delivery.timeout.std(), None)
            .map_err(|e| format!("notifier {name:?}: {e}"))?;
    }
    Ok(())
}

/// Checks that every rule's own `notify` names a configured receiver or notifier (`known`,
/// see `Config::notify_names`).
pub fn check_rule_notifiers(
    rules: &crate::rules::RuleSet,
    known: &std::collections::BTreeSet<String>,
) -> Result<(), String> {
    for rule in &rules.rules {
        for name in rule.notify.iter().flat_map(|n| n.iter()) {
            if !known.contains(name) {
                return Err(format!(
                    "{}: rule {:?}: notify: unknown receiver {name:?} (the config defines: {})",
                    rule.origin,
                    rule.name,
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(())
}

struct GroupState {
    notifier: Arc<str>,
    key: String,
    labels: Vec<(String, String)>,
    grouping: Grouping,
    pending: Vec<(u64, Arc<Alert>)>,
    /// Alerts sent from this group that still count as firing (for `repeat_interval`), with
    /// their journal offsets and when they were sent.
    firing: Vec<(u64, Arc<Alert>, Instant)>,
    /// When the pending alerts may go out, or the next reminder is due.
    due: Option<Instant>,
    last_flush: Option<Instant>,
}

struct Dispatcher {
    router: Router,
    inhibitor: inhibit::Inhibitor,
    /// How long a sent alert counts as firing.
    resolve_timeout: Duration,
    queues: HashMap<Arc<str>, mpsc::Sender<Notification>>,
    metric_notifiers: HashMap<Arc<str>, Duration>,
    /// Metric alerts: (rule, severity) → active until.
    active: HashMap<(Arc<str>, &'static str), Instant>,
    /// (notifier, route, group key) → group.
    groups: BTreeMap<(Arc<str>, usize, String), GroupState>,
    /// Alert-journal offset → notifiers still to settle it.
    pending: BTreeMap<u64, u32>,
    pending_by_notifier: HashMap<Arc<str>, i64>,
    /// Alert-journal length covered by what the dispatcher has seen.
    end: u64,
    ledger: Ledger,
    silences: Arc<Mutex<Silences>>,
    deliveries: recent::SharedDeliveries,
    metrics: Arc<Metrics>,
    max_pending: usize,
    /// (notifier, rule, group) → last notified, for `fold_interval`.
    last_notified: HashMap<(Arc<str>, Arc<str>, String), Instant>,
}

impl Dispatcher {
    fn recover(&mut self, journal: &Path, until: u64) -> usize {
        let from = self.ledger.cursor().min(until);
        let mut found = Vec::new();
        if let Err(e) = read_alerts(journal, from, Some(until), |offset, alert| {
            found.push((offset, Arc::new(alert)));
        }) {
            tracing::error!(path = %journal.display(), error = %e, "delivery: cannot read the alert journal to recover undelivered alerts");
        }
        let mut n = 0;
        for (offset, alert) in found {
            n += self.accept(offset, alert, true);
        }
        self.advance_cursor();
        n
    }

    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        loop {
            let now = Instant::now();
            let next = self
                .groups
                .values()
                .filter_map(|g| g.due)
                .min()
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            match rx.recv_timeout(next) {
                Ok(Msg::Alerts { alerts, end }) => {
                    for (offset, alert) in alerts {
                        self.accept(offset, alert, false);
                    }
                    self.end = self.end.max(end);
                    self.advance_cursor();
                }
                Ok(Msg::Settled {
                    notifier,
                    alerts,
                    outcome,
                    repeat,
                }) => {
                    if !repeat {
                        self.settle(&notifier, alerts, outcome, None);
                    }
                }
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.flush_due();
            self.update_active();
        }
        tracing::debug!("delivery dispatcher stopped");
    }

    /// Routes one alert; returns how many notifiers it was queued for. The stages, in order,
    /// for each destination the routes give: metric notifiers take it at once
    /// ([`Dispatcher::take_as_metric`]); a notifier that already settled it is skipped (the ledger);
    /// an inhibit rule settles it as inhibited, a silence as silenced; `fold_interval` folds
    /// it into a recent notification; otherwise it joins its group, waiting for
    /// `group_wait`/`group_interval` (and the route's time intervals, checked when it is due).
    fn accept(&mut self, offset: u64, alert: Arc<Alert>, recovering: bool) -> usize {
        let now = Instant::now();
        let inhibited = self.inhibitor.check(&alert, now);
        if let Some(i) = inhibited {
            tracing::info!(rule = %alert.rule, alert = %alert.id, inhibit_rule = i, "alert inhibited");
        }
        let mut queued = 0;
        let mut settled_now = Vec::new();
        for (route, notifier, grouping) in self.destinations(&alert) {
            if self.take_as_metric(&notifier, &alert, recovering, now)
                || !self.deliverable(&notifier, &alert)
            {
                continue;
            }
            self.count_pending(offset, &notifier);
            queued += 1;
            let held = inhibited
                .map(|i| (Outcome::Inhibited, Some(format!("inhibit_rules.{i}"))))
                .or_else(|| self.silenced(&notifier, &alert))
                .or_else(|| self.folded(&notifier, &alert, &grouping, now));
            if let Some((outcome, because)) = held {
                settled_now.push((notifier, (offset, alert.id.clone()), outcome, because));
                continue;
            }
            if let Some(dropped) = self.group(route, &notifier, grouping, offset, &alert, now) {
                settled_now.push((notifier, dropped, Outcome::Dropped, None));
            }
        }
        for (notifier, alert, outcome, because) in settled_now {
            self.settle(&notifier, vec![alert], outcome, because);
        }
        self.publish_pending();
        queued
    }

    /// Where the routes (or the rule's own `notify` list) send the alert.
    fn destinations(&self, alert: &Alert) -> Vec<(usize, Arc<str>, Grouping)> {
        self.router
            .route(alert, alert.notify.as_deref())
            .into_iter()
            .map(|d| (d.route, Arc::from(d.notifier), d.grouping.clone()))
            .collect()
    }

    /// A metrics notifier takes the alert as a metric at once (not when replaying old alerts);
    /// true if `notifier` is one.
    fn take_as_metric(
        &mut self,
        notifier: &Arc<str>,
        alert: &Alert,
        recovering: bool,
        now: Instant,
    ) -> bool {
        let Some(active_for) = self.metric_notifiers.get(notifier) else {
            return false;
        };
        if !recovering {
            let sev = alert.severity.as_str();
            self.metrics.metric_alert_fired(&alert.rule, sev);
            self.active
                .insert((alert.rule.clone(), sev), now + *active_for);
        }
        true
    }

    /// Whether the alert still has to go to `notifier`: the notifier exists, and the ledger
    /// has no outcome for this alert there yet.
    fn deliverable(&self, notifier: &Arc<str>, alert: &Alert) -> bool {
        if !self.queues.contains_key(notifier) {
            // Validated at start; a rule's own list may name a removed notifier after a
            // reload that the config check did not see.
            tracing::error!(notifier = %notifier, rule = %alert.rule, "delivery: unknown notifier; alert not sent");
            return false;
        }
        !self.ledger.is_settled(notifier, &alert.id)
    }

    fn count_pending(&mut self, offset: u64, notifier: &Arc<str>) {
        *self.pending.entry(offset).or_default() += 1;
        *self
            .pending_by_notifier
            .entry(notifier.clone())
            .or_default() += 1;
    }

    /// `Silenced` (and by which silence) if an active silence matches the alert.
    fn silenced(&self, notifier: &Arc<str>, alert: &Alert) -> Option<(Outcome, Option<String>)> {
        let id = self
            .silences
            .lock()
            .ok()
            .and_then(|s| s.silencing(alert, Utc::now()).map(|s| s.id.clone()))?;
        tracing::info!(notifier = %notifier, rule = %alert.rule, alert = %alert.id, silence = %id, "alert silenced");
        Some((Outcome::Silenced, Some(id)))
    }

    /// `Deduplicated` if the same rule and group went to `notifier` within `fold_interval`.
    fn folded(
        &mut self,
        notifier: &Arc<str>,
        alert: &Alert,
        grouping: &Grouping,
        now: Instant,
    ) -> Option<(Outcome, Option<String>)> {
        if grouping.fold.is_zero() {
            return None;
        }
        let ident = (
            notifier.clone(),
            alert.rule.clone(),
            alert.group.to_string(),
        );
        if let Some(last) = self.last_notified.get(&ident)
            && now.duration_since(*last) < grouping.fold
        {
            return Some((Outcome::Deduplicated, None));
        }
        self.last_notified.insert(ident, now);
        None
    }

    /// Adds the alert to its group and schedules the group's flush. Returns the alert dropped
    /// to make room when the group holds `delivery.max_pending` already.
    fn group(
        &mut self,
        route: usize,
        notifier: &Arc<str>,
        grouping: Grouping,
        offset: u64,
        alert: &Arc<Alert>,
        now: Instant,
    ) -> Option<(u64, String)> {
        let (key, labels) = grouping.key_of(alert);
        let group = self
            .groups
            .entry((notifier.clone(), route, key.clone()))
            .or_insert_with(|| GroupState {
                notifier: notifier.clone(),
                key,
                labels,
                grouping,
                pending: Vec::new(),
                firing: Vec::new(),
                due: None,
                last_flush: None,
            });
        let mut dropped = None;
        if group.pending.len() >= self.max_pending {
            let (old_offset, old) = group.pending.remove(0);
            tracing::error!(notifier = %notifier, alert = %old.id, "delivery: backlog over delivery.max_pending; dropping the oldest undelivered alert (it stays in the alert journal)");
            dropped = Some((old_offset, old.id.clone()));
        }
        group.pending.push((offset, alert.clone()));
        if group.due.is_none() {
            group.due = Some(match group.last_flush {
                None => now + group.grouping.wait,
                Some(last) => (last + group.grouping.interval).max(now),
            });
        }
        dropped
    }

    /// Sends the groups that are due: their pending alerts (unless a time interval mutes the
    /// route now: then they are settled as muted), or, with `repeat_interval`, a reminder of
    /// the alerts still firing.
    fn flush_due(&mut self) {
        let now = Instant::now();
        let wall = Utc::now();
        let resolve = self.resolve_timeout;
        let mut emptied = Vec::new();
        let mut muted = Vec::new();
        for (gk, g) in self.groups.iter_mut() {
            g.firing
                .retain(|(_, _, sent)| now.duration_since(*sent) < resolve);
            if g.due.is_none_or(|d| d > now) {
                if g.pending.is_empty()
                    && g.firing.is_empty()
                    && g.last_flush.is_none_or(|l| {
                        now.duration_since(l) > g.grouping.interval.max(Duration::from_secs(60))
                    })
                {
                    emptied.push(gk.clone());
                }
                continue;
            }
            let Some(queue) = self.queues.get(&g.notifier) else {
                continue;
            };
            if let Some(why) = g.grouping.muted_by(wall) {
                let held: Vec<(u64, String)> = g
                    .pending
                    .drain(..)
                    .map(|(o, a)| (o, a.id.clone()))
                    .collect();
                if !held.is_empty() {
                    tracing::info!(notifier = %g.notifier, alerts = held.len(), time_interval = %why, "notification muted by the route's time intervals");
                    muted.push((g.notifier.clone(), held, why));
                }
                g.due = (!g.grouping.repeat.is_zero() && !g.firing.is_empty())
                    .then(|| now + g.grouping.repeat);
                continue;
            }
            let repeat = g.pending.is_empty();
            let (alerts, offsets): (Vec<Arc<Alert>>, Vec<u64>) = if repeat {
                g.firing.iter().map(|(o, a, _)| (a.clone(), *o)).unzip()
            } else {
                g.pending.iter().map(|(o, a)| (a.clone(), *o)).unzip()
            };
            if alerts.is_empty() {
                g.due = None;
                continue;
            }
            let n = Notification {
                id: Notification::make_id(&g.notifier, &alerts, repeat.then_some(wall)),
                notifier: g.notifier.clone(),
                group_key: g.key.clone(),
                group: g.labels.clone(),
                alerts,
                offsets,
                repeat,
            };
            match queue.try_send(n) {
                Ok(()) => {
                    if !repeat {
                        g.firing
                            .extend(g.pending.drain(..).map(|(o, a)| (o, a, now)));
                    }
                    g.last_flush = Some(now);
                    g.due = (!g.grouping.repeat.is_zero() && !g.firing.is_empty())
                        .then(|| now + g.grouping.repeat);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The worker is behind (retrying a receiver that is down): try again soon.
                    g.due = Some(now + Duration::from_millis(500));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    g.due = None;
                }
            }
        }
        for gk in emptied {
            self.groups.remove(&gk);
        }
        for (notifier, held, why) in muted {
            self.settle(&notifier, held, Outcome::Muted, Some(why));
        }
        for (name, queue) in &self.queues {
            self.metrics.set_queue_depth(
                &format!("notify:{name}"),
                queue.max_capacity() - queue.capacity(),
            );
        }
        self.metrics.set_silences_active(
            self.silences
                .lock()
                .map_or(0, |s| s.active_count(Utc::now())),
        );
    }

    fn update_active(&mut self) {
        let now = Instant::now();
        let metrics = &self.metrics;
        self.active.retain(|(rule, sev), until| {
            if *until <= now {
                metrics.set_metric_alert_active(rule, sev, false);
                false
            } else {
                true
            }
        });
        // Forget fold memory older than any repeat interval could need (a day).
        if self.last_notified.len() > 10_000 {
            self.last_notified
                .retain(|_, t| now.duration_since(*t) < Duration::from_secs(24 * 3600));
        }
    }

    fn settle(
        &mut self,
        notifier: &Arc<str>,
        alerts: Vec<(u64, String)>,
        outcome: Outcome,
        because: Option<String>,
    ) {
        if let Ok(mut d) = self.deliveries.lock() {
            for (_, id) in &alerts {
                d.record(
                    id,
                    recent::Delivery {
                        notifier: notifier.to_string(),
                        outcome,
                        because: because.clone(),
                    },
                );
            }
        }
        let entries: Vec<Entry> = alerts
            .iter()
            .map(|(at, id)| Entry {
                n: notifier.to_string(),
                id: id.clone(),
                at: *at,
                o: outcome,
            })
            .collect();
        if let Err(e) = self.ledger.settle(entries) {
            // The outcome is not durable: after a restart these alerts are sent again.
            tracing::error!(error = %e, "delivery: cannot write the delivery ledger");
        }
        for _ in &alerts {
            self.metrics
                .notification_settled(notifier, outcome.as_str());
        }
        for (at, _) in &alerts {
            if let Some(left) = self.pending.get_mut(at) {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.pending.remove(at);
                }
            }
        }
        if let Some(p) = self.pending_by_notifier.get_mut(notifier) {
            *p -= alerts.len() as i64;
        }
        self.publish_pending();
        self.advance_cursor();
    }

    fn publish_pending(&self) {
        for (n, p) in &self.pending_by_notifier {
            self.metrics
                .set_notifications_pending(n, (*p).max(0) as usize);
        }
    }

    fn advance_cursor(&mut self) {
        let cursor = self.pending.keys().next().copied().unwrap_or(self.end);
        if let Err(e) = self.ledger.advance(cursor) {
            tracing::error!(error = %e, "delivery: cannot write the delivery cursor");
        }
    }
}

/// How a notifier's worker sends: how long it retries, and whether each alert must first be
/// claimed in a delivery ledger shared with other processes (cluster mode).
struct SendPolicy {
    retry: config::RetryConfig,
    claims: Option<Arc<dyn claim::DeliveryClaims>>,
}

/// Sends what arrives on `rx`, retrying transient failures, and reports each outcome.
async fn worker(
    name: Arc<str>,
    sender: Sender,
    mut rx: mpsc::Receiver<Notification>,
    report: std_mpsc::SyncSender<Msg>,
    SendPolicy { retry, claims }: SendPolicy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n {
                Some(n) => n,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let n = match &claims {
            None => n,
            Some(claims) => match claim_all(claims.as_ref(), &name, n, &report, &stop).await {
                Some(n) => n,
                None => continue,
            },
        };
        let started = Instant::now();
        let mut delay = retry.initial.std().max(Duration::from_millis(10));
        let mut attempt = 0u32;
        let outcome = loop {
            attempt += 1;
            let t = Instant::now();
            let result = tokio::select! {
                r = sender.send(&n) => r,
                _ = stop.cancelled() => return,
            };
            let result_label = match &result {
                Ok(()) => "ok",
                Err(SendError::Permanent(_)) => "permanent",
                Err(SendError::Transient(_)) => "transient",
            };
            metrics.notification_attempt(&name, result_label, t.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    tracing::info!(notifier = %name, alerts = n.alerts.len(), notification = %n.id, attempt, "notification sent");
                    break Outcome::Sent;
                }
                Err(SendError::Permanent(e)) => {
                    tracing::error!(notifier = %name, alerts = n.alerts.len(), notification = %n.id, error = %e, "notification refused; not retrying");
                    break Outcome::Failed;
                }
                Err(SendError::Transient(e)) => {
                    if started.elapsed() >= retry.give_up_after.std() {
                        tracing::error!(notifier = %name, alerts = n.alerts.len(), notification = %n.id, error = %e, attempts = attempt, "notification failed; giving up (delivery.retry.give_up_after)");
                        break Outcome::Failed;
                    }
                    // Full jitter between half the delay and the delay.
                    let wait = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                    tracing::warn!(notifier = %name, notification = %n.id, error = %e, attempt, retry_in = ?wait, "notification failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(retry.max.std().max(Duration::from_millis(10)));
                }
            }
        };
        if let Some(claims) = &claims {
            for a in &n.alerts {
                if let Err(e) = claims.settle(&name, &a.id, outcome).await {
                    tracing::error!(notifier = %name, alert = %a.id, error = %e, "delivery: cannot record the outcome in the shared ledger; a worker that takes this partition over sends it again");
                }
            }
        }
        let alerts = n
            .offsets
            .iter()
            .copied()
            .zip(n.alerts.iter().map(|a| a.id.clone()))
            .collect();
        if report
            .send(Msg::Settled {
                notifier: name.clone(),
                alerts,
                outcome,
                repeat: n.repeat,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Claims each alert of `n` in the shared ledger. Alerts settled elsewhere are reported with
/// that outcome and dropped from `n`; alerts another process is sending are asked about again
/// until settled or free. `None`: nothing is left to send (or delivery is stopping).
async fn claim_all(
    claims: &dyn claim::DeliveryClaims,
    name: &Arc<str>,
    mut n: Notification,
    report: &std_mpsc::SyncSender<Msg>,
    stop: &CancellationToken,
) -> Option<Notification> {
    let mut keep = vec![true; n.alerts.len()];
    let mut undecided: Vec<usize> = (0..n.alerts.len()).collect();
    let mut wait = Duration::from_millis(200);
    while !undecided.is_empty() {
        let mut again = Vec::new();
        for i in undecided {
            match claims.claim(name, &n.alerts[i].id).await {
                Ok(claim::Claim::Won) => {}
                Ok(claim::Claim::Settled(outcome)) => {
                    keep[i] = false;
                    tracing::info!(notifier = %name, alert = %n.alerts[i].id, outcome = outcome.as_str(), "delivery: already settled in the shared ledger; not sent again");
                    let settled = Msg::Settled {
                        notifier: name.clone(),
                        alerts: vec![(n.offsets[i], n.alerts[i].id.clone())],
                        outcome,
                        repeat: n.repeat,
                    };
                    if report.send(settled).is_err() {
                        return None;
                    }
                }
                Ok(claim::Claim::Busy) => again.push(i),
                Err(e) => {
                    tracing::warn!(notifier = %name, alert = %n.alerts[i].id, error = %e, "delivery: cannot reach the shared ledger; will ask again");
                    again.push(i);
                }
            }
        }
        undecided = again;
        if !undecided.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return None,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
    if keep.iter().all(|k| *k) {
        return Some(n);
    }
    let mut i = 0;
    n.alerts.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    let mut i = 0;
    n.offsets.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    (!n.alerts.is_empty()).then_some(n)
}
