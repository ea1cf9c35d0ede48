//! The egress policy: which hosts a sandbox may reach through berth's proxy, and what a run's
//! egress looks like in its spec, its events and its record. Pure: the proxy (`berth-egress`)
//! asks [`Policy::decide`] and does the I/O.
//!
//! A rule is written as
//! - `HOST[:PORT]`: HTTPS (`CONNECT`) and plain HTTP to HOST; without a port, 80 and 443.
//!   HOST is a name (`api.anthropic.com`), a wildcard for every name below a domain
//!   (`*.pythonhosted.org`, which does not match `pythonhosted.org` itself) or an IP address
//!   (`127.0.0.2`, `[::1]`).
//! - `[METHOD[,METHOD…] ]HOST[:PORT]/PATH-PREFIX`: plain HTTP only, requests whose path starts
//!   with PATH-PREFIX (and, when given, whose method is listed). HTTPS cannot be inspected, so a
//!   `CONNECT` never matches such a rule.
//!
//! A raw TCP forward (`tcp` entries, `HOST:PORT`) gives the sandbox a loopback port that is
//! connected to HOST:PORT (git over ssh, a database).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

mod error;
mod inject;
mod resolve;
pub use error::{EgressError, HostError, InjectError, LimitError, RuleProblem, TcpProblem};
pub use inject::{Inject, CA_BUNDLE_FILE, CA_FILE, MAX_INJECTS};
pub use resolve::{
    beyond_ceiling, check_ceiling_rules, resolve, resolve_with_inject, Asked, Field, Inputs,
    ResolveError,
};

/// How a run reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, PartialOrd, Ord)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// No proxy: the sandbox has the network `--network` gives it (by default none at all).
    #[default]
    None,
    /// No network interface; only the hosts the policy allows, through berth's proxy.
    Policy,
    /// The engine's bridge network: the whole internet, nothing recorded.
    Open,
}

impl EgressMode {
    pub fn parse(s: &str) -> Result<Self, EgressError> {
        match s {
            "none" => Ok(Self::None),
            "policy" => Ok(Self::Policy),
            "open" => Ok(Self::Open),
            other => Err(EgressError::Mode(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Policy => "policy",
            Self::Open => "open",
        }
    }
}

impl std::fmt::Display for EgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Named sets of rules, for `--allow-preset` and `[egress] presets`.
pub const PRESETS: &[(&str, &[&str])] = &[
    (
        "package-registries",
        &[
            "pypi.org:443",
            "files.pythonhosted.org:443",
            "crates.io:443",
            "index.crates.io:443",
            "static.crates.io:443",
            "registry.npmjs.org:443",
            "deb.debian.org",
            "security.debian.org",
            "proxy.golang.org:443",
            "sum.golang.org:443",
        ],
    ),
    (
        "github",
        &[
            "github.com:443",
            "api.github.com:443",
            "codeload.github.com:443",
            "objects.githubusercontent.com:443",
            "raw.githubusercontent.com:443",
        ],
    ),
    ("anthropic", &["api.anthropic.com:443"]),
    ("openai", &["api.openai.com:443"]),
];

/// The rules of a preset, or an error listing the known presets.
pub fn preset(name: &str) -> Result<&'static [&'static str], EgressError> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, rules)| *rules)
        .ok_or_else(|| EgressError::UnknownPreset(name.to_string()))
}

/// The APIs whose credentials berth brokers: the sandbox gets a placeholder and a loopback base
/// URL, berth's proxy adds the real credential on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BrokeredApi {
    Anthropic,
    Openai,
}

impl BrokeredApi {
    pub fn parse(s: &str) -> Result<Self, EgressError> {
        match s {
            "anthropic" => Ok(Self::Anthropic),
            "openai" => Ok(Self::Openai),
            other => Err(EgressError::BrokeredApi(other.to_string())),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
        }
    }
    /// The real API's base URL.
    pub fn default_upstream(self) -> &'static str {
        match self {
            Self::Anthropic => "https://api.anthropic.com",
            Self::Openai => "https://api.openai.com",
        }
    }
    /// The loopback port inside the sandbox.
    pub fn port(self) -> u16 {
        match self {
            Self::Anthropic => ANTHROPIC_PORT,
            Self::Openai => OPENAI_PORT,
        }
    }
    /// The variable that points the agent at the broker, and its value.
    pub fn base_url_env(self) -> (&'static str, String) {
        match self {
            Self::Anthropic => (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.port()),
            ),
            Self::Openai => (
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", self.port()),
            ),
        }
    }
}

