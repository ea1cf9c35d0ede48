//! Header injection: for a listed HTTPS host, berth's proxy terminates the sandbox's TLS with a
//! per-run CA the sandbox trusts, adds a configured header whose value it reads from the host's
//! environment (the value never enters the sandbox), and forwards over TLS to the real host.
//! Requests can be limited to some methods and path prefixes.
//!
//! Written in `berth.toml` as
//!
//! ```toml
//! [egress.inject."git.example.org"]
//! header = "Authorization"
//! env = "GIT_PUSH_AUTH"          # the host variable holding the whole header value
//! methods = ["GET", "POST"]      # optional
//! paths = ["/team/repo.git/"]    # optional path prefixes
//! ```
//!
//! or as `--inject-header 'git.example.org=Authorization:GIT_PUSH_AUTH'`.

use serde::{Deserialize, Serialize};

use super::{parse_host, path_within, split_host_port, Host, HostError, InjectError, LimitError};

/// The most injection hosts a run can have.
pub const MAX_INJECTS: usize = 32;
/// The most methods or path prefixes one injection host can list.
pub const MAX_INJECT_LIMITS: usize = 64;
/// The run CA's certificate in the egress directory (public), for `NODE_EXTRA_CA_CERTS`.
pub const CA_FILE: &str = "ca.pem";
/// The host's root certificates plus the run CA, for `SSL_CERT_FILE` and the like.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// One injection host as kept in a run's spec: names only, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    /// `host:port`, lower-case (port 443 unless written): an exact name or an IP address.
    pub host: String,
    /// The header's name, lower-case.
    pub header: String,
    /// The environment variable of berth's host that holds the header's value.
    pub env: String,
    /// Upper-case methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes; empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Headers berth will not inject: they frame the request or belong to a hop.
const REFUSED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
];

impl Inject {
    /// Checks and normalises one injection host. Errors name the part and what is accepted.
    pub fn new(
        host: &str,
        header: &str,
        env: &str,
        methods: &[String],
        paths: &[String],
    ) -> Result<Self, InjectError> {
        let shown = crate::text::escape_untrusted(host).into_owned();
        let bad_host = |problem: HostError| InjectError::Host {
            host: shown.clone(),
            problem,
        };
        let (name, port) = split_host_port(host).map_err(bad_host)?;
        if name.starts_with("*.") {
            return Err(InjectError::Wildcard(shown));
        }
        let parsed = parse_host(name).map_err(bad_host)?;
        let host = format!("{parsed}:{}", port.unwrap_or(443));
        let header = check_header(&host, header)?;
        crate::spec::check_env_name(env).map_err(|source| InjectError::Env {
            host: host.clone(),
            source,
        })?;
        if methods.len() > MAX_INJECT_LIMITS || paths.len() > MAX_INJECT_LIMITS {
            return Err(InjectError::TooManyLimits(host));
        }
        for m in methods {
            if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(InjectError::Method {
                    host,
                    method: crate::text::escape_untrusted(m).into_owned(),
                });
            }
        }
        for p in paths {
            if !p.starts_with('/')
                || p.len() > super::MAX_RULE_LEN
                || p.bytes().any(|b| b <= b' ' || b == 0x7f)
                || p.contains('?')
                || p.contains('#')
            {
                return Err(InjectError::Path {
                    host,
                    path: crate::text::escape_untrusted(p).into_owned(),
                });
            }
        }
        Ok(Self {
            host,
            header,
            env: env.to_string(),
            methods: methods.to_vec(),
            paths: paths.to_vec(),
        })
    }

    /// `HOST[:PORT]=Header-Name:ENV_VAR`, as `--inject-header` takes it.
    pub fn parse_flag(text: &str) -> Result<Self, InjectError> {
        let bad = || InjectError::Flag(crate::text::escape_untrusted(text).into_owned());
        let (host, rest) = text.split_once('=').ok_or_else(bad)?;
        let (header, env) = rest.rsplit_once(':').ok_or_else(bad)?;
        Self::new(host, header, env, &[], &[])
    }

    /// Checks an entry that was stored or sent (the same rules as [`Inject::new`]).
    pub fn check(&self) -> Result<(), InjectError> {
        let again = Self::new(
            &self.host,
            &self.header,
            &self.env,
            &self.methods,
            &self.paths,
        )?;
        if again != *self {
            return Err(InjectError::NotNormal {
                host: crate::text::escape_untrusted(&self.host).into_owned(),
                normal: again.host,
            });
        }
        Ok(())
    }

    /// The host and port the proxy terminates.
    pub fn target(&self) -> Result<(Host, u16), HostError> {
        let (name, port) = split_host_port(&self.host)?;
        Ok((parse_host(name)?, port.unwrap_or(443)))
    }

    /// How the entry is named in events and answers: `inject authorization into HOST:PORT
    /// (from GIT_PUSH_AUTH; GET,POST; /a/, /b/)`.
    pub fn rule(&self) -> String {
        let mut limits = vec![format!("from {}", self.env)];
        if !self.methods.is_empty() {
            limits.push(self.methods.join(","));
        }
        if !self.paths.is_empty() {
            limits.push(self.paths.join(", "));
        }
        format!(
            "inject {} into {} ({})",
            self.header,
            self.host,
            limits.join("; ")
        )
    }

    /// Whether a request may go out with the header: `Err` says which limit it is outside of.
    pub fn allows(&self, method: &str, path: &str) -> Result<(), LimitError> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return Err(LimitError::Method {
                method: crate::text::escape_untrusted(method).into_owned(),
                allowed: self.methods.join(", "),
            });
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| path_within(path, p)) {
            return Err(LimitError::Path {
                path: crate::text::escape_untrusted(&path.chars().take(255).collect::<String>())
                    .into_owned(),
                allowed: self.paths.join(", "),
            });
        }
        Ok(())
    }
}

