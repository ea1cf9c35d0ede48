//! Where a run's egress comes from, decided in one place for `berth run`, the server's checks and
//! the runner: the asked mode and rules (flags or a submission), the profile's defaults, the
//! config's `[egress]`, the network asked for, and a project's ceiling.

use super::{
    expand, parse_tcp, Broker, EgressMode, EgressSpec, Host, HostPattern, Inject, Rule, MAX_RULES,
};
use crate::spec::NetworkMode;

/// Mode and rules from one source (flags or a submission, or the config's `[egress]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked<'a> {
    pub mode: Option<EgressMode>,
    pub allow: &'a [String],
    pub presets: &'a [String],
    pub tcp: &'a [String],
}

impl Asked<'_> {
    fn any_rule(&self) -> bool {
        !self.allow.is_empty() || !self.presets.is_empty() || !self.tcp.is_empty()
    }
}

/// Everything a run's egress is decided from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Flags, or the submission's `egress`.
    pub asked: Asked<'a>,
    /// The config's `[egress]` (empty on the server side).
    pub config: Asked<'a>,
    pub profile_mode: Option<EgressMode>,
    pub profile_allow: &'a [String],
    pub profile_name: Option<&'a str>,
    pub brokers: &'a [Broker],
    /// The network asked for explicitly (flag or submission), if any.
    pub network_asked: Option<&'a NetworkMode>,
    /// The network otherwise in effect (profile or config), `none` by default.
    pub network_default: NetworkMode,
    /// A project's egress ceiling: every allowed rule and forward must lie within it, and
    /// `open` egress or a network is refused. `None`: no ceiling.
    pub ceiling: Option<&'a [String]>,
}

/// Which input an error is about, so that each caller names its own field or flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Mode,
    ConfigMode,
    Allow,
    Tcp,
    Network,
    /// Injection hosts (`--inject-header`, `[egress.inject]`).
    Inject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    pub field: Field,
    pub message: String,
}

fn fail<T>(field: Field, message: impl Into<String>) -> Result<T, ResolveError> {
    Err(ResolveError {
        field,
        message: message.into(),
    })
}

/// The run's egress, the network it implies, and the secrets left for the sandbox (a brokered
/// credential is held back and added by the proxy instead).
pub fn resolve(
    inputs: &Inputs<'_>,
    secrets: Vec<String>,
) -> Result<(EgressSpec, NetworkMode, Vec<String>), ResolveError> {
    resolve_with_inject(inputs, &[], secrets)
}