/// How the real credential goes into a brokered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `x-api-key: KEY`
    ApiKey,
    /// `Authorization: Bearer TOKEN`
    Bearer,
}

/// Which header carries credential `name` for `api`.
pub fn credential_header(api: BrokeredApi, name: &str) -> CredentialHeader {
    match (api, name) {
        (BrokeredApi::Anthropic, "ANTHROPIC_API_KEY") => CredentialHeader::ApiKey,
        _ => CredentialHeader::Bearer,
    }
}

/// What the sandbox sees instead of a brokered credential. It is not secret.
pub const PLACEHOLDER: &str = "berth-brokered-credential-placeholder";

/// A brokered credential: the host variable that holds it and the API it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub credential: String,
    pub api: BrokeredApi,
}

/// Loopback ports inside the sandbox.
pub const PROXY_PORT: u16 = 41080;
pub const ANTHROPIC_PORT: u16 = 41081;
pub const OPENAI_PORT: u16 = 41082;
/// TCP forward N listens on `TCP_FORWARD_BASE + N`.
pub const TCP_FORWARD_BASE: u16 = 41100;
/// The most raw TCP forwards a run can have.
pub const MAX_TCP_FORWARDS: usize = 32;
/// The most allow rules a run can have.
pub const MAX_RULES: usize = 1000;
/// The longest rule, in bytes.
pub const MAX_RULE_LEN: usize = 300;

/// The listener names: `proxy`, `anthropic`, `openai`, `tcp-N`. Each is a socket
/// `NAME.sock` in the run's egress directory and a loopback port in the sandbox.
pub const PROXY_LISTENER: &str = "proxy";

/// A run's egress as asked (flags, profile, config, a submission).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EgressSpec {
    pub mode: EgressMode,
    /// Allow rules, presets expanded, each checked by [`Rule::parse`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Raw TCP forwards, `HOST:PORT`; forward N listens on loopback port 41100 + N.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
    /// Credentials held back from the sandbox and added by the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<Broker>,
    /// HTTPS hosts whose TLS the proxy terminates to add a header (the names of the host
    /// variables holding the values, never the values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject: Vec<Inject>,
}

impl EgressSpec {
    /// Checks every rule and forward; the error names the entry and what is accepted.
    pub fn check(&self) -> Result<(), EgressError> {
        if self.allow.len() > MAX_RULES {
            return Err(EgressError::TooManyRules(self.allow.len()));
        }
        for rule in &self.allow {
            Rule::parse(rule)?;
        }
        if self.tcp.len() > MAX_TCP_FORWARDS {
            return Err(EgressError::TooManyForwards(self.tcp.len()));
        }
        for forward in &self.tcp {
            parse_tcp(forward)?;
        }
        inject::check_all(&self.inject)?;
        if self.mode != EgressMode::Policy
            && (!self.allow.is_empty()
                || !self.tcp.is_empty()
                || !self.brokers.is_empty()
                || !self.inject.is_empty())
        {
            return Err(EgressError::NotPolicy(self.mode));
        }
        Ok(())
    }

    /// The listeners inside the sandbox: `(loopback port, name)`.
    pub fn listeners(&self) -> Vec<(u16, String)> {
        if self.mode != EgressMode::Policy {
            return Vec::new();
        }
        let mut out = vec![(PROXY_PORT, PROXY_LISTENER.to_string())];
        let mut apis: Vec<BrokeredApi> = self.brokers.iter().map(|b| b.api).collect();
        apis.sort();
        apis.dedup();
        out.extend(apis.iter().map(|a| (a.port(), a.as_str().to_string())));
        out.extend(
            (0..self.tcp.len().min(MAX_TCP_FORWARDS))
                .map(|i| (TCP_FORWARD_BASE + i as u16, format!("tcp-{i}"))),
        );
        out
    }

