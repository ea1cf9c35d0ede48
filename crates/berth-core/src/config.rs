//! Configuration files: `berth.toml` in the workspace and `~/.config/berth/config.toml`.
//!
//! Each file may set the defaults of `berth run`'s options; flags override files, and the
//! workspace file overrides the user's file. An unknown key is an error naming key and file.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::{Fallback, Isolation, NetworkMode, PullPolicy, UserSpec, WorkspaceMode};
use crate::units;

/// A configuration file as written. Every field is optional; unknown keys are refused.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub image: Option<String>,
    pub pull: Option<String>,
    pub workspace_mode: Option<String>,
    /// Copy mode's upload limit, e.g. `"2g"`.
    pub copy_limit: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<CpuValue>,
    #[serde(default, deserialize_with = "pids_value")]
    pub pids: Option<i64>,
    /// The disk limit (`--disk`), e.g. `"10g"`.
    pub disk: Option<String>,
    pub timeout: Option<String>,
    pub grace: Option<String>,
    pub network: Option<String>,
    /// `runc` or `gvisor` (`--isolation`).
    pub isolation: Option<String>,
    pub read_only: Option<bool>,
    pub user: Option<String>,
    pub fallback: Option<String>,
    pub state_dir: Option<String>,
    #[serde(default)]
    pub allowed_paths: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `[profiles.NAME]` tables: new profiles, or overrides of built-in ones.
    #[serde(default)]
    pub profiles: BTreeMap<String, crate::profile::ProfileConfig>,
    /// `[engines.NAME]` tables: engines chosen with `--engine NAME`.
    #[serde(default)]
    pub engines: BTreeMap<String, crate::engine::EngineConfig>,
    /// `[pool.NAME]` tables: a warm pool for the profile (or, if no profile has that name, the
    /// image) NAME.
    #[serde(default)]
    pub pool: BTreeMap<String, PoolConfig>,
    /// `[egress]`: the proxy's mode and allow rules.
    #[serde(default)]
    pub egress: EgressConfig,
}

/// `[egress]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// `none`, `policy` or `open`.
    pub mode: Option<String>,
    /// Allow rules (`HOST[:PORT]`, `*.DOMAIN`, `[METHOD,…] HOST/PATH`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Named rule sets (`package-registries`, `github`, `anthropic`, `openai`).
    #[serde(default)]
    pub presets: Vec<String>,
    /// Raw TCP forwards, `HOST:PORT`.
    #[serde(default)]
    pub tcp: Vec<String>,
    /// `[egress.inject."HOST[:PORT]"]`: HTTPS hosts whose requests get a header from the host's
    /// environment (see `berth_core::egress::Inject`).
    #[serde(default)]
    pub inject: BTreeMap<String, InjectConfig>,
}

impl EgressConfig {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The injection hosts, checked; an error names the table.
    pub fn inject_entries(&self) -> Result<Vec<crate::egress::Inject>, InjectTableError> {
        self.inject
            .iter()
            .map(|(host, c)| {
                crate::egress::Inject::new(host, &c.header, &c.env, &c.methods, &c.paths).map_err(
                    |source| InjectTableError {
                        table: format!("[egress.inject.{}]", toml::Value::String(host.clone())),
                        source,
                    },
                )
            })
            .collect()
    }
}

/// An `[egress.inject."HOST"]` table that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}: {source}")]
pub struct InjectTableError {
    /// The table's name as written in TOML.
    pub table: String,
    pub source: crate::egress::InjectError,
}

/// `[egress.inject."HOST[:PORT]"]` as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// The header's name (`Authorization`).
    pub header: String,
    /// The environment variable of berth's host holding the header's whole value.
    pub env: String,
    /// Only these methods (upper-case); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Only paths below these prefixes; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// A warm pool as written: `[pool.claude-code] size = 2`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Started containers kept ready.
    pub size: u32,
    /// A ready container older than this is replaced (`30m`).
    pub idle_ttl: Option<String>,
}

/// The most containers one pool keeps ready.
pub const MAX_POOL_SIZE: u32 = 64;

