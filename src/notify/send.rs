//! Sending one notification to one receiver: SMTP with lettre, HTTP with reqwest. Errors are
//! classified so the worker knows whether retrying can help.

use std::time::Duration;

use chrono::Utc;
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;

use super::config::{NotifierConfig, SmtpTls};
use super::format::{self, Notification};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: connection refused, timeout, 5xx, 408, 429, SMTP 4xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: 4xx, SMTP 5xx, a body the receiver rejects.
    #[error("{0}")]
    Permanent(String),
}

/// A configured receiver, ready to send.
pub enum Sender {
    Email(Box<Email>),
    Http(Box<Http>),
}

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    templates: Environment<'static>,
}

#[derive(Clone, Copy)]
enum HttpKind {
    Generic,
    /// A webhook sent Alertmanager's webhook payload.
    AlertmanagerWebhook,
    Slack,
    Alertmanager,
    Pagerduty,
}

pub struct Http {
    client: reqwest::Client,
    url: String,
    kind: HttpKind,
    headers: Vec<(String, String)>,
    bearer: Option<String>,
    routing_key: Option<String>,
    body_template: Option<(Environment<'static>, String)>,
    active_for: Duration,
    /// The Alertmanager notifier's settings (its severity labels).
    alertmanager: Option<Box<crate::notify::config::AlertmanagerConfig>>,
    /// The console's base URL, for links to alerts.
    console_url: Option<String>,
}

pub const DEFAULT_SUBJECT: &str = "[auditwatch] {{ title }}";

pub const DEFAULT_TEXT: &str = r#"{% for a in alerts %}{{ a.severity | upper }} {{ a.rule }}{% if a.group %} [{% for k, v in a.group | items %}{{ k }}={{ v }}{% if not loop.last %} {% endif %}{% endfor %}]{% endif %}
{{ a.summary }}
{% if a.description %}{{ a.description }}
{% endif %}count: {{ a.count }}, first seen {{ a.first_seen }}, last seen {{ a.last_seen }}{% if a.suppressed %}, {{ a.suppressed }} more throttled{% endif %}
alert id: {{ a.id }}
{% if a.events %}
{{ a | event_table }}{% endif %}
{% endfor %}-- auditwatch, notifier {{ notifier }}, notification {{ notification_id }}
"#;

pub const DEFAULT_HTML: &str = r#"<html><body style="font-family: sans-serif">
{% for a in alerts %}<h3>{{ a.severity | upper }} {{ a.rule }}</h3>
<p>{{ a.summary }}</p>
{% if a.description %}<p><i>{{ a.description }}</i></p>{% endif %}
<p>count {{ a.count }} &middot; first seen {{ a.first_seen }} &middot; last seen {{ a.last_seen }}{% if a.group %} &middot; {% for k, v in a.group | items %}{{ k }}={{ v }} {% endfor %}{% endif %}</p>
{% if a.events %}<table border="1" cellpadding="4" cellspacing="0" style="border-collapse: collapse">
<tr><th>time</th><th>user</th><th>verb</th><th>object</th><th>source ip</th><th>code</th></tr>
{% for e in a.events %}<tr><td>{{ e.time }}</td><td>{{ e.user }}</td><td>{{ e.verb }}</td><td>{{ e.object }}</td><td>{{ e.source_ip }}</td><td>{{ e.code or "" }}</td></tr>
{% endfor %}</table>{% endif %}
<p style="color: #888">alert id {{ a.id }}</p>
{% endfor %}</body></html>
"#;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env.add_filter("event_table", |a: minijinja::Value| -> String {
        serde_json::to_value(&a)
            .ok()
            .and_then(|v| serde_json::from_value::<crate::alert::Alert>(v).ok())
            .map(|a| format::event_table(&a, 20))
            .unwrap_or_default()
    });
    env
}

