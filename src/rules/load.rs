//! Loading rule files: YAML → schema → compiled [`Rule`]s, with every error collected and
//! pointed at `file:line:column`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use thiserror::Error;

use super::fields::{Accepted, FieldCriterion, Quantifier, ValuePath};
use super::matcher::{Matcher, Patterns, ResourcePattern, parse_code_range, parse_net};
use super::schema::{
    CodeDoc, ListDoc, MatchDoc, RuleDoc, RuleFileShape, SeverityDoc, StepDoc, WindowDoc,
};
use super::script::{self, Condition, ScriptLimits};
use super::template::Summary;
use super::{MAX_SEQUENCE_STEPS, Origin, Rule, RuleId, RuleSet, Severity, WindowSpec};
use crate::event::field::FieldPath;
use crate::event::{Level, Span, Stage};
use crate::position::{Pos, PositionIndex, PositionedError};

/// A rule file error with its place.
pub type RuleError = PositionedError;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no rule files found (looked for *.yaml and *.yml, excluding *.test.yaml)")]
    Empty { path: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RuleError>),
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub script_limits: ScriptLimits,
}

/// True for rule test files, which live beside rules but are not rules.
pub fn is_test_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// Expands files and directories (recursively, sorted) into rule files.
pub fn collect_rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk_dir(path, &mut out)?;
            if out.len() == before {
                return Err(LoadError::Empty {
                    path: path.display().to_string(),
                });
            }
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if is_yaml(&path) && !is_test_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every rule file under `paths` into one rule set.
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Result<RuleSet, LoadError> {
    let files = collect_rule_files(paths)?;
    let mut sources = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
            path: file.display().to_string(),
            source,
        })?;
        sources.push((file.display().to_string(), text));
    }
    let mut set = compile(&sources, opts)?;
    set.files = files;
    Ok(set)
}

/// Loads rules from (name, text) pairs, e.g. the packs compiled into the binary.
pub fn load_sources(
    sources: &[(String, String)],
    opts: &LoadOptions,
) -> Result<RuleSet, LoadError> {
    compile(sources, opts)
}

/// Loads rules from text (used by tests and by callers that already hold the file).
pub fn load_str(name: &str, text: &str, opts: &LoadOptions) -> Result<RuleSet, LoadError> {
    compile(&[(name.to_owned(), text.to_owned())], opts)
}

struct ParsedFile {
    name: Arc<str>,
    text: String,
    lists: Vec<(String, ListDoc)>,
    disable: Vec<String>,
    enable: Vec<String>,
    /// Rules that deserialized, with their index in the file (for positions) and id.
    rules: Vec<(usize, RuleDoc, RuleId)>,
    index: PositionIndex,
}

struct Errors {
    list: Vec<RuleError>,
}

impl Errors {
    fn at(&mut self, file: &Arc<str>, pos: Pos, message: impl Into<String>) {
        self.list.push(PositionedError {
            file: file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }
}

/// Whether a YAML text holds anything but comments and blank lines.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    })
}

/// Where `key` of a Sigma file's `doc`-th document is. Exact for the first document (the usual
/// one rule per file); later documents point at the file's start.
fn sigma_position(index: &PositionIndex, doc: usize, key: &str) -> Pos {
    if doc == 0 {
        index.key(key)
    } else {
        Pos { line: 1, column: 1 }
    }
}

/// The documents of a Sigma rule file, or `None` when the text is an auditwatch rule file.
fn sigma_documents(text: &str) -> Option<Vec<serde_yaml::Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        match serde_yaml::Value::deserialize(d) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(v) => docs.push(v),
            // Not valid YAML: the auditwatch loader reports it with its position.
            Err(_) => return None,
        }
    }
    docs.first()
        .is_some_and(super::sigma::is_sigma)
        .then_some(docs)
}

/// Loads rule files in phases: parse every file (native rule files and Sigma files), collect
/// the lists (global, so all before any rule), compile the native rules, then the Sigma rules
/// and correlations, then apply the site files' enable/disable.
fn compile(sources: &[(String, String)], opts: &LoadOptions) -> Result<RuleSet, LoadError> {
    let mut errors = Errors { list: Vec::new() };
    let parsed = parse_files(sources, &mut errors);
    let lists = collect_lists(&parsed.files, &mut errors);
    let scripts = script::build_engine(opts.script_limits);
    let lists_value = script::lists_dynamic(&lists);
    let mut templates = minijinja::Environment::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut rules = compile_native(
        &parsed.files,
        &lists,
        (&scripts, &lists_value, &mut templates),
        &mut seen,
        &mut errors,
    );
    for rule in compile_sigma(parsed.sigma_rules, parsed.correlations, &mut errors) {
        let here = format!(
            "{}:{}:{}",
            rule.origin.file, rule.origin.line, rule.origin.column
        );
        if let Some(first) = seen.get(&*rule.name) {
            let pos = Pos {
                line: rule.origin.line,
                column: rule.origin.column,
            };
            let file = Arc::clone(&rule.origin.file);
            errors.at(
                &file,
                pos,
                format!(
                    "duplicate rule name {:?}: first defined at {first}",
                    rule.name
                ),
            );
            continue;
        }
        seen.insert(rule.name.to_string(), here);
        rules.push(rule);
    }
    switch_rules(&parsed.files, &mut rules, &mut errors);
    if !errors.list.is_empty() {
        errors
            .list
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(LoadError::Invalid(errors.list));
    }
    let mut object_paths = super::fields::ObjectPaths::default();
    for r in &rules {
        r.matcher.collect_object_paths(&mut object_paths);
        for (_, m) in &r.severity_when {
            m.collect_object_paths(&mut object_paths);
        }
    }
    Ok(RuleSet {
        script_limits: opts.script_limits,
        rules,
        lists,
        files: Vec::new(),
        scripts,
        lists_value,
        templates,
        object_paths,
    })
}

/// A Sigma correlation waiting for the rules it refers to: (document, rule name, file, its
/// position index, document number).
type PendingCorrelation = (
    serde_yaml::Value,
    String,
    Arc<str>,
    Arc<PositionIndex>,
    usize,
);

/// What the parse phase found.
struct Parsed {
    files: Vec<ParsedFile>,
    sigma_rules: Vec<Rule>,
    correlations: Vec<PendingCorrelation>,
}

