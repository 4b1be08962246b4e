//! Detector state on disk: takes identity and credential records and the open (deduplicating) findings, gives them back after a restart (one SQLite file in the state directory).

use std::{
    fs::{DirBuilder, OpenOptions, Permissions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::de::DeserializeOwned;

use crate::detect::{
    finding::{DedupChanges, Finding},
    state::{CredentialRecord, IdentityRecord},
};

/// The database file inside `state_dir`.
pub const FILE_NAME: &str = "nhiwatch.db";

/// Bumped on every incompatible schema change; kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for the other process's lock (daemon vs `nhiwatch inventory`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS identities_last_seen ON identities(last_seen);
CREATE TABLE IF NOT EXISTS credentials (
    fingerprint TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_last_seen ON credentials(last_seen);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Added without a version bump: a table older versions never read, created on every open so
/// databases written before it get it too.
const OPEN_FINDINGS: &str = "
CREATE TABLE IF NOT EXISTS open_findings (
    deduper TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    time INTEGER NOT NULL,
    finding TEXT NOT NULL,
    PRIMARY KEY (deduper, dedup_key)
);
";

/// The two deduplicators whose open windows are saved, as named in `open_findings.deduper`.
const DEDUP: &str = "dedup";
const IDENTITY: &str = "identity";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create state database {path}: {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no state database at {path}: has the daemon run with this state_dir?")]
    Missing { path: PathBuf },
    #[error(
        "state database {path} was never initialised: has the daemon run with this state_dir?"
    )]
    Uninitialised { path: PathBuf },
    #[error(
        "state database {path} has schema version {found}, newer than this nhiwatch understands \
         ({supported}); upgrade nhiwatch or point state_dir elsewhere"
    )]
    NewerVersion {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "state database {path}: journal mode stays {mode}, WAL is needed for concurrent readers"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error("cannot encode the record of {key}: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

/// What a load gave: the records that parsed, and how many rows did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    pub items: Vec<T>,
    /// Rows whose JSON did not parse (written by another version, or damaged); left in place.
    pub skipped: usize,
}

/// An open state database (read-write for the daemon, read-only for the CLI).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens or creates `STATE_DIR/nhiwatch.db` for the daemon.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        if !state_dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|source| StoreError::CreateDir {
                    path: state_dir.to_owned(),
                    source,
                })?;
        }
        let path = state_dir.join(FILE_NAME);
        // Created here rather than by SQLite so the mode never depends on the umask; SQLite gives
        // the -wal and -shm files the mode of the database file.
        let file_err = |source| StoreError::CreateFile {
            path: path.clone(),
            source,
        };
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(file_err)?;
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).map_err(file_err)?;

        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = Store { conn, path };
        store.setup_writer()?;
        Ok(store)
    }

    /// Opens an existing database for reading while the daemon may be writing it.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::Missing { path });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = Store { conn, path };
        store
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| store.sql(e))?;
        match store.user_version()? {
            0 => Err(StoreError::Uninitialised { path: store.path }),
            v if v > SCHEMA_VERSION => Err(StoreError::NewerVersion {
                path: store.path,
                found: v,
                supported: SCHEMA_VERSION,
            }),
            _ => Ok(store),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn user_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    fn setup_writer(&mut self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql(e))?;
        // WAL: readers (`nhiwatch inventory`) never block the daemon's writes, nor it them.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal {
                path: self.path.clone(),
                mode,
            });
        }
        // In WAL mode NORMAL loses at most the last transactions on power loss, never consistency.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql(e))?;

        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // IMMEDIATE: two processes creating the same fresh file must not both create the schema.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerVersion {
                path: path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA).map_err(sql)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql)?;
        }
        tx.execute_batch(OPEN_FINDINGS).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Upserts the given records and deletes the removed keys, all or nothing.
    pub fn save(
        &mut self,
        identities: &[&IdentityRecord],
        credentials: &[&CredentialRecord],
        removed_identities: &[&str],
        removed_credentials: &[&str],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO identities (id, last_seen, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, record = excluded.record",
                )
                .map_err(sql)?;
            for r in identities {
                let json = encode(&r.identity.id, *r)?;
                put.execute(params![r.identity.id, r.last_seen, json])
                    .map_err(sql)?;
            }
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO credentials (fingerprint, last_seen, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT(fingerprint) DO UPDATE SET last_seen = excluded.last_seen, record = excluded.record",
                )
                .map_err(sql)?;
            for r in credentials {
                let json = encode(&r.fingerprint, *r)?;
                put.execute(params![r.fingerprint, r.last_seen, json])
                    .map_err(sql)?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM identities WHERE id = ?1")
                .map_err(sql)?;
            for id in removed_identities {
                del.execute([id]).map_err(sql)?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM credentials WHERE fingerprint = ?1")
                .map_err(sql)?;
            for fp in removed_credentials {
                del.execute([fp]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Writes what changed in the engine's open findings (deduplicated, identity-level), all or
    /// nothing.
    pub fn save_open(
        &mut self,
        dedup: &DedupChanges<'_>,
        identity: &DedupChanges<'_>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        for (window, c) in [(DEDUP, dedup), (IDENTITY, identity)] {
            if c.rewrite {
                tx.execute("DELETE FROM open_findings WHERE deduper = ?1", [window])
                    .map_err(sql)?;
            }
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO open_findings (deduper, dedup_key, time, finding) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(deduper, dedup_key) DO UPDATE SET time = excluded.time, finding = excluded.finding",
                )
                .map_err(sql)?;
            for f in &c.open {
                let json = encode(&f.dedup_key, *f)?;
                put.execute(params![window, f.dedup_key, f.time, json])
                    .map_err(sql)?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM open_findings WHERE deduper = ?1 AND dedup_key = ?2")
                .map_err(sql)?;
            for k in &c.closed {
                del.execute([window, k]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// The open findings an earlier run saved: (deduplicated, identity-level), oldest first.
    pub fn load_open(&self) -> Result<(Loaded<Finding>, Loaded<Finding>), StoreError> {
        Ok((self.load_window(DEDUP)?, self.load_window(IDENTITY)?))
    }

    fn load_window(&self, window: &str) -> Result<Loaded<Finding>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT finding FROM open_findings WHERE deduper = ?1 ORDER BY time, dedup_key",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query([window]).map_err(|e| self.sql(e))?;
        self.parse_rows(rows)
    }

    pub fn load_identities(&self) -> Result<Loaded<IdentityRecord>, StoreError> {
        self.load("SELECT record FROM identities ORDER BY id")
    }

    pub fn load_credentials(&self) -> Result<Loaded<CredentialRecord>, StoreError> {
        self.load("SELECT record FROM credentials ORDER BY fingerprint")
    }

    fn load<T: DeserializeOwned>(&self, query: &str) -> Result<Loaded<T>, StoreError> {
        let mut stmt = self.conn.prepare(query).map_err(|e| self.sql(e))?;
        let rows = stmt.query([]).map_err(|e| self.sql(e))?;
        self.parse_rows(rows)
    }

    fn parse_rows<T: DeserializeOwned>(
        &self,
        mut rows: rusqlite::Rows<'_>,
    ) -> Result<Loaded<T>, StoreError> {
        let mut out = Loaded {
            items: Vec::new(),
            skipped: 0,
        };
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            // A non-text value or bad JSON in one row costs that row only.
            match row
                .get_ref(0)
                .ok()
                .and_then(|v| v.as_str().ok())
                .and_then(|s| serde_json::from_str(s).ok())
            {
                Some(item) => out.items.push(item),
                None => out.skipped += 1,
            }
        }
        Ok(out)
    }

    /// Keeps the most recently seen `keep_*` rows of each table, deletes the rest; returns how
    /// many identities and credentials were deleted.
    pub fn prune(
        &mut self,
        keep_identities: usize,
        keep_credentials: usize,
    ) -> Result<(usize, usize), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let keep = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let tx = self.conn.transaction().map_err(sql)?;
        let ids = tx
            .execute(
                "DELETE FROM identities WHERE id IN
                 (SELECT id FROM identities ORDER BY last_seen DESC, id LIMIT -1 OFFSET ?1)",
                [keep(keep_identities)],
            )
            .map_err(sql)?;
        let creds = tx
            .execute(
                "DELETE FROM credentials WHERE fingerprint IN
                 (SELECT fingerprint FROM credentials ORDER BY last_seen DESC, fingerprint LIMIT -1 OFFSET ?1)",
                [keep(keep_credentials)],
            )
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok((ids, creds))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }
}

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
