//! Errors that point at their place in a YAML file (`file:line:column: message`), for every
//! file kind auditwatch reads (rules, rule tests, the config, audit policies), and where each
//! node of a YAML document starts, so errors found after deserialization (a bad duration, an
//! unknown list, a Rhai syntax error) can still name their place.
//!
//! serde_yaml reports positions only for its own type errors; we parse the same text once more
//! with yaml-rust2's marked events and record the position of every key and value by path
//! (`rules.3.window.over`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// An error at a place in a file: `file:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PositionedError {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PositionedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl PositionedError {
    pub fn at(file: &str, pos: Pos, message: impl Into<String>) -> PositionedError {
        PositionedError {
            file: Arc::from(file),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// A serde_yaml error, at the place it names (else the file's start), with its own
    /// " at line L column C" suffix removed: the place is said once, in front.
    pub fn from_yaml(file: &str, e: &serde_yaml::Error) -> PositionedError {
        let pos = e.location().map_or(Pos { line: 1, column: 1 }, |l| Pos {
            line: l.line(),
            column: l.column(),
        });
        PositionedError::at(file, pos, without_location(&e.to_string()))
    }
}

/// An error of serde_path_to_error over a value that came from YAML, placed with `index`.
/// `base` is where the value sits in the document (`rules.3`, or `""` for the whole document)
/// and `shown` how messages name it (`rules[3]`). An unknown key is pointed at itself and
/// named by its parent (`rules[3].window: unknown field \`ovr\``); any other error is pointed
/// at the value.
pub fn path_error(
    file: &str,
    index: &PositionIndex,
    base: &str,
    shown: &str,
    e: &serde_path_to_error::Error<serde_yaml::Error>,
) -> PositionedError {
    static UNKNOWN_FIELD: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"^unknown field `([^`]*)`").expect("static regex"));
    let written = e.path().to_string();
    let written = if written == "." {
        String::new()
    } else {
        written
    };
    // `match.verbs[1]` → `match.verbs.1`
    let dotted = written.replace('[', ".").replace(']', "");
    let full = match (base.is_empty(), dotted.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => dotted.clone(),
        (false, false) => format!("{base}.{dotted}"),
    };
    let inner = without_location(&e.inner().to_string());
    let unknown = UNKNOWN_FIELD
        .captures(&inner)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned());
    let (pos, named) = match unknown {
        Some(field) if full == field || full.ends_with(&format!(".{field}")) => {
            let parent = written
                .strip_suffix(field.as_str())
                .unwrap_or(&written)
                .trim_end_matches('.');
            (index.key(&full), parent.to_owned())
        }
        _ => (index.value(&full), written),
    };
    let named = match (shown.is_empty(), named.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!("{named}: "),
        (false, true) => format!("{shown}: "),
        (false, false) => format!("{shown}.{named}: "),
    };
    PositionedError::at(file, pos, format!("{named}{inner}"))
}

/// A serde_yaml message without its " at line L column C" (at its end, or inside a syntax
/// error's text): the place is said once, in front.
pub fn without_location(message: &str) -> String {
    static AT: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r" at line \d+ column \d+").expect("static regex"));
    AT.replace_all(message, "").into_owned()
}

/// 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A scalar's position plus how it was written, to map positions inside a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalarPos {
    pub pos: Pos,
    /// Block scalars (`|`, `>`) start their content on the next line.
    pub block: bool,
    /// Quoted scalars start their content one column after the quote.
    pub quoted: bool,
}

#[derive(Default)]
pub struct PositionIndex {
    values: HashMap<String, ScalarPos>,
    keys: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Indexes `text`. A YAML syntax error yields an empty index: serde_yaml reports it anyway.
    pub fn build(text: &str) -> PositionIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        builder.index
    }

    /// Position of the value at `path` (`rules.0.window.over`), else of its nearest ancestor.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(v) = self.values.get(p) {
                return v.pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    pub fn scalar(&self, path: &str) -> Option<ScalarPos> {
        self.values.get(path).copied()
    }

    /// Position of the key that introduces `path`, falling back to the value's.
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    path: Vec<String>,
}

fn pos_of(mark: Marker) -> Pos {
    // yaml-rust2 lines are 1-based and columns 0-based.
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl Builder {
    fn current_path(&self) -> String {
        self.path.join(".")
    }

    /// Called when a value node starts; returns the path of that value.
    fn enter_value(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { next }) => {
                let i = *next;
                *next += 1;
                self.path.push(i.to_string());
                Some(self.current_path())
            }
            Some(Frame::Map { key }) => {
                let k = key.take()?;
                self.path.push(k);
                Some(self.current_path())
            }
        }
    }

    fn leave_value(&mut self) {
        if !self.stack.is_empty() {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, style, ..) => {
                // A scalar in key position records the key and waits for its value.
                if let Some(Frame::Map { key }) = self.stack.last_mut()
                    && key.is_none()
                {
                    let mut p = self.path.clone();
                    p.push(value.clone());
                    self.index.keys.insert(p.join("."), pos_of(mark));
                    *key = Some(value);
                    return;
                }
                if let Some(path) = self.enter_value() {
                    let scalar = ScalarPos {
                        pos: pos_of(mark),
                        block: matches!(style, TScalarStyle::Literal | TScalarStyle::Folded),
                        quoted: matches!(
                            style,
                            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
                        ),
                    };
                    self.index.values.insert(path, scalar);
                    self.leave_value();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if let Some(path) = self.enter_value() {
                    let scalar = ScalarPos {
                        pos: pos_of(mark),
                        block: false,
                        quoted: false,
                    };
                    self.index.values.insert(path, scalar);
                }
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_and_values_by_path() {
        let text = "rules:\n  - name: a\n    window:\n      over: 5x\n  - name: b\n    match: { verbs: [get, list] }\n";
        let idx = PositionIndex::build(text);
        assert_eq!(
            idx.value("rules.0.window.over"),
            Pos {
                line: 4,
                column: 13
            }
        );
        assert_eq!(idx.key("rules.0.window.over"), Pos { line: 4, column: 7 });
        assert_eq!(
            idx.value("rules.1.name"),
            Pos {
                line: 5,
                column: 11
            }
        );
        assert_eq!(
            idx.value("rules.1.match.verbs.1"),
            Pos {
                line: 6,
                column: 27
            }
        );
        // Unknown paths fall back to the nearest known ancestor.
        assert_eq!(
            idx.value("rules.1.match.verbs.9"),
            Pos {
                line: 6,
                column: 21
            }
        );
    }
}
