//! The coordinator's durable store: tokens, projects, runs, their events and audit trail, and
//! runners, and workflows. One trait, [`Store`], made of one trait per area ([`AuthStore`],
//! [`RunStore`], [`RunnerStore`], [`WorkflowStore`]), with one SQL implementation for SQLite (the
//! embedded default, WAL mode) and PostgreSQL (many nodes); the same behaviour and the same tests
//! on both.
//!
//! Architecture Invariant: every change of a run's state happens here, in one transaction with its
//! audit entry, guarded by the expected current state (and, for runner writes, the lease token).
//! A write that loses the race changes nothing and says so.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

mod db;
mod sql;
mod wake;

pub use sql::{SqlStore, MAX_EVENTS_LIMIT, MAX_LIST_LIMIT};
pub use wake::{Wake, WakeFeed, CHANNEL as WAKE_CHANNEL};

/// The life of a run on the coordinator: the core's run states, of which the store holds
/// [`RunState::ON_COORDINATOR`].
pub use berth_core::exit::RunState;

/// Who may do what with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Client,
    Runner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Client => "client",
            Self::Runner => "runner",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::Client, Self::Runner]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Where a run executes, stored as the API's words (`docker-sandbox`, `local`) in
/// `execution_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionMode {
    /// In a hardened container on the runner's engine.
    #[default]
    DockerSandbox,
    /// On the runner's host without a sandbox.
    Local,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DockerSandbox => "docker-sandbox",
            Self::Local => "local",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::DockerSandbox, Self::Local]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A token as stored: its secret is kept only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// For client tokens: the only project they may touch. `None`: every project.
    pub project: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    /// The directory on runner hosts that is mounted as the run's workspace.
    pub workspace_root: String,
    pub allowed_paths: Vec<String>,
    /// Allow rules no run of the project may go beyond; `None`: no ceiling.
    pub egress_ceiling: Option<Vec<String>>,
    pub created_at: i64,
}

/// A run as stored. `spec` is the validated submission as JSON (secret names only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: String,
    pub project: String,
    pub state: RunState,
    pub execution_mode: ExecutionMode,
    pub spec: serde_json::Value,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub claimed_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub runner_id: Option<String>,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// Set when a cancel was requested for a claimed or running run; the runner learns it at
    /// its next heartbeat or poll.
    pub cancel_requested: bool,
    /// Milliseconds since the epoch at which the current lease ends, while claimed or running.
    pub lease_expires_at: Option<i64>,
    /// The only runner that may claim it, if any.
    pub pinned_runner: Option<String>,
    /// The commit its workspace was made from, as the runner reported it with the end.
    pub resolved_commit: Option<String>,
}

/// A new run to insert in state `queued`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub project: String,
    pub execution_mode: ExecutionMode,
    pub spec: serde_json::Value,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    /// Who submitted it (token id), for the audit trail.
    pub actor: String,
    /// Only this runner may claim it (a workflow's later steps go where its worktree is).
    pub pinned_runner: Option<String>,
}

/// One event of a run's stream (output or lifecycle), numbered per run from 1 so that SSE
/// clients can resume with `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    pub run_id: String,
    pub seq: i64,
    pub ts: i64,
    /// `stdout`, `stderr`, or a lifecycle kind such as `state`.
    pub kind: String,
    /// The text (or JSON text) of the event.
    pub data: String,
}

/// An event to append; the store assigns `seq`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NewEvent {
    pub ts: i64,
    pub kind: String,
    pub data: String,
}

/// One state transition of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub run_id: String,
    pub seq: i64,
    pub ts: i64,
    pub from_state: Option<RunState>,
    pub to_state: RunState,
    /// `token:<id>`, `runner:<id>` or `server`.
    pub actor: String,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerRecord {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub require_matching_tags: bool,
    pub capacity: i64,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    pub online: bool,
    /// The runner token that registered this name; only it may register, claim or heartbeat
    /// as this runner. `None`: registered before names were bound to tokens.
    pub token_id: Option<String>,
    /// The names of the secrets it declared it has (values stay on its host).
    pub secrets: Vec<String>,
}

