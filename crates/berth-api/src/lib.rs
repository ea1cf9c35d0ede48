//! The coordinator's wire types, shared by the server, the runner and the client.
//!
//! Architecture Invariant: only this crate defines what travels over HTTP. Request bodies are
//! strict (`deny_unknown_fields`), so a typo is an error naming the field, never a silent default.

use std::collections::BTreeMap;

use berth_core::policy::{self, PolicyContext, ResolvedSource};
use berth_core::spec::{check_env_name, NetworkMode, UserSpec};
use berth_core::units;
use serde::{Deserialize, Serialize};

/// Where a run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ExecutionMode {
    #[default]
    #[serde(rename = "docker-sandbox")]
    DockerSandbox,
    #[serde(rename = "local")]
    Local,
}

/// `POST /api/v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRun {
    pub project: String,
    #[serde(default)]
    pub execution_mode: ExecutionMode,
    pub sandbox: SandboxRequest,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRequest {
    #[serde(default)]
    pub image: Option<String>,
    /// The working directory inside the sandbox; defaults to /workspace.
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets; the runner takes their values from its own environment.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Omitted: the project's workspace is mounted at /workspace.
    #[serde(default)]
    pub mounts: Option<Vec<MountSpec>>,
    #[serde(default)]
    pub resources: Option<ResourcesSpec>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub grace: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// A profile the runner resolves (`claude-code`, `codex`, `procedural`, or one from the
    /// runner's config): its image, command template, output format, credentials and resources
    /// apply where the request does not set them.
    #[serde(default)]
    pub profile: Option<String>,
    /// The prompt for an agent profile: one argument or stdin, never a shell string.
    #[serde(default)]
    pub prompt: Option<String>,
    /// `ephemeral` (default: the profile's) or `persistent`: run inside the runner's long-lived
    /// container for the profile and `name`.
    #[serde(default)]
    pub lifecycle: Option<String>,
    /// The persistent container's name (implies `lifecycle: persistent`).
    #[serde(default)]
    pub name: Option<String>,
    /// How the project's workspace reaches the sandbox: `rw` (default), `ro`, `copy` (uploaded,
    /// changes downloaded), `worktree` (a git worktree of HEAD) or `none`. Copy and worktree runs
    /// hand back `berth/diff.patch` as an artifact.
    #[serde(default)]
    pub workspace_mode: Option<String>,
    /// Worktree mode: carry the checkout's uncommitted changes over.
    #[serde(default)]
    pub include_dirty: bool,
    /// Worktree and copy modes: the branch, tag or commit of the project's checkout the
    /// workspace is made from (the runner resolves it there with git); omitted: the checkout's
    /// HEAD (worktree) or its current files (copy). See [`check_git_ref`] for what is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// With `git_ref`: `git fetch` the checkout's configured remote before resolving it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fetch: bool,
    /// Set by the server on a workflow's step runs (never by clients): the workflow whose one
    /// worktree, kept by the runner between steps, is the step's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// How the sandbox reaches the network: the mode and the hosts allowed through the runner's
    /// egress proxy. Omitted: the profile's default (policy for agent profiles), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRequest>,
    /// `runc` (the engine's default runtime) or `gvisor`: the run goes only to runners whose
    /// engine offers it (the server adds the tag `isolation:gvisor`). Omitted: the profile's,
    /// else runc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
}

/// A submission's egress: `mode` none, policy or open; allow rules, presets and raw TCP
/// forwards for policy (see berth_core::egress for the rule syntax).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<i64>,
    /// The disk limit (`10g`): the engine's storage quota, refused by the runner where its
    /// engine's storage driver has none.
    #[serde(default)]
    pub disk: Option<String>,
}

/// One problem with a request, at a JSON path such as `sandbox.command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The body of a 4xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Parses a JSON body strictly; a type or unknown-field error names its JSON path.
pub fn parse_strict<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ParseFailure> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(e) => {
            let inner = e.inner();
            // A number too large for any type (`1e400`) is well-formed JSON with a bad value.
            let out_of_range = inner.to_string().starts_with("number out of range");
            if (inner.is_syntax() && !out_of_range) || inner.is_eof() {
                return Err(ParseFailure::Malformed(inner.to_string()));
            }
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            return Err(ParseFailure::Invalid(vec![FieldError {
                field,
                message: inner.to_string(),
            }]));
        }
    };
    de.end()
        .map_err(|e| ParseFailure::Malformed(e.to_string()))?;
    // A NUL character is valid JSON (`\u0000`) but no text column can hold it (PostgreSQL
    // refuses it outright): refused here, naming where it is, whatever the store.
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let mut at = Vec::new();
        nul_paths(&json, String::new(), &mut at);
        if !at.is_empty() {
            return Err(ParseFailure::Invalid(
                at.into_iter()
                    .take(MAX_NUL_FIELDS)
                    .map(|field| FieldError {
                        field,
                        message: "contains a NUL character (\\u0000), which no field accepts; send binary data base64-encoded".into(),
                    })
                    .collect(),
            ));
        }
    }
    Ok(value)
}

/// The most fields a NUL refusal names.
const MAX_NUL_FIELDS: usize = 20;

/// The JSON paths (`a.b[2]`) of strings and keys holding a NUL character.
fn nul_paths(value: &serde_json::Value, path: String, out: &mut Vec<String>) {
    if out.len() >= MAX_NUL_FIELDS {
        return;
    }
    match value {
        serde_json::Value::String(s) if s.contains('\0') => out.push(path),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nul_paths(item, format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if key.contains('\0') {
                    out.push(here.replace('\0', "\\u0000"));
                } else {
                    nul_paths(item, here, out);
                }
            }
        }
        _ => {}
    }
}

