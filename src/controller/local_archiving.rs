//! WAL archiving of the tenants' databases at Local sites, where their
//! BackupPolicy asks for it (`walArchiving.enabled`), as the lab's sites do:
//! each database hands its WAL segments to a `fenice agent wal-archiver` of
//! its site (one per set of repositories, which it opens once for all the
//! databases), and that writes them to every repository of the policy. A
//! database restored from a base backup fetches them back (`restore_command`,
//! `fenice agent wal-fetch`).

use std::collections::BTreeMap;

use kube::ResourceExt;
use zeroize::Zeroizing;

use super::Context;
use crate::api::tenant::InvoicingTenant;
use crate::error_chain::error_chain;
use crate::site::agent_env::Reach;
use crate::testkit::PostgresOptions;

/// PostgreSQL's `archive_timeout` when the policy gives none.
const ARCHIVE_TIMEOUT_SECS: u64 = 60;

/// How a tenant's database archives its WAL.
pub struct Archiving {
    /// The settings of a database that archives its WAL.
    pub options: PostgresOptions,
    /// What opens the repositories; its values are secrets.
    env: BTreeMap<String, Zeroizing<String>>,
    /// The policy's repositories, in its order, each with its location as
    /// `fenice agent wal-fetch --repo` takes it.
    pub locations: Vec<(String, String)>,
}

impl Archiving {
    /// The settings of a database recovering from the archive: those of
    /// [`options`](Self::options), and what `restore_command` opens the
    /// repositories with, in the server's environment.
    pub fn fetching(&self) -> PostgresOptions {
        self.env.iter().fold(self.options.clone(), |options, (key, value)| options.env(key, value.as_str()))
    }
}

/// How the tenant's database at the Local site `site` archives its WAL,
/// starting the site's archiver for its policy's repositories unless it runs;
/// `None` when its BackupPolicy archives none (or does not exist: the
/// tenant's `Protected` condition says so).
pub async fn archiving(ctx: &Context, tenant: &InvoicingTenant, site: &str) -> Result<Option<Archiving>, String> {
    let Some(policy) = ctx.cache.policies.get(&tenant.spec.backup_policy).await else { return Ok(None) };
    let Some(wal) = policy.spec.wal_archiving.as_ref().filter(|w| w.enabled) else { return Ok(None) };
    let owner = format!("BackupPolicy {}", policy.name_any());
    let env = super::tenant_site::read_env(ctx, &owner, &policy.spec.repositories, Reach::OperatorMachine).await?;
    let joined = env.get("FENICE_REPOSITORY").map(|l| l.to_string()).unwrap_or_default();
    let locations = policy.spec.repositories.iter().cloned().zip(joined.split(',').map(str::to_owned)).collect();
    if !ctx.local.archiver_runs(site, &env) {
        // NB: the archiver opens the repositories: a policy's first database creates them, as its first Backup would.
        for name in &policy.spec.repositories {
            let (_, _, opened) = super::backup_run::open_repository(ctx, name, true).await;
            opened.map_err(|why| format!("repository {name}: {why}"))?;
        }
    }
    let (local, site_owned, handed) = (ctx.local.clone(), site.to_owned(), env.clone());
    let socket = tokio::task::spawn_blocking(move || local.archiver(&site_owned, &handed))
        .await
        .map_err(|e| format!("starting the WAL archiver at Local site {site}: {e}"))?
        .map_err(|e| error_chain(&e))?;
    let timeout = wal.archive_timeout.as_ref().map_or(ARCHIVE_TIMEOUT_SECS, |t| t.as_std().as_secs().max(1));
    let archive_command = format!("'{}' agent wal-push --via '{}' %p", ctx.local.program().display(), socket.display());
    // NB: each segment is archived whole at every timeout: small ones keep that cheap.
    let options = PostgresOptions::new()
        .wal_segment_mb(1)
        .env("FENICE_TENANT", tenant.name_any())
        .setting("wal_level", "replica")
        .setting("archive_mode", "on")
        .setting("archive_timeout", timeout.to_string())
        .setting("archive_command", archive_command);
    Ok(Some(Archiving { options, env, locations }))
}
