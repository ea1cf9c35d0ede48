-- berth coordinator store, version 1 (SQLite).
-- Times are milliseconds since the Unix epoch (BIGINT), booleans are 0/1 (BIGINT), JSON is TEXT.

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    project     TEXT,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE projects (
    name           TEXT PRIMARY KEY,
    workspace_root TEXT NOT NULL,
    allowed_paths  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- `seq` is the queue order (first in, first out); `id` is the public, time-sortable id.
CREATE TABLE runs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    project          TEXT NOT NULL,
    state            TEXT NOT NULL,
    execution_mode   TEXT NOT NULL,
    spec             TEXT NOT NULL,
    tags             TEXT NOT NULL,
    labels           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    claimed_at       BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    runner_id        TEXT,
    container_id     TEXT,
    exit_code        BIGINT,
    reason           TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    lease_token      TEXT,
    lease_expires_at BIGINT
);
CREATE INDEX runs_queued ON runs (seq) WHERE state = 'queued';
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE state IN ('claimed', 'running');
CREATE INDEX runs_state_id ON runs (state, id);
CREATE INDEX runs_project_id ON runs (project, id);
CREATE INDEX runs_runner ON runs (runner_id) WHERE state IN ('claimed', 'running');

CREATE TABLE run_tags (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
);
CREATE INDEX run_tags_tag ON run_tags (tag, run_id);

CREATE TABLE run_events (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    ts     BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_audit (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    ts           BIGINT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    actor        TEXT NOT NULL,
    container_id TEXT,
    exit_code    BIGINT,
    reason       TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE runners (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    tags                  TEXT NOT NULL,
    require_matching_tags BIGINT NOT NULL,
    capacity              BIGINT NOT NULL,
    registered_at         BIGINT NOT NULL,
    last_heartbeat        BIGINT NOT NULL,
    online                BIGINT NOT NULL
);
