//! Trust in a workspace's `berth.toml`.
//!
//! In the default `rw` workspace mode a sandboxed run can write `berth.toml` into its workspace,
//! and the next `berth run` there reads it. So a workspace file the user has not trusted (`berth
//! trust`, which records the file's SHA-256) may only *narrow* what a run gets compared with not
//! having the file: less memory, a shorter timeout, `network = "none"`, `read_only = true`… Any
//! key that widens — `allowed_paths`, `[env]`, `state_dir`, engines, pools, a profile's mounts,
//! credentials or secrets, another network — needs trust.
//!
//! The rule compares each key the file sets with its value without the file: the user's config
//! (with the built-in profiles under it, see [`base`]) and berth run's defaults. Choosing the
//! image (and `pull`) is neutral: whatever image runs, it runs in the same sandbox. A profile's
//! `description` and `output` are neutral too; its argv (`command`, `prompt`, `resume_args`,
//! `continue_args`) may be set for a new profile (it runs only in the sandbox, when asked for by
//! name) but not changed for an existing one, whose credentials would reach the new argv.
//!
//! Every field of [`ConfigFile`] and [`ProfileConfig`] is destructured without `..`, so a new
//! field does not compile until it is classified here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigFile, CpuValue};
use crate::profile::ProfileConfig;
use crate::spec::{Fallback, NetworkMode, Resources, UserSpec, WorkspaceMode};
use crate::units;

use crate::spec::{DEFAULT_GRACE, DEFAULT_TIMEOUT};

/// One key a file sets, as `key = value`, and whether it widens what a run gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub widens: bool,
}

/// What a run gets without the workspace file: the user's config, with its profiles layered on
/// the built-in ones (so a workspace file is compared with the profile it would change).
pub fn base(user: &ConfigFile, builtins: Vec<(String, ProfileConfig)>) -> ConfigFile {
    let mut profiles: BTreeMap<String, ProfileConfig> = builtins.into_iter().collect();
    for (name, over) in &user.profiles {
        let layered = match profiles.get(name) {
            Some(under) => layer(under, over),
            None => over.clone(),
        };
        profiles.insert(name.clone(), layered);
    }
    ConfigFile {
        profiles,
        ..user.clone()
    }
}

/// `over`'s set fields on top of `under` (each field is replaced whole, as `profile::resolve_all`
/// does).
fn layer(under: &ProfileConfig, over: &ProfileConfig) -> ProfileConfig {
    use serde_json::Value;
    match (serde_json::to_value(under), serde_json::to_value(over)) {
        (Ok(Value::Object(mut fields)), Ok(Value::Object(set))) => {
            fields.extend(set.into_iter().filter(|(_, v)| !v.is_null()));
            serde_json::from_value(Value::Object(fields)).unwrap_or_else(|_| over.clone())
        }
        _ => over.clone(),
    }
}

/// The keys of `file` that widen settings relative to `base` (see [`base`]).
pub fn widening_keys(file: &ConfigFile, base: &ConfigFile) -> Vec<String> {
    settings(file, base)
        .into_iter()
        .filter(|s| s.widens)
        .map(|s| s.key)
        .collect()
}