    /// The environment the command gets: proxy variables, brokered base URLs and placeholders.
    pub fn env(&self) -> Vec<(String, String)> {
        if self.mode != EgressMode::Policy {
            return Vec::new();
        }
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        let mut env: Vec<(String, String)> = [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .map(|k| (k.to_string(), proxy.clone()))
        .collect();
        let no_proxy = "localhost,127.0.0.1,::1".to_string();
        env.push(("NO_PROXY".into(), no_proxy.clone()));
        env.push(("no_proxy".into(), no_proxy));
        for broker in &self.brokers {
            let (name, url) = broker.api.base_url_env();
            if !env.iter().any(|(k, _)| k == name) {
                env.push((name.to_string(), url));
            }
            env.push((broker.credential.clone(), PLACEHOLDER.to_string()));
        }
        if !self.tcp.is_empty() {
            let forwards: Vec<String> = self
                .tcp
                .iter()
                .enumerate()
                .map(|(i, t)| format!("{t}=127.0.0.1:{}", TCP_FORWARD_BASE + i as u16))
                .collect();
            env.push(("BERTH_TCP_FORWARDS".into(), forwards.join(",")));
        }
        if !self.inject.is_empty() {
            // The proxy answers for injection hosts with certificates of the run's CA: the CA
            // alone where a variable adds to the built-in roots, else the host's roots plus it.
            let dir = crate::plan::EGRESS_TARGET;
            env.push(("NODE_EXTRA_CA_CERTS".into(), format!("{dir}/{CA_FILE}")));
            for name in [
                "SSL_CERT_FILE",
                "GIT_SSL_CAINFO",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
            ] {
                env.push((name.into(), format!("{dir}/{CA_BUNDLE_FILE}")));
            }
        }
        env
    }
}

/// Expands presets and checks rules: `allow` entries plus every rule of each preset, in order,
/// without duplicates.
pub fn expand(allow: &[String], presets: &[String]) -> Result<Vec<String>, EgressError> {
    let mut out: Vec<String> = Vec::new();
    for name in presets {
        for rule in preset(name)? {
            push_unique(&mut out, rule.to_string());
        }
    }
    for rule in allow {
        push_unique(&mut out, Rule::parse(rule)?.to_string());
    }
    Ok(out)
}

fn push_unique(out: &mut Vec<String>, item: String) {
    if !out.contains(&item) {
        out.push(item);
    }
}

/// A host pattern: an exact name or IP, or `*.` and a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The domain after `*.`: matches names that end in `.DOMAIN`.
    Below(String),
    Ip(IpAddr),
}

