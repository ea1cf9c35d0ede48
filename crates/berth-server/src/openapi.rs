//! The OpenAPI document, kept in the repository (`openapi.json`) and served as it is.

/// `GET /api/v1/openapi.json`.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// Every operation the document describes, as (method, path), sorted. A test derives the
/// router's own table (each `.route(` path in the server's source, with the methods the router
/// answers on it) and checks that the two are the same, both ways.
pub fn routes() -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap_or_default();
    let mut routes: Vec<(String, String)> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    routes.sort();
    routes
}

/// The web dashboard's pages: `/` (a redirect to them) and everything under this prefix. They
/// are HTML for browsers, authenticated by a session cookie, not part of the API: the document
/// does not describe them.
pub const DASHBOARD_PREFIX: &str = "/ui";

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_and_leaves_the_dashboard_out() {
        let routes = super::routes();
        assert!(routes.len() > 20, "{routes:?}");
        for (_, path) in &routes {
            assert!(
                path != "/" && !path.starts_with(super::DASHBOARD_PREFIX),
                "{path}"
            );
        }
    }
}
