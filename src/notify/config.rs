//! The alert-delivery part of the config: `notifiers`, `route` and `delivery`.
//!
//! ```yaml
//! notifiers:
//!   oncall:  { email: { smtp: { host: smtp.example.com, tls: starttls }, from: a@x, to: [b@x] } }
//!   chat:    { slack: { url: "https://hooks.slack.com/services/..." } }
//!   am:      { alertmanager: { url: "http://alertmanager:9093" } }
//!   prom:    { metrics: {} }
//! route:
//!   notify: [chat]
//!   routes:
//!     - match: { severity: [critical] }
//!       notify: [oncall, am]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::event::Span;
use crate::rules::Severity;
use crate::state::FsyncPolicy;
use crate::units::Duration;

/// One notifier: a map with exactly one kind key.
#[derive(Debug, Clone)]
pub enum NotifierConfig {
    Email(EmailConfig),
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Alertmanager(AlertmanagerConfig),
    Pagerduty(PagerdutyConfig),
    Metrics(MetricsConfig),
}

impl<'de> Deserialize<'de> for NotifierConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OneOf {
            email: Option<EmailConfig>,
            webhook: Option<WebhookConfig>,
            slack: Option<SlackConfig>,
            alertmanager: Option<AlertmanagerConfig>,
            pagerduty: Option<PagerdutyConfig>,
            metrics: Option<MetricsConfig>,
        }
        let one = OneOf::deserialize(d)?;
        let mut found = Vec::new();
        if let Some(c) = one.email {
            found.push(NotifierConfig::Email(c));
        }
        if let Some(c) = one.webhook {
            found.push(NotifierConfig::Webhook(c));
        }
        if let Some(c) = one.slack {
            found.push(NotifierConfig::Slack(c));
        }
        if let Some(c) = one.alertmanager {
            found.push(NotifierConfig::Alertmanager(c));
        }
        if let Some(c) = one.pagerduty {
            found.push(NotifierConfig::Pagerduty(c));
        }
        if let Some(c) = one.metrics {
            found.push(NotifierConfig::Metrics(c));
        }
        match (found.pop(), found.is_empty()) {
            (Some(c), true) => Ok(c),
            _ => Err(serde::de::Error::custom(
                "a notifier is a map with exactly one of `email`, `webhook`, `slack`, `alertmanager`, `pagerduty`, `metrics`",
            )),
        }
    }
}

impl NotifierConfig {
    /// Every file path in the notifier's settings (CA files, secrets read from files), for
    /// resolving relative paths against the config file's directory.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        fn secret(s: &mut Option<Secret>) -> Option<&mut PathBuf> {
            s.as_mut().and_then(|s| s.file.as_mut())
        }
        let found = match self {
            NotifierConfig::Email(c) => [c.smtp.ca_file.as_mut(), secret(&mut c.smtp.password)],
            NotifierConfig::Webhook(c) => [c.ca_file.as_mut(), secret(&mut c.bearer_token)],
            NotifierConfig::Slack(c) => [c.ca_file.as_mut(), c.url_file.as_mut()],
            NotifierConfig::Alertmanager(c) => [c.ca_file.as_mut(), secret(&mut c.bearer_token)],
            NotifierConfig::Pagerduty(c) => [c.ca_file.as_mut(), c.routing_key.file.as_mut()],
            NotifierConfig::Metrics(_) => [None, None],
        };
        found.into_iter().flatten().collect()
    }

    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Email(_) => "email",
            NotifierConfig::Webhook(_) => "webhook",
            NotifierConfig::Slack(_) => "slack",
            NotifierConfig::Alertmanager(_) => "alertmanager",
            NotifierConfig::Pagerduty(_) => "pagerduty",
            NotifierConfig::Metrics(_) => "metrics",
        }
    }
}

/// A secret given inline or read from a file (mounted Kubernetes secrets).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub value: Option<String>,
    pub file: Option<PathBuf>,
}