/// Phase 1: every file parsed: native rule files into [`ParsedFile`]s, Sigma files compiled
/// (their correlations kept for later: they refer to other Sigma rules).
fn parse_files(sources: &[(String, String)], errors: &mut Errors) -> Parsed {
    let mut parsed = Parsed {
        files: Vec::new(),
        sigma_rules: Vec::new(),
        correlations: Vec::new(),
    };
    for (name, text) in sources {
        let name: Arc<str> = Arc::from(name.as_str());
        if !has_content(text) {
            continue;
        }
        if let Some(docs) = sigma_documents(text) {
            parse_sigma_file(&name, text, &docs, &mut parsed, errors);
            continue;
        }
        let shape = match super::yaml::from_str::<RuleFileShape>(text) {
            Ok(shape) => shape,
            Err(e) => {
                errors.list.push(PositionedError::from_yaml(&name, &e));
                continue;
            }
        };
        let index = PositionIndex::build(text);
        let mut rules = Vec::new();
        for (i, value) in shape.rules.iter().enumerate() {
            // The file shape keeps rules as raw values: merge keys (`<<: *defaults`) inside a
            // rule are applied here.
            let merged = super::yaml::merged(value);
            match serde_path_to_error::deserialize::<_, RuleDoc>(merged.clone()) {
                Ok(rule) => rules.push((i, rule, RuleId::of_yaml(&merged))),
                Err(e) => errors.list.push(crate::position::path_error(
                    &name,
                    &index,
                    &format!("rules.{i}"),
                    &format!("rules[{i}]"),
                    &e,
                )),
            }
        }
        let mut lists = Vec::new();
        for (list, value) in &shape.lists {
            match ListDoc::from_value(value) {
                Ok(doc) => lists.push((list.clone(), doc)),
                Err(e) => errors.at(&name, index.value(&format!("lists.{list}")), e),
            }
        }
        parsed.files.push(ParsedFile {
            name,
            index,
            text: text.clone(),
            lists,
            disable: shape.disable,
            enable: shape.enable,
            rules,
        });
    }
    parsed
}

fn parse_sigma_file(
    name: &Arc<str>,
    text: &str,
    docs: &[serde_yaml::Value],
    parsed: &mut Parsed,
    errors: &mut Errors,
) {
    let index = Arc::new(PositionIndex::build(text));
    let stem = std::path::Path::new(&**name)
        .file_stem()
        .map_or_else(|| name.to_string(), |s| s.to_string_lossy().into_owned());
    for (i, doc) in docs.iter().enumerate() {
        let rule_name = match doc.get("name").and_then(serde_yaml::Value::as_str) {
            Some(n) => n.to_owned(),
            None if docs.len() == 1 => stem.clone(),
            None => format!("{stem}-{}", i + 1),
        };
        let at = |key: &str| sigma_position(&index, i, key);
        if doc.get("correlation").is_some() {
            parsed.correlations.push((
                doc.clone(),
                rule_name,
                Arc::clone(name),
                Arc::clone(&index),
                i,
            ));
            continue;
        }
        match super::sigma::compile(doc, &rule_name, name) {
            Ok(mut rule) => {
                let pos = at("title");
                rule.origin.line = pos.line;
                rule.origin.column = pos.column;
                parsed.sigma_rules.push(rule);
            }
            Err((key, msg)) => errors.at(name, at(&key), format!("Sigma rule: {msg}")),
        }
    }
}

/// Phase 2: the lists every file defines (global: all before any rule is compiled), then the
/// site files' edits of them.
fn collect_lists(files: &[ParsedFile], errors: &mut Errors) -> BTreeMap<String, Vec<String>> {
    let mut lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut list_origin: HashMap<String, String> = HashMap::new();
    for f in files {
        for (name, doc) in &f.lists {
            let ListDoc::Define(items) = doc else {
                continue;
            };
            let pos = f.index.key(&format!("lists.{name}"));
            if let Some(first) = list_origin.get(name) {
                errors.at(
                    &f.name,
                    pos,
                    format!("list {name:?} is already defined at {first}"),
                );
                continue;
            }
            if !is_identifier(name) {
                errors.at(
                    &f.name,
                    pos,
                    format!("list name {name:?} must be an identifier (letters, digits, _)"),
                );
            }
            list_origin.insert(
                name.clone(),
                format!("{}:{}:{}", f.name, pos.line, pos.column),
            );
            lists.insert(name.clone(), items.clone());
        }
    }
    edit_lists(files, &mut lists, errors);
    lists
}

/// What compiled rules share: the Rhai engine scripts compile with, the `lists` value, and the
/// summary templates.
type Shared<'a> = (
    &'a rhai::Engine,
    &'a rhai::Dynamic,
    &'a mut minijinja::Environment<'static>,
);

/// Phase 3: the native rules, in file order; `seen` collects their names and places.
fn compile_native(
    files: &[ParsedFile],
    lists: &BTreeMap<String, Vec<String>>,
    (scripts, lists_value, templates): Shared<'_>,
    seen: &mut HashMap<String, String>,
    errors: &mut Errors,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut compiled = CompiledPatterns::default();
    for f in files {
        for (i, doc, id) in &f.rules {
            let mut cx = RuleContext {
                file: f,
                base: format!("rules.{i}"),
                errors,
                lists,
                compiled: &mut compiled,
            };
            let origin_pos = cx.file.index.key(&format!("{}.name", cx.base));
            if let Some(first) = seen.get(&doc.name) {
                let pos = cx.file.index.value(&format!("{}.name", cx.base));
                cx.errors.at(
                    &f.name,
                    pos,
                    format!(
                        "duplicate rule name {:?}: first defined at {first}",
                        doc.name
                    ),
                );
                continue;
            }
            seen.insert(
                doc.name.clone(),
                format!("{}:{}:{}", f.name, origin_pos.line, origin_pos.column),
            );
            if let Some(rule) = cx.compile_rule(doc, *id, scripts, lists_value, templates) {
                rules.push(Rule {
                    origin: Origin {
                        file: f.name.clone(),
                        line: origin_pos.line,
                        column: origin_pos.column,
                    },
                    ..rule
                });
            }
        }
    }
    rules
}

