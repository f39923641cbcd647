//! Which rules an event is offered to: an index by verb and response code class, and a
//! resource Bloom mask per rule, built from what each rule's whole match block requires
//! ([`crate::rules::needs`]). Most rules are never looked at for most events.
//!
//! Rules whose top-level `verbs` are exact (and case-sensitive) skip their own verb check:
//! the index guarantees it. Rules whose verbs are only derived (Sigma's case-insensitive
//! `verb` fields, verbs inside `any`) are indexed under the lower-case verbs and still check.
//! An event whose verb is not lower case (no apiserver writes one) is offered every rule that
//! could match it, found the slow way.

use std::collections::HashMap;

use crate::rules::RuleSet;
use crate::rules::needs::{self, CODE_CLASSES};

/// Candidate rules per response code class, in rule order.
type ByCode = [Vec<u32>; CODE_CLASSES];

pub(super) struct RuleIndex {
    /// Verb → candidate rules per code class. A short list searched linearly: there are a
    /// dozen verbs, and hashing every event's verb costs more.
    by_verb: Vec<(Box<str>, ByCode)>,
    /// Rules that can match any verb.
    any_verb: ByCode,
    /// Rules that can match a verb that is not lower case: those that do not require an
    /// exact verb of their own.
    unlowered: ByCode,
    /// Per rule: the resources it can match ([`resource_bit`]).
    pub(super) resource_masks: Vec<u64>,
}

/// One bit per resource name (a 64-bit Bloom filter): a rule that requires one of a set of
/// resources can only match events whose resource bit is in its mask.
fn resource_bit(resource: &str) -> u64 {
    // FNV-1a: deterministic and cheap for the short names resources have.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in resource.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    1 << (h >> 58)
}

/// An event's resource bits: its own bit, or every bit when the name is not lower case (the
/// masks are built from lower-case names).
pub(super) fn event_resource_bits(resource: &str) -> u64 {
    if is_lower(resource) {
        resource_bit(resource)
    } else {
        u64::MAX
    }
}

fn is_lower(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase())
}

impl RuleIndex {
    pub(super) fn new(rules: &RuleSet) -> RuleIndex {
        let mut any_verb: ByCode = Default::default();
        let mut unlowered: ByCode = Default::default();
        let mut by_verb: HashMap<Box<str>, ByCode> = HashMap::new();
        let mut resource_masks = Vec::with_capacity(rules.rules.len());
        for (i, rule) in rules.rules.iter().enumerate() {
            let needs = needs::of(&rule.matcher);
            resource_masks.push(match &needs.resources {
                Some(names) => names.iter().fold(0, |mask, r| mask | resource_bit(r)),
                None => u64::MAX,
            });
            if !rule.enabled {
                continue;
            }
            let classes = needs.classes.unwrap_or([true; CODE_CLASSES]);
            let idx = i as u32;
            let exact = rule
                .matcher
                .verbs
                .as_ref()
                .filter(|_| rule.matcher.verbs_indexed)
                .and_then(|v| v.exact_values());
            let verbs: Option<Vec<String>> = match exact {
                Some(exact) => Some(exact.iter().map(|v| (*v).to_owned()).collect()),
                None => {
                    push(&mut unlowered, idx, &classes);
                    needs.verbs.clone().map(|v| v.into_iter().collect())
                }
            };
            match verbs {
                Some(verbs) => {
                    for v in verbs {
                        push(by_verb.entry(v.into()).or_default(), idx, &classes);
                    }
                }
                None => push(&mut any_verb, idx, &classes),
            }
        }
        // Each verb's lists hold its own rules and the any-verb rules, in rule order.
        for by_code in by_verb.values_mut() {
            for (list, any) in by_code.iter_mut().zip(&any_verb) {
                list.extend(any);
                list.sort_unstable();
                list.dedup();
            }
        }
        // Most frequent verbs first.
        let rank = |v: &str| {
            [
                "get", "list", "watch", "update", "patch", "create", "delete",
            ]
            .iter()
            .position(|x| *x == v)
            .unwrap_or(usize::MAX)
        };
        let mut index: Vec<(Box<str>, ByCode)> = by_verb.into_iter().collect();
        index.sort_by_key(|(v, _)| (rank(v), v.clone()));
        RuleIndex {
            by_verb: index,
            any_verb,
            unlowered,
            resource_masks,
        }
    }

    /// The rules that may match an event with this verb and code class, in rule order.
    /// `scratch` holds the merged list for verbs that are not lower case.
    pub(super) fn candidates<'a>(
        &'a self,
        verb: &str,
        class: usize,
        scratch: &'a mut Vec<u32>,
    ) -> &'a [u32] {
        let own = match self.by_verb.iter().find(|(v, _)| &**v == verb) {
            Some((_, by_code)) => &by_code[class],
            None => &self.any_verb[class],
        };
        if is_lower(verb) {
            return own;
        }
        scratch.clear();
        scratch.extend(own);
        scratch.extend(&self.unlowered[class]);
        scratch.sort_unstable();
        scratch.dedup();
        scratch
    }
}

fn push(lists: &mut ByCode, idx: u32, classes: &[bool; CODE_CLASSES]) {
    for (list, on) in lists.iter_mut().zip(classes) {
        if *on {
            list.push(idx);
        }
    }
}
