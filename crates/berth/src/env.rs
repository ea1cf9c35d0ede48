//! Every environment variable berth reads, declared once.

/// The Docker engine address (`unix:///path` or `tcp://host:port`), as the docker CLI reads it.
pub const DOCKER_HOST: &str = "DOCKER_HOST";
/// Any non-empty value: a tcp:// DOCKER_HOST (or --engine URL) uses TLS with the files of
/// DOCKER_CERT_PATH, as the docker CLI does.
pub const DOCKER_TLS_VERIFY: &str = "DOCKER_TLS_VERIFY";
/// The directory holding `ca.pem`, `cert.pem` and `key.pem` [default: ~/.docker].
pub const DOCKER_CERT_PATH: &str = "DOCKER_CERT_PATH";
/// Where runs are kept, unless `--state-dir` is given.
pub const BERTH_STATE_DIR: &str = "BERTH_STATE_DIR";
/// The user configuration file, instead of `$XDG_CONFIG_HOME/berth/config.toml`.
pub const BERTH_CONFIG: &str = "BERTH_CONFIG";
/// Disables colour in berth's own messages (https://no-color.org).
pub const NO_COLOR: &str = "NO_COLOR";
/// Log filter for berth's diagnostics on stderr (e.g. `berth=debug`).
pub const BERTH_LOG: &str = "BERTH_LOG";
// BERTH_ANTHROPIC_UPSTREAM, BERTH_OPENAI_UPSTREAM and BERTH_EGRESS_UPSTREAM_CA are read by
// berth_sandbox::egress, for `berth run` and the runner alike.
pub const HOME: &str = "HOME";
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
pub const PATH: &str = "PATH";

pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn home() -> Option<std::path::PathBuf> {
    var(HOME).map(Into::into)
}

/// `$BERTH_CONFIG`, else `$XDG_CONFIG_HOME/berth/config.toml`, else `~/.config/berth/config.toml`.
pub fn user_config_file() -> Option<std::path::PathBuf> {
    var(BERTH_CONFIG)
        .map(Into::into)
        .or_else(|| {
            var(XDG_CONFIG_HOME).map(|d| std::path::PathBuf::from(d).join("berth/config.toml"))
        })
        .or_else(|| home().map(|h| h.join(".config/berth/config.toml")))
}

/// The workspace files the user trusted (`berth trust`): `$XDG_CONFIG_HOME/berth/trusted.toml`,
/// else `~/.config/berth/trusted.toml`. Not beside `$BERTH_CONFIG`: that may point anywhere.
pub fn trust_store_file() -> Option<std::path::PathBuf> {
    var(XDG_CONFIG_HOME)
        .map(|d| std::path::PathBuf::from(d).join("berth/trusted.toml"))
        .or_else(|| home().map(|h| h.join(".config/berth/trusted.toml")))
}

/// `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`, else a directory under /tmp.
pub fn cache_dir() -> std::path::PathBuf {
    var(XDG_CACHE_HOME)
        .map(|d| std::path::PathBuf::from(d).join("berth"))
        .or_else(|| home().map(|h| h.join(".cache/berth")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "berth-cache-{}",
                berth_sandbox::launch::invoking_user().0
            ))
        })
}

pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
/// The coordinator's URL for client commands and runners.
pub const BERTH_SERVER: &str = "BERTH_SERVER";
/// The bearer token for client commands and runners.
pub const BERTH_TOKEN: &str = "BERTH_TOKEN";
/// A file holding the runner token (`berth runner --token-file`).
pub const BERTH_TOKEN_FILE: &str = "BERTH_TOKEN_FILE";
/// A file holding the PostgreSQL password (`berth server --db-password-file`).
pub const BERTH_DB_PASSWORD_FILE: &str = "BERTH_DB_PASSWORD_FILE";
/// A PEM file of CA certificates client commands and runners trust for the server's certificate,
/// besides the system's roots (`--ca`).
pub const BERTH_CA: &str = "BERTH_CA";
/// `--tls-client-cert`: the client certificate presented to a server (mutual TLS).
pub const BERTH_TLS_CLIENT_CERT: &str = "BERTH_TLS_CLIENT_CERT";
/// `--tls-client-key`: its private key.
pub const BERTH_TLS_CLIENT_KEY: &str = "BERTH_TLS_CLIENT_KEY";
/// `1` (or `true`): allow plain http:// to a server on another host (`--insecure-http`).
pub const BERTH_INSECURE_HTTP: &str = "BERTH_INSECURE_HTTP";
/// A file holding the token `/metrics` accepts besides the API tokens (`--metrics-token-file`).
pub const BERTH_METRICS_TOKEN_FILE: &str = "BERTH_METRICS_TOKEN_FILE";

/// `$XDG_DATA_HOME/berth`, else `~/.local/share/berth`, else a directory under /tmp.
pub fn data_dir() -> std::path::PathBuf {
    var(XDG_DATA_HOME)
        .map(|d| std::path::PathBuf::from(d).join("berth"))
        .or_else(|| home().map(|h| h.join(".local/share/berth")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "berth-data-{}",
                berth_sandbox::launch::invoking_user().0
            ))
        })
}

/// Where the credential broker sends each API, from `BERTH_*_UPSTREAM`; an unusable value is an
/// error naming the variable.
pub fn egress_upstreams() -> Result<
    std::collections::BTreeMap<berth_core::egress::BrokeredApi, String>,
    berth_sandbox::egress::UpstreamEnvError,
> {
    berth_sandbox::egress::upstreams_from_env()
}

/// The roots of `BERTH_EGRESS_UPSTREAM_CA`, if set; an unusable file is an error naming the
/// variable.
pub fn egress_upstream_roots(
) -> Result<Vec<berth_egress::CertificateDer<'static>>, berth_sandbox::egress::UpstreamEnvError> {
    berth_sandbox::egress::upstream_roots_from_env()
}
