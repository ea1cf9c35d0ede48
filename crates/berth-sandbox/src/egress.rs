//! A run's egress proxy: started before the command, in this process, on the sockets of the
//! run's egress directory (`<run dir>/egress`, or a held container's), stopped when the run
//! ends. Each decision becomes an `egress` event (events.jsonl and the reporter, so a runner's
//! server sees it too) and is summed into the record.
//!
//! On an `ssh://` engine the sandbox cannot mount that directory; [`forward_to_engine`] carries
//! its sockets to the engine's host (`berth_engine::ssh_egress`) for as long as the container
//! exists, and the plan mounts the forward's directory there instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_core::egress::{
    parse_tcp, BrokeredApi, EgressMode, EgressRecord, EgressSummary, Policy, CA_BUNDLE_FILE,
    CA_FILE,
};
use berth_core::event::{Event, EventLine};
use berth_core::mask::Masker;
use berth_core::plan::{sandbox_user, PlanContext};
use berth_engine::ssh_egress::{EgressForward, RemoteAccess};
use berth_engine::Engine;

use crate::clock::now_rfc3339;
use crate::output::Reporter;
use crate::{RunContext, SandboxError};

/// The most egress events one run writes; past it decisions are only counted (a sandbox
/// opening connections in a loop must not fill the disk).
pub const MAX_EGRESS_EVENTS: u64 = 10_000;

/// What the host side of a run's egress needs besides the spec: the real values of brokered
/// credentials and where each brokered API really is.
#[derive(Clone, Default)]
pub struct EgressHost {
    /// `(NAME, value)` of each brokered credential, read on the host. Never sent to the sandbox.
    pub brokered: Vec<(String, String)>,
    /// The upstream of a brokered API when not its default (`BERTH_ANTHROPIC_UPSTREAM`…).
    pub upstreams: BTreeMap<BrokeredApi, String>,
    /// Names pinned to addresses (tests; see `berth_egress::Config::resolve`).
    pub resolve: BTreeMap<String, std::net::IpAddr>,
    /// `(NAME, value)` of each injected header's host variable, read on the host. Never sent
    /// to the sandbox.
    pub injected: Vec<(String, String)>,
    /// Roots trusted for upstream TLS besides the system's (`BERTH_EGRESS_UPSTREAM_CA`, tests).
    pub extra_roots: Vec<berth_egress::CertificateDer<'static>>,
    /// Where the run's rules were set (`berth run`, or a runner's submitted run).
    pub rules_from: berth_egress::RulesFrom,
}

impl std::fmt::Debug for EgressHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressHost")
            .field(
                "brokered",
                &self.brokered.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("upstreams", &self.upstreams)
            .field(
                "injected",
                &self.injected.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Where the credential broker sends each API, from `BERTH_ANTHROPIC_UPSTREAM` and
/// A variable of this process's environment that berth's egress cannot use.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamEnvError {
    #[error("{name}: {source}")]
    BaseUrl {
        name: &'static str,
        source: berth_egress::BaseUrlError,
    },
    #[error("{name}: {path}: {source}")]
    ReadCa {
        name: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{name}: {path}: {source}")]
    Certificates {
        name: &'static str,
        path: String,
        source: berth_egress::CertificateError,
    },
}

/// `BERTH_OPENAI_UPSTREAM` in this process's environment; an unusable value is an error naming
/// the variable. Shared by `berth run` and the runner.
pub fn upstreams_from_env() -> Result<BTreeMap<BrokeredApi, String>, UpstreamEnvError> {
    let mut out = BTreeMap::new();
    // The real APIs behind the broker [default: https://api.anthropic.com,
    // https://api.openai.com]; for tests against a local server.
    for (api, name) in [
        (BrokeredApi::Anthropic, "BERTH_ANTHROPIC_UPSTREAM"),
        (BrokeredApi::Openai, "BERTH_OPENAI_UPSTREAM"),
    ] {
        if let Some(url) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
            berth_egress::check_base_url(&url)
                .map_err(|source| UpstreamEnvError::BaseUrl { name, source })?;
            out.insert(api, url);
        }
    }
    Ok(out)
}

/// The roots of `BERTH_EGRESS_UPSTREAM_CA` (a PEM file), trusted for upstream TLS besides the
/// system's; none when unset. An unusable file is an error naming the variable.
pub fn upstream_roots_from_env(
) -> Result<Vec<berth_egress::CertificateDer<'static>>, UpstreamEnvError> {
    const NAME: &str = "BERTH_EGRESS_UPSTREAM_CA";
    let Some(path) = std::env::var(NAME).ok().filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(&path).map_err(|source| UpstreamEnvError::ReadCa {
        name: NAME,
        path: path.clone(),
        source,
    })?;
    berth_egress::certificates_from_pem(&pem).map_err(|source| UpstreamEnvError::Certificates {
        name: NAME,
        path,
        source,
    })
}