impl HostPattern {
    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (Self::Exact(p), Host::Name(h)) => p == h,
            (Self::Below(d), Host::Name(h)) => {
                h.len() > d.len() + 1
                    && h.ends_with(d.as_str())
                    && h[..h.len() - d.len()].ends_with('.')
            }
            (Self::Ip(p), Host::Ip(ip)) => p == ip,
            _ => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Below(d) => write!(f, "*.{d}"),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One allow rule (see the module's documentation for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub host: HostPattern,
    /// `None`: 80 and 443.
    pub port: Option<u16>,
    /// Upper-case methods; empty: any method.
    pub methods: Vec<String>,
    /// Plain HTTP only, paths starting with this.
    pub path_prefix: Option<String>,
}

const RULE_FORMS: &str = "expected HOST[:PORT] (e.g. `api.anthropic.com`, `*.pythonhosted.org:443`, `127.0.0.2:8080`) or `[METHOD,…] HOST[:PORT]/PATH-PREFIX` for plain HTTP";

impl Rule {
    pub fn parse(text: &str) -> Result<Self, EgressError> {
        let bad = |problem: RuleProblem| EgressError::Rule {
            rule: crate::text::escape_untrusted(text).into_owned(),
            problem,
        };
        if text.len() > MAX_RULE_LEN {
            return Err(EgressError::RuleTooLong(text.len()));
        }
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return Err(bad(RuleProblem::Empty));
        }
        let (methods, rest) = match text_trimmed.split_once(' ') {
            Some((m, rest)) => {
                let methods: Vec<String> = m.split(',').map(str::to_string).collect();
                if methods.iter().any(|m| {
                    m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase())
                }) {
                    return Err(bad(RuleProblem::Methods));
                }
                (methods, rest.trim())
            }
            None => (Vec::new(), text_trimmed),
        };
        let (authority, path_prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        if !methods.is_empty() && path_prefix.is_none() {
            return Err(bad(RuleProblem::MethodsWithoutPath));
        }
        if let Some(p) = &path_prefix {
            if p.bytes().any(|b| b <= b' ' || b == 0x7f) || p.contains('?') || p.contains('#') {
                return Err(bad(RuleProblem::PathCharacters));
            }
        }
        let (host, port) = split_host_port(authority).map_err(|e| bad(e.into()))?;
        let host = if let Some(domain) = host.strip_prefix("*.") {
            match parse_host(domain).map_err(|e| bad(e.into()))? {
                Host::Name(d) if d.contains('.') => HostPattern::Below(d),
                Host::Name(_) => return Err(bad(RuleProblem::WildcardWithoutDot)),
                Host::Ip(_) => return Err(bad(RuleProblem::WildcardIp)),
            }
        } else {
            match parse_host(host).map_err(|e| bad(e.into()))? {
                Host::Name(n) => HostPattern::Exact(n),
                Host::Ip(ip) => HostPattern::Ip(ip),
            }
        };
        Ok(Self {
            host,
            port,
            methods,
            path_prefix,
        })
    }

    fn matches(&self, req: &Request<'_>, host: &Host) -> bool {
        if !self.host.matches(host) {
            return false;
        }
        match self.port {
            Some(p) if p != req.port => return false,
            None if req.port != 80 && req.port != 443 => return false,
            _ => {}
        }
        match (&self.path_prefix, req.kind) {
            (None, _) => true,
            (Some(_), Kind::Connect) => false,
            (Some(prefix), Kind::Http) => {
                let path_ok = req.path.is_some_and(|p| path_within(p, prefix));
                let method_ok = self.methods.is_empty()
                    || req
                        .method
                        .is_some_and(|m| self.methods.iter().any(|x| x == m));
                path_ok && method_ok
            }
        }
    }
}

/// `path` starts with `prefix` and does not climb out of it with `..` segments (which an
/// upstream would resolve).
fn path_within(path: &str, prefix: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.starts_with(prefix)
        && !path
            .split('/')
            .any(|seg| seg == ".." || seg.eq_ignore_ascii_case("%2e%2e") || seg == ".")
        && !path.to_ascii_lowercase().contains("%2f")
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.methods.is_empty() {
            write!(f, "{} ", self.methods.join(","))?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(p) = &self.path_prefix {
            f.write_str(p)?;
        }
        Ok(())
    }
}

/// A host as requested: a lower-case name without a trailing dot, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parses a host as written in a request or rule (`[::1]` for IPv6).
pub fn parse_host(text: &str) -> Result<Host, HostError> {
    if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| HostError::Ipv6);
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(HostError::Length);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(HostError::Labels);
        }
    }
    // All-numeric names that are not IPv4 addresses (`1.2.3`, `0x7f.1`) are what resolvers
    // read as addresses in odd forms: refused rather than guessed.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        || name.starts_with("0x")
    {
        return Err(HostError::Numeric);
    }
    Ok(Host::Name(name))
}

/// Splits `HOST[:PORT]` (`[V6]:PORT` for IPv6).
pub fn split_host_port(text: &str) -> Result<(&str, Option<u16>), HostError> {
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => {
                let rest = &text[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if rest.is_empty() => None,
                    None => return Err(HostError::AfterBracket),
                };
                (&text[..=end], port)
            }
            None => return Err(HostError::Unclosed),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => {
                return Err(HostError::Port(
                    crate::text::escape_untrusted(p).into_owned(),
                ))
            }
        },
        None => None,
    };
    Ok((host, port))
}

