//! The kube-apiserver's audit `Policy` (`audit.k8s.io/v1`), evaluated the way the apiserver
//! does (first matching rule wins; no match records nothing), to answer one question before
//! deployment: does the policy record every event the loaded rules look at, at the level they
//! need? A rule that reads an Ingress' spec is silent forever under a policy that logs
//! ingresses at `Metadata`; `auditwatch check --policy` says so instead.
//!
//! What a rule needs is derived from its match blocks: verbs and resources give the requests
//! to check; object paths (`object.`, `requestObject.`, `pod.`) need `Request`,
//! `responseObject.` and scripts reading it need `RequestResponse`; response codes need a
//! stage with a response; everything needs at least `Metadata`. Requests are checked for an
//! ordinary authenticated user, so policy rules that single out specific users or groups
//! (noise exemptions for system components) do not count against a rule.

use std::fmt;

use serde::Deserialize;

use crate::event::{Level, Stage};
use crate::position::{Pos, PositionedError};
use crate::rules::{Rule, RuleSet, Subresource};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] PositionedError),
}

/// The policy's level and stage names, strictly (the event model tolerates unknown values; a
/// policy must not).
#[derive(Debug, Clone, Copy, Deserialize)]
enum PolicyLevel {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl From<PolicyLevel> for Level {
    fn from(l: PolicyLevel) -> Level {
        match l {
            PolicyLevel::None => Level::None,
            PolicyLevel::Metadata => Level::Metadata,
            PolicyLevel::Request => Level::Request,
            PolicyLevel::RequestResponse => Level::RequestResponse,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum PolicyStage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl From<PolicyStage> for Stage {
    fn from(s: PolicyStage) -> Stage {
        match s {
            PolicyStage::RequestReceived => Stage::RequestReceived,
            PolicyStage::ResponseStarted => Stage::ResponseStarted,
            PolicyStage::ResponseComplete => Stage::ResponseComplete,
            PolicyStage::Panic => Stage::Panic,
        }
    }
}

/// `audit.k8s.io/v1` `Policy`, strictly: an unknown field is an error (the apiserver would
/// refuse it too). The Policy is not an API resource, so no OpenAPI schema covers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    rules: Vec<PolicyRule>,
    #[serde(default)]
    omit_stages: Vec<PolicyStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyRule {
    level: PolicyLevel,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<PolicyStage>,
    /// Accepted for completeness; it does not change what is recorded.
    #[serde(default)]
    #[allow(dead_code)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// A parsed audit policy, with the line of each rule for messages.
#[derive(Debug)]
pub struct AuditPolicy {
    file: String,
    rules: Vec<(PolicyRule, usize)>,
    omit_stages: Vec<Stage>,
}

/// One API request, as far as the policy looks at it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub user: &'a str,
    pub groups: &'a [&'a str],
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// What the policy does with a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    /// Line of the deciding policy rule; `None` when no rule matched (nothing is recorded).
    pub line: Option<usize>,
}

impl AuditPolicy {
    pub fn load(path: &std::path::Path) -> Result<AuditPolicy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            file: file.clone(),
            source,
        })?;
        AuditPolicy::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<AuditPolicy, PolicyError> {
        let invalid = |line: usize, column: usize, message: String| {
            PolicyError::Invalid(PositionedError::at(file, Pos { line, column }, message))
        };
        let doc: PolicyDoc =
            serde_yaml::from_str(text).map_err(|e| PositionedError::from_yaml(file, &e))?;
        if doc.kind != "Policy" || !doc.api_version.starts_with("audit.k8s.io/") {
            return Err(invalid(
                1,
                1,
                format!(
                    "expected an audit.k8s.io Policy, found {} {}",
                    doc.api_version, doc.kind
                ),
            ));
        }
        // Each rule's line: the `- level:`-style item starts of the top-level `rules:` list,
        // found with the same position index the rule loader uses.
        let index = crate::position::PositionIndex::build(text);
        let rules = doc
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, index.value(&format!("rules.{i}")).line))
            .collect();
        Ok(AuditPolicy {
            file: file.to_owned(),
            rules,
            omit_stages: doc.omit_stages.into_iter().map(Stage::from).collect(),
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The apiserver's decision for a request: the first matching rule's level.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        for (rule, line) in &self.rules {
            if rule.matches(req) {
                let mut omit = self.omit_stages.clone();
                omit.extend(rule.omit_stages.iter().map(|s| Stage::from(*s)));
                return Decision {
                    level: rule.level.into(),
                    omit_stages: omit,
                    line: Some(*line),
                };
            }
        }
        Decision {
            level: Level::None,
            omit_stages: self.omit_stages.clone(),
            line: None,
        }
    }
}

impl PolicyRule {
    /// `k8s.io/apiserver/pkg/audit/policy/checker.go`, for resource requests.
    fn matches(&self, req: &Request<'_>) -> bool {
        if !self.users.is_empty() && !self.users.iter().any(|u| u == req.user) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !self.user_groups.iter().any(|g| req.groups.contains(&&**g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == req.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(req);
        }
        // A rule only about non-resource URLs does not match resource requests.
        self.non_resource_urls.is_empty()
    }

    fn matches_resource(&self, req: &Request<'_>) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == req.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if req.subresource.is_empty() {
            req.resource.to_owned()
        } else {
            format!("{}/{}", req.resource, req.subresource)
        };
        self.resources.iter().any(|gr| {
            if gr.group != req.group {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.iter().any(|n| n == req.name) {
                return false;
            }
            gr.resources.iter().any(|res| {
                res == "*"
                    || *res == combined
                    || (!req.subresource.is_empty()
                        && res.strip_prefix("*/") == Some(req.subresource))
                    || (!req.subresource.is_empty() && res.strip_suffix("/*") == Some(req.resource))
            })
        })
    }
}

fn rank(level: Level) -> u8 {
    match level {
        Level::None | Level::Unknown => 0,
        Level::Metadata => 1,
        Level::Request => 2,
        Level::RequestResponse => 3,
    }
}

/// A rule that would not see what it looks for under the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub rule: String,
    /// `verb group/resource[/subresource]`.
    pub request: String,
    pub needed: Level,
    pub recorded: Level,
    /// The deciding policy rule's line, if any.
    pub policy_line: Option<usize>,
    pub why: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decided = match self.policy_line {
            Some(l) => format!("the policy rule at line {l}"),
            None => "no policy rule (nothing is recorded)".into(),
        };
        write!(
            f,
            "rule {}: {} is recorded at {:?} by {decided}; the rule needs {:?} ({})",
            self.rule, self.request, self.recorded, self.needed, self.why
        )
    }
}