/// Every key `file` sets, with its value and whether it widens relative to `base`.
pub fn settings(file: &ConfigFile, base: &ConfigFile) -> Vec<Setting> {
    let ConfigFile {
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
        state_dir,
        allowed_paths,
        env,
        profiles,
        engines,
        pool,
        egress,
    } = file;
    let defaults = Resources::default();
    let mut out = Settings::default();
    if let Some(v) = image {
        out.push("image", text(v), false);
    }
    if let Some(v) = pull {
        out.push("pull", text(v), false);
    }
    if let Some(v) = workspace_mode {
        let widens = !mode_narrows(v, base.workspace_mode.as_deref().unwrap_or("rw"));
        out.push("workspace_mode", text(v), widens);
    }
    if let Some(v) = copy_limit {
        let base = size(base.copy_limit.as_deref()).unwrap_or(crate::spec::DEFAULT_COPY_LIMIT);
        out.push("copy_limit", text(v), !at_most(size(Some(v)), base));
    }
    if let Some(v) = memory {
        let base = mem(base.memory.as_deref()).unwrap_or(defaults.memory_bytes);
        out.push("memory", text(v), !at_most(mem(Some(v)), base));
    }
    if let Some(v) = cpus {
        let base = base.nano_cpus().unwrap_or(defaults.nano_cpus);
        out.push("cpus", cpu_text(v), !at_most(file.nano_cpus(), base));
    }
    if let Some(v) = pids {
        out.push(
            "pids",
            v.to_string(),
            !at_most(Some(*v), base.pids.unwrap_or(defaults.pids)),
        );
    }
    if let Some(v) = disk {
        out.push(
            "disk",
            text(v),
            !disk_narrows(disk_size(Some(v)), disk_size(base.disk.as_deref())),
        );
    }
    if let Some(v) = timeout {
        let base = duration(base.timeout.as_deref()).unwrap_or(DEFAULT_TIMEOUT);
        out.push(
            "timeout",
            text(v),
            !timeout_narrows(duration(Some(v)), base),
        );
    }
    if let Some(v) = grace {
        let base = duration(base.grace.as_deref()).unwrap_or(DEFAULT_GRACE);
        out.push("grace", text(v), !at_most(duration(Some(v)), base));
    }
    if let Some(v) = network {
        let widens = !network_narrows(v, base.network.as_deref().unwrap_or("none"));
        out.push("network", text(v), widens);
    }
    if let Some(v) = isolation {
        let widens = !isolation_narrows(v, base.isolation.as_deref());
        out.push("isolation", text(v), widens);
    }
    if let Some(v) = read_only {
        // `read_only = false` only widens when the base says true.
        let widens = !v && base.read_only.unwrap_or(false);
        out.push("read_only", v.to_string(), widens);
    }
    if let Some(v) = user {
        let same = base
            .user
            .as_deref()
            .and_then(parse_user)
            .is_some_and(|b| parse_user(v) == Some(b));
        out.push("user", text(v), !same);
    }
    if let Some(v) = fallback {
        let narrows = matches!(v.parse::<Fallback>(), Ok(Fallback::None))
            || base.fallback.as_deref() == Some(v.as_str());
        out.push("fallback", text(v), !narrows);
    }
    if let Some(v) = state_dir {
        out.push("state_dir", text(v), base.state_dir.as_ref() != Some(v));
    }
    if !allowed_paths.is_empty() {
        // Paths are relative to the file naming them, so no entry is ever the base's own.
        out.push("allowed_paths", value(allowed_paths), true);
    }
    for (name, v) in env {
        let same = base.env.get(name) == Some(v);
        out.push(&format!("env.{}", key_part(name)), text(v), !same);
    }
    for (name, profile) in profiles {
        profile_settings(&mut out, name, profile, base);
    }
    for (name, engine) in engines {
        out.push(
            &format!("engines.{}", key_part(name)),
            format!("{{ host = {} }}", text(&engine.host)),
            true,
        );
    }
    for (name, p) in pool {
        let narrows = match base.pool.get(name) {
            Some(b) => {
                let ttl = |p: &crate::config::PoolConfig| {
                    duration(p.idle_ttl.as_deref()).unwrap_or(crate::held::DEFAULT_POOL_TTL)
                };
                p.size <= b.size && ttl(p) <= ttl(b)
            }
            None => p.size == 0,
        };
        let mut shown = format!("{{ size = {}", p.size);
        if let Some(ttl) = &p.idle_ttl {
            shown += &format!(", idle_ttl = {}", text(ttl));
        }
        out.push(&format!("pool.{}", key_part(name)), shown + " }", !narrows);
    }
    egress_settings(&mut out, egress, &base.egress);
    out.0
}

/// `[egress]`: a mode beyond the base's (none < policy < open) widens, and so does any rule,
/// preset or forward the base does not have; fewer entries narrow.
fn egress_settings(
    out: &mut Settings,
    file: &crate::config::EgressConfig,
    base: &crate::config::EgressConfig,
) {
    let crate::config::EgressConfig {
        mode,
        allow,
        presets,
        tcp,
        inject,
    } = file;
    if let Some(v) = mode {
        out.push(
            "egress.mode",
            text(v),
            !egress_mode_narrows(v, base.mode.as_deref()),
        );
    }
    for (key, v, was) in [
        ("egress.allow", allow, &base.allow),
        ("egress.presets", presets, &base.presets),
        ("egress.tcp", tcp, &base.tcp),
    ] {
        if !v.is_empty() {
            out.push(key, value(v), !v.iter().all(|item| was.contains(item)));
        }
    }
    // An injection host sends a value of the host's environment out: only the base's own
    // entries, unchanged, leave it as it was.
    for (host, entry) in inject {
        out.push(
            &format!("egress.inject.{}", key_part(host)),
            value(entry),
            base.inject.get(host) != Some(entry),
        );
    }
}

