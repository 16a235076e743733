-- The same index of unfinished runs, with its predicate spelled without IN.
-- A partial index's predicate is evaluated on every insert and update of a
-- run, and SQLite evaluates a list of IN constants by building a temporary
-- b-tree each time: two of them for every change of a run's state.
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (state, id)
    WHERE state = 'queued' OR state = 'dispatched' OR state = 'running';