/// Why a body could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseFailure {
    /// Not JSON at all (400).
    Malformed(String),
    /// JSON of the wrong shape (422).
    Invalid(Vec<FieldError>),
}

/// A project's limits, for validating mounts.
#[derive(Debug, Clone, Default)]
pub struct ProjectScope {
    pub workspace_root: String,
    pub allowed_paths: Vec<String>,
    /// The admin-set egress ceiling: no run may allow a host beyond it.
    pub egress_ceiling: Option<Vec<String>>,
}

/// Checks a submission beyond its shape; every problem is reported, each with its JSON path.
pub fn validate_submission(run: &SubmitRun, project: &ProjectScope) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    if run.project.trim().is_empty() {
        err("project", "must name an existing project".into());
    }
    let sandbox = &run.sandbox;
    let profiled = sandbox.profile.is_some();
    if let Some(profile) = &sandbox.profile {
        if let Err(e) = berth_core::held::check_name("profile", profile) {
            err("sandbox.profile", e.to_string());
        }
        if run.execution_mode != ExecutionMode::DockerSandbox {
            err(
                "sandbox.profile",
                "profiles run in a sandbox: use execution_mode docker-sandbox".into(),
            );
        }
    }
    if sandbox.prompt.is_some() && !profiled {
        err(
            "sandbox.prompt",
            "a prompt needs an agent profile: add \"profile\": \"claude-code\" (or codex)".into(),
        );
    }
    if sandbox.prompt.is_some() && !sandbox.command.is_empty() {
        err(
            "sandbox.command",
            "give either a prompt (for an agent profile) or a command, not both".into(),
        );
    }
    if sandbox.workflow.is_some() {
        err(
            "sandbox.workflow",
            "is set by the server for a workflow's steps; submit workflows to /api/v1/workflows"
                .into(),
        );
    }
    if let Some(mode) = &sandbox.workspace_mode {
        match mode.parse::<berth_core::spec::WorkspaceMode>() {
            Err(e) => err("sandbox.workspace_mode", e),
            Ok(_) if sandbox.mounts.is_some() => err(
                "sandbox.workspace_mode",
                "mounts replace the project's workspace; drop one of them".into(),
            ),
            Ok(_) => {}
        }
    }
    if sandbox.include_dirty && sandbox.workspace_mode.as_deref() != Some("worktree") {
        err(
            "sandbox.include_dirty",
            "only for workspace_mode worktree".into(),
        );
    }
    if let Some(git_ref) = &sandbox.git_ref {
        if let Err(e) = check_git_ref(git_ref) {
            err("sandbox.git_ref", e.to_string());
        } else if !matches!(sandbox.workspace_mode.as_deref(), Some("worktree" | "copy")) {
            err(
                "sandbox.git_ref",
                "only for workspace_mode worktree or copy (the workspace is made from that commit)"
                    .into(),
            );
        } else if sandbox.include_dirty {
            err(
                "sandbox.include_dirty",
                "the checkout's uncommitted changes belong to its HEAD, not to git_ref: drop one of them"
                    .into(),
            );
        }
    }
    if sandbox.fetch && sandbox.git_ref.is_none() {
        err(
            "sandbox.fetch",
            "fetches before resolving git_ref: name the ref to run on (e.g. origin/main)".into(),
        );
    }
    match sandbox.lifecycle.as_deref() {
        None | Some("ephemeral" | "persistent") => {}
        Some(other) => err(
            "sandbox.lifecycle",
            format!("`{other}` is not ephemeral or persistent"),
        ),
    }
    if let Some(name) = &sandbox.name {
        if let Err(e) = berth_core::held::check_name("name", name) {
            err("sandbox.name", e.to_string());
        }
        if sandbox.lifecycle.as_deref() == Some("ephemeral") {
            err(
                "sandbox.name",
                "names a persistent container; it cannot be combined with lifecycle ephemeral"
                    .into(),
            );
        }
    }
    if let Some(e) = sandbox.image.as_deref().and_then(image_error) {
        err("sandbox.image", e);
    }
    if profiled {
        // The profile gives the image and the command template; the runner checks the rest.
    } else if run.execution_mode == ExecutionMode::DockerSandbox {
        if sandbox.image.is_none() {
            err(
                "sandbox.image",
                "required for execution_mode docker-sandbox (or name a profile)".into(),
            );
        }
        if sandbox.command.is_empty() {
            err("sandbox.command", "required for execution_mode docker-sandbox: the command as an argv array, e.g. [\"make\", \"test\"]".into());
        }
    } else if sandbox.command.is_empty() {
        err(
            "sandbox.command",
            "required: the command as an argv array".into(),
        );
    }
    if sandbox.command.first().is_some_and(|c| c.is_empty()) {
        err("sandbox.command[0]", "the program name is empty".into());
    }
    for name in sandbox.env.keys() {
        if let Err(e) = check_env_name(name) {
            err(&format!("sandbox.env.{name}"), e.to_string());
        }
    }
    for (i, name) in sandbox.secrets.iter().enumerate() {
        if let Err(e) = check_env_name(name) {
            err(&format!("sandbox.secrets[{i}]"), e.to_string());
        }
    }
    if let Some(workdir) = &sandbox.workdir {
        if let Err(e) = policy::check_target(workdir) {
            err("sandbox.workdir", e.to_string());
        }
    }
    if let Some(resources) = &sandbox.resources {
        if let Some(memory) = &resources.memory {
            if let Err(e) = unpadded(memory).and_then(|m| Ok(units::parse_memory(m).map(drop)?)) {
                err("sandbox.resources.memory", e.to_string());
            }
        }
        if let Some(cpus) = resources.cpus {
            // The bounds as JSON Schema reads them (on the number itself); the decimal reader
            // would drop digits past the ninth decimal and let 1024.0000000001 through.
            if !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
                err(
                    "sandbox.resources.cpus",
                    format!("{cpus} is not a number of CPUs from 0.01 to 1024 (e.g. 0.5, 2)"),
                );
            } else if let Err(e) = units::cpus_from_f64(cpus) {
                err("sandbox.resources.cpus", e.to_string());
            }
        }
        if let Some(pids) = resources.pids {
            if let Err(e) = units::check_pids(pids) {
                err("sandbox.resources.pids", e.to_string());
            }
        }
        if let Some(disk) = &resources.disk {
            if let Err(e) = unpadded(disk).and_then(|d| Ok(units::parse_disk(d).map(drop)?)) {
                err("sandbox.resources.disk", e.to_string());
            }
        }
    }
    for (field, value) in [
        ("sandbox.timeout", &sandbox.timeout),
        ("sandbox.grace", &sandbox.grace),
    ] {
        if let Some(v) = value {
            if let Err(e) = unpadded(v).and_then(|v| Ok(units::parse_duration(v).map(drop)?)) {
                err(field, e.to_string());
            }
        }
    }
    if let Some(network) = &sandbox.network {
        if let Err(e) = NetworkMode::parse(network) {
            err("sandbox.network", e.to_string());
        }
    }
    if let Some(user) = &sandbox.user {
        if let Err(e) = UserSpec::parse(user) {
            err("sandbox.user", e.to_string());
        }
    }
    if let Some(isolation) = &sandbox.isolation {
        if let Err(e) = isolation.parse::<berth_core::spec::Isolation>() {
            err("sandbox.isolation", e);
        }
    }
    for e in egress_errors(
        sandbox.egress.as_ref(),
        sandbox.network.as_deref(),
        sandbox.profile.as_deref(),
        project.egress_ceiling.as_deref(),
        "sandbox.",
    ) {
        err(&e.field, e.message);
    }
    for (i, artifact) in sandbox.artifacts.iter().enumerate() {
        if !artifact.starts_with('/') || artifact.split('/').any(|p| p == "..") {
            err(
                &format!("sandbox.artifacts[{i}]"),
                format!("`{artifact}` must be an absolute path without `..`"),
            );
        }
    }
    for e in tag_errors(&run.tags) {
        err(&e.field, e.message);
    }
    if let Some(mounts) = &sandbox.mounts {
        let ctx = PolicyContext {
            home: None,
            allowed_roots: std::iter::once(&project.workspace_root)
                .chain(&project.allowed_paths)
                .map(Into::into)
                .collect(),
            engine_sockets: vec!["/var/run/docker.sock".into(), "/run/docker.sock".into()],
        };
        let mut targets: Vec<(String, String)> =
            vec![("/berth/out".into(), "berth's output directory".into())];
        for (i, mount) in mounts.iter().enumerate() {
            let field = format!("sandbox.mounts[{i}]");
            // Sources are paths on runner hosts: judged lexically here, canonically again by the
            // runner before it starts anything.
            let source = lexical(&mount.source);
            match source {
                None => err(
                    &format!("{field}.source"),
                    format!("`{}` must be an absolute path without `..`", mount.source),
                ),
                Some(canonical) => {
                    let resolved = ResolvedSource {
                        given: mount.source.clone().into(),
                        canonical: Some(canonical.into()),
                        is_socket: false,
                    };
                    if let Err(e) = policy::check_source(&resolved, &ctx) {
                        err(&format!("{field}.source"), e.to_string());
                    }
                }
            }
            match policy::check_target(&mount.target) {
                Ok(target) => targets.push((target, field.clone())),
                Err(e) => err(&format!("{field}.target"), e.to_string()),
            }
        }
        if let Err(e) =
            policy::check_unique_targets(targets.iter().map(|(t, w)| (t.as_str(), w.as_str())))
        {
            err("sandbox.mounts", e.to_string());
        }
    }
    errors
}

