//! Where the ledger lives: a SQLite file in the state dir (the default),
//! or a PostgreSQL database named by a `postgres://` URL that a fleet of
//! hosts shares.
//!
//! The URL is configuration and may be shown anywhere (logs, `agentd
//! check`, the state dir's `ledger.url`), so it must never hold the
//! password: one that does is refused. The password comes from
//! `ledger_password_file:` (a file only agentd's user reads) or the
//! `AGENTD_LEDGER_PASSWORD` variable, and lives only in memory.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Names the ledger's URL when the config does not (`ledger:` wins).
pub const URL_ENV: &str = "AGENTD_LEDGER";
/// Holds the PostgreSQL password when no `ledger_password_file` is set.
pub const PASSWORD_ENV: &str = "AGENTD_LEDGER_PASSWORD";

/// How long connecting to PostgreSQL may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

/// A PostgreSQL ledger: its URL (without password) and the password.
#[derive(Clone, PartialEq)]
pub struct PgTarget {
    url: String,
    password: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// As the file's path or the URL (never the password, which a
/// deserialized location then lacks).
impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe())
    }
}

impl<'de> serde::Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Location, D::Error> {
        let s = String::deserialize(d)?;
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            PgTarget::parse(&s)
                .map(Location::Postgres)
                .map_err(serde::de::Error::custom)
        } else {
            Ok(Location::Sqlite(PathBuf::from(s)))
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationError {
    #[error("expected a postgres:// or postgresql:// URL, found {0:?}")]
    NotPostgres(String),
    #[error("the URL holds a password; remove it and put the password in ledger_password_file or ${PASSWORD_ENV}")]
    HasPassword,
    #[error("not a valid PostgreSQL URL: {0}")]
    Invalid(String),
    #[error("cannot read the password file {path}: {why}")]
    PasswordFile { path: PathBuf, why: String },
}

impl PgTarget {
    /// Checks a `postgres://` URL: well formed, and with no password.
    pub fn parse(url: &str) -> Result<PgTarget, LocationError> {
        let parsed = url::Url::parse(url).map_err(|e| LocationError::Invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(LocationError::NotPostgres(url.to_owned()));
        }
        if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password")) {
            return Err(LocationError::HasPassword);
        }
        postgres::Config::from_str(url).map_err(|e| LocationError::Invalid(e.to_string()))?;
        Ok(PgTarget {
            url: url.to_owned(),
            password: None,
        })
    }

    /// The password from `file` if given, else from [`PASSWORD_ENV`]
    /// (read through `env`), else none (trust or peer authentication).
    pub fn with_password_from(
        mut self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PgTarget, LocationError> {
        self.password = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| LocationError::PasswordFile {
                    path: path.to_owned(),
                    why: e.to_string(),
                })?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            None => env(PASSWORD_ENV).filter(|p| !p.is_empty()),
        };
        Ok(self)
    }

    /// The URL, safe to show.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The driver's connection settings: the URL, the password, a bounded
    /// connect time, and agentd's name in `pg_stat_activity`.
    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::from_str(&self.url).unwrap_or_default();
        if let Some(p) = &self.password {
            c.password(p);
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(CONNECT_TIMEOUT);
        }
        if c.get_application_name().is_none() {
            c.application_name("agentd");
        }
        c
    }
}

impl Location {
    /// What a member's state dir says about its ledger, for readers that
    /// have no config: [`URL_ENV`] if set, else the URL the supervisor
    /// last ran with (`STATE_DIR/ledger.url`), else the SQLite file.
    pub fn for_state_dir(state_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Location, LocationError> {
        let url = match env(URL_ENV).filter(|u| !u.is_empty()) {
            Some(u) => Some(u),
            None => std::fs::read_to_string(crate::state_dir::ledger_url(state_dir))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        };
        match url {
            Some(u) => Ok(Location::Postgres(PgTarget::parse(&u)?.with_password_from(None, env)?)),
            None => Ok(Location::Sqlite(crate::state_dir::ledger(state_dir))),
        }
    }

    /// For messages: the file, or the URL.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(t) => t.url.clone(),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused() {
        assert_eq!(
            PgTarget::parse("postgres://agentd:hunter2@db.example.com/agentd"),
            Err(LocationError::HasPassword)
        );
        assert_eq!(
            PgTarget::parse("postgres://agentd@db.example.com/agentd?password=hunter2"),
            Err(LocationError::HasPassword)
        );
        assert!(PgTarget::parse("postgres://agentd@db.example.com/agentd").is_ok());
        assert!(PgTarget::parse("postgresql:///agentd?host=/run/postgresql").is_ok());
        assert!(matches!(
            PgTarget::parse("mysql://db/agentd"),
            Err(LocationError::NotPostgres(_))
        ));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let t = PgTarget::parse("postgres://agentd@db/agentd")
            .and_then(|t| t.with_password_from(None, &|_| Some("hunter2".into())))
            .unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.config().get_password(), Some(&b"hunter2"[..]));
    }
}
