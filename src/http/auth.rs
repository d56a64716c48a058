//! Bearer tokens with roles (`read` < `write` < `admin`), checked by the [`Authorized`]
//! extractor a handler names first among its arguments.

use std::marker::PhantomData;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::{Role, TokenConfig};

/// The tokens the service accepts.
pub struct Auth {
    tokens: Vec<(Vec<u8>, Role)>,
}

/// Tokens shorter than this are refused: a short token can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Why the tokens cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("ENERGYGUARD_API_TOKEN must have at least {MIN_TOKEN_CHARS} characters")]
    ShortEnvToken,
    #[error(
        "{path} can be read by other users (mode {mode:o}): run `chmod 600 {path}`, or delete it \
         and a new admin token is generated"
    )]
    ReadableByOthers { path: String, mode: u32 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where an admin token came from when none was configured.
pub enum GeneratedToken {
    None,
    Created(std::path::PathBuf),
    Reused(std::path::PathBuf),
}

impl Auth {
    /// Tokens from the config (their length checked with the config) and
    /// `ENERGYGUARD_API_TOKEN`; with neither, an admin token in
    /// `<data_dir>/admin.token` (created with mode 0600 on first start,
    /// reused afterwards only while no other user can read it).
    pub fn load(
        configured: &[TokenConfig],
        env_token: Option<String>,
        data_dir: &Path,
    ) -> Result<(Self, GeneratedToken), AuthError> {
        let mut tokens: Vec<(Vec<u8>, Role)> = configured
            .iter()
            .map(|t| (t.token.as_bytes().to_vec(), t.role))
            .collect();
        if let Some(token) = env_token.filter(|t| !t.is_empty()) {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(AuthError::ShortEnvToken);
            }
            tokens.push((token.into_bytes(), Role::Admin));
        }
        let mut generated = GeneratedToken::None;
        if tokens.is_empty() {
            let path = data_dir.join("admin.token");
            let io = |source| AuthError::Io {
                path: path.display().to_string(),
                source,
            };
            let token = match std::fs::read_to_string(&path) {
                Ok(existing) if !existing.trim().is_empty() => {
                    refuse_if_readable_by_others(&path)?;
                    generated = GeneratedToken::Reused(path);
                    existing.trim().to_string()
                }
                _ => {
                    let token = new_token();
                    write_private(&path, &token).map_err(io)?;
                    generated = GeneratedToken::Created(path);
                    token
                }
            };
            tokens.push((token.into_bytes(), Role::Admin));
        }
        Ok((Self { tokens }, generated))
    }

    /// The role of a presented token. Every configured token is compared in
    /// constant time, so the answer's timing does not reveal a prefix match.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = presented.as_bytes();
        let mut found = None;
        for (token, role) in &self.tokens {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

/// 32 random bytes, hex-encoded.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token file another user could read is refused rather than trusted.
fn refuse_if_readable_by_others(path: &Path) -> Result<(), AuthError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| AuthError::Io {
                path: path.display().to_string(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AuthError::ReadableByOthers {
                path: path.display().to_string(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{token}")
}

/// A role a handler requires.
pub trait RequiredRole: Send + Sync + 'static {
    const ROLE: Role;
}
pub struct Reader;
pub struct Writer;
pub struct Admin;
impl RequiredRole for Reader {
    const ROLE: Role = Role::Read;
}
impl RequiredRole for Writer {
    const ROLE: Role = Role::Write;
}
impl RequiredRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// Proof that the request carried a token of at least role `R`.
pub struct Authorized<R: RequiredRole>(PhantomData<R>);

impl<R: RequiredRole> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "missing Authorization: Bearer <token> header",
            ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be \"Bearer <token>\"",
            ))?;
        let role = state
            .auth
            .role_of(token)
            .ok_or(ApiError::Unauthorized("invalid token"))?;
        if role < R::ROLE {
            return Err(ApiError::Forbidden {
                required: R::ROLE,
                role,
            });
        }
        Ok(Self(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_generated_tokens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let configured = [TokenConfig {
            token: "reader-token-0123456".into(),
            role: Role::Read,
        }];
        let (auth, generated) =
            Auth::load(&configured, Some("admin-token-0123456".into()), dir.path()).expect("load");
        assert!(matches!(generated, GeneratedToken::None));
        assert_eq!(auth.role_of("reader-token-0123456"), Some(Role::Read));
        assert_eq!(auth.role_of("admin-token-0123456"), Some(Role::Admin));
        assert_eq!(auth.role_of("admin-token-012345"), None);
        assert_eq!(auth.role_of(""), None);

        let (auth, generated) = Auth::load(&[], None, dir.path()).expect("load");
        let GeneratedToken::Created(path) = generated else {
            panic!("a token must be generated")
        };
        let token = std::fs::read_to_string(&path).expect("token file");
        assert_eq!(auth.role_of(token.trim()), Some(Role::Admin));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (_, again) = Auth::load(&[], None, dir.path()).expect("load");
        assert!(
            matches!(again, GeneratedToken::Reused(_)),
            "the token survives restarts"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let refused = Auth::load(&[], None, dir.path()).err().expect("refused");
            assert!(refused.to_string().contains("chmod 600"), "{refused}");
        }
        let short = Auth::load(&[], Some("a".into()), dir.path())
            .err()
            .expect("refused");
        assert!(matches!(short, AuthError::ShortEnvToken));
    }
}
