//! The tenant's database: connecting, applying the schema, checking that the
//! database belongs to this tenant, and the channel row.
//!
//! NB: the URL may hold a password. Nothing here puts the URL in a message; a
//! database is always named by [`DbTarget`] (hosts, database, user).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use jiff::civil::Date;
use tokio_postgres::NoTls;

use super::config::AppConfig;
use super::schema::{MIGRATE_FROM_1, SCHEMA, SCHEMA_VERSION};

/// How long connecting to PostgreSQL may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Connections per app process: enough for concurrent issuers and the sender.
const POOL_SIZE: usize = 16;
/// Serializes schema application between app processes that start together
/// (`CREATE TABLE IF NOT EXISTS` is not safe against a concurrent twin).
const SCHEMA_LOCK: i64 = 0x6665_6e69_6365; // "fenice"
/// How long an SdI channel certificate is valid when the start flags name an
/// endpoint but no expiry: accreditation certificates last 3 years.
const DEFAULT_CERTIFICATE_YEARS: i16 = 3;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the database URL is neither a postgres:// URL nor a key=value connection string \
         (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE); it is not shown because it may hold a password"
    )]
    BadUrl,

    #[error("{target}: cannot connect; check that PostgreSQL runs there and that the database exists")]
    Unreachable {
        target: DbTarget,
        #[source]
        source: PoolError,
    },

    #[error("{target}: setting up the connection pool")]
    BuildPool {
        target: DbTarget,
        #[source]
        source: deadpool_postgres::BuildError,
    },

    #[error("the database is unavailable")]
    Pool {
        #[source]
        source: PoolError,
    },

    #[error("database: {step}")]
    Query {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "{target} belongs to tenant {found:?}, not {expected:?}; \
         point --db at tenant {expected}'s own database"
    )]
    OtherTenant { target: DbTarget, found: String, expected: String },

    #[error(
        "{target} was written for partita IVA {found}, not {expected}; file names carry it, \
         so the app will not mix the two"
    )]
    OtherVat { target: DbTarget, found: String, expected: String },

    #[error("the database holds an unexpected {what}")]
    Unexpected { what: String },

    #[error("{target} has schema version {found}, newer than this build's {ours}; run a newer fenice")]
    NewerSchema { target: DbTarget, found: String, ours: i32 },
}

impl Error {
    /// Maps a failed statement to an error naming the step.
    pub fn query(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Query { step, source }
    }

    /// Whether the error is the database being away, rather than a bad statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Pool { .. } | Error::Unreachable { .. } => true,
            Error::Query { source, .. } => source.is_closed() || source.code().is_none(),
            _ => false,
        }
    }
}

impl From<PoolError> for Error {
    fn from(source: PoolError) -> Self {
        Error::Pool { source }
    }
}

/// Where a database URL points, without its password: for messages and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbTarget {
    /// `host:port` (or the socket directory) of each host in the URL.
    pub hosts: Vec<String>,
    pub database: String,
    pub user: String,
}

impl DbTarget {
    /// Reads where `url` points. The error never carries the URL.
    pub fn parse(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|_| Error::BadUrl)?;
        Ok(Self::of(&config))
    }

    /// Where a parsed configuration points.
    pub fn of(config: &tokio_postgres::Config) -> Self {
        let ports = config.get_ports();
        let hosts = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                // One port for all hosts, or one per host, or none (5432).
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    tokio_postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(dir) => format!("{} (port {port})", dir.display()),
                }
            })
            .collect();
        let user = config.get_user().unwrap_or("(no user)").to_string();
        let database = config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
        Self { hosts, database, user }
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts = if self.hosts.is_empty() { "(no host)".to_string() } else { self.hosts.join(",") };
        write!(f, "database {} at {hosts} as user {}", self.database, self.user)
    }
}

/// A pool of connections to the tenant's database, opened and checked.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: Pool,
    pub target: DbTarget,
}