/// Reads `(NAME, value)` for each name from this process's environment, or names the first one
/// missing (an empty value counts as missing).
pub fn read_host_values(names: &[String]) -> Result<Vec<(String, String)>, String> {
    names
        .iter()
        .map(|name| match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok((name.clone(), v)),
            _ => Err(name.clone()),
        })
        .collect()
}

/// A running proxy and what it has seen so far.
pub struct EgressSession {
    _proxy: berth_egress::Proxy,
    summary: Arc<Mutex<EgressSummary>>,
}

impl EgressSession {
    /// The summary so far.
    pub fn summary(&self) -> EgressSummary {
        self.summary.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Starts the run's proxy on the sockets in `dir` (which berth made, 0755). `None` when the run
/// has no egress policy.
pub fn start(
    ctx: &RunContext,
    dir: &Path,
    host: &EgressHost,
) -> Result<Option<EgressSession>, SandboxError> {
    let spec = &ctx.record.spec.egress;
    if spec.mode != EgressMode::Policy {
        return Ok(None);
    }
    fn invalid(e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Invalid(format!("egress: {e}"))
    }
    let policy = Policy::new(&spec.allow).map_err(invalid)?;
    let tcp = spec
        .tcp
        .iter()
        .map(|t| parse_tcp(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let mut brokers = Vec::new();
    for broker in &spec.brokers {
        let Some((_, value)) = host.brokered.iter().find(|(n, _)| *n == broker.credential) else {
            continue;
        };
        let base_url = host
            .upstreams
            .get(&broker.api)
            .cloned()
            .unwrap_or_else(|| broker.api.default_upstream().to_string());
        berth_egress::check_base_url(&base_url).map_err(invalid)?;
        brokers.push(berth_egress::BrokerUpstream {
            api: broker.api,
            base_url,
            credential_name: broker.credential.clone(),
            credential: value.clone(),
        });
    }
    let mut inject = Vec::new();
    for entry in &spec.inject {
        let Some((_, value)) = host.injected.iter().find(|(n, _)| *n == entry.env) else {
            return Err(invalid(format!(
                "the header for {} comes from {}, which was not read on this host",
                entry.host, entry.env
            )));
        };
        inject.push(berth_egress::InjectUpstream {
            entry: entry.clone(),
            value: value.clone(),
        });
    }
    let listeners: Vec<String> = spec
        .listeners()
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| {
            BrokeredApi::parse(name).map_or(true, |api| brokers.iter().any(|b| b.api == api))
        })
        .collect();
    let handle =
        berth_archive::beneath::DirHandle::open(dir).map_err(|e| SandboxError::io(dir, e))?;
    let fd = std::os::fd::AsFd::as_fd(&handle)
        .try_clone_to_owned()
        .map_err(|e| SandboxError::io(dir, e))?;
    let summary = Arc::new(Mutex::new(EgressSummary {
        mode: EgressMode::Policy,
        ..EgressSummary::default()
    }));
    let sink = sink(ctx, summary.clone())?;
    let proxy = berth_egress::Proxy::start(
        fd,
        &listeners,
        berth_egress::Config {
            policy,
            tcp,
            brokers,
            resolve: host.resolve.clone(),
            extra_roots: host.extra_roots.clone(),
            inject,
            // The CA outlives no run: the run's time, and a day for what is slow to end.
            inject_validity: ctx.record.spec.timeout + std::time::Duration::from_secs(86_400),
            rules_from: host.rules_from,
            ..berth_egress::Config::default()
        },
        sink,
    )
    .map_err(|e| SandboxError::Invalid(format!("starting the egress proxy failed: {e}")))?;
    if let Some((ca, bundle)) = proxy.ca_files() {
        write_public(&handle, CA_FILE, ca)?;
        write_public(&handle, CA_BUNDLE_FILE, bundle)?;
    }
    Ok(Some(EgressSession {
        _proxy: proxy,
        summary,
    }))
}

/// Writes a public file (the run CA's certificate) into berth's egress directory, readable by
/// the sandbox user: made beside and renamed over, so a held container's previous run's file
/// is replaced whole.
fn write_public(
    dir: &berth_archive::beneath::DirHandle,
    name: &str,
    text: &str,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    let tmp = format!(".{name}.new");
    let io = |e| SandboxError::io(&path, e);
    dir.remove_entry_all(std::ffi::OsStr::new(&tmp))
        .map_err(io)?;
    let mut file = dir
        .create_file(std::ffi::OsStr::new(&tmp), 0o644)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    dir.rename_entry(std::ffi::OsStr::new(&tmp), std::ffi::OsStr::new(name))
        .map_err(io)
}

/// For a run with egress policy on a remote engine: makes a private directory on the engine's
/// host, forwards a socket there to each of the proxy's sockets in the run's egress directory,
/// and points the plan's `/berth/egress` at it. `None` when nothing needs carrying (no policy,
/// or a local engine). Only an `ssh://` engine can carry them; any other remote engine is
/// refused (as `launch::check_request` already does) rather than given a network.
///
/// The caller keeps the forward until the container is gone and then [`close_forward`]s it;
/// dropped on any other path, it still ends ssh, and the remote directory goes with it.
pub(crate) async fn forward_to_engine<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    plan_context: &mut PlanContext,
) -> Result<Option<EgressForward>, SandboxError> {
    let spec = &ctx.record.spec;
    if spec.egress.mode != EgressMode::Policy || !plan_context.remote_engine {
        return Ok(None);
    }
    let Some(target) = engine.ssh_target() else {
        return Err(crate::launch::remote_egress_refused());
    };
    let Some(local_dir) = plan_context.egress_host_path.clone() else {
        return Err(SandboxError::Invalid(
            "egress policy needs the proxy's socket directory on this host".into(),
        ));
    };
    let names: Vec<String> = spec
        .egress
        .listeners()
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let user = sandbox_user(
        spec.user,
        plan_context.invoking_uid,
        plan_context.invoking_gid,
    );
    let forward = EgressForward::open(target, &local_dir, &names, user)
        .await
        .map_err(|e| SandboxError::WithHint {
            message: format!(
                "carrying the egress proxy's sockets to the engine's host over ssh failed: {e}"
            ),
            hint: "berth runs `ssh -R` to the engine's host as it does for the engine's socket; the remote sshd must allow stream-local forwarding (AllowStreamLocalForwarding, the default), and the remote login shell must be a POSIX shell with mktemp; or run with --egress none".into(),
        })?;
    if forward.access() == RemoteAccess::Shared {
        ctx.emit(Event::Warning {
            message: format!(
                "the ssh login user on the engine's host is neither root nor the sandbox's uid {}: the egress sockets in {} are open to every account there while the run lasts (log in as root or as uid {} to keep them to the sandbox)",
                user.0,
                forward.remote_dir(),
                user.0
            ),
        });
    }
    plan_context.egress_engine_path = Some(forward.remote_dir().into());
    Ok(Some(forward))
}

/// Ends a run's forward once its container is gone; what could not be cleaned up is a warning.
pub(crate) async fn close_forward(ctx: &mut RunContext, forward: Option<EgressForward>) {
    if let Some(forward) = forward {
        if let Err(e) = forward.close().await {
            ctx.emit(Event::Warning {
                message: e.to_string(),
            });
        }
    }
}

/// Where decisions go: masked, appended to events.jsonl, shown by the reporter, summed.
fn sink(
    ctx: &RunContext,
    summary: Arc<Mutex<EgressSummary>>,
) -> Result<berth_egress::Sink, SandboxError> {
    let path = ctx.run_dir.events_path();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| SandboxError::io(&path, e))?;
    let file = Mutex::new(file);
    let reporter: Arc<dyn Reporter> = ctx.reporter.clone();
    let masker: Masker = ctx.masker.clone();
    let run_id = ctx.record.id.clone();
    Ok(Arc::new(move |record: EgressRecord| {
        let record = mask(&masker, record);
        let events = {
            let Ok(mut s) = summary.lock() else { return };
            s.add(&record);
            s.allowed + s.denied
        };
        if events > MAX_EGRESS_EVENTS {
            if events == MAX_EGRESS_EVENTS + 1 {
                emit(&file, &*reporter, &run_id, Event::Warning {
                    message: format!("more than {MAX_EGRESS_EVENTS} egress decisions: the rest are only counted in the record"),
                });
            }
            return;
        }
        emit(&file, &*reporter, &run_id, Event::Egress { egress: record });
    }))
}

fn emit(file: &Mutex<std::fs::File>, reporter: &dyn Reporter, run_id: &str, event: Event) {
    let line = EventLine {
        ts: now_rfc3339(),
        run_id: run_id.to_string(),
        event,
    };
    if let Ok(mut json) = serde_json::to_vec(&line) {
        json.push(b'\n');
        if let Ok(mut f) = file.lock() {
            // One write per line: appends from other writers never interleave inside it.
            let _ = f.write_all(&json);
        }
    }
    reporter.event(&line);
}

/// Sandbox-chosen text (host, path, method) masked like any output.
fn mask(masker: &Masker, mut r: EgressRecord) -> EgressRecord {
    r.host = masker.mask_str(&r.host);
    r.path = r.path.map(|p| masker.mask_str(&p));
    r.method = r.method.map(|m| masker.mask_str(&m));
    r.rule = masker.mask_str(&r.rule);
    r.error = r.error.map(|e| masker.mask_str(&e));
    r
}
