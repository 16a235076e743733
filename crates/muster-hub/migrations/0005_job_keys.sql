-- Idempotency keys of jobs: a job.create sent again with the same key by
-- the same key name finds the job the first one created.
ALTER TABLE jobs ADD COLUMN requested_by TEXT;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX jobs_by_idempotency ON jobs (requested_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