/// Checks a submission's egress on its own and against the project's ceiling, naming fields
/// under `prefix` (`sandbox.`, or empty for a workflow). A built-in profile's default hosts are
/// judged here too; the runner judges its own profiles again.
pub fn egress_errors(
    egress: Option<&EgressRequest>,
    network: Option<&str>,
    profile: Option<&str>,
    ceiling: Option<&[String]>,
    prefix: &str,
) -> Vec<FieldError> {
    use berth_core::egress::{self, Asked, EgressMode, Field, Inputs};
    let at = |name: &str| format!("{prefix}{name}");
    let asked = egress.cloned().unwrap_or_default();
    let mode = match asked.mode.as_deref().map(EgressMode::parse).transpose() {
        Ok(m) => m,
        Err(message) => {
            return vec![FieldError {
                field: at("egress.mode"),
                message: message.to_string(),
            }]
        }
    };
    let network = match network.map(NetworkMode::parse) {
        Some(Ok(n)) => Some(n),
        // Reported with the network's own field.
        Some(Err(_)) => return Vec::new(),
        None => None,
    };
    let builtin = profile.and_then(|name| {
        berth_core::profile::resolve_all(
            berth_core::profile::builtins(env!("CARGO_PKG_VERSION")),
            &[],
        )
        .ok()?
        .into_iter()
        .find(|p| p.name == name)
    });
    let inputs = Inputs {
        asked: Asked {
            mode,
            allow: &asked.allow,
            presets: &asked.presets,
            tcp: &asked.tcp,
        },
        config: Asked::default(),
        profile_mode: builtin.as_ref().and_then(|p| p.egress),
        profile_allow: builtin.as_ref().map_or(&[][..], |p| &p.allow_hosts),
        profile_name: builtin.as_ref().map(|p| p.name.as_str()),
        brokers: &[],
        network_asked: network.as_ref(),
        network_default: NetworkMode::None,
        ceiling,
    };
    match egress::resolve(&inputs, Vec::new()) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let field = match e.field {
                Field::Mode | Field::ConfigMode => "egress.mode",
                Field::Allow if asked.allow.is_empty() && !asked.presets.is_empty() => {
                    "egress.presets"
                }
                Field::Allow => "egress.allow",
                Field::Tcp => "egress.tcp",
                Field::Network => "network",
                // Header injection is host configuration, not part of a submission.
                Field::Inject => "egress",
            };
            vec![FieldError {
                field: at(field),
                message: e.message,
            }]
        }
    }
}