impl Secret {
    /// The secret, trimmed of a trailing newline when read from a file.
    pub fn read(&self) -> std::io::Result<Option<String>> {
        match (&self.value, &self.file) {
            (Some(v), _) => Ok(Some(v.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
                Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP: for a relay on localhost or a trusted network only.
    None,
    /// Plain connection upgraded with STARTTLS (port 587); refused if the server cannot.
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 25 for `none`, 587 for `starttls`, 465 for `tls`.
    pub port: Option<u16>,
    #[serde(default = "default_smtp_tls")]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra CA certificate (PEM) to trust, for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
}

fn default_smtp_tls() -> SmtpTls {
    SmtpTls::Starttls
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp: SmtpConfig,
    pub from: String,
    pub to: Vec<String>,
    /// minijinja templates; see docs/notifications.md for the context. Defaults are built in.
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub bearer_token: Option<Secret>,
    /// minijinja template for the body (JSON by default: the documented schema).
    pub body: Option<String>,
    /// Content-Type of a templated body.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// The JSON sent without a `body` template: auditwatch's schema, or Alertmanager's
    /// webhook payload (`version: "4"`, what `webhook_configs` receivers expect).
    #[serde(default)]
    pub payload: WebhookPayload,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookPayload {
    #[default]
    Auditwatch,
    Alertmanager,
}

fn default_content_type() -> String {
    "application/json".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming-webhook URL (a secret: it may be given as `url_file`).
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL; alerts go to `<url>/api/v2/alerts`.
    pub url: String,
    /// `endsAt` is set this far after sending: Alertmanager resolves the alert then.
    #[serde(default = "five_minutes")]
    pub resolve_after: Duration,
    pub bearer_token: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    /// The `severity` label each auditwatch severity is sent as, so that routes written for
    /// Alertmanager's usual `critical`/`warning`/`info` match. Severities not listed keep the
    /// default mapping; the original is always in `auditwatch_severity`.
    #[serde(default)]
    pub severity_labels: std::collections::BTreeMap<crate::rules::Severity, String>,
}

impl AlertmanagerConfig {
    /// The `severity` label of `severity`: the configured one, else critical and high as
    /// `critical`, medium as `warning`, low and info as `info`.
    pub fn severity_label(&self, severity: crate::rules::Severity) -> String {
        if let Some(label) = self.severity_labels.get(&severity) {
            return label.clone();
        }
        severity.alertmanager_label().to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerdutyConfig {
    pub routing_key: Secret,
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

fn five_minutes() -> Duration {
    Duration(Span::from_secs(300))
}

fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// Alerts as Prometheus metrics: `auditwatch_alert_firings_total` and
/// `auditwatch_alert_active` per rule and severity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How long `auditwatch_alert_active` stays 1 after a firing.
    pub active_for: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            active_for: Duration(Span::from_secs(300)),
        }
    }
}

/// Which alerts a route takes; every given criterion must hold. Written either in
/// auditwatch's first form (`{severity: [high], min_severity: …, rules: […], labels: {…}}`)
/// or in Alertmanager's (`{severity: critical, team: apps}`: fields equal to values); a map
/// whose values are all plain strings, without `min_severity`, is read as Alertmanager's.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Exact severities.
    pub severity: Vec<Severity>,
    /// This severity or a higher one.
    pub min_severity: Option<Severity>,
    pub rules: Vec<String>,
    /// Rule labels that must have these values.
    pub labels: BTreeMap<String, String>,
    /// Alertmanager's form: alert fields equal to these values (`severity` as in matchers).
    pub equal: BTreeMap<String, String>,
}

impl RouteMatch {
    /// Whether it is written in auditwatch's first form (deprecated for `matchers`).
    pub fn is_first_form(&self) -> bool {
        !self.severity.is_empty()
            || self.min_severity.is_some()
            || !self.rules.is_empty()
            || !self.labels.is_empty()
    }
}

impl<'de> Deserialize<'de> for RouteMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, default)]
        #[derive(Default)]
        struct First {
            severity: Vec<Severity>,
            min_severity: Option<Severity>,
            rules: Vec<String>,
            labels: BTreeMap<String, String>,
        }
        let map = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
        let first = map.contains_key("min_severity") || map.values().any(|v| !v.is_string());
        if !first {
            return Ok(RouteMatch {
                equal: map
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                ..RouteMatch::default()
            });
        }
        let mapping = map
            .into_iter()
            .map(|(k, v)| (serde_yaml::Value::String(k), v))
            .collect();
        let f: First = serde_yaml::from_value(serde_yaml::Value::Mapping(mapping))
            .map_err(serde::de::Error::custom)?;
        Ok(RouteMatch {
            severity: f.severity,
            min_severity: f.min_severity,
            rules: f.rules,
            labels: f.labels,
            equal: BTreeMap::new(),
        })
    }
}