/// Builds a sender; errors name what is wrong with the notifier's config.
/// `console_url` is where alerts link to (Alertmanager's `generatorURL`).
pub fn build(
    config: &NotifierConfig,
    timeout: Duration,
    console_url: Option<&str>,
) -> Result<Option<Sender>, String> {
    let console_url = console_url.map(str::to_owned);
    match config {
        NotifierConfig::Metrics(_) => Ok(None),
        NotifierConfig::Email(c) => {
            let port = c.smtp.port.unwrap_or(match c.smtp.tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
            });
            let tls = || -> Result<TlsParameters, String> {
                let mut b = TlsParameters::builder(c.smtp.host.clone());
                if let Some(ca) = &c.smtp.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                    b = b.add_root_certificate(
                        Certificate::from_pem(&pem)
                            .map_err(|e| format!("{}: {e}", ca.display()))?,
                    );
                }
                b.build().map_err(|e| e.to_string())
            };
            let mut builder =
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.smtp.host.clone())
                    .port(port)
                    .timeout(Some(timeout));
            builder = match c.smtp.tls {
                SmtpTls::None => builder.tls(Tls::None),
                SmtpTls::Starttls => builder.tls(Tls::Required(tls()?)),
                SmtpTls::Tls => builder.tls(Tls::Wrapper(tls()?)),
            };
            if let Some(user) = &c.smtp.username {
                let password = c
                    .smtp
                    .password
                    .as_ref()
                    .map(|p| p.read())
                    .transpose()
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .unwrap_or_default();
                builder = builder.credentials(Credentials::new(user.clone(), password));
            }
            let from: Mailbox = c
                .from
                .parse()
                .map_err(|e| format!("from {:?}: {e}", c.from))?;
            let to =
                c.to.iter()
                    .map(|t| t.parse::<Mailbox>().map_err(|e| format!("to {t:?}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
            if to.is_empty() {
                return Err("email needs at least one recipient in `to`".into());
            }
            let mut templates = environment();
            for (name, source) in [
                ("subject", c.subject.as_deref().unwrap_or(DEFAULT_SUBJECT)),
                ("text", c.text.as_deref().unwrap_or(DEFAULT_TEXT)),
                ("body.html", c.html.as_deref().unwrap_or(DEFAULT_HTML)),
            ] {
                templates
                    .add_template_owned(name.to_owned(), source.to_owned())
                    .map_err(|e| format!("{name} template: {e}"))?;
            }
            Ok(Some(Sender::Email(Box::new(Email {
                transport: builder.build(),
                from,
                to,
                templates,
            }))))
        }
        NotifierConfig::Webhook(c) => {
            let bearer = c
                .bearer_token
                .as_ref()
                .map(|s| s.read())
                .transpose()
                .map_err(|e| e.to_string())?
                .flatten();
            let body_template = match &c.body {
                Some(source) => {
                    let mut env = environment();
                    env.add_template_owned("body".to_owned(), source.clone())
                        .map_err(|e| format!("body template: {e}"))?;
                    Some((env, c.content_type.clone()))
                }
                None => None,
            };
            Ok(Some(Sender::Http(Box::new(Http {
                client: client(c.ca_file.as_deref(), timeout)?,
                url: c.url.clone(),
                kind: match c.payload {
                    crate::notify::config::WebhookPayload::Auditwatch => HttpKind::Generic,
                    crate::notify::config::WebhookPayload::Alertmanager => {
                        HttpKind::AlertmanagerWebhook
                    }
                },
                headers: c
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                bearer,
                routing_key: None,
                body_template,
                active_for: Duration::ZERO,
                alertmanager: None,
                console_url: console_url.clone(),
            }))))
        }
        NotifierConfig::Slack(c) => {
            let url = match (&c.url, &c.url_file) {
                (Some(u), _) => u.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => return Err("slack needs `url` or `url_file`".into()),
            };
            Ok(Some(Sender::Http(Box::new(Http {
                client: client(c.ca_file.as_deref(), timeout)?,
                url,
                kind: HttpKind::Slack,
                headers: Vec::new(),
                bearer: None,
                routing_key: None,
                body_template: None,
                active_for: Duration::ZERO,
                alertmanager: None,
                console_url: console_url.clone(),
            }))))
        }
        NotifierConfig::Alertmanager(c) => Ok(Some(Sender::Http(Box::new(Http {
            client: client(c.ca_file.as_deref(), timeout)?,
            url: format!("{}/api/v2/alerts", c.url.trim_end_matches('/')),
            kind: HttpKind::Alertmanager,
            headers: Vec::new(),
            bearer: c
                .bearer_token
                .as_ref()
                .map(|s| s.read())
                .transpose()
                .map_err(|e| e.to_string())?
                .flatten(),
            routing_key: None,
            body_template: None,
            active_for: c.resolve_after.std(),
            alertmanager: Some(Box::new(c.clone())),
            console_url: console_url.clone(),
        })))),
        NotifierConfig::Pagerduty(c) => Ok(Some(Sender::Http(Box::new(Http {
            client: client(c.ca_file.as_deref(), timeout)?,
            url: c.url.clone(),
            kind: HttpKind::Pagerduty,
            headers: Vec::new(),
            bearer: None,
            routing_key: Some(
                c.routing_key
                    .read()
                    .map_err(|e| e.to_string())?
                    .ok_or("pagerduty needs routing_key.value or routing_key.file")?,
            ),
            body_template: None,
            active_for: Duration::ZERO,
            alertmanager: None,
            console_url: console_url.clone(),
        })))),
    }
}