/// A `[pool.NAME]` table that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("size {0} is more than {MAX_POOL_SIZE} containers")]
    TooLarge(u32),
    #[error("idle_ttl: {0}")]
    IdleTtl(units::UnitError),
}

impl PoolConfig {
    /// The pool for `name`, checked.
    pub fn to_spec(&self, name: &str) -> Result<crate::held::PoolSpec, PoolError> {
        if self.size > MAX_POOL_SIZE {
            return Err(PoolError::TooLarge(self.size));
        }
        let idle_ttl = match &self.idle_ttl {
            Some(t) => units::parse_duration(t).map_err(PoolError::IdleTtl)?,
            None => crate::held::DEFAULT_POOL_TTL,
        };
        Ok(crate::held::PoolSpec {
            name: name.to_string(),
            size: self.size,
            idle_ttl,
        })
    }
}

/// `pids` as written: an integer too large even for TOML's i64 is refused with the key and the
/// accepted range, like any other out-of-range count (the rest are checked in `validate`).
fn pids_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = i128::deserialize(d)?;
    i64::try_from(value).map(Some).map_err(|_| {
        let message = units::parse_pids(&value.to_string())
            .err()
            .map_or_else(String::new, |e| e.to_string());
        serde::de::Error::custom(format!("key `pids`: {message}"))
    })
}

/// `cpus = 2` and `cpus = "1.5"` are both natural to write.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CpuValue {
    Number(f64),
    Text(String),
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// Parses a configuration file's text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<ConfigFile, ConfigError> {
    let config: ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        message: e.message().to_string() + &location(text, e.span()),
    })?;
    config.validate(file)?;
    Ok(config)
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