/// Phase 4: the Sigma correlations (over the Sigma rules), and the Sigma rules they consume
/// switched off unless a correlation says `generate: true`.
fn compile_sigma(
    mut sigma_rules: Vec<Rule>,
    correlations: Vec<PendingCorrelation>,
    errors: &mut Errors,
) -> Vec<Rule> {
    let mut consumed_by_correlations: Vec<Arc<str>> = Vec::new();
    let mut correlated = Vec::new();
    for (doc, rule_name, file, index, i) in correlations {
        let at = |key: &str| sigma_position(&index, i, key);
        let pos = at("title");
        match super::sigma::compile_correlation(&doc, &rule_name, &file, &sigma_rules) {
            Ok((mut rule, consumed, generate)) => {
                rule.origin.line = pos.line;
                rule.origin.column = pos.column;
                if !generate {
                    consumed_by_correlations.extend(consumed);
                }
                correlated.push(rule);
            }
            Err((key, msg)) => errors.at(&file, at(&key), format!("Sigma correlation: {msg}")),
        }
    }
    for rule in &mut sigma_rules {
        if consumed_by_correlations.contains(&rule.name) {
            rule.enabled = false;
        }
    }
    sigma_rules.extend(correlated);
    sigma_rules
}

/// Applies the `{replace: ...}` and `{append: ...}` entries of every file to lists defined
/// elsewhere: all replacements first, then appends in load order, so the result does not
/// depend on which file loads first.
fn edit_lists(
    files: &[ParsedFile],
    lists: &mut BTreeMap<String, Vec<String>>,
    errors: &mut Errors,
) {
    let mut replaced: HashMap<&str, String> = HashMap::new();
    for appending in [false, true] {
        for f in files {
            for (name, doc) in &f.lists {
                let (items, verb) = match doc {
                    ListDoc::Define(_) => continue,
                    ListDoc::Replace(items) if !appending => (items, "replace"),
                    ListDoc::Append(items) if appending => (items, "append"),
                    _ => continue,
                };
                let pos = f.index.key(&format!("lists.{name}"));
                let here = format!("{}:{}:{}", f.name, pos.line, pos.column);
                let Some(list) = lists.get_mut(name) else {
                    errors.at(
                        &f.name,
                        pos,
                        format!("cannot {verb} list {name:?}: no loaded file defines it"),
                    );
                    continue;
                };
                if appending {
                    list.extend(items.iter().cloned());
                } else if let Some(first) = replaced.get(name.as_str()) {
                    errors.at(
                        &f.name,
                        pos,
                        format!("list {name:?} is already replaced at {first}"),
                    );
                } else {
                    replaced.insert(name, here);
                    *list = items.clone();
                }
            }
        }
    }
}

/// Applies every file's `enable` and then `disable` entries (rule names or globs) to the
/// loaded rules, so a rule both enabled and disabled somewhere ends up off. An entry that names
/// no loaded rule is an error: a misspelt name would otherwise leave a rule as it was.
fn switch_rules(files: &[ParsedFile], rules: &mut [Rule], errors: &mut Errors) {
    for (key, on) in [("enable", true), ("disable", false)] {
        for f in files {
            let entries = if on { &f.enable } else { &f.disable };
            for (i, pattern) in entries.iter().enumerate() {
                let pos = f.index.value(&format!("{key}.{i}"));
                let compiled = match Patterns::compile(std::slice::from_ref(pattern)) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.at(&f.name, pos, e);
                        continue;
                    }
                };
                let mut hit = false;
                for rule in rules.iter_mut().filter(|r| compiled.matches(&r.name)) {
                    rule.enabled = on;
                    hit = true;
                }
                if !hit {
                    errors.at(
                        &f.name,
                        pos,
                        format!("{key}: {pattern:?} names no loaded rule"),
                    );
                }
            }
        }
    }
}

/// Positions a per-rule deserialization error using the path serde_path_to_error reports.
fn severity(doc: SeverityDoc) -> Severity {
    match doc {
        SeverityDoc::Info => Severity::Info,
        SeverityDoc::Low => Severity::Low,
        SeverityDoc::Medium => Severity::Medium,
        SeverityDoc::High => Severity::High,
        SeverityDoc::Critical => Severity::Critical,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct RuleContext<'a> {
    file: &'a ParsedFile,
    base: String,
    errors: &'a mut Errors,
    lists: &'a BTreeMap<String, Vec<String>>,
    compiled: &'a mut CompiledPatterns,
}

/// Glob wildcards (and regex weight) all rules together may compile: 50,000 globs of ten
/// wildcards took `check` 7.8 s and 614 MB.
const MAX_GLOB_WEIGHT: usize = 100_000;
/// Patterns all rules together may compile (after sharing identical lists).
const MAX_PATTERNS: usize = 2_000_000;

/// Pattern lists compiled so far in one load, by their text before `$list` expansion: rules
/// that name the same list share one compiled copy. And what they cost, against the limits.
#[derive(Default)]
struct CompiledPatterns {
    by_items: HashMap<Vec<String>, Patterns>,
    glob_weight: usize,
    patterns: usize,
    over: bool,
}

static LIST_REF: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"\blists\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*"([^"]*)"\s*\])"#)
        .expect("static regex")
});

