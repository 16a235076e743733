-- A run's changing fields become columns, so each transition writes a few
-- narrow values instead of rewriting the whole JSON document. The document
-- keeps the request (command, env, …) and is written once, at insert; on
-- read, the columns override it.
ALTER TABLE runs ADD COLUMN exit_code INTEGER;
ALTER TABLE runs ADD COLUMN signal INTEGER;
ALTER TABLE runs ADD COLUMN error TEXT;
ALTER TABLE runs ADD COLUMN error_code TEXT;
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN output_truncated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN dispatched_ms INTEGER;
ALTER TABLE runs ADD COLUMN started_ms INTEGER;
ALTER TABLE runs ADD COLUMN finished_ms INTEGER;

UPDATE runs SET
    exit_code        = json_extract(doc, '$.exit_code'),
    signal           = json_extract(doc, '$.signal'),
    error            = json_extract(doc, '$.error'),
    error_code       = json_extract(doc, '$.error_code'),
    pid              = json_extract(doc, '$.pid'),
    output_bytes     = COALESCE(json_extract(doc, '$.output_bytes'), 0),
    output_truncated = COALESCE(json_extract(doc, '$.output_truncated'), 0),
    dispatched_ms    = json_extract(doc, '$.dispatched_ms'),
    started_ms       = json_extract(doc, '$.started_ms'),
    finished_ms      = json_extract(doc, '$.finished_ms');

-- Listings page newest first by id (a ULID, so by creation time), per agent.
DROP INDEX runs_by_agent;
CREATE INDEX runs_by_agent ON runs (agent, id);
-- Only unfinished runs are indexed by state: the index stays as small as
-- the work in flight, and a run that ends leaves it instead of moving
-- inside it. Listings of ended runs by state walk the runs by id.
DROP INDEX runs_by_state;
CREATE INDEX runs_unfinished ON runs (state, id)
    WHERE state IN ('queued', 'dispatched', 'running');
DROP INDEX jobs_by_state;
CREATE INDEX jobs_by_state ON jobs (state, id);
