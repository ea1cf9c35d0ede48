//! What the server's tests share: an app on a real SQLite store with projects, and tokens.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use berth_server::{App, ServerConfig};
use berth_store::{AuthStore, Role, SqlStore, TokenRecord};

/// An app on a fresh SQLite store in `dir`, with these projects (workspace root
/// `/srv/NAME`).
pub async fn app(
    dir: &std::path::Path,
    projects: &[&str],
    config: impl FnOnce(&mut ServerConfig),
) -> Arc<App<SqlStore>> {
    let store = SqlStore::connect(&format!("sqlite://{}", dir.join("db.sqlite").display()))
        .await
        .unwrap();
    app_on(store, dir, projects, config).await
}

/// An app on `store` (state in `dir`), with these projects (workspace root `/srv/NAME`).
pub async fn app_on(
    store: SqlStore,
    dir: &std::path::Path,
    projects: &[&str],
    config: impl FnOnce(&mut ServerConfig),
) -> Arc<App<SqlStore>> {
    let mut settings = ServerConfig::new(dir.to_path_buf());
    config(&mut settings);
    let app = App::new(store, settings);
    for name in projects {
        let project = berth_store::Project {
            name: (*name).into(),
            workspace_root: format!("/srv/{name}"),
            allowed_paths: vec![],
            egress_ceiling: None,
            created_at: 0,
        };
        app.store.create_project(&project).await.unwrap();
    }
    app
}

/// A new token's secret.
pub async fn token(app: &App<SqlStore>, role: Role, project: Option<&str>) -> String {
    let (id, secret) = berth_server::new_secret();
    let record = TokenRecord {
        id,
        role,
        project: project.map(str::to_string),
        created_at: 0,
        revoked_at: None,
    };
    app.store
        .create_token(&record, &berth_server::hash_secret(&secret))
        .await
        .unwrap();
    secret
}
