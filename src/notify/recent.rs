//! What became of recent alerts at each notifier, in memory, for the console: sent, failed,
//! or held by which silence, inhibition or time interval. The durable record is the
//! [`super::ledger::Ledger`]; this keeps the reason beside the outcome, for the latest alerts
//! only (a bounded map, oldest forgotten first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::ledger::Outcome;

/// One notifier's outcome for an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub notifier: String,
    pub outcome: Outcome,
    /// The silence, inhibit rule or time interval that held it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
}

/// Outcomes of the latest `capacity` alerts.
#[derive(Debug)]
pub struct RecentDeliveries {
    by_alert: HashMap<String, Vec<Delivery>>,
    order: VecDeque<String>,
    capacity: usize,
}

pub type SharedDeliveries = Arc<Mutex<RecentDeliveries>>;

impl RecentDeliveries {
    pub fn new(capacity: usize) -> RecentDeliveries {
        RecentDeliveries {
            by_alert: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn record(&mut self, alert: &str, delivery: Delivery) {
        if let Some(list) = self.by_alert.get_mut(alert) {
            list.retain(|d| d.notifier != delivery.notifier);
            list.push(delivery);
            return;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_alert.remove(&oldest);
        }
        self.order.push_back(alert.to_owned());
        self.by_alert.insert(alert.to_owned(), vec![delivery]);
    }

    pub fn of(&self, alert: &str) -> &[Delivery] {
        self.by_alert.get(alert).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(notifier: &str) -> Delivery {
        Delivery {
            notifier: notifier.into(),
            outcome: Outcome::Sent,
            because: None,
        }
    }

    #[test]
    fn keeps_the_latest_outcome_per_notifier_and_forgets_the_oldest_alert() {
        let mut r = RecentDeliveries::new(2);
        r.record("a", sent("mail"));
        r.record(
            "a",
            Delivery {
                notifier: "mail".into(),
                outcome: Outcome::Silenced,
                because: Some("s1".into()),
            },
        );
        r.record("a", sent("hook"));
        assert_eq!(r.of("a").len(), 2);
        assert_eq!(r.of("a")[0].because.as_deref(), Some("s1"));
        r.record("b", sent("mail"));
        r.record("c", sent("mail"));
        assert!(r.of("a").is_empty());
        assert_eq!(r.of("c"), [sent("mail")]);
    }
}