/// A raw TCP forward `HOST:PORT`, checked: `(host, port)`.
pub fn parse_tcp(text: &str) -> Result<(Host, u16), EgressError> {
    let bad = |problem: TcpProblem| EgressError::Tcp {
        forward: crate::text::escape_untrusted(text).into_owned(),
        problem,
    };
    let (host, port) = split_host_port(text).map_err(|e| bad(e.into()))?;
    let port = port.ok_or_else(|| bad(TcpProblem::NoPort))?;
    if host.starts_with("*.") {
        return Err(bad(TcpProblem::Wildcard));
    }
    Ok((parse_host(host).map_err(|e| bad(e.into()))?, port))
}

/// How a request reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `CONNECT host:port` (HTTPS, or anything tunnelled).
    Connect,
    /// A plain HTTP request in absolute form.
    Http,
}

/// What the proxy asks about.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: Kind,
    pub host: &'a str,
    pub port: u16,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that allowed it, or why it was denied (`no rule allows …`).
    pub rule: String,
    /// For a denial: the flag that would allow it (`--allow-host example.org:443`).
    pub fix: Option<String>,
    /// The host, parsed; `None` when it is not a valid host.
    pub host: Option<Host>,
}

/// A run's allow rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(rules: &[String]) -> Result<Self, EgressError> {
        Ok(Self {
            rules: rules
                .iter()
                .map(|r| Rule::parse(r))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Decides one connection or request. Default deny.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let host = match parse_host(req.host) {
            Ok(h) => h,
            Err(e) => {
                return Decision {
                    allowed: false,
                    rule: format!("invalid host: {e}"),
                    fix: None,
                    host: None,
                }
            }
        };
        if let Some(rule) = self.rules.iter().find(|r| r.matches(req, &host)) {
            return Decision {
                allowed: true,
                rule: rule.to_string(),
                fix: None,
                host: Some(host),
            };
        }
        let fix = format!("--allow-host {host}:{}", req.port);
        let path_rules = self
            .rules
            .iter()
            .any(|r| r.path_prefix.is_some() && r.host.matches(&host));
        let rule = if path_rules && req.kind == Kind::Connect {
            format!("no rule allows CONNECT to {host}:{}; its rules allow only plain HTTP paths, which HTTPS hides", req.port)
        } else {
            format!("no rule allows {host}:{}", req.port)
        };
        Decision {
            allowed: false,
            rule,
            fix: Some(fix),
            host: Some(host),
        }
    }
}

/// Whether an address is one the public internet routes. A host *name* that resolves elsewhere
/// (loopback, private ranges, link-local, the engine's bridge…) is refused by the proxy, so an
/// allowed name cannot be pointed at this machine or its network (DNS rebinding); an IP address
/// written in a rule is taken as meant.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10, carrier-grade NAT
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64
                || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

/// One decision of the proxy, as recorded in a run's events (`egress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EgressRecord {
    /// `connect`, `http`, `tcp` or `api` (a brokered API request).
    pub kind: String,
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Without the query, which may carry tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub allowed: bool,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes from the sandbox out, and from upstream in.
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Token usage the API reported (brokered requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

/// The most distinct denied hosts a summary names.
pub const MAX_DENIED_LISTED: usize = 20;

/// A run's egress in its record, summed over its decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EgressSummary {
    pub mode: EgressMode,
    pub allowed: u64,
    pub denied: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// `host:port` of denied connections, at most [`MAX_DENIED_LISTED`].
    #[serde(default)]
    pub denied_hosts: Vec<String>,
    /// Brokered API requests and the tokens they reported.
    #[serde(default)]
    pub api_requests: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
}