/// How a runner asks for work.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    pub runner_id: String,
    pub runner_tags: Vec<String>,
    pub require_matching_tags: bool,
    pub lease_token: String,
    pub now: i64,
    pub lease_ms: i64,
}

/// Filters for listing runs. Pages go by `id` (ids sort by creation time): `after` is the
/// last id of the previous page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub project: Option<String>,
    /// Only these projects (a client token's scope); `None`: all.
    pub projects_in: Option<Vec<String>>,
    pub tag: Option<String>,
    pub after: Option<String>,
    pub limit: i64,
}

/// How a runner ends a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub state: RunState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub now: i64,
    /// The commit the run's workspace was made from; `None` leaves what is recorded.
    pub commit: Option<String>,
}

/// A workflow as stored: its submission, the state machine's progress (JSON), and where it is.
/// `state` is `running` until it ends `succeeded`, `failed`, `cancelled` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowRow {
    pub id: String,
    pub project: String,
    pub name: String,
    pub state: RunState,
    pub spec: serde_json::Value,
    pub progress: serde_json::Value,
    /// Bumped by every change; a change names the version it read.
    pub version: i64,
    /// The runner holding the workflow's worktree, once its first step was claimed.
    pub runner_id: Option<String>,
    pub cancel_requested: bool,
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A new workflow, in state `running` with no step queued yet.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub id: String,
    pub project: String,
    pub name: String,
    pub spec: serde_json::Value,
    pub progress: serde_json::Value,
    pub created_at: i64,
    pub actor: String,
}

/// One entry of a workflow's audit trail: submitted, a step queued or ended, a cancel asked
/// for, the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowNote {
    pub event: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowAuditEntry {
    pub workflow_id: String,
    pub seq: i64,
    pub ts: i64,
    pub actor: String,
    pub event: String,
    pub detail: String,
}

