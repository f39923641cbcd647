//! `receivers:` written as in Alertmanager: a list of named receivers, each with
//! `webhook_configs`, `email_configs`, `slack_configs` and `pagerduty_configs` (the kinds
//! auditwatch sends), plus two of auditwatch's own, `alertmanager_configs` (forward to an
//! Alertmanager) and `metrics_configs` (alerts as Prometheus series). Each config becomes one
//! notifier; a route's `receiver:` stands for all of them. A receiver without configs sends
//! nothing (Alertmanager's usual "blackhole").
//!
//! Fields auditwatch does not implement are refused by name (a silently ignored `headers` or
//! `html` would surprise whoever pasted it), except `send_resolved`, which is accepted and has
//! no effect: audit alerts are events and never resolve.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::config::{
    AlertmanagerConfig, EmailConfig, MetricsConfig, NotifierConfig, PagerdutyConfig, Secret,
    SlackConfig, SmtpConfig, SmtpTls, WebhookConfig, WebhookPayload,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(default)]
    pub webhook_configs: Vec<AmWebhook>,
    #[serde(default)]
    pub email_configs: Vec<AmEmail>,
    #[serde(default)]
    pub slack_configs: Vec<AmSlack>,
    #[serde(default)]
    pub pagerduty_configs: Vec<AmPagerduty>,
    #[serde(default)]
    pub alertmanager_configs: Vec<AlertmanagerConfig>,
    #[serde(default)]
    pub metrics_configs: Vec<MetricsConfig>,
}

/// Alertmanager's `http_config`, as far as auditwatch's clients use it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpClientConfig {
    pub authorization: Option<Authorization>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    pub tls_config: Option<TlsClientConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authorization {
    /// Only `Bearer` (the default) is supported.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub credentials: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    pub ca_file: Option<PathBuf>,
}

impl HttpClientConfig {
    fn bearer(&self) -> Result<Option<Secret>, String> {
        if let Some(a) = &self.authorization {
            if a.kind
                .as_deref()
                .is_some_and(|k| !k.eq_ignore_ascii_case("bearer"))
            {
                return Err(format!(
                    "authorization.type {:?}: only Bearer is supported",
                    a.kind.as_deref().unwrap_or_default()
                ));
            }
            return Ok(Some(Secret {
                value: a.credentials.clone(),
                file: a.credentials_file.clone(),
            }));
        }
        Ok(
            (self.bearer_token.is_some() || self.bearer_token_file.is_some()).then(|| Secret {
                value: self.bearer_token.clone(),
                file: self.bearer_token_file.clone(),
            }),
        )
    }