/// The API group of well-known resources, for rules that name a resource without its group.
fn group_of(resource: &str) -> &'static str {
    match resource {
        "deployments" | "daemonsets" | "statefulsets" | "replicasets" | "controllerrevisions" => {
            "apps"
        }
        "jobs" | "cronjobs" => "batch",
        "ingresses" | "ingressclasses" | "networkpolicies" => "networking.k8s.io",
        "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings" => {
            "rbac.authorization.k8s.io"
        }
        "validatingwebhookconfigurations" | "mutatingwebhookconfigurations" => {
            "admissionregistration.k8s.io"
        }
        "customresourcedefinitions" => "apiextensions.k8s.io",
        "certificatesigningrequests" => "certificates.k8s.io",
        "tokenreviews" => "authentication.k8s.io",
        "subjectaccessreviews" | "selfsubjectaccessreviews" | "selfsubjectrulesreviews" => {
            "authorization.k8s.io"
        }
        _ => "",
    }
}

/// A requester no policy rule singles out: an ordinary authenticated user.
const CHECK_USER: &str = "auditwatch:policy-check";
const CHECK_GROUPS: &[&str] = &["system:authenticated"];

/// Checks every enabled rule of `rules` against `policy`; an empty list means every rule sees
/// what it needs.
pub fn check_rules(policy: &AuditPolicy, rules: &RuleSet) -> Vec<Gap> {
    let mut gaps = Vec::new();
    for rule in rules.rules.iter().filter(|r| r.enabled) {
        check_rule(policy, rule, &mut gaps);
    }
    gaps
}

