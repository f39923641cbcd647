//! Alertmanager's inhibit rules: while an alert matching `source_matchers` is firing, alerts
//! matching `target_matchers` with the same values of the `equal` fields are not notified
//! (a cluster-admin binding already paged; the exec into a pod by the same user that follows
//! need not page again).
//!
//! Audit alerts are events, not states: a source alert counts as firing for
//! `delivery.resolve_timeout` (five minutes by default, Alertmanager's own default for alerts
//! without an end) after the dispatcher received it. An alert never inhibits itself, and an
//! inhibited alert is still journaled, counted and shown in the console, like a silenced one.
//! The old map forms (`source_match`, `source_match_re`, `target_match`, `target_match_re`)
//! are read too, as Alertmanager 0.25 still does.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::config::TextMatcher;
use super::silence::{Matcher, Op};
use crate::alert::Alert;

/// One entry of `inhibit_rules:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InhibitRuleConfig {
    pub source_matchers: Vec<TextMatcher>,
    pub target_matchers: Vec<TextMatcher>,
    pub source_match: BTreeMap<String, String>,
    pub source_match_re: BTreeMap<String, String>,
    pub target_match: BTreeMap<String, String>,
    pub target_match_re: BTreeMap<String, String>,
    /// Fields whose values must be the same in the source and the target.
    pub equal: Vec<String>,
}

/// The matchers of one side: the text matchers and the old maps, all of which must hold.
fn side(
    text: &[TextMatcher],
    eq: &BTreeMap<String, String>,
    re: &BTreeMap<String, String>,
) -> Result<Vec<Matcher>, String> {
    let mut out: Vec<Matcher> = text.iter().map(|m| m.0.clone()).collect();
    for (k, v) in eq {
        out.push(Matcher::new(k.clone(), Op::Eq, v.clone())?);
    }
    for (k, v) in re {
        out.push(Matcher::new(k.clone(), Op::Re, v.clone())?);
    }
    Ok(out)
}

impl InhibitRuleConfig {
    /// Checks the rule; errors carry the key below the entry (empty: the entry itself) and a
    /// message.
    pub fn compile(&self) -> Result<InhibitRule, (String, String)> {
        let source = side(
            &self.source_matchers,
            &self.source_match,
            &self.source_match_re,
        )
        .map_err(|e| ("source_match_re".to_owned(), e))?;
        let target = side(
            &self.target_matchers,
            &self.target_match,
            &self.target_match_re,
        )
        .map_err(|e| ("target_match_re".to_owned(), e))?;
        if source.is_empty() {
            return Err((
                String::new(),
                "an inhibit rule needs source matchers (it would take every alert as a source)"
                    .into(),
            ));
        }
        if target.is_empty() {
            return Err((
                String::new(),
                "an inhibit rule needs target matchers (it would mute every alert)".into(),
            ));
        }
        Ok(InhibitRule {
            source,
            target,
            equal: self.equal.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    /// The values of the `equal` fields (missing ones as empty, as Alertmanager does).
    fn key(&self, alert: &Alert) -> String {
        let mut key = String::new();
        for f in &self.equal {
            key.push_str(alert.field(f).as_deref().unwrap_or(""));
            key.push('\u{1f}');
        }
        key
    }
}

/// Source alerts remembered per rule, at most this many keys each (oldest dropped).
const MAX_SOURCES: usize = 10_000;

/// The inhibit rules and the source alerts firing now.
pub struct Inhibitor {
    rules: Vec<InhibitRule>,
    /// Per rule: equal-key → (when the source arrived, its alert ID).
    firing: Vec<HashMap<String, (Instant, String)>>,
    resolve_timeout: Duration,
}

impl Inhibitor {
    pub fn new(rules: Vec<InhibitRule>, resolve_timeout: Duration) -> Inhibitor {
        Inhibitor {
            firing: vec![HashMap::new(); rules.len()],
            rules,
            resolve_timeout,
        }
    }

    /// Takes `alert` in: returns the index of the first rule that inhibits it (a firing
    /// source other than itself with the same `equal` values), then records it as a source of
    /// the rules whose source side it matches.
    pub fn check(&mut self, alert: &Alert, now: Instant) -> Option<usize> {
        let mut inhibited = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.target.iter().all(|m| m.matches(alert)) {
                continue;
            }
            let key = rule.key(alert);
            if let Some((at, id)) = self.firing[i].get(&key)
                && now.duration_since(*at) < self.resolve_timeout
                && *id != alert.id
            {
                inhibited = Some(i);
                break;
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.source.iter().all(|m| m.matches(alert)) {
                let map = &mut self.firing[i];
                if map.len() >= MAX_SOURCES {
                    let timeout = self.resolve_timeout;
                    map.retain(|_, (at, _)| now.duration_since(*at) < timeout);
                    if map.len() >= MAX_SOURCES
                        && let Some(oldest) = map
                            .iter()
                            .min_by_key(|(_, (at, _))| *at)
                            .map(|(k, _)| k.clone())
                    {
                        map.remove(&oldest);
                    }
                }
                map.insert(rule.key(alert), (now, alert.id.clone()));
            }
        }
        inhibited
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;
    use crate::rules::Severity;

    fn rule(yaml: &str) -> InhibitRule {
        serde_yaml::from_str::<InhibitRuleConfig>(yaml)
            .unwrap()
            .compile()
            .unwrap()
    }

    #[test]
    fn a_firing_source_mutes_targets_with_equal_values() {
        let r = rule(
            "source_matchers: ['rule=\"cluster-admin-binding\"']\ntarget_matchers: ['severity=~\"medium|low\"']\nequal: [team]\n",
        );
        let mut inh = Inhibitor::new(vec![r], Duration::from_secs(300));
        let t0 = Instant::now();
        let source = alert(
            "cluster-admin-binding",
            Severity::Critical,
            &[("team", "apps")],
        );
        let same_team = alert("pod-exec", Severity::Medium, &[("team", "apps")]);
        let other_team = alert("pod-exec", Severity::Medium, &[("team", "web")]);
        let high = alert("pod-exec", Severity::High, &[("team", "apps")]);
        assert_eq!(inh.check(&same_team, t0), None, "no source yet");
        assert_eq!(inh.check(&source, t0), None);
        assert_eq!(inh.check(&same_team, t0), Some(0));
        assert_eq!(inh.check(&other_team, t0), None);
        assert_eq!(inh.check(&high, t0), None, "not a target");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(inh.check(&same_team, later), None, "the source resolved");
    }

    #[test]
    fn the_old_map_forms_and_no_self_inhibition() {
        let r = rule(
            "source_match: { severity: critical }\ntarget_match_re: { severity: 'critical|warning' }\n",
        );
        let mut inh = Inhibitor::new(vec![r], Duration::from_secs(300));
        let now = Instant::now();
        let crit = alert("a", Severity::Critical, &[]);
        assert_eq!(
            inh.check(&crit, now),
            None,
            "an alert does not inhibit itself"
        );
        assert_eq!(
            inh.check(&alert("b", Severity::Critical, &[]), now),
            Some(0)
        );
    }

    #[test]
    fn empty_sides_are_refused() {
        let e = serde_yaml::from_str::<InhibitRuleConfig>("target_matchers: ['rule=x']\n")
            .unwrap()
            .compile()
            .unwrap_err();
        assert!(e.1.contains("needs source matchers"), "{e:?}");
    }
}
