//! Values built from files that rotate: bearer tokens, password files, TLS certificates and
//! client CAs.
//!
//! Kubernetes rotates a mounted Secret by swapping a symlink to a new directory, and
//! cert-manager renews certificates in place; a daemon that reads them once keeps accepting
//! the old token and serving the old certificate until it restarts. A [`Reloading`] value
//! watches its files' identity, size and modification time (following symlinks, so the swap
//! is seen), rebuilds itself when one changes or on SIGHUP, and keeps the previous value when
//! the new files do not load: a half-written rotation must not lock every client out.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// The outcome of a reload check.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed (or a reload was forced) but do not load; the previous value stays.
    Failed(String),
}

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value loaded from `files`, reloaded when they change.
pub struct Reloading<T> {
    /// What it is, for logs and metrics (`webhook apiserver tls`).
    name: String,
    files: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl<T> Reloading<T> {
    /// Loads the value; the first load must succeed.
    pub fn new(
        name: impl Into<String>,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, String> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let value = load()?;
        Ok(Reloading {
            name: name.into(),
            files,
            load: Box::new(load),
            current: RwLock::new(Arc::new(value)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The value in effect.
    pub fn get(&self) -> Arc<T> {
        match self.current.read() {
            Ok(v) => Arc::clone(&v),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads if a file changed since the last load (or `force`, as on SIGHUP).
    pub fn check(&self, force: bool) -> Reload {
        let now: Vec<Option<FileStamp>> = self.files.iter().map(|f| stamp(f)).collect();
        let Ok(mut stamps) = self.stamps.lock() else {
            return Reload::Unchanged;
        };
        if !force && *stamps == now {
            return Reload::Unchanged;
        }
        // Remembered even when loading fails, so a broken file is reported once, not at
        // every check; the next change (or SIGHUP) tries again.
        *stamps = now;
        match (self.load)() {
            Ok(value) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(value);
                }
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A [`Reloading`] of any type, for the daemon's one watch loop.
pub trait Reloadable: Send + Sync {
    fn name(&self) -> &str;
    fn check(&self, force: bool) -> Reload;
}

impl<T: Send + Sync> Reloadable for Reloading<T> {
    fn name(&self) -> &str {
        Reloading::name(self)
    }
    fn check(&self, force: bool) -> Reload {
        Reloading::check(self, force)
    }
}

/// A bearer token read from `path`, reloaded when it changes; `what` names it in logs.
pub fn secret_file(
    what: String,
    path: &std::path::Path,
) -> Result<Arc<Reloading<Vec<u8>>>, String> {
    let p = path.to_owned();
    Reloading::new(what, vec![path.to_owned()], move || read_secret(&p)).map(Arc::new)
}

/// Reads a secret file (a bearer token): its text without surrounding whitespace, which must
/// not be empty.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(secret.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_keeps_the_old_value_on_failure_and_sees_symlink_swaps() {
        let dir = std::env::temp_dir().join(format!("aw-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v1/token"), "one\n").unwrap();
        std::fs::write(dir.join("v2/token"), "two\n").unwrap();
        // The layout of a mounted Secret: token -> ..data/token, ..data -> v1.
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let path = dir.join("token");
        let p = path.clone();
        let token = Reloading::new("token", vec![path.clone()], move || read_secret(&p)).unwrap();
        assert_eq!(&**token.get(), b"one");
        assert_eq!(token.check(false), Reload::Unchanged);

        // Kubernetes' atomic swap: a new ..data symlink renamed over the old one.
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(token.check(false), Reload::Reloaded);
        assert_eq!(&**token.get(), b"two");

        // A broken rotation keeps the previous token, and is reported once.
        std::fs::write(dir.join("v2/token"), "  \n").unwrap();
        assert!(matches!(token.check(false), Reload::Failed(_)));
        assert_eq!(&**token.get(), b"two");
        assert_eq!(token.check(false), Reload::Unchanged);
        // SIGHUP tries again.
        assert!(matches!(token.check(true), Reload::Failed(_)));
        std::fs::write(dir.join("v2/token"), "three").unwrap();
        assert_eq!(token.check(true), Reload::Reloaded);
        assert_eq!(&**token.get(), b"three");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
