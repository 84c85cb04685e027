//! The ledger's one connection type over two backends: SQLite (the
//! embedded default) and PostgreSQL (a fleet's shared ledger).
//!
//! Every query of the ledger is written once, in the SQL both engines
//! speak, with SQLite's numbered parameters (`?1`, `?2`). This module is
//! the dialect shim: it rewrites `?N` to PostgreSQL's `$N`, converts one
//! small value type ([`Value`]: null, integer, text, bytes) to and from
//! each driver's, and runs transactions the same way on both. What the two
//! engines cannot say alike (JSON field access, the schema's DDL, pragmas)
//! is asked of [`Conn::backend`] by the module that needs it; nothing else
//! in the ledger knows which engine it talks to.
//!
//! PostgreSQL connections are re-made when the server went away (a
//! restart, a failover): the statement that found the connection closed
//! fails as *unwritable* (see [`DbError::is_unwritable`]), so the
//! supervisor keeps its writes and retries them, and the next one
//! reconnects.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::domain::{Lease, TaskId};

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A parameter or a column: the only kinds the ledger stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl From<TaskId> for Value {
    fn from(v: TaskId) -> Value {
        Value::Int(v.0)
    }
}
impl From<&Lease> for Value {
    fn from(v: &Lease) -> Value {
        Value::Text(v.to_string())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// `args![a, b]`: a query's parameters as [`Value`]s.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::ledger::db::Value::from($v)),*] as &[$crate::ledger::db::Value] };
}
pub(crate) use args;

/// Reads one column as a Rust value.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}
impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl FromValue for TaskId {
    fn from_value(v: &Value) -> Option<TaskId> {
        i64::from_value(v).map(TaskId)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as `T`; a column of another kind is an error naming it.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        let v = self.0.get(i).unwrap_or(&Value::Null);
        T::from_value(v).ok_or_else(|| DbError::Decode(format!("column {i} holds {v:?}, not {}", short_type::<T>())))
    }
}

fn short_type<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("unexpected value: {0}")]
    Decode(String),
}

/// PostgreSQL's own words for a server error (its message and detail),
/// the driver's otherwise.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        // The driver's own errors say what failed in their source
        // ("invalid configuration": "password missing").
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl DbError {
    /// Whether the ledger cannot take writes *now* (a full or failing
    /// disk; for PostgreSQL also a lost connection or a server that is
    /// shutting down or starting): a condition that passes, unlike a
    /// refused write.
    pub fn is_unwritable(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::ReadOnly
            ),
            DbError::Sqlite(_) | DbError::Decode(_) => false,
            DbError::Postgres(e) => match e.code() {
                // Connection exceptions (08…), operator intervention
                // (57P01 admin shutdown, 57P02 crash shutdown, 57P03
                // cannot connect now), insufficient resources (53…:
                // disk full, out of memory).
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                }
                // No SQLSTATE: the socket, not the server, failed.
                None => true,
            },
        }
    }

    /// Whether this is a uniqueness violation (a row that is already there).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::ConstraintViolation
                    && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// A PostgreSQL client that reconnects after the server went away, with
/// its statements prepared once per connection.
pub struct Pg {
    config: postgres::Config,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    read_only: bool,
}

impl Pg {
    pub fn connect(config: postgres::Config, read_only: bool) -> DbResult<Pg> {
        let mut pg = Pg {
            config,
            client: None,
            statements: HashMap::new(),
            read_only,
        };
        pg.client()?;
        Ok(pg)
    }

    fn client(&mut self) -> DbResult<&mut postgres::Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.statements.clear();
            self.client = None;
            let mut c = self.config.connect(postgres::NoTls)?;
            if self.read_only {
                // Readers (the CLI, the HTTP API) can never write, whatever
                // a query says.
                c.batch_execute("SET default_transaction_read_only = on")?;
            }
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| DbError::Decode("no PostgreSQL connection".into()))
    }

    fn statement(&mut self, sql: &str) -> DbResult<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = dollar_params(sql);
        let s = self.client()?.prepare(&text)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn postgres::types::ToSql + Sync)).collect();
        let rows = self.client()?.query(&stmt, &params)?;
        rows.iter().map(pg_row).collect()
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn postgres::types::ToSql + Sync)).collect();
        Ok(self.client()?.execute(&stmt, &params)?)
    }

    fn batch(&mut self, sql: &str) -> DbResult<()> {
        Ok(self.client()?.batch_execute(sql)?)
    }
}

/// `?N` → `$N`, outside quoted strings.
pub fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_row(r: &postgres::Row) -> DbResult<Row> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(DbError::Decode(format!(
                "column {} has type {ty}, which the ledger does not read",
                col.name()
            )));
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            // The server infers each parameter's type from where it is
            // used: write the integer in the width it expects.
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Int(i) => i.to_string().as_str().to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn sqlite_row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let n = r.as_ref().column_count();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            // Only averages would be real; the ledger stores whole numbers.
            ValueRef::Real(v) => Value::Int(v as i64),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

/// A ledger connection.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    /// A `RefCell` because readers hold the ledger by shared reference
    /// while the driver needs it mutably; a connection is only ever used
    /// by one thread at a time (the ledger thread, or one reader).
    Postgres(Box<RefCell<Pg>>),
}

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    fn pg(cell: &RefCell<Pg>) -> DbResult<std::cell::RefMut<'_, Pg>> {
        cell.try_borrow_mut()
            .map_err(|_| DbError::Decode("the PostgreSQL connection is in use".into()))
    }

    /// Every row of `sql`.
    pub fn query(&self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), sqlite_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            }
            Conn::Postgres(p) => Self::pg(p)?.query(sql, args),
        }
    }

    /// The first row of `sql`, if any.
    pub fn query_opt(&self, sql: &str, args: &[Value]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of `sql`, which must exist (aggregates, `RETURNING`).
    pub fn query_one(&self, sql: &str, args: &[Value]) -> DbResult<Row> {
        self.query_opt(sql, args)?
            .ok_or_else(|| DbError::Decode("a query that returns a row returned none".into()))
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn execute(&self, sql: &str, args: &[Value]) -> DbResult<u64> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
            }
            Conn::Postgres(p) => Self::pg(p)?.execute(sql, args),
        }
    }

    /// Runs statements without parameters (DDL, pragmas).
    pub fn batch(&self, sql: &str) -> DbResult<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(p) => Self::pg(p)?.batch(sql),
        }
    }

    /// Runs `f` in a transaction: committed when it returns Ok, rolled
    /// back otherwise.
    /// `wrap` turns the driver's errors of BEGIN and COMMIT into `E`.
    pub fn transaction<T, E>(
        &self,
        wrap: impl Fn(DbError) -> E,
        f: impl FnOnce(&Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        self.batch("BEGIN").map_err(&wrap)?;
        match f(self) {
            Ok(v) => match self.batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.batch("ROLLBACK");
                    Err(wrap(e))
                }
            },
            Err(e) => {
                // A lost connection has no transaction left to roll back.
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The value of JSON text column `col` at top-level key `key`, as text.
    pub fn json_text(&self, col: &str, key: &str) -> String {
        match self {
            Conn::Sqlite(_) => format!("json_extract({col}, '$.{key}')"),
            Conn::Postgres(_) => format!("(({col})::jsonb ->> '{key}')"),
        }
    }

    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars_outside_strings() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
    }
}
