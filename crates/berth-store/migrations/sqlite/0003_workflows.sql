-- Workflows: a builder → tests → reviewer loop whose steps are runs. The state machine's
-- progress is JSON; `version` guards every change so two servers never advance one workflow
-- twice. A step run may be pinned to the runner that holds the workflow's worktree.
ALTER TABLE runs ADD COLUMN pinned_runner TEXT;

CREATE TABLE workflows (
    id               TEXT PRIMARY KEY,
    project          TEXT NOT NULL,
    name             TEXT NOT NULL,
    state            TEXT NOT NULL,
    spec             TEXT NOT NULL,
    progress         TEXT NOT NULL,
    version          BIGINT NOT NULL,
    runner_id        TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    reason           TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX workflows_active ON workflows (id) WHERE state = 'running';
CREATE INDEX workflows_project_id ON workflows (project, id);

CREATE TABLE workflow_audit (
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    ts          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    event       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
