-- API keys may be confined to a label selector and may expire.
ALTER TABLE api_keys ADD COLUMN scope TEXT;
ALTER TABLE api_keys ADD COLUMN expires_ms INTEGER;

-- The audit log: append-only, numbered from 1 without gaps.
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    source  TEXT,
    action  TEXT NOT NULL,
    target  TEXT,
    outcome TEXT NOT NULL,
    detail  TEXT
);
CREATE INDEX audit_at ON audit (at_ms);

-- Values the hub generates once and keeps, such as the secret that signs
-- browser tokens.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
