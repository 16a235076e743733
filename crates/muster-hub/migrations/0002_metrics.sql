-- Host metrics: raw samples (resolution 0) and rolled-up averages.
CREATE TABLE metrics (
    agent         TEXT NOT NULL,
    resolution_ms INTEGER NOT NULL,
    ts_ms         INTEGER NOT NULL,
    doc           TEXT NOT NULL,
    PRIMARY KEY (agent, resolution_ms, ts_ms)
) WITHOUT ROWID;
CREATE INDEX metrics_by_age ON metrics (resolution_ms, ts_ms);
