//! The Kubernetes side of `deploy/`, checked offline:
//!
//! - every manifest validates against the Kubernetes OpenAPI schemas (`kubernetes-validate
//!   --strict`, which ships them); Prometheus Operator kinds have no schema there and are
//!   checked here structurally instead;
//! - the pieces fit: selectors select, named ports exist, probes hit the metrics port, the
//!   daemon configs in the ConfigMaps parse and every path they name is mounted, secrets they
//!   read exist, the apiserver's webhook kubeconfig points at the Service;
//! - the example audit Policy parses strictly and records every field the shipped rules read,
//!   at the level they need (`auditwatch check --policy`).

mod common;
use common::repo;

use std::path::PathBuf;
use std::process::Command;

use serde_yaml::Value;

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "common, webhook and daemonset manifests");
    files
}

fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

use serde::Deserialize;

fn try_find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    try_find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn all<'a>(docs: &'a [(String, Value)], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter()
        .map(|(_, d)| d)
        .filter(move |d| d["kind"] == kind)
}

/// `matchLabels` selects `labels` when each of its pairs is among them.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_mapping().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(manifest_files())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubernetes-validate: {e}: install it with `pip install kubernetes-validate` (or run .ci/run)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict:\n{text}"
    );
    let passed = text
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains("passed"))
        .count();
    let operator_kinds =
        all(&documents(), "ServiceMonitor").count() + all(&documents(), "PodMonitor").count();
    assert_eq!(
        passed + operator_kinds,
        documents().len(),
        "every document checked:\n{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            line.contains("monitoring.coreos.com/v1"),
            "only Prometheus Operator kinds may lack a schema: {line}"
        );
    }
}

#[test]
fn operator_resources_are_well_formed() {
    // What the Prometheus Operator CRDs require, for the kinds kubernetes-validate cannot see.
    let docs = documents();
    for kind in ["ServiceMonitor", "PodMonitor"] {
        for d in all(&docs, kind) {
            assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
            assert!(d["metadata"]["name"].is_string() && d["metadata"]["namespace"].is_string());
            let endpoints = if kind == "ServiceMonitor" {
                "endpoints"
            } else {
                "podMetricsEndpoints"
            };
            let list = d["spec"][endpoints].as_sequence().expect(endpoints);
            assert!(!list.is_empty());
            for e in list {
                let keys: Vec<&str> = e
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                for k in &keys {
                    assert!(
                        [
                            "port",
                            "path",
                            "interval",
                            "scrapeTimeout",
                            "scheme",
                            "honorLabels"
                        ]
                        .contains(k),
                        "{kind}: unexpected endpoint field {k}"
                    );
                }
                assert!(e["port"].is_string(), "{kind}: endpoints name their port");
            }
            for (k, _) in d["spec"].as_mapping().unwrap() {
                assert!(
                    ["selector", endpoints, "jobLabel", "namespaceSelector"]
                        .contains(&k.as_str().unwrap()),
                    "{kind}: unexpected spec field {k:?}"
                );
            }
        }
    }
}

/// The container named auditwatch of a workload's pod template.
/// The entry called `name` of a Kubernetes list (containers, ports, volumes, env).
fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?.iter().find(|e| e["name"] == name)
}

fn container(workload: &Value) -> &Value {
    named(
        &workload["spec"]["template"]["spec"]["containers"],
        "auditwatch",
    )
    .expect("container auditwatch")
}

fn port_named(c: &Value, name: &str) -> u16 {
    named(&c["ports"], name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}")) as u16
}

