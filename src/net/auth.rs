//! Who may change the daemon's state: a bearer token, or users with password hashes (basic
//! auth), both read from files that reload when Kubernetes rotates them.
//!
//! Password hashes are bcrypt (`$2y$…`, what `htpasswd -B` writes) or argon2 (`$argon2id$…`,
//! what `auditwatch hash-password` writes). Checking one costs tens of milliseconds of CPU on
//! purpose, which makes the check itself a way to starve the engine: hashes are checked on the
//! blocking pool one at a time, a successful check is remembered (so a console's repeated
//! requests cost one hash), and failed checks are limited to a few per second; beyond that a
//! client gets 429 without any hashing.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::reload::{Reloadable, Reloading, secret_file};

/// `http.auth` in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding a token clients present as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
    /// An htpasswd-style file: one `name:hash` per line (bcrypt or argon2 hashes).
    pub basic_auth_users_file: Option<PathBuf>,
    /// The same, inline: name → hash.
    pub basic_auth_users: BTreeMap<String, String>,
}

impl AuthConfig {
    pub fn is_configured(&self) -> bool {
        self.bearer_token_file.is_some()
            || self.basic_auth_users_file.is_some()
            || !self.basic_auth_users.is_empty()
    }

    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut paths: Vec<&mut PathBuf> = self.bearer_token_file.iter_mut().collect();
        paths.extend(self.basic_auth_users_file.as_mut());
        paths
    }

    /// Checks the inline hashes (file contents are checked when they load).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, hash) in &self.basic_auth_users {
            PasswordHash::parse(hash).map_err(|e| (format!("basic_auth_users.{name}"), e))?;
        }
        Ok(())
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No authentication is configured (a loopback listener, or `insecure: true`).
    Anonymous,
    /// The holder of the bearer token.
    Token,
    User(String),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::Token => f.write_str("token"),
            Principal::User(name) => f.write_str(name),
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials presented.
    Missing,
    /// Wrong token, unknown user or wrong password.
    Invalid,
    /// Too many failed password checks just now: retry later.
    Throttled,
}

/// A stored password hash.
#[derive(Debug, Clone)]
enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        let text = text.trim();
        if text.starts_with("$2a$") || text.starts_with("$2b$") || text.starts_with("$2y$") {
            text.parse::<bcrypt::HashParts>()
                .map(|_| PasswordHash::Bcrypt(text.to_owned()))
                .map_err(|e| format!("invalid bcrypt hash: {e}"))
        } else if text.starts_with("$argon2") {
            argon2::PasswordHash::new(text)
                .map(|_| PasswordHash::Argon2(text.to_owned()))
                .map_err(|e| format!("invalid argon2 hash: {e}"))
        } else {
            Err("not a bcrypt ($2y$...) or argon2 ($argon2id$...) hash; make one with `auditwatch hash-password` or `htpasswd -nB NAME`".into())
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok()
                })
            }
        }
    }

    fn text(&self) -> &str {
        match self {
            PasswordHash::Bcrypt(h) | PasswordHash::Argon2(h) => h,
        }
    }
}

/// Users and their hashes.
#[derive(Debug, Default)]
struct Users(BTreeMap<String, PasswordHash>);

impl Users {
    /// Reads an htpasswd-style file; errors name `file:line`.
    fn read(path: &std::path::Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{}: expected name:hash", at()))?;
            let hash = PasswordHash::parse(hash).map_err(|e| format!("{}: {e}", at()))?;
            if users.insert(name.to_owned(), hash).is_some() {
                return Err(format!("{}: user {name:?} is listed twice", at()));
            }
        }
        if users.is_empty() {
            return Err(format!("{}: no users in the file", path.display()));
        }
        Ok(Users(users))
    }
}

/// Failed password checks allowed per second before clients get 429.
const FAILED_CHECKS_PER_SECOND: u32 = 5;
/// Successful checks remembered (digests of user, password and hash).
const REMEMBERED: usize = 1024;

/// Checks requests' credentials.
pub struct Authenticator {
    token: Option<Arc<Reloading<Vec<u8>>>>,
    file_users: Option<Arc<Reloading<Users>>>,
    inline_users: Users,
    /// One password hash at a time on the blocking pool.
    hashing: Arc<Semaphore>,
    verified: Mutex<HashSet<[u8; 32]>>,
    failures: Mutex<(Instant, u32)>,
}

impl Authenticator {
    /// `None` when no authentication is configured.
    pub fn new(name: &str, cfg: &AuthConfig) -> Result<Option<Authenticator>, String> {
        if !cfg.is_configured() {
            return Ok(None);
        }
        let token = cfg
            .bearer_token_file
            .as_ref()
            .map(|path| secret_file(format!("{name} bearer token"), path))
            .transpose()?;
        let file_users = cfg
            .basic_auth_users_file
            .as_ref()
            .map(|path| {
                let p = path.clone();
                Reloading::new(format!("{name} users"), vec![path.clone()], move || {
                    Users::read(&p)
                })
                .map(Arc::new)
            })
            .transpose()?;
        let mut inline = BTreeMap::new();
        for (user, hash) in &cfg.basic_auth_users {
            inline.insert(
                user.clone(),
                PasswordHash::parse(hash).map_err(|e| format!("basic_auth_users.{user}: {e}"))?,
            );
        }
        Ok(Some(Authenticator {
            token,
            file_users,
            inline_users: Users(inline),
            hashing: Arc::new(Semaphore::new(1)),
            verified: Mutex::new(HashSet::new()),
            failures: Mutex::new((Instant::now(), 0)),
        }))
    }