/// `none` < `policy` < `open`; an unreadable value widens.
fn egress_mode_narrows(new: &str, base: Option<&str>) -> bool {
    use crate::egress::EgressMode;
    let base = base
        .and_then(|b| EgressMode::parse(b).ok())
        .unwrap_or(EgressMode::None);
    EgressMode::parse(new).is_ok_and(|n| n <= base)
}

/// The settings of one `[profiles.NAME]` table, against the profile without the file (or an
/// empty one) and the top-level base the run would fall back to.
fn profile_settings(out: &mut Settings, name: &str, file: &ProfileConfig, base: &ConfigFile) {
    let ProfileConfig {
        description,
        image,
        command,
        prompt,
        env,
        secrets,
        credentials,
        conflicts,
        mounts,
        memory,
        cpus,
        pids,
        disk,
        network,
        isolation,
        timeout,
        output,
        lifecycle,
        max_containers,
        idle_ttl,
        agent,
        sessions,
        resume_args,
        continue_args,
        egress,
        allow_hosts,
        broker,
    } = file;
    let existing = base.profiles.get(name);
    let empty = ProfileConfig::default();
    let under = existing.unwrap_or(&empty);
    let key = |field: &str| format!("profiles.{}.{field}", key_part(name));
    let defaults = Resources::default();
    let mut set = |field: &str, shown: String, widens: bool| out.push(&key(field), shown, widens);

    for (field, v) in [
        ("description", description),
        ("image", image),
        ("output", output),
    ] {
        if let Some(v) = v {
            set(field, text(v), false);
        }
    }
    // The argv of an existing profile, which may carry credentials, stays as it is.
    if let Some(v) = command {
        set(
            "command",
            value(v),
            existing.is_some() && under.command.as_ref() != Some(v),
        );
    }
    if let Some(v) = prompt {
        set(
            "prompt",
            text(v),
            existing.is_some() && under.prompt.as_ref() != Some(v),
        );
    }
    for (field, v, was) in [
        ("resume_args", resume_args, &under.resume_args),
        ("continue_args", continue_args, &under.continue_args),
    ] {
        if let Some(v) = v {
            set(
                field,
                value(v),
                existing.is_some() && was.as_ref() != Some(v),
            );
        }
    }
    if let Some(v) = env {
        let was = under.env.clone().unwrap_or_default();
        for (k, val) in v {
            set(
                &format!("env.{}", key_part(k)),
                text(val),
                was.get(k) != Some(val),
            );
        }
    }
    for (field, v, was) in [
        ("secrets", secrets, &under.secrets),
        ("credentials", credentials, &under.credentials),
        ("mounts", mounts, &under.mounts),
    ] {
        if let Some(v) = v {
            let was = was.clone().unwrap_or_default();
            set(field, value(v), !v.iter().all(|item| was.contains(item)));
        }
    }
    if let Some(v) = conflicts {
        let was = under.conflicts.clone().unwrap_or_default();
        set("conflicts", value(v), !was.iter().all(|g| v.contains(g)));
    }
    if let Some(v) = memory {
        let was = mem(under.memory.as_deref().or(base.memory.as_deref()))
            .unwrap_or(defaults.memory_bytes);
        set("memory", text(v), !at_most(mem(Some(v)), was));
    }
    if let Some(v) = cpus {
        let was = match under.cpus {
            Some(c) => units::cpus_from_f64(c).ok(),
            None => base.nano_cpus(),
        }
        .unwrap_or(defaults.nano_cpus);
        set(
            "cpus",
            value(v),
            !at_most(units::cpus_from_f64(*v).ok(), was),
        );
    }
    if let Some(v) = pids {
        let was = under.pids.or(base.pids).unwrap_or(defaults.pids);
        set("pids", v.to_string(), !at_most(Some(*v), was));
    }
    if let Some(v) = disk {
        let was = disk_size(under.disk.as_deref().or(base.disk.as_deref()));
        set("disk", text(v), !disk_narrows(disk_size(Some(v)), was));
    }
    if let Some(v) = network {
        let was = under
            .network
            .as_deref()
            .or(base.network.as_deref())
            .unwrap_or("none");
        set("network", text(v), !network_narrows(v, was));
    }
    if let Some(v) = isolation {
        let was = under.isolation.as_deref().or(base.isolation.as_deref());
        set("isolation", text(v), !isolation_narrows(v, was));
    }
    if let Some(v) = timeout {
        let was = duration(under.timeout.as_deref().or(base.timeout.as_deref()))
            .unwrap_or(DEFAULT_TIMEOUT);
        set("timeout", text(v), !timeout_narrows(duration(Some(v)), was));
    }
    if let Some(v) = lifecycle {
        // A persistent container outlives the run: what one run leaves there, the next finds.
        let was = under.lifecycle.as_deref().unwrap_or("ephemeral");
        set("lifecycle", text(v), v != "ephemeral" && v != was);
    }
    if let Some(v) = max_containers {
        let was = under
            .max_containers
            .unwrap_or(crate::held::DEFAULT_MAX_CONTAINERS);
        set("max_containers", v.to_string(), *v > was);
    }
    if let Some(v) = idle_ttl {
        let was =
            duration(under.idle_ttl.as_deref()).unwrap_or(crate::held::DEFAULT_PERSISTENT_TTL);
        set("idle_ttl", text(v), !at_most(duration(Some(v)), was));
    }
    if let Some(v) = egress {
        set(
            "egress",
            text(v),
            !egress_mode_narrows(v, under.egress.as_deref()),
        );
    }
    if let Some(v) = allow_hosts {
        let was = under.allow_hosts.clone().unwrap_or_default();
        set(
            "allow_hosts",
            value(v),
            !v.iter().all(|item| was.contains(item)),
        );
    }
    // A brokered credential stays out of the sandbox: dropping one widens, adding one narrows.
    if let Some(v) = broker {
        let was = under.broker.clone().unwrap_or_default();
        set(
            "broker",
            value(v),
            !was.iter().all(|(k, api)| v.get(k) == Some(api)),
        );
    }
    // The agent names the host directory mounted as its sessions; `sessions` is where.
    for (field, v, was) in [
        ("agent", agent, &under.agent),
        ("sessions", sessions, &under.sessions),
    ] {
        if let Some(v) = v {
            set(field, text(v), was.as_ref() != Some(v));
        }
    }
}

