//! The control plane's records: SQLite in the data dir by default, PostgreSQL in
//! production, with the same schema (`migrations/sqlite`, `migrations/postgres`) and the same
//! SQL text. Both dialects take `$1`-style placeholders, ids are text and times are unix
//! milliseconds, so one row type decodes from either without the `Any` driver.
//!
//! Every tenant query runs in a [`Tx`] opened for one org. On PostgreSQL that transaction
//! sets `app.org_id`, which row-level security checks, and the pool's sessions run as the
//! non-owner role `auralink_app`, so a query that forgot its `org_id` filter still sees only
//! the caller's rows.

pub mod aic;
pub mod calls;
mod record;
pub mod redis;
pub mod rooms;
pub mod transcripts;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

pub use self::record::{Arg, Record};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Superusers skip row-level security even when it is forced, so the app's sessions take
/// this role, which the migrations create and grant to the migrating user.
const SET_APP_ROLE: &str = "SET ROLE auralink_app";
/// A request waits this long for a connection before it is told the database is unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong with the database, in the terms the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL itself is not repeated: it may carry a password.
    #[error("unsupported or malformed database url: expected sqlite:… or postgres://…")]
    Url,
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("migrations not applied (database at {have:?}, this build needs {want})")]
    NotMigrated { have: Option<i64>, want: i64 },
    /// A unique constraint refused the row: the resource exists.
    #[error("already exists")]
    Conflict,
    /// The database refused a value the API let through (a NUL character, a CHECK).
    #[error("value refused by the database: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Query(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict,
            // 22021/22P05: text PostgreSQL cannot store (NUL); 23514: a CHECK constraint.
            sqlx::Error::Database(d)
                if d.is_check_violation() || d.code().is_some_and(|c| c == "22021" || c == "22P05") =>
            {
                DbError::Invalid(d.message().to_string())
            }
            sqlx::Error::Database(d) if d.code().is_some_and(|c| connection_lost(&c)) => DbError::Unavailable(e),
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                DbError::Unavailable(e)
            }
            _ => DbError::Query(e),
        }
    }
}

/// SQLSTATEs that mean the server, not the statement, is the problem: connection
/// exceptions (08…), shutdown and crash recovery (57P01–57P03), too many connections
/// (53300), a database closed to connections (55000).
fn connection_lost(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "55000")
}

