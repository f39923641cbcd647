//! The rule packs in `rules/`, compiled into the binary so that `auditwatch replay` works
//! without a checkout. `--rules` replaces them entirely.

use crate::rules::{LoadError, LoadOptions, RuleSet, load_sources};

/// (path, contents) of every bundled pack, in load order.
pub const PACKS: &[(&str, &str)] = &[
    (
        "rules/audit-health.yaml",
        include_str!("../rules/audit-health.yaml"),
    ),
    ("rules/auth.yaml", include_str!("../rules/auth.yaml")),
    ("rules/ingress.yaml", include_str!("../rules/ingress.yaml")),
    ("rules/rbac.yaml", include_str!("../rules/rbac.yaml")),
    ("rules/recon.yaml", include_str!("../rules/recon.yaml")),
    ("rules/secrets.yaml", include_str!("../rules/secrets.yaml")),
    (
        "rules/workloads.yaml",
        include_str!("../rules/workloads.yaml"),
    ),
];

pub fn load(opts: &LoadOptions) -> Result<RuleSet, LoadError> {
    let sources: Vec<(String, String)> = PACKS
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
    let mut set = load_sources(&sources, opts)?;
    set.files = PACKS.iter().map(|(p, _)| p.into()).collect();
    Ok(set)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_packs_match_the_rules_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && !n.ends_with(".test.yaml"))
            .map(|n| format!("rules/{n}"))
            .collect();
        on_disk.sort();
        let bundled: Vec<&str> = super::PACKS.iter().map(|(p, _)| *p).collect();
        assert_eq!(on_disk, bundled, "add new packs to PACKS");
    }

    #[test]
    fn bundled_packs_load() {
        let set = super::load(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.rules.len() >= 15, "{}", set.rules.len());
    }
}