impl EgressSummary {
    pub fn add(&mut self, r: &EgressRecord) {
        if r.allowed {
            self.allowed += 1;
        } else {
            self.denied += 1;
            let hp = format!("{}:{}", r.host, r.port);
            if self.denied_hosts.len() < MAX_DENIED_LISTED && !self.denied_hosts.contains(&hp) {
                self.denied_hosts.push(hp);
            }
        }
        self.bytes_out = self.bytes_out.saturating_add(r.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(r.bytes_in);
        if r.kind == "api" {
            self.api_requests += 1;
            self.input_tokens = self
                .input_tokens
                .saturating_add(r.input_tokens.unwrap_or(0));
            self.output_tokens = self
                .output_tokens
                .saturating_add(r.output_tokens.unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(
        rules: &[&str],
        kind: Kind,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Decision {
        let rules: Vec<String> = rules.iter().map(|s| s.to_string()).collect();
        Policy::new(&rules).unwrap().decide(&Request {
            kind,
            host,
            port,
            method: Some(method),
            path: Some(path),
        })
    }

    #[test]
    fn rules_match_hosts_ports_and_wildcards() {
        use Kind::*;
        let cases: &[(&[&str], Kind, &str, u16, bool)] = &[
            (
                &["api.anthropic.com"],
                Connect,
                "api.anthropic.com",
                443,
                true,
            ),
            (
                &["api.anthropic.com"],
                Connect,
                "API.Anthropic.COM.",
                443,
                true,
            ),
            (&["api.anthropic.com"], Http, "api.anthropic.com", 80, true),
            (
                &["api.anthropic.com"],
                Connect,
                "api.anthropic.com",
                22,
                false,
            ),
            (
                &["api.anthropic.com:443"],
                Http,
                "api.anthropic.com",
                80,
                false,
            ),
            (
                &["api.anthropic.com"],
                Connect,
                "evil-api.anthropic.com",
                443,
                false,
            ),
            (
                &["api.anthropic.com"],
                Connect,
                "api.anthropic.com.evil.org",
                443,
                false,
            ),
            (
                &["*.pythonhosted.org:443"],
                Connect,
                "files.pythonhosted.org",
                443,
                true,
            ),
            (
                &["*.pythonhosted.org:443"],
                Connect,
                "a.b.pythonhosted.org",
                443,
                true,
            ),
            (
                &["*.pythonhosted.org:443"],
                Connect,
                "pythonhosted.org",
                443,
                false,
            ),
            (
                &["*.pythonhosted.org:443"],
                Connect,
                "evilpythonhosted.org",
                443,
                false,
            ),
            (&["127.0.0.2:8080"], Http, "127.0.0.2", 8080, true),
            (&["127.0.0.2:8080"], Http, "127.0.0.3", 8080, false),
            (&["[::1]:80"], Http, "[::1]", 80, true),
            (&[], Connect, "example.org", 443, false),
            (&["example.org"], Connect, "2130706433", 443, false),
            (&["example.org"], Connect, "exa mple.org", 443, false),
        ];
        for (rules, kind, host, port, allowed) in cases {
            let d = decide(rules, *kind, host, *port, "GET", "/");
            assert_eq!(
                d.allowed, *allowed,
                "{rules:?} {kind:?} {host}:{port}: {d:?}"
            );
        }
    }

    #[test]
    fn denials_name_the_flag_that_allows() {
        let d = decide(&["a.org"], Kind::Connect, "Example.org", 443, "GET", "/");
        assert!(!d.allowed);
        assert_eq!(d.fix.as_deref(), Some("--allow-host example.org:443"));
        assert_eq!(d.rule, "no rule allows example.org:443");
        let d = decide(&["a.org"], Kind::Connect, "a.org", 443, "GET", "/");
        assert_eq!(d.rule, "a.org");
    }

    #[test]
    fn path_rules_are_plain_http_only() {
        let rules = &["GET,HEAD pypi.org/simple/"];
        assert!(decide(rules, Kind::Http, "pypi.org", 80, "GET", "/simple/x/?a=1").allowed);
        assert!(!decide(rules, Kind::Http, "pypi.org", 80, "POST", "/simple/x/").allowed);
        assert!(!decide(rules, Kind::Http, "pypi.org", 80, "GET", "/other").allowed);
        assert!(!decide(rules, Kind::Http, "pypi.org", 80, "GET", "/simple/../admin").allowed);
        assert!(
            !decide(
                rules,
                Kind::Http,
                "pypi.org",
                80,
                "GET",
                "/simple/%2e%2e/admin"
            )
            .allowed
        );
        let d = decide(rules, Kind::Connect, "pypi.org", 443, "", "");
        assert!(!d.allowed);
        assert!(d.rule.contains("HTTPS hides"), "{}", d.rule);
        assert!(
            decide(
                &["pypi.org/simple/"],
                Kind::Http,
                "pypi.org",
                80,
                "PUT",
                "/simple/"
            )
            .allowed
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for bad in [
            "",
            "*",
            "*.org",
            "*.1.2.3.4",
            "host:0",
            "host:99999",
            "host:x",
            "GET host",
            "get host/x",
            "[::1",
            "ho st",
            "a..b",
            "-a.org",
            "host/with space",
            "1.2.3",
        ] {
            let e = Rule::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("egress rule") && e.contains("expected HOST"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            Rule::parse("Example.ORG:443").unwrap().to_string(),
            "example.org:443"
        );
        assert_eq!(
            Rule::parse("GET x.org/a").unwrap().to_string(),
            "GET x.org/a"
        );
    }

    #[test]
    fn presets_expand_and_unknown_ones_are_named() {
        let rules = expand(&["a.org".into()], &["anthropic".into()]).unwrap();
        assert_eq!(rules, vec!["api.anthropic.com:443", "a.org"]);
        let e = expand(&[], &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("package-registries"), "{e}");
        for (_, rules) in PRESETS {
            for r in *rules {
                Rule::parse(r).unwrap();
            }
        }
    }

    #[test]
    fn tcp_forwards_are_checked() {
        assert_eq!(parse_tcp("github.com:22").unwrap().1, 22);
        assert!(parse_tcp("github.com").is_err());
        assert!(parse_tcp("*.github.com:22").is_err());
    }

    #[test]
    fn public_addresses() {
        for (ip, public) in [
            ("1.1.1.1", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.17.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("2606:4700::1111", true),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("fd00::1", false),
            ("fe80::1", false),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[test]
    fn spec_listeners_and_env() {
        let spec = EgressSpec {
            mode: EgressMode::Policy,
            allow: vec![],
            tcp: vec!["github.com:22".into()],
            brokers: vec![Broker {
                credential: "ANTHROPIC_API_KEY".into(),
                api: BrokeredApi::Anthropic,
            }],
            inject: vec![],
        };
        spec.check().unwrap();
        assert_eq!(
            spec.listeners(),
            vec![
                (41080, "proxy".to_string()),
                (41081, "anthropic".to_string()),
                (41100, "tcp-0".to_string())
            ]
        );
        let env = spec.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HTTPS_PROXY"), Some("http://127.0.0.1:41080"));
        assert_eq!(get("ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:41081"));
        assert_eq!(get("ANTHROPIC_API_KEY"), Some(PLACEHOLDER));
        assert_eq!(
            get("BERTH_TCP_FORWARDS"),
            Some("github.com:22=127.0.0.1:41100")
        );
        assert_eq!(get("SSL_CERT_FILE"), None);
        let injecting = EgressSpec {
            mode: EgressMode::Policy,
            inject: vec![Inject::parse_flag("git.example.org=Authorization:T").unwrap()],
            ..EgressSpec::default()
        };
        injecting.check().unwrap();
        let env = injecting.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NODE_EXTRA_CA_CERTS"), Some("/berth/egress/ca.pem"));
        for k in [
            "SSL_CERT_FILE",
            "GIT_SSL_CAINFO",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
        ] {
            assert_eq!(get(k), Some("/berth/egress/ca-bundle.pem"), "{k}");
        }
        let none = EgressSpec {
            allow: vec!["a.org".into()],
            ..EgressSpec::default()
        };
        assert!(none
            .check()
            .unwrap_err()
            .to_string()
            .contains("need egress mode policy"));
        assert!(none.listeners().is_empty() && none.env().is_empty());
    }
}
