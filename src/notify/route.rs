//! The routing tree: which notifiers an alert goes to, and how it is grouped there.
//!
//! Same shape and meaning as Alertmanager's, so on-call engineers already know it: children are
//! tried in order, the first match takes the alert unless it has `continue: true`, an alert no
//! child takes stays with the parent, and children inherit grouping settings.

use std::sync::Arc;
use std::time::Duration;

use crate::alert::Alert;
use crate::rules::Severity;

use super::config::{RouteConfig, RouteMatch};
use super::interval::TimeInterval;
use super::silence::{Matcher, Op};

/// How a route groups alerts into notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// Fields grouped on; `None` means one group per alert (`["..."]`).
    pub by: Option<Vec<String>>,
    pub wait: Duration,
    pub interval: Duration,
    /// A group still firing is sent again after this long (0: never).
    pub repeat: Duration,
    /// Re-firings of the same rule and group within this are folded (0: never).
    pub fold: Duration,
    /// Nothing is sent while any of these holds.
    pub mute: Vec<Arc<TimeInterval>>,
    /// When set, nothing is sent unless one of these holds.
    pub active: Vec<Arc<TimeInterval>>,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping {
            by: None,
            wait: Duration::ZERO,
            interval: Duration::from_secs(60),
            // Off: audit alerts are events; a reminder is asked for, not assumed.
            repeat: Duration::ZERO,
            // Off: every firing is its own incident; rules throttle their own floods.
            fold: Duration::ZERO,
            mute: Vec::new(),
            active: Vec::new(),
        }
    }
}

impl Grouping {
    /// The name of the time interval that mutes the route at `now` (a mute interval that
    /// holds, or "outside <names>" when active intervals are set and none holds).
    pub fn muted_by(&self, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
        if let Some(m) = self.mute.iter().find(|t| t.contains(now)) {
            return Some(m.name.clone());
        }
        if !self.active.is_empty() && !self.active.iter().any(|t| t.contains(now)) {
            let names: Vec<&str> = self.active.iter().map(|t| t.name.as_str()).collect();
            return Some(format!("outside {}", names.join(", ")));
        }
        None
    }

