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
        use crate::rules::Severity;
        if let Some(label) = self.severity_labels.get(&severity) {
            return label.clone();
        }
        match severity {
            Severity::Critical | Severity::High => "critical",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "info",
        }
        .to_owned()
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

/// Which alerts a route takes; every given criterion must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// Exact severities.
    pub severity: Vec<Severity>,
    /// This severity or a higher one.
    pub min_severity: Option<Severity>,
    pub rules: Vec<String>,
    /// Rule labels that must have these values.
    pub labels: BTreeMap<String, String>,
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
    pub notify: Vec<String>,
    /// Alertmanager's word for a route's one notifier; the same as `notify: [NAME]`.
    pub receiver: Option<String>,
    #[serde(rename = "continue")]
    pub continue_: bool,
    /// Alert fields grouped on: `rule`, `severity`, `kind`, a label name, `group.<field>`;
    /// `["..."]` (the default) is one notification per alert.
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<Duration>,
    pub group_interval: Option<Duration>,
    pub repeat_interval: Option<Duration>,
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
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue: 256,
            max_pending: 10_000,
            timeout: Duration(Span::from_secs(10)),
            retry: RetryConfig::default(),
            fsync: FsyncPolicy::Always,
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
    /// Every notifier the route names, by `notify` or `receiver`.
    pub fn notifiers(&self) -> impl Iterator<Item = &String> {
        self.notify.iter().chain(self.receiver.iter())
    }

    /// Checks notifier names and group_by fields; errors carry a dotted config path.
    pub fn validate(
        &self,
        path: &str,
        notifiers: &BTreeMap<String, NotifierConfig>,
    ) -> Result<(), (String, String)> {
        if let Some(name) = &self.receiver
            && !notifiers.contains_key(name)
        {
            return Err((
                format!("{path}.receiver"),
                format!(
                    "unknown receiver {name:?} (defined: {})",
                    notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
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
