//! Command-line arguments. Only definitions live here; each command's logic is in `commands/`.

use std::path::PathBuf;

use berth_core::egress::EgressMode;
use berth_core::exit::RunState;
use berth_core::spec::{Fallback, Isolation, PullPolicy, WorkspaceMode};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// How the server and the runner write their logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

/// `--lifecycle` of `run` and `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lifecycle {
    /// A fresh container per run.
    Ephemeral,
    /// A long-lived container per agent and --name, reused.
    Persistent,
}

impl Lifecycle {
    /// The name the core's `persistent_for` and the API's `lifecycle` field take.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ephemeral => "ephemeral",
            Self::Persistent => "persistent",
        }
    }
}

/// `--execution-mode` of `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutionMode {
    /// In a hardened container on the runner's engine.
    DockerSandbox,
    /// On the runner's host WITHOUT a sandbox (runners started with --allow-local only).
    Local,
}

impl From<ExecutionMode> for berth_api::ExecutionMode {
    fn from(mode: ExecutionMode) -> Self {
        match mode {
            ExecutionMode::DockerSandbox => Self::DockerSandbox,
            ExecutionMode::Local => Self::Local,
        }
    }
}

/// `ls --state`: the states a run has on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ServerRunState {
    Queued,
    Claimed,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
    Error,
}

impl From<ServerRunState> for RunState {
    fn from(state: ServerRunState) -> Self {
        match state {
            ServerRunState::Queued => Self::Queued,
            ServerRunState::Claimed => Self::Claimed,
            ServerRunState::Running => Self::Running,
            ServerRunState::Succeeded => Self::Succeeded,
            ServerRunState::Failed => Self::Failed,
            ServerRunState::TimedOut => Self::TimedOut,
            ServerRunState::Cancelled => Self::Cancelled,
            ServerRunState::Lost => Self::Lost,
            ServerRunState::Error => Self::Error,
        }
    }
}

/// `token create --role`: the roles a created token may have (admin tokens are made by the
/// server itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    /// Submit and read runs.
    Client,
    /// Claim and run them.
    Runner,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Runner => "runner",
        }
    }
}