/// A header name berth may inject for `host`, lower-cased.
fn check_header(host: &str, name: &str) -> Result<String, InjectError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(token) {
        return Err(InjectError::HeaderName {
            host: host.to_string(),
            header: crate::text::escape_untrusted(name).into_owned(),
        });
    }
    let lower = name.to_ascii_lowercase();
    if REFUSED_HEADERS.contains(&lower.as_str()) {
        return Err(InjectError::RefusedHeader {
            host: host.to_string(),
            header: name.to_string(),
        });
    }
    Ok(lower)
}

/// Checks a run's injection hosts: at most [`MAX_INJECTS`], each valid, no host twice.
pub fn check_all(inject: &[Inject]) -> Result<(), InjectError> {
    if inject.len() > MAX_INJECTS {
        return Err(InjectError::TooMany(inject.len()));
    }
    for (i, entry) in inject.iter().enumerate() {
        entry.check()?;
        if inject[..i].iter().any(|e| e.host == entry.host) {
            return Err(InjectError::Twice(entry.host.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entries_are_normalised_and_checked() {
        let i = Inject::parse_flag("Git.Example.org=Authorization:GIT_TOKEN").unwrap();
        assert_eq!(i.host, "git.example.org:443");
        assert_eq!(i.header, "authorization");
        assert_eq!(i.env, "GIT_TOKEN");
        i.check().unwrap();
        let i = Inject::parse_flag("127.0.0.2:8443=X-Token:T").unwrap();
        assert_eq!(i.host, "127.0.0.2:8443");
        assert_eq!(i.target().unwrap().1, 8443);
        for (bad, needle) in [
            (
                "git.example.org",
                "expected HOST[:PORT]=Header-Name:ENV_VAR",
            ),
            ("git.example.org=Authorization", "expected HOST"),
            ("*.example.org=Authorization:T", "not a wildcard"),
            ("a b=Authorization:T", "host name"),
            ("x.org=Host:T", "does not inject it"),
            ("x.org=Content-Length:T", "does not inject it"),
            ("x.org=Bad Header:T", "not a header name"),
            ("x.org=Authorization:1T", "env"),
            ("x.org:0=Authorization:T", "port"),
        ] {
            let e = Inject::parse_flag(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = Inject::new("x.org", "a", "T", &s(&["get"]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("upper-case"), "{e}");
        let e = Inject::new("x.org", "a", "T", &[], &s(&["berth/"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a path prefix"), "{e}");
        let mut i = Inject::parse_flag("x.org=A:T").unwrap();
        i.host = "X.org".into();
        assert!(i.check().unwrap_err().to_string().contains("normal form"));
        let twice = vec![
            Inject::parse_flag("x.org=A:T").unwrap(),
            Inject::parse_flag("x.org:443=B:U").unwrap(),
        ];
        assert!(check_all(&twice)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }

    #[test]
    fn methods_and_paths_limit_requests() {
        let i = Inject::new(
            "git.example.org",
            "Authorization",
            "T",
            &s(&["GET", "POST"]),
            &s(&["/team/repo.git/"]),
        )
        .unwrap();
        for (method, path, ok) in [
            ("GET", "/team/repo.git/info/refs", true),
            ("POST", "/team/repo.git/git-receive-pack", true),
            ("DELETE", "/team/repo.git/x", false),
            ("GET", "/team/other.git/info/refs", false),
            ("GET", "/team/repo.git/../other.git/info/refs", false),
            ("GET", "/team/repo.git/%2e%2e/other.git", false),
            ("GET", "/team/repo.git%2f..%2fother", false),
        ] {
            assert_eq!(i.allows(method, path).is_ok(), ok, "{method} {path}");
        }
        assert!(i
            .allows("DELETE", "/team/repo.git/x")
            .unwrap_err()
            .to_string()
            .contains("method DELETE is not one of GET, POST"));
        assert_eq!(
            i.rule(),
            "inject authorization into git.example.org:443 (from T; GET,POST; /team/repo.git/)"
        );
        let any = Inject::parse_flag("x.org=A:T").unwrap();
        assert!(any.allows("PUT", "/anything").is_ok());
    }
}