/// [`resolve`] with injection hosts (flags and config together): like a rule, they make policy
/// the default mode, need it, and must lie within a ceiling.
pub fn resolve_with_inject(
    inputs: &Inputs<'_>,
    inject: &[Inject],
    secrets: Vec<String>,
) -> Result<(EgressSpec, NetworkMode, Vec<String>), ResolveError> {
    let mode = inputs
        .asked
        .mode
        .or(inputs.profile_mode)
        .or(inputs.config.mode)
        .unwrap_or(
            if inputs.asked.any_rule() || inputs.config.any_rule() || !inject.is_empty() {
                EgressMode::Policy
            } else {
                EgressMode::None
            },
        );
    let network = inputs
        .network_asked
        .cloned()
        .unwrap_or_else(|| inputs.network_default.clone());
    if let Some(ceiling) = inputs.ceiling {
        check_ceiling_rules(ceiling)?;
        if mode == EgressMode::Open {
            return fail(
                if inputs.asked.mode.is_some() {
                    Field::Mode
                } else {
                    Field::ConfigMode
                },
                "the project has an egress ceiling, which open egress (an unchecked network) would bypass; use egress policy with hosts inside the ceiling",
            );
        }
        if network != NetworkMode::None {
            return fail(
                Field::Network,
                format!(
                    "network `{}` is refused: the project has an egress ceiling, and a network would bypass it; drop the network and allow hosts through egress policy",
                    network.engine_name()
                ),
            );
        }
    }
    if mode != EgressMode::Policy {
        if !inject.is_empty() {
            return fail(
                Field::Inject,
                format!("headers are injected by berth's egress proxy, which egress {mode} does not use; drop egress {mode} (policy is the default when a header is injected)"),
            );
        }
        if inputs.asked.any_rule() {
            return fail(
                Field::Allow,
                format!("hosts are allowed through berth's egress proxy, which egress {mode} does not use; drop egress {mode} (policy is the default when hosts are allowed)"),
            );
        }
        // A brokered credential lives only in berth's proxy. Without the proxy it would have to
        // be handed to the sandbox in clear, where the command (a client's, on a runner) could
        // read it and, with a network, send it anywhere: refused instead.
        if let Some(broker) = secrets
            .iter()
            .find_map(|name| inputs.brokers.iter().find(|b| &b.credential == name))
        {
            return fail(
                if inputs.asked.mode.is_some() {
                    Field::Mode
                } else {
                    Field::ConfigMode
                },
                format!(
                    "credential `{}`{} is brokered: berth's egress proxy adds it to requests to the {} API and the sandbox never holds it, but egress {mode} has no proxy, so it would be handed to the sandbox in clear; use egress policy (the profile's default)",
                    broker.credential,
                    inputs
                        .profile_name
                        .map(|p| format!(" (profile `{p}`)"))
                        .unwrap_or_default(),
                    broker.api.as_str(),
                ),
            );
        }
        let network = match (mode, network) {
            (EgressMode::Open, NetworkMode::None) => NetworkMode::Bridge,
            (_, network) => network,
        };
        let spec = EgressSpec {
            mode,
            ..EgressSpec::default()
        };
        return Ok((spec, network, secrets));
    }
    if let Some(n) = inputs.network_asked.filter(|n| **n != NetworkMode::None) {
        return fail(
            Field::Network,
            format!("`{}` cannot be combined with egress policy: the sandbox gets no network interface but loopback, and reaches allowed hosts through berth's proxy; use egress open to join `{}` instead (unchecked), or drop the network", n.engine_name(), n.engine_name()),
        );
    }
    let mut allow: Vec<String> = inputs.profile_allow.to_vec();
    allow.extend(inputs.config.allow.iter().cloned());
    allow.extend(inputs.asked.allow.iter().cloned());
    let mut presets = inputs.config.presets.to_vec();
    presets.extend(inputs.asked.presets.iter().cloned());
    let allow = expand(&allow, &presets).map_err(|message| ResolveError {
        field: Field::Allow,
        message: message.to_string(),
    })?;
    let mut tcp: Vec<String> = inputs.config.tcp.to_vec();
    for t in inputs.asked.tcp {
        if !tcp.contains(t) {
            tcp.push(t.clone());
        }
    }
    if let Some(ceiling) = inputs.ceiling {
        let outside = beyond_ceiling(&allow, &tcp, ceiling);
        if let Some((what, field)) = outside.first() {
            let from_profile = inputs
                .profile_name
                .filter(|_| inputs.profile_allow.iter().any(|r| r == what))
                .map(|p| format!(" (a default of profile `{p}`)"))
                .unwrap_or_default();
            return fail(
                *field,
                format!(
                    "`{what}`{from_profile} is beyond the project's egress ceiling ({}); ask the project's admin to widen the ceiling, or drop it",
                    ceiling.join(", ")
                ),
            );
        }
        let ceiling_rules: Vec<Rule> = ceiling.iter().filter_map(|r| Rule::parse(r).ok()).collect();
        for entry in inject {
            let within = entry.target().is_ok_and(|(host, port)| {
                let rule = one_host(host, port);
                ceiling_rules.iter().any(|c| rule.within(c))
            });
            if !within {
                return fail(
                    Field::Inject,
                    format!(
                        "injection host {} is beyond the project's egress ceiling ({}); ask the project's admin to widen the ceiling, or drop it",
                        entry.host,
                        ceiling.join(", ")
                    ),
                );
            }
        }
    }
    let mut left = Vec::new();
    let mut brokers = Vec::new();
    for name in secrets {
        match inputs.brokers.iter().find(|b| b.credential == name) {
            Some(broker) => brokers.push(broker.clone()),
            None => left.push(name),
        }
    }
    super::inject::check_all(inject).map_err(|message| ResolveError {
        field: Field::Inject,
        message: message.to_string(),
    })?;
    let spec = EgressSpec {
        mode,
        allow,
        tcp,
        brokers,
        inject: inject.to_vec(),
    };
    spec.check().map_err(|message| ResolveError {
        field: Field::Allow,
        message: message.to_string(),
    })?;
    Ok((spec, NetworkMode::None, left))
}

