//! The daemon's configuration file (`auditwatch run --config auditwatch.yaml`).
//!
//! Every field has a default that works on a laptop, so an empty file (or no file) is a valid
//! configuration: a webhook on 127.0.0.1, the rules in `rules/` (or the built-in packs), state
//! in `./auditwatch-state`, alerts on stdout. Unknown keys are errors, and every error names
//! `file:line:column`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use crate::engine::EngineConfig;
use crate::event::Span;
pub use crate::net::tls::TlsConfig;
pub use crate::ops::HttpConfig;
use crate::position::{PositionIndex, PositionedError};
pub use crate::source::webhook::WebhookConfig;
pub use crate::source::{FileConfig, SourceConfig, StdinConfig};
pub use crate::state::{FsyncPolicy, JournalConfig, SnapshotConfig};
pub use crate::units::{ByteSize, Duration};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] PositionedError),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the ingest journal, snapshots, checkpoints and the alert journal live.
    pub state_dir: PathBuf,
    /// Rule files or directories. Empty: `rules/` if it exists, else the built-in packs.
    pub rules: Vec<PathBuf>,
    pub reload: ReloadConfig,
    pub engine: EngineConfig,
    pub sources: Vec<SourceConfig>,
    pub http: HttpConfig,
    pub journal: JournalConfig,
    pub snapshot: SnapshotConfig,
    pub pipeline: PipelineConfig,
    pub alerts: AlertOutputConfig,
    /// Receivers as Alertmanager writes them (`- name: x` with `webhook_configs`,
    /// `email_configs`, …); each config becomes a notifier.
    pub receivers: Vec<crate::notify::receivers::ReceiverConfig>,
    /// Deprecated for `receivers`: named notifiers (email, webhook, slack, alertmanager,
    /// pagerduty, metrics). After loading, it holds every notifier, including those the
    /// receivers stand for.
    pub notifiers: std::collections::BTreeMap<String, crate::notify::config::NotifierConfig>,
    /// The routing tree's root.
    pub route: crate::notify::config::RouteConfig,
    /// Alertmanager's inhibit rules.
    pub inhibit_rules: Vec<crate::notify::inhibit::InhibitRuleConfig>,
    /// Alertmanager's named time intervals (`mute_time_intervals:` is its older name).
    #[serde(alias = "mute_time_intervals")]
    pub time_intervals: Vec<crate::notify::interval::TimeIntervalConfig>,
    pub delivery: crate::notify::config::DeliveryConfig,
    /// The event archive (docs/evidence.md).
    pub archive: crate::archive::ArchiveConfig,
    /// Bounds on silences made through the API.
    pub silences: crate::notify::silence::SilenceLimits,
    pub log: LogConfig,
    /// Cluster mode on NATS JetStream (docs/scale.md). Absent: one process does everything.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Deprecations and other warnings found while loading, as `file:line:column: text`.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// After loading: each entry of `receivers` and the notifiers it became.
    #[serde(skip)]
    pub receiver_notifiers: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("auditwatch-state"),
            rules: Vec::new(),
            reload: ReloadConfig::default(),
            engine: EngineConfig::default(),
            sources: vec![SourceConfig::Webhook(WebhookConfig::default())],
            http: HttpConfig::default(),
            journal: JournalConfig::default(),
            snapshot: SnapshotConfig::default(),
            pipeline: PipelineConfig::default(),
            alerts: AlertOutputConfig::default(),
            receivers: Vec::new(),
            notifiers: Default::default(),
            route: Default::default(),
            inhibit_rules: Vec::new(),
            time_intervals: Vec::new(),
            delivery: Default::default(),
            archive: Default::default(),
            silences: Default::default(),
            log: LogConfig::default(),
            cluster: None,
            warnings: Vec::new(),
            receiver_notifiers: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when a rule file changes (checked every `interval`); SIGHUP always reloads.
    pub watch: bool,
    pub interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: Duration(Span::from_secs(2)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Batches queued for the engine; when full, the webhook answers 429 and files wait.
    pub queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig { queue: 64 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    Text,
    Json,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertOutputConfig {
    pub stdout: StdoutFormat,
    /// Per-rule firing rate limit (on by default): docs/alerts.md, "Alert storms".
    pub storm: crate::alert::storm::StormConfig,
}

impl Default for AlertOutputConfig {
    fn default() -> Self {
        AlertOutputConfig {
            stdout: StdoutFormat::Text,
            storm: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `auditwatch=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&path.display().to_string(), &text)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Makes relative paths relative to `dir` (the config file's directory), so that a config
    /// means the same whatever the working directory is.
    fn resolve_paths(&mut self, dir: &Path) {
        let mut paths: Vec<&mut PathBuf> = vec![&mut self.state_dir];
        paths.extend(self.rules.iter_mut());
        for source in &mut self.sources {
            match source {
                SourceConfig::Webhook(w) => paths.extend(w.paths_mut()),
                SourceConfig::File(f) => paths.push(&mut f.path),
                SourceConfig::Stdin(_) => {}
            }
        }
        paths.extend(self.http.paths_mut());
        paths.extend(self.archive.dir.as_mut());
        paths.extend(self.archive.sign_key.as_mut());
        for notifier in self.notifiers.values_mut() {
            paths.extend(notifier.paths_mut());
        }
        for p in paths {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Parses config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| PositionedError::from_yaml(file, &e))?;
        let index = PositionIndex::build(text);
        let mut config: Config = if value.is_null() {
            Config::default()
        } else {
            serde_path_to_error::deserialize(value)
                .map_err(|e| crate::position::path_error(file, &index, "", "", &e))?
        };
        config
            .finish(&index)
            .map_err(|(path, msg)| PositionedError::at(file, index.value(&path), msg))?;
        let mut warnings: Vec<_> = config
            .deprecations()
            .into_iter()
            .map(|(path, msg)| (index.key(&path), msg))
            .collect();
        warnings.sort_by_key(|(pos, _)| (pos.line, pos.column));
        config.warnings = warnings
            .into_iter()
            .map(|(pos, msg)| PositionedError::at(file, pos, msg).to_string())
            .collect();
        Ok(config)
    }

    /// What the file says in the first vocabulary, with what to write instead: (key path,
    /// message). Still loaded, with the same meaning, except `repeat_interval`.
    fn deprecations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.receivers.is_empty() && !self.notifiers.is_empty() {
            out.push((
                "notifiers".to_owned(),
                "`notifiers:` is deprecated: write `receivers:` as in Alertmanager (- name: x, webhook_configs: [...]); docs/notifications.md has the table".to_owned(),
            ));
        }
        self.route.deprecations("route", &mut out);
        if !self.notifiers.is_empty()
            && self.receivers.is_empty()
            && let Some(path) = self.route.sets_repeat_interval("route")
        {
            out.push((
                path,
                "repeat_interval now has Alertmanager's meaning (send a group that is still firing again after this long); before, it folded re-firings, which is now `fold_interval`".to_owned(),
            ));
        }
        out
    }

    /// The names a rule's own `notify` list may use: receivers and notifiers.
    pub fn notify_names(&self) -> std::collections::BTreeSet<String> {
        self.receiver_notifiers
            .keys()
            .chain(self.notifiers.keys())
            .cloned()
            .collect()
    }

    /// Fills in derived defaults and checks what serde cannot.
    fn finish(&mut self, _index: &PositionIndex) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        let mut listens = std::collections::HashSet::new();
        let mut stdin = 0;
        for (i, source) in self.sources.iter_mut().enumerate() {
            match source {
                SourceConfig::File(f) if f.name.is_empty() => {
                    f.name = format!("file:{}", f.path.display());
                }
                SourceConfig::Webhook(w) => {
                    if !listens.insert(w.listen) {
                        return Err((
                            format!("sources.{i}.webhook.listen"),
                            format!("two webhook sources listen on {}", w.listen),
                        ));
                    }
                    if !w.path.is_empty() && !w.path.starts_with('/') {
                        return Err((
                            format!("sources.{i}.webhook.path"),
                            format!("path {:?} must start with /", w.path),
                        ));
                    }
                }
                SourceConfig::Stdin(_) => stdin += 1,
                _ => {}
            }
            let kind = match source {
                SourceConfig::Webhook(_) => "webhook",
                SourceConfig::File(_) => "file",
                SourceConfig::Stdin(_) => "stdin",
            };
            if source.labels().len() > 16 {
                return Err((
                    format!("sources.{i}.{kind}.labels"),
                    "at most 16 labels per source".into(),
                ));
            }
            for (k, v) in source.labels() {
                let name_ok = k.chars().enumerate().all(|(j, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (j > 0 && c.is_ascii_digit())
                }) && !k.is_empty();
                if !name_ok {
                    return Err((
                        format!("sources.{i}.{kind}.labels.{k}"),
                        format!("{k:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                    ));
                }
                if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
                    return Err((
                        format!("sources.{i}.{kind}.labels.{k}"),
                        "a label value is 1 to 128 bytes without control characters".into(),
                    ));
                }
            }
            if !names.insert(source.name().to_owned()) {
                return Err((
                    format!("sources.{i}"),
                    format!("duplicate source name {:?}", source.name()),
                ));
            }
        }
        if stdin > 1 {
            return Err((
                "sources".into(),
                "stdin can be read by one source only".into(),
            ));
        }
        if self.sources.is_empty() {
            return Err(("sources".into(), "no sources configured".into()));
        }
        if let (Some(http), Some(hook)) = (
            self.http.listen,
            self.sources.iter().find_map(|s| match s {
                SourceConfig::Webhook(w) if Some(w.listen) == self.http.listen => Some(w),
                _ => None,
            }),
        ) {
            return Err((
                "http.listen".into(),
                format!(
                    "{http} is also the listen address of webhook source {:?}",
                    hook.name
                ),
            ));
        }
        let mut receivers = std::collections::BTreeMap::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let expanded = r
                .notifiers()
                .map_err(|(key, msg)| (format!("receivers.{i}.{key}"), msg))?;
            let mut names = Vec::new();
            for (name, n) in expanded {
                if self.notifiers.insert(name.clone(), n).is_some() {
                    return Err((
                        format!("receivers.{i}.name"),
                        format!("{name:?} is also the name of a notifier"),
                    ));
                }
                names.push(name);
            }
            if receivers.insert(r.name.clone(), names).is_some() {
                return Err((
                    format!("receivers.{i}.name"),
                    format!("duplicate receiver {:?}", r.name),
                ));
            }
        }
        let mut interval_names = Vec::new();
        for (i, t) in self.time_intervals.iter().enumerate() {
            crate::notify::interval::TimeInterval::compile(t)
                .map_err(|(key, msg)| (format!("time_intervals.{i}.{key}"), msg))?;
            if interval_names.contains(&t.name) {
                return Err((
                    format!("time_intervals.{i}.name"),
                    format!("duplicate time interval {:?}", t.name),
                ));
            }
            interval_names.push(t.name.clone());
        }
        for (i, r) in self.inhibit_rules.iter().enumerate() {
            r.compile().map_err(|(key, msg)| match key.as_str() {
                "" => (format!("inhibit_rules.{i}"), msg),
                _ => (format!("inhibit_rules.{i}.{key}"), msg),
            })?;
        }
        self.route
            .resolve("route", &receivers, &self.notifiers, &interval_names)?;
        self.receiver_notifiers = receivers;
        self.route.validate("route", &self.notifiers)?;
        for (name, n) in &self.notifiers {
            n.validate()
                .map_err(|(key, msg)| (format!("notifiers.{name}.{key}"), msg))?;
        }
        self.http.validate()?;
        if self.pipeline.queue == 0 {
            return Err(("pipeline.queue".into(), "must be at least 1".into()));
        }
        if let Some(cluster) = &self.cluster {
            for (i, source) in self.sources.iter().enumerate() {
                if matches!(source, SourceConfig::Stdin(_)) {
                    return Err((
                        format!("sources.{i}"),
                        "cluster mode receives through webhook and file sources; run stdin in a single-process auditwatch".into(),
                    ));
                }
            }
            let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
            cluster
                .validate(&names)
                .map_err(|msg| ("cluster".to_owned(), msg))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_laptop_default() {
        let c = Config::parse("c.yaml", "# nothing\n").unwrap();
        assert!(
            matches!(&c.sources[..], [SourceConfig::Webhook(w)] if w.listen.ip().is_loopback())
        );
        assert_eq!(c.journal.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
state_dir: /var/lib/auditwatch
rules: [/etc/auditwatch/rules]
engine: { lateness: 10s, idle_after: 30s }
sources:
  - webhook:
      listen: 0.0.0.0:8443
      tls: { cert: tls.crt, key: tls.key, client_ca: ca.crt }
      bearer_token_file: token
      max_body: 16MiB
  - file: { path: /var/log/kubernetes/audit/audit.log }
journal: { fsync: never, max_size: 2GiB }
"#;
        let c = Config::parse("c.yaml", text).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(
            c.sources[1].name(),
            "file:/var/log/kubernetes/audit/audit.log"
        );
        assert_eq!(c.journal.max_size, ByteSize(2 << 30));
        assert_eq!(c.engine.lateness.0, Span::from_secs(10));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = std::env::temp_dir().join(format!("aw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auditwatch.yaml");
        std::fs::write(
            &file,
            "state_dir: state\nrules: [rules, /abs/rules]\nsources:\n  - webhook:\n      tls: {cert: tls/c.pem, key: tls/k.pem, client_ca: /ca.pem}\n  - file: {path: audit.log}\nnotifiers:\n  pd: {pagerduty: {routing_key: {file: key}}}\nhttp:\n  auth: {bearer_token_file: api/token, basic_auth_users_file: /etc/users}\n  tls: {cert: h.crt, key: h.key}\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.rules, [dir.join("rules"), PathBuf::from("/abs/rules")]);
        let SourceConfig::Webhook(w) = &c.sources[0] else {
            panic!("webhook first")
        };
        let tls = w.tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.join("tls/c.pem"));
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/ca.pem")));
        let SourceConfig::File(f) = &c.sources[1] else {
            panic!("file second")
        };
        assert_eq!(f.path, dir.join("audit.log"));
        let crate::notify::config::NotifierConfig::Pagerduty(pd) = &c.notifiers["pd"] else {
            panic!("pagerduty")
        };
        assert_eq!(pd.routing_key.file.as_deref(), Some(&*dir.join("key")));
        assert_eq!(
            c.http.auth.bearer_token_file.as_deref(),
            Some(&*dir.join("api/token"))
        );
        assert_eq!(
            c.http.auth.basic_auth_users_file.as_deref(),
            Some(Path::new("/etc/users"))
        );
        assert_eq!(c.http.tls.as_ref().unwrap().key, dir.join("h.key"));
    }

    #[test]
    fn errors_point_at_file_line_column() {
        let text =
            "sources:\n  - webhook:\n      listen: 127.0.0.1:8443\n      max_body: 12 parsecs\n";
        let e = Config::parse("c.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:4:17: "), "{e}");
        assert!(e.contains("unknown unit"), "{e}");

        let text = "sources:\n  - file:\n      path: a.log\n      pol_interval: 1s\n";
        let e = Config::parse("c.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:4:7: "), "{e}");
        assert!(e.contains("unknown field `pol_interval`"), "{e}");

        let text = "engine:\n  lateness: soon\n";
        let e = Config::parse("c.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:2:13: "), "{e}");

        let text = "sources:\n  - file: { path: a }\n  - file: { path: a }\n";
        let e = Config::parse("c.yaml", text).unwrap_err().to_string();
        assert!(
            e.starts_with("c.yaml:3:") && e.contains("duplicate source name"),
            "{e}"
        );

        let e = Config::parse("c.yaml", "sources: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.yaml:2:1: "), "{e}");
    }

    #[test]
    fn alertmanager_words_load_and_their_mistakes_point_at_their_place() {
        let ok = Config::parse(
            "c.yaml",
            "receivers:\n  - name: oncall\n    webhook_configs: [ { url: \"http://127.0.0.1:1/x\" } ]\n    pagerduty_configs: [ { routing_key: k } ]\nroute:\n  receiver: oncall\n",
        )
        .unwrap();
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
        assert_eq!(
            ok.receiver_notifiers["oncall"],
            ["oncall/webhook/0", "oncall/pagerduty/0"]
        );
        assert!(ok.notify_names().contains("oncall"));
        assert_eq!(ok.route.notify, ["oncall/webhook/0", "oncall/pagerduty/0"]);
        for (text, at, needle) in [
            (
                "receivers:\n  - name: x\n    opsgenie_configs: []\n",
                "c.yaml:3:5: ",
                "unknown field `opsgenie_configs`",
            ),
            (
                "receivers:\n  - name: x\nroute:\n  receiver: x\n  routes:\n    - mute_time_intervals: [nights]\n",
                "c.yaml:6:29: ",
                "unknown time interval \"nights\"",
            ),
            (
                "time_intervals:\n  - name: n\n    time_intervals: [ { weekdays: [someday] } ]\n",
                "c.yaml:3:36: ",
                "not a weekday",
            ),
            (
                "inhibit_rules:\n  - target_matchers: ['rule=x']\n",
                "c.yaml:2:",
                "needs source matchers",
            ),
        ] {
            let e = Config::parse("c.yaml", text).unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn notifier_and_route_errors_point_at_their_place() {
        let cases = [
            (
                "notifiers:\n  hook: { webhook: { url: \"http://127.0.0.1:1/x\" } }\nroute:\n  notify: [hook, pager]\n",
                "c.yaml:4:18: ",
                "unknown notifier \"pager\"",
            ),
            (
                "notifiers:\n  hook: { webhok: { url: x } }\n",
                "c.yaml:2:11: ",
                "unknown field `webhok`",
            ),
            (
                "notifiers:\n  m: { email: { smtp: { host: h }, from: \"not an address\", to: [a@b] } }\n",
                "c.yaml:2:42: ",
                "not an address",
            ),
            (
                "notifiers:\n  h: { webhook: { url: \"ftp://x\" } }\n",
                "c.yaml:2:24: ",
                "is not http or https",
            ),
            (
                "notifiers:\n  h:\n    email:\n      smtp: { host: h }\n      from: a@b\n      to: [a@b]\n      subject: \"{{ oops\"\n",
                "c.yaml:7:16: ",
                "invalid template",
            ),
            (
                "route:\n  group_wait: soon\n",
                "c.yaml:2:15: ",
                "invalid duration",
            ),
        ];
        for (text, at, what) in cases {
            let e = Config::parse("c.yaml", text).unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(what), "{text}\n=> {e}");
        }
    }

    #[test]
    fn cluster_mode_takes_webhook_and_file_sources_and_points_at_what_it_refuses() {
        let base = "cluster: { nats: [nats://127.0.0.1:4222], partitions: [prod] }\n";
        let ok = format!(
            "{base}sources:\n  - webhook: {{ name: audit }}\n  - file: {{ name: log, path: /var/log/a.log }}\n"
        );
        let c = Config::parse("c.yaml", &ok).unwrap();
        assert_eq!(c.cluster.unwrap().partitions, ["prod"]);
        let stdin = format!("{base}sources:\n  - stdin: {{}}\n");
        let err = Config::parse("c.yaml", &stdin).unwrap_err().to_string();
        assert!(err.starts_with("c.yaml:3:"), "{err}");
        assert!(err.contains("stdin"), "{err}");
        // A file source's default name ("file:/var/log/a.log") cannot name a subject.
        let unnamed = format!("{base}sources:\n  - file: {{ path: /var/log/a.log }}\n");
        let err = Config::parse("c.yaml", &unnamed).unwrap_err().to_string();
        assert!(err.contains("sources[].name"), "{err}");
        let bad = "cluster: { nats: [], partitions: [prod] }\n";
        let err = Config::parse("c.yaml", bad).unwrap_err().to_string();
        assert!(err.starts_with("c.yaml:1:"), "{err}");
        assert!(err.contains("cluster.nats"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512KiB").unwrap(), ByteSize(512 << 10));
        assert_eq!(ByteSize::parse("10MB").unwrap(), ByteSize(10_000_000));
        assert!(ByteSize::parse("MiB").is_err());
    }
}