impl RuleContext<'_> {
    fn err(&mut self, rel: &str, message: impl Into<String>) {
        let path = if rel.is_empty() {
            self.base.clone()
        } else {
            format!("{}.{rel}", self.base)
        };
        let pos = self.file.index.value(&path);
        self.errors.at(&self.file.name, pos, message);
    }

    fn span(&mut self, rel: &str, text: &str) -> Option<Span> {
        match Span::parse(text) {
            Ok(s) if s.0 > 0 => Some(s),
            Ok(_) => {
                self.err(rel, format!("{rel} must be longer than 0s"));
                None
            }
            Err(e) => {
                self.err(rel, e);
                None
            }
        }
    }

    fn field(&mut self, rel: &str, text: &str) -> Option<FieldPath> {
        match FieldPath::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(rel, e);
                None
            }
        }
    }

    fn compile_rule(
        &mut self,
        doc: &RuleDoc,
        id: RuleId,
        scripts: &rhai::Engine,
        lists_value: &rhai::Dynamic,
        templates: &mut minijinja::Environment<'static>,
    ) -> Option<Rule> {
        let before = self.errors.list.len();
        if doc.name.trim().is_empty() {
            self.err("name", "rule name must not be empty");
        }
        let mut matcher = match &doc.match_ {
            Some(m) => self.compile_match(m, "match"),
            None => Matcher::default(),
        };
        matcher.verbs_indexed = matcher
            .verbs
            .as_ref()
            .is_some_and(|v| v.exact_values().is_some());
        let condition = doc
            .condition
            .as_deref()
            .and_then(|c| self.compile_condition(c, scripts, lists_value));
        let summary =
            doc.summary
                .as_deref()
                .and_then(|s| match Summary::compile(templates, &doc.name, s) {
                    Ok(t) => Some(t),
                    Err((line, msg)) => {
                        let mut pos = self.file.index.value(&format!("{}.summary", self.base));
                        pos.line += line.saturating_sub(1);
                        self.errors
                            .at(&self.file.name, pos, format!("summary: {msg}"));
                        None
                    }
                });
        let (window, window_group_by, steps) = match &doc.window {
            Some(w) => self.compile_window(w),
            None => (None, Vec::new(), Vec::new()),
        };
        if !steps.is_empty() {
            // The rule's own match block applies to every step: rule AND (any step).
            let any_step = Matcher {
                any: steps.clone(),
                ..Matcher::default()
            };
            if matcher.any.is_empty() {
                matcher.any = steps.clone();
            } else {
                matcher.except.push(Matcher {
                    except: vec![any_step],
                    ..Matcher::default()
                });
            }
        }
        let group_by_text = match (&doc.group_by, window_group_by.is_empty()) {
            (Some(g), true) => g.clone(),
            (Some(_), false) => {
                self.err(
                    "group_by",
                    "group_by is given both on the rule and in its window; keep one",
                );
                window_group_by
            }
            (None, _) => window_group_by,
        };
        let group_by_rel = if doc.group_by.is_some() {
            "group_by"
        } else {
            "window.group_by"
        };
        let group_by: Vec<FieldPath> = group_by_text
            .iter()
            .enumerate()
            .filter_map(|(i, f)| self.field(&format!("{group_by_rel}.{i}"), f))
            .collect();
        let throttle = doc
            .throttle
            .as_deref()
            .and_then(|t| self.span("throttle", t));
        if !doc.severity_when.is_empty() && window.is_some() {
            self.err(
                "severity_when",
                "severity_when sets the severity of one request's alert: a rule with a window cannot use it",
            );
        }
        let severity_when: Vec<(Severity, Matcher)> = doc
            .severity_when
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let m = self.compile_match(&w.match_, &format!("severity_when.{i}.match"));
                (severity(w.severity), m)
            })
            .collect();
        if self.errors.list.len() != before {
            return None;
        }
        let mut legacy = DefaultHasher::new();
        legacy_debug_text(doc).hash(&mut legacy);
        Some(Rule {
            name: Arc::from(doc.name.as_str()),
            description: doc.description.as_deref().map(Arc::from),
            severity: severity(doc.severity),
            severity_when,
            enabled: doc.enabled,
            matcher,
            condition,
            summary,
            labels: Arc::new(doc.labels.clone()),
            notify: doc.notify.as_deref().map(Arc::from),
            group_by,
            window,
            steps,
            throttle,
            author: doc.author.as_deref().map(Arc::from),
            tags: doc.tags.clone(),
            references: doc.references.clone(),
            origin: Origin {
                file: self.file.name.clone(),
                line: 0,
                column: 0,
            },
            id,
            legacy_fingerprint: legacy.finish(),
        })
    }

    /// Compiles a window block: its spec, its `group_by` text, and a sequence's step matchers.
    fn compile_window(&mut self, w: &WindowDoc) -> (Option<WindowSpec>, Vec<String>, Vec<Matcher>) {
        if let Some(steps) = &w.sequence {
            let (spec, matchers) = self.compile_sequence(w, steps);
            return (spec, w.group_by.clone(), matchers);
        }
        if w.ordered.is_some() {
            self.err(
                "window.ordered",
                "window.ordered belongs to a sequence window",
            );
        }
        let spec = if let Some(absent) = &w.absent_for {
            for (set, key) in [
                (w.over.is_some(), "over"),
                (w.threshold.is_some(), "threshold"),
                (w.distinct.is_some(), "distinct"),
            ] {
                if set {
                    self.err(
                        &format!("window.{key}"),
                        format!("window.{key} cannot be combined with absent_for"),
                    );
                }
            }
            self.span("window.absent_for", absent)
                .map(|after| WindowSpec::Absence { after })
        } else {
            let over = self.window_over(w);
            let threshold = match w.threshold {
                Some(0) => {
                    self.err("window.threshold", "threshold must be at least 1");
                    None
                }
                Some(t) => Some(t),
                None => {
                    self.err(
                        "window",
                        "window needs `threshold` (fire at the Nth event in `over`)",
                    );
                    None
                }
            };
            let distinct = w
                .distinct
                .as_deref()
                .map(|d| self.field("window.distinct", d));
            match (over, threshold, distinct) {
                (Some(over), Some(threshold), None) => Some(WindowSpec::Count { over, threshold }),
                (Some(over), Some(threshold), Some(Some(field))) => Some(WindowSpec::Distinct {
                    over,
                    threshold,
                    field,
                }),
                _ => None,
            }
        };
        (spec, w.group_by.clone(), Vec::new())
    }

    fn window_over(&mut self, w: &WindowDoc) -> Option<Span> {
        match &w.over {
            Some(o) => self.span("window.over", o),
            None => {
                self.err(
                    "window",
                    "window needs `over` (e.g. over: 5m) or `absent_for`",
                );
                None
            }
        }
    }

    /// A sequence window: each step is a match block; `ordered` (default) needs every step in
    /// order, unordered needs `threshold` distinct steps (default all) in any order.
    fn compile_sequence(
        &mut self,
        w: &WindowDoc,
        steps: &[StepDoc],
    ) -> (Option<WindowSpec>, Vec<Matcher>) {
        for (set, key) in [
            (w.absent_for.is_some(), "absent_for"),
            (w.distinct.is_some(), "distinct"),
        ] {
            if set {
                self.err(
                    &format!("window.{key}"),
                    format!("window.{key} cannot be combined with sequence"),
                );
            }
        }
        let over = self.window_over(w);
        let ordered = w.ordered.unwrap_or(true);
        let n = steps.len() as u64;
        if !(2..=MAX_SEQUENCE_STEPS).contains(&n) {
            self.err(
                "window.sequence",
                format!("a sequence has 2 to {MAX_SEQUENCE_STEPS} steps, not {n}"),
            );
        }
        let threshold = match (w.threshold, ordered) {
            (None, _) => n,
            (Some(t), false) if (1..=n).contains(&t) => t,
            (Some(t), false) => {
                self.err(
                    "window.threshold",
                    format!("threshold counts distinct steps: 1 to {n}, not {t}"),
                );
                n
            }
            (Some(t), true) if t == n => t,
            (Some(_), true) => {
                self.err(
                    "window.threshold",
                    "an ordered sequence fires when all its steps were seen in order; \
                     use ordered: false to fire on some of them",
                );
                n
            }
        };
        let mut names = Vec::with_capacity(steps.len());
        let mut matchers = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let name = step
                .name
                .clone()
                .unwrap_or_else(|| format!("step {}", i + 1));
            if names.iter().any(|n: &Arc<str>| **n == *name) {
                self.err(
                    &format!("window.sequence.{i}.name"),
                    format!("two steps are named {name:?}"),
                );
            }
            names.push(Arc::from(name.as_str()));
            matchers.push(self.compile_match(&step.match_, &format!("window.sequence.{i}.match")));
        }
        let spec = over.map(|over| WindowSpec::Sequence {
            over,
            steps: names,
            threshold,
            ordered,
        });
        (spec, matchers)
    }

    /// Expands `$list` references in a pattern list.
    fn expand(&mut self, rel: &str, items: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(name) = item.strip_prefix('$') {
                match self.lists.get(name) {
                    Some(values) => out.extend(values.iter().cloned()),
                    None => {
                        let known: Vec<&str> = self.lists.keys().map(|k| k.as_str()).collect();
                        self.err(
                            &format!("{rel}.{i}"),
                            format!(
                                "unknown list {name:?}{}",
                                if known.is_empty() {
                                    " (no lists are defined)".to_owned()
                                } else {
                                    format!(" (defined lists: {})", known.join(", "))
                                }
                            ),
                        );
                    }
                }
            } else {
                out.push(item.clone());
            }
        }
        out
    }

    fn patterns(&mut self, rel: &str, items: &Option<Vec<String>>) -> Option<Patterns> {
        self.shared_patterns(rel, items.as_ref()?)
    }

    /// Compiles a pattern list (`$list`s expanded), or takes the copy compiled for the same
    /// text earlier in this load; charges new ones to the rule set's limits.
    fn shared_patterns(&mut self, rel: &str, items: &[String]) -> Option<Patterns> {
        if let Some(p) = self.compiled.by_items.get(items) {
            return Some(p.clone());
        }
        if self.compiled.over {
            // Reported once; compiling more would only cost what the limit is there to save.
            return None;
        }
        let expanded = self.expand(rel, items);
        let p = match Patterns::compile(&expanded) {
            Ok(p) => p,
            Err(e) => {
                self.err(rel, e);
                return None;
            }
        };
        self.compiled.glob_weight += p.glob_weight();
        self.compiled.patterns += p.len();
        if !self.compiled.over
            && (self.compiled.glob_weight > MAX_GLOB_WEIGHT
                || self.compiled.patterns > MAX_PATTERNS)
        {
            self.compiled.over = true;
            self.err(
                rel,
                format!(
                    "the rules compile too many patterns: {} glob wildcards (at most {MAX_GLOB_WEIGHT}) and {} patterns (at most {MAX_PATTERNS}) up to here. Use exact values, prefixes and shared lists instead of many globs",
                    self.compiled.glob_weight, self.compiled.patterns
                ),
            );
            return None;
        }
        self.compiled.by_items.insert(items.to_vec(), p.clone());
        Some(p)
    }

    fn compile_match(&mut self, m: &MatchDoc, rel: &str) -> Matcher {
        let verbs = m.verbs.as_ref().map(|v| {
            let expanded = self.expand(&format!("{rel}.verbs"), v);
            let lowered: Vec<String> = expanded.iter().map(|s| s.to_ascii_lowercase()).collect();
            Patterns::compile(&lowered).unwrap_or_default()
        });
        let resources = m.resources.as_ref().map(|items| {
            let expanded = self.expand(&format!("{rel}.resources"), items);
            expanded
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match ResourcePattern::parse(r) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.err(&format!("{rel}.resources.{i}"), e);
                        None
                    }
                })
                .collect()
        });
        let response_codes = m.response_codes.as_ref().map(|codes| {
            codes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let parsed = match c {
                        CodeDoc::Code(n) => i32::try_from(*n)
                            .map(|n| (n, n))
                            .map_err(|_| format!("invalid response code {n}")),
                        CodeDoc::Text(t) => parse_code_range(t),
                    };
                    parsed
                        .map_err(|e| self.err(&format!("{rel}.response_codes.{i}"), e))
                        .ok()
                })
                .collect()
        });
        let stages = m.stages.as_ref().map(|items| {
            self.named(
                items,
                &format!("{rel}.stages"),
                &Stage::ALL,
                Stage::as_str,
                "stage",
            )
        });
        let levels = m.levels.as_ref().map(|items| {
            self.named(
                items,
                &format!("{rel}.levels"),
                &Level::ALL,
                Level::as_str,
                "level",
            )
        });
        let source_ips = m.source_ips.as_ref().map(|items| {
            let expanded = self.expand(&format!("{rel}.source_ips"), items);
            expanded
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    parse_net(s)
                        .map_err(|e| self.err(&format!("{rel}.source_ips.{i}"), e))
                        .ok()
                })
                .collect()
        });
        let except = m
            .except
            .iter()
            .enumerate()
            .map(|(i, x)| self.compile_match(x, &format!("{rel}.except.{i}")))
            .collect();
        let any = m
            .any
            .iter()
            .enumerate()
            .map(|(i, x)| self.compile_match(x, &format!("{rel}.any.{i}")))
            .collect();
        let mut fields = Vec::new();
        let criteria = [
            ("fields", &m.fields, Quantifier::Any),
            ("every", &m.every, Quantifier::Every),
        ];
        for (key, map, quantifier) in criteria {
            for (path_text, values) in map {
                let key_rel = format!("{rel}.{key}.{path_text}");
                let path = match ValuePath::parse(path_text) {
                    Ok(p) => p,
                    Err(e) => {
                        let pos = self.file.index.key(&format!("{}.{key_rel}", self.base));
                        self.errors.at(&self.file.name, pos, e);
                        continue;
                    }
                };
                if let Some(accepted) = self.accepted(&key_rel, values) {
                    fields.push(FieldCriterion {
                        path,
                        accepted,
                        quantifier,
                    });
                }
            }
        }
        let absent = self.value_paths(&m.absent, &format!("{rel}.absent"));
        let present = self.value_paths(&m.present, &format!("{rel}.present"));
        Matcher {
            verbs,
            verbs_indexed: false,
            resources,
            namespaces: self.patterns(&format!("{rel}.namespaces"), &m.namespaces),
            names: self.patterns(&format!("{rel}.names"), &m.names),
            users: self.patterns(&format!("{rel}.users"), &m.users),
            effective_users: self.patterns(&format!("{rel}.effective_users"), &m.effective_users),
            groups: self.patterns(&format!("{rel}.groups"), &m.groups),
            response_codes,
            stages,
            levels,
            source_ips,
            public_source_ip: m.public_source_ip,
            user_agents: self.patterns(&format!("{rel}.user_agents"), &m.user_agents),
            request_uris: self.patterns(&format!("{rel}.request_uris"), &m.request_uris),
            fields,
            absent,
            present,
            any,
            except,
        }
    }

    /// Parses names of a closed set (stages, levels); an unknown name is an error that lists
    /// the choices.
    fn named<T: Copy>(
        &mut self,
        items: &[String],
        rel: &str,
        all: &[T],
        name: fn(T) -> &'static str,
        what: &str,
    ) -> Vec<T> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let found = all.iter().copied().find(|v| name(*v) == s);
                if found.is_none() {
                    let choices: Vec<&str> = all.iter().map(|v| name(*v)).collect();
                    let (last, rest) = choices.split_last().unwrap_or((&"", &[]));
                    self.err(
                        &format!("{rel}.{i}"),
                        format!(
                            "unknown {what} {s:?}: expected {} or {last}",
                            rest.join(", ")
                        ),
                    );
                }
                found
            })
            .collect()
    }

    fn value_paths(&mut self, list: &[String], rel: &str) -> Vec<ValuePath> {
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                ValuePath::parse(p)
                    .map_err(|e| self.err(&format!("{rel}.{i}"), e))
                    .ok()
            })
            .collect()
    }

    /// The accepted values of one `fields` criterion: strings (patterns, `$list`), booleans,
    /// numbers, and null for "missing".
    fn accepted(&mut self, rel: &str, values: &[serde_yaml::Value]) -> Option<Accepted> {
        let mut accepted = Accepted::default();
        let mut strings = Vec::new();
        let mut ok = true;
        for (i, v) in values.iter().enumerate() {
            match v {
                serde_yaml::Value::Null => accepted.null = true,
                serde_yaml::Value::Bool(b) => accepted.bools.push(*b),
                serde_yaml::Value::Number(n) => match n.as_f64() {
                    Some(x) => accepted.numbers.push(x),
                    None => ok = false,
                },
                serde_yaml::Value::String(s) => {
                    // Unknown lists are reported here, with the item's place.
                    if let Some(name) = s.strip_prefix('$')
                        && !self.lists.contains_key(name)
                    {
                        self.expand(&format!("{rel}.{i}"), std::slice::from_ref(s));
                        ok = false;
                    }
                    strings.push(s.clone());
                }
                _ => {
                    self.err(
                        &format!("{rel}.{i}"),
                        "fields accept strings (patterns, $lists), booleans, numbers or null",
                    );
                    ok = false;
                }
            }
        }
        if values.is_empty() {
            self.err(
                rel,
                "give at least one accepted value (use `absent` for missing)",
            );
            ok = false;
        }
        if ok && !strings.is_empty() {
            match self.shared_patterns(rel, &strings) {
                Some(p) => accepted.strings = Some(p),
                None => ok = false,
            }
        }
        ok.then_some(accepted)
    }

    /// Maps a (line, column) inside the condition script to a position in the YAML file.
    fn script_pos(&self, line: usize, column: usize) -> Pos {
        let path = format!("{}.condition", self.base);
        let Some(sp) = self.file.index.scalar(&path) else {
            return self.file.index.value(&path);
        };
        let line = line.max(1);
        let column = column.max(1);
        let indent_of = |l: usize| {
            self.file
                .text
                .lines()
                .nth(l.saturating_sub(1))
                .map_or(0, |s| s.len() - s.trim_start().len())
        };
        if sp.block {
            // yaml-rust2 marks a block scalar at its first content line; every content line
            // shares that line's indentation.
            Pos {
                line: sp.pos.line + line - 1,
                column: indent_of(sp.pos.line) + column,
            }
        } else if line == 1 {
            Pos {
                line: sp.pos.line,
                column: sp.pos.column + column - 1 + usize::from(sp.quoted),
            }
        } else {
            let l = sp.pos.line + line - 1;
            Pos {
                line: l,
                column: indent_of(l) + column,
            }
        }
    }

    fn compile_condition(
        &mut self,
        source: &str,
        scripts: &rhai::Engine,
        lists_value: &rhai::Dynamic,
    ) -> Option<Condition> {
        let scope = script::compile_scope(lists_value);
        let ast = match scripts.compile_with_scope(&scope, source) {
            Ok(ast) => ast,
            Err(e) => {
                let p = e.position();
                let (mut line, mut column) = (p.line().unwrap_or(1), p.position().unwrap_or(1));
                // Rhai places end-of-input errors past the last line; point at its end instead.
                let lines: Vec<&str> = source.trim_end().lines().collect();
                if line > lines.len() {
                    line = lines.len().max(1);
                    column = lines.last().map_or(0, |l| l.len()) + 1;
                }
                let pos = self.script_pos(line, column);
                self.errors
                    .at(&self.file.name, pos, format!("condition: {}", e.err_type()));
                return None;
            }
        };
        let mut ok = true;
        for (line, column, message) in script::literal_pattern_errors(&ast) {
            let pos = self.script_pos(line, column);
            self.errors
                .at(&self.file.name, pos, format!("condition: {message}"));
            ok = false;
        }
        for cap in LIST_REF.captures_iter(source) {
            let name = cap.get(1).or_else(|| cap.get(2)).map_or("", |m| m.as_str());
            if !self.lists.contains_key(name) {
                let offset = cap.get(0).map_or(0, |m| m.start());
                let before = &source[..offset];
                let line = before.matches('\n').count() + 1;
                let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                let pos = self.script_pos(line, column);
                self.errors.at(
                    &self.file.name,
                    pos,
                    format!("condition: unknown list {name:?}"),
                );
                ok = false;
            }
        }
        ok.then_some(Condition {
            ast,
            needs: script::ObjectNeeds::of_script(source),
        })
    }
}

