//! A thin layer over sqlx that runs the same SQL text on SQLite and PostgreSQL.
//!
//! Both backends take `$1, $2, …` placeholders (sqlx's SQLite driver maps `$N` to argument N),
//! and the schema only uses BIGINT and TEXT columns, so two value kinds are enough. Keeping the
//! native pools (rather than sqlx's `Any` driver) keeps the native connect options: WAL, busy
//! timeout, foreign keys, `BEGIN IMMEDIATE`.

use sqlx::migrate::{Migrate as _, MigrateError, Migrator};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{PgPool, Postgres, Row as _, Sqlite, SqlitePool, Transaction};

use crate::{StoreError, StoreResult};

/// One bound value.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Vec<u8>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Self::Int(Some(i64::from(v)))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Self::Text(Some(v.clone()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_owned))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}
impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Self::Text(v.clone())
    }
}

/// `args![a, b, c]`: the bound values of a statement, in placeholder order.
macro_rules! args {
    ($($e:expr),* $(,)?) => { vec![$($crate::db::Arg::from($e)),*] };
}
pub(crate) use args;

fn sqlite_query(sql: &str, args: Vec<Arg>) -> Query<'_, Sqlite, SqliteArguments<'_>> {
    args.into_iter().fold(sqlx::query(sql), |q, arg| match arg {
        Arg::Int(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::Bytes(v) => q.bind(v),
    })
}

fn pg_query(sql: &str, args: Vec<Arg>) -> Query<'_, Postgres, PgArguments> {
    args.into_iter().fold(sqlx::query(sql), |q, arg| match arg {
        Arg::Int(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::Bytes(v) => q.bind(v),
    })
}

pub(crate) fn backend_err(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A row of either backend, read by column name.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl Row {
    fn get<T>(&self, col: &str) -> StoreResult<T>
    where
        T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        match self {
            Self::Sqlite(row) => row.try_get(col),
            Self::Pg(row) => row.try_get(col),
        }
        .map_err(backend_err)
    }
    pub(crate) fn int(&self, col: &str) -> StoreResult<i64> {
        self.get(col)
    }
    pub(crate) fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        self.get(col)
    }
    pub(crate) fn text(&self, col: &str) -> StoreResult<String> {
        self.get(col)
    }
    pub(crate) fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        self.get(col)
    }
    pub(crate) fn flag(&self, col: &str) -> StoreResult<bool> {
        Ok(self.int(col)? != 0)
    }
}

/// Where statements go: a pool (one statement each, autocommit) or an open transaction.
pub(crate) enum Db {
    SqlitePool(SqlitePool),
    PgPool(PgPool),
    SqliteTx(Transaction<'static, Sqlite>),
    PgTx(Transaction<'static, Postgres>),
}

macro_rules! dispatch {
    ($self:ident, $sql:ident, $args:ident, |$q:ident, $conn:ident| $body:expr, $wrap_s:expr, $wrap_p:expr) => {
        match $self {
            Db::SqlitePool(pool) => {
                let $q = sqlite_query($sql, $args);
                let $conn = &*pool;
                $wrap_s($body.await.map_err(backend_err)?)
            }
            Db::SqliteTx(tx) => {
                let $q = sqlite_query($sql, $args);
                let $conn = &mut **tx;
                $wrap_s($body.await.map_err(backend_err)?)
            }
            Db::PgPool(pool) => {
                let $q = pg_query($sql, $args);
                let $conn = &*pool;
                $wrap_p($body.await.map_err(backend_err)?)
            }
            Db::PgTx(tx) => {
                let $q = pg_query($sql, $args);
                let $conn = &mut **tx;
                $wrap_p($body.await.map_err(backend_err)?)
            }
        }
    };
}

impl Db {
    pub(crate) fn is_pg(&self) -> bool {
        matches!(self, Self::PgPool(_) | Self::PgTx(_))
    }

    pub(crate) async fn fetch_optional(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
    ) -> StoreResult<Option<Row>> {
        Ok(dispatch!(
            self,
            sql,
            args,
            |q, conn| q.fetch_optional(conn),
            |r: Option<SqliteRow>| r.map(Row::Sqlite),
            |r: Option<PgRow>| r.map(Row::Pg)
        ))
    }

    pub(crate) async fn fetch_one(&mut self, sql: &str, args: Vec<Arg>) -> StoreResult<Row> {
        Ok(dispatch!(
            self,
            sql,
            args,
            |q, conn| q.fetch_one(conn),
            Row::Sqlite,
            Row::Pg
        ))
    }

    pub(crate) async fn fetch_all(&mut self, sql: &str, args: Vec<Arg>) -> StoreResult<Vec<Row>> {
        Ok(dispatch!(
            self,
            sql,
            args,
            |q, conn| q.fetch_all(conn),
            |rows: Vec<SqliteRow>| rows.into_iter().map(Row::Sqlite).collect::<Vec<_>>(),
            |rows: Vec<PgRow>| rows.into_iter().map(Row::Pg).collect::<Vec<_>>()
        ))
    }

    /// Runs a statement; returns the number of rows it changed.
    pub(crate) async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> StoreResult<u64> {
        Ok(dispatch!(
            self,
            sql,
            args,
            |q, conn| q.execute(conn),
            |r: sqlx::sqlite::SqliteQueryResult| r.rows_affected(),
            |r: sqlx::postgres::PgQueryResult| r.rows_affected()
        ))
    }

    /// Runs `migrator`'s pending migrations. In a transaction they become savepoints, so they
    /// commit or roll back with whatever else the transaction did.
    pub(crate) async fn run_migrator(&mut self, migrator: &Migrator) -> Result<(), MigrateError> {
        match self {
            Self::SqlitePool(pool) => migrator.run(&*pool).await,
            Self::SqliteTx(tx) => migrator.run(&mut **tx).await,
            Self::PgPool(pool) => migrator.run(&*pool).await,
            Self::PgTx(tx) => migrator.run(&mut **tx).await,
        }
    }

    /// Creates sqlx's `_sqlx_migrations` table if missing, with sqlx's own definition.
    pub(crate) async fn ensure_sqlx_migrations_table(&mut self) -> Result<(), MigrateError> {
        match self {
            Self::SqlitePool(pool) => pool.acquire().await?.ensure_migrations_table().await,
            Self::SqliteTx(tx) => tx.ensure_migrations_table().await,
            Self::PgPool(pool) => pool.acquire().await?.ensure_migrations_table().await,
            Self::PgTx(tx) => tx.ensure_migrations_table().await,
        }
    }

    /// Commits a transaction (a pool has nothing to commit). Dropping a `Db` that holds a
    /// transaction without committing rolls it back.
    pub(crate) async fn commit(self) -> StoreResult<()> {
        match self {
            Self::SqliteTx(tx) => tx.commit().await.map_err(backend_err),
            Self::PgTx(tx) => tx.commit().await.map_err(backend_err),
            Self::SqlitePool(_) | Self::PgPool(_) => Ok(()),
        }
    }
}
