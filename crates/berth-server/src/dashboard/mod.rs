//! The web dashboard: server-rendered pages under `/ui` (and `/`, which leads there), for people
//! with a client or admin token. Not part of the API document (`openapi::DASHBOARD_PREFIX`).
//!
//! Sign-in posts a token; the token itself is kept in an HttpOnly, SameSite=Strict cookie
//! (Secure over TLS, or behind a proxy that sends `X-Forwarded-Proto: https`) scoped to `/ui`, checked against the store on every request exactly like a
//! bearer token, so revoking it signs the browser out. Every form carries a CSRF token derived
//! from the session's secret (a hash, which reveals nothing about the secret), checked on POST;
//! the sign-in form uses a random double-submit cookie instead. Pages call the API's own
//! handlers with the session's caller, so what a page shows is what the API would show that
//! token. Everything from the store is HTML-escaped; scripts come only from `/ui/assets/` (the
//! Content-Security-Policy forbids inline script).

mod html;
mod pages;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use berth_store::{Role, Store};
use sha2::Digest;

use crate::auth::{hash_secret, Caller};
use crate::error::ApiError;
use crate::App;

/// The session cookie: the token's secret.
const SESSION_COOKIE: &str = "berth_session";
/// The sign-in form's double-submit cookie.
const SIGNIN_COOKIE: &str = "berth_signin";

/// Set on requests that came over TLS (by `serve`), for the cookies' `Secure` attribute.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Whether the browser reached the server over HTTPS: TLS here ([`OverTls`]), or a proxy in
/// front that terminates TLS and says so (`X-Forwarded-Proto: https`). It decides only the
/// cookies' `Secure` attribute, which a false claim can only make stricter (the browser then
/// keeps no cookie over plain HTTP), so the header needs no trusted-proxy setting.
#[derive(Debug, Clone, Copy)]
pub struct OverHttps(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for OverHttps {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let forwarded = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        Ok(Self(
            parts.extensions.get::<OverTls>().is_some() || forwarded,
        ))
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router<S: Store>() -> Router<Arc<App<S>>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/assets/dashboard.js", get(script))
        .route("/ui/assets/dashboard.css", get(style))
        .route(
            "/ui/signin",
            get(pages::signin_form).post(pages::signin::<S>),
        )
        .route("/ui/signout", post(pages::signout))
        .route("/ui/runs", get(pages::runs::<S>))
        .route("/ui/runs/{id}", get(pages::run::<S>))
        .route("/ui/runs/{id}/events", get(pages::run_events::<S>))
        .route("/ui/runs/{id}/cancel", post(pages::cancel::<S>))
        .route("/ui/runs/{id}/artifacts/{*path}", get(pages::artifact::<S>))
        .route("/ui/workflows", get(pages::workflows::<S>))
        .route("/ui/workflows/{id}", get(pages::workflow::<S>))
        .route("/ui/runners", get(pages::runners::<S>))
        .route("/ui/admin", get(pages::admin::<S>))
        .route("/ui/admin/projects", post(pages::create_project::<S>))
        .route("/ui/admin/tokens", post(pages::create_token::<S>))
        .layer(DefaultBodyLimit::max(64 << 10))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard.js"),
    )
}

async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for `/ui`, HttpOnly and SameSite=Strict; `max_age` 0 removes it. Only
/// called with values made of token characters (checked by the caller).
fn set_cookie(name: &str, value: &str, tls: bool, max_age: Option<u64>) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let age = max_age.map_or(String::new(), |a| format!("; Max-Age={a}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("berth_invalid=; Path=/ui; Max-Age=0"))
}

/// A secret may go into a cookie: token characters only (berth secrets are `berth_ID_HEX`).
fn cookie_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The CSRF token of a session: derived from its secret, so any server of a cluster can check
/// it and it changes with the token.
fn csrf_of(secret: &str) -> String {
    let digest = sha2::Sha256::digest(format!("berth-dashboard-csrf\0{secret}").as_bytes());
    hex::encode(&digest[..16])
}

/// Compares two strings in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in browser: the caller its cookie's token stands for, and the session's CSRF token.
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    /// The token id, role and project, as the page header shows them.
    pub who: String,
}