/// The tags a submission is routed by: its own, plus the one its isolation needs
/// (`isolation:gvisor`), so that only runners whose engine offers it take the run.
pub fn routing_tags(tags: &[String], isolation: Option<&str>) -> Vec<String> {
    let mut out = tags.to_vec();
    let needed = isolation
        .and_then(|i| i.parse::<berth_core::spec::Isolation>().ok())
        .and_then(|i| i.tag());
    if let Some(tag) = needed {
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

/// Why `image` cannot be an image reference (`alpine`, `ghcr.io/o/i:1.2`, `i@sha256:…`): empty,
/// or a character no reference has.
pub fn image_error(image: &str) -> Option<String> {
    let ok = !image.is_empty()
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    (!ok).then(|| {
        format!("`{image}` is not an image reference: expected letters, digits and `._-/:@`, e.g. alpine:3.20")
    })
}

/// The fewest and the most CPUs a run may ask for.
pub const MIN_CPUS: f64 = 0.01;
pub const MAX_CPUS: f64 = 1024.0;

/// A size or duration of a submission that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum UnitValueError {
    #[error("`{0}` has white space around it; give the value alone, e.g. 10m")]
    Padded(String),
    #[error(transparent)]
    Unit(#[from] units::UnitError),
}

/// `value` if it has no white space around it (the API takes units as written, `10m`, not
/// ` 10m`), or why not.
fn unpadded(value: &str) -> Result<&str, UnitValueError> {
    if value.trim() == value {
        Ok(value)
    } else {
        Err(UnitValueError::Padded(value.to_string()))
    }
}

/// The largest event number and timestamp a runner may send: the largest integer every JSON
/// reader keeps exact (2^53 - 1), and the last millisecond of the year 9999.
pub const MAX_EVENT_SEQ: i64 = (1 << 53) - 1;
pub const MAX_EVENT_TS: i64 = 253_402_300_799_999;

/// The most leases and workflows one heartbeat may name.
pub const MAX_HEARTBEAT_LEASES: usize = 10_000;
pub const MAX_HEARTBEAT_WORKFLOWS: usize = 1_000;

/// Checks an event batch beyond its shape: numbers from 1, timestamps that are dates.
pub fn events_errors(body: &EventsBody) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !(1..=MAX_EVENT_SEQ).contains(&body.first_seq) {
        errors.push(FieldError {
            field: "first_seq".into(),
            message: format!(
                "{} is out of range: events are numbered from 1 to {MAX_EVENT_SEQ}",
                body.first_seq
            ),
        });
    } else if body.first_seq - 1 > MAX_EVENT_SEQ - body.events.len() as i64 {
        errors.push(FieldError {
            field: "first_seq".into(),
            message: format!("the batch's last event would be numbered past {MAX_EVENT_SEQ}"),
        });
    }
    for (i, event) in body.events.iter().enumerate() {
        if !(0..=MAX_EVENT_TS).contains(&event.ts) {
            errors.push(FieldError {
                field: format!("events[{i}].ts"),
                message: format!(
                    "{} is not a time: expected milliseconds since 1970 up to {MAX_EVENT_TS} (the year 9999)",
                    event.ts
                ),
            });
        }
    }
    errors
}

/// Checks a heartbeat beyond its shape: how many leases and workflows it names.
pub fn heartbeat_errors(body: &HeartbeatBody) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, count, max) in [
        ("leases", body.leases.len(), MAX_HEARTBEAT_LEASES),
        ("workflows", body.workflows.len(), MAX_HEARTBEAT_WORKFLOWS),
    ] {
        if count > max {
            errors.push(FieldError {
                field: field.into(),
                message: format!("names {count} entries; at most {max} are accepted"),
            });
        }
    }
    errors
}

/// The problems with a submission's `tags`: each must be a non-empty word without commas.
pub fn tag_errors(tags: &[String]) -> Vec<FieldError> {
    tags.iter()
        .enumerate()
        .filter(|(_, tag)| {
            tag.is_empty() || tag.contains(',') || tag.chars().any(char::is_whitespace)
        })
        .map(|(i, tag)| FieldError {
            field: format!("tags[{i}]"),
            message: format!(
                "`{tag}` is not a tag: expected a non-empty word without commas or spaces"
            ),
        })
        .collect()
}