impl ConfigFile {
    /// Checks every value now, so a bad value is reported with its key and file even when a
    /// flag would override it.
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            message: format!("key `{key}`: {message}"),
        };
        if let Some(v) = &self.pull {
            v.parse::<PullPolicy>().map_err(|e| bad("pull", e))?;
        }
        if let Some(v) = &self.workspace_mode {
            v.parse::<WorkspaceMode>()
                .map_err(|e| bad("workspace_mode", e))?;
        }
        if let Some(v) = &self.copy_limit {
            units::parse_size(v).map_err(|e| bad("copy_limit", e.to_string()))?;
        }
        if let Some(v) = &self.memory {
            units::parse_memory(v).map_err(|e| bad("memory", e.to_string()))?;
        }
        if let Some(v) = &self.cpus {
            self.cpus_nano(v).map_err(|e| bad("cpus", e.to_string()))?;
        }
        if let Some(p) = self.pids {
            units::check_pids(p).map_err(|e| bad("pids", e.to_string()))?;
        }
        if let Some(v) = &self.disk {
            units::parse_disk(v).map_err(|e| bad("disk", e.to_string()))?;
        }
        for (key, v) in [("timeout", &self.timeout), ("grace", &self.grace)] {
            if let Some(v) = v {
                units::parse_duration(v).map_err(|e| bad(key, e.to_string()))?;
            }
        }
        if let Some(v) = &self.network {
            NetworkMode::parse(v).map_err(|e| bad("network", e.to_string()))?;
        }
        if let Some(v) = &self.isolation {
            v.parse::<Isolation>().map_err(|e| bad("isolation", e))?;
        }
        if let Some(v) = &self.user {
            UserSpec::parse(v).map_err(|e| bad("user", e.to_string()))?;
        }
        if let Some(v) = &self.fallback {
            v.parse::<Fallback>().map_err(|e| bad("fallback", e))?;
        }
        for (name, pool) in &self.pool {
            pool.to_spec(name)
                .map_err(|e| bad(&format!("pool.{name}"), e.to_string()))?;
        }
        if let Some(v) = &self.egress.mode {
            crate::egress::EgressMode::parse(v).map_err(|e| bad("egress.mode", e.to_string()))?;
        }
        crate::egress::expand(&self.egress.allow, &self.egress.presets)
            .map_err(|e| bad("egress.allow", e.to_string()))?;
        for t in &self.egress.tcp {
            crate::egress::parse_tcp(t).map_err(|e| bad("egress.tcp", e.to_string()))?;
        }
        self.egress
            .inject_entries()
            .map_err(|e| bad("egress.inject", e.to_string()))?;
        for name in self.env.keys() {
            crate::spec::check_env_name(name)
                .map_err(|e| bad(&format!("env.{name}"), e.to_string()))?;
        }
        for (name, engine) in &self.engines {
            engine
                .validate()
                .map_err(|(field, message)| bad(&format!("engines.{name}.{field}"), message))?;
        }
        Ok(())
    }

    fn cpus_nano(&self, v: &CpuValue) -> Result<i64, units::UnitError> {
        match v {
            CpuValue::Number(n) => units::cpus_from_f64(*n),
            CpuValue::Text(t) => units::parse_cpus(t),
        }
    }

    /// Layers `over` on top of `self`: set values replace, lists and tables merge.
    pub fn merged(mut self, over: ConfigFile) -> ConfigFile {
        macro_rules! take {
            ($($field:ident),*) => { $( if over.$field.is_some() { self.$field = over.$field; } )* };
        }
        take!(
            image,
            pull,
            workspace_mode,
            copy_limit,
            memory,
            cpus,
            pids,
            disk,
            timeout,
            grace,
            network,
            isolation,
            read_only,
            user,
            fallback,
            state_dir
        );
        self.allowed_paths.extend(over.allowed_paths);
        self.env.extend(over.env);
        // Profiles are layered by source in `profile::resolve_all`; here the last file wins.
        self.profiles.extend(over.profiles);
        self.engines.extend(over.engines);
        self.pool.extend(over.pool);
        if over.egress.mode.is_some() {
            self.egress.mode = over.egress.mode;
        }
        self.egress.allow.extend(over.egress.allow);
        self.egress.presets.extend(over.egress.presets);
        self.egress.tcp.extend(over.egress.tcp);
        self.egress.inject.extend(over.egress.inject);
        self
    }

    /// The engine names `over` would redefine: an engine in the workspace's `berth.toml` must not
    /// silently replace one of the user's (a cloned repository could send runs and their secrets
    /// elsewhere).
    pub fn redefined_engines(&self, over: &ConfigFile) -> Vec<String> {
        over.engines
            .keys()
            .filter(|name| self.engines.contains_key(*name))
            .cloned()
            .collect()
    }

    /// The CPU setting in nano-CPUs, if set (already validated).
    pub fn nano_cpus(&self) -> Option<i64> {
        self.cpus.as_ref().and_then(|v| self.cpus_nano(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_keys() {
        let c = parse("berth.toml", "image = \"x\"\nmemory = \"1g\"\ncpus = 1.5\ndisk = \"10g\"\nallowed_paths = [\"/srv\"]\n[env]\nA = \"1\"\n").unwrap();
        assert_eq!(c.image.as_deref(), Some("x"));
        assert_eq!(c.disk.as_deref(), Some("10g"));
        assert_eq!(c.nano_cpus(), Some(1_500_000_000));
        assert_eq!(c.allowed_paths, ["/srv"]);
        assert_eq!(c.env["A"], "1");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("/p/berth.toml", "image = \"x\"\nmemroy = \"1g\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/p/berth.toml:") && e.contains("memroy") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let e = parse("c.toml", "timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("`timeout`") && e.contains("soon"),
            "{e}"
        );
        let e = parse("c.toml", "network = \"host\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`network`"), "{e}");
        let e = parse("c.toml", "isolation = \"kata\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`isolation`") && e.contains("runc or gvisor"),
            "{e}"
        );
        let c = parse("c.toml", "isolation = \"gvisor\"").unwrap();
        assert_eq!(c.isolation.as_deref(), Some("gvisor"));
        let e = parse("c.toml", "[env]\n\"A B\" = \"1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("env.A B"), "{e}");
    }

    #[test]
    fn numbers_out_of_range_name_their_key() {
        for (text, key, accepted) in [
            ("timeout = \"1e20\"", "`timeout`", "90s"),
            ("grace = \"99999999999999h\"", "`grace`", "365 days"),
            ("memory = \"99999999999g\"", "`memory`", "1 TiB"),
            ("copy_limit = \"2000g\"", "`copy_limit`", "1 TiB"),
            ("pids = 99999999", "`pids`", "4194304"),
            ("pids = -1", "`pids`", "4194304"),
            ("disk = \"99999g\"", "`disk`", "64 TiB"),
            ("disk = \"lots\"", "`disk`", "10g"),
            ("cpus = 1e300", "`cpus`", "1024"),
            ("cpus = nan", "`cpus`", "1024"),
            ("cpus = \"inf\"", "`cpus`", "1024"),
            ("[pool.x]\nsize = 1\nidle_ttl = \"1e20\"", "idle_ttl", "90s"),
        ] {
            let e = parse("c.toml", text).unwrap_err().to_string();
            assert!(
                e.contains("c.toml") && e.contains(key) && e.contains(accepted),
                "{text}: {e}"
            );
        }
        // Too large for TOML itself: the line is named.
        let e = parse("c.toml", "image = \"x\"\npids = 99999999999999999999")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("`pids`") && e.contains("4194304"),
            "{e}"
        );
        let e = parse("c.toml", "pids = \"many\"").unwrap_err().to_string();
        assert!(e.contains("many") || e.contains("string"), "{e}");
    }

    #[test]
    fn engine_tables_are_checked_with_their_key() {
        let c = parse(
            "c.toml",
            "[engines.box]\nhost = \"ssh://ann@box:2222\"\nidentity = \"~/.ssh/k\"\n",
        )
        .unwrap();
        assert_eq!(c.engines["box"].identity.as_deref(), Some("~/.ssh/k"));
        let e = parse("c.toml", "[engines.box]\nhost = \"tcp://box:2376\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("`engines.box.ca`"),
            "{e}"
        );
        let e = parse("c.toml", "[engines.box]\nhost = \"ssh://b\"\nport = 22\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("port") && e.contains("line"),
            "{e}"
        );
        let user = parse("u", "[engines.a]\nhost = \"ssh://a\"\n").unwrap();
        let ws = parse(
            "w",
            "[engines.a]\nhost = \"ssh://evil\"\n[engines.b]\nhost = \"ssh://b\"",
        )
        .unwrap();
        assert_eq!(user.redefined_engines(&ws), ["a"]);
    }

    #[test]
    fn pools() {
        let c = parse(
            "b.toml",
            "[pool.claude-code]\nsize = 2\n[pool.\"img:1\"]\nsize = 1\nidle_ttl = \"5m\"\n",
        )
        .unwrap();
        let spec = c.pool["img:1"].to_spec("img:1").unwrap();
        assert_eq!((spec.size, spec.idle_ttl.as_secs()), (1, 300));
        assert_eq!(
            c.pool["claude-code"]
                .to_spec("claude-code")
                .unwrap()
                .idle_ttl,
            crate::held::DEFAULT_POOL_TTL
        );
        let e = parse("b.toml", "[pool.x]\nsize = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.x") && e.contains("64"), "{e}");
        let e = parse("b.toml", "[pool.x]\nsize = 1\nidle_ttl = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.x") && e.contains("idle_ttl"), "{e}");
        let e = parse("b.toml", "[pool.x]\nsise = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sise"), "{e}");
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let user = parse(
            "u",
            "image = \"a\"\nmemory = \"1g\"\nallowed_paths = [\"/x\"]",
        )
        .unwrap();
        let ws = parse("w", "image = \"b\"\nallowed_paths = [\"/y\"]").unwrap();
        let m = user.merged(ws);
        assert_eq!(m.image.as_deref(), Some("b"));
        assert_eq!(m.memory.as_deref(), Some("1g"));
        assert_eq!(m.allowed_paths, ["/x", "/y"]);
    }
}
