//! The module map of `src/lib.rs` is the truth, and this test holds the code to it.
//!
//! It reads every `crate::…` and `super::…` path under `src/` (in `use` lines and inline) and
//! fails on:
//! - an import against the layer order written in `lib.rs` (a module may use the ones listed
//!   before it, never one after it);
//! - an import cycle between the files of one module (`rules/fields.rs` ↔ `rules/matcher.rs`);
//! - a top-level module missing from the map, or a module in the map that does not exist.
//!
//! Data flows one way, from sources to notifiers; an import the other way is a design bug,
//! whether or not it compiles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer order: the `//! 1. name` lines of lib.rs's module map, in order.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let order: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter_map(|l| {
            let (n, rest) = l.split_once(". ")?;
            n.trim().parse::<u32>().ok()?;
            let name = rest.trim_start_matches('`').split('`').next()?;
            Some(
                name.trim_end_matches('/')
                    .trim_end_matches(".rs")
                    .to_owned(),
            )
        })
        .collect();
    assert!(order.len() > 5, "lib.rs has no numbered module map");
    order
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/rules/fields.rs` → [rules, fields]; `mod.rs` is its dir.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and string literals (paths in docs do not count).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                prev = c;
                continue;
            }
            if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The modules a file refers to, resolved to absolute module paths (as many segments as
/// name modules; the item at the end is dropped by the caller's prefix matching).
fn references(file: &Path, code: &str) -> Vec<Vec<String>> {
    let own = module_of(file);
    // `super::` is relative to the module the file is (a `mod.rs` is its directory's module).
    let is_mod_file = file
        .file_name()
        .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
    let parent: Vec<String> = if is_mod_file {
        own.clone()
    } else {
        own[..own.len().saturating_sub(1)].to_vec()
    };
    let path_re = regex::Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let group_re =
        regex::Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}").unwrap();
    let mut out = Vec::new();
    let mut resolve = |root: &str, rest: &str| {
        let segs: Vec<String> = rest
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut abs = match root {
            "crate" => Vec::new(),
            _ => {
                let mut base = if is_mod_file {
                    parent[..parent.len().saturating_sub(1)].to_vec()
                } else {
                    parent.clone()
                };
                if base.is_empty() && !is_mod_file {
                    base = Vec::new();
                }
                base
            }
        };
        abs.extend(segs);
        out.push(abs);
    };
    for cap in group_re.captures_iter(code) {
        let (root, prefix, items) = (&cap[1], &cap[2], &cap[3]);
        for item in items.split(',') {
            let item = item.split_whitespace().next().unwrap_or("");
            if !item.is_empty() && item != "self" {
                resolve(root, &format!("{prefix}::{item}"));
            } else if item == "self" {
                resolve(root, prefix);
            }
        }
    }
    for cap in path_re.captures_iter(code) {
        resolve(&cap[1], &cap[2]);
    }
    out
}

struct Graph {
    /// file module path → module paths it refers to
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    modules: BTreeSet<Vec<String>>,
}

fn graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "main.rs") {
            continue; // the binary sits on top of everything
        }
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let from = module_of(f);
        for r in references(f, &code) {
            // The longest known module that prefixes the reference.
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|m| modules.contains(m));
            if let Some(t) = target
                && t != from
            {
                edges.entry(from.clone()).or_default().insert(t);
            }
        }
    }
    Graph { edges, modules }
}

#[test]
fn imports_follow_the_layer_order_of_lib_rs() {
    let order = layers();
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let g = graph();
    let tops: BTreeSet<&str> = g
        .modules
        .iter()
        .filter_map(|m| m.first().map(String::as_str))
        .collect();
    for t in &tops {
        assert!(
            rank.contains_key(t),
            "module `{t}` is not in lib.rs's module map"
        );
    }
    for m in &order {
        assert!(
            tops.contains(m.as_str()),
            "lib.rs's module map names `{m}`, which does not exist"
        );
    }
    let mut wrong = Vec::new();
    for (from, targets) in &g.edges {
        let Some(f) = from.first() else { continue };
        for to in targets {
            let Some(t) = to.first() else { continue };
            if f != t && rank[t.as_str()] > rank[f.as_str()] {
                wrong.push(format!(
                    "{} uses {} (which comes after it)",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycles_between_files() {
    let g = graph();
    // Depth-first search for a cycle, reporting one.
    fn visit(
        n: &Vec<String>,
        g: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for t in g.edges.get(n).into_iter().flatten() {
            match state.get(t).copied().unwrap_or(0) {
                0 => visit(t, g, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| s == t).unwrap_or(0);
                    let names: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), t.join("::")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in g.edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &g, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The checks themselves, on known code.
#[test]
fn the_checker_sees_inline_paths_groups_and_super() {
    let file = src().join("rules/matcher.rs");
    let code = code_of(
        "use super::fields::{FieldCriterion, ObjectCache};\nuse crate::event::{AuditEvent, Level};\nfn f() { crate::notify::route::alert_field(); } // crate::daemon::x\nconst S: &str = \"crate::config::Y\";\n",
    );
    let refs: BTreeSet<String> = references(&file, &code)
        .iter()
        .map(|r| r.join("::"))
        .collect();
    for want in [
        "rules::fields::FieldCriterion",
        "event::AuditEvent",
        "notify::route::alert_field",
    ] {
        assert!(refs.contains(want), "{want} in {refs:?}");
    }
    assert!(
        !refs
            .iter()
            .any(|r| r.starts_with("daemon") || r.starts_with("config")),
        "{refs:?}"
    );
    let m = src().join("rules/mod.rs");
    let refs: Vec<String> = references(&m, &code_of("use super::event::X;"))
        .iter()
        .map(|r| r.join("::"))
        .collect();
    assert_eq!(refs, ["event::X"]);
}
