//! PostgreSQL as the agent uses it: connections, the client programs
//! (pg_dump, pg_restore), and URLs shown without their password.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::NoTls;

use super::{Error, Result};

/// A database URL, kept whole for connecting and shown without its password.
#[derive(Clone)]
pub struct DbUrl {
    url: String,
    config: tokio_postgres::Config,
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(url).map_err(|source| Error::DbUrl {
            // NB: the URL may hold a password; the parser's message does not repeat it.
            reason: format!("{source}; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"),
        })?;
        if config.get_dbname().is_none() {
            return Err(Error::DbUrl { reason: "it names no database (postgres://HOST:PORT/DATABASE)".into() });
        }
        Ok(Self { url: url.to_string(), config })
    }

    /// The database's name.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// The URL of another database on the same server, e.g. `postgres` to create this one.
    pub fn sibling(&self, database: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(database);
        Self { url: self.url.clone(), config }
    }

    /// Connects, and drives the connection on a task until the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            self.config.connect(NoTls).await.map_err(|source| Error::Connect { db: self.to_string(), source })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = &error as &dyn std::error::Error, "database connection closed");
            }
        });
        Ok(client)
    }

    /// The environment that hands this URL to libpq programs (pg_dump,
    /// pg_restore, psql): the URL goes in `--dbname`, the password in PGPASSWORD,
    /// so it shows in no process listing.
    pub fn libpq_args(&self) -> (String, Option<String>) {
        let mut config = self.config.clone();
        let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        let mut parts = Vec::new();
        if let Some(user) = config.get_user() {
            parts.push(format!("user={}", quote(user)));
        }
        for (host, port) in config.get_hosts().iter().zip(config.get_ports().iter().chain(std::iter::repeat(&5432))) {
            match host {
                tokio_postgres::config::Host::Tcp(name) => parts.push(format!("host={}", quote(name))),
                tokio_postgres::config::Host::Unix(path) => {
                    parts.push(format!("host={}", quote(&path.display().to_string())))
                }
            }
            parts.push(format!("port={port}"));
        }
        parts.push(format!("dbname={}", quote(self.database())));
        config.password(Vec::<u8>::new());
        (parts.join(" "), password)
    }
}

/// Shown as "database D at HOST:PORT as user U", never with the password.
impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::app::db::DbTarget::of(&self.config).fmt(f)
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// A read-only transaction that sees one consistent state of the database
/// from its first statement to its end.
pub async fn consistent_view<'a>(
    client: &'a mut tokio_postgres::Client,
    what: &'static str,
) -> Result<tokio_postgres::Transaction<'a>> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|source| Error::Query { what, source })
}

/// A libpq keyword value, quoted.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Finds a PostgreSQL client program: in `bin_dir` when given, else on PATH,
/// else in the newest of Debian's /usr/lib/postgresql/VERSION/bin.
pub fn program(name: &'static str, bin_dir: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = bin_dir {
        let path = dir.join(name);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::NoProgram { program: name, looked: path.display().to_string() })
        };
    }
    if let Some(path) = crate::testkit::process::find_on_path(name) {
        return Ok(path);
    }
    // Debian puts each major version's programs in /usr/lib/postgresql/VERSION/bin.
    crate::testkit::postgres::bin_dir()
        .ok()
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file())
        .ok_or(Error::NoProgram { program: name, looked: "PATH and /usr/lib/postgresql/*/bin".into() })
}