/// The rule's debug text as the builds before rule ids printed it, for
/// [`Rule::legacy_fingerprint`]: keys added to the schema since are left out (an old rule
/// cannot have set them).
fn legacy_debug_text(doc: &RuleDoc) -> String {
    const ADDED_SINCE: &[&str] = &[", public_source_ip: None"];
    let mut text = format!("{doc:?}");
    for added in ADDED_SINCE {
        text = text.replace(added, "");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match load_str("r.yaml", text, &LoadOptions::default()) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(errs)) => errs.iter().map(|e| e.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn loads_the_issue_example() {
        let text = r#"
lists:
  gitops: ["system:serviceaccount:argocd:argocd-application-controller"]
rules:
  - name: ingress-edited-outside-gitops
    description: An Ingress was changed by someone other than the GitOps controller.
    severity: high
    match:
      verbs: [create, update, patch, delete]
      resources: [networking.k8s.io/ingresses]
    condition: 'event.responseStatus.code < 400 && !(event.user.username in lists.gitops)'
    summary: '{{ user.username }} {{ verb }} ingress {{ objectRef.namespace }}/{{ objectRef.name }}'
    labels: { team: platform }
  - name: repeated-auth-failures
    severity: critical
    match: { response_codes: [401, 403] }
    window: { over: 5m, group_by: [user.username], threshold: 5 }
    throttle: 10m
"#;
        let set = load_str("r.yaml", text, &LoadOptions::default()).unwrap();
        assert_eq!(set.rules.len(), 2);
        let burst = set.rule("repeated-auth-failures").unwrap();
        assert_eq!(
            burst.window,
            Some(WindowSpec::Count {
                over: Span::from_secs(300),
                threshold: 5
            })
        );
        assert_eq!(burst.group_by[0].as_str(), "user.username");
        assert_eq!(burst.origin.line, 14);
    }

    #[test]
    fn every_error_names_its_place() {
        let text = "rules:\n  - name: a\n    severity: high\n    window: { over: 5min, threshold: 3 }\n  - name: a\n    severity: low\n  - name: b\n    severity: low\n    match: { users: [$admins] }\n    condition: |\n      event.verb == \"get\" &&\n        (event.user.username in lists.nope\n";
        assert_eq!(
            errors(text),
            vec![
                "r.yaml:4:21: invalid duration \"5min\": unknown unit \"min\" (ms, s, m, h, d, w)",
                "r.yaml:5:11: duplicate rule name \"a\": first defined at r.yaml:2:5",
                "r.yaml:9:22: unknown list \"admins\" (no lists are defined)",
                "r.yaml:12:43: condition: Expecting ')' for a matching ( in this expression",
            ]
        );
    }

    /// Issue 16.6: `regex(x, "(")` passed `check` and was silently false at run time.
    #[test]
    fn literal_patterns_in_conditions_are_checked_at_load() {
        let text = "rules:\n  - name: r\n    severity: low\n    condition: |\n      regex(event.verb, \"(\") ||\n        event.user.username.regex(\"[a-\") ||\n        glob(event.verb, [\"ok*\", \"a[\"]) ||\n        regex(event.verb, event.user.username)\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0]
                .starts_with("r.yaml:5:25: condition: regex(): invalid regular expression \"(\""),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("r.yaml:6:35: condition: regex()"),
            "{errs:#?}"
        );
        assert!(
            errs[2].starts_with("r.yaml:7:26: condition: glob(): invalid glob \"a[\""),
            "{errs:#?}"
        );
    }

    /// Issue 16.6: globs of thousands of wildcards, and many globs, cost seconds to compile
    /// and to match; a long list named by many rules cost gigabytes.
    #[test]
    fn pattern_complexity_is_bounded_and_lists_are_compiled_once() {
        let stars = "*x".repeat(100);
        let errs = errors(&format!(
            "rules:\n  - name: r\n    severity: low\n    match: {{ users: [\"{stars}\"] }}\n"
        ));
        assert!(
            errs.len() == 1
                && errs[0].starts_with("r.yaml:4:21: the glob")
                && errs[0].contains("has 100 wildcards; at most 64"),
            "{errs:#?}"
        );
        let many: String = (0..4000)
            .map(|i| format!("  - name: g{i}\n    severity: low\n    match: {{ users: [\"*a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*q*r*s*t*u*v*w*x*y*z*{i}*\"] }}\n"))
            .collect();
        let errs = errors(&format!("rules:\n{many}"));
        assert_eq!(errs.len(), 1, "reported once");
        assert!(errs[0].contains("too many patterns"), "{errs:#?}");

        let items: Vec<String> = (0..5000).map(|i| format!("\"u{i}\"")).collect();
        let rules: String = (0..300)
            .map(|i| format!("  - name: r{i}\n    severity: low\n    match: {{ users: [$big] }}\n"))
            .collect();
        let set = load_str(
            "r.yaml",
            &format!("lists:\n  big: [{}]\nrules:\n{rules}", items.join(",")),
            &LoadOptions::default(),
        )
        .unwrap();
        let users: Vec<&Patterns> = set
            .rules
            .iter()
            .map(|r| r.matcher.users.as_ref().unwrap())
            .collect();
        assert!(
            users.windows(2).all(|w| w[0].same_list(w[1])),
            "one compiled copy"
        );
        assert!(users[0].matches("u4999") && !users[0].matches("u5000"));
    }

    #[test]
    fn serde_errors_keep_their_position() {
        let errs = errors("rules:\n  - name: a\n    severity: hgih\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("r.yaml:3:15: rules[0].severity: unknown variant `hgih`"),
            "{errs:?}"
        );
        let errs = errors("rules:\n  - name: a\n    severity: low\n    mtch: {}\n");
        assert!(
            errs[0].starts_with("r.yaml:4:5: rules[0]: unknown field `mtch`"),
            "{errs:?}"
        );
    }

    #[test]
    fn semantic_errors() {
        let errs = errors(
            "lists:\n  l: [a]\nrules:\n  - name: x\n    severity: low\n    match: { stages: [Done], response_codes: [\"6xx\"], resources: [\"a//b\"], source_ips: [\"10.0.0.0/33\"] }\n    window: { absent_for: 1m, threshold: 2 }\n    condition: 'lists.l.len() > 0 && lists[\"zz\"].len() > 0'\n    group_by: [user.nmae]\n",
        );
        let joined = errs.join("\n");
        for needle in [
            "unknown stage \"Done\"",
            "invalid response code \"6xx\"",
            "invalid resource \"a//b\"",
            "invalid address or CIDR \"10.0.0.0/33\"",
            "window.threshold cannot be combined with absent_for",
            "condition: unknown list \"zz\"",
            "unknown field \"user.nmae\"",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(errs.len(), 7, "{joined}");
    }

    #[test]
    fn sequence_windows_compile_steps_and_name_their_mistakes() {
        let ok = "rules:\n  - name: s\n    severity: low\n    match: { verbs: [get] }\n    window:\n      over: 10m\n      group_by: [user.username]\n      sequence:\n        - name: refused\n          match: { response_codes: [403] }\n        - match: { response_codes: [\"200-299\"] }\n";
        let set = load_str("r.yaml", ok, &LoadOptions::default()).unwrap();
        let rule = &set.rules[0];
        assert_eq!(rule.steps.len(), 2);
        assert_eq!(
            rule.window,
            Some(WindowSpec::Sequence {
                over: Span::from_secs(600),
                steps: vec![Arc::from("refused"), Arc::from("step 2")],
                threshold: 2,
                ordered: true,
            })
        );
        // The rule's own block still applies: rule AND (any step).
        assert_eq!(rule.matcher.any.len(), 2);
        let bad = "rules:\n  - name: s\n    severity: low\n    window:\n      over: 10m\n      threshold: 1\n      distinct: user.username\n      sequence:\n        - { name: a, match: { verbs: [get] } }\n        - { name: a, match: { verbs: [getx] } }\n  - name: t\n    severity: low\n    window: { over: 1m, ordered: false, threshold: 2 }\n  - name: u\n    severity: low\n    window: { over: 1m, sequence: [{ match: { verbs: [get] } }] }\n  - name: v\n    severity: low\n    window: { over: 1m, ordered: false, threshold: 3, sequence: [{ match: {} }, { match: {} }] }\n";
        assert_eq!(
            errors(bad),
            [
                "r.yaml:6:18: an ordered sequence fires when all its steps were seen in order; use ordered: false to fire on some of them",
                "r.yaml:7:17: window.distinct cannot be combined with sequence",
                "r.yaml:10:19: two steps are named \"a\"",
                "r.yaml:13:34: window.ordered belongs to a sequence window",
                "r.yaml:16:35: a sequence has 2 to 64 steps, not 1",
                "r.yaml:19:52: threshold counts distinct steps: 1 to 2, not 3",
            ]
        );
    }

    fn sources(files: &[(&str, &str)]) -> Result<RuleSet, LoadError> {
        let owned: Vec<(String, String)> = files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        load_sources(&owned, &LoadOptions::default())
    }

    const PACK: &str = "lists:\n  trusted: [a, b]\n  other: [x]\nrules:\n  - name: pack-one\n    severity: low\n    match: { users: [$trusted] }\n  - name: pack-two\n    severity: low\n  - name: pack-off\n    severity: low\n    enabled: false\n";

    #[test]
    fn site_files_append_to_replace_and_disable_what_packs_define() {
        // The site file loads first: edits apply after every definition, whatever the order.
        let site = "lists:\n  trusted: { append: [c] }\n  other: { replace: [y, z] }\ndisable: [pack-t*]\nenable: [pack-off]\n";
        let set = sources(&[("site.yaml", site), ("pack.yaml", PACK)]).unwrap();
        assert_eq!(set.lists["trusted"], ["a", "b", "c"]);
        assert_eq!(set.lists["other"], ["y", "z"]);
        let enabled: Vec<(&str, bool)> = set.rules.iter().map(|r| (&*r.name, r.enabled)).collect();
        assert_eq!(
            enabled,
            [("pack-one", true), ("pack-two", false), ("pack-off", true)]
        );
        // The appended item reaches the compiled match block, not only the list.
        let ev = crate::event::decode_event(r#"{"verb":"get","user":{"username":"c"}}"#).unwrap();
        let objects = crate::rules::fields::ObjectCache::new(set.object_paths());
        assert!(set.rules[0].matcher.matches(&ev, &objects));
    }

    #[test]
    fn list_edits_and_disables_name_their_mistakes() {
        let site = "lists:\n  missing: { append: [c] }\n  other: { replace: [y] }\n  trusted: { add: [z] }\ndisable: [pack-one, no-such-rule]\n";
        let again = "lists:\n  other: { replace: [w] }\n";
        let errs = match sources(&[
            ("pack.yaml", PACK),
            ("site.yaml", site),
            ("more.yaml", again),
        ]) {
            Err(LoadError::Invalid(errs)) => errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            other => panic!("expected errors, got {other:?}"),
        };
        let joined = errs.join("\n");
        for needle in [
            "more.yaml:2:3: list \"other\" is already replaced at site.yaml:3:3",
            "site.yaml:2:3: cannot append list \"missing\": no loaded file defines it",
            "site.yaml:4:12: a list edit is `{append: [...]}` or `{replace: [...]}`",
            "site.yaml:5:21: disable: \"no-such-rule\" names no loaded rule",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(errs.len(), 4, "{joined}");
    }

    #[test]
    fn merge_keys_work_inside_rules() {
        let text = "rules:\n  - name: a\n    severity: low\n    match: &m { verbs: [create], resources: [pods] }\n  - name: b\n    severity: low\n    match: { <<: *m, resources: [services] }\n";
        let set =
            load_str("r.yaml", text, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let ev = crate::event::decode_event(
            r#"{"verb":"create","objectRef":{"resource":"services","apiVersion":"v1"}}"#,
        )
        .unwrap();
        let objects = crate::rules::fields::ObjectCache::new(set.object_paths());
        let fired: Vec<&str> = set
            .rules
            .iter()
            .filter(|r| r.matcher.matches(&ev, &objects))
            .map(|r| &*r.name)
            .collect();
        assert_eq!(fired, ["b"]);
    }

    #[test]
    fn every_needs_all_reached_values_accepted() {
        let text = "rules:\n  - name: untrusted-image\n    severity: low\n    match:\n      except:\n        - every: { \"pod.containers[*].image.@repository\": [nginx, docker.io/library/*] }\n";
        let set = load_str("r.yaml", text, &LoadOptions::default()).unwrap();
        let fires = |images: &str| {
            let text = format!(
                r#"{{"verb":"create","requestObject":{{"kind":"Pod","spec":{{"containers":[{images}]}}}}}}"#
            );
            let ev = crate::event::decode_event(&text).unwrap();
            let objects = crate::rules::fields::ObjectCache::new(set.object_paths());
            set.rules[0].matcher.matches(&ev, &objects)
        };
        assert!(!fires(
            r#"{"image":"nginx:1.25"},{"image":"docker.io/library/redis@sha256:ab"}"#
        ));
        assert!(fires(
            r#"{"image":"nginx"},{"image":"evil.io/miner:latest"}"#
        ));
        assert!(fires(r#"{"name":"no-image"}"#));
        assert!(
            fires(""),
            "no container reached: nothing proves the images are allowed"
        );
    }
}