/// `path` normalised without touching any file system, or `None` if relative or with `..`.
fn lexical(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    Some(format!("/{}", parts.join("/")))
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub project: String,
    pub state: String,
    pub execution_mode: ExecutionMode,
    pub sandbox: SandboxRequest,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub claimed_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub runner_id: Option<String>,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub cancel_requested: bool,
    /// The commit the run's workspace was made from (worktree and copy modes in a git
    /// checkout; `git_ref` resolved), as the runner reported it when the run ended.
    #[serde(default)]
    pub commit: Option<String>,
    /// Why a queued run may wait forever, from the submit and `GET /api/v1/runs/{id}`: no
    /// runner online or seen in the last hour could claim it (tags). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /api/v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// `POST /api/v1/runners/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRunner {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub require_matching_tags: bool,
    #[serde(default = "one")]
    pub capacity: i64,
    /// The names of the secrets this runner has (their values stay on its host): a run naming
    /// one no runner able to claim it declared is flagged when submitted.
    #[serde(default)]
    pub secrets: Vec<String>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub runner_id: String,
    /// How long a lease lasts without renewal.
    pub lease_ms: i64,
    /// How often the runner should heartbeat.
    pub heartbeat_ms: i64,
}

/// `POST /api/v1/runners/{id}/claim`: wait up to `wait_ms` for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    #[serde(default)]
    pub wait_ms: u64,
}

/// A claimed run: the run and the lease every later write must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    pub run: RunView,
    pub lease_token: String,
    pub lease_ms: i64,
    /// The project's workspace root on the runner's host.
    pub workspace_root: String,
    pub allowed_paths: Vec<String>,
    /// The project's egress ceiling, which the runner applies to the run's final policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ceiling: Option<Vec<String>>,
}

/// `POST /api/v1/runs/{id}/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pub lease_token: String,
    #[serde(default)]
    pub container_id: Option<String>,
}

/// One event sent by a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Milliseconds since the epoch.
    pub ts: i64,
    /// `stdout`, `stderr`, or a lifecycle kind.
    pub kind: String,
    pub data: String,
}

/// `POST /api/v1/runs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    pub lease_token: String,
    /// The runner's number for the first event of this batch; runners number a run's events
    /// from 1, so a batch resent after a lost reply is not stored twice.
    pub first_seq: i64,
    pub events: Vec<EventIn>,
}

/// `POST /api/v1/runners/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    #[serde(default)]
    pub leases: Vec<LeaseRef>,
    /// Workflows whose worktrees the runner keeps.
    #[serde(default)]
    pub workflows: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRef {
    pub run_id: String,
    pub lease_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Runs whose cancel was requested: stop them.
    pub cancel: Vec<String>,
    /// Runs whose lease is no longer valid: stop them, their results will be refused.
    pub revoked: Vec<String>,
    /// Of the workflows whose worktrees the runner keeps, those that ended: remove them.
    #[serde(default)]
    pub ended_workflows: Vec<String>,
}

/// `POST /api/v1/runs/{id}/finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishBody {
    pub lease_token: String,
    /// succeeded, failed, timed_out, cancelled, error or lost.
    pub state: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The commit the run's workspace was made from, when it was made from one: 40 or 64
    /// lower-case hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Whether `commit` is a full commit id (SHA-1 or SHA-256, lower-case hex).
