-- Sessions: runs that take input. A session's kind is a column, so that
-- `run.list {session}` finds sessions through their own small index.
ALTER TABLE runs ADD COLUMN session TEXT;
-- The last hub input seq the agent reported applied.
ALTER TABLE runs ADD COLUMN input_applied INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_sessions ON runs (id) WHERE session IS NOT NULL;

-- Every input a session accepted, numbered by the hub: seq 1, 2, ... per
-- run. writer and writer_seq are the sender's own numbering, which makes a
-- resent input recognisable after a restart too.
CREATE TABLE session_inputs (
    run_id     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    writer     TEXT    NOT NULL,
    writer_seq INTEGER NOT NULL,
    sender     TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- When the agent read each chunk of a session (NULL for other runs).
ALTER TABLE output.run_output ADD COLUMN at_ms INTEGER;
