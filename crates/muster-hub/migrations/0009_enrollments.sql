-- Enrollment tokens: an agent that presents one registers itself, with the
-- token's labels, while it has uses left and has not expired. Only a SHA-256
-- of each secret is kept. Version 9: version 8 is another change's.
CREATE TABLE enrollments (
    token_id    TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    labels      TEXT NOT NULL DEFAULT '{}',
    uses_left   INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);
