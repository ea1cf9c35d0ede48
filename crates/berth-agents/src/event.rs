//! berth's own agent events: what the parsers produce, what `events.jsonl` stores.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One thing an agent did or said, independent of which agent CLI produced it.
///
/// A single input line can produce several events (a Claude `assistant` line with text and a
/// tool call, a Codex `turn.completed` with usage and the final result). Every non-empty input
/// line produces at least one event: what berth does not map is kept whole as [`Raw`], what is
/// not JSON is kept as [`Text`].
///
/// Serialised as one JSON object tagged by `"type"` (`"tool_call"`, `"final_result"`, ...);
/// optional fields that are absent are left out.
///
/// [`Raw`]: AgentEvent::Raw
/// [`Text`]: AgentEvent::Text
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Claude `system/init` or Codex `thread.started`. A stream can hold more than one (Claude
    /// background subagents, multi-turn input).
    SessionStarted {
        /// Claude `session_id`, Codex `thread_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// The agent CLI's version, when it says (`claude_code_version`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// Names of the tools the agent may use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<String>,
    },
    /// Text the model wrote for the user.
    AssistantText { text: String },
    /// Text in a user turn: a prompt echoed back, or a note the CLI wrote itself
    /// (`[Request interrupted by user]`).
    UserText { text: String },
    /// The model's visible reasoning (Claude `thinking` blocks, Codex `reasoning` items).
    Reasoning { text: String },
    /// The agent calls a tool (Claude `tool_use`, Codex `mcp_tool_call`, `web_search`).
    ToolCall {
        /// Pairs the call with its [`AgentEvent::ToolResult`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        name: String,
        input: Value,
    },
    /// What a tool returned; `content` is the text of the result (blocks that are not text are
    /// shown as `[type]`).
    ToolResult {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        is_error: bool,
        content: String,
    },
    /// A shell command the agent ran itself (Codex `command_execution`). Codex reports a
    /// command twice: when it starts (`status` `in_progress`, no exit code) and when it ends
    /// (`completed` or `failed`, with the exit code and output).
    CommandExecution {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    /// A file the agent changed through its patch tool (Codex `file_change`, one event per
    /// path, emitted when the change is complete).
    FileChange {
        path: String,
        /// `add`, `update`, `delete`, ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// Token use and cost as the agent reports them. The token counts are those of the
    /// envelope that reported them (a Claude `result`, a Codex turn): sum them over a stream.
    /// `cost_usd` is Claude's `total_cost_usd`, which is cumulative for the session: take the
    /// last one, do not sum.
    Usage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_read_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_write_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
    },
    /// The agent's own verdict on the run: a Claude `result` line, a Codex `turn.completed`
    /// or `turn.failed`. The last one in a stream decides the run's outcome.
    FinalResult {
        /// Claude's `is_error` (not its `subtype`: an API error comes as `subtype:"success"`
        /// with `is_error:true`); `true` for a Codex `turn.failed`.
        is_error: bool,
        /// The final answer: Claude's `result`, or the turn's last Codex `agent_message`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// When `is_error`: the agent's error text (Claude `errors`, else its `result`; Codex
        /// `turn.failed.error.message`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Why the agent stopped, as it says (Claude `terminal_reason`, else `subtype`:
        /// `completed`, `max_turns`, `aborted_streaming`, `error_max_turns`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Claude's `total_cost_usd` (cumulative for the session).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turns: Option<u64>,
    },
    /// An error the agent reported outside its final result (a Codex top-level `error`, such
    /// as `Reconnecting... 2/5 (...)`, or a Claude API error message the CLI made up). Not fatal
    /// by itself: a later successful final result wins.
    Error { message: String },
    /// A warning the agent reported (a Codex `error` item: these are advisories, not failures).
    Warning { message: String },
    /// A JSON line (or a part of one) that berth keeps whole without mapping it: event types
    /// berth does not know, and known bookkeeping berth has no type for (Claude hooks,
    /// thinking-token counters, API retries, rate-limit notices, partial-message deltas; Codex
    /// `turn.started`, ...).
    Raw {
        /// The line's `type`, with its `subtype` (`system/api_retry`), stream event
        /// (`stream_event/content_block_delta`) or item type (`item.started/file_change`);
        /// for a content block, the message role and the block type (`assistant/image`).
        /// `None` when the JSON has no `type`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_type: Option<String>,
        json: Value,
    },
    /// A line that is not JSON (stderr mixed in, a line cut off, any line of a plain-text
    /// command), without its line ending.
    Text { text: String },
}

impl AgentEvent {
    /// The event's `type` tag as serialised.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentEvent::SessionStarted { .. } => "session_started",
            AgentEvent::AssistantText { .. } => "assistant_text",
            AgentEvent::UserText { .. } => "user_text",
            AgentEvent::Reasoning { .. } => "reasoning",
            AgentEvent::ToolCall { .. } => "tool_call",
            AgentEvent::ToolResult { .. } => "tool_result",
            AgentEvent::CommandExecution { .. } => "command_execution",
            AgentEvent::FileChange { .. } => "file_change",
            AgentEvent::Usage { .. } => "usage",
            AgentEvent::FinalResult { .. } => "final_result",
            AgentEvent::Error { .. } => "error",
            AgentEvent::Warning { .. } => "warning",
            AgentEvent::Raw { .. } => "raw",
            AgentEvent::Text { .. } => "text",
        }
    }
}

/// How the agent's run ended, by its own account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOutcome {
    pub is_error: bool,
    /// On failure the agent's error text; on success its final answer, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the agent stopped, when it says (see [`AgentEvent::FinalResult`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The session's cost so far, when the agent reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}