    fn ca_file(&self) -> Option<PathBuf> {
        self.tls_config.as_ref().and_then(|t| t.ca_file.clone())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmWebhook {
    pub url: String,
    #[serde(default)]
    pub send_resolved: Option<bool>,
    #[serde(default)]
    pub http_config: HttpClientConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmEmail {
    /// Addresses, comma-separated, as in Alertmanager.
    pub to: String,
    pub from: String,
    /// `host:port`.
    pub smarthost: String,
    pub auth_username: Option<String>,
    pub auth_password: Option<String>,
    pub auth_password_file: Option<PathBuf>,
    /// STARTTLS required (Alertmanager's default: true). Port 465 always speaks TLS.
    #[serde(default = "yes")]
    pub require_tls: bool,
    #[serde(default)]
    pub tls_config: Option<TlsClientConfig>,
    #[serde(default)]
    pub send_resolved: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmSlack {
    pub api_url: Option<String>,
    pub api_url_file: Option<PathBuf>,
    #[serde(default)]
    pub send_resolved: Option<bool>,
    #[serde(default)]
    pub http_config: HttpClientConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmPagerduty {
    pub routing_key: Option<String>,
    pub routing_key_file: Option<PathBuf>,
    pub url: Option<String>,
    #[serde(default)]
    pub send_resolved: Option<bool>,
    #[serde(default)]
    pub http_config: HttpClientConfig,
}

impl ReceiverConfig {
    /// The receiver's notifiers: named after the receiver when it has one config, else
    /// `<receiver>/<kind>/<n>`. Errors carry the key below the receiver and a message.
    pub fn notifiers(&self) -> Result<Vec<(String, NotifierConfig)>, (String, String)> {
        let mut out: Vec<(String, String, NotifierConfig)> = Vec::new();
        for (i, w) in self.webhook_configs.iter().enumerate() {
            let at = format!("webhook_configs.{i}");
            out.push((
                at.clone(),
                format!("webhook/{i}"),
                NotifierConfig::Webhook(WebhookConfig {
                    url: w.url.clone(),
                    headers: BTreeMap::new(),
                    bearer_token: w.http_config.bearer().map_err(|e| (at, e))?,
                    body: None,
                    content_type: "application/json".into(),
                    ca_file: w.http_config.ca_file(),
                    payload: WebhookPayload::Alertmanager,
                }),
            ));
        }
        for (i, e) in self.email_configs.iter().enumerate() {
            let at = format!("email_configs.{i}");
            let (host, port) = match e.smarthost.rsplit_once(':') {
                Some((h, p)) => (
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    p.parse::<u16>().map_err(|_| {
                        (
                            format!("{at}.smarthost"),
                            format!("{:?} is not host:port", e.smarthost),
                        )
                    })?,
                ),
                None => {
                    return Err((
                        format!("{at}.smarthost"),
                        format!("{:?} is not host:port", e.smarthost),
                    ));
                }
            };
            let tls = if port == 465 {
                SmtpTls::Tls
            } else if e.require_tls {
                SmtpTls::Starttls
            } else {
                SmtpTls::None
            };
            let password =
                (e.auth_password.is_some() || e.auth_password_file.is_some()).then(|| Secret {
                    value: e.auth_password.clone(),
                    file: e.auth_password_file.clone(),
                });
            out.push((
                at,
                format!("email/{i}"),
                NotifierConfig::Email(EmailConfig {
                    smtp: SmtpConfig {
                        host,
                        port: Some(port),
                        tls,
                        username: e.auth_username.clone(),
                        password,
                        ca_file: e.tls_config.as_ref().and_then(|t| t.ca_file.clone()),
                    },
                    from: e.from.clone(),
                    to: e
                        .to
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    subject: None,
                    text: None,
                    html: None,
                }),
            ));
        }
        for (i, c) in self.slack_configs.iter().enumerate() {
            let at = format!("slack_configs.{i}");
            if c.api_url.is_none() && c.api_url_file.is_none() {
                return Err((at, "needs api_url or api_url_file".into()));
            }
            out.push((
                at,
                format!("slack/{i}"),
                NotifierConfig::Slack(SlackConfig {
                    url: c.api_url.clone(),
                    url_file: c.api_url_file.clone(),
                    ca_file: c.http_config.ca_file(),
                }),
            ));
        }
        for (i, c) in self.pagerduty_configs.iter().enumerate() {
            let at = format!("pagerduty_configs.{i}");
            if c.routing_key.is_none() && c.routing_key_file.is_none() {
                return Err((at, "needs routing_key or routing_key_file".into()));
            }
            out.push((
                at,
                format!("pagerduty/{i}"),
                NotifierConfig::Pagerduty(PagerdutyConfig {
                    routing_key: Secret {
                        value: c.routing_key.clone(),
                        file: c.routing_key_file.clone(),
                    },
                    url: c
                        .url
                        .clone()
                        .unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into()),
                    ca_file: c.http_config.ca_file(),
                }),
            ));
        }
        for (i, c) in self.alertmanager_configs.iter().enumerate() {
            out.push((
                format!("alertmanager_configs.{i}"),
                format!("alertmanager/{i}"),
                NotifierConfig::Alertmanager(c.clone()),
            ));
        }
        for (i, c) in self.metrics_configs.iter().enumerate() {
            out.push((
                format!("metrics_configs.{i}"),
                format!("metrics/{i}"),
                NotifierConfig::Metrics(c.clone()),
            ));
        }
        let single = out.len() == 1;
        out.into_iter()
            .map(|(at, suffix, n)| {
                n.validate().map_err(|(key, msg)| {
                    let key = key.split_once('.').map_or("", |(_, k)| k).to_owned();
                    (
                        if key.is_empty() {
                            at.clone()
                        } else {
                            format!("{at}.{key}")
                        },
                        msg,
                    )
                })?;
                let name = if single {
                    self.name.clone()
                } else {
                    format!("{}/{suffix}", self.name)
                };
                Ok((name, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(yaml: &str) -> ReceiverConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn alertmanager_receivers_become_notifiers() {
        let r = receiver(
            r#"
name: team-x
email_configs:
  - to: 'a@example.com, b@example.com'
    from: am@example.com
    smarthost: smtp.example.com:587
    auth_username: am
    auth_password_file: /etc/secret
webhook_configs:
  - url: https://hooks.example.com/x
    send_resolved: true
    http_config: { authorization: { credentials_file: /etc/token } }
"#,
        );
        let n = r.notifiers().unwrap();
        let names: Vec<&str> = n.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["team-x/webhook/0", "team-x/email/0"]);
        let NotifierConfig::Email(e) = &n[1].1 else {
            panic!()
        };
        assert_eq!(e.to, ["a@example.com", "b@example.com"]);
        assert_eq!(
            (e.smtp.host.as_str(), e.smtp.port, e.smtp.tls),
            ("smtp.example.com", Some(587), SmtpTls::Starttls)
        );
        let NotifierConfig::Webhook(w) = &n[0].1 else {
            panic!()
        };
        assert_eq!(w.payload, WebhookPayload::Alertmanager);
        assert!(w.bearer_token.as_ref().unwrap().file.is_some());
        let single = receiver("name: pager\npagerduty_configs: [ { routing_key: abc } ]\n");
        assert_eq!(single.notifiers().unwrap()[0].0, "pager");
        assert!(
            receiver("name: blackhole\n")
                .notifiers()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = serde_yaml::from_str::<ReceiverConfig>(
            "name: x\nopsgenie_configs: [ { api_key: k } ]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("opsgenie_configs"), "{e}");
        let e = serde_yaml::from_str::<ReceiverConfig>(
            "name: x\nemail_configs: [ { to: a@x, from: b@x, smarthost: 'h:25', html: '{{ x }}' } ]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("html"), "{e}");
        let bad =
            receiver("name: x\nemail_configs: [ { to: a@x, from: b@x, smarthost: nohostport } ]\n");
        assert_eq!(bad.notifiers().unwrap_err().0, "email_configs.0.smarthost");
    }
}