/// Checks a ceiling as an admin wrote it: each entry a rule.
pub fn check_ceiling_rules(ceiling: &[String]) -> Result<(), ResolveError> {
    if ceiling.len() > MAX_RULES {
        return fail(
            Field::Allow,
            format!(
                "the egress ceiling has {} rules: at most {MAX_RULES}",
                ceiling.len()
            ),
        );
    }
    for rule in ceiling {
        Rule::parse(rule).map_err(|message| ResolveError {
            field: Field::Allow,
            message: format!("the project's egress ceiling: {message}"),
        })?;
    }
    Ok(())
}

/// The allow rules and tcp forwards that some request could use beyond `ceiling`: each with the
/// field it came from. Unparsable entries count as beyond.
pub fn beyond_ceiling(
    allow: &[String],
    tcp: &[String],
    ceiling: &[String],
) -> Vec<(String, Field)> {
    let ceiling: Vec<Rule> = ceiling.iter().filter_map(|r| Rule::parse(r).ok()).collect();
    let within = |rule: &Rule| ceiling.iter().any(|c| rule.within(c));
    let mut out = Vec::new();
    for text in allow {
        if !Rule::parse(text).is_ok_and(|r| within(&r)) {
            out.push((text.clone(), Field::Allow));
        }
    }
    for text in tcp {
        let ok = parse_tcp(text).is_ok_and(|(host, port)| within(&one_host(host, port)));
        if !ok {
            out.push((text.clone(), Field::Tcp));
        }
    }
    out
}

/// The rule allowing exactly `host:port`.
fn one_host(host: Host, port: u16) -> Rule {
    let host = match host {
        Host::Name(n) => HostPattern::Exact(n),
        Host::Ip(ip) => HostPattern::Ip(ip),
    };
    Rule {
        host,
        port: Some(port),
        methods: Vec::new(),
        path_prefix: None,
    }
}

impl HostPattern {
    /// Whether every host this pattern matches is matched by `outer`.
    fn within(&self, outer: &HostPattern) -> bool {
        match (self, outer) {
            (a, b) if a == b => true,
            (Self::Exact(name), Self::Below(_)) => outer.matches(&Host::Name(name.clone())),
            // `*.a.b.c` lies within `*.b.c`: every name below a.b.c is below b.c.
            (Self::Below(domain), Self::Below(_)) => outer.matches(&Host::Name(domain.clone())),
            _ => false,
        }
    }
}

