//! The synthetic audit log the benches share: a realistic mix of requests (see the
//! throughput bench's header), deterministic for a given size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "prod",
    "staging",
    "payments",
    "web",
    "monitoring",
    "argocd",
];
const SERVICE_ACCOUNTS: &[&str] = &[
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:deployment-controller",
    "system:serviceaccount:kube-system:endpointslice-controller",
    "system:serviceaccount:argocd:argocd-application-controller",
    "system:serviceaccount:monitoring:prometheus",
    "system:kube-scheduler",
    "system:kube-controller-manager",
    "system:node:worker-1",
    "system:node:worker-2",
];
const HUMANS: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "mallory",
];
pub const READ_RESOURCES: &[&str] = &[
    "pods",
    "configmaps",
    "secrets",
    "nodes",
    "leases",
    "endpoints",
    "services",
    "events",
];

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn ts(base: i64, micros: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(base * 1_000_000 + micros).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn pod_object(rng: &mut Rng, ns: &str, name: &str, privileged: bool) -> String {
    let image = rng.pick(&[
        "nginx:1.25",
        "registry.example.com/payments/api:4.2.1",
        "redis:7",
        "busybox:1.36",
    ]);
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"{ns}","labels":{{"app":"{name}","pod-template-hash":"5cdcc99dbf"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{name}-5cdcc99dbf","uid":"8c800470-d85f-11e8-88b6-080027728ac4","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"volumes":[{{"name":"kube-api-access","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}}]}}}}],"containers":[{{"name":"app","image":"{image}","ports":[{{"containerPort":8080,"protocol":"TCP"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},"volumeMounts":[{{"name":"kube-api-access","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent","securityContext":{{"privileged":{privileged},"allowPrivilegeEscalation":false}}}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","securityContext":{{}},"schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}]}},"status":{{"phase":"Pending","qosClass":"Burstable"}}}}"#
    )
}

fn ingress_object(ns: &str, name: &str, tls: bool) -> String {
    let tls = if tls {
        r#","tls":[{"hosts":["shop.example.com"],"secretName":"shop-tls"}]"#
    } else {
        ""
    };
    format!(
        r#"{{"kind":"Ingress","apiVersion":"networking.k8s.io/v1","metadata":{{"name":"{name}","namespace":"{ns}","annotations":{{"nginx.ingress.kubernetes.io/rewrite-target":"/"}}}},"spec":{{"ingressClassName":"nginx","rules":[{{"host":"shop.example.com","http":{{"paths":[{{"path":"/","pathType":"Prefix","backend":{{"service":{{"name":"{name}","port":{{"number":80}}}}}}}}]}}}}]{tls}}}}}"#
    )
}

/// One event line. `i` makes names and times advance. `quiet`: the suspicious kinds (403,
/// 401, secret reads by people, exec, ingress and RBAC changes) are ten times rarer, as on a
/// cluster that is not under attack.
fn event(rng: &mut Rng, i: u64, base: i64, quiet: bool) -> String {
    let micros = (i as i64) * 700 + rng.below(500) as i64; // ~1,400 events/s of cluster time
    let rr = ts(base, micros);
    let st = ts(base, micros + 1500);
    let id = uuid(rng);
    let ns = rng.pick(NAMESPACES);
    let mut roll = rng.below(1000);
    if quiet && roll >= 890 && rng.below(10) != 0 {
        roll = rng.below(890);
    }
    let agent = "kube-controller-manager/v1.29.2 (linux/amd64) kubernetes/4b8e819/system:serviceaccount:kube-system:replicaset-controller";
    let ip = format!("10.0.{}.{}", rng.below(8), rng.below(250) + 2);
    let common = |level: &str, stage: &str, uri: &str, verb: &str, user: &str, groups: &str| {
        format!(
            r#""kind":"Event","apiVersion":"audit.k8s.io/v1","level":"{level}","auditID":"{id}","stage":"{stage}","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}","uid":"{}","groups":[{groups}]}},"sourceIPs":["{ip}"],"userAgent":"{agent}""#,
            &id[..8]
        )
    };
    let sa_groups =
        r#""system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated""#;
    let annotations = r#""annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:controller:replicaset-controller\" of ClusterRole \"system:controller:replicaset-controller\" to ServiceAccount \"replicaset-controller/kube-system\""}"#;
    match roll {
        // Metadata-level reads by controllers and nodes: the bulk of a real log.
        0..=439 => {
            let res = rng.pick(READ_RESOURCES);
            let verb = rng.pick(&["get", "list", "watch", "get", "get"]);
            let user = rng.pick(SERVICE_ACCOUNTS);
            let name = format!("{res}-{}", rng.below(400));
            format!(
                r#"{{{},"objectRef":{{"resource":"{res}","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/{res}/{name}"),
                    verb,
                    user,
                    sa_groups
                )
            )
        }
        // Lease renewals: every node and controller, every few seconds.
        440..=639 => {
            let holder = rng.pick(SERVICE_ACCOUNTS);
            let lease = format!("lease-{}", rng.below(60));
            format!(
                r#"{{{},"objectRef":{{"resource":"leases","namespace":"kube-node-lease","name":"{lease}","apiGroup":"coordination.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{lease}"
                    ),
                    "update",
                    holder,
                    sa_groups
                )
            )
        }
        // RequestReceived records (policies that keep the stage): no response yet.
        640..=719 => {
            let user = rng.pick(SERVICE_ACCOUNTS);
            format!(
                r#"{{{},"objectRef":{{"resource":"leases","namespace":"kube-system","name":"kube-scheduler","apiGroup":"coordination.k8s.io","apiVersion":"v1"}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{rr}"}}"#,
                common(
                    "Metadata",
                    "RequestReceived",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler",
                    "update",
                    user,
                    sa_groups
                )
            )
        }
        // Kubernetes Event objects written by controllers, at the Request level.
        720..=819 => {
            let name = format!("app-{}.17a{:x}", rng.below(5000), rng.below(1 << 20));
            format!(
                r#"{{{},"objectRef":{{"resource":"events","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"Event","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"{ns}"}},"involvedObject":{{"kind":"Pod","namespace":"{ns}","name":"app","apiVersion":"v1"}},"reason":"Scheduled","message":"Successfully assigned {ns}/app to worker-2","source":{{}},"type":"Normal","reportingComponent":"default-scheduler"}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}"}}"#,
                common(
                    "Request",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/events"),
                    "create",
                    "system:kube-scheduler",
                    r#""system:authenticated""#
                )
            )
        }
        // RequestResponse pod creates (full request and response objects).
        820..=839 => {
            let name = format!("app-{}", rng.below(5000));
            let privileged = rng.below(200) == 0;
            let body = pod_object(rng, ns, &name, privileged);
            format!(
                r#"{{{},"objectRef":{{"resource":"pods","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{body},"responseObject":{body},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    "create",
                    "system:serviceaccount:kube-system:replicaset-controller",
                    sa_groups
                )
            )
        }
        // Request-level configmap patches.
        840..=889 => {
            let name = format!("cfg-{}", rng.below(300));
            format!(
                r#"{{{},"objectRef":{{"resource":"configmaps","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"data":{{"feature.flags":"a=1,b=0,c=1","log.level":"info"}}}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Request",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
                    "patch",
                    rng.pick(SERVICE_ACCOUNTS),
                    sa_groups
                )
            )
        }
        // Authorization failures (403) by people and service accounts.
        890..=929 => {
            let user = rng.pick(HUMANS);
            format!(
                r#"{{{},"objectRef":{{"resource":"secrets","namespace":"{ns}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","message":"secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\"","reason":"Forbidden","details":{{"kind":"secrets"}},"code":403}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}","annotations":{{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/secrets"),
                    "list",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // Failed authentication (401): ResponseStarted, no user.
        930..=949 => format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/kube-system/secrets","verb":"list","user":{{}},"sourceIPs":["198.51.100.{}"],"userAgent":"curl/8.5.0","responseStatus":{{"metadata":{{}},"status":"Failure","message":"Authentication failed, attempted: bearer","reason":"Unauthorized","code":401}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}"}}"#,
            rng.below(4) + 1
        ),
        // Secret reads by people.
        950..=969 => {
            let user = rng.pick(HUMANS);
            let name = format!("secret-{}", rng.below(50));
            format!(
                r#"{{{},"objectRef":{{"resource":"secrets","namespace":"{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Metadata",
                    "ResponseComplete",
                    &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
                    "get",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // exec sessions.
        970..=979 => {
            let user = rng.pick(HUMANS);
            let pod = format!("app-{}", rng.below(5000));
            format!(
                r#"{{{},"objectRef":{{"resource":"pods","namespace":"{ns}","name":"{pod}","apiVersion":"v1","subresource":"exec"}},"responseStatus":{{"metadata":{{}},"code":101}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "Request",
                    "ResponseStarted",
                    &format!(
                        "/api/v1/namespaces/{ns}/pods/{pod}/exec?command=sh&stdin=true&tty=true"
                    ),
                    "create",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // Ingress changes, half by the GitOps controller.
        980..=989 => {
            let name = format!("ing-{}", rng.below(40));
            let user = if rng.below(2) == 0 {
                "system:serviceaccount:argocd:argocd-application-controller"
            } else {
                rng.pick(HUMANS)
            };
            let body = ingress_object(ns, &name, rng.below(3) != 0);
            format!(
                r#"{{{},"objectRef":{{"resource":"ingresses","namespace":"{ns}","name":"{name}","apiGroup":"networking.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{body},"responseObject":{body},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}"),
                    "update",
                    user,
                    r#""system:authenticated""#
                )
            )
        }
        // RBAC bindings.
        _ => {
            let role = if rng.below(10) == 0 {
                "cluster-admin"
            } else {
                "view"
            };
            let name = format!("binding-{}", rng.below(100));
            format!(
                r#"{{{},"objectRef":{{"resource":"clusterrolebindings","name":"{name}","apiGroup":"rbac.authorization.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"ClusterRoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{{"name":"{name}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"{role}"}},"subjects":[{{"kind":"User","name":"dev@example.com"}}]}},"requestReceivedTimestamp":"{rr}","stageTimestamp":"{st}",{annotations}}}"#,
                common(
                    "RequestResponse",
                    "ResponseComplete",
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                    "create",
                    rng.pick(HUMANS),
                    r#""system:authenticated""#
                )
            )
        }
    }
}

pub fn generate(path: &PathBuf, events: u64, quiet: bool) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = 1_735_689_600; // 2025-01-01T00:00:00Z
    let mut bytes = 0;
    for i in 0..events {
        let line = event(&mut rng, i, base, quiet);
        bytes += line.len() as u64 + 1;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(bytes)
}
