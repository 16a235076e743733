-- Run output moves to its own database file, output.db, attached as
-- "output": its 10 KiB chunks fit whole in that file's 64 KiB pages, where
-- in muster.db's 4 KiB pages each took a chain of overflow pages.
INSERT OR IGNORE INTO output.run_output (run_id, seq, stream, offset, data)
    SELECT run_id, seq, stream, offset, data FROM main.run_output;
DROP TABLE main.run_output;