/// A step of a workflow taken: the new progress and position, the notes for the audit trail,
/// and the next step's run to queue, all in one transaction that applies only if the workflow
/// is still at `expected_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowChange {
    pub id: String,
    pub expected_version: i64,
    pub state: RunState,
    pub progress: serde_json::Value,
    pub runner_id: Option<String>,
    pub reason: Option<String>,
    pub finished_at: Option<i64>,
    pub now: i64,
    pub actor: String,
    pub notes: Vec<WorkflowNote>,
    pub new_run: Option<NewRun>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable or failed: {0}")]
    Backend(String),
    #[error("{what} `{id}` does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{what} `{id}` already exists")]
    Conflict { what: &'static str, id: String },
    /// The run is not in a state that allows this, or the lease is not (or no longer) the
    /// caller's. Nothing was changed.
    #[error("run `{run_id}`: {why}")]
    Rejected { run_id: String, why: String },
    /// The runner name is bound to another (live) runner token.
    #[error("runner `{runner}` is registered with another runner token; a runner name belongs to the token that registered it (choose another name, or revoke that token to free it)")]
    RunnerTaken { runner: String },
    #[error("the database URL `{0}` is not supported: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The durable state of the coordinator: the database as a whole (health, upkeep, wake-ups between
/// servers) and, through its supertraits, one trait per area. Handlers are generic over
/// `S: Store` and so see every area's methods; code holding a concrete store imports the area
/// traits it calls. Times are milliseconds since the Unix epoch, passed in by the caller (the
/// store never reads the clock, so tests control time).
pub trait Store:
    AuthStore + RunStore + RunnerStore + WorkflowStore + Send + Sync + 'static
{
    /// Whether the database answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Tells the other servers on this database that `wake` happened here, so that their waiters
    /// look again (PostgreSQL: `NOTIFY`, coalesced and sent in the background; the caller never
    /// waits). SQLite has a single server and nothing to tell.
    fn announce(&self, wake: Wake);
    /// The wake-ups the other servers on this database announce, for this server's waiters;
    /// `None` when no other server can share the store (SQLite).
    fn wake_feed(&self) -> Option<WakeFeed>;
    /// Refreshes the planner's statistics (SQLite `PRAGMA optimize`, PostgreSQL `ANALYZE`).
    /// Claims do not depend on them; other queries may.
    fn maintain(&self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Who may call, and where: tokens (kept as hashes), and the projects a client token is confined
/// to, with the limits every run of a project is checked against.
pub trait AuthStore: Send + Sync {
    // Tokens.
    fn create_token(
        &self,
        token: &TokenRecord,
        secret_hash: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The live (not revoked) token whose secret hashes to `secret_hash`.
    fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> impl Future<Output = StoreResult<Option<TokenRecord>>> + Send;
    fn list_tokens(&self) -> impl Future<Output = StoreResult<Vec<TokenRecord>>> + Send;
    fn revoke_token(&self, id: &str, now: i64) -> impl Future<Output = StoreResult<()>> + Send;
    /// Whether any admin token exists (the server creates one at first start).
    fn has_admin_token(&self) -> impl Future<Output = StoreResult<bool>> + Send;

    // Projects.
    fn create_project(&self, project: &Project) -> impl Future<Output = StoreResult<()>> + Send;
    fn project(&self, name: &str) -> impl Future<Output = StoreResult<Option<Project>>> + Send;
    fn list_projects(&self) -> impl Future<Output = StoreResult<Vec<Project>>> + Send;
}

/// Runs: the queue and claims, leases, events, cancels and each run's audit trail.
pub trait RunStore: Send + Sync {
    /// Inserts a queued run and its first audit entry (`None → queued`).
    fn insert_run(&self, run: &NewRun) -> impl Future<Output = StoreResult<RunRow>> + Send;
    fn run(&self, id: &str) -> impl Future<Output = StoreResult<Option<RunRow>>> + Send;
    /// Up to `limit` runs whose id starts with `prefix` (letters, digits and `-` only), in id
    /// order.
    fn runs_with_prefix(
        &self,
        prefix: &str,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<RunRow>>> + Send;
    fn list_runs(
        &self,
        filter: &RunFilter,
    ) -> impl Future<Output = StoreResult<Vec<RunRow>>> + Send;
    /// Atomically hands the oldest queued run whose tags are all among the runner's tags (and,
    /// with `require_matching_tags`, that has at least one tag) to this runner: state `claimed`,
    /// the lease token and expiry set, audit entry written. Exactly one claimer wins a run.
    fn claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = StoreResult<Option<RunRow>>> + Send;
    /// `claimed → running` with the container id; needs the current lease.
    fn mark_started(
        &self,
        run_id: &str,
        lease_token: &str,
        container_id: Option<&str>,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = StoreResult<RunRow>> + Send;
    /// Extends the lease of a claimed or running run; needs the current, unexpired lease.
    /// Returns the run (the caller reads `cancel_requested`).
    fn renew_lease(
        &self,
        run_id: &str,
        lease_token: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = StoreResult<RunRow>> + Send;
    /// Appends events; needs the current, unexpired lease. The runner numbers its events from 1
    /// and `first_runner_seq` is the number of `events[0]`: events already stored under those
    /// numbers (a batch resent after a lost reply) are skipped, so nothing is stored twice.
    /// Returns the seq of the last stored event.
    fn append_events(
        &self,
        run_id: &str,
        lease_token: &str,
        now: i64,
        first_runner_seq: i64,
        events: &[NewEvent],
    ) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Appends an event written by the server itself (no lease), e.g. a state change.
    fn append_server_event(
        &self,
        run_id: &str,
        event: &NewEvent,
    ) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Events with `seq > after`, at most `limit`.
    fn events_after(
        &self,
        run_id: &str,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<RunEvent>>> + Send;
    /// Ends a claimed or running run as the runner reports; needs the current, unexpired lease.
    /// A `state` event with the final state, exit code and reason is appended to its events.
    fn finish_run(
        &self,
        run_id: &str,
        lease_token: &str,
        finish: &Finish,
        actor: &str,
    ) -> impl Future<Output = StoreResult<RunRow>> + Send;
    /// Cancel: a queued run ends `cancelled` at once; a claimed or running run gets
    /// `cancel_requested`; a finished run is left as it is. Idempotent.
    fn request_cancel(
        &self,
        run_id: &str,
        actor: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<RunRow>> + Send;
    /// Leases that ended before `now`: running runs become `lost` (with `reason`), claimed
    /// runs go back to `queued`. Returns the runs changed.
    fn expire_leases(&self, now: i64) -> impl Future<Output = StoreResult<Vec<RunRow>>> + Send;
    /// Gives every claimed or running run's lease at least until `until`, for a server that
    /// just started: while it was away, no runner could renew, so that silence is not held
    /// against them. Returns how many leases were extended.
    fn extend_leases(&self, until: i64) -> impl Future<Output = StoreResult<u64>> + Send;
    fn audit(&self, run_id: &str) -> impl Future<Output = StoreResult<Vec<AuditEntry>>> + Send;
    /// Number of runs per state (for metrics).
    fn count_by_state(&self) -> impl Future<Output = StoreResult<Vec<(RunState, i64)>>> + Send;
}

/// Runners: registration (a name bound to the token that registered it), heartbeats, and the
/// runs each one holds.
pub trait RunnerStore: Send + Sync {
    /// Registers or re-registers a runner under `runner.id`, bound to `runner.token_id`.
    /// [`StoreError::RunnerTaken`] if the name is bound to another live token.
    fn register_runner(
        &self,
        runner: &RunnerRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn runner(&self, id: &str) -> impl Future<Output = StoreResult<Option<RunnerRecord>>> + Send;
    /// Binds an existing runner to `token_id` if it is free for it (no token, that token, or a
    /// revoked one); [`StoreError::RunnerTaken`] otherwise, `NotFound` for an unknown runner.
    fn bind_runner(&self, id: &str, token_id: &str)
        -> impl Future<Output = StoreResult<()>> + Send;
    fn runner_heartbeat(&self, id: &str, now: i64) -> impl Future<Output = StoreResult<()>> + Send;
    /// Marks runners whose last heartbeat is older than `before` offline; returns their ids.
    fn mark_stale_runners_offline(
        &self,
        before: i64,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    fn list_runners(&self) -> impl Future<Output = StoreResult<Vec<RunnerRecord>>> + Send;
    /// Runs currently claimed or running on this runner.
    fn runs_of_runner(
        &self,
        runner_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<RunRow>>> + Send;
}

/// Workflows: their progress, versioned so that each step is queued once, and their audit
/// trail.
pub trait WorkflowStore: Send + Sync {
    /// Inserts a running workflow and its first audit entry (`submitted`).
    fn insert_workflow(
        &self,
        workflow: &NewWorkflow,
    ) -> impl Future<Output = StoreResult<WorkflowRow>> + Send;
    fn workflow(&self, id: &str) -> impl Future<Output = StoreResult<Option<WorkflowRow>>> + Send;
    /// Newest first; `projects_in` limits to a client token's project.
    fn list_workflows(
        &self,
        project: Option<&str>,
        projects_in: Option<&[String]>,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<WorkflowRow>>> + Send;
    /// Ids of the workflows still running.
    fn active_workflows(&self) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// Applies the change if the workflow is still at its expected version (and running):
    /// `Some(new row)`; else nothing changes and `None` says another writer came first.
    fn update_workflow(
        &self,
        change: &WorkflowChange,
    ) -> impl Future<Output = StoreResult<Option<WorkflowRow>>> + Send;
    /// Marks a running workflow for cancel (once, with an audit entry); a finished one is left
    /// as it is.
    fn request_workflow_cancel(
        &self,
        id: &str,
        actor: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<WorkflowRow>> + Send;
    fn workflow_audit(
        &self,
        id: &str,
    ) -> impl Future<Output = StoreResult<Vec<WorkflowAuditEntry>>> + Send;
    /// Of `ids`, those that are no longer running (ended, or unknown).
    fn ended_workflows(
        &self,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}