impl Rule {
    /// Whether every request this rule allows is allowed by `outer`.
    pub fn within(&self, outer: &Rule) -> bool {
        let ports = match (self.port, outer.port) {
            (_, None) => self.port.is_none_or(|p| p == 80 || p == 443),
            (Some(p), Some(q)) => p == q,
            (None, Some(_)) => false,
        };
        let methods = outer.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| outer.methods.contains(m)));
        let paths = match (&self.path_prefix, &outer.path_prefix) {
            (_, None) => true,
            (Some(p), Some(q)) => super::path_within(p, q),
            (None, Some(_)) => false,
        };
        self.host.within(&outer.host) && ports && methods && paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        Rule::parse(s).unwrap()
    }

    #[test]
    fn containment_of_rules() {
        for (inner, outer, want) in [
            ("api.anthropic.com", "api.anthropic.com", true),
            ("api.anthropic.com:443", "api.anthropic.com", true),
            ("api.anthropic.com:8443", "api.anthropic.com", false),
            ("api.anthropic.com", "api.anthropic.com:443", false),
            ("files.pythonhosted.org", "*.pythonhosted.org", true),
            ("pythonhosted.org", "*.pythonhosted.org", false),
            ("*.a.pythonhosted.org", "*.pythonhosted.org", true),
            ("*.pythonhosted.org", "*.a.pythonhosted.org", false),
            ("*.pythonhosted.org", "files.pythonhosted.org", false),
            ("evil.com", "*.pythonhosted.org", false),
            ("127.0.0.2:8080", "127.0.0.2:8080", true),
            ("127.0.0.3:8080", "127.0.0.2:8080", false),
            ("GET example.org/api/v1", "example.org/api", true),
            ("example.org/api", "GET example.org/api", false),
            ("GET,POST example.org/api", "GET example.org/api", false),
            ("example.org/other", "example.org/api", false),
            ("example.org", "example.org/api", false),
            ("example.org/api/../x", "example.org/api", false),
        ] {
            assert_eq!(
                rule(inner).within(&rule(outer)),
                want,
                "{inner} within {outer}"
            );
        }
    }

    fn inputs<'a>(asked: Asked<'a>, ceiling: Option<&'a [String]>) -> Inputs<'a> {
        Inputs {
            asked,
            config: Asked::default(),
            profile_mode: None,
            profile_allow: &[],
            profile_name: None,
            brokers: &[],
            network_asked: None,
            network_default: NetworkMode::None,
            ceiling,
        }
    }

    /// A client on a runner asked egress none or open for an agent profile whose key the runner
    /// brokers: without the proxy the key would be the sandbox's to read.
    #[test]
    fn a_brokered_credential_is_never_handed_over_without_the_proxy() {
        let brokers = [Broker {
            credential: "ANTHROPIC_API_KEY".into(),
            api: super::super::BrokeredApi::Anthropic,
        }];
        let key = || vec!["ANTHROPIC_API_KEY".to_string(), "OTHER".to_string()];
        for mode in [EgressMode::None, EgressMode::Open] {
            let asked = Asked {
                mode: Some(mode),
                ..Asked::default()
            };
            let mut agent = inputs(asked, None);
            agent.profile_mode = Some(EgressMode::Policy);
            agent.profile_name = Some("claude-code");
            agent.brokers = &brokers;
            let e = resolve(&agent, key()).unwrap_err();
            assert_eq!(e.field, Field::Mode);
            assert!(
                e.message
                    .contains("`ANTHROPIC_API_KEY` (profile `claude-code`) is brokered")
                    && e.message.contains("use egress policy"),
                "{}",
                e.message
            );
            // A secret that is not brokered passes in clear, as asked.
            let (_, _, left) = resolve(&agent, vec!["OTHER".to_string()]).unwrap();
            assert_eq!(left, ["OTHER"]);
        }
        // With the proxy the key is held back from the sandbox and brokered.
        let mut agent = inputs(Asked::default(), None);
        agent.profile_mode = Some(EgressMode::Policy);
        agent.brokers = &brokers;
        let (spec, _, left) = resolve(&agent, key()).unwrap();
        assert_eq!(left, ["OTHER"]);
        assert_eq!(spec.brokers, brokers);
    }

    #[test]
    fn a_ceiling_refuses_hosts_beyond_it_by_name() {
        let ceiling = vec!["*.pythonhosted.org".to_string(), "pypi.org".to_string()];
        let allow = vec!["pypi.org".to_string(), "evil.example".to_string()];
        let asked = Asked {
            allow: &allow,
            ..Asked::default()
        };
        let e = resolve(&inputs(asked, Some(&ceiling)), vec![]).unwrap_err();
        assert_eq!(e.field, Field::Allow);
        assert!(e.message.contains("`evil.example`"), "{}", e.message);
        let allow = vec!["pypi.org:443".to_string()];
        let asked = Asked {
            allow: &allow,
            ..Asked::default()
        };
        let (spec, network, _) = resolve(&inputs(asked, Some(&ceiling)), vec![]).unwrap();
        assert_eq!(spec.mode, EgressMode::Policy);
        assert_eq!(spec.allow, ["pypi.org:443"]);
        assert_eq!(network, NetworkMode::None);
    }

    #[test]
    fn a_ceiling_refuses_open_egress_networks_and_profile_defaults() {
        let ceiling = vec!["pypi.org".to_string()];
        let open = Asked {
            mode: Some(EgressMode::Open),
            ..Asked::default()
        };
        assert_eq!(
            resolve(&inputs(open, Some(&ceiling)), vec![])
                .unwrap_err()
                .field,
            Field::Mode
        );
        let bridge = NetworkMode::Bridge;
        let mut with_net = inputs(Asked::default(), Some(&ceiling));
        with_net.network_asked = Some(&bridge);
        assert_eq!(
            resolve(&with_net, vec![]).unwrap_err().field,
            Field::Network
        );
        let defaults = vec!["api.anthropic.com:443".to_string()];
        let mut agent = inputs(Asked::default(), Some(&ceiling));
        agent.profile_mode = Some(EgressMode::Policy);
        agent.profile_allow = &defaults;
        agent.profile_name = Some("claude-code");
        let e = resolve(&agent, vec![]).unwrap_err();
        assert!(
            e.message.contains("api.anthropic.com:443")
                && e.message.contains("profile `claude-code`"),
            "{}",
            e.message
        );
        let forwards = vec!["github.com:22".to_string()];
        let tcp = Asked {
            tcp: &forwards,
            ..Asked::default()
        };
        assert_eq!(
            resolve(&inputs(tcp, Some(&ceiling)), vec![])
                .unwrap_err()
                .field,
            Field::Tcp
        );
        let wide = vec!["github.com:22".to_string()];
        assert!(resolve(&inputs(tcp, Some(&wide)), vec![]).is_ok());
    }

    #[test]
    fn without_a_ceiling_modes_follow_their_precedence() {
        let allow = vec!["example.org".to_string()];
        let asked = Asked {
            allow: &allow,
            ..Asked::default()
        };
        let (spec, _, _) = resolve(&inputs(asked, None), vec![]).unwrap();
        assert_eq!(spec.mode, EgressMode::Policy);
        let (spec, net, _) = resolve(&inputs(Asked::default(), None), vec![]).unwrap();
        assert_eq!((spec.mode, net), (EgressMode::None, NetworkMode::None));
        let open = Asked {
            mode: Some(EgressMode::Open),
            ..Asked::default()
        };
        let (spec, net, _) = resolve(&inputs(open, None), vec![]).unwrap();
        assert_eq!((spec.mode, net), (EgressMode::Open, NetworkMode::Bridge));
        let none_with_hosts = Asked {
            mode: Some(EgressMode::None),
            allow: &allow,
            ..Asked::default()
        };
        assert_eq!(
            resolve(&inputs(none_with_hosts, None), vec![])
                .unwrap_err()
                .field,
            Field::Allow
        );
    }

    #[test]
    fn injection_hosts_need_policy_and_lie_within_a_ceiling() {
        let inject = vec![Inject::parse_flag("git.example.org=Authorization:T").unwrap()];
        let (spec, network, _) =
            resolve_with_inject(&inputs(Asked::default(), None), &inject, vec![]).unwrap();
        assert_eq!(
            (spec.mode, network),
            (EgressMode::Policy, NetworkMode::None)
        );
        assert_eq!(spec.inject, inject);
        let open = Asked {
            mode: Some(EgressMode::Open),
            ..Asked::default()
        };
        let e = resolve_with_inject(&inputs(open, None), &inject, vec![]).unwrap_err();
        assert_eq!(e.field, Field::Inject);
        let ceiling = vec!["github.com".to_string()];
        let e = resolve_with_inject(&inputs(Asked::default(), Some(&ceiling)), &inject, vec![])
            .unwrap_err();
        assert_eq!(e.field, Field::Inject);
        assert!(e.message.contains("git.example.org:443"), "{}", e.message);
        let wide = vec!["*.example.org:443".to_string()];
        assert!(
            resolve_with_inject(&inputs(Asked::default(), Some(&wide)), &inject, vec![]).is_ok()
        );
    }
}