    /// The group an alert falls in: (key, the grouped fields and values).
    pub fn key_of(&self, alert: &Alert) -> (String, Vec<(String, String)>) {
        match &self.by {
            None => (alert.id.clone(), Vec::new()),
            Some(fields) => {
                let labels: Vec<(String, String)> = fields
                    .iter()
                    .map(|f| {
                        (
                            f.clone(),
                            alert
                                .field(f)
                                .map(std::borrow::Cow::into_owned)
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                let key = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("\u{1f}");
                (key, labels)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    matcher: RouteMatch,
    matchers: Vec<Matcher>,
    notify: Vec<String>,
    /// What `routes test` prints for the node: its receiver, else its notifiers.
    receiver: String,
    continue_: bool,
    grouping: Grouping,
    children: Vec<Node>,
}

/// A compiled routing tree.
#[derive(Debug, Clone)]
pub struct Router {
    root: Node,
    /// Receiver name → its notifiers, for names in a rule's own `notify` list.
    receivers: std::collections::BTreeMap<String, Vec<String>>,
}

/// Where one alert goes: a notifier and the grouping of the route that chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination<'a> {
    /// Index of the route in depth-first order (0 is the root), part of the group identity.
    pub route: usize,
    pub notifier: &'a str,
    pub grouping: &'a Grouping,
}

impl Router {
    /// Compiles the tree; `intervals` are the config's `time_intervals` (the names the routes
    /// use were checked when the config loaded; an unknown one is ignored here).
    pub fn new(config: &RouteConfig, intervals: &[Arc<TimeInterval>]) -> Router {
        Router {
            root: compile(config, &Grouping::default(), ("", &[]), intervals),
            receivers: Default::default(),
        }
    }

    /// Lets a rule's own `notify` list name Alertmanager-style receivers (each stands for its
    /// notifiers).
    pub fn with_receivers(
        mut self,
        receivers: std::collections::BTreeMap<String, Vec<String>>,
    ) -> Router {
        self.receivers = receivers;
        self
    }

    /// Destinations for `alert`, without duplicates (the first route naming a notifier wins).
    /// A rule's own `notify` list, when set, replaces routing (root grouping).
    pub fn route<'a>(
        &'a self,
        alert: &Alert,
        rule_notify: Option<&'a [String]>,
    ) -> Vec<Destination<'a>> {
        let mut out: Vec<Destination<'a>> = Vec::new();
        if let Some(names) = rule_notify {
            for n in names {
                match self.receivers.get(n) {
                    Some(list) => {
                        for m in list {
                            push_unique(&mut out, 0, m, &self.root.grouping);
                        }
                    }
                    None => push_unique(&mut out, 0, n, &self.root.grouping),
                }
            }
            return out;
        }
        let mut taken = Vec::new();
        walk(&self.root, alert, &mut 0, &mut taken);
        for (index, node) in taken {
            for n in &node.notify {
                push_unique(&mut out, index, n, &node.grouping);
            }
        }
        out
    }

    /// The receivers of the routes that take `alert`, in order, without duplicates (what
    /// `amtool config routes test` prints), including receivers that send nothing.
    pub fn receivers(&self, alert: &Alert) -> Vec<&str> {
        let mut taken = Vec::new();
        walk(&self.root, alert, &mut 0, &mut taken);
        let mut out: Vec<&str> = Vec::new();
        for (_, node) in taken {
            if !out.contains(&node.receiver.as_str()) {
                out.push(&node.receiver);
            }
        }
        out
    }
}

fn push_unique<'a>(
    out: &mut Vec<Destination<'a>>,
    route: usize,
    notifier: &'a str,
    grouping: &'a Grouping,
) {
    if !out.iter().any(|d| d.notifier == notifier) {
        out.push(Destination {
            route,
            notifier,
            grouping,
        });
    }
}

/// Returns whether `node` (or a descendant) took the alert; the nodes that take it go to
/// `out` with their index (nodes numbered depth-first).
fn walk<'a>(
    node: &'a Node,
    alert: &Alert,
    index: &mut usize,
    out: &mut Vec<(usize, &'a Node)>,
) -> bool {
    let me = *index;
    *index += 1;
    if !matches(&node.matcher, alert) || !node.matchers.iter().all(|m| m.matches(alert)) {
        *index += count(node) - 1;
        return false;
    }
    let mut taken = false;
    for child in &node.children {
        if walk(child, alert, index, out) {
            taken = true;
            if !child.continue_ {
                // Skip the numbering of the remaining siblings consistently.
                let rest: usize = node
                    .children
                    .iter()
                    .skip_while(|c| !std::ptr::eq(*c, child))
                    .skip(1)
                    .map(count)
                    .sum();
                *index += rest;
                break;
            }
        }
    }
    if !taken {
        out.push((me, node));
    }
    true
}

fn count(node: &Node) -> usize {
    1 + node.children.iter().map(count).sum::<usize>()
}

fn matches(m: &RouteMatch, alert: &Alert) -> bool {
    (m.severity.is_empty() || m.severity.contains(&alert.severity))
        && m.min_severity
            .is_none_or(|min: Severity| alert.severity >= min)
        && (m.rules.is_empty() || m.rules.iter().any(|r| *r == *alert.rule))
        && m.labels
            .iter()
            .all(|(k, v)| alert.field(k).is_some_and(|got| got == v.as_str()))
}

/// `parent_to` is the parent's receiver label and notifiers, which a route that names none
/// inherits (as in Alertmanager).
fn compile(
    config: &RouteConfig,
    parent: &Grouping,
    parent_to: (&str, &[String]),
    intervals: &[Arc<TimeInterval>],
) -> Node {
    let named = |names: &[String]| -> Vec<Arc<TimeInterval>> {
        names
            .iter()
            .filter_map(|n| intervals.iter().find(|t| t.name == *n).cloned())
            .collect()
    };
    let grouping = Grouping {
        by: match &config.group_by {
            None => parent.by.clone(),
            Some(v) if v.iter().any(|f| f == "...") => None,
            Some(v) => Some(v.clone()),
        },
        wait: config.group_wait.map_or(parent.wait, |d| d.std()),
        interval: config.group_interval.map_or(parent.interval, |d| d.std()),
        repeat: config.repeat_interval.map_or(parent.repeat, |d| d.std()),
        fold: config.fold_interval.map_or(parent.fold, |d| d.std()),
        // As in Alertmanager, time intervals are not inherited.
        mute: named(&config.mute_time_intervals),
        active: named(&config.active_time_intervals),
    };
    let (receiver, notify) = if config.receiver.is_none() && config.notify.is_empty() {
        (parent_to.0.to_owned(), parent_to.1.to_vec())
    } else {
        (
            config
                .receiver
                .clone()
                .unwrap_or_else(|| config.notify.join(",")),
            config.notifiers().cloned().collect(),
        )
    };
    let mut matchers: Vec<Matcher> = config.matchers.iter().map(|m| m.0.clone()).collect();
    for (k, v) in &config.matcher.equal {
        matchers.extend(Matcher::new(k.clone(), Op::Eq, v.clone()));
    }
    for (k, v) in &config.match_re {
        matchers.extend(Matcher::new(k.clone(), Op::Re, v.clone()));
    }
    Node {
        matcher: config.matcher.clone(),
        matchers,
        receiver: receiver.clone(),
        continue_: config.continue_,
        children: config
            .routes
            .iter()
            .map(|c| compile(c, &grouping, (&receiver, &notify), intervals))
            .collect(),
        notify,
        grouping,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;

    fn router(yaml: &str) -> Router {
        Router::new(&serde_yaml::from_str(yaml).unwrap(), &[])
    }

    fn names(r: &Router, a: &Alert) -> Vec<String> {
        r.route(a, None)
            .iter()
            .map(|d| d.notifier.to_owned())
            .collect()
    }

    #[test]
    fn first_match_wins_unless_continue_and_unmatched_stay_at_the_parent() {
        let r = router(
            r#"
notify: [chat]
routes:
  - match: { severity: [critical] }
    notify: [pager]
    continue: true
  - match: { min_severity: high }
    notify: [email]
  - match: { labels: { team: platform } }
    notify: [platform]
"#,
        );
        let crit = alert("a", Severity::Critical, &[("team", "platform")]);
        assert_eq!(names(&r, &crit), ["pager", "email"]);
        let high = alert("b", Severity::High, &[("team", "platform")]);
        assert_eq!(names(&r, &high), ["email"]);
        let low = alert("c", Severity::Low, &[("team", "platform")]);
        assert_eq!(names(&r, &low), ["platform"]);
        let other = alert("d", Severity::Low, &[]);
        assert_eq!(names(&r, &other), ["chat"]);
    }

    #[test]
    fn children_inherit_grouping_and_route_indexes_are_stable() {
        let r = router(
            r#"
group_by: [rule]
group_wait: 30s
routes:
  - match: { rules: [x] }
    notify: [a]
    routes:
      - match: { severity: [low] }
        notify: [b]
        group_wait: 5s
  - match: { rules: [y] }
    notify: [c]
    group_by: ["..."]
"#,
        );
        let x = alert("x", Severity::Low, &[]);
        let d = r.route(&x, None);
        assert_eq!((d[0].notifier, d[0].route), ("b", 2));
        assert_eq!(d[0].grouping.wait, Duration::from_secs(5));
        assert_eq!(d[0].grouping.by.as_deref(), Some(&["rule".to_owned()][..]));
        let y = alert("y", Severity::Low, &[]);
        let d = r.route(&y, None);
        assert_eq!((d[0].notifier, d[0].route), ("c", 3));
        assert_eq!(d[0].grouping.by, None);
        assert_eq!(d[0].grouping.wait, Duration::from_secs(30));
        // A rule's own list replaces routing.
        let own = ["z".to_owned()];
        let d = r.route(&y, Some(&own));
        assert_eq!((d[0].notifier, d[0].route), ("z", 0));
    }

    #[test]
    fn a_rules_own_list_may_name_a_receiver() {
        let r = router("receiver: default\n").with_receivers(
            [(
                "oncall".to_owned(),
                vec!["oncall/email/0".to_owned(), "oncall/pagerduty/0".to_owned()],
            )]
            .into(),
        );
        let a = alert("x", Severity::High, &[]);
        let own = ["oncall".to_owned(), "audit-hook".to_owned()];
        let to: Vec<&str> = r.route(&a, Some(&own)).iter().map(|d| d.notifier).collect();
        assert_eq!(to, ["oncall/email/0", "oncall/pagerduty/0", "audit-hook"]);
    }

    #[test]
    fn group_keys_use_alert_fields() {
        let g = Grouping {
            by: Some(vec!["rule".into(), "group.user".into(), "team".into()]),
            ..Grouping::default()
        };
        let mut a = alert("r", Severity::High, &[("team", "t1")]);
        a.group = crate::alert::Group(vec![("user".into(), "bob".into())]);
        let (key, labels) = g.key_of(&a);
        assert_eq!(key, "rule=r\u{1f}group.user=bob\u{1f}team=t1");
        assert_eq!(labels[1], ("group.user".into(), "bob".into()));
        let one = Grouping::default();
        assert_eq!(one.key_of(&a).0, a.id);
    }
}