/// `--allow-preset`: the names of the core's presets, so that clap lists them and refuses others.
fn preset_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        berth_core::egress::PRESETS.iter().map(|(name, _)| *name),
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Run AI coding agents and plain commands in hardened, disposable Docker sandboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a fresh sandbox.
    Run(Box<RunArgs>),
    /// Workflows: builder → tests → reviewer loops.
    Workflow(WorkflowArgs),
    /// Say exactly why Docker can or cannot be used.
    Doctor(DoctorArgs),
    /// List the profiles (agents and executors) and where each comes from.
    Profiles(ProfilesArgs),
    /// List agent sessions with the run that created them.
    Sessions(SessionsArgs),
    /// List runs.
    Ls(ListArgs),
    /// Show one run.
    Show(ShowArgs),
    /// Remove containers whose berth process is gone, and record what happened to their runs.
    Gc(GcArgs),
    /// Print the changes a copy or worktree run made (its diff.patch).
    Diff(RunRefArgs),
    /// Apply the changes of a copy or worktree run to your checkout.
    Apply(RunRefArgs),
    /// Keep the changes of a worktree run as the branch berth/<run-id>, with one commit.
    Branch(RunRefArgs),
    /// List held containers: persistent ones and the warm pool, with age and last use.
    Ps(PsArgs),
    /// Remove persistent containers by name (or all of them), or drain the warm pool.
    Rm(RmArgs),
    /// Build and list berth's sandbox images (berth/<target>:<berth version>).
    Image(crate::commands::image::ImageArgs),
    /// Run the coordinator: HTTP API, store, audit trail, live logs.
    Server(ServerArgs),
    /// Claim runs from a server and execute them on this host's Docker engine.
    Runner(RunnerArgs),
    /// Manage API tokens (admin).
    Token(TokenArgs),
    /// Manage projects (admin).
    Project(ProjectArgs),
    /// Submit a run to a server.
    Submit(Box<SubmitArgs>),
    /// Show a server run's output and events.
    Logs(LogsArgs),
    /// Cancel a server run.
    Cancel(CancelArgs),
    /// List a server's runners.
    Runners(RunnersArgs),
    /// Trust a workspace's berth.toml, so it may widen settings (mounts, env, network…).
    Trust(TrustArgs),
    /// Write a commented berth.toml for this directory (an existing one is never overwritten).
    Init(InitArgs),
    /// Print a shell completion script on stdout, e.g. `berth completions bash > ~/.local/share/bash-completion/completions/berth`.
    Completions(CompletionsArgs),
    /// Print berth's man page (roff) on stdout, e.g. `berth man | man -l -`.
    Man,
    /// Print berth's version (as --version).
    Version,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to write berth.toml into [default: the current directory].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Where runs are kept [default: $BERTH_STATE_DIR, else <workspace>/.berth].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Which engine to use.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineArgs {
    /// The engine: a name from `[engines.NAME]` in berth.toml or the user config, or
    /// unix:///PATH, tcp://HOST:PORT, ssh://[USER@]HOST[:PORT] [default: DOCKER_HOST, else the
    /// local socket].
    #[arg(long, value_name = "NAME|URL")]
    pub engine: Option<String>,
    /// Accept a tcp:// engine without TLS: unencrypted and unauthenticated.
    #[arg(long)]
    pub engine_insecure: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run with a profile (an agent such as claude-code or codex, or procedural); the arguments
    /// are then the prompt. `berth profiles` lists them.
    #[arg(long)]
    pub profile: Option<String>,
    /// Resume the agent session SESSION (see `berth sessions`).
    #[arg(long, value_name = "SESSION", conflicts_with = "continue_session")]
    pub resume: Option<String>,
    /// Continue the agent's most recent session.
    #[arg(long = "continue")]
    pub continue_session: bool,
    /// The image to run in [config: image].
    #[arg(long)]
    pub image: Option<String>,
    /// When to pull the image: missing, always or never [default: missing].
    #[arg(long, value_name = "WHEN")]
    pub pull: Option<PullPolicy>,
    /// The directory mounted at /workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// How the workspace reaches the sandbox: rw, ro, none, copy (uploaded, changes come back
    /// into the run directory) or worktree (a fresh git worktree, changes come back as a patch)
    /// [default: rw].
    #[arg(long, value_name = "MODE")]
    pub workspace_mode: Option<WorkspaceMode>,
    /// Worktree mode: carry the checkout's uncommitted changes (tracked and untracked, not
    /// ignored) into the worktree.
    #[arg(long)]
    pub include_dirty: bool,
    /// Copy mode: the most file content uploaded, e.g. 500m or 4g [default: 1g].
    #[arg(long, value_name = "SIZE")]
    pub copy_limit: Option<String>,
    /// An extra mount, SRC:DST[:ro|rw] (read-only unless :rw); repeatable.
    #[arg(long = "mount", value_name = "SRC:DST[:MODE]")]
    pub mounts: Vec<String>,
    /// An environment variable for the command, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A secret taken from the host environment variable NAME; repeatable. It reaches the
    /// command as $NAME and /run/secrets/NAME, and is masked in all output.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Memory limit, e.g. 512m or 2g, from 6m to 1024g; swap is disabled [default: 2g].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit, e.g. 0.5 or 2, from 0.01 to 1024 [default: 2].
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Maximum number of processes, 1 to 4194304 [default: 512].
    #[arg(long, value_name = "N")]
    pub pids: Option<String>,
    /// Disk limit for the container's writable layer, e.g. 10g, from 1m to 65536g (the engine's
    /// storage quota: overlay2 on xfs with pquota, btrfs, zfs, devicemapper; refused elsewhere)
    /// [default: none].
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Stop the command after this long, e.g. 90s or 10m, at most 8760h (365 days); 0 disables
    /// [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping, at most 8760h [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
    /// Network: none, bridge or the name of an existing network [default: none].
    #[arg(long)]
    pub network: Option<String>,
    /// Isolation from the host's kernel: runc (the engine's default runtime) or gvisor (gVisor's
    /// runsc, registered with the engine; `berth doctor` says how) [default: runc].
    #[arg(long, value_name = "LEVEL")]
    pub isolation: Option<Isolation>,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Inject a header into HTTPS requests to HOST[:PORT] (port 443 by default), its value read
    /// from this host's variable ENV_VAR (it never enters the sandbox): HOST=Header-Name:ENV_VAR.
    /// berth's proxy terminates TLS to HOST with a CA made for the run, which the sandbox
    /// trusts through SSL_CERT_FILE and the like; limit methods and paths in berth.toml
    /// ([egress.inject."HOST"]); repeatable.
    #[arg(long = "inject-header", value_name = "HOST=HEADER:ENV_VAR")]
    pub inject_headers: Vec<String>,
    /// Read-only root file system, with writable tmpfs for /tmp and the home directory.
    #[arg(long)]
    pub read_only: bool,
    /// Run as UID[:GID] [default: your uid:gid, or 1000:1000 when berth runs as root].
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Publish a container port on 127.0.0.1, CPORT[:HPORT]; repeatable.
    #[arg(long, value_name = "CPORT[:HPORT]")]
    pub publish: Vec<String>,
    /// A path inside the container to copy back after exit; repeatable. $BERTH_OUT
    /// (/berth/out) is always collected.
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<String>,
    /// Leave the stopped container in place for debugging and print its name.
    #[arg(long)]
    pub keep: bool,
    /// ephemeral (a fresh container per run) or persistent (one long-lived container per agent
    /// and --name, reused by exec) [default: the profile's, else ephemeral].
    #[arg(long, value_name = "LIFECYCLE")]
    pub lifecycle: Option<Lifecycle>,
    /// The persistent container to run in (implies --lifecycle persistent) [default: the
    /// profile's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Do not take a container from the warm pool configured for this profile or image.
    #[arg(long)]
    pub no_pool: bool,
    /// Where to run when Docker is not installed: none or local [default: none].
    #[arg(long, value_name = "WHERE")]
    pub fallback: Option<Fallback>,
    /// Print events as JSON lines on stdout instead of human output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The command and its arguments, run as given (never through a shell); with an agent
    /// profile, the prompt. Everything from the first word that is not one of berth's options
    /// (or everything after `--`) belongs to the command; a word that looks like an option before
    /// it is an error, so a misspelled flag is never run as the command.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The workspace whose berth.toml is read [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// The workspace whose runs made the sessions [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check that this image is present, and time a sandbox start with it.
    #[arg(long)]
    pub image: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// List the runs of this server instead of local ones.
    #[arg(long, env = crate::env::BERTH_SERVER, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: a bearer token.
    #[arg(long, env = crate::env::BERTH_TOKEN, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// With --server: only runs in this state.
    #[arg(long = "state")]
    pub run_state: Option<ServerRunState>,
    /// List workflows instead of runs (`berth workflow run` here, or with --server, submitted
    /// ones).
    #[arg(long)]
    pub workflows: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// The workspace whose .berth directory holds the runs [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A run id, or a unique prefix of one.
    pub run: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Show a run of this server instead of a local one.
    #[arg(long, env = crate::env::BERTH_SERVER, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: a bearer token.
    #[arg(long, env = crate::env::BERTH_TOKEN, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// The workspace whose runs are searched [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunRefArgs {
    /// A run id, or a unique prefix of one.
    pub run: String,
    #[command(flatten)]
    pub state: StateArgs,
    /// The workspace whose .berth directory holds the runs [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// With a server, a run that is not local is taken from there (its `berth/diff.patch`).
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    pub command: WorkflowCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Run a workflow on the git repository here, in a worktree of its own; prints the diff's
    /// path.
    Run(Box<WorkflowRunArgs>),
}