impl Db {
    /// Connects, applies the schema and records (or checks) whose database this
    /// is; then writes the channel row if the configuration names an endpoint.
    pub async fn open(config: &AppConfig, today: Date) -> Result<Self> {
        let mut pg: tokio_postgres::Config = config.db_url.parse().map_err(|_| Error::BadUrl)?;
        let target = DbTarget::of(&pg);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("fenice-app {}", config.tenant));
        }
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|source| Error::BuildPool { target: target.clone(), source })?;
        let db = Self { pool, target };
        let mut client =
            db.pool.get().await.map_err(|source| Error::Unreachable { target: db.target.clone(), source })?;

        let tx = client.transaction().await.map_err(Error::query("starting the schema transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(Error::query("locking the schema"))?;
        tx.batch_execute(SCHEMA).await.map_err(Error::query("applying the schema"))?;
        let meta: HashMap<String, String> = tx
            .query("SELECT key, value FROM fenice_meta", &[])
            .await
            .map_err(Error::query("reading fenice_meta"))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        check_meta(&meta, config, &db.target)?;
        if meta.get("schema_version").map(String::as_str) == Some("1") {
            tx.batch_execute(MIGRATE_FROM_1).await.map_err(Error::query("migrating the schema from version 1"))?;
            tracing::info!(tenant = %config.tenant, db = %db.target, "schema migrated from version 1 to {SCHEMA_VERSION}");
        }
        for (key, value) in [
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("tenant", config.tenant.clone()),
            ("vat", config.vat.clone()),
            ("company", config.company.clone()),
        ] {
            tx.execute(
                "INSERT INTO fenice_meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .await
            .map_err(Error::query("writing fenice_meta"))?;
        }
        tx.commit().await.map_err(Error::query("committing the schema"))?;
        drop(client);

        if let Some(endpoint) = &config.sdi_endpoint {
            let expires = match config.certificate_expires {
                Some(date) => date,
                None => match db.channel().await? {
                    Some(channel) => channel.certificate_expires,
                    None => {
                        let assumed = today.saturating_add(jiff::Span::new().years(DEFAULT_CERTIFICATE_YEARS));
                        tracing::warn!(
                            tenant = %config.tenant,
                            %assumed,
                            "no --certificate-expires given for the SdI channel; assuming a fresh 3-year certificate"
                        );
                        assumed
                    }
                },
            };
            db.set_channel(endpoint, expires).await?;
        } else if let Some(expires) = config.certificate_expires {
            let updated = db
                .pool
                .get()
                .await?
                .execute("UPDATE channel SET certificate_expires = $1, updated_at = now() WHERE id = 1", &[&expires])
                .await
                .map_err(Error::query("updating the channel certificate"))?;
            if updated == 0 {
                tracing::warn!(tenant = %config.tenant, "--certificate-expires without a channel endpoint: ignored");
            }
        }
        Ok(db)
    }

    /// The SdI channel row, if one was written.
    pub async fn channel(&self) -> Result<Option<Channel>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt("SELECT endpoint, certificate_expires, updated_at FROM channel WHERE id = 1", &[])
            .await
            .map_err(Error::query("reading the channel"))?;
        Ok(row.map(|row| Channel { endpoint: row.get(0), certificate_expires: row.get(1), updated_at: row.get(2) }))
    }

    /// Writes the SdI channel row.
    pub async fn set_channel(&self, endpoint: &str, certificate_expires: Date) -> Result<Channel> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "INSERT INTO channel (id, endpoint, certificate_expires) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET endpoint = EXCLUDED.endpoint, \
                     certificate_expires = EXCLUDED.certificate_expires, updated_at = now() \
                 RETURNING endpoint, certificate_expires, updated_at",
                &[&endpoint, &certificate_expires],
            )
            .await
            .map_err(Error::query("writing the channel"))?;
        Ok(Channel { endpoint: row.get(0), certificate_expires: row.get(1), updated_at: row.get(2) })
    }
}

/// The SdI channel this site transmits through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    pub endpoint: String,
    pub certificate_expires: Date,
    pub updated_at: jiff::Timestamp,
}

/// Refuses a database that another tenant (or another partita IVA, or a newer
/// build) wrote. An empty fenice_meta is a new database.
fn check_meta(meta: &HashMap<String, String>, config: &AppConfig, target: &DbTarget) -> Result<()> {
    if let Some(found) = meta.get("tenant")
        && *found != config.tenant
    {
        return Err(Error::OtherTenant {
            target: target.clone(),
            found: found.clone(),
            expected: config.tenant.clone(),
        });
    }
    if let Some(found) = meta.get("vat")
        && *found != config.vat
    {
        return Err(Error::OtherVat { target: target.clone(), found: found.clone(), expected: config.vat.clone() });
    }
    if let Some(found) = meta.get("schema_version")
        && found.parse::<i32>().map_or(true, |v| v > SCHEMA_VERSION)
    {
        return Err(Error::NewerSchema { target: target.clone(), found: found.clone(), ours: SCHEMA_VERSION });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_hosts_database_and_user_but_not_the_password() {
        let t = DbTarget::parse("postgres://app:s3cr3t@db.example:5433/acme").unwrap();
        assert_eq!(t.to_string(), "database acme at db.example:5433 as user app");
        let t = DbTarget::parse("host=a,b port=1,2 user=u password=s3cr3t").unwrap();
        assert_eq!(t.to_string(), "database u at a:1,b:2 as user u");
        let e = DbTarget::parse("postgres://app:s3cr3t@db.example:notaport/acme").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn another_tenants_database_is_refused() {
        let config = AppConfig::new("acme", "01234567890", "Acme", "postgres://x@h/acme", "/tmp");
        let target = DbTarget::parse(&config.db_url).unwrap();
        let meta = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(check_meta(&meta(&[]), &config, &target).is_ok());
        assert!(check_meta(&meta(&[("tenant", "acme"), ("schema_version", "1")]), &config, &target).is_ok());
        let e = check_meta(&meta(&[("tenant", "globex")]), &config, &target).unwrap_err();
        assert!(matches!(e, Error::OtherTenant { .. }), "{e}");
        assert!(e.to_string().contains("\"globex\""), "{e}");
        let e = check_meta(&meta(&[("vat", "99999999999")]), &config, &target).unwrap_err();
        assert!(matches!(e, Error::OtherVat { .. }), "{e}");
        let newer = (SCHEMA_VERSION + 1).to_string();
        let e = check_meta(&meta(&[("schema_version", &newer)]), &config, &target).unwrap_err();
        assert!(matches!(e, Error::NewerSchema { .. }), "{e}");
    }
}