pub fn is_commit_id(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64)
        && commit
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An event as served over SSE and `GET .../events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: i64,
    pub ts: String,
    pub kind: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: i64,
    pub ts: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub role: String,
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    /// Shown once; the server keeps only its hash.
    pub token: String,
    pub role: String,
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub role: String,
    pub project: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub workspace_root: String,
    #[serde(default)]
    pub allowed_paths: Vec<String>,
    /// Egress allow rules no run of the project may go beyond; a run asking for more, for open
    /// egress or for a network is refused. Omitted: no ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ceiling: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectView {
    pub name: String,
    pub workspace_root: String,
    pub allowed_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ceiling: Option<Vec<String>>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub require_matching_tags: bool,
    pub capacity: i64,
    pub online: bool,
    pub last_heartbeat: String,
    pub running: Vec<String>,
    /// The names of the secrets it declared.
    #[serde(default)]
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactView {
    pub path: String,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(json: &str) -> Result<SubmitRun, ParseFailure> {
        parse_strict(json.as_bytes())
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let ParseFailure::Invalid(e) =
            submit(r#"{"project":"p","sandbox":{"imagee":"x"}}"#).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(fields(&e), ["sandbox.imagee"]);
        assert!(e[0].message.contains("imagee"), "{e:?}");
        let ParseFailure::Invalid(e) =
            submit(r#"{"project":"p","sandbox":{"command":"make"}}"#).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(fields(&e), ["sandbox.command"]);
        assert!(matches!(
            submit("{not json"),
            Err(ParseFailure::Malformed(_))
        ));
        assert!(matches!(
            submit(r#"{"project":"p","sandbox":{}} trailing"#),
            Err(ParseFailure::Malformed(_))
        ));
    }

    #[test]
    fn validation_reports_every_field() {
        let run = submit(
            r#"{"project":"p","sandbox":{"env":{"1X":"v"},"timeout":"soon","network":"host","resources":{"memory":"lots"},
                "mounts":[{"source":"/etc","target":"/e"},{"source":"rel","target":"/proc/x"}]},"tags":["a b"]}"#,
        )
        .unwrap();
        let scope = ProjectScope {
            workspace_root: "/srv/p".into(),
            allowed_paths: vec![],
            egress_ceiling: None,
        };
        let errors = validate_submission(&run, &scope);
        assert_eq!(
            fields(&errors),
            [
                "sandbox.image",
                "sandbox.command",
                "sandbox.env.1X",
                "sandbox.resources.memory",
                "sandbox.timeout",
                "sandbox.network",
                "tags[0]",
                "sandbox.mounts[0].source",
                "sandbox.mounts[1].source",
                "sandbox.mounts[1].target"
            ]
        );
    }

    #[test]
    fn numbers_out_of_range_name_their_path() {
        let scope = ProjectScope::default();
        let check = |sandbox: &str| {
            let json = format!(
                r#"{{"project":"p","sandbox":{{"image":"i","command":["true"],{sandbox}}}}}"#
            );
            let run = submit(&json).unwrap();
            validate_submission(&run, &scope)
        };
        for (sandbox, field, accepted) in [
            (r#""timeout":"1e20""#, "sandbox.timeout", "90s"),
            (r#""grace":"1e19""#, "sandbox.grace", "90s"),
            (
                r#""timeout":"99999999999999h""#,
                "sandbox.timeout",
                "365 days",
            ),
            (r#""grace":"NaN""#, "sandbox.grace", "90s"),
            (
                r#""resources":{"memory":"99999999999g"}"#,
                "sandbox.resources.memory",
                "1 TiB",
            ),
            (
                r#""resources":{"pids":99999999999}"#,
                "sandbox.resources.pids",
                "4194304",
            ),
            (
                r#""resources":{"pids":0}"#,
                "sandbox.resources.pids",
                "4194304",
            ),
            (
                r#""resources":{"cpus":1e300}"#,
                "sandbox.resources.cpus",
                "1024",
            ),
            (
                r#""resources":{"cpus":-1}"#,
                "sandbox.resources.cpus",
                "1024",
            ),
        ] {
            let errors = check(sandbox);
            assert_eq!(fields(&errors), [field], "{sandbox}");
            assert!(errors[0].message.contains(accepted), "{errors:?}");
        }
        // Too large for the wire type itself: a shape error at its path.
        for (sandbox, field) in [
            (
                r#""resources":{"pids":99999999999999999999}"#,
                "sandbox.resources.pids",
            ),
            (r#""resources":{"cpus":1e400}"#, "sandbox.resources.cpus"),
            (r#""timeout":20"#, "sandbox.timeout"),
        ] {
            let json = format!(
                r#"{{"project":"p","sandbox":{{"image":"i","command":["true"],{sandbox}}}}}"#
            );
            match submit(&json) {
                Err(ParseFailure::Invalid(e)) => assert_eq!(fields(&e), [field], "{sandbox}"),
                other => panic!("{sandbox}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_good_submission_passes() {
        let run = submit(r#"{"project":"p","sandbox":{"image":"i","command":["make","test"],"mounts":[{"source":"/srv/p/data","target":"/data"}]},"tags":["gpu"]}"#).unwrap();
        let scope = ProjectScope {
            workspace_root: "/srv/p".into(),
            allowed_paths: vec![],
            egress_ceiling: None,
        };
        assert_eq!(validate_submission(&run, &scope), []);
        assert_eq!(run.execution_mode, ExecutionMode::DockerSandbox);
        assert!(run.sandbox.mounts.unwrap()[0].read_only);
    }

    #[test]
    fn egress_is_checked_and_held_to_the_projects_ceiling() {
        let check = |json: &str, ceiling: Option<&[&str]>| {
            let run = submit(json).unwrap();
            let scope = ProjectScope {
                workspace_root: "/srv/p".into(),
                allowed_paths: vec![],
                egress_ceiling: ceiling.map(|c| c.iter().map(|s| s.to_string()).collect()),
            };
            validate_submission(&run, &scope)
                .into_iter()
                .map(|e| (e.field, e.message))
                .collect::<Vec<_>>()
        };
        let run = |egress: &str| {
            format!(
                r#"{{"project":"p","sandbox":{{"image":"i","command":["x"],"egress":{egress}}}}}"#
            )
        };
        // Without a ceiling: only the shape and the rules are judged.
        assert!(check(&run(r#"{"allow":["anywhere.example"]}"#), None).is_empty());
        let bad = check(&run(r#"{"mode":"sometimes"}"#), None);
        assert_eq!(bad[0].0, "sandbox.egress.mode");
        let bad = check(&run(r#"{"allow":["*.com"]}"#), None);
        assert_eq!(bad[0].0, "sandbox.egress.allow");
        let bad = check(&run(r#"{"mode":"none","allow":["a.example"]}"#), None);
        assert_eq!(bad[0].0, "sandbox.egress.allow");
        // With one: a host beyond it is named; open egress and networks are refused.
        let ceiling: &[&str] = &["*.pythonhosted.org:443", "pypi.org"];
        assert!(check(
            &run(r#"{"allow":["files.pythonhosted.org:443","pypi.org:443"]}"#),
            Some(ceiling)
        )
        .is_empty());
        let beyond = check(
            &run(r#"{"allow":["pypi.org","evil.example"]}"#),
            Some(ceiling),
        );
        assert_eq!(beyond.len(), 1, "{beyond:?}");
        assert_eq!(beyond[0].0, "sandbox.egress.allow");
        assert!(beyond[0].1.contains("`evil.example`"), "{beyond:?}");
        assert_eq!(
            check(&run(r#"{"mode":"open"}"#), Some(ceiling))[0].0,
            "sandbox.egress.mode"
        );
        let net = r#"{"project":"p","sandbox":{"image":"i","command":["x"],"network":"bridge"}}"#;
        assert_eq!(check(net, Some(ceiling))[0].0, "sandbox.network");
        assert!(check(net, None).is_empty());
        // A built-in profile's own hosts count too.
        let agent = r#"{"project":"p","sandbox":{"profile":"claude-code","prompt":"x"}}"#;
        let beyond = check(agent, Some(ceiling));
        assert!(beyond[0].1.contains("api.anthropic.com:443"), "{beyond:?}");
        assert!(check(agent, Some(&["api.anthropic.com"])).is_empty());
    }

    #[test]
    fn nul_characters_are_refused_where_they_are() {
        match parse_strict::<EventsBody>(
            br#"{"lease_token":"t","first_seq":1,"events":[{"ts":1,"kind":"stdout","data":"a\u0000b"}]}"#,
        ) {
            Err(ParseFailure::Invalid(e)) => assert_eq!(fields(&e), ["events[0].data"]),
            other => panic!("{other:?}"),
        }
        // An escaped backslash followed by `u0000` is text, not a NUL.
        assert!(parse_strict::<EventsBody>(
            br#"{"lease_token":"t","first_seq":1,"events":[{"ts":1,"kind":"stdout","data":"a\\u0000b"}]}"#,
        )
        .is_ok());
    }

    #[test]
    fn isolation_is_checked_and_routes_by_tag() {
        let run =
            submit(r#"{"project":"p","sandbox":{"image":"i","command":["x"],"isolation":"kata"}}"#)
                .unwrap();
        let errors = validate_submission(&run, &ProjectScope::default());
        assert_eq!(errors[0].field, "sandbox.isolation", "{errors:?}");
        let tags = vec!["gpu".to_string()];
        assert_eq!(
            routing_tags(&tags, Some("gvisor")),
            ["gpu", "isolation:gvisor"]
        );
        assert_eq!(routing_tags(&tags, Some("runc")), ["gpu"]);
        assert_eq!(routing_tags(&tags, None), ["gpu"]);
        let both = vec!["isolation:gvisor".to_string()];
        assert_eq!(routing_tags(&both, Some("gvisor")), ["isolation:gvisor"]);
    }

    #[test]
    fn profiles_prompts_and_persistent_names() {
        let scope = ProjectScope {
            workspace_root: "/srv/p".into(),
            allowed_paths: vec![],
            egress_ceiling: None,
        };
        let check = |json: &str| {
            let run = submit(json).unwrap();
            validate_submission(&run, &scope)
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        // A profile brings the image and the command template: a prompt is enough.
        assert!(check(
            r#"{"project":"p","sandbox":{"profile":"claude-code","prompt":"fix it","name":"builder"}}"#
        )
        .is_empty());
        assert_eq!(
            check(r#"{"project":"p","sandbox":{"image":"i","prompt":"fix it"}}"#),
            ["sandbox.prompt", "sandbox.command"]
        );
        assert_eq!(
            check(
                r#"{"project":"p","sandbox":{"profile":"a b","prompt":"x","command":["y"],"lifecycle":"forever","name":"x--y"}}"#
            ),
            [
                "sandbox.profile",
                "sandbox.command",
                "sandbox.lifecycle",
                "sandbox.name"
            ]
        );
        assert_eq!(
            check(
                r#"{"project":"p","sandbox":{"image":"i","command":["true"],"lifecycle":"ephemeral","name":"n"}}"#
            ),
            ["sandbox.name"]
        );
        assert_eq!(
            check(
                r#"{"project":"p","sandbox":{"image":"i","command":["true"],"workspace_mode":"sideways","include_dirty":true}}"#
            ),
            ["sandbox.workspace_mode", "sandbox.include_dirty"]
        );
        assert!(check(
            r#"{"project":"p","sandbox":{"image":"i","command":["true"],"workspace_mode":"worktree","include_dirty":true}}"#
        )
        .is_empty());
    }

    #[test]
    fn git_refs_are_names_never_options_or_ranges() {
        for good in [
            "main",
            "origin/main",
            "v1.2",
            "HEAD~2",
            "HEAD^",
            "feature/x-y_z",
            "0123abc",
            "_tmp",
        ] {
            assert_eq!(check_git_ref(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=touch /tmp/p",
            "--end-of-options",
            "a..b",
            "main..",
            "main.",
            ".hidden",
            "a b",
            "a\0b",
            "a\nb",
            "HEAD@{1}",
            "a:b",
            "é",
        ] {
            let e = check_git_ref(bad).unwrap_err().to_string();
            assert!(e.contains("not a git ref"), "{bad}: {e}");
        }
        assert!(check_git_ref(&"a".repeat(GIT_REF_MAX)).is_ok());
        assert!(check_git_ref(&"a".repeat(GIT_REF_MAX + 1)).is_err());
    }

    #[test]
    fn git_ref_and_fetch_need_an_isolated_workspace() {
        let scope = ProjectScope {
            workspace_root: "/srv/p".into(),
            allowed_paths: vec![],
            egress_ceiling: None,
        };
        let check = |json: &str| {
            let run = submit(json).unwrap();
            validate_submission(&run, &scope)
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        let run = |extra: &str| {
            format!(r#"{{"project":"p","sandbox":{{"image":"i","command":["true"]{extra}}}}}"#)
        };
        assert!(check(&run(
            r#","workspace_mode":"worktree","git_ref":"main","fetch":true"#
        ))
        .is_empty());
        assert!(check(&run(r#","workspace_mode":"copy","git_ref":"v1""#)).is_empty());
        assert_eq!(check(&run(r#","git_ref":"main""#)), ["sandbox.git_ref"]);
        assert_eq!(
            check(&run(
                r#","workspace_mode":"worktree","git_ref":"--upload-pack=x""#
            )),
            ["sandbox.git_ref"]
        );
        assert_eq!(
            check(&run(
                r#","workspace_mode":"worktree","git_ref":"main","include_dirty":true"#
            )),
            ["sandbox.include_dirty"]
        );
        assert_eq!(
            check(&run(r#","workspace_mode":"worktree","fetch":true"#)),
            ["sandbox.fetch"]
        );
    }

    #[test]
    fn commit_ids_are_full_lower_case_hex() {
        assert!(is_commit_id(&"a1".repeat(20)));
        assert!(is_commit_id(&"0f".repeat(32)));
        assert!(!is_commit_id(&"A1".repeat(20)));
        assert!(!is_commit_id("abc123"));
        assert!(!is_commit_id(&"g".repeat(40)));
    }
}

/// The longest `git_ref` accepted.
pub const GIT_REF_MAX: usize = 200;

/// What `git_ref` accepts, as the OpenAPI document states it (with `maxLength` [`GIT_REF_MAX`]).
pub const GIT_REF_PATTERN: &str = r"^[A-Za-z0-9_](\.?[A-Za-z0-9_/^~-])*$";

/// A branch, tag or commit to make a workspace from, as the runner hands it to `git rev-parse`:
/// letters, digits, `_`, `-`, `.`, `/`, `^` and `~`, starting with a letter, digit or `_` (never
/// `-`, so it cannot be taken for an option such as `--upload-pack=…`), with no `..` (ranges)
/// and no trailing `.`; at most [`GIT_REF_MAX`] characters.
pub fn check_git_ref(git_ref: &str) -> Result<(), GitRefError> {
    let mut chars = git_ref.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut after_dot = false;
    let rest_ok = chars.all(|c| {
        let ok = if c == '.' {
            !after_dot
        } else {
            c.is_ascii_alphanumeric() || "_/^~-".contains(c)
        };
        after_dot = c == '.';
        ok
    });
    if first_ok && rest_ok && !after_dot && git_ref.chars().count() <= GIT_REF_MAX {
        return Ok(());
    }
    Err(GitRefError {
        shown: berth_core::text::escape_untrusted(git_ref).into_owned(),
    })
}

/// A `git_ref` berth does not hand to git.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{shown}` is not a git ref berth accepts: expected a branch, tag or commit such as main, \
     origin/main, v1.2 or a commit id (letters, digits, `_`, `-`, `.`, `/`, `^`, `~`; \
     starting with a letter, digit or `_`; no `..`; at most {GIT_REF_MAX} characters)"
)]
pub struct GitRefError {
    /// The ref as given, escaped.
    pub shown: String,
}