#[derive(Default)]
struct Settings(Vec<Setting>);

impl Settings {
    fn push(&mut self, key: &str, value: String, widens: bool) {
        self.0.push(Setting {
            key: key.to_string(),
            value,
            widens,
        });
    }
}

/// `new` is known and no more than `base`; an unreadable value widens.
fn at_most<T: PartialOrd>(new: Option<T>, base: T) -> bool {
    new.is_some_and(|n| n <= base)
}

/// A disk limit narrows when it is new (the base has none) or no more than the base's; an
/// unreadable value widens. No value removes a limit, so a file cannot drop one.
fn disk_narrows(new: Option<u64>, base: Option<u64>) -> bool {
    match (new, base) {
        (Some(n), Some(b)) => n <= b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A timeout of 0 disables it: the longest of all.
fn timeout_narrows(new: Option<Duration>, base: Duration) -> bool {
    match new {
        Some(n) if n == base => true,
        Some(n) if n.is_zero() => false,
        Some(n) => base.is_zero() || n <= base,
        None => false,
    }
}

/// gVisor always narrows; runc only when the base is runc too (or says nothing).
fn isolation_narrows(new: &str, base: Option<&str>) -> bool {
    use crate::spec::Isolation;
    let base = base.map_or(Ok(Isolation::Runc), str::parse::<Isolation>);
    match (new.parse::<Isolation>(), base) {
        (Ok(Isolation::Gvisor), _) => true,
        (Ok(n), Ok(b)) => n == b,
        _ => false,
    }
}

/// `none` always narrows; another network only when it is the base's.
fn network_narrows(new: &str, base: &str) -> bool {
    match (NetworkMode::parse(new), NetworkMode::parse(base)) {
        (Ok(NetworkMode::None), _) => true,
        (Ok(n), Ok(b)) => n == b,
        _ => false,
    }
}

/// `none` always narrows, `ro` and `copy` narrow `rw` (copy leaves ignored files out);
/// worktree mode runs git on the host, so it is never a narrowing of another mode.
fn mode_narrows(new: &str, base: &str) -> bool {
    use WorkspaceMode::*;
    match (new.parse::<WorkspaceMode>(), base.parse::<WorkspaceMode>()) {
        (Ok(n), Ok(b)) => n == b || n == None || (b == Rw && matches!(n, Ro | Copy)),
        _ => false,
    }
}

fn parse_user(s: &str) -> Option<UserSpec> {
    UserSpec::parse(s).ok()
}

fn mem(v: Option<&str>) -> Option<u64> {
    units::parse_memory(v?).ok()
}

fn size(v: Option<&str>) -> Option<u64> {
    units::parse_size(v?).ok()
}

fn disk_size(v: Option<&str>) -> Option<u64> {
    units::parse_disk(v?).ok()
}

fn duration(v: Option<&str>) -> Option<Duration> {
    units::parse_duration(v?).ok()
}

/// A string as TOML writes it.
fn text(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Any value as TOML writes it inline.
fn value<T: Serialize + ?Sized>(v: &T) -> String {
    toml::Value::try_from(v)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn cpu_text(v: &CpuValue) -> String {
    match v {
        CpuValue::Number(n) => value(n),
        CpuValue::Text(t) => text(t),
    }
}

/// A key segment, quoted unless TOML allows it bare.
fn key_part(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        s.to_string()
    } else {
        text(s)
    }
}

/// The trust store (`$XDG_CONFIG_HOME/berth/trusted.toml`): each trusted workspace file's
/// canonical path with the SHA-256 of the contents the user trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStore {
    #[serde(default)]
    pub trusted: BTreeMap<String, String>,
}

/// Whether a workspace file is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustState {
    /// Trusted with exactly these contents.
    Trusted,
    /// Never trusted (or revoked).
    Untrusted,
    /// Trusted once, but its contents changed since.
    Changed,
}

impl std::fmt::Display for TrustState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Trusted => "trusted",
            Self::Untrusted => "not trusted",
            Self::Changed => "changed since it was trusted",
        })
    }
}