/// A node of the routing tree. Children are tried in order; the first that matches takes the
/// alert unless it says `continue: true`. An alert no child takes goes to this node's
/// `notify`. Grouping settings are inherited by children that do not set them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Alertmanager's form: `['severity=~"high|critical"', 'rule!="x"']`, the matcher syntax
    /// of silences, on the alert's fields (`rule`/`alertname`, `severity`, `kind`, labels,
    /// `group.<field>`). All must hold, with `match`.
    pub matchers: Vec<TextMatcher>,
    /// Alertmanager's older form: fields matching these regexes (anchored).
    pub match_re: BTreeMap<String, String>,
    /// Deprecated for `receiver`: the notifiers the route's alerts go to.
    pub notify: Vec<String>,
    /// The receiver (an entry of `receivers:`, or a notifier) the route's alerts go to.
    pub receiver: Option<String>,
    #[serde(rename = "continue")]
    pub continue_: bool,
    /// Alert fields grouped on: `rule`, `severity`, `kind`, a label name, `group.<field>`;
    /// `["..."]` (the default) is one notification per alert.
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<Duration>,
    pub group_interval: Option<Duration>,
    /// Alertmanager's meaning: a group still firing (an alert in it sent within
    /// `delivery.resolve_timeout`) is sent again after this long. Unset or 0: never.
    pub repeat_interval: Option<Duration>,
    /// Firings of the same rule and group within this of the last one sent are folded
    /// (recorded as deduplicated, not sent); what `repeat_interval` did before 0.9.
    pub fold_interval: Option<Duration>,
    /// Names of `time_intervals` during which nothing is sent.
    pub mute_time_intervals: Vec<String>,
    /// Names of `time_intervals` outside which nothing is sent.
    pub active_time_intervals: Vec<String>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
    /// Stop retrying a transient failure after this long (the alert is then reported as
    /// failed); permanent failures (4xx other than 408 and 429) are not retried.
    pub give_up_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration(Span::from_secs(1)),
            max: Duration(Span::from_secs(60)),
            give_up_after: Duration(Span::from_secs(24 * 3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Notifications queued per notifier.
    pub queue: usize,
    /// Undelivered alerts held in memory per notifier; beyond it the oldest are dropped,
    /// logged and counted (they stay in the alert journal).
    pub max_pending: usize,
    pub timeout: Duration,
    pub retry: RetryConfig,
    /// fsync of the delivery ledger after each outcome.
    pub fsync: FsyncPolicy,
    /// How long a sent alert counts as firing: for `repeat_interval` and as an inhibit
    /// rule's source (Alertmanager's `resolve_timeout`).
    pub resolve_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue: 256,
            max_pending: 10_000,
            timeout: Duration(Span::from_secs(10)),
            retry: RetryConfig::default(),
            fsync: FsyncPolicy::Always,
            resolve_timeout: Duration(Span::from_secs(300)),
        }
    }
}

impl NotifierConfig {
    /// Checks what can be checked without reading files or connecting: addresses, URLs and
    /// templates. Errors carry the key under the notifier (`email.from`) and a message.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn url(key: &str, u: &str) -> Result<(), (String, String)> {
            match reqwest::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
                Ok(parsed) => Err((
                    key.into(),
                    format!("{u:?}: scheme {:?} is not http or https", parsed.scheme()),
                )),
                Err(e) => Err((key.into(), format!("{u:?}: {e}"))),
            }
        }
        fn template(key: &str, source: &Option<String>) -> Result<(), (String, String)> {
            match source {
                Some(t) => minijinja::Environment::new()
                    .template_from_str(t)
                    .map(|_| ())
                    .map_err(|e| (key.into(), format!("invalid template: {e}"))),
                None => Ok(()),
            }
        }
        match self {
            NotifierConfig::Email(e) => {
                e.from
                    .parse::<lettre::message::Mailbox>()
                    .map_err(|err| ("email.from".into(), format!("{:?}: {err}", e.from)))?;
                if e.to.is_empty() {
                    return Err(("email.to".into(), "needs at least one recipient".into()));
                }
                for (i, to) in e.to.iter().enumerate() {
                    to.parse::<lettre::message::Mailbox>()
                        .map_err(|err| (format!("email.to.{i}"), format!("{to:?}: {err}")))?;
                }
                template("email.subject", &e.subject)?;
                template("email.text", &e.text)?;
                template("email.html", &e.html)
            }
            NotifierConfig::Webhook(w) => {
                url("webhook.url", &w.url)?;
                template("webhook.body", &w.body)
            }
            NotifierConfig::Slack(c) => match &c.url {
                Some(u) => url("slack.url", u),
                None if c.url_file.is_some() => Ok(()),
                None => Err(("slack".into(), "needs `url` or `url_file`".into())),
            },
            NotifierConfig::Alertmanager(a) => url("alertmanager.url", &a.url),
            NotifierConfig::Pagerduty(p) => url("pagerduty.url", &p.url),
            NotifierConfig::Metrics(_) => Ok(()),
        }
    }
}

