-- API keys used by clients. Only a SHA-256 of each secret is kept.
CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- Registered agents, their credential and the facts they last reported.
CREATE TABLE agents (
    name        TEXT PRIMARY KEY,
    labels      TEXT NOT NULL DEFAULT '{}',
    key_id      TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    facts       TEXT,
    last_seen_ms INTEGER
);

-- Runs: indexed columns for queries plus the whole record as JSON.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    agent           TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    requested_by    TEXT,
    idempotency_key TEXT,
    doc             TEXT NOT NULL
);
CREATE INDEX runs_by_agent ON runs (agent, created_ms);
CREATE INDEX runs_by_state ON runs (state);
CREATE UNIQUE INDEX runs_by_idempotency ON runs (requested_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Output chunks, numbered per run over both streams.
CREATE TABLE run_output (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    stream  INTEGER NOT NULL,
    offset  INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
