//! The OpenAPI document, kept in the repository (`openapi.json`) and served as it is.

/// `GET /api/v1/openapi.json`.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// Every route the router serves, as (method, path). A test checks that the document describes
/// exactly these and that the router answers each.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("post", "/api/v1/projects"),
    ("get", "/api/v1/projects"),
    ("post", "/api/v1/runs"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{id}"),
    ("post", "/api/v1/runs/{id}/cancel"),
    ("get", "/api/v1/runs/{id}/events"),
    ("post", "/api/v1/runs/{id}/events"),
    ("get", "/api/v1/runs/{id}/audit"),
    ("get", "/api/v1/runs/{id}/artifacts"),
    ("get", "/api/v1/runs/{id}/artifacts/{path}"),
    ("put", "/api/v1/runs/{id}/artifacts/{path}"),
    ("post", "/api/v1/runs/{id}/start"),
    ("post", "/api/v1/runs/{id}/finish"),
    ("post", "/api/v1/workflows"),
    ("get", "/api/v1/workflows"),
    ("get", "/api/v1/workflows/{id}"),
    ("get", "/api/v1/workflows/{id}/audit"),
    ("post", "/api/v1/workflows/{id}/cancel"),
    ("get", "/api/v1/workflows/{id}/diff"),
    ("get", "/api/v1/runners"),
    ("post", "/api/v1/runners/register"),
    ("post", "/api/v1/runners/{id}/claim"),
    ("post", "/api/v1/runners/{id}/heartbeat"),
];

/// The web dashboard's pages: `/` (a redirect to them) and everything under this prefix. They
/// are HTML for browsers, authenticated by a session cookie, not part of the API: the document
/// does not describe them and [`ROUTES`] never names them.
pub const DASHBOARD_PREFIX: &str = "/ui";

#[cfg(test)]
mod tests {
    #[test]
    fn the_dashboard_is_not_in_the_api_routes() {
        for (_, path) in super::ROUTES {
            assert!(
                *path != "/" && !path.starts_with(super::DASHBOARD_PREFIX),
                "{path}"
            );
        }
    }
}