/// Checks one workload: its config parses, names only mounted paths, matches its ports and
/// probes; its pods are locked down and sized.
fn check_workload(docs: &[(String, Value)], workload: &Value) -> auditwatch::config::Config {
    let name = workload["metadata"]["name"].as_str().unwrap();
    let pod = &workload["spec"]["template"]["spec"];
    assert!(
        selects(
            &workload["spec"]["selector"],
            &workload["spec"]["template"]["metadata"]["labels"]
        ),
        "{name}: selector does not select its own pods"
    );
    let c = container(workload);
    // Config: the --config argument, in a mounted ConfigMap.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let config_path = PathBuf::from(args[at + 1]);
    let mounts: Vec<(&str, &str, bool)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let volume = |mount: &str| -> &Value {
        named(&pod["volumes"], mount).unwrap_or_else(|| panic!("{name}: no volume {mount}"))
    };
    let mount_of = |path: &std::path::Path| {
        mounts
            .iter()
            .find(|(_, at, _)| path.starts_with(at))
            .copied()
    };
    let (config_volume, config_dir, _) = mount_of(&config_path).expect("the config is mounted");
    let cm_name = volume(config_volume)["configMap"]["name"].as_str().unwrap();
    let key = config_path
        .strip_prefix(config_dir)
        .unwrap()
        .to_str()
        .unwrap();
    let text = find(docs, "ConfigMap", cm_name)["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {key}"));
    let config = auditwatch::config::Config::parse(&format!("{cm_name}/{key}"), text)
        .unwrap_or_else(|e| panic!("{e}"));

    // Every path the config names is in a mount (or the rules baked into the image), and files
    // from Secrets are keys of those Secrets.
    let mut paths: Vec<PathBuf> = vec![config.state_dir.clone()];
    paths.extend(config.rules.iter().cloned());
    for s in &config.sources {
        match s {
            auditwatch::config::SourceConfig::Webhook(w) => {
                paths.extend(w.clone().paths_mut().into_iter().map(|p| p.clone()));
            }
            auditwatch::config::SourceConfig::File(f) => paths.push(f.path.clone()),
            auditwatch::config::SourceConfig::Stdin(_) => {}
        }
    }
    let mut config_mut = config.clone();
    // The API is reachable beyond loopback, so it must authenticate (Config::parse refuses it
    // otherwise), and its token file is mounted from a Secret.
    assert!(
        config.http.auth.is_configured() && !config.http.insecure,
        "{name}: the silences API must use auth"
    );
    paths.extend(config_mut.http.paths_mut().into_iter().map(|p| p.clone()));
    if let Some(cluster) = &config.cluster {
        paths.extend(cluster.token_file.iter().cloned());
        paths.extend(cluster.credentials_file.iter().cloned());
    }
    for n in config_mut.notifiers.values_mut() {
        paths.extend(n.paths_mut().into_iter().map(|p| p.clone()));
    }
    for p in &paths {
        if p.starts_with("/etc/auditwatch/rules") && !p.starts_with("/etc/auditwatch/rules.d") {
            continue; // baked into the image (tests/container.rs checks it is there)
        }
        let (vol, at, read_only) =
            mount_of(p).unwrap_or_else(|| panic!("{name}: {} is not mounted", p.display()));
        let v = volume(vol);
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            let file = p.strip_prefix(at).unwrap().to_str().unwrap();
            // Secrets shipped as templates are checked; auditwatch-tls is the user's own.
            if let Some(s) = try_find(docs, "Secret", secret) {
                assert!(
                    !s["stringData"][file].is_null() || !s["data"][file].is_null(),
                    "{name}: Secret {secret} has no key {file}"
                );
            }
        }
        if *p == config.state_dir {
            assert!(!read_only, "{name}: the state dir must be writable");
            // In cluster mode what must outlive the pod is in JetStream; the state dir is a
            // cache rebuilt on every takeover.
            assert!(
                config.cluster.is_some()
                    || v.get("persistentVolumeClaim").is_some()
                    || v.get("hostPath").is_some(),
                "{name}: the state dir must outlive the pod"
            );
        }
    }
    // Rules from the site ConfigMap load.
    let rules_cm = find(docs, "ConfigMap", "auditwatch-rules");
    for (file, text) in rules_cm["data"].as_mapping().unwrap() {
        auditwatch::rules::load_sources(
            &[(
                file.as_str().unwrap().to_owned(),
                text.as_str().unwrap().to_owned(),
            )],
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("auditwatch-rules/{}: {e}", file.as_str().unwrap()));
    }

    // Ports and probes.
    let metrics = config.http.listen.expect("metrics endpoint");
    assert_eq!(
        port_named(c, "metrics"),
        metrics.port(),
        "{name}: metrics port"
    );
    // Workers in cluster mode name the receivers' sources but do not listen.
    let listens = config.cluster.as_ref().is_none_or(|c| c.role.receives());
    for s in config.sources.iter().filter(|_| listens) {
        if let auditwatch::config::SourceConfig::Webhook(w) = s {
            assert_eq!(
                port_named(c, "webhook"),
                w.listen.port(),
                "{name}: webhook port"
            );
        }
    }
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{name}: {probe}");
    }

    // Locked down and sized.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                c["resources"][k][r].is_string(),
                "{name}: resources.{k}.{r}"
            );
        }
    }
    config
}

