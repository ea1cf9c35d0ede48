//! Command-line arguments. Only definitions live here; each command's logic is in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Say exactly why Docker can or cannot be used.
    Doctor(DoctorArgs),
    /// List runs.
    Ls(ListArgs),
    /// Show one run.
    Show(ShowArgs),
    /// Remove containers whose berth process is gone, and record what happened to their runs.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Where runs are kept [default: $BERTH_STATE_DIR, else <workspace>/.berth].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image to run in [config: image].
    #[arg(long)]
    pub image: Option<String>,
    /// When to pull the image: missing, always or never [default: missing].
    #[arg(long, value_name = "WHEN")]
    pub pull: Option<String>,
    /// The directory mounted at /workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// How the workspace is mounted: rw, ro or none [default: rw].
    #[arg(long, value_name = "MODE")]
    pub workspace_mode: Option<String>,
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
    /// Memory limit, e.g. 512m or 2g; swap is disabled [default: 2g].
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 0.5 or 2 [default: 2].
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum number of processes [default: 512].
    #[arg(long)]
    pub pids: Option<i64>,
    /// Stop the command after this long, e.g. 90s or 10m; 0 disables [default: 10m].
    #[arg(long)]
    pub timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping [default: 10s].
    #[arg(long)]
    pub grace: Option<String>,
    /// Network: none, bridge or the name of an existing network [default: none].
    #[arg(long)]
    pub network: Option<String>,
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
    /// Where to run when Docker is not installed: none or local [default: none].
    #[arg(long, value_name = "WHERE")]
    pub fallback: Option<String>,
    /// Print events as JSON lines on stdout instead of human output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// The command and its arguments, run as given (never through a shell).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check that this image is present, and time a sandbox start with it.
    #[arg(long)]
    pub image: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
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
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[arg(long)]
    pub json: bool,
}
