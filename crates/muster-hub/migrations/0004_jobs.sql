-- Jobs: indexed columns for queries plus the job record (without targets) as JSON.
CREATE TABLE jobs (
    id         TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);

-- One row per agent of a job; updated as the target moves through its steps.
CREATE TABLE job_targets (
    job_id TEXT NOT NULL,
    agent  TEXT NOT NULL,
    doc    TEXT NOT NULL,
    PRIMARY KEY (job_id, agent)
) WITHOUT ROWID;

-- Events published on job:<id>, numbered per job from 0, stored as the
-- message (type and data) that was published.
CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    msg    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