/// The shipped NetworkPolicy selects the workload's pods and lets in its webhook and metrics
/// ports, and nothing else.
fn network_policy_admits(
    docs: &[(String, Value)],
    workload: &Value,
    config: &auditwatch::config::Config,
) {
    let policy = find(docs, "NetworkPolicy", "auditwatch");
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&policy["spec"]["podSelector"], labels),
        "the NetworkPolicy selects the pods"
    );
    let allowed: Vec<u64> = policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().unwrap().iter())
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    let mut needed: Vec<u64> = vec![u64::from(config.http.listen.unwrap().port())];
    let listens = config.cluster.as_ref().is_none_or(|c| c.role.receives());
    for s in config.sources.iter().filter(|_| listens) {
        if let auditwatch::config::SourceConfig::Webhook(w) = s {
            needed.push(u64::from(w.listen.port()));
        }
    }
    for port in needed {
        assert!(
            allowed.contains(&port),
            "the NetworkPolicy blocks port {port}"
        );
    }
}

#[test]
fn webhook_topology_fits_together() {
    let docs = documents();
    let deployment = find(&docs, "Deployment", "auditwatch");
    let config = check_workload(&docs, deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(deployment["spec"]["replicas"], 1, "windows are per process");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let service = find(&docs, "Service", "auditwatch");
    // A Service's selector is a plain label map.
    let sel = service["spec"]["selector"].as_mapping().unwrap();
    assert!(
        !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v),
        "the Service selects the Deployment's pods"
    );
    let c = container(deployment);
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        port_named(c, p["targetPort"].as_str().unwrap());
    }
    let pdb = find(&docs, "PodDisruptionBudget", "auditwatch");
    assert!(
        selects(&pdb["spec"]["selector"], labels),
        "the PDB selects the pods"
    );
    network_policy_admits(&docs, deployment, &config);
    let monitor = find(&docs, "ServiceMonitor", "auditwatch");
    assert!(selects(
        &monitor["spec"]["selector"],
        &service["metadata"]["labels"]
    ));
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the ServiceMonitor scrapes Service port {port}"
    );
    // The job label is the Service's name; the self-monitoring rules select job="auditwatch".
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus-rules.yaml")).unwrap();
    assert!(rules.contains(&format!(
        "job=\"{}\"",
        service["metadata"]["name"].as_str().unwrap()
    )));

    // The apiserver's webhook kubeconfig points at the Service's fixed IP and webhook port.
    let kubeconfig: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/apiserver/audit-webhook-kubeconfig.yaml"))
            .unwrap(),
    )
    .unwrap();
    let server = kubeconfig["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap();
    let webhook_port = named(&service["spec"]["ports"], "webhook").unwrap()["port"]
        .as_u64()
        .unwrap();
    assert_eq!(
        server,
        format!(
            "https://{}:{webhook_port}/",
            service["spec"]["clusterIP"].as_str().unwrap()
        )
    );
    assert!(
        kubeconfig["users"][0]["user"]["client-certificate"].is_string(),
        "mTLS client cert"
    );
    let auditwatch::config::SourceConfig::Webhook(w) = &config.sources[0] else {
        panic!("the webhook topology's source is the webhook")
    };
    assert!(
        w.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "mTLS required"
    );
}

