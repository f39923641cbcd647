//! Rules: the YAML format, loading with positioned errors, and compiled rules.
mod matcher;
mod position;
mod schema;
pub mod script;

pub use matcher::{Matcher, Patterns, ResourcePattern};
