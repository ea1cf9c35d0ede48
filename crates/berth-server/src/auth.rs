//! Bearer tokens: random secrets, stored only as SHA-256 hashes, each with a role and, for
//! client tokens, a project.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use berth_store::{Role, Store, TokenRecord};
use rand::Rng;
use sha2::Digest;

use crate::error::ApiError;
use crate::App;

/// A new token: its id (public, for listing and revoking) and its secret (`berth_<id>_<random>`).
pub fn new_secret() -> (String, String) {
    let mut rng = rand::rng();
    let id: String = (0..12)
        .map(|_| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)]))
        .collect();
    let random: [u8; 24] = rng.random();
    (id.clone(), format!("berth_{id}_{}", hex::encode(random)))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.trim().as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: TokenRecord,
}

impl Caller {
    /// The audit actor for this caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token.id)
    }

    /// Client endpoints: client tokens (and admin).
    pub fn require_client(&self) -> Result<(), ApiError> {
        match self.token.role {
            Role::Client | Role::Admin => Ok(()),
            Role::Runner => Err(ApiError::Forbidden(
                "runner tokens may only use runner endpoints".into(),
            )),
        }
    }

    /// Client endpoints that concern `project`.
    pub fn require_project(&self, project: &str) -> Result<(), ApiError> {
        self.require_client()?;
        match &self.token.project {
            Some(own) if own != project => Err(ApiError::Forbidden(format!(
                "this token is limited to project `{own}`, not `{project}`"
            ))),
            _ => Ok(()),
        }
    }

    pub fn require_runner(&self) -> Result<(), ApiError> {
        match self.token.role {
            Role::Runner => Ok(()),
            _ => Err(ApiError::Forbidden(
                "only runner tokens may use runner endpoints".into(),
            )),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.token.role {
            Role::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(
                "only the admin token may manage tokens and projects".into(),
            )),
        }
    }
}

/// The secret of a request's `Authorization: Bearer SECRET` header, or a 401 saying what is
/// wrong with the header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing `Authorization: Bearer TOKEN` header".into())
        })?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be `Bearer TOKEN`".into())
        })
}

impl<S: Store> FromRequestParts<Arc<App<S>>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App<S>>,
    ) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?;
        let token = app
            .store
            .token_by_hash(&hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown or revoked token".into()))?;
        if token.role == Role::Runner && !runner_certificate_ok(parts) {
            // 403, not 401: the token is known, the connection lacks what it needs; and a
            // runner gives up on a 403 at once, as waiting would not help.
            return Err(ApiError::Forbidden(
                "this server takes runner tokens only with a client certificate (mutual TLS): start the runner with --tls-client-cert FILE --tls-client-key FILE, a certificate signed by the server's --tls-client-ca".into(),
            ));
        }
        Ok(Caller { token })
    }
}

/// Whether a runner token may be used on this request's connection: always, unless the server
/// verifies runners (`--tls-client-ca`); then only if the client presented a certificate, which
/// rustls has verified against that CA during the handshake (an unverified one fails it).
fn runner_certificate_ok(parts: &Parts) -> bool {
    if parts
        .extensions
        .get::<crate::tls::RunnerCertificates>()
        .is_none()
    {
        return true;
    }
    parts
        .extensions
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .is_some_and(|info| !info.peer_certificates.is_empty())
}

/// A caller allowed to read `/metrics`: one with the metrics token, when the server has one, or
/// with any API token.
#[derive(Debug)]
pub struct MetricsReader;

impl<S: Store> FromRequestParts<Arc<App<S>>> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App<S>>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(expected) = &app.config.metrics_token_hash {
            if hash_secret(bearer(parts)?) == *expected {
                return Ok(MetricsReader);
            }
        }
        Caller::from_request_parts(parts, app)
            .await
            .map(|_| MetricsReader)
    }
}