#[test]
fn node_topology_fits_together() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet", "auditwatch-node");
    let config = check_workload(&docs, ds);
    network_policy_admits(&docs, ds, &config);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        ""
    );
    assert!(
        pod["tolerations"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/control-plane"),
        "tolerates the control-plane taint"
    );
    let auditwatch::config::SourceConfig::File(f) = &config.sources[0] else {
        panic!("the node topology follows the log file")
    };
    // The file source reads the log the flags tell the apiserver to write.
    let flags =
        std::fs::read_to_string(repo().join("deploy/apiserver/kube-apiserver-flags.txt")).unwrap();
    assert!(flags.contains(&format!("--audit-log-path={}", f.path.display())));
    assert!(flags.contains("--audit-log-format=json"));
    assert!(
        !flags.lines().any(|l| l.starts_with("--audit-log-compress")),
        "compressed backups are not read"
    );
    for v in pod["volumes"].as_sequence().unwrap() {
        if v["name"] == "audit-log" {
            assert_eq!(
                v["hostPath"]["path"],
                f.path.parent().unwrap().to_str().unwrap()
            );
        }
    }
    let monitor = find(&docs, "PodMonitor", "auditwatch-node");
    assert!(selects(
        &monitor["spec"]["selector"],
        &ds["spec"]["template"]["metadata"]["labels"]
    ));
    port_named(
        container(ds),
        monitor["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap(),
    );
}

#[test]
fn example_policy_records_what_the_shipped_rules_read() {
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .args([
            "check",
            "--policy",
            "deploy/apiserver/audit-policy.yaml",
            "rules",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check has teeth: ingresses at Metadata starve the rules that read their spec.
    let policy =
        std::fs::read_to_string(repo().join("deploy/apiserver/audit-policy.yaml")).unwrap();
    let starved = policy.replace("  - level: RequestResponse\n", "  - level: Metadata\n");
    assert_ne!(starved, policy);
    let dir = common::Scratch::new("deploy-policy");
    std::fs::write(dir.0.join("policy.yaml"), starved).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditwatch"))
        .arg("check")
        .arg("--policy")
        .arg(dir.0.join("policy.yaml"))
        .arg(repo().join("rules"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for rule in [
        "ingress-without-tls",
        "ingress-dangerous-annotation",
        "ingress-wildcard-or-catch-all-host",
    ] {
        assert!(
            err.contains(&format!(
                "rule {rule}: create networking.k8s.io/ingresses is recorded at Metadata"
            )),
            "{rule} not reported:\n{err}"
        );
    }
    assert!(
        !err.contains("rule ingress-deleted"),
        "metadata is enough for deletions:\n{err}"
    );
}

#[test]
fn cluster_topology_fits_together() {
    use auditwatch::cluster::Role;
    let docs = documents();
    let receivers = find(&docs, "Deployment", "auditwatch-receiver");
    let workers = find(&docs, "StatefulSet", "auditwatch-worker");
    let receiver = check_workload(&docs, receivers);
    let worker = check_workload(&docs, workers);
    network_policy_admits(&docs, receivers, &receiver);
    network_policy_admits(&docs, workers, &worker);
    let (rc, wc) = (
        receiver.cluster.as_ref().unwrap(),
        worker.cluster.as_ref().unwrap(),
    );
    assert_eq!(rc.role, Role::Receiver);
    assert_eq!(wc.role, Role::Worker);
    assert!(
        wc.partitions.contains(&rc.name),
        "the workers hold the receivers' partition"
    );
    assert!(
        receivers["spec"]["replicas"].as_u64().unwrap() >= 2,
        "several receivers"
    );
    assert!(
        workers["spec"]["replicas"].as_u64().unwrap() >= 2,
        "a standby worker"
    );
    assert_eq!(workers["spec"]["serviceName"], "auditwatch-worker");
    find(&docs, "Service", "auditwatch-worker");
    let pdb = find(&docs, "PodDisruptionBudget", "auditwatch-receiver");
    let labels = &receivers["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&pdb["spec"]["selector"], labels),
        "the PDB selects the receivers"
    );
    let service = find(&docs, "Service", "auditwatch-receiver");
    let sel = service["spec"]["selector"].as_mapping().unwrap();
    assert!(
        sel.iter().all(|(k, v)| labels[k] == *v),
        "the Service selects the receivers"
    );
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        port_named(container(receivers), p["targetPort"].as_str().unwrap());
    }

    // NATS: as many servers as stream replicas, routed to each other, reachable where the
    // configs say, taking batches as large as the webhook accepts, with the token they use.
    let nats = find(&docs, "StatefulSet", "nats");
    let servers = nats["spec"]["replicas"].as_u64().unwrap() as usize;
    assert_eq!(servers, rc.replicas);
    assert_eq!(servers, wc.replicas);
    assert_eq!(nats["spec"]["serviceName"], "nats");
    let conf = find(&docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
        .as_str()
        .unwrap();
    for i in 0..servers {
        assert!(
            conf.contains(&format!("nats-route://nats-{i}.nats:6222")),
            "{conf}"
        );
    }
    let mut urls: Vec<String> = (0..servers)
        .map(|i| format!("nats://nats-{i}.nats:4222"))
        .collect();
    urls.sort();
    for c in [rc, wc] {
        let mut theirs = c.nats.clone();
        theirs.sort();
        assert_eq!(theirs, urls);
        assert_eq!(
            c.token_file.as_deref(),
            Some(std::path::Path::new("/etc/auditwatch/nats/token"))
        );
    }
    let max_payload = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_payload:"))
        .and_then(|v| v.trim().strip_suffix("MB"))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("max_payload in MB")
        << 20;
    let auditwatch::config::SourceConfig::Webhook(w) = &receiver.sources[0] else {
        panic!("receivers serve the webhook")
    };
    assert!(
        w.max_body.0 + 1024 <= max_payload,
        "a webhook batch fits one NATS message"
    );
    let nc = &nats["spec"]["template"]["spec"]["containers"][0];
    let token_env = named(&nc["env"], "NATS_TOKEN").expect("NATS_TOKEN");
    assert_eq!(
        token_env["valueFrom"]["secretKeyRef"]["name"],
        "auditwatch-nats"
    );
    assert_eq!(token_env["valueFrom"]["secretKeyRef"]["key"], "token");
    assert!(conf.contains("token: $NATS_TOKEN"));
    for workload in [receivers, workers] {
        let pod = &workload["spec"]["template"]["spec"];
        let vol = named(&pod["volumes"], "nats").expect("nats token volume");
        assert_eq!(vol["secret"]["secretName"], "auditwatch-nats");
    }
    assert_eq!(port_named(nc, "client"), 4222);
    assert_eq!(port_named(nc, "cluster"), 6222);
    let policy = find(&docs, "NetworkPolicy", "nats");
    let admits_auditwatch_on_4222 =
        policy["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|rule| {
                rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    == "auditwatch"
                    && rule["ports"][0]["port"] == 4222
            });
    assert!(admits_auditwatch_on_4222, "auditwatch reaches NATS");
    assert!(
        selects(
            &find(&docs, "PodDisruptionBudget", "nats")["spec"]["selector"],
            &nats["spec"]["template"]["metadata"]["labels"]
        ),
        "the NATS PDB selects its servers"
    );
}