    /// Whether basic auth is offered (for the `WWW-Authenticate` challenge).
    pub fn offers_basic(&self) -> bool {
        self.file_users.is_some() || !self.inline_users.0.is_empty()
    }

    /// The files to watch for rotation.
    pub fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        let mut out: Vec<Arc<dyn Reloadable>> = Vec::new();
        if let Some(t) = &self.token {
            out.push(Arc::clone(t) as Arc<dyn Reloadable>);
        }
        if let Some(u) = &self.file_users {
            out.push(Arc::clone(u) as Arc<dyn Reloadable>);
        }
        out
    }

    /// Who presented these headers.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AuthError::Missing);
        };
        let value = value.as_bytes();
        if let Some(presented) = strip_scheme(value, b"bearer ") {
            let token = self.token.as_ref().ok_or(AuthError::Invalid)?.get();
            return if same(presented.trim_ascii(), &token) {
                Ok(Principal::Token)
            } else {
                Err(AuthError::Invalid)
            };
        }
        let Some(encoded) = strip_scheme(value, b"basic ") else {
            return Err(AuthError::Invalid);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        let hash = self.hash_of(user).ok_or(AuthError::Invalid)?;
        let digest = digest_of(user, password, hash.text());
        if self.verified.lock().is_ok_and(|v| v.contains(&digest)) {
            return Ok(Principal::User(user.to_owned()));
        }
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Throttled)?;
        // A client that keeps failing must not keep a core busy hashing.
        if self.failures_exceeded() {
            return Err(AuthError::Throttled);
        }
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(password.as_bytes())
        })
        .await
        .unwrap_or(false);
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                if v.len() >= REMEMBERED {
                    v.clear();
                }
                v.insert(digest);
            }
            Ok(Principal::User(user.to_owned()))
        } else {
            self.count_failure();
            Err(AuthError::Invalid)
        }
    }

    fn hash_of(&self, user: &str) -> Option<PasswordHash> {
        if let Some(h) = self.inline_users.0.get(user) {
            return Some(h.clone());
        }
        let users = self.file_users.as_ref()?.get();
        users.0.get(user).cloned()
    }

    fn failures_exceeded(&self) -> bool {
        let Ok(mut f) = self.failures.lock() else {
            return true;
        };
        if f.0.elapsed() >= Duration::from_secs(1) {
            *f = (Instant::now(), 0);
        }
        f.1 >= FAILED_CHECKS_PER_SECOND
    }

    fn count_failure(&self) {
        if let Ok(mut f) = self.failures.lock() {
            f.1 += 1;
        }
    }
}

/// The credentials after an auth scheme name (case-insensitive, RFC 9110).
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

/// The remembered form of a successful check: a digest, not the password.
fn digest_of(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Constant-time comparison, so a secret cannot be guessed byte by byte from timings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An argon2id hash of `password` in PHC form, for `auditwatch hash-password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {creds}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn bcrypt_and_argon2_users_and_a_token() {
        let dir = std::env::temp_dir().join(format!("aw-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let users = dir.join("users");
        let bob = bcrypt::hash("bob-pass", 4).unwrap();
        std::fs::write(&users, format!("# on-call\nbob:{bob}\n")).unwrap();
        let cfg = AuthConfig {
            bearer_token_file: Some(token.clone()),
            basic_auth_users_file: Some(users),
            basic_auth_users: [("alice".to_owned(), hash_password("alice-pass").unwrap())].into(),
        };
        let auth = Authenticator::new("http", &cfg).unwrap().unwrap();
        assert_eq!(
            auth.check(&basic("alice", "alice-pass")).await,
            Ok(Principal::User("alice".into()))
        );
        // Remembered: the second check costs no hashing.
        assert_eq!(
            auth.check(&basic("alice", "alice-pass")).await,
            Ok(Principal::User("alice".into()))
        );
        assert_eq!(
            auth.check(&basic("bob", "bob-pass")).await,
            Ok(Principal::User("bob".into()))
        );
        assert_eq!(
            auth.check(&basic("bob", "alice-pass")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.check(&basic("mallory", "x")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.check(&HeaderMap::new()).await, Err(AuthError::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-token"),
        );
        assert_eq!(auth.check(&bearer).await, Ok(Principal::Token));
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer s3cret-tokem"),
        );
        assert_eq!(auth.check(&bearer).await, Err(AuthError::Invalid));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn failed_password_checks_are_throttled() {
        let cfg = AuthConfig {
            basic_auth_users: [("alice".to_owned(), bcrypt::hash("right", 4).unwrap())].into(),
            ..Default::default()
        };
        let auth = Authenticator::new("http", &cfg).unwrap().unwrap();
        let mut throttled = 0;
        for _ in 0..20 {
            if auth.check(&basic("alice", "wrong")).await == Err(AuthError::Throttled) {
                throttled += 1;
            }
        }
        assert!(throttled >= 10, "{throttled} of 20 throttled");
    }

    #[test]
    fn hashes_and_user_files_are_checked_with_their_place() {
        assert!(PasswordHash::parse("plaintext").is_err());
        assert!(PasswordHash::parse("$2y$10$short").is_err());
        let dir = std::env::temp_dir().join(format!("aw-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users");
        std::fs::write(&f, "alice:$2y$04$abc\n").unwrap();
        let e = Users::read(&f).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:1: invalid bcrypt hash", f.display())),
            "{e}"
        );
        std::fs::write(&f, "\nalice\n").unwrap();
        let e = Users::read(&f).unwrap_err();
        assert!(e.ends_with(":2: expected name:hash"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