impl Session {
    fn frame(&self) -> html::Frame<'_> {
        html::Frame {
            who: &self.who,
            admin: self.caller.token.role == Role::Admin,
            csrf: &self.csrf,
        }
    }

    /// The refusal of a form whose CSRF field is not this session's, if it is not.
    fn csrf_refusal(&self, posted: &str) -> Option<Response> {
        (!same(posted, &self.csrf)).then(|| {
            error_page(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong; reload the page and try again.",
            )
        })
    }
}

impl<S: Store> FromRequestParts<Arc<App<S>>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App<S>>,
    ) -> Result<Self, Self::Rejection> {
        let to_signin = || {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/ui/runs", |p| p.as_str());
            Redirect::to(&format!("/ui/signin?next={}", html::url_part(next))).into_response()
        };
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_signin());
        };
        let token = match app.store.token_by_hash(&hash_secret(secret)).await {
            Ok(Some(token)) if token.role != Role::Runner => token,
            Ok(_) => return Err(to_signin()),
            Err(e) => return Err(api_error_page(ApiError::from(e))),
        };
        let who = match &token.project {
            Some(p) => format!("token {} · {} · project {p}", token.id, token.role.as_str()),
            None => format!("token {} · {}", token.id, token.role.as_str()),
        };
        Ok(Session {
            csrf: csrf_of(secret),
            caller: Caller { token },
            who,
        })
    }
}

/// A page saying what went wrong.
fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        r#"<h1>{}</h1><p class="error">{}</p><p><a href="/ui/runs">Back to the runs</a></p>"#,
        status.as_u16(),
        html::esc(message)
    );
    (
        status,
        axum::response::Html(html::page("Error", None, &body)),
    )
        .into_response()
}

/// A page's refusal: an API error, shown as a page of the same status.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let (status, message) = match e {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Invalid(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "a dashboard page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        Self { status, message }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.status, &self.message)
    }
}

/// A page, or the page saying why not.
pub type PageResult = Result<Response, PageError>;

/// An API refusal as a page of the same status.
fn api_error_page(e: ApiError) -> Response {
    PageError::from(e).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; berth_session=s; b=2"),
        );
        assert_eq!(cookie(&headers, "berth_session"), Some("s"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn only_token_characters_go_into_a_cookie() {
        assert!(cookie_safe("berth_abc_0123"));
        assert!(!cookie_safe("x; Path=/"));
        assert!(!cookie_safe("x\r\nSet-Cookie: y=1"));
        assert!(!cookie_safe(""));
    }

    #[test]
    fn the_csrf_token_depends_on_the_secret() {
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert!(same(&csrf_of("a"), &csrf_of("a")));
        assert!(!same("", &csrf_of("a")));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = set_cookie("n", "v", true, None);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie("n", "v", false, None)
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[tokio::test]
    async fn https_is_told_by_tls_here_or_by_a_proxy_in_front() {
        async fn over_https(tls: bool, forwarded: Option<&str>) -> bool {
            let mut request = axum::http::Request::builder().uri("/ui/signin");
            if let Some(proto) = forwarded {
                request = request.header("x-forwarded-proto", proto);
            }
            let (mut parts, ()) = request.body(()).unwrap().into_parts();
            if tls {
                parts.extensions.insert(OverTls);
            }
            OverHttps::from_request_parts(&mut parts, &())
                .await
                .unwrap()
                .0
        }
        assert!(over_https(true, None).await);
        assert!(over_https(false, Some("https")).await);
        assert!(over_https(false, Some(" HTTPS ")).await);
        assert!(!over_https(false, Some("http")).await);
        assert!(!over_https(false, None).await);
        assert!(
            over_https(true, Some("http")).await,
            "TLS here is HTTPS whatever a header says"
        );
    }
}
