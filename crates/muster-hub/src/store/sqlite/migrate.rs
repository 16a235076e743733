//! Schema migrations: the SQL files under `migrations/`, applied in order,
//! each in its own transaction, and recorded in `schema_migrations`.
//!
//! Data dirs written by hubs up to 0.1.0 recorded their migrations in
//! `_sqlx_migrations`; those versions are taken over once, so such a data
//! dir upgrades in place. A database that has a migration this binary does
//! not know was written by a newer hub, and is refused rather than guessed at.

use anyhow::{Context as _, bail};
use rusqlite::{Connection, OptionalExtension as _};

/// Every migration, in order: version, description, SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        "metrics",
        include_str!("../../../migrations/0002_metrics.sql"),
    ),
    (
        3,
        "agent events",
        include_str!("../../../migrations/0003_agent_events.sql"),
    ),
    (4, "jobs", include_str!("../../../migrations/0004_jobs.sql")),
    (
        5,
        "job keys",
        include_str!("../../../migrations/0005_job_keys.sql"),
    ),
    (
        6,
        "run columns",
        include_str!("../../../migrations/0006_run_columns.sql"),
    ),
    (
        7,
        "unfinished runs index without IN",
        include_str!("../../../migrations/0007_unfinished_without_in.sql"),
    ),
    (
        8,
        "key scopes and expiry, audit log, settings",
        include_str!("../../../migrations/0008_key_scopes_audit.sql"),
    ),
    (
        9,
        "enrollments",
        include_str!("../../../migrations/0009_enrollments.sql"),
    ),
    (
        10,
        "run output in its own database",
        include_str!("../../../migrations/0010_output_database.sql"),
    ),
    (
        11,
        "sessions",
        include_str!("../../../migrations/0011_sessions.sql"),
    ),
];

/// The schema of `output.db`, attached to every connection as `output`.
/// Its page size is set before the table is made, so it takes effect.
pub(super) const OUTPUT_SCHEMA: &str = "
    PRAGMA output.page_size = 65536;
    CREATE TABLE IF NOT EXISTS output.run_output (
        run_id TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        data   BLOB NOT NULL,
        UNIQUE (run_id, seq)
    );";

/// Brings the schema up to date; returns how many migrations were applied.
pub(super) fn run(conn: &mut Connection, now_ms: i64) -> anyhow::Result<usize> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version     INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_ms  INTEGER NOT NULL
        )",
    )?;
    adopt_sqlx_history(conn)?;
    let newest: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if newest > known {
        bail!(
            "the database has schema version {newest}, newer than this hub knows ({known}); \
             it was written by a newer Muster"
        );
    }
    let recorded: std::collections::HashSet<i64> = conn
        .prepare("SELECT version FROM schema_migrations")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut applied = 0;
    // Every migration not recorded, in order: one that a branch of the
    // history skipped is applied too, not only those past the newest.
    for &(version, description, sql) in MIGRATIONS.iter().filter(|m| !recorded.contains(&m.0)) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {version} ({description})"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, description, now_ms],
        )?;
        tx.commit()?;
        applied += 1;
    }
    Ok(applied)
}

/// Copies the successful versions recorded by hubs up to 0.1.0, once.
fn adopt_sqlx_history(conn: &Connection) -> anyhow::Result<()> {
    let legacy: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if legacy.is_none() {
        return Ok(());
    }
    conn.execute(
        "INSERT OR IGNORE INTO schema_migrations (version, description, applied_ms)
         SELECT version, description, 0 FROM _sqlx_migrations WHERE success",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty database in memory, with an output database attached as
    /// every connection of the store has one.
    fn memory() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute("ATTACH DATABASE ':memory:' AS output", [])
            .unwrap();
        conn.execute_batch(OUTPUT_SCHEMA).unwrap();
        conn
    }

    #[test]
    fn output_moves_into_the_output_database_whole() {
        let mut conn = memory();
        for &(version, description, sql) in &MIGRATIONS[..9] {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,
                     description TEXT NOT NULL, applied_ms INTEGER NOT NULL);
                 INSERT INTO schema_migrations VALUES ({version}, '{description}', 0);"
            ))
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO main.run_output VALUES ('r1', 0, 1, 0, x'0001ff');
             INSERT INTO main.run_output VALUES ('r1', 1, 2, 3, zeroblob(10240));",
        )
        .unwrap();
        // Migration 10 moves the output; those after it run too.
        assert_eq!(run(&mut conn, 1).unwrap(), MIGRATIONS.len() - 9);
        let moved: Vec<(String, i64, i64, i64, Vec<u8>)> = conn
            .prepare("SELECT run_id, seq, stream, offset, data FROM output.run_output ORDER BY seq")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0], ("r1".into(), 0, 1, 0, vec![0, 1, 0xff]));
        assert_eq!((moved[1].1, moved[1].4.len()), (1, 10240));
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM main.sqlite_master WHERE name = 'run_output'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "no copy is left in the main database");
    }

    #[test]
    fn a_fresh_database_gets_every_migration_once() {
        let mut conn = memory();
        assert_eq!(run(&mut conn, 1).unwrap(), MIGRATIONS.len());
        assert_eq!(run(&mut conn, 2).unwrap(), 0);
    }

    #[test]
    fn a_migration_skipped_below_the_newest_is_applied() {
        let mut conn = memory();
        assert_eq!(run(&mut conn, 1).unwrap(), MIGRATIONS.len());
        // A database that has every migration but the key columns and audit table.
        conn.execute_batch(
            "DROP TABLE audit;
             DROP TABLE settings;
             ALTER TABLE api_keys DROP COLUMN scope;
             ALTER TABLE api_keys DROP COLUMN expires_ms;
             DELETE FROM schema_migrations WHERE version = 8;",
        )
        .unwrap();
        assert_eq!(run(&mut conn, 2).unwrap(), 1);
        conn.execute_batch(
            "SELECT scope, expires_ms FROM api_keys; SELECT seq FROM audit; SELECT name FROM settings;",
        )
            .unwrap();
    }

    #[test]
    fn versions_recorded_by_sqlx_are_not_applied_again() {
        let mut conn = memory();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT,
                 installed_on TIMESTAMP, success BOOLEAN, checksum BLOB, execution_time BIGINT);",
        )
        .unwrap();
        for &(version, description, sql) in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO _sqlx_migrations (version, description, success) VALUES (?1, ?2, 1)",
                rusqlite::params![version, description],
            )
            .unwrap();
        }
        assert_eq!(
            run(&mut conn, 1).unwrap(),
            MIGRATIONS.len() - 5,
            "only the new ones"
        );
    }

    /// SQL's opcodes, one per row of `EXPLAIN`.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        stmt.query_map([], |row| row.get::<_, String>(1))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn changing_a_run_builds_no_temporary_table_and_unfinished_runs_use_their_index() {
        let mut conn = memory();
        run(&mut conn, 1).unwrap();
        for sql in [
            "INSERT INTO runs (id, agent, state, created_ms, doc) VALUES ('r', 'a', 'queued', 1, '{}')",
            "UPDATE runs SET state = 'running', finished_ms = 2 WHERE id = 'r'",
        ] {
            let ops = opcodes(&conn, sql);
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
        let query = format!(
            "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE {} ORDER BY id",
            super::super::read::UNFINISHED_RUNS
        );
        let plan: Vec<String> = conn
            .prepare(&query)
            .unwrap()
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|step| step.contains("runs_unfinished")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = memory();
        run(&mut conn, 1).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations VALUES (99, 'from the future', 0)",
            [],
        )
        .unwrap();
        let err = run(&mut conn, 2).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
