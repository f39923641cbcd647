//! `auditwatch`: the command line. Parses arguments, calls the library, maps outcomes to exit
//! codes (0 ok, 1 invalid rules / failed tests, 2 usage or I/O error).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use auditwatch::alert::query::AlertQuery;
use auditwatch::engine::EngineOptions;
use auditwatch::event::{InputFormat, Span};
use auditwatch::replay::{Diagnostic, ReplayReport, replay};
use auditwatch::rules::{LoadError, LoadOptions, RuleSet, ScriptLimits, Severity};
use auditwatch::{bundled, ruletest};

/// mimalloc instead of glibc's malloc: under key churn (windows evicting and creating keys)
/// glibc's free-list coalescing was 10-15% of the engine's profile, and replay is ~8% faster
/// (benches/throughput.rs). It keeps ~12 MB more resident at rest.
///
/// Built without transparent huge pages (`no_thp`): with them, memory mimalloc hands out
/// fresh is faulted in and zeroed 2 MiB at a time, and a cluster worker, which moves hundreds
/// of batch-sized buffers a second between its threads, spent a tenth of a core zeroing
/// pages (perf: `clear_page_erms` under `do_huge_pmd_anonymous_page`). Without: a worker's
/// CPU per event fell by about a sixth and its RSS from ~90 to ~50 MiB; replay's speed is
/// unchanged and its RSS fell from 48 to 31 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "auditwatch",
    version,
    about = "Alerting rules engine for Kubernetes audit logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum RoutesAction {
    /// Print the routing tree.
    Show {
        #[arg(long, short, env = "AUDITWATCH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The notifiers an alert with these fields reaches: `rule=NAME`, `severity=LEVEL`,
    /// `kind=event|count|...`, `group.FIELD=VALUE`, any other `NAME=VALUE` is a rule label.
    Test {
        #[arg(long, short, env = "AUDITWATCH_CONFIG")]
        config: Option<PathBuf>,
        #[arg(required = true)]
        fields: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Print a shell completion script: `auditwatch completions bash > /etc/bash_completion.d/auditwatch`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `auditwatch man | man -l -`.
    Man,
    /// The notification routing tree of a config: `routes show` prints it, `routes test
    /// rule=pod-exec severity=high team=apps` prints the notifiers such an alert reaches (as
    /// `amtool config routes test` does).
    Routes {
        #[command(subcommand)]
        action: RoutesAction,
    },
    /// Validate rule files and directories; print every error as file:line:column.
    Check {
        /// Rule files or directories (searched recursively for *.yaml, *.yml).
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        /// Also check that this kube-apiserver audit Policy records every event the rules
        /// look at, at the level they need (e.g. ingress specs at Request or above).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Run rules over audit logs in event time and print the alerts.
    Replay {
        /// A rule file or directory; repeat for several (`--rules site.yaml --rules rules/`).
        /// Default: the packs built into this binary (rules/).
        #[arg(long, short, value_name = "RULES")]
        rules: Vec<PathBuf>,
        /// Output format of the alerts on stdout.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// How late (in event time) an event may arrive and still count in windows. The
        /// default covers every input format's delivery delays (docs/rules.md).
        #[arg(long, default_value_t = auditwatch::engine::REPLAY_LATENESS, value_parser = parse_span)]
        lateness: Span,
        /// Rhai operation budget per condition run.
        #[arg(long, default_value_t = 100_000)]
        max_operations: u64,
        /// Report at most this many bad records (all are counted).
        #[arg(long, default_value_t = 100)]
        max_errors: usize,
        /// How to read the input: native audit events, or a managed cluster's export (EKS
        /// CloudWatch Logs, AKS diagnostic records, GKE Cloud Audit Logs); `auto` recognises
        /// each record's shape (docs/inputs.md).
        #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
        input_format: InputFormat,
        /// Audit log files: JSON lines, an Event, an EventList or an array; `-` is stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write every event read into an archive directory of Parquet segments
        /// (docs/evidence.md), readable by DuckDB and the other Parquet engines.
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
        /// Sign the archive's manifest entries with this Ed25519 key (`auditwatch keygen`).
        #[arg(long, value_name = "FILE", requires = "archive")]
        sign_key: Option<PathBuf>,
    },
    /// Run the daemon: receive live audit events (webhook, log files, stdin) and alert.
    ///
    /// Without --config: a webhook on 127.0.0.1:8443 (plain HTTP), metrics on
    /// 127.0.0.1:9095, rules from ./rules (or the built-in packs), state in
    /// ./auditwatch-state, alerts on stdout.
    Run {
        /// The daemon's YAML configuration (see docs/daemon.md).
        #[arg(long, short, env = "AUDITWATCH_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the configuration and the rules, then exit.
        #[arg(long)]
        check: bool,
        /// Start even if an ingest journal segment is damaged: its records before the damage
        /// are replayed, the file is kept beside it as *.corrupt-<time>, the batches after the
        /// damage are lost (and said so in the log). Without it, start is refused.
        #[arg(long)]
        skip_corrupt: bool,
    },
    /// Filter and count audit events without writing a rule: `auditwatch query
    /// 'responsestatus_code=403 and verb=list' --groupby username audit.log`.
    ///
    /// The filter: fields (rule paths such as responseStatus.code, or lower-case aliases such
    /// as responsestatus_code, username, resource, code), `=`, `!=` (with * and ? wildcards),
    /// `<`, `<=`, `>`, `>=` (numbers and times), `in (a, b)`, `and`, `or`, `not`, parentheses.
    /// Exit codes: 0 done, 2 a bad query or no readable input.
    Query {
        /// The filter ('' for every event).
        query: String,
        /// What to read: archive directories or segments (`*.parquet`), or audit log files
        /// (JSON lines, an EventList, or a managed export; `-` is stdin). Default: the archive
        /// (--archive).
        files: Vec<PathBuf>,
        /// The archive read when no PATH is given: the daemon's default (`archive/` under
        /// its state directory).
        #[arg(long, default_value = "auditwatch-state/archive")]
        archive: PathBuf,
        /// Fields to group by, comma-separated (`--groupby username,verb`).
        #[arg(long, value_delimiter = ',')]
        groupby: Vec<String>,
        /// count, distinct(FIELD), first or last (event time).
        #[arg(long, default_value = "count")]
        agg: String,
        /// Only events at most this old (1h) or at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_when, conflicts_with = "from")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events at or after this time (RFC 3339, or an age).
        #[arg(long, value_parser = parse_when)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events before this time (RFC 3339, or an age).
        #[arg(long, value_parser = parse_when)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Only the N groups with the most events.
        #[arg(long)]
        top: Option<usize>,
        /// A time series: one row per bucket of this length (5m, 1h); drawn as bars on a TTY.
        #[arg(long, value_parser = parse_span)]
        every: Option<Span>,
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
        /// How to read the input (see `replay --help`).
        #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
        input_format: InputFormat,
    },
    /// Check an event archive's chain: every segment's size and SHA-256 against the manifest,
    /// every manifest entry's link to the one before, no segment missing or unlisted.
    ///
    /// Exit codes: 0 intact, 1 tampered (the first broken link is printed), 2 unreadable.
    Verify {
        /// The archive directory (holding manifest.jsonl and segment-*.parquet), or the
        /// daemon's state dir: its archive/ and its alert journal (alerts.jsonl and the hash
        /// chain beside it, alerts.jsonl.chain).
        dir: PathBuf,
        /// The alert chain's head published elsewhere (the daemon logs it and exports it as
        /// auditwatch_alert_chain_head).
        #[arg(long, value_name = "HASH")]
        expect_alerts_head: Option<String>,
        /// The chain head published elsewhere (the `head` a replay or the daemon printed): the
        /// chain must reach it, which catches a manifest rolled back or rewritten.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Require every manifest entry to be signed by one of these keys (a file of
        /// `ID PUBLIC_KEY_HEX` lines, as `auditwatch keygen` prints them).
        #[arg(long, value_name = "FILE")]
        trusted_keys: Option<PathBuf>,
    },
    /// Explain an alert: the alert, each contributing request in full from the archive, which
    /// of the rule's criteria each met, and the same user's other requests within ±15 min.
    /// Reads the daemon's state dir (or its --config); after a replay, give --alerts (the
    /// replay's `--format json` output) and --archive. Exit codes: 0 done, 2 not found.
    Explain {
        /// The alert's ID, or a unique start of it.
        id: String,
        /// The daemon's config: its state_dir, archive dir and rules.
        #[arg(long, env = "AUDITWATCH_CONFIG")]
        config: Option<PathBuf>,
        /// The daemon's state dir (alerts.jsonl and archive/ in it).
        #[arg(long, default_value = "auditwatch-state")]
        state_dir: PathBuf,
        /// Alerts as JSON lines (default: STATE_DIR/alerts.jsonl).
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// Archive directories or segments (default: the config's, or STATE_DIR/archive).
        #[arg(long)]
        archive: Vec<PathBuf>,
        /// Rule files or directories (default: the config's, or the built-in packs).
        #[arg(long)]
        rules: Vec<PathBuf>,
    },
    /// Create an Ed25519 key for signing archive manifests (PKCS#8, mode 0600); prints its
    /// trusted-keys line (`ID PUBLIC_KEY_HEX`) for `verify --trusted-keys`.
    Keygen {
        /// Where to write the private key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// List alerts from the daemon's alert journal (state_dir/alerts.jsonl), oldest first.
    Alerts {
        /// The daemon's state dir.
        #[arg(long, default_value = "auditwatch-state")]
        state_dir: PathBuf,
        /// Only these rules.
        #[arg(long)]
        rule: Vec<String>,
        /// Only this severity or higher (info, low, medium, high, critical).
        #[arg(long, value_parser = parse_severity)]
        min_severity: Option<Severity>,
        /// Only alerts whose last event is at most this old (e.g. 1h) or after this RFC 3339 time.
        #[arg(long, value_parser = parse_when)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only alerts whose last event is before this (age or RFC 3339 time).
        #[arg(long, value_parser = parse_when)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// field=value over rule, severity, kind, labels and group.<field> (repeatable).
        #[arg(long = "where", value_parser = parse_field)]
        fields: Vec<(String, String)>,
        /// Case-insensitive text in the summary, group values, or an event's user or object.
        #[arg(long)]
        grep: Option<String>,
        /// Only the newest N matches.
        #[arg(long)]
        last: Option<usize>,
        /// text: one line per alert (escaped for a terminal); json: one alert object per line,
        /// the alert journal's schema (docs/alerts.md), for jq and scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Show each alert's delivery outcome per notifier.
        #[arg(long)]
        delivery: bool,
    },
    /// Manage silences of a running daemon (its http.listen address).
    ///
    /// When the daemon's http.auth is set, authenticate with --token-file, or with --user and
    /// the password in $AUDITWATCH_PASSWORD.
    Silence {
        /// Base URL of the daemon's HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9095", global = true)]
        url: String,
        /// A file holding the API bearer token (http.auth.bearer_token_file).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// A user of http.auth.basic_auth_users; the password is read from $AUDITWATCH_PASSWORD.
        #[arg(long, global = true)]
        user: Option<String>,
        /// A CA certificate (PEM) to trust for an https URL with a private certificate.
        #[arg(long, global = true)]
        ca_cert: Option<PathBuf>,
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Print an argon2id hash of a password read from stdin, for http.auth.basic_auth_users.
    HashPassword,
    /// Ask a running daemon whether it is healthy: exit 0 on a 2xx answer, 1 otherwise.
    ///
    /// For container health checks where the image has no shell or curl.
    Probe {
        /// The endpoint to ask (/healthz: alive; /readyz: state loaded, accepting events).
        #[arg(default_value = "http://127.0.0.1:9095/healthz")]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = parse_span)]
        timeout: Span,
    },
    /// Run rule unit tests (*.test.yaml) against rules.
    Test {
        /// Rule files or directories.
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        /// A test file or directory; repeat for several. Default: *.test.yaml found under the
        /// rule directories.
        #[arg(long, value_name = "TESTS")]
        tests: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Silence alerts matching every matcher (rule=x, severity!=info, group.user=~"bob.*").
    Add {
        /// One or more NAME OP VALUE, all of which must hold: OP is = (equals), != (differs),
        /// =~ (matches the anchored regex) or !~; NAME is rule (or alertname), severity (ours or
        /// Alertmanager's names: high or critical), kind, id, a label (cluster, team) or
        /// group.<field>. Quote the value if it has spaces: 'group.user="jane doe"'.
        #[arg(required = true, value_name = "MATCHERS")]
        matchers: Vec<String>,
        /// How long (e.g. 2h).
        #[arg(long, default_value = "1h")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who is silencing (default: $USER).
        #[arg(long)]
        author: Option<String>,
        /// Required when the matchers match every alert (rule=~".*"): say that you mean it.
        #[arg(long)]
        confirm_match_all: bool,
    },
    /// List silences (active, pending, and those expired within a week).
    List,
    /// End a silence now (it stays listed, as expired, for a week).
    Expire {
        /// The silence's ID, as `silence list` or the console's silences page shows it.
        id: String,
    },
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse()
}

fn parse_when(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    let span =
        Span::parse(s).map_err(|e| format!("{s:?}: not an RFC 3339 time nor an age ({e})"))?;
    Ok(chrono::Utc::now() - chrono::TimeDelta::nanoseconds(span.0))
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected field=value"))
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueryFormat {
    Table,
    Json,
    Csv,
}

fn parse_span(s: &str) -> Result<Span, String> {
    Span::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "auditwatch",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Routes { action } => run_routes(action),
        Command::Check { rules, policy } => check(&rules, policy.as_deref()),
        Command::Replay {
            rules,
            format,
            lateness,
            max_operations,
            max_errors,
            input_format,
            files,
            archive,
            sign_key,
        } => run_replay(
            &rules,
            format,
            lateness,
            max_operations,
            max_errors,
            input_format,
            &files,
            archive.as_deref().map(|a| (a, sign_key.as_deref())),
        ),
        Command::Test { rules, tests } => run_tests(&rules, &tests),
        Command::Keygen { out } => keygen(&out),
        Command::Explain {
            id,
            config,
            state_dir,
            alerts,
            archive,
            rules,
        } => run_explain(&id, config.as_deref(), state_dir, alerts, archive, rules),
        Command::Verify {
            dir,
            expect_alerts_head,
            expect_head,
            trusted_keys,
        } => run_verify(
            &dir,
            expect_head.as_deref(),
            expect_alerts_head.as_deref(),
            trusted_keys.as_deref(),
        ),
        Command::Query {
            query,
            files,
            archive,
            groupby,
            agg,
            since,
            from,
            to,
            top,
            every,
            format,
            input_format,
        } => run_query(
            &query,
            &if files.is_empty() {
                vec![archive]
            } else {
                files
            },
            &groupby,
            &agg,
            (since.or(from), to),
            (top, every),
            format,
            input_format,
        ),
        Command::Run {
            config,
            check,
            skip_corrupt,
        } => run_daemon(
            config.as_deref(),
            check,
            auditwatch::daemon::RunOptions { skip_corrupt },
        ),
        Command::Alerts {
            state_dir,
            rule,
            min_severity,
            since,
            until,
            fields,
            grep,
            last,
            format,
            delivery,
        } => list_alerts(
            &state_dir,
            &AlertQuery {
                rules: rule,
                min_severity,
                since,
                until,
                fields,
                text: grep,
            },
            last,
            format,
            delivery,
        ),
        Command::Silence {
            url,
            token_file,
            user,
            ca_cert,
            action,
        } => silence(
            &url,
            ApiCredentials {
                token_file,
                user,
                ca_cert,
            },
            action,
        ),
        Command::HashPassword => hash_password(),
        Command::Probe { url, timeout } => probe(
            &url,
            std::time::Duration::from_nanos(timeout.0.max(0) as u64),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each said once: most of auditwatch's errors already end with
/// their cause's text (`path: No such file or directory`), which `{:#}` would repeat.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run_daemon(
    config: Option<&std::path::Path>,
    check_only: bool,
    options: auditwatch::daemon::RunOptions,
) -> anyhow::Result<ExitCode> {
    use auditwatch::config::{Config, LogFormat};
    use auditwatch::daemon::{self, RuleSource};
    let config = match config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(1));
            }
        },
        None => Config::default(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .context("log.level")?;
    // Logs go to stderr; stdout carries alerts.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(color(std::io::stderr().is_terminal()))
            .init(),
    }
    for warning in &config.warnings {
        if check_only {
            eprintln!("warning: {warning}");
        } else {
            tracing::warn!("{warning}");
        }
    }
    let rules = RuleSource::from_config(&config);
    if check_only {
        let opts = LoadOptions {
            script_limits: ScriptLimits {
                max_operations: config.engine.max_operations,
            },
        };
        return match rules.load(&opts) {
            Ok(set) => {
                let notifiers =
                    auditwatch::notify::check_rule_notifiers(&set, &config.notify_names())
                        .and_then(|()| {
                            auditwatch::notify::check_notifiers(&config.notifiers, &config.delivery)
                        });
                if let Err(e) = notifiers {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(1));
                }
                for source in &config.sources {
                    if let auditwatch::config::SourceConfig::Webhook(w) = source
                        && let Err(e) = auditwatch::source::webhook::check(w)
                    {
                        eprintln!("{e}");
                        return Ok(ExitCode::from(1));
                    }
                }
                println!(
                    "ok: configuration valid; {} rules, {} notifiers",
                    set.rules.len(),
                    config.notifiers.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    match daemon::run(config, rules, options) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{e:#}");
            Err(e)
        }
    }
}

/// Loads rules; invalid rules print their errors and yield exit code 1.
fn load(paths: &[PathBuf], limits: ScriptLimits) -> anyhow::Result<Result<RuleSet, ExitCode>> {
    let opts = LoadOptions {
        script_limits: limits,
    };
    let loaded = if paths.is_empty() {
        bundled::load(&opts)
    } else {
        auditwatch::rules::load_paths(paths, &opts)
    };
    match loaded {
        Ok(set) => Ok(Ok(set)),
        Err(LoadError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s) in rules", errors.len());
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

fn check(paths: &[PathBuf], policy: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let set = match load(paths, ScriptLimits::default())? {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    if let Some(path) = policy {
        let policy = match auditwatch::policy::AuditPolicy::load(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(1));
            }
        };
        let gaps = auditwatch::policy::check_rules(&policy, &set);
        for gap in &gaps {
            eprintln!("{}: {gap}", policy.file());
        }
        if !gaps.is_empty() {
            eprintln!(
                "{} requests the rules need are not recorded as needed by {}",
                gaps.len(),
                policy.file()
            );
            return Ok(ExitCode::from(1));
        }
        println!("ok: {} records what every rule needs", policy.file());
    }
    let windowed = set.rules.iter().filter(|r| r.window.is_some()).count();
    println!(
        "ok: {} rules ({} windowed, {} lists) in {} files",
        set.rules.len(),
        windowed,
        set.lists.len(),
        set.files.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn run_replay(
    rules: &[PathBuf],
    format: Format,
    lateness: Span,
    max_operations: u64,
    max_errors: usize,
    input_format: InputFormat,
    files: &[PathBuf],
    archive_dir: Option<(&std::path::Path, Option<&std::path::Path>)>,
) -> anyhow::Result<ExitCode> {
    let set = match load(rules, ScriptLimits { max_operations })? {
        Ok(set) => Arc::new(set),
        Err(code) => return Ok(code),
    };
    let opts = EngineOptions {
        lateness,
        ..EngineOptions::default()
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut write_error: Option<std::io::Error> = None;
    let mut reported = 0usize;
    let mut suppressed = 0usize;
    if let Some((dir, _)) = archive_dir
        && files.iter().any(|f| f == dir)
    {
        eprintln!(
            "error: --archive {} is also an input: archive into another directory",
            dir.display()
        );
        return Ok(ExitCode::from(2));
    }
    let mut archive = match archive_dir {
        Some((dir, sign_key)) => {
            let (mut archive, removed) =
                auditwatch::archive::Archive::open(dir, Default::default())
                    .with_context(|| format!("opening the archive {}", dir.display()))?;
            if let Some(key) = sign_key {
                let signer = auditwatch::archive::manifest::Signer::from_file(key)
                    .map_err(anyhow::Error::msg)?;
                archive.sign_with(signer);
            }
            for path in removed {
                eprintln!(
                    "warning: {}: an unsealed segment from an interrupted run, removed",
                    path.display()
                );
            }
            Some(archive)
        }
        None => None,
    };
    let progress = std::sync::Arc::new(auditwatch::replay::Progress::default());
    let bar = ProgressBar::start(files, &progress);
    let mut report = replay(
        set,
        files,
        input_format,
        opts,
        archive.as_mut(),
        Some(&progress),
        &mut |alert| {
            if write_error.is_some() {
                return;
            }
            // JSON goes straight into the buffered writer: no line string per alert.
            let written = match format {
                Format::Json => serde_json::to_writer(&mut out, &alert)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n")),
                Format::Text => writeln!(out, "{}", alert.to_text_line()),
            };
            if let Err(e) = written {
                write_error = Some(e);
            }
        },
        &mut |diag: Diagnostic| {
            if reported < max_errors {
                reported += 1;
                eprintln!("warning: {diag}");
            } else {
                suppressed += 1;
            }
        },
    );
    drop(bar);
    out.flush().ok();
    if let Some(e) = write_error
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing alerts");
    }
    if suppressed > 0 {
        eprintln!("warning: {suppressed} more problems not shown (see --max-errors)");
    }
    print_summary(&report);
    if let Some(archive) = archive.as_mut() {
        match archive.seal() {
            Ok(sealed) => report.archived.extend(sealed),
            Err(e) => report.archive_error = Some(e.to_string()),
        }
        let (events, bytes) = report
            .archived
            .iter()
            .fold((0, 0), |(e, b), s| (e + s.events, b + s.bytes));
        eprintln!(
            "archive: {} segments, {events} events, {:.1} MiB; head {}",
            report.archived.len(),
            bytes as f64 / 1048576.0,
            archive.head()
        );
        if let Some(e) = &report.archive_error {
            eprintln!("error: archiving stopped: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(if report.io_errors > 0 && report.events == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// A one-line progress display on stderr (bytes, records/s, ETA), only when stderr is a
/// terminal: redrawn five times a second by a thread of its own, erased when the run ends.
struct ProgressBar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(
        files: &[PathBuf],
        progress: &std::sync::Arc<auditwatch::replay::Progress>,
    ) -> ProgressBar {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return ProgressBar { stop, thread: None };
        }
        // A total only when every input is a plain log file (stdin and archives have none).
        let total: Option<u64> = files
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok().filter(|m| m.is_file())?;
                (f.extension().is_none_or(|e| e != "parquet")).then_some(m.len())
            })
            .sum();
        let (progress, done) = (
            std::sync::Arc::clone(progress),
            std::sync::Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let started = std::time::Instant::now();
            while !done.load(Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let (records, bytes) =
                    (progress.records.load(Relaxed), progress.bytes.load(Relaxed));
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let mut line = format!(
                    "{:.0} MiB, {:.0}k records/s",
                    bytes as f64 / 1048576.0,
                    records as f64 / secs / 1e3
                );
                if let Some(total) = total.filter(|t| *t > 0) {
                    let share = (bytes as f64 / total as f64).min(1.0);
                    let eta = if share > 0.0 {
                        secs / share - secs
                    } else {
                        0.0
                    };
                    line = format!(
                        "{:>3.0}% of {:.0} MiB: {line}, ETA {eta:.0}s",
                        share * 100.0,
                        total as f64 / 1048576.0
                    );
                }
                eprint!("\r\x1b[2K{line}");
            }
            eprint!("\r\x1b[2K");
        });
        ProgressBar {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string
/// (no-color.org).
fn color(terminal: bool) -> bool {
    color_with(terminal, std::env::var_os("NO_COLOR"))
}

fn color_with(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn print_summary(r: &ReplayReport) {
    let mut err = std::io::stderr().lock();
    let color = color(std::io::stderr().is_terminal());
    let _ = writeln!(err);
    // Each rule's CPU share, estimated from the events the engine timed (one in
    // PROFILE_EVERY): match block, condition, window and alert building.
    let cpu = cpu_time();
    let cost = |s: &auditwatch::engine::RuleStats| match cpu {
        Some(cpu) if cpu > 0.0 => format!(
            "{:.1}%",
            s.sampled_nanos as f64 * auditwatch::engine::PROFILE_EVERY as f64 / 1e9 / cpu * 100.0
        ),
        _ => "n/a".into(),
    };
    let _ = writeln!(
        err,
        "{:<44} {:>9} {:>7} {:>9} {:>8} {:>6} {:>6}",
        "rule", "matched", "alerts", "throttled", "errors", "late", "cpu"
    );
    for (name, s) in &r.rules {
        let line = format!(
            "{:<44} {:>9} {:>7} {:>9} {:>8} {:>6} {:>6}",
            name,
            s.matched,
            s.alerts,
            s.throttled,
            s.script_errors,
            s.late,
            cost(s)
        );
        if color && s.alerts > 0 {
            let _ = writeln!(err, "\x1b[1m{line}\x1b[0m");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
    let span = match (r.first_event, r.last_event) {
        (Some(a), Some(b)) => format!(", event time {a} .. {b}"),
        _ => String::new(),
    };
    let _ = writeln!(
        err,
        "{} events in {} records ({} rejected{}), {} alerts, {:.2}s, {:.0} events/s, CPU {}, peak RSS {}",
        r.events,
        r.records,
        r.decode_errors,
        span,
        r.alerts,
        r.elapsed.as_secs_f64(),
        r.events_per_second(),
        cpu_time().map_or("n/a".into(), |s| format!("{s:.2}s")),
        peak_rss().map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
    );
    if r.engine.late_events > 0 {
        let _ = writeln!(
            err,
            "{} events came more than the lateness after a newer one; windows left them out (raise --lateness)",
            r.engine.late_events
        );
    }
}

/// CPU time this process has run so far (Linux `/proc/self/schedstat`, nanoseconds), which
/// unlike wall time does not count time a busy host took the CPU away.
fn cpu_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Peak resident set size of this process (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn keygen(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use auditwatch::archive::manifest::Signer;
    use std::os::unix::fs::OpenOptionsExt;
    let der = Signer::generate().map_err(anyhow::Error::msg)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.write_all(&der)?;
    file.sync_all()?;
    let signer = Signer::from_file(out).map_err(anyhow::Error::msg)?;
    println!("{}", signer.trusted_line());
    Ok(ExitCode::SUCCESS)
}

fn run_routes(action: RoutesAction) -> anyhow::Result<ExitCode> {
    use auditwatch::notify::config::RouteConfig;
    let load = |path: Option<&std::path::Path>| -> anyhow::Result<auditwatch::config::Config> {
        Ok(match path {
            Some(p) => auditwatch::config::Config::load(p)?,
            None => auditwatch::config::Config::default(),
        })
    };
    match action {
        RoutesAction::Show { config } => {
            let cfg = load(config.as_deref())?;
            fn show(r: &RouteConfig, depth: usize, index: &mut usize, out: &mut String) {
                let pad = "  ".repeat(depth);
                let m = &r.matcher;
                let mut what = Vec::new();
                if !m.rules.is_empty() {
                    what.push(format!("rules={}", m.rules.join(",")));
                }
                if !m.severity.is_empty() {
                    let s: Vec<&str> = m.severity.iter().map(|s| s.as_str()).collect();
                    what.push(format!("severity={}", s.join(",")));
                }
                if let Some(min) = m.min_severity {
                    what.push(format!("severity>={}", min.as_str()));
                }
                for (k, v) in &m.labels {
                    what.push(format!("{k}={v}"));
                }
                for (k, v) in &m.equal {
                    what.push(format!("{k}={v:?}"));
                }
                for (k, v) in &r.match_re {
                    what.push(format!("{k}=~{v:?}"));
                }
                what.extend(r.matchers.iter().map(|m| m.0.to_string()));
                let matcher = if what.is_empty() {
                    "any alert".to_owned()
                } else {
                    what.join(" ")
                };
                let mut line = format!("{pad}[{index}] {matcher}");
                let to: Vec<&str> = match &r.receiver {
                    Some(name) => vec![name.as_str()],
                    None => r.notifiers().map(String::as_str).collect(),
                };
                if !to.is_empty() {
                    line.push_str(&format!(" -> {}", to.join(", ")));
                }
                if !r.mute_time_intervals.is_empty() {
                    line.push_str(&format!(" muted in {}", r.mute_time_intervals.join(",")));
                }
                if !r.active_time_intervals.is_empty() {
                    line.push_str(&format!(" active in {}", r.active_time_intervals.join(",")));
                }
                if r.continue_ {
                    line.push_str(" (continue)");
                }
                if let Some(g) = &r.group_by {
                    line.push_str(&format!(" group_by={}", g.join(",")));
                }
                out.push_str(&line);
                out.push('\n');
                *index += 1;
                for child in &r.routes {
                    show(child, depth + 1, index, out);
                }
            }
            let mut out = String::new();
            show(&cfg.route, 0, &mut 0, &mut out);
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        RoutesAction::Test { config, fields } => {
            let cfg = load(config.as_deref())?;
            let mut rule = String::from("test");
            let mut severity = auditwatch::rules::Severity::Medium;
            let mut kind = auditwatch::alert::AlertKind::Event;
            let mut labels = std::collections::BTreeMap::new();
            let mut group = Vec::new();
            for f in &fields {
                let Some((k, v)) = f.split_once('=') else {
                    eprintln!("error: {f:?}: expected NAME=VALUE");
                    return Ok(ExitCode::from(2));
                };
                match k {
                    "rule" | "alertname" => rule = v.to_owned(),
                    // Alertmanager's usual names too: `warning` is medium.
                    "severity" => match v.parse() {
                        Ok(s) => severity = s,
                        Err(_) if v == "warning" => {
                            severity = auditwatch::rules::Severity::Medium;
                        }
                        Err(_) => {
                            eprintln!(
                                "error: severity {v:?}: info, low, medium, high or critical (or warning)"
                            );
                            return Ok(ExitCode::from(2));
                        }
                    },
                    "kind" => match serde_json::from_value(serde_json::Value::from(v)) {
                        Ok(x) => kind = x,
                        Err(_) => {
                            eprintln!(
                                "error: kind {v:?}: event, count, distinct, absence, sequence or storm"
                            );
                            return Ok(ExitCode::from(2));
                        }
                    },
                    _ => match k.strip_prefix("group.") {
                        Some(field) => group.push((std::sync::Arc::from(field), v.to_owned())),
                        None => {
                            labels.insert(k.to_owned(), v.to_owned());
                        }
                    },
                }
            }
            let alert = auditwatch::alert::Alert {
                id: String::new(),
                rule: std::sync::Arc::from(rule.as_str()),
                severity,
                kind,
                summary: String::new(),
                description: None,
                group: auditwatch::alert::Group(group),
                count: 1,
                first_seen: auditwatch::event::EventTime(0),
                last_seen: auditwatch::event::EventTime(0),
                audit_ids: Vec::new(),
                events: Vec::new(),
                labels: std::sync::Arc::new(labels),
                notify: None,
                suppressed: 0,
                author: None,
            };
            let intervals: Vec<_> = cfg
                .time_intervals
                .iter()
                .filter_map(|t| {
                    auditwatch::notify::interval::TimeInterval::compile(t)
                        .ok()
                        .map(std::sync::Arc::new)
                })
                .collect();
            let router = auditwatch::notify::route::Router::new(&cfg.route, &intervals);
            // As amtool prints them: the receivers, comma-separated, in routing order.
            let receivers = router.receivers(&alert);
            if receivers.iter().all(|r| r.is_empty()) {
                println!("(no receiver)");
            } else {
                println!("{}", receivers.join(","));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `verify`: an archive directory, or a state dir's archive and alert journal. Exit 1 when
/// anything was tampered with, else 2 when something could not be read, else 0.
fn run_verify(
    dir: &std::path::Path,
    expect_head: Option<&str>,
    expect_alerts_head: Option<&str>,
    trusted_keys: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use auditwatch::archive::manifest::{MANIFEST, Verdict, read_trusted, verify};
    use auditwatch::state::chain::{self, ChainVerdict};
    let trusted = match trusted_keys.map(read_trusted).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (mut tampered, mut unreadable) = (false, false);
    let state_dir = !dir.join(MANIFEST).exists() && dir.join("alerts.jsonl").exists();
    let archive = if state_dir {
        dir.join("archive")
    } else {
        dir.to_owned()
    };
    if !state_dir || archive.exists() {
        let label = if state_dir { "archive: " } else { "" };
        match verify(&archive, expect_head, trusted.as_ref()) {
            Verdict::Intact { head, segments } => {
                println!("{label}intact: {segments} segments, head {head}")
            }
            Verdict::Tampered { at, reason } => {
                tampered = true;
                println!("{label}tampered: {at}: {reason}");
            }
            Verdict::Unreadable(why) => {
                unreadable = true;
                eprintln!("error: {why}");
            }
        }
    }
    if state_dir {
        match chain::verify(&dir.join("alerts.jsonl"), expect_alerts_head) {
            ChainVerdict::Intact { head, records } => {
                println!("alert journal: intact: {records} records, head {head}")
            }
            ChainVerdict::Tampered { at, reason } => {
                tampered = true;
                println!("alert journal: tampered: {at}: {reason}");
            }
            ChainVerdict::Unreadable(why) => {
                unreadable = true;
                eprintln!("error: {why}");
            }
        }
    }
    Ok(if tampered {
        ExitCode::from(1)
    } else if unreadable {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_explain(
    id: &str,
    config: Option<&std::path::Path>,
    mut state_dir: PathBuf,
    alerts: Option<PathBuf>,
    mut archive: Vec<PathBuf>,
    mut rules: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = config {
        let cfg = auditwatch::config::Config::load(path)?;
        state_dir = cfg.state_dir.clone();
        if archive.is_empty() {
            archive.extend(cfg.archive.dir.clone());
        }
        if rules.is_empty() {
            rules = cfg.rules.clone();
        }
    }
    if archive.is_empty() {
        archive.push(state_dir.join("archive"));
    }
    let sources = auditwatch::explain::Sources {
        alerts: alerts.unwrap_or_else(|| state_dir.join("alerts.jsonl")),
        archive,
    };
    let set = match load(&rules, ScriptLimits::default())? {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    match auditwatch::explain::explain(id, &sources, &set) {
        Ok(x) => {
            let stdout = std::io::stdout();
            auditwatch::explain::render(&x, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_query(
    text: &str,
    files: &[PathBuf],
    groupby: &[String],
    agg: &str,
    (from, to): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
    (top, every): (Option<usize>, Option<Span>),
    format: QueryFormat,
    input_format: InputFormat,
) -> anyhow::Result<ExitCode> {
    use auditwatch::query::{self, Aggregate, Query, lang};
    let filter = match lang::parse(text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}\n  {text}\n  {}^", " ".repeat(e.column - 1));
            return Ok(ExitCode::from(2));
        }
    };
    let mut group_by = Vec::new();
    for g in groupby.iter().filter(|g| !g.trim().is_empty()) {
        match lang::Field::parse(g.trim()) {
            Ok(f) => group_by.push(f),
            Err(e) => {
                eprintln!("error: --groupby {g}: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let aggregate = match Aggregate::parse(agg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: --agg: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let nanos = |t: chrono::DateTime<chrono::Utc>| {
        auditwatch::event::EventTime(t.timestamp_nanos_opt().unwrap_or(i64::MAX))
    };
    let q = Query {
        filter,
        group_by,
        aggregate,
        from: from.map(nanos),
        to: to.map(nanos),
        every,
        top,
    };
    if files
        .iter()
        .any(|f| f.as_os_str() != "-" && query::columnar::is_archive(f))
        && let Err(e) = query::columnar::check(&q)
    {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let mut shown = 0;
    let progress = std::sync::Arc::new(auditwatch::replay::Progress::default());
    let bar = ProgressBar::start(files, &progress);
    let report = query::run_with_progress(&q, files, input_format, Some(&progress), &mut |e| {
        if shown < 5 {
            eprintln!("warning: {e}");
        }
        shown += 1;
    });
    drop(bar);
    for (name, why) in &report.unreadable {
        eprintln!("error: {name}: {why}");
    }
    if report.events == 0 && !report.unreadable.is_empty() {
        return Ok(ExitCode::from(2));
    }
    let mut header: Vec<String> = Vec::new();
    if q.every.is_some() {
        header.push("time".into());
    }
    header.extend(q.group_by.iter().map(|f| f.written.clone()));
    header.push(q.aggregate.name());
    let cells: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            let mut row = Vec::new();
            if let Some(b) = r.bucket {
                row.push(b.to_string());
            }
            row.extend(r.group.iter().cloned());
            row.push(r.value.to_string());
            row
        })
        .collect();
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let mut out = BufWriter::new(stdout.lock());
    match format {
        QueryFormat::Json => {
            for r in &report.rows {
                let mut m = serde_json::Map::new();
                if let Some(b) = r.bucket {
                    m.insert("time".into(), b.to_string().into());
                }
                for (f, v) in q.group_by.iter().zip(&r.group) {
                    m.insert(f.written.clone(), v.clone().into());
                }
                let value = match &r.value {
                    query::AggValue::Number(n) => serde_json::Value::from(*n),
                    query::AggValue::Time(t) => {
                        t.map_or(serde_json::Value::Null, |t| t.to_string().into())
                    }
                };
                m.insert(q.aggregate.name(), value);
                writeln!(out, "{}", serde_json::Value::Object(m))?;
            }
        }
        QueryFormat::Csv => {
            let field = |s: &str| {
                if s.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_owned()
                }
            };
            writeln!(
                out,
                "{}",
                header
                    .iter()
                    .map(|h| field(h))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for row in &cells {
                writeln!(
                    out,
                    "{}",
                    row.iter().map(|c| field(c)).collect::<Vec<_>>().join(",")
                )?;
            }
        }
        QueryFormat::Table => {
            let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |row: &[String]| {
                row.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            writeln!(out, "{}", line(&header).trim_end())?;
            // A series on a terminal: each row's count as a bar.
            let max = report
                .rows
                .iter()
                .map(|r| r.count)
                .max()
                .unwrap_or(1)
                .max(1);
            for (row, r) in cells.iter().zip(&report.rows) {
                let mut text = line(row);
                if tty && q.every.is_some() {
                    let n = (r.count * 40).div_ceil(max) as usize;
                    text.push_str("  ");
                    text.push_str(&"█".repeat(n));
                }
                writeln!(out, "{}", text.trim_end())?;
            }
        }
    }
    out.flush()?;
    eprintln!(
        "{} events read, {} matched, {} rows{}",
        report.events,
        report.matched,
        report.rows.len(),
        if report.decode_errors > 0 {
            format!(", {} bad records skipped", report.decode_errors)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn run_tests(rules: &[PathBuf], tests: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = match load(rules, ScriptLimits::default())? {
        Ok(set) => Arc::new(set),
        Err(code) => return Ok(code),
    };
    let files = if tests.is_empty() {
        ruletest::discover(rules)
    } else {
        ruletest::discover(tests)
    };
    if files.is_empty() {
        let looked: Vec<String> = if tests.is_empty() { rules } else { tests }
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "0 passed, 0 failed: no rule tests (*.test.yaml) under {}",
            looked.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        match ruletest::run_file(&set, file) {
            Ok(results) => {
                for r in results {
                    match r.failure {
                        None => {
                            passed += 1;
                            println!("ok   {} :: {}", r.file, r.name);
                        }
                        Some(diff) => {
                            failed += 1;
                            println!("FAIL {} :: {}\n{diff}", r.file, r.name);
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list_alerts(
    state_dir: &std::path::Path,
    query: &AlertQuery,
    last: Option<usize>,
    format: Format,
    delivery: bool,
) -> anyhow::Result<ExitCode> {
    let path = state_dir.join("alerts.jsonl");
    if !path.exists() {
        anyhow::bail!(
            "{}: no alert journal (is --state-dir the daemon's state_dir?)",
            path.display()
        );
    }
    let mut found = Vec::new();
    auditwatch::state::alerts::read_alerts(&path, 0, None, |_, a| {
        if query.matches(&a) {
            found.push(a);
        }
    })
    .with_context(|| path.display().to_string())?;
    let skip = last.map_or(0, |n| found.len().saturating_sub(n));
    let outcomes = if delivery {
        let ledger = auditwatch::notify::ledger::Ledger::open(
            &state_dir.join("delivery"),
            auditwatch::config::FsyncPolicy::Never,
        )
        .context("delivery ledger")?;
        let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
        for e in ledger.outcomes() {
            map.entry(e.id.clone())
                .or_default()
                .push(format!("{}={}", e.n, e.o.as_str()));
        }
        Some(map)
    } else {
        None
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for a in &found[skip..] {
        let line = match format {
            Format::Json => a.to_json_line(),
            Format::Text => a.to_text_line(),
        };
        match outcomes.as_ref().map(|m| m.get(&a.id)) {
            Some(Some(o)) => writeln!(out, "{line}  [delivery: {}]", o.join(", "))?,
            Some(None) => writeln!(out, "{line}  [delivery: none recorded]")?,
            None => writeln!(out, "{line}")?,
        }
    }
    out.flush()?;
    eprintln!("{} of {} alerts shown", found.len() - skip, found.len());
    Ok(ExitCode::SUCCESS)
}

fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(ExitCode::SUCCESS),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                eprintln!("{url}: {status} {}", body.trim());
                Ok(ExitCode::from(1))
            }
            Err(e) => {
                eprintln!("{url}: {:#}", anyhow::Error::from(e));
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// How `auditwatch silence` authenticates to the daemon's API.
struct ApiCredentials {
    token_file: Option<PathBuf>,
    user: Option<String>,
    ca_cert: Option<PathBuf>,
}

impl ApiCredentials {
    fn apply(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            return Ok(request.bearer_auth(token.trim()));
        }
        if let Some(user) = &self.user {
            let password = std::env::var("AUDITWATCH_PASSWORD")
                .context("--user needs the password in $AUDITWATCH_PASSWORD")?;
            return Ok(request.basic_auth(user, Some(password)));
        }
        Ok(request)
    }
}

fn hash_password() -> anyhow::Result<ExitCode> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    println!(
        "{}",
        auditwatch::net::auth::hash_password(password).map_err(anyhow::Error::msg)?
    );
    Ok(ExitCode::SUCCESS)
}

fn silence(url: &str, creds: ApiCredentials, action: SilenceAction) -> anyhow::Result<ExitCode> {
    let base = format!("{}/api/v1/silences", url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &creds.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("--ca-cert {}", ca.display()))?,
            );
        }
        let client = builder.build()?;
        let request = match action {
            SilenceAction::Add {
                matchers,
                duration,
                comment,
                author,
                confirm_match_all,
            } => {
                let author = author
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_default();
                client.post(&base).json(&serde_json::json!({
                    "matchers": matchers,
                    "duration": duration,
                    "comment": comment,
                    "created_by": author,
                    "confirm_match_all": confirm_match_all,
                }))
            }
            SilenceAction::List => client.get(&base),
            SilenceAction::Expire { id } => client.delete(format!("{base}/{id}")),
        };
        let resp = creds
            .apply(request)?
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {url}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            eprintln!(
                "error: {}",
                body["error"].as_str().unwrap_or(status.as_str())
            );
            return Ok(ExitCode::from(1));
        }
        let show = |s: &serde_json::Value| {
            let matchers: Vec<String> = s["matchers"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| {
                            format!(
                                "{}{}{:?}",
                                m["name"].as_str().unwrap_or(""),
                                m["op"].as_str().unwrap_or(""),
                                m["value"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{}  {:<8} until {}  {}  by {:?}: {}",
                s["id"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
                s["ends_at"].as_str().unwrap_or(""),
                matchers.join(" "),
                s["created_by"].as_str().unwrap_or(""),
                s["comment"].as_str().unwrap_or("")
            );
        };
        match body.as_array() {
            Some(list) => list.iter().for_each(show),
            None => show(&body),
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_color_set_to_anything_turns_colour_off() {
        use super::color_with;
        assert!(color_with(true, None));
        assert!(color_with(true, Some("".into())));
        assert!(!color_with(true, Some("1".into())));
        assert!(!color_with(true, Some("false".into())));
        assert!(!color_with(false, None));
    }
}
