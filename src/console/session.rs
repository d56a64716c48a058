//! Console sessions: an API token exchanged once, at `/ui/login`, for a
//! random session id kept in an HttpOnly, SameSite=Strict cookie.
//!
//! Invariants: a session carries the role of the token that opened it and
//! nothing else (the token itself is never stored); sessions live in memory
//! (a restart signs everyone out), expire after [`SESSION_TTL`] without use,
//! and are at most [`MAX_SESSIONS`] (the oldest go first), so no client can
//! grow the store. A request that changes state must also come from the
//! console's own origin ([`same_origin`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngExt;

use crate::config::Role;
use crate::http::AppState;

/// The cookie holding the session id.
pub const COOKIE: &str = "eg_session";
/// A session unused this long is gone.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    role: Role,
    last_used: Instant,
}

/// The open sessions.
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    /// Cookies carry `Secure` when the console is served over HTTPS.
    secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            secure,
        }
    }

    /// Sessions kept now (some may have expired unseen).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Opens a session for `role`; answers its id.
    pub fn open(&self, role: Role) -> String {
        let id: String = rand::rng()
            .random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, s| now.duration_since(s.last_used) < SESSION_TTL);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            id.clone(),
            Session {
                role,
                last_used: now,
            },
        );
        id
    }

    /// The role of a live session, which counts as used now.
    pub fn role(&self, id: &str) -> Option<Role> {
        let now = Instant::now();
        let mut open = self.lock();
        let session = open.get_mut(id)?;
        if now.duration_since(session.last_used) >= SESSION_TTL {
            open.remove(id);
            return None;
        }
        session.last_used = now;
        Some(session.role)
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The `Set-Cookie` value that gives a browser session `id`.
    pub fn cookie(&self, id: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn removal_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The session id a request presents, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    super::view::cookie(headers, COOKIE)
}

/// Whether a state-changing request comes from the console's own pages:
/// its `Origin` (or, without one, `Sec-Fetch-Site`) names this host.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority.is_some() && authority == host
        }
        None => headers
            .get("sec-fetch-site")
            .and_then(|s| s.to_str().ok())
            .is_some_and(|site| site == "same-origin"),
    }
}

/// The person looking at the console: a live session's role. Without one,
/// a page answers with a redirect to the login form.
pub struct Viewer {
    pub role: Role,
    /// The live version when the request came in: the page shows at least
    /// that state (see `live`).
    pub live_version: u64,
}

impl Viewer {
    pub fn may_write(&self) -> bool {
        self.role >= Role::Write
    }

    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        session_id(&parts.headers)
            .and_then(|id| state.sessions.role(id))
            .map(|role| Viewer {
                role,
                live_version: state.live.current().version,
            })
            .ok_or_else(|| Redirect::to("/ui/login").into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_carry_their_role_until_closed_and_stay_bounded() {
        let sessions = Sessions::new(false);
        let admin = sessions.open(Role::Admin);
        let reader = sessions.open(Role::Read);
        assert_ne!(admin, reader);
        assert_eq!(admin.len(), 64);
        assert_eq!(sessions.role(&admin), Some(Role::Admin));
        assert_eq!(sessions.role(&reader), Some(Role::Read));
        assert_eq!(sessions.role("forged"), None);
        sessions.close(&admin);
        assert_eq!(sessions.role(&admin), None);
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.open(Role::Read);
        }
        assert!(sessions.lock().len() <= MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let cookie = Sessions::new(true).cookie("abc");
        for part in [
            "eg_session=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/ui",
        ] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; eg_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(session_id(&headers), Some("abc"));
    }

    #[test]
    fn only_the_consoles_own_origin_may_change_state() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    value.parse().expect("value"),
                );
            }
            map
        };
        let host = ("host", "127.0.0.1:5000");
        let cases: [(Option<(&str, &str)>, bool); 6] = [
            (Some(("origin", "http://127.0.0.1:5000")), true),
            (Some(("origin", "http://evil.example")), false),
            (Some(("origin", "null")), false),
            (Some(("sec-fetch-site", "same-origin")), true),
            (Some(("sec-fetch-site", "cross-site")), false),
            (None, false),
        ];
        for (from, allowed) in cases {
            let pairs: Vec<(&str, &str)> = std::iter::once(host).chain(from).collect();
            assert_eq!(same_origin(&headers(&pairs)), allowed, "{from:?}");
        }
    }
}