impl TrustStore {
    /// Parses the store's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            message: e.message().to_string(),
        })
    }

    /// The store as written to its file.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# Workspace berth.toml files trusted with `berth trust`: path = SHA-256 of the trusted contents.\n{body}")
    }

    /// Whether the file at `path` with contents hashing to `sha256` is trusted.
    pub fn state(&self, path: &str, sha256: &str) -> TrustState {
        match self.trusted.get(path) {
            Some(h) if h.eq_ignore_ascii_case(sha256) => TrustState::Trusted,
            Some(_) => TrustState::Changed,
            None => TrustState::Untrusted,
        }
    }

    pub fn trust(&mut self, path: &str, sha256: &str) {
        self.trusted.insert(path.to_string(), sha256.to_string());
    }

    /// Removes the record; says whether there was one.
    pub fn revoke(&mut self, path: &str) -> bool {
        self.trusted.remove(path).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    /// The widening keys of workspace text `ws` over user text `user` (built-ins under it).
    fn widens(user: &str, ws: &str) -> Vec<String> {
        let user = parse("u", user).unwrap();
        let base = base(&user, crate::profile::builtins("0.1.0"));
        widening_keys(&parse("w", ws).unwrap(), &base)
    }

    #[test]
    fn narrowing_and_neutral_keys_need_no_trust() {
        let none: &[String] = &[];
        for (user, ws) in [
            ("", "memory = \"64m\""),
            ("", "memory = \"2g\""),
            ("memory = \"4g\"", "memory = \"3g\""),
            ("", "cpus = 1"),
            ("", "cpus = \"0.5\""),
            ("", "pids = 100"),
            ("", "disk = \"10g\""),
            ("disk = \"10g\"", "disk = \"5g\""),
            ("", "[profiles.codex]\ndisk = \"20g\""),
            ("disk = \"10g\"", "[profiles.mine]\ndisk = \"10g\""),
            ("", "timeout = \"1m\""),
            ("timeout = \"0\"", "timeout = \"5h\""),
            ("", "grace = \"1s\""),
            ("", "isolation = \"gvisor\""),
            ("", "isolation = \"runc\""),
            ("isolation = \"gvisor\"", "[profiles.codex]\nisolation = \"gvisor\""),
            ("", "copy_limit = \"10m\""),
            ("", "read_only = true"),
            ("", "read_only = false"),
            ("", "network = \"none\""),
            ("network = \"bridge\"", "network = \"none\""),
            ("network = \"bridge\"", "network = \"bridge\""),
            ("", "workspace_mode = \"ro\""),
            ("", "workspace_mode = \"copy\""),
            ("", "workspace_mode = \"none\""),
            (
                "workspace_mode = \"worktree\"",
                "workspace_mode = \"worktree\"",
            ),
            ("", "fallback = \"none\""),
            ("user = \"1000\"", "user = \"1000\""),
            ("state_dir = \"s\"", "state_dir = \"s\""),
            ("", "image = \"anything:1\"\npull = \"always\""),
            ("[env]\nA = \"1\"", "[env]\nA = \"1\""),
            ("", "[pool.x]\nsize = 0"),
            (
                "[pool.x]\nsize = 3",
                "[pool.x]\nsize = 1\nidle_ttl = \"1m\"",
            ),
            (
                "",
                "[profiles.claude-code]\nimage = \"my/claude:1\"\nmemory = \"1g\"",
            ),
            (
                "",
                "[profiles.claude-code]\ncredentials = [\"ANTHROPIC_API_KEY\"]",
            ),
            (
                "",
                "[profiles.claude-code]\negress = \"policy\"\nallow_hosts = [\"api.anthropic.com:443\"]\ntimeout = \"5m\"",
            ),
            ("", "[egress]\nmode = \"none\""),
            (
                "[egress]\nallow = [\"a.org\", \"b.org\"]\npresets = [\"github\"]",
                "[egress]\nallow = [\"a.org\"]\nmode = \"none\"\npresets = [\"github\"]",
            ),
            ("[egress]\nmode = \"open\"", "[egress]\nmode = \"policy\""),
            (
                "",
                "[profiles.codex]\negress = \"none\"\nbroker = { OPENAI_API_KEY = \"openai\" }",
            ),
            (
                "",
                "[profiles.codex]\nnetwork = \"none\"\nlifecycle = \"ephemeral\"",
            ),
            (
                "",
                "[profiles.mine]\ncommand = [\"agent\", \"{prompt}\"]\nprompt = \"stdin\"",
            ),
            (
                "",
                "[profiles.mine]\nmax_containers = 2\nidle_ttl = \"1m\"\ncpus = 0.5",
            ),
            (
                "[profiles.p]\nmounts = [\"/a:/a\", \"/b:/b\"]",
                "[profiles.p]\nmounts = [\"/a:/a\"]",
            ),
        ] {
            assert_eq!(widens(user, ws), none, "user {user:?}, workspace {ws:?}");
        }
    }

    #[test]
    fn widening_keys_are_named() {
        for (user, ws, expected) in [
            ("", "memory = \"4g\"", "memory"),
            ("memory = \"1g\"", "memory = \"2g\"", "memory"),
            ("", "cpus = 8", "cpus"),
            ("", "pids = 100000", "pids"),
            ("disk = \"10g\"", "disk = \"20g\"", "disk"),
            (
                "disk = \"10g\"",
                "[profiles.codex]\ndisk = \"11g\"",
                "profiles.codex.disk",
            ),
            (
                "[profiles.p]\ndisk = \"1g\"",
                "[profiles.p]\ndisk = \"2g\"",
                "profiles.p.disk",
            ),
            ("", "timeout = \"0\"", "timeout"),
            ("", "timeout = \"1h\"", "timeout"),
            ("", "grace = \"1h\"", "grace"),
            ("", "copy_limit = \"100g\"", "copy_limit"),
            ("read_only = true", "read_only = false", "read_only"),
            (
                "isolation = \"gvisor\"",
                "isolation = \"runc\"",
                "isolation",
            ),
            (
                "isolation = \"gvisor\"",
                "[profiles.codex]\nisolation = \"runc\"",
                "profiles.codex.isolation",
            ),
            ("", "network = \"bridge\"", "network"),
            ("network = \"bridge\"", "network = \"mynet\"", "network"),
            (
                "workspace_mode = \"ro\"",
                "workspace_mode = \"rw\"",
                "workspace_mode",
            ),
            (
                "workspace_mode = \"copy\"",
                "workspace_mode = \"ro\"",
                "workspace_mode",
            ),
            ("", "workspace_mode = \"worktree\"", "workspace_mode"),
            ("", "fallback = \"local\"", "fallback"),
            ("", "user = \"0\"", "user"),
            ("user = \"1000\"", "user = \"0\"", "user"),
            ("", "state_dir = \"/tmp/x\"", "state_dir"),
            ("", "allowed_paths = [\"/\"]", "allowed_paths"),
            (
                "allowed_paths = [\"/\"]",
                "allowed_paths = [\"/\"]",
                "allowed_paths",
            ),
            ("", "[env]\nLD_PRELOAD = \"/x.so\"", "env.LD_PRELOAD"),
            ("[env]\nA = \"1\"", "[env]\nA = \"2\"", "env.A"),
            ("", "[engines.b]\nhost = \"ssh://b\"", "engines.b"),
            ("", "[pool.x]\nsize = 1", "pool.x"),
            ("", "[egress]\nallow = [\"evil.org\"]", "egress.allow"),
            ("", "[egress]\npresets = [\"github\"]", "egress.presets"),
            ("", "[egress]\ntcp = [\"evil.org:22\"]", "egress.tcp"),
            (
                "",
                "[egress.inject.\"evil.org\"]\nheader = \"x-leak\"\nenv = \"AWS_SECRET_ACCESS_KEY\"",
                "egress.inject.\"evil.org\"",
            ),
            (
                "[egress.inject.\"git.example.org\"]\nheader = \"authorization\"\nenv = \"T\"",
                "[egress.inject.\"git.example.org\"]\nheader = \"authorization\"\nenv = \"HOME\"",
                "egress.inject.\"git.example.org\"",
            ),
            ("", "[egress]\nmode = \"policy\"", "egress.mode"),
            (
                "[egress]\nmode = \"policy\"",
                "[egress]\nmode = \"open\"",
                "egress.mode",
            ),
            (
                "",
                "[profiles.claude-code]\negress = \"open\"",
                "profiles.claude-code.egress",
            ),
            (
                "",
                "[profiles.claude-code]\nallow_hosts = [\"evil.org\"]",
                "profiles.claude-code.allow_hosts",
            ),
            (
                "",
                "[profiles.claude-code]\nbroker = {}",
                "profiles.claude-code.broker",
            ),
            ("[pool.x]\nsize = 1", "[pool.x]\nsize = 2", "pool.x"),
            (
                "",
                "[profiles.p]\nmounts = [\"/etc:/k:ro\"]",
                "profiles.p.mounts",
            ),
            (
                "",
                "[profiles.claude-code]\nmounts = [\"/x:/x\"]",
                "profiles.claude-code.mounts",
            ),
            (
                "",
                "[profiles.p]\ncredentials = [\"HOSTSEC\"]",
                "profiles.p.credentials",
            ),
            (
                "",
                "[profiles.p]\nsecrets = [\"HOSTSEC\"]",
                "profiles.p.secrets",
            ),
            (
                "",
                "[profiles.codex]\ncredentials = [\"AWS_SECRET\"]",
                "profiles.codex.credentials",
            ),
            (
                "",
                "[profiles.p]\nnetwork = \"bridge\"",
                "profiles.p.network",
            ),
            ("", "[profiles.p]\nmemory = \"8g\"", "profiles.p.memory"),
            (
                "memory = \"1g\"",
                "[profiles.p]\nmemory = \"2g\"",
                "profiles.p.memory",
            ),
            ("", "[profiles.p]\ncpus = 16.0", "profiles.p.cpus"),
            ("", "[profiles.p]\npids = 9999", "profiles.p.pids"),
            ("", "[profiles.p]\ntimeout = \"0\"", "profiles.p.timeout"),
            (
                "",
                "[profiles.p]\n[profiles.p.env]\nLD_PRELOAD = \"x\"",
                "profiles.p.env.LD_PRELOAD",
            ),
            (
                "",
                "[profiles.p]\nlifecycle = \"persistent\"",
                "profiles.p.lifecycle",
            ),
            (
                "",
                "[profiles.p]\nmax_containers = 64",
                "profiles.p.max_containers",
            ),
            ("", "[profiles.p]\nidle_ttl = \"9h\"", "profiles.p.idle_ttl"),
            ("", "[profiles.p]\nagent = \"claude\"", "profiles.p.agent"),
            (
                "",
                "[profiles.codex]\nagent = \"claude\"",
                "profiles.codex.agent",
            ),
            (
                "",
                "[profiles.claude-code]\nsessions = \"/x\"",
                "profiles.claude-code.sessions",
            ),
            (
                "",
                "[profiles.claude-code]\nconflicts = []",
                "profiles.claude-code.conflicts",
            ),
            (
                "",
                "[profiles.claude-code]\ncommand = [\"sh\", \"{prompt}\"]",
                "profiles.claude-code.command",
            ),
            (
                "",
                "[profiles.claude-code]\nprompt = \"none\"",
                "profiles.claude-code.prompt",
            ),
            (
                "",
                "[profiles.codex]\nresume_args = [\"x\"]",
                "profiles.codex.resume_args",
            ),
            (
                "",
                "[profiles.\"a b\"]\nmounts = [\"/x:/x\"]",
                "profiles.\"a b\".mounts",
            ),
        ] {
            assert_eq!(
                widens(user, ws),
                [expected],
                "user {user:?}, workspace {ws:?}"
            );
        }
    }

    #[test]
    fn the_attack_names_every_widening_key() {
        let ws = "allowed_paths = [\"/\"]\nnetwork = \"bridge\"\nmemory = \"64m\"\nimage = \"x\"\n[env]\nLD_PRELOAD = \"/workspace/x.so\"\n[profiles.p]\nmounts = [\"/etc:/k:ro\"]\ncredentials = [\"HOSTSEC\"]\n";
        assert_eq!(
            widens("", ws),
            [
                "network",
                "allowed_paths",
                "env.LD_PRELOAD",
                "profiles.p.credentials",
                "profiles.p.mounts"
            ]
        );
    }

    #[test]
    fn settings_show_key_and_value() {
        let file = parse("w", "memory = \"64m\"\ncpus = 1.5\nallowed_paths = [\"/\"]\n[profiles.p]\nmounts = [\"/etc:/k:ro\"]\n[engines.b]\nhost = \"ssh://b\"\n").unwrap();
        let shown: Vec<(String, String, bool)> = settings(&file, &ConfigFile::default())
            .into_iter()
            .map(|s| (s.key, s.value, s.widens))
            .collect();
        let expected = [
            ("memory", "\"64m\"", false),
            ("cpus", "1.5", false),
            ("allowed_paths", "[\"/\"]", true),
            ("profiles.p.mounts", "[\"/etc:/k:ro\"]", true),
            ("engines.b", "{ host = \"ssh://b\" }", true),
        ]
        .map(|(k, v, w)| (k.to_string(), v.to_string(), w));
        assert_eq!(shown, expected);
    }

    #[test]
    fn base_layers_user_profiles_on_builtins() {
        let user = parse("u", "[profiles.claude-code]\nmounts = [\"/data:/data\"]").unwrap();
        let b = base(&user, crate::profile::builtins("0.1.0"));
        let claude = &b.profiles["claude-code"];
        assert_eq!(
            claude.mounts.as_deref(),
            Some(&["/data:/data".to_string()][..])
        );
        assert_eq!(
            claude.egress.as_deref(),
            Some("policy"),
            "built-in fields stay"
        );
        let ws = parse("w", "[profiles.claude-code]\nmounts = [\"/data:/data\"]").unwrap();
        assert!(widening_keys(&ws, &b).is_empty());
    }

    #[test]
    fn trust_store_round_trips_and_tells_changed_from_untrusted() {
        let mut store = TrustStore::default();
        store.trust("/p/berth.toml", "abc");
        let text = store.render();
        let back = TrustStore::parse("t", &text).unwrap();
        assert_eq!(back, store);
        assert_eq!(back.state("/p/berth.toml", "abc"), TrustState::Trusted);
        assert_eq!(back.state("/p/berth.toml", "abd"), TrustState::Changed);
        assert_eq!(back.state("/q/berth.toml", "abc"), TrustState::Untrusted);
        let mut back = back;
        assert!(back.revoke("/p/berth.toml") && !back.revoke("/p/berth.toml"));
        let e = TrustStore::parse("/c/trusted.toml", "[trustd]\n").unwrap_err();
        assert!(e.to_string().contains("/c/trusted.toml"), "{e}");
    }
}
