//! What is wrong with an egress rule, forward, preset, injection host or spec. Every message
//! quotes the value (escaped, as it may come from a sandbox or a submission) and says what is
//! accepted.

use super::inject::MAX_INJECT_LIMITS;
use super::{MAX_INJECTS, MAX_RULES, MAX_RULE_LEN, MAX_TCP_FORWARDS, PRESETS, RULE_FORMS};

/// A host, or `HOST[:PORT]`, that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("not an IPv6 address inside `[…]`")]
    Ipv6,
    #[error("a host name has 1 to 253 characters")]
    Length,
    #[error("a host name is dot-separated labels of letters, digits, `-` and `_`")]
    Labels,
    #[error("a numeric host must be a dotted-quad IPv4 address")]
    Numeric,
    #[error("unexpected text after `]`")]
    AfterBracket,
    #[error("`[` without `]`")]
    Unclosed,
    /// The port as written (escaped).
    #[error("port `{0}` is not 1 to 65535")]
    Port(String),
}

/// What is wrong with one allow rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("empty")]
    Empty,
    #[error("methods are upper-case words separated by commas")]
    Methods,
    #[error("methods are only checked together with a path prefix")]
    MethodsWithoutPath,
    #[error("the path prefix has spaces, control characters, `?` or `#`")]
    PathCharacters,
    #[error("a wildcard needs a domain with a dot (`*.example.org`)")]
    WildcardWithoutDot,
    #[error("a wildcard cannot cover an IP address")]
    WildcardIp,
    #[error(transparent)]
    Host(#[from] HostError),
}

/// What is wrong with one TCP forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpProblem {
    #[error("no port")]
    NoPort,
    #[error("a forward has one host, not a wildcard")]
    Wildcard,
    #[error(transparent)]
    Host(#[from] HostError),
}

/// An egress value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("`{0}` is not an egress mode: expected none, policy or open")]
    Mode(String),
    #[error("`{0}` is not a brokered API: expected anthropic or openai")]
    BrokeredApi(String),
    #[error("unknown egress preset `{}`; known presets: {}", .0, PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownPreset(String),
    #[error("an egress rule of {0} bytes: at most {MAX_RULE_LEN}")]
    RuleTooLong(usize),
    /// `rule` is escaped.
    #[error("egress rule `{rule}`: {problem}; {RULE_FORMS}")]
    Rule { rule: String, problem: RuleProblem },
    /// `forward` is escaped.
    #[error("tcp forward `{forward}`: {problem}; expected HOST:PORT (e.g. `github.com:22`)")]
    Tcp {
        forward: String,
        problem: TcpProblem,
    },
    #[error("{0} allow rules: at most {MAX_RULES}")]
    TooManyRules(usize),
    #[error("{0} tcp forwards: at most {MAX_TCP_FORWARDS}")]
    TooManyForwards(usize),
    #[error("allowed hosts, tcp forwards, brokered credentials and injected headers need egress mode policy, not {0}")]
    NotPolicy(super::EgressMode),
    #[error(transparent)]
    Inject(#[from] InjectError),
}

/// An injection host that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// `host` is escaped.
    #[error("`{host}`: {problem}")]
    Host { host: String, problem: HostError },
    #[error("`{0}`: an injection host is one host, not a wildcard (its certificate is made for exactly that name)")]
    Wildcard(String),
    /// `header` is escaped.
    #[error(
        "{host}: header `{header}` is not a header name (letters, digits and `-`, at most 64)"
    )]
    HeaderName { host: String, header: String },
    #[error("{host}: header `{header}` frames the request or belongs to the proxy; berth does not inject it")]
    RefusedHeader { host: String, header: String },
    #[error("{host}: env: {source}")]
    Env {
        host: String,
        source: crate::spec::SpecError,
    },
    #[error("{0}: at most {MAX_INJECT_LIMITS} methods and {MAX_INJECT_LIMITS} paths")]
    TooManyLimits(String),
    /// `method` is escaped.
    #[error("{host}: method `{method}` is not an upper-case word (GET, POST…)")]
    Method { host: String, method: String },
    /// `path` is escaped.
    #[error("{host}: path `{path}` is not a path prefix: it starts with `/` and has no spaces, control characters, `?` or `#`")]
    Path { host: String, path: String },
    /// `flag` is escaped.
    #[error("`{0}`: expected HOST[:PORT]=Header-Name:ENV_VAR (e.g. `git.example.org=Authorization:GIT_PUSH_AUTH`)")]
    Flag(String),
    /// `host` is escaped.
    #[error("injection host `{host}` is not in its normal form (`{normal}`)")]
    NotNormal { host: String, normal: String },
    #[error("{0} injection hosts: at most {MAX_INJECTS}")]
    TooMany(usize),
    #[error("injection host {0} is listed twice; one header per host")]
    Twice(String),
    #[error(transparent)]
    Target(#[from] HostError),
}

/// A request outside an injection host's limits: which one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `method` is escaped.
    #[error("method {method} is not one of {allowed}")]
    Method { method: String, allowed: String },
    /// `path` is escaped and cut.
    #[error("path {path} is not below {allowed}")]
    Path { path: String, allowed: String },
}