#[derive(Debug, Args)]
pub struct WorkflowRunArgs {
    /// A workflow file (TOML), or a built-in workflow: builder-reviewer.
    pub workflow: String,
    /// The task, `{{ task }}` in the prompts.
    #[arg(trailing_var_arg = true, value_name = "TASK")]
    pub task: Vec<String>,
    /// The test command of the `tests` and `baseline` steps, e.g. "make test" (split on spaces).
    #[arg(long, value_name = "CMD")]
    pub test_command: Option<String>,
    /// The image for command steps in the sandbox [default: config image].
    #[arg(long)]
    pub image: Option<String>,
    /// The image for agent steps, instead of each profile's.
    #[arg(long, value_name = "IMAGE")]
    pub agent_image: Option<String>,
    /// The network of every sandboxed step: none, bridge or a network's name [default: each
    /// profile's, else none].
    #[arg(long)]
    pub network: Option<String>,
    /// The egress of every sandboxed step; agent steps add their profile's hosts.
    #[command(flatten)]
    pub egress: EgressArgs,
    /// An environment variable for every sandboxed step, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Let `where = "host"` steps run on this host without a sandbox.
    #[arg(long)]
    pub allow_host_steps: bool,
    /// Keep the worktree after the workflow.
    #[arg(long)]
    pub keep: bool,
    /// Events as JSON lines, and the result as JSON, on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Persistent containers: NAME (as given to --name), AGENT/NAME, or the container's name.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Every persistent container.
    #[arg(long)]
    pub all: bool,
    /// Drain the warm pool: remove every ready pool container.
    #[arg(long)]
    pub pool: bool,
    /// Remove even while a run is inside (the run fails).
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How to reach a berth server.
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// The server's URL, e.g. https://berth.example.com:8765, or http://127.0.0.1:8765 on this
    /// machine.
    #[arg(long, global = true, env = crate::env::BERTH_SERVER, value_name = "URL")]
    pub server: Option<String>,
    /// A bearer token; admin commands fall back to <state dir>/admin-token.
    #[arg(long, global = true, env = crate::env::BERTH_TOKEN, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// How the connection to a berth server is secured.
#[derive(Debug, Args, Clone, Default)]
pub struct TransportArgs {
    /// A PEM file of CA certificates to trust for the server's certificate, besides the
    /// system's roots (for a private CA).
    #[arg(long, global = true, env = crate::env::BERTH_CA, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Allow plain http:// to a server that is not on this machine: the token and all run
    /// output cross the network in clear (warned about on every use).
    #[arg(
        long,
        global = true,
        env = crate::env::BERTH_INSECURE_HTTP,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_http: bool,
    /// A client certificate chain in PEM to present to the server (mutual TLS; a server with
    /// --tls-client-ca takes runner tokens only with one), with --tls-client-key.
    #[arg(long, global = true, env = crate::env::BERTH_TLS_CLIENT_CERT, value_name = "FILE", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The PEM private key of --tls-client-cert (not encrypted).
    #[arg(long, global = true, env = crate::env::BERTH_TLS_CLIENT_KEY, value_name = "FILE", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl TransportArgs {
    pub fn transport(&self) -> berth_client::Transport {
        berth_client::Transport {
            ca: self.ca.clone(),
            insecure_http: self.insecure_http,
            identity: match (&self.tls_client_cert, &self.tls_client_key) {
                (Some(cert), Some(key)) => Some(berth_client::ClientIdentity {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "ADDR")]
    pub listen: String,
    /// Database: sqlite://PATH or postgres://... [default: sqlite in the state dir].
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// A file holding the PostgreSQL password for a --db URL without one, so that it is in no
    /// process's arguments (e.g. a docker secret or a systemd credential).
    #[arg(long, env = crate::env::BERTH_DB_PASSWORD_FILE, value_name = "FILE")]
    pub db_password_file: Option<PathBuf>,
    /// State directory [default: $BERTH_STATE_DIR, else the user's data directory].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// How long a runner's claim lasts without a heartbeat; then running runs become `lost`.
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    pub lease: String,
    /// How often runners heartbeat; three missed heartbeats mark a runner offline.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub heartbeat: String,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first); with
    /// --tls-key. SIGHUP reloads both files; a pair that cannot be used is refused and logged.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (not encrypted).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS for runners: PEM certificates of the CA that signs runners' client
    /// certificates. Runner tokens are then accepted only from a client presenting one;
    /// clients and browsers need none. Reloaded on SIGHUP with the pair.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// A file holding a token that /metrics accepts besides the API tokens, for a scraper that
    /// should hold no API token.
    #[arg(long, env = crate::env::BERTH_METRICS_TOKEN_FILE, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Tags this runner offers; a run goes only to runners that have all of its tags.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tags: Vec<String>,
    /// Take only runs that have tags.
    #[arg(long)]
    pub require_matching_tags: bool,
    /// A secret this runner has in its environment (repeatable, or A,B): declared to the server
    /// by name, so that a run naming a secret no runner declared is flagged when submitted.
    /// The runner refuses to start when one is not set.
    #[arg(long = "secret", value_delimiter = ',', value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Runs executed at once.
    #[arg(long, default_value_t = 1)]
    pub capacity: usize,
    /// After SIGTERM: how long runs in progress may go on before they are stopped (SIGTERM, 3 s,
    /// SIGKILL). A second SIGTERM, or SIGINT, stops them at once.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub drain_timeout: String,
    /// Accept runs with execution_mode local: they run on this host WITHOUT a sandbox.
    #[arg(long)]
    pub allow_local: bool,
    /// A file holding the runner token, instead of --token (e.g. a docker secret or a systemd
    /// credential).
    #[arg(long, env = crate::env::BERTH_TOKEN_FILE, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The runner's name and id [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Where run directories are kept [default: $BERTH_STATE_DIR, else the user's data directory].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the secret is printed once, on stdout.
    Create {
        /// What the token may do: client (submit and read runs) or runner (claim and run them).
        #[arg(long, value_name = "ROLE")]
        role: TokenRole,
        /// Limit a client token to one project.
        #[arg(long)]
        project: Option<String>,
    },
    /// List tokens.
    Ls,
    /// Revoke a token.
    Revoke {
        /// The token's id, as `berth token ls` shows it.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The server's state directory, to read admin-token from when no token is given.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// How a sandbox reaches the network, for `run`, `submit` and `workflow run`.
#[derive(Debug, Clone, Default, Args)]
pub struct EgressArgs {
    /// Egress: none (no network), policy (only allowed hosts, through berth's proxy, every
    /// decision recorded) or open (the bridge network, unchecked) [default: policy for agent
    /// profiles and whenever a host is allowed, else none].
    #[arg(long = "egress", value_name = "MODE")]
    pub mode: Option<EgressMode>,
    /// Allow a host through the egress proxy: HOST[:PORT] (no port: 80 and 443), *.DOMAIN[:PORT],
    /// an IP address, or `[METHOD,…] HOST[:PORT]/PATH` for plain HTTP; repeatable.
    #[arg(long = "allow-host", value_name = "RULE")]
    pub allow_hosts: Vec<String>,
    /// Allow a named set of hosts: package-registries, github, anthropic, openai; repeatable.
    #[arg(long = "allow-preset", value_name = "NAME", value_parser = preset_names())]
    pub allow_presets: Vec<String>,
    /// A raw TCP forward to HOST:PORT (git over ssh…): the sandbox reaches it at
    /// 127.0.0.1:41100+N (see $BERTH_TCP_FORWARDS); repeatable.
    #[arg(long = "allow-tcp", value_name = "HOST:PORT")]
    pub allow_tcp: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// The project's name.
        name: String,
        /// The directory on runner hosts mounted as the workspace of the project's runs.
        #[arg(long, value_name = "DIR")]
        workspace_root: String,
        /// A further directory runs may mount; repeatable.
        #[arg(long = "allow", value_name = "DIR")]
        allowed_paths: Vec<String>,
        /// An egress allow rule no run of the project may go beyond (HOST[:PORT], *.DOMAIN…);
        /// repeatable. With a ceiling, open egress and networks are refused. [default: none]
        #[arg(long = "egress-ceiling", value_name = "RULE")]
        egress_ceiling: Vec<String>,
    },
    /// List projects.
    Ls,
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    pub command: ProjectCommand,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The server's state directory, to read admin-token from when no token is given.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The project the run belongs to.
    #[arg(long)]
    pub project: String,
    /// The image to run in [default: the profile's, else the runner's config].
    #[arg(long)]
    pub image: Option<String>,
    /// Execution: docker-sandbox or local.
    #[arg(long, value_name = "MODE", default_value = "docker-sandbox")]
    pub execution_mode: ExecutionMode,
    /// The working directory inside the sandbox.
    #[arg(long)]
    pub workdir: Option<String>,
    /// An environment variable for the command, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A secret the runner takes from its own environment variable NAME; repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// SRC:DST[:ro|rw], paths on the runner host; replaces the default workspace mount.
    #[arg(long = "mount", value_name = "SRC:DST[:MODE]")]
    pub mounts: Vec<String>,
    /// Memory limit, e.g. 512m or 2g [default: 2g].
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, from 0.01 to 1024.
    #[arg(long, value_name = "N", value_parser = cpus_flag)]
    pub cpus: Option<f64>,
    /// Maximum number of processes, 1 to 4194304.
    #[arg(long, value_name = "N", value_parser = pids_flag)]
    pub pids: Option<i64>,
    /// Disk limit, e.g. 10g, from 1m to 65536g; the runner refuses it where its engine's
    /// storage driver has no quota.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Stop the command after this long, e.g. 90s or 10m; 0 disables [default: 10m].
    #[arg(long)]
    pub timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping [default: 10s].
    #[arg(long)]
    pub grace: Option<String>,
    /// Network: none, bridge or the name of a network on the runner [default: none].
    #[arg(long)]
    pub network: Option<String>,
    /// Isolation: runc or gvisor; gvisor runs go only to runners whose engine offers it
    /// (tag isolation:gvisor) [default: the profile's, else runc].
    #[arg(long, value_name = "LEVEL")]
    pub isolation: Option<Isolation>,
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Read-only root file system, with writable tmpfs for /tmp and the home directory.
    #[arg(long)]
    pub read_only: bool,
    /// Run as UID[:GID] [default: the runner's uid:gid, or 1000:1000 when it runs as root].
    #[arg(long)]
    pub user: Option<String>,
    /// A path inside the container to copy back after exit; repeatable.
    #[arg(long = "artifact", value_name = "PATH")]
    pub artifacts: Vec<String>,
    /// A profile the runner resolves; the arguments are then its prompt (or, for profiles
    /// without a prompt, the command).
    #[arg(long)]
    pub profile: Option<String>,
    /// ephemeral or persistent (the runner's long-lived container for the profile and --name).
    #[arg(long, value_name = "LIFECYCLE")]
    pub lifecycle: Option<Lifecycle>,
    /// The persistent container to run in on the runner (implies --lifecycle persistent).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How the project's workspace reaches the sandbox: rw, ro, copy, worktree or none; copy
    /// and worktree hand back berth/diff.patch as an artifact.
    #[arg(long, value_name = "MODE")]
    pub workspace_mode: Option<WorkspaceMode>,
    /// Worktree mode: carry the checkout's uncommitted changes over.
    #[arg(long)]
    pub include_dirty: bool,
    /// Worktree and copy modes: make the workspace from this branch, tag or commit of the
    /// project's checkout on the runner (instead of its HEAD or its current files); the run
    /// records the commit it resolved to.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// With --ref: the runner runs `git fetch` (the checkout's configured remote) first.
    #[arg(long, requires = "git_ref")]
    pub fetch: bool,
    /// Tags the runner must have.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tags: Vec<String>,
    /// A label of the run, KEY=VALUE, for your own bookkeeping; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Submit a workflow instead of one run: a workflow file (TOML) or a built-in
    /// (builder-reviewer); the arguments are then its task. Every step runs on one runner, in
    /// one worktree of the project's checkout.
    #[arg(long, value_name = "FILE|BUILT-IN")]
    pub workflow: Option<String>,
    /// With --workflow: the image of agent steps (default: the profile's).
    #[arg(long, value_name = "IMAGE", requires = "workflow")]
    pub agent_image: Option<String>,
    /// With --workflow: the command of the steps named `tests` and `baseline`.
    #[arg(long, value_name = "COMMAND", requires = "workflow")]
    pub test_command: Option<String>,
    /// Stream the run's output (a workflow's steps) until it ends and exit with its status.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (never through a shell); with --profile, the prompt.
    #[arg(
        required_unless_present = "workflow",
        trailing_var_arg = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `--cpus` of `berth submit`, checked here with the same rule as everywhere else.
fn cpus_flag(value: &str) -> Result<f64, String> {
    berth_core::units::parse_cpus(value).map_err(|e| e.to_string())?;
    value
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count `{value}`"))
}

/// `--pids` of `berth submit`.
fn pids_flag(value: &str) -> Result<i64, String> {
    berth_core::units::parse_pids(value).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A run id (a local run: also a unique prefix of one).
    pub run: String,
    /// Keep streaming until the run ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Without --server: the workspace whose runs are searched [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The server run's id.
    pub run: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunnersArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The berth.toml, or the directory holding it [default: the current directory].
    pub path: Option<PathBuf>,
    /// Remove the file's trust record.
    #[arg(long, conflicts_with = "show")]
    pub revoke: bool,
    /// Print what the file changes compared with not having it, and whether it is trusted.
    #[arg(long)]
    pub show: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every option and argument of every command, with the path of commands leading to it,
    /// that `--help` shows without a description.
    fn undescribed(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(format!("{path} {} (the command)", sub.get_name()));
            }
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_option_has_a_description() {
        let mut missing = Vec::new();
        undescribed(&super::Cli::command(), "berth", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_environment_is_named_once() {
        // clap appends `[env: NAME=]` itself; a doc comment that says it too shows it twice.
        let mut twice = Vec::new();
        fn walk(command: &clap::Command, path: &str, twice: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let help = arg
                    .get_long_help()
                    .or(arg.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if arg.get_env().is_some() && help.contains("[env: ") {
                    twice.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), twice);
            }
        }
        walk(&super::Cli::command(), "berth", &mut twice);
        assert!(twice.is_empty(), "[env: …] written by hand: {twice:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
