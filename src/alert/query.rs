//! Filters for `auditwatch alerts`, which lists the alert journal.

use chrono::{DateTime, Utc};

use super::Alert;
use crate::rules::Severity;

#[derive(Debug, Default, Clone)]
pub struct AlertQuery {
    /// Any of these rules (empty: all).
    pub rules: Vec<String>,
    pub min_severity: Option<Severity>,
    /// `last_seen` at or after.
    pub since: Option<DateTime<Utc>>,
    /// `last_seen` before.
    pub until: Option<DateTime<Utc>>,
    /// `field=value` over rule, severity, kind, labels and `group.<field>`.
    pub fields: Vec<(String, String)>,
    /// Case-insensitive substring of the summary, group values or an event's user/object.
    pub text: Option<String>,
}

impl AlertQuery {
    pub fn matches(&self, a: &Alert) -> bool {
        let t = a.last_seen.to_datetime();
        (self.rules.is_empty() || self.rules.iter().any(|r| *r == *a.rule))
            && self.min_severity.is_none_or(|m| a.severity >= m)
            && self.since.is_none_or(|s| t >= s)
            && self.until.is_none_or(|u| t < u)
            && self
                .fields
                .iter()
                .all(|(k, v)| a.field(k).is_some_and(|got| got == v.as_str()))
            && self.text.as_ref().is_none_or(|needle| {
                let needle = needle.to_lowercase();
                a.summary.to_lowercase().contains(&needle)
                    || a.group
                        .0
                        .iter()
                        .any(|(_, v)| v.to_lowercase().contains(&needle))
                    || a.events.iter().any(|e| {
                        e.user().to_lowercase().contains(&needle)
                            || e.object().to_lowercase().contains(&needle)
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;

    #[test]
    fn filters_combine() {
        let a = alert("pod-exec", Severity::High, &[("team", "apps")]);
        let q = |f: &dyn Fn(&mut AlertQuery)| {
            let mut q = AlertQuery::default();
            f(&mut q);
            q.matches(&a)
        };
        assert!(q(&|_| {}));
        assert!(q(&|q| q.rules = vec!["pod-exec".into()]));
        assert!(!q(&|q| q.rules = vec!["other".into()]));
        assert!(q(&|q| q.min_severity = Some(Severity::Medium)));
        assert!(!q(&|q| q.min_severity = Some(Severity::Critical)));
        assert!(q(&|q| q.fields = vec![("team".into(), "apps".into())]));
        assert!(q(&|q| q.text = Some("MALLORY".into())));
        assert!(!q(&|q| q.text = Some("eve".into())));
        assert!(!q(&|q| q.since = Some(Utc::now())));
    }
}