/// A matcher written as text (`severity=~"high|critical"`), as Alertmanager's `matchers`.
#[derive(Debug, Clone)]
pub struct TextMatcher(pub crate::notify::silence::Matcher);

impl<'de> Deserialize<'de> for TextMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(TextMatcher)
            .map_err(serde::de::Error::custom)
    }
}

impl RouteConfig {
    /// Every notifier the route sends to (after [`RouteConfig::resolve`]: its receiver's).
    pub fn notifiers(&self) -> impl Iterator<Item = &String> {
        self.notify.iter()
    }

    /// Turns each route's `receiver` into the notifiers it stands for (`receivers`: an
    /// Alertmanager-style receiver's configs; else a notifier of that name), and checks the
    /// names of receivers, notifiers and time intervals; errors carry a dotted config path.
    pub fn resolve(
        &mut self,
        path: &str,
        receivers: &BTreeMap<String, Vec<String>>,
        notifiers: &BTreeMap<String, NotifierConfig>,
        intervals: &[String],
    ) -> Result<(), (String, String)> {
        if let Some(name) = &self.receiver {
            match (receivers.get(name), notifiers.contains_key(name)) {
                (Some(list), _) => self.notify.extend(list.iter().cloned()),
                (None, true) => self.notify.push(name.clone()),
                (None, false) => {
                    let known: Vec<&String> = receivers.keys().collect();
                    return Err((
                        format!("{path}.receiver"),
                        format!("unknown receiver {name:?} (defined: {known:?})"),
                    ));
                }
            }
        }
        for (key, names) in [
            ("mute_time_intervals", &self.mute_time_intervals),
            ("active_time_intervals", &self.active_time_intervals),
        ] {
            for (i, n) in names.iter().enumerate() {
                if !intervals.contains(n) {
                    return Err((
                        format!("{path}.{key}.{i}"),
                        format!(
                            "unknown time interval {n:?} (time_intervals defines: {intervals:?})"
                        ),
                    ));
                }
            }
        }
        for (k, v) in &self.match_re {
            crate::notify::silence::Matcher::new(
                k.clone(),
                crate::notify::silence::Op::Re,
                v.clone(),
            )
            .map_err(|e| (format!("{path}.match_re.{k}"), e))?;
        }
        for (i, child) in self.routes.iter_mut().enumerate() {
            child.resolve(
                &format!("{path}.routes.{i}"),
                receivers,
                notifiers,
                intervals,
            )?;
        }
        Ok(())
    }

    /// Keys written in auditwatch's first vocabulary, with what to write instead.
    pub fn deprecations(&self, path: &str, out: &mut Vec<(String, String)>) {
        if !self.notify.is_empty() && self.receiver.is_none() {
            out.push((
                format!("{path}.notify"),
                "`notify` is deprecated: name one entry of `receivers:` with `receiver:`".into(),
            ));
        }
        if self.matcher.is_first_form() {
            out.push((
                format!("{path}.match"),
                "this `match` form is deprecated: write `matchers: ['severity=~\"high|critical\"', 'rule=\"x\"']`".into(),
            ));
        }
        for (i, child) in self.routes.iter().enumerate() {
            child.deprecations(&format!("{path}.routes.{i}"), out);
        }
    }

    /// Whether any route sets `repeat_interval`.
    pub fn sets_repeat_interval(&self, path: &str) -> Option<String> {
        if self.repeat_interval.is_some() {
            return Some(format!("{path}.repeat_interval"));
        }
        self.routes
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.sets_repeat_interval(&format!("{path}.routes.{i}")))
    }

    /// Checks notifier names; errors carry a dotted config path.
    pub fn validate(
        &self,
        path: &str,
        notifiers: &BTreeMap<String, NotifierConfig>,
    ) -> Result<(), (String, String)> {
        for (i, name) in self.notify.iter().enumerate() {
            if !notifiers.contains_key(name) {
                return Err((
                    format!("{path}.notify.{i}"),
                    format!(
                        "unknown notifier {name:?} (defined: {})",
                        notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        for (i, child) in self.routes.iter().enumerate() {
            child.validate(&format!("{path}.routes.{i}"), notifiers)?;
        }
        Ok(())
    }
}