fn client(ca: Option<&std::path::Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("auditwatch/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

impl Sender {
    pub async fn send(&self, n: &Notification) -> Result<(), SendError> {
        match self {
            Sender::Email(e) => e.send(n).await,
            Sender::Http(h) => h.send(n).await,
        }
    }
}

impl Email {
    async fn send(&self, n: &Notification) -> Result<(), SendError> {
        let ctx = n.context();
        let render = |name: &str| {
            self.templates
                .get_template(name)
                .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))))
                .map_err(|e| SendError::Permanent(format!("{name} template: {e:#}")))
        };
        let subject = render("subject")?.replace(['\r', '\n'], " ");
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{}@auditwatch>", n.id)))
            .header(header::ContentTransferEncoding::QuotedPrintable);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                render("text")?,
                render("body.html")?,
            ))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("smtp: {e}"))),
            Err(e) => Err(SendError::Transient(format!("smtp: {e}"))),
        }
    }
}

impl Http {
    async fn send(&self, n: &Notification) -> Result<(), SendError> {
        match self.kind {
            HttpKind::Pagerduty => {
                // One event per alert, each deduplicated by PagerDuty on its id.
                let key = self.routing_key.as_deref().unwrap_or("");
                for a in &n.alerts {
                    self.post(
                        &n.id,
                        format::pagerduty(a, key).to_string(),
                        "application/json",
                    )
                    .await?;
                }
                Ok(())
            }
            HttpKind::Generic => match &self.body_template {
                Some((env, content_type)) => {
                    let body = env
                        .get_template("body")
                        .and_then(|t| {
                            t.render(minijinja::Value::from(minijinja::value::Serde(n.context())))
                        })
                        .map_err(|e| SendError::Permanent(format!("body template: {e:#}")))?;
                    self.post(&n.id, body, content_type).await
                }
                None => {
                    self.post(&n.id, format::generic(n).to_string(), "application/json")
                        .await
                }
            },
            HttpKind::Slack => {
                self.post(&n.id, format::slack(n).to_string(), "application/json")
                    .await
            }
            HttpKind::Alertmanager => {
                let severity = |sev: crate::rules::Severity| {
                    self.alertmanager
                        .as_ref()
                        .map_or_else(|| sev.as_str().to_owned(), |c| c.severity_label(sev))
                };
                let body = format::alertmanager(
                    n,
                    Utc::now(),
                    self.active_for,
                    &severity,
                    self.console_url.as_deref(),
                );
                self.post(&n.id, body.to_string(), "application/json").await
            }
            HttpKind::AlertmanagerWebhook => {
                let severity = |sev: crate::rules::Severity| sev.alertmanager_label().to_owned();
                let body = format::alertmanager_webhook(
                    n,
                    Utc::now(),
                    std::time::Duration::from_secs(300),
                    &severity,
                    self.console_url.as_deref(),
                );
                self.post(&n.id, body.to_string(), "application/json").await
            }
        }
    }

    async fn post(&self, id: &str, body: String, content_type: &str) -> Result<(), SendError> {
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", content_type)
            .header("Idempotency-Key", id)
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(token) = &self.bearer {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("{}: {}", self.url, error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        let msg = format!("{}: HTTP {status}: {}", self.url, text.trim());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SendError::Transient(msg))
        } else {
            Err(SendError::Permanent(msg))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
