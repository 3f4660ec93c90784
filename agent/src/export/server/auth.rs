//! Basic or bearer authentication in front of `/metrics` and `/`: secrets
//! compared in constant time, never printed.

use std::{fmt, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

/// Credentials the scraper must present on `/metrics`.
#[derive(Clone)]
pub enum Auth {
    Basic { user: String, password: Vec<u8> },
    Bearer { token: Vec<u8> },
}

impl fmt::Debug for Auth {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { user, .. } => f.debug_struct("Basic").field("user", user).finish_non_exhaustive(),
            Self::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
        }
    }
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    /// Secrets are compared in constant time (only their length can leak).
    fn accepts(&self, authorization: &str) -> bool {
        let Some((scheme, credentials)) = authorization.trim().split_once(' ') else {
            return false;
        };
        let credentials = credentials.trim();
        match self {
            Self::Bearer { token } => {
                scheme.eq_ignore_ascii_case("bearer") && bool::from(credentials.as_bytes().ct_eq(token))
            }
            Self::Basic { user, password } => {
                if !scheme.eq_ignore_ascii_case("basic") {
                    return false;
                }
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                    return false;
                };
                // RFC 7617: the user id cannot contain a colon; the password can.
                let Some(colon) = decoded.iter().position(|b| *b == b':') else {
                    return false;
                };
                let (given_user, given_password) = (&decoded[..colon], &decoded[colon + 1..]);
                // `&`, not `&&`: do not reveal which half was wrong by timing.
                bool::from(given_user.ct_eq(user.as_bytes()) & given_password.ct_eq(password))
            }
        }
    }

    fn challenge(&self) -> &'static str {
        match self {
            Self::Basic { .. } => r#"Basic realm="ptwatch", charset="UTF-8""#,
            Self::Bearer { .. } => r#"Bearer realm="ptwatch""#,
        }
    }
}

/// The middleware: 401 with a challenge unless the request carries the
/// credentials.
pub async fn require_auth(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| auth.accepts(value));
    if authorized {
        return next.run(request).await;
    }
    tracing::debug!(path = %request.uri().path(), "request without valid credentials");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, auth.challenge())], "unauthorized\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn basic_auth() {
        let auth = Auth::Basic { user: "prom".into(), password: b"s3:cret".to_vec() };
        assert!(auth.accepts(&basic("prom", "s3:cret")));
        assert!(auth.accepts(&basic("prom", "s3:cret").replace("Basic", "basic")));
        assert!(!auth.accepts(&basic("prom", "s3:cre")));
        assert!(!auth.accepts(&basic("pro", "s3:cret")));
        assert!(!auth.accepts("Basic !!!"));
        assert!(!auth.accepts("Bearer s3:cret"));
        assert!(!auth.accepts(""));
    }

    #[test]
    fn bearer_auth() {
        let auth = Auth::Bearer { token: b"tok".to_vec() };
        assert!(auth.accepts("Bearer tok"));
        assert!(auth.accepts("bearer  tok "));
        assert!(!auth.accepts("Bearer to"));
        assert!(!auth.accepts("Bearer tokk"));
        assert!(!auth.accepts(&basic("x", "tok")));
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = Auth::Basic { user: "prom".into(), password: b"hunter2".to_vec() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