/// `POST /api/v1/workflows`: a workflow file (or a built-in) to run on the project's runners,
/// each step a run, all steps on one runner in one worktree of the project's checkout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflow {
    pub project: String,
    /// The workflow file's text (TOML); or `builtin`.
    #[serde(default)]
    pub workflow: Option<String>,
    /// A built-in workflow's name, e.g. `builder-reviewer`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// The file's name, for messages.
    #[serde(default)]
    pub file_name: Option<String>,
    /// What `{{ task }}` says.
    #[serde(default)]
    pub task: String,
    /// The image of command steps in the sandbox.
    #[serde(default)]
    pub image: Option<String>,
    /// The image of agent steps (default: the profile's).
    #[serde(default)]
    pub agent_image: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    /// The egress of every step in the sandbox (agent steps add their profile's hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRequest>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the argv of the steps named `tests` and `baseline`.
    #[serde(default)]
    pub test_command: Option<Vec<String>>,
    /// Every step run carries these tags (to route them to runners).
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A workflow as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub id: String,
    pub project: String,
    pub name: String,
    /// `running`, then `succeeded`, `failed`, `cancelled` or `error`.
    pub state: String,
    pub reason: Option<String>,
    pub task: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// The runner holding its worktree (where every step runs).
    pub runner_id: Option<String>,
    /// The step run in progress, or the last one.
    pub current_run: Option<String>,
    pub cancel_requested: bool,
    /// Iterations started.
    pub iterations: u32,
    /// Baseline steps that failed before any change.
    pub baseline_red: Vec<String>,
    /// Every step so far: where (`baseline` or the iteration), its run, state, exit code,
    /// reason and verdict.
    pub steps: Vec<WorkflowStepView>,
    /// The run whose artifact `berth/diff.patch` is the workflow's diff so far
    /// (`GET /api/v1/workflows/{id}/diff`).
    pub diff_run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStepView {
    /// 0 for the baseline.
    pub iteration: u32,
    pub step: String,
    pub run_id: Option<String>,
    pub state: String,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// The reviewer's verdict: approved, summary, requested changes, and where it came from.
    pub verdict: Option<serde_json::Value>,
    pub verdict_error: Option<String>,
}

/// `GET /api/v1/workflows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

/// One entry of a workflow's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowAuditView {
    pub seq: i64,
    pub ts: String,
    pub actor: String,
    /// `submitted`, `step_queued`, `step_finished`, `cancel_requested`, `finished`.
    pub event: String,
    pub detail: String,
}
