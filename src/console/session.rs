//! Console sessions and CSRF tokens.
//!
//! A browser gets a session cookie on its first page (`HttpOnly`, `SameSite=Strict`, `Secure`
//! over TLS). Without `http.auth` the session is anonymous; with it, the session holds who
//! logged in. Every form carries a CSRF token, an HMAC of the session ID under a key made at
//! start: a page on another site can neither read it nor compute it. Sessions live in memory
//! (a restart logs everyone out), expire, and are bounded: a flood of cookieless requests
//! evicts the oldest sessions that never logged in before any that did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The cookie's name.
pub const COOKIE: &str = "auditwatch_session";
/// A session ends this long after it was made.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    /// Who logged in; `None` before login (a login form's session).
    principal: Option<String>,
    created: Instant,
}

/// A request's session, for the handlers.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session: String,
    /// `None` until logged in (only when `http.auth` is set).
    pub principal: Option<String>,
    pub csrf: String,
    /// Whether the response must set the cookie (the session is new).
    pub new: bool,
}

pub struct Sessions {
    key: hmac::Key,
    rng: SystemRandom,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new() -> Result<Sessions, String> {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no system randomness for the console's CSRF key".to_owned())?;
        Ok(Sessions {
            key,
            rng,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn csrf_of(&self, session: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, session.as_bytes()).as_ref())
    }

    /// Whether `token` is the CSRF token of `session`.
    pub fn csrf_ok(&self, session: &str, token: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|tag| hmac::verify(&self.key, session.as_bytes(), &tag).is_ok())
    }

    /// The session the cookie names, if it exists and has not expired.
    pub fn find(&self, id: &str) -> Option<Viewer> {
        let mut map = self.map.lock().ok()?;
        let s = map.get(id)?;
        if s.created.elapsed() > LIFETIME {
            map.remove(id);
            return None;
        }
        Some(Viewer {
            session: id.to_owned(),
            principal: s.principal.clone(),
            csrf: self.csrf_of(id),
            new: false,
        })
    }

    /// A new session for `principal` (`None`: not logged in yet).
    pub fn start(&self, principal: Option<String>) -> Option<Viewer> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).ok()?;
        let id = URL_SAFE_NO_PAD.encode(bytes);
        let mut map = self.map.lock().ok()?;
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.created.elapsed() <= LIFETIME);
        }
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| (s.principal.is_some(), s.created))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            id.clone(),
            Session {
                principal: principal.clone(),
                created: Instant::now(),
            },
        );
        Some(Viewer {
            csrf: self.csrf_of(&id),
            session: id,
            principal,
            new: true,
        })
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    /// The `Set-Cookie` value for `viewer`'s session.
    pub fn cookie(viewer: &Viewer, secure: bool) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
            viewer.session,
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The session ID in a `Cookie` header, if any.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let s = Sessions::new().unwrap();
        let a = s.start(None).unwrap();
        let b = s.start(Some("alice".into())).unwrap();
        assert!(s.csrf_ok(&a.session, &a.csrf));
        assert!(!s.csrf_ok(&a.session, &b.csrf));
        assert!(!s.csrf_ok(&a.session, ""));
        assert!(!s.csrf_ok(&a.session, "not base64 !"));
        assert_eq!(
            s.find(&b.session).unwrap().principal.as_deref(),
            Some("alice")
        );
        s.end(&b.session);
        assert!(s.find(&b.session).is_none());
        assert!(s.find("forged").is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "theme=dark; auditwatch_session=abc; x=y".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
    }
}
