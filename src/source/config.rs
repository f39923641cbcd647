//! The sources' settings in the config file: `sources:` is a list of one-key maps
//! (`- webhook: {...}`, `- file: {...}`, `- stdin: {}`). The webhook's own settings are in
//! [`super::webhook::WebhookConfig`].

use std::path::PathBuf;

use serde::Deserialize;

use super::batch::SourceLabels;
use super::tail::StartAt;
use super::webhook::WebhookConfig;
use crate::event::{InputFormat, Span};
use crate::units::Duration;

/// One input. Written as a map with one key: `- webhook: {...}`, `- file: {...}`, `- stdin: {}`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Webhook(WebhookConfig),
    File(FileConfig),
    Stdin(StdinConfig),
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A struct of options rather than an enum: serde_yaml's `Value` only reads enums
        // written as YAML tags, and the one-key map reads better.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OneOf {
            webhook: Option<WebhookConfig>,
            file: Option<FileConfig>,
            stdin: Option<StdinConfig>,
        }
        let one = OneOf::deserialize(d)?;
        match (one.webhook, one.file, one.stdin) {
            (Some(w), None, None) => Ok(SourceConfig::Webhook(w)),
            (None, Some(f), None) => Ok(SourceConfig::File(f)),
            (None, None, Some(s)) => Ok(SourceConfig::Stdin(s)),
            _ => Err(serde::de::Error::custom(
                "a source is a map with exactly one of `webhook`, `file`, `stdin` (e.g. `- stdin: {}`)",
            )),
        }
    }
}

impl SourceConfig {
    pub fn labels(&self) -> &SourceLabels {
        match self {
            SourceConfig::Webhook(w) => &w.labels,
            SourceConfig::File(f) => &f.labels,
            SourceConfig::Stdin(s) => &s.labels,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Webhook(w) => &w.name,
            SourceConfig::File(f) => &f.name,
            SourceConfig::Stdin(s) => &s.name,
        }
    }

    pub fn input_format(&self) -> InputFormat {
        match self {
            SourceConfig::Webhook(w) => w.input_format,
            SourceConfig::File(f) => f.input_format,
            SourceConfig::Stdin(s) => s.input_format,
        }
    }

    /// How far out of event-time order this source's events may arrive: its own `lateness`,
    /// else its input format's ([`InputFormat::lateness`]) but at least `engine_lateness`.
    pub fn lateness(&self, engine_lateness: Span) -> Span {
        let own = match self {
            SourceConfig::Webhook(w) => w.lateness,
            SourceConfig::File(f) => f.lateness,
            SourceConfig::Stdin(s) => s.lateness,
        };
        own.map_or_else(
            || self.input_format().lateness().max(engine_lateness),
            |d| d.0,
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub name: String,
    /// Labels every alert from this source carries (`cluster: prod-eu`).
    #[serde(default)]
    pub labels: SourceLabels,
    pub path: PathBuf,
    /// How often the file is checked for new lines and rotation.
    #[serde(default = "default_poll")]
    pub poll_interval: Duration,
    /// Where to start reading when there is no checkpoint yet: `end` (default, like
    /// `tail -F`) or `beginning`. With a checkpoint, reading always resumes at it.
    #[serde(default = "default_start")]
    pub start_at: StartAt,
    #[serde(default)]
    pub input_format: InputFormat,
    /// See [`SourceConfig::lateness`].
    #[serde(default)]
    pub lateness: Option<Duration>,
}

fn default_start() -> StartAt {
    StartAt::End
}

fn default_poll() -> Duration {
    Duration(Span::from_millis(200))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdinConfig {
    pub name: String,
    /// Labels every alert from this source carries.
    pub labels: SourceLabels,
    pub input_format: InputFormat,
    /// See [`SourceConfig::lateness`].
    pub lateness: Option<Duration>,
}

impl Default for StdinConfig {
    fn default() -> Self {
        StdinConfig {
            name: "stdin".into(),
            labels: SourceLabels::default(),
            input_format: InputFormat::Auto,
            lateness: None,
        }
    }
}
