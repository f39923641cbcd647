//! What an event must have for a rule to match it, derived from the rule's whole match block:
//! its verbs, resources and response code classes. The engine indexes rules by them so that a
//! rule is not even offered an event it cannot match.
//!
//! Criteria count wherever the block's logic makes them necessary: top-level typed criteria,
//! field criteria on the typed event fields (`verb`, `objectRef.resource`,
//! `responseStatus.code`, as compiled Sigma rules write them), every alternative of an `any`,
//! and exceptions that only negate (`except: [{except: [x]}]`, Sigma's `and` and `not`). The
//! result is a superset of what can match: values are compared in lower case (Sigma's are
//! case-insensitive) and anything not understood constrains nothing, so a rule is never
//! skipped for an event it would match.

use std::collections::BTreeSet;

use super::fields::FieldCriterion;
use super::matcher::Matcher;

/// Response code classes, as the engine indexes them: no response status, 1xx..5xx, other.
pub const CODE_CLASSES: usize = 7;

/// The class of a response code (`None`: no response status).
pub fn code_class(code: Option<i32>) -> usize {
    match code {
        None => 0,
        Some(c) => match c / 100 {
            c @ 1..=5 => c as usize,
            _ => 6,
        },
    }
}

/// Necessary properties of a matching event; `None` constrains nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The verb, in lower case, is one of these.
    pub verbs: Option<BTreeSet<String>>,
    /// `objectRef.resource`, in lower case, is one of these.
    pub resources: Option<BTreeSet<String>>,
    /// The response code class is one of these.
    pub classes: Option<[bool; CODE_CLASSES]>,
}

fn intersect<T: Ord + Clone>(
    a: Option<BTreeSet<T>>,
    b: Option<BTreeSet<T>>,
) -> Option<BTreeSet<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
        (a, None) => a,
        (None, b) => b,
    }
}

fn union<T: Ord>(a: Option<BTreeSet<T>>, b: Option<BTreeSet<T>>) -> Option<BTreeSet<T>> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.extend(b);
            Some(a)
        }
        _ => None,
    }
}

fn zip_classes(
    a: Option<[bool; CODE_CLASSES]>,
    b: Option<[bool; CODE_CLASSES]>,
    both: bool,
) -> Option<[bool; CODE_CLASSES]> {
    match (a, b) {
        (Some(a), Some(b)) => Some(std::array::from_fn(|i| {
            if both { a[i] && b[i] } else { a[i] || b[i] }
        })),
        (a, None) if both => a,
        (None, b) if both => b,
        _ => None,
    }
}

impl Needs {
    /// Both hold.
    pub fn and(self, other: Needs) -> Needs {
        Needs {
            verbs: intersect(self.verbs, other.verbs),
            resources: intersect(self.resources, other.resources),
            classes: zip_classes(self.classes, other.classes, true),
        }
    }

    /// Either holds.
    pub fn or(self, other: Needs) -> Needs {
        Needs {
            verbs: union(self.verbs, other.verbs),
            resources: union(self.resources, other.resources),
            classes: zip_classes(self.classes, other.classes, false),
        }
    }
}

/// The classes inclusive code ranges can fall in.
pub fn classes_of(ranges: &[(i32, i32)]) -> [bool; CODE_CLASSES] {
    let mut classes = [false; CODE_CLASSES];
    for &(lo, hi) in ranges {
        for (c, slot) in classes.iter_mut().enumerate().take(6).skip(1) {
            let (clo, chi) = (c as i32 * 100, c as i32 * 100 + 99);
            if lo <= chi && hi >= clo {
                *slot = true;
            }
        }
        if lo < 100 || hi > 599 {
            classes[6] = true;
        }
    }
    classes
}

/// What an event must have to match `m`.
pub fn of(m: &Matcher) -> Needs {
    let mut needs = Needs::default();
    if let Some(values) = m.verbs.as_ref().and_then(|v| v.lowercase_values()) {
        needs = needs.and(Needs {
            verbs: Some(values.into_iter().collect()),
            ..Needs::default()
        });
    }
    if let Some(patterns) = &m.resources {
        let exact: Option<BTreeSet<String>> = patterns
            .iter()
            .map(|p| p.exact_resource().map(str::to_lowercase))
            .collect();
        needs = needs.and(Needs {
            resources: exact,
            ..Needs::default()
        });
    }
    if let Some(ranges) = &m.response_codes {
        needs = needs.and(Needs {
            classes: Some(classes_of(ranges)),
            ..Needs::default()
        });
    }
    for c in &m.fields {
        needs = needs.and(of_field(c));
    }
    if let Some(any) = m.any.iter().map(of).reduce(Needs::or) {
        needs = needs.and(any);
    }
    for x in &m.except {
        if is_negation(x)
            && let Some(negated) = x.except.iter().map(of).reduce(Needs::or)
        {
            needs = needs.and(negated);
        }
    }
    needs
}

/// A block with exceptions only: it matches when none of them does, so excluding it requires
/// one of them.
fn is_negation(m: &Matcher) -> bool {
    let bare = Matcher {
        except: Vec::new(),
        ..m.clone()
    };
    !m.except.is_empty() && of_nothing(&bare)
}

/// Whether a block has no criteria at all (matches every event).
fn of_nothing(m: &Matcher) -> bool {
    m.verbs.is_none()
        && m.resources.is_none()
        && m.namespaces.is_none()
        && m.names.is_none()
        && m.users.is_none()
        && m.effective_users.is_none()
        && m.groups.is_none()
        && m.response_codes.is_none()
        && m.stages.is_none()
        && m.levels.is_none()
        && m.source_ips.is_none()
        && m.public_source_ip.is_none()
        && m.user_agents.is_none()
        && m.request_uris.is_none()
        && m.fields.is_empty()
        && m.absent.is_empty()
        && m.present.is_empty()
        && m.any.is_empty()
        && m.except.is_empty()
}

fn of_field(c: &FieldCriterion) -> Needs {
    let a = &c.accepted;
    match c.path.event_field() {
        Some("verb") if !a.null => Needs {
            verbs: a
                .strings
                .as_ref()
                .map_or(Some(Vec::new()), |p| p.lowercase_values())
                .map(|v| v.into_iter().collect()),
            ..Needs::default()
        },
        Some("objectRef.resource") if !a.null => Needs {
            resources: a
                .strings
                .as_ref()
                .map_or(Some(Vec::new()), |p| p.lowercase_values())
                .map(|v| v.into_iter().collect()),
            ..Needs::default()
        },
        // The code is a number: only the accepted numbers (and null: no status) can match.
        Some("responseStatus.code") => {
            let mut classes = [false; CODE_CLASSES];
            for n in &a.numbers {
                if n.fract() == 0.0 && n.abs() < f64::from(i32::MAX) {
                    classes[code_class(Some(*n as i32))] = true;
                } else {
                    return Needs::default();
                }
            }
            classes[0] |= a.null;
            Needs {
                classes: Some(classes),
                ..Needs::default()
            }
        }
        _ => Needs::default(),
    }
}