fn check_rule(policy: &AuditPolicy, rule: &Rule, gaps: &mut Vec<Gap>) {
    let m = &rule.matcher;
    let mut paths = crate::rules::fields::ObjectPaths::default();
    m.collect_object_paths(&mut paths);
    let (reads_object, reads_response) = paths.needs();
    let script = rule.condition.as_ref().map(|c| c.needs).unwrap_or_default();
    let (needed, why) = if reads_response || script.response_object {
        (Level::RequestResponse, "it reads responseObject")
    } else if reads_object || script.request_object {
        (Level::Request, "it reads the request object")
    } else {
        (Level::Metadata, "it matches on request metadata")
    };
    // The stages the rule can use: a response code needs a stage with a response.
    let stages: Vec<Stage> = match &m.stages {
        Some(s) => s.clone(),
        None if m.response_codes.is_some() => {
            vec![
                Stage::ResponseStarted,
                Stage::ResponseComplete,
                Stage::Panic,
            ]
        }
        None => vec![
            Stage::RequestReceived,
            Stage::ResponseStarted,
            Stage::ResponseComplete,
            Stage::Panic,
        ],
    };
    // Requests: the rule's verbs × resources (top level, else the union of its `any` blocks).
    let verbs: Vec<&str> = m
        .verbs
        .as_ref()
        .and_then(|v| v.exact_values())
        .unwrap_or_else(|| crate::event::RESOURCE_VERBS.to_vec());
    let resources = m
        .resources
        .as_ref()
        .map(|r| r.iter().collect::<Vec<_>>())
        .or_else(|| {
            let nested: Vec<_> = m
                .any
                .iter()
                .filter_map(|a| a.resources.as_ref())
                .flatten()
                .collect();
            (!nested.is_empty()).then_some(nested)
        });
    // Rules about any resource (auth failures, anonymous access) are checked on pods.
    let targets: Vec<(&str, &str, &str)> = match resources {
        None => vec![("", "pods", "")],
        Some(list) => list
            .iter()
            .filter_map(|r| r.exact())
            .map(|r| {
                let group = r.group.unwrap_or_else(|| group_of(r.resource));
                // Any subresource: check one that exists for most resources.
                let sub = match r.subresource {
                    Subresource::None => "",
                    Subresource::Any => "status",
                    Subresource::Exact(s) => s,
                };
                (group, r.resource, sub)
            })
            .collect(),
    };
    let namespace = m
        .namespaces
        .as_ref()
        .and_then(|n| n.exact_values())
        .and_then(|n| n.first().map(|s| s.to_string()))
        .unwrap_or_else(|| "default".into());
    for &(group, resource, subresource) in &targets {
        for verb in &verbs {
            let req = Request {
                user: CHECK_USER,
                groups: CHECK_GROUPS,
                verb,
                group,
                resource,
                subresource,
                namespace: &namespace,
                name: "",
            };
            let decision = policy.decide(&req);
            let shown = {
                let g = if group.is_empty() { "core" } else { group };
                let s = if subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{subresource}")
                };
                format!("{verb} {g}/{resource}{s}")
            };
            let mut gap = |needed: Level, why: String| {
                gaps.push(Gap {
                    rule: rule.name.to_string(),
                    request: shown.clone(),
                    needed,
                    recorded: decision.level,
                    policy_line: decision.line,
                    why,
                });
            };
            if rank(decision.level) < rank(needed) {
                gap(needed, why.into());
            } else if stages.iter().all(|s| decision.omit_stages.contains(s)) {
                gap(
                    needed,
                    format!("every stage it can use ({stages:?}) is omitted"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: [system:kube-proxy]
    verbs: [watch]
  - level: None
    resources: [{group: '', resources: [events]}]
  - level: Metadata
    resources: [{group: '', resources: [secrets, configmaps]}]
  - level: RequestResponse
    resources: [{group: networking.k8s.io, resources: [ingresses]}]
  - level: Request
    resources: [{group: '', resources: ['pods/*']}]
  - level: Metadata
";

    fn req<'a>(verb: &'a str, group: &'a str, resource: &'a str, sub: &'a str) -> Request<'a> {
        Request {
            user: "alice",
            groups: &["system:authenticated"],
            verb,
            group,
            resource,
            subresource: sub,
            namespace: "prod",
            name: "x",
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = AuditPolicy::parse("policy.yaml", POLICY).unwrap();
        let d = p.decide(&req("get", "", "secrets", ""));
        assert_eq!((d.level, d.line), (Level::Metadata, Some(10)));
        assert_eq!(d.omit_stages, [Stage::RequestReceived]);
        assert_eq!(
            p.decide(&req("create", "", "events", "")).level,
            Level::None
        );
        assert_eq!(
            p.decide(&req("patch", "networking.k8s.io", "ingresses", ""))
                .level,
            Level::RequestResponse
        );
        // pods/* matches subresources only; pods themselves fall through to the catch-all.
        assert_eq!(
            p.decide(&req("create", "", "pods", "exec")).level,
            Level::Request
        );
        assert_eq!(
            p.decide(&req("create", "", "pods", "")).level,
            Level::Metadata
        );
        // The user-specific exemption does not apply to others.
        assert_eq!(
            p.decide(&req("watch", "", "pods", "")).level,
            Level::Metadata
        );
        let mut proxy = req("watch", "", "services", "");
        proxy.user = "system:kube-proxy";
        assert_eq!(p.decide(&proxy).level, Level::None);
    }

    #[test]
    fn resource_forms() {
        let p = AuditPolicy::parse(
            "p.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Request\n    resources: [{group: apps, resources: ['*/scale']}]\n  - level: RequestResponse\n    resources: [{group: apps, resources: ['*']}]\n",
        )
        .unwrap();
        assert_eq!(
            p.decide(&req("update", "apps", "deployments", "scale"))
                .level,
            Level::Request
        );
        assert_eq!(
            p.decide(&req("update", "apps", "deployments", "status"))
                .level,
            Level::RequestResponse
        );
        assert_eq!(p.decide(&req("update", "", "pods", "")).level, Level::None);
    }

    #[test]
    fn bad_policies_name_their_place() {
        let e = AuditPolicy::parse("p.yaml", "apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p.yaml:1:1: expected an audit.k8s.io Policy"),
            "{e}"
        );
        let e = AuditPolicy::parse(
            "p.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Loud\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:4:"), "{e}");
        let e = AuditPolicy::parse(
            "p.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n    resource: [{group: ''}]\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("p.yaml:4:") || e.to_string().starts_with("p.yaml:5:"),
            "{e}"
        );
        assert!(e.to_string().contains("unknown field `resource`"), "{e}");
    }

    #[test]
    fn rules_that_read_objects_need_them_recorded() {
        let rules = crate::rules::load_sources(
            &[(
                "r.yaml".into(),
                "rules:\n  - name: ingress-tls\n    severity: low\n    match:\n      verbs: [create]\n      resources: [networking.k8s.io/ingresses]\n      absent: [object.spec.tls]\n  - name: secret-read\n    severity: low\n    match: { verbs: [get], resources: [secrets] }\n  - name: exec\n    severity: low\n    match: { verbs: [create], resources: [pods/exec], response_codes: ['100-399'] }\n".into(),
            )],
            &Default::default(),
        )
        .unwrap();
        let p = AuditPolicy::parse("policy.yaml", POLICY).unwrap();
        assert_eq!(check_rules(&p, &rules), []);
        let metadata_only = POLICY.replace("level: RequestResponse", "level: Metadata");
        let p = AuditPolicy::parse("policy.yaml", &metadata_only).unwrap();
        let gaps = check_rules(&p, &rules);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].rule, "ingress-tls");
        assert_eq!(gaps[0].needed, Level::Request);
        assert_eq!(gaps[0].policy_line, Some(12));
        let no_response = POLICY.replace(
            "omitStages: [RequestReceived]",
            "omitStages: [ResponseStarted, ResponseComplete, Panic]",
        );
        let p = AuditPolicy::parse("policy.yaml", &no_response).unwrap();
        let gaps = check_rules(&p, &rules);
        assert_eq!(gaps.iter().map(|g| &*g.rule).collect::<Vec<_>>(), ["exec"]);
    }
}