/// Makes the database file readable by its owner only (creating it empty if missing, which
/// SQLite takes as a new database). SQLite gives its `-wal` and `-shm` files the database
/// file's mode, so they follow. In-memory databases have no file.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.to_string_lossy();
    if name.starts_with("file:") || name == ":memory:" {
        return Ok(());
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // Left by an earlier run, perhaps one that made them readable to all.
    for side in ["-wal", "-shm"] {
        let side = std::path::PathBuf::from(format!("{name}{side}"));
        if side.exists() {
            std::fs::set_permissions(side, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// A pool on one of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

enum Backend {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

fn parse_url(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|_| DbError::Url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An acknowledged write survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Each pooled connection keeps its own page cache, which fills up to this with the
            // pages it touches (SQLite's default is 2 MiB): eight of them made a node's memory
            // grow with its history. The kernel's page cache still holds the file.
            .pragma("cache_size", "-512");
        Ok(Backend::Sqlite(opts))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres(PgConnectOptions::from_str(url).map_err(|_| DbError::Url)?))
    } else {
        Err(DbError::Url)
    }
}

impl Db {
    /// Applies pending migrations, then opens the pool. Migrations run on a connection of
    /// their own as the configured user (the owner); the pool runs as the app role.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        Db::migrate(url).await?;
        match parse_url(url)? {
            Backend::Sqlite(opts) => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(DbError::Unavailable)?;
                Ok(Db::Sqlite(pool))
            }
            Backend::Postgres(opts) => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(sqlx::raw_sql(SET_APP_ROLE)).await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(DbError::Unavailable)?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// Applies pending migrations; returns the schema version the database is now at.
    pub async fn migrate(url: &str) -> Result<i64, DbError> {
        match parse_url(url)? {
            Backend::Sqlite(opts) => {
                private_file(opts.get_filename()).map_err(|e| DbError::Unavailable(sqlx::Error::Io(e)))?;
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.map_err(DbError::Unavailable)?;
                SQLITE_MIGRATIONS.run(&mut conn).await?;
                Ok(latest(&SQLITE_MIGRATIONS))
            }
            Backend::Postgres(opts) => {
                let mut conn = sqlx::PgConnection::connect_with(&opts).await.map_err(DbError::Unavailable)?;
                POSTGRES_MIGRATIONS.run(&mut conn).await?;
                Ok(latest(&POSTGRES_MIGRATIONS))
            }
        }
    }

    /// What `/readyz` asks: the database answers and has every migration this build knows.
    pub async fn check(&self) -> Result<(), DbError> {
        const LATEST: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
        let (have, want) = match self {
            Db::Sqlite(p) => {
                (sqlx::query_scalar::<_, Option<i64>>(LATEST).fetch_one(p).await?, latest(&SQLITE_MIGRATIONS))
            }
            Db::Postgres(p) => {
                (sqlx::query_scalar::<_, Option<i64>>(LATEST).fetch_one(p).await?, latest(&POSTGRES_MIGRATIONS))
            }
        };
        if have < Some(want) {
            return Err(DbError::NotMigrated { have, want });
        }
        Ok(())
    }

    /// Opens a transaction scoped to `org`: every row it reads or writes must carry that org.
    pub async fn begin(&self, org: &str) -> Result<Tx, DbError> {
        self.begin_as(org, Access::ReadWrite).await
    }

    /// Opens a transaction scoped to `org` that only reads. On SQLite it takes no write lock,
    /// so it neither waits for writers nor makes them wait (WAL readers see the last commit):
    /// what a lookup anybody can trigger, such as authenticating a request, must use.
    /// PostgreSQL refuses any write in it.
    pub async fn begin_read(&self, org: &str) -> Result<Tx, DbError> {
        self.begin_as(org, Access::ReadOnly).await
    }

    async fn begin_as(&self, org: &str, access: Access) -> Result<Tx, DbError> {
        match self {
            // SQLite has one writer: a deferred transaction that reads and then writes fails
            // with SQLITE_BUSY when another got the write lock first (the busy timeout does
            // not apply to that upgrade). Taking the lock at BEGIN makes concurrent writers
            // wait their turn instead; a transaction that never writes needs no lock.
            Db::Sqlite(p) => {
                let begin = match access {
                    Access::ReadWrite => "BEGIN IMMEDIATE",
                    Access::ReadOnly => "BEGIN DEFERRED",
                };
                Ok(Tx::Sqlite(p.begin_with(begin).await?))
            }
            Db::Postgres(p) => {
                let begin = match access {
                    Access::ReadWrite => "BEGIN",
                    Access::ReadOnly => "BEGIN READ ONLY",
                };
                let mut tx = p.begin_with(begin).await?;
                sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(org).execute(&mut *tx).await?;
                Ok(Tx::Postgres(tx))
            }
        }
    }

    /// The org that owns an API key prefix or a LiveKit API key: how a request learns which
    /// org to scope itself to. The lookup table holds no secret and no row-level security.
    pub async fn org_of_key(&self, kind: &str, lookup: &str) -> Result<Option<String>, DbError> {
        const SQL: &str = "SELECT org_id FROM key_lookup WHERE kind = $1 AND lookup = $2";
        Ok(match self {
            Db::Sqlite(p) => sqlx::query_scalar(SQL).bind(kind).bind(lookup).fetch_optional(p).await?,
            Db::Postgres(p) => sqlx::query_scalar(SQL).bind(kind).bind(lookup).fetch_optional(p).await?,
        })
    }

    /// Every `(lookup, org)` of one kind: the orgs that hold keys of that kind.
    pub async fn lookups(&self, kind: &str) -> Result<Vec<(String, String)>, DbError> {
        const SQL: &str = "SELECT lookup, org_id FROM key_lookup WHERE kind = $1";
        Ok(match self {
            Db::Sqlite(p) => sqlx::query_as(SQL).bind(kind).fetch_all(p).await?,
            Db::Postgres(p) => sqlx::query_as(SQL).bind(kind).fetch_all(p).await?,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool; requests after this get `Unavailable`.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// What a transaction may do.
#[derive(Clone, Copy)]
enum Access {
    ReadWrite,
    ReadOnly,
}

fn latest(m: &Migrator) -> i64 {
    m.iter().map(|m| m.version).max().unwrap_or(0)
}

/// A transaction on one org's rows.
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Binds `args` in order onto a query of either backend.
macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Runs one statement of `$method` on whichever backend `$tx` is.
macro_rules! run {
    ($tx:expr, $make:expr, $sql:expr, $args:expr, $method:ident) => {
        match $tx {
            Tx::Sqlite(tx) => bind_all!($make($sql), $args).$method(&mut **tx).await,
            Tx::Postgres(tx) => bind_all!($make($sql), $args).$method(&mut **tx).await,
        }
    };
}

impl Tx {
    /// Runs a statement; returns the rows it touched.
    pub async fn execute(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<u64, DbError> {
        Ok(match self {
            Tx::Sqlite(tx) => bind_all!(sqlx::query(sql), args).execute(&mut **tx).await?.rows_affected(),
            Tx::Postgres(tx) => bind_all!(sqlx::query(sql), args).execute(&mut **tx).await?.rows_affected(),
        })
    }

    pub async fn fetch_optional<T: Record>(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<Option<T>, DbError> {
        Ok(run!(self, sqlx::query_as::<_, T>, sql, args, fetch_optional)?)
    }

    pub async fn fetch_all<T: Record>(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<Vec<T>, DbError> {
        Ok(run!(self, sqlx::query_as::<_, T>, sql, args, fetch_all)?)
    }

    pub async fn fetch_one<T: Record>(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<T, DbError> {
        Ok(run!(self, sqlx::query_as::<_, T>, sql, args, fetch_one)?)
    }

    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// `args![a, b, …]`: statement arguments in placeholder order.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($crate::db::Arg::from($a)),*] };
}
