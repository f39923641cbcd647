//! `auditwatch`: the command line. Parses arguments, calls the library, maps outcomes to exit
//! codes (0 ok, 1 invalid rules / failed tests, 2 usage or I/O error).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use auditwatch::engine::EngineOptions;
use auditwatch::event::Span;
use auditwatch::replay::{Diagnostic, ReplayReport, replay};
use auditwatch::rules::{LoadError, LoadOptions, RuleSet, ScriptLimits};
use auditwatch::{bundled, ruletest};

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
enum Command {
    /// Validate rule files and directories; print every error as file:line:column.
    Check {
        /// Rule files or directories (searched recursively for *.yaml, *.yml).
        #[arg(required = true)]
        rules: Vec<PathBuf>,
    },
    /// Run rules over audit logs in event time and print the alerts.
    Replay {
        /// Rule files or directories. Default: the packs built into this binary (rules/).
        #[arg(long, short, num_args = 1..)]
        rules: Vec<PathBuf>,
        /// Output format of the alerts on stdout.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// How late (in event time) an event may arrive and still count in windows.
        #[arg(long, default_value = "5s", value_parser = parse_span)]
        lateness: Span,
        /// Rhai operation budget per condition run.
        #[arg(long, default_value_t = 100_000)]
        max_operations: u64,
        /// Report at most this many bad records (all are counted).
        #[arg(long, default_value_t = 100)]
        max_errors: usize,
        /// Audit log files: JSON lines, an Event, an EventList or an array; `-` is stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the daemon: receive live audit events (webhook, log files, stdin) and alert.
    ///
    /// Without --config: a webhook on 127.0.0.1:8443 (plain HTTP), metrics on
    /// 127.0.0.1:9095, rules from ./rules (or the built-in packs), state in
    /// ./auditwatch-state, alerts on stdout.
    Run {
        /// The daemon's YAML configuration (see docs/daemon.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Validate the configuration and the rules, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Run rule unit tests (*.test.yaml) against rules.
    Test {
        /// Rule files or directories.
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        /// Test files or directories. Default: *.test.yaml found under the rule directories.
        #[arg(long, num_args = 1..)]
        tests: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn parse_span(s: &str) -> Result<Span, String> {
    Span::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { rules } => check(&rules),
        Command::Replay {
            rules,
            format,
            lateness,
            max_operations,
            max_errors,
            files,
        } => run_replay(&rules, format, lateness, max_operations, max_errors, &files),
        Command::Test { rules, tests } => run_tests(&rules, &tests),
        Command::Run { config, check } => run_daemon(config.as_deref(), check),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_daemon(config: Option<&std::path::Path>, check_only: bool) -> anyhow::Result<ExitCode> {
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
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
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
                println!("ok: configuration valid; {} rules", set.rules.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    match daemon::run(config, rules) {
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

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = match load(paths, ScriptLimits::default())? {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
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

fn run_replay(
    rules: &[PathBuf],
    format: Format,
    lateness: Span,
    max_operations: u64,
    max_errors: usize,
    files: &[PathBuf],
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
    let report = replay(
        set,
        files,
        opts,
        &mut |alert| {
            let line = match format {
                Format::Json => alert.to_json_line(),
                Format::Text => alert.to_text_line(),
            };
            if write_error.is_none()
                && let Err(e) = writeln!(out, "{line}")
            {
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
    Ok(if report.io_errors > 0 && report.events == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(r: &ReplayReport) {
    let mut err = std::io::stderr().lock();
    let color = std::io::stderr().is_terminal();
    let _ = writeln!(err);
    let _ = writeln!(
        err,
        "{:<44} {:>9} {:>7} {:>9} {:>8} {:>6}",
        "rule", "matched", "alerts", "throttled", "errors", "late"
    );
    for (name, s) in &r.rules {
        let line = format!(
            "{:<44} {:>9} {:>7} {:>9} {:>8} {:>6}",
            name, s.matched, s.alerts, s.throttled, s.script_errors, s.late
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
        anyhow::bail!("no test files found (looked for *.test.yaml)");
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
