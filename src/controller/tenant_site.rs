//! The InvoicingTenant controller's Kubernetes sites: render the tenant's
//! objects for its Site, apply them to the Site's cluster, and say what runs;
//! when the tenant goes, delete what was applied (its backups stay).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use zeroize::Zeroizing;

use super::repository::store_secrets;
use super::site_clients::FRESH_FOR;
use super::tenant::{Stack, Standby};
use super::{Context, secrets};
use crate::api::repository::BackupRepository;
use crate::api::site::Site;
use crate::api::tenant::{InvoicingTenant, StandbyMode};
use crate::error_chain::error_chain;
use crate::site::agent_env::{Reach, RepositoryAccess, agent_env};
use crate::site::cluster::{self, Applied};
use crate::site::kubernetes;

/// Applies the tenant's objects at `site`, fenced (its app stopped, no DNS
/// record) or not; says what runs.
pub async fn deploy(ctx: &Context, tenant: &InvoicingTenant, site: &Site, fenced: bool) -> Stack {
    let site_name = site.name_any();
    match try_deploy(ctx, tenant, site, fenced).await {
        Ok(applied) => {
            if applied.changed() {
                let note = format!("Kubernetes site {site_name}: {}", summary(&applied));
                tracing::info!(tenant = tenant.name_any(), "{note}");
                // NB: Events with one reason are folded into a series that keeps
                // the first note: a stack made and a stack changed are told apart.
                let fresh = applied.updated.is_empty() && applied.deleted.is_empty();
                let reason = if fresh { "StackCreated" } else { "StackChanged" };
                super::publish(ctx, tenant, EventType::Normal, reason, "Apply", note).await;
            }
            if applied.waiting.is_empty() {
                Stack::Running { site: site_name, app: None }
            } else {
                Stack::Starting { site: site_name, waiting: applied.waiting }
            }
        }
        Err(message) => {
            super::publish(ctx, tenant, EventType::Warning, "StackFailed", "Apply", message.clone()).await;
            Stack::Failed { message }
        }
    }
}

async fn try_deploy(ctx: &Context, tenant: &InvoicingTenant, site: &Site, fenced: bool) -> Result<Applied, String> {
    let mut objects = kubernetes::render(tenant, site, &ctx.images).map_err(|e| e.to_string())?;
    if fenced {
        kubernetes::fence(&mut objects);
    }
    let env = repositories_env(ctx, tenant).await?;
    objects.push(kubernetes::repositories_secret(tenant, &env).map_err(|e| e.to_string())?);
    let secret = kubernetes::database_secret(tenant, site, &password()).map_err(|e| e.to_string())?;
    let target = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, site).await.map_err(|e| error_chain(&e))?;
    let namespace = tenant.namespace().unwrap_or_default();
    cluster::apply(&target, &namespace, &tenant.name_any(), objects, vec![secret]).await.map_err(|e| error_chain(&e))
}

/// Deletes what was applied for the tenant at `site`; `Err` says why it could not.
pub async fn remove(ctx: &Context, tenant: &InvoicingTenant, site: &Site) -> Result<(), String> {
    let target = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, site).await.map_err(|e| error_chain(&e))?;
    let namespace = tenant.namespace().unwrap_or_default();
    let name = tenant.name_any();
    let secrets = [kubernetes::database_secret_name(&name), kubernetes::repositories_secret_name(&name)];
    let deleted =
        cluster::remove(&target, &namespace, &tenant.name_any(), &secrets).await.map_err(|e| error_chain(&e))?;
    let note = format!("Kubernetes site {}: deleted {} (backups are kept)", site.name_any(), list(&deleted));
    super::publish(ctx, tenant, EventType::Normal, "StackRemoved", "Delete", note).await;
    Ok(())
}

/// Applies the tenant's warm standby (its database, replaying the archive of
/// the policy's first repository) where it belongs: at its plan's target
/// site while `serving` is its primary, at its primary once a failover moved
/// it (the old primary's database set aside, a failback promotes the fresh
/// one). Removes the one at `status.standbySite` when the tenant is cold or
/// its standby moved, never what serves.
pub async fn standby(ctx: &Context, tenant: &InvoicingTenant, serving: &Site) -> Standby {
    let was = tenant.status.as_ref().and_then(|s| s.standby_site.clone());
    let plans = ctx.cache.plans.all().await.unwrap_or_default();
    let sites = super::tenant::standby_sites(tenant, plans.iter().map(|p| &**p));
    let serving_name = serving.name_any();
    let moved = serving_name != tenant.spec.primary_site;
    // NB: a moved tenant's primary runs its warm standby, Cold or Warm: the
    // standby sets the diverged database aside and follows the new timeline,
    // which a failback promotes.
    if tenant.spec.standby == StandbyMode::Synchronous {
        let message = "spec.standby Synchronous is kept between Local sites only; at a Kubernetes site a standby \
                       replays the archive: use Warm (or Cold)";
        return Standby::Failed { site: was, message: message.into() };
    }
    let wanted = match tenant.spec.standby {
        _ if moved => Some(tenant.spec.primary_site.clone()),
        StandbyMode::Warm | StandbyMode::Synchronous => sites.first().cloned(),
        StandbyMode::Cold => None,
    };
    // NB: a failover or failback turns the standby's site into the serving one.
    if let Some(old) = was.clone().filter(|old| Some(old) != wanted.as_ref() && *old != serving_name) {
        let removed = match ctx.cache.sites.get(&old).await {
            Some(site) => remove(ctx, tenant, &site).await,
            None => Err(format!("Site {old} does not exist any more")),
        };
        if let Err(why) = removed {
            let message = format!("removing the warm standby at Kubernetes site {old}: {why}");
            return Standby::Failed { site: Some(old), message };
        }
    }
    let Some(site_name) = wanted else {
        // A Cold tenant a failback brought home had its standby here, and
        // the stack that served meanwhile is still at the target.
        let back = was.is_some_and(|was| was == serving_name);
        return match tenant.spec.standby {
            StandbyMode::Cold => match sites.first() {
                Some(target) => cold_secrets_at(ctx, tenant, serving, target, back).await,
                None => Standby::Cold,
            },
            StandbyMode::Warm | StandbyMode::Synchronous => Standby::NoPlan,
        };
    };
    let failed = |message: String| Standby::Failed { site: None, message };
    let Some(site) = ctx.cache.sites.get(&site_name).await else {
        return failed(format!("Site {site_name}, where the tenant's warm standby belongs, does not exist"));
    };
    if super::tenant::placement(&site_name, Some(&site))
        != (super::tenant::Placement::Kubernetes { site: site_name.clone() })
    {
        return failed(format!(
            "Site {site_name} is not a Kubernetes site: the operator runs warm standbys only there (with the Local \
             driver, `fenice lab --standby warm` does)"
        ));
    }
    match try_standby(ctx, tenant, serving, &site).await {
        Ok(applied) => {
            if applied.changed() {
                let note = format!("warm standby at Kubernetes site {site_name}: {}", summary(&applied));
                super::publish(ctx, tenant, EventType::Normal, "StandbyApplied", "Apply", note).await;
            }
            match applied.waiting.is_empty() {
                true => Standby::Replaying { site: site_name },
                false => Standby::Starting { site: site_name, waiting: applied.waiting },
            }
        }
        Err(message) => {
            let message = format!("the warm standby at Kubernetes site {site_name}: {message}");
            super::publish(ctx, tenant, EventType::Warning, "StandbyFailed", "Apply", message.clone()).await;
            Standby::Failed { site: Some(site_name), message }
        }
    }
}

/// Keeps a Cold tenant's Secrets at its plan's target site `target`: a
/// failover makes its database there from the repositories ([`standby_objects`]),
/// and the restored data carries the primary's password, which a lost primary
/// can no longer give. Nothing else of the tenant runs there: `back` (a
/// failback brought it home) removes the rest of the stack that served there.
async fn cold_secrets_at(ctx: &Context, tenant: &InvoicingTenant, primary: &Site, target: &str, back: bool) -> Standby {
    // NB: while the stack at the target is not removed, the standby's site stays
    // recorded at the primary, so that the next reconcile tries again.
    let recorded = back.then(|| primary.name_any());
    let failed = |message: String| Standby::Failed { site: recorded.clone(), message };
    let Some(site) = ctx.cache.sites.get(target).await else {
        return failed(format!("Site {target}, the FailoverPlan's target, does not exist"));
    };
    if super::tenant::placement(target, Some(&site)) != (super::tenant::Placement::Kubernetes { site: target.into() }) {
        return Standby::Cold;
    }
    match try_cold_secrets(ctx, tenant, primary, &site, back).await {
        Ok(()) => Standby::Cold,
        Err(why) => failed(format!("keeping the tenant's Secrets at Kubernetes site {target} for a failover: {why}")),
    }
}

async fn try_cold_secrets(
    ctx: &Context,
    tenant: &InvoicingTenant,
    primary: &Site,
    site: &Site,
    back: bool,
) -> Result<(), String> {
    let namespace = tenant.namespace().unwrap_or_default();
    let env = repositories_env(ctx, tenant).await?;
    let repositories = kubernetes::repositories_secret(tenant, &env).map_err(|e| e.to_string())?;
    let target = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, site).await.map_err(|e| error_chain(&e))?;
    if back {
        // NB: only then: a failover's restore step applies the database here
        // under the same field manager, and this must not delete it.
        let applied = cluster::apply(&target, &namespace, &tenant.name_any(), vec![repositories], vec![])
            .await
            .map_err(|e| error_chain(&e))?;
        if applied.changed() {
            let note = format!("Kubernetes site {}: {} (its Secrets are kept)", site.name_any(), summary(&applied));
            super::publish(ctx, tenant, EventType::Normal, "StackRemoved", "Apply", note).await;
        }
        return Ok(());
    }
    if let Some(secret) = database_secret_unless_kept(ctx, tenant, primary, site, &target).await? {
        cluster::create_secret(&target, &namespace, cluster::FIELD_MANAGER, &secret)
            .await
            .map_err(|e| error_chain(&e))?;
    }
    cluster::apply_each(&target, &namespace, cluster::FIELD_MANAGER, &[repositories])
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(())
}

/// The tenant's database Secret for `site` while the cluster `target` (the
/// site's) has none. Made once, like a stack's: the primary is asked only
/// then, so that a standby whose primary's cluster is gone with its provider
/// is kept, and failed over, without it.
async fn database_secret_unless_kept(
    ctx: &Context,
    tenant: &InvoicingTenant,
    primary: &Site,
    site: &Site,
    target: &cluster::SiteCluster,
) -> Result<Option<serde_json::Value>, String> {
    let namespace = tenant.namespace().unwrap_or_default();
    let name = kubernetes::database_secret_name(&tenant.name_any());
    let kept = cluster::secret_value(target, &namespace, &name, "password").await.map_err(|e| error_chain(&e))?;
    match kept {
        Some(_) => Ok(None),
        None => database_secret_from(ctx, tenant, primary, site).await.map(Some),
    }
}

/// The tenant's database Secret for `site`, with the password of the one at
/// `primary` (the restored data carries it; the app's URL must match).
async fn database_secret_from(
    ctx: &Context,
    tenant: &InvoicingTenant,
    primary: &Site,
    site: &Site,
) -> Result<serde_json::Value, String> {
    let namespace = tenant.namespace().unwrap_or_default();
    let source = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, primary).await.map_err(|e| error_chain(&e))?;
    let secret_name = kubernetes::database_secret_name(&tenant.name_any());
    let password = cluster::secret_value(&source, &namespace, &secret_name, "password")
        .await
        .map_err(|e| error_chain(&e))?
        .ok_or_else(|| {
            format!("waiting for Secret {namespace}/{secret_name} at the primary site {}", primary.name_any())
        })?;
    kubernetes::database_secret(tenant, site, &password).map_err(|e| e.to_string())
}

/// The tenant's warm standby at `site` (its database StatefulSet with the
/// standby's init container, Service, NetworkPolicy) and its repositories
/// Secret: what the tenant controller applies for a Warm tenant, and a
/// failover for a Cold one at its target.
pub async fn standby_objects(
    ctx: &Context,
    tenant: &InvoicingTenant,
    site: &Site,
) -> Result<Vec<serde_json::Value>, String> {
    let env = repositories_env(ctx, tenant).await?;
    let repository =
        env.get("FENICE_REPOSITORY").and_then(|r| r.split(',').next().map(str::to_owned)).unwrap_or_default();
    let mut objects = kubernetes::warm_standby(tenant, site, &ctx.images, &repository).map_err(|e| e.to_string())?;
    objects.push(kubernetes::repositories_secret(tenant, &env).map_err(|e| e.to_string())?);
    Ok(objects)
}

/// `primary`: the site serving the tenant, whose database the standby follows.
async fn try_standby(ctx: &Context, tenant: &InvoicingTenant, primary: &Site, site: &Site) -> Result<Applied, String> {
    let namespace = tenant.namespace().unwrap_or_default();
    let name = tenant.name_any();
    if primary.spec.cluster.as_ref().is_some_and(|c| c.in_cluster)
        && site.spec.cluster.as_ref().is_some_and(|c| c.in_cluster)
    {
        // NB: one namespace of one cluster holds one stack: applying the standby would delete the primary's.
        return Err(format!(
            "Sites {} and {} are both the operator's own cluster",
            primary.name_any(),
            site.name_any()
        ));
    }
    if primary.cloud_native_pg() {
        // NB: CloudNativePG archives WAL its own way: the repositories hold nothing to replay.
        return Err(
            kubernetes::RenderError::CloudNativePgStandby { tenant: name, site: primary.name_any() }.to_string()
        );
    }
    let objects = standby_objects(ctx, tenant, site).await?;
    let target = ctx.site_clients.cluster(&ctx.client, &ctx.namespace, site).await.map_err(|e| error_chain(&e))?;
    let secret = database_secret_unless_kept(ctx, tenant, primary, site, &target).await?;
    cluster::apply(&target, &namespace, &name, objects, secret.into_iter().collect()).await.map_err(|e| error_chain(&e))
}

/// The agents' environment per BackupPolicy, kept for [`FRESH_FOR`] (and
/// while the policy is unchanged): thousands of tenants on one policy cost one
/// read of its repositories and their Secrets a minute, not one each.
#[derive(Default)]
pub struct AgentEnvs(Mutex<HashMap<String, (Instant, String, AgentEnv)>>);

type AgentEnv = Arc<BTreeMap<String, Zeroizing<String>>>;

/// The environment the tenant's agents open its policy's repositories with.
async fn repositories_env(ctx: &Context, tenant: &InvoicingTenant) -> Result<AgentEnv, String> {
    let policy_name = &tenant.spec.backup_policy;
    let Some(policy) = ctx.cache.policies.get(policy_name).await else {
        return Err(format!(
            "BackupPolicy {policy_name} does not exist, so the database has no repository to archive its WAL to: \
             create it, or fix spec.backupPolicy"
        ));
    };
    let version = policy.resource_version().unwrap_or_default();
    let envs = &ctx.agent_envs.0;
    let kept = envs.lock().unwrap_or_else(|e| e.into_inner()).get(policy_name).cloned();
    if let Some((_, _, env)) = kept.filter(|(at, v, _)| *v == version && at.elapsed() < FRESH_FOR) {
        return Ok(env);
    }
    let owner = format!("BackupPolicy {policy_name}");
    let env = Arc::new(read_env(ctx, &owner, &policy.spec.repositories, Reach::Pods).await?);
    envs.lock().unwrap_or_else(|e| e.into_inner()).insert(policy_name.clone(), (Instant::now(), version, env.clone()));
    Ok(env)
}

/// The agents' environment for the `repositories` that `owner` (a
/// BackupPolicy, a Restore) names, read from the API server.
pub async fn read_env(
    ctx: &Context,
    owner: &str,
    repositories: &[String],
    reach: Reach,
) -> Result<BTreeMap<String, Zeroizing<String>>, String> {
    let api: Api<BackupRepository> = Api::all(ctx.client.clone());
    let mut found = Vec::new();
    for name in repositories {
        let repository = match api.get_opt(name).await {
            Ok(Some(repository)) => repository,
            Ok(None) => return Err(format!("BackupRepository {name}, in {owner}, does not exist")),
            Err(e) => return Err(format!("reading BackupRepository {name}: {}", error_chain(&e))),
        };
        let unreadable = |e: secrets::Error| format!("BackupRepository {name}: {}", error_chain(&e));
        let password = secrets::key(&ctx.client, &ctx.namespace, &repository.spec.password_secret_ref)
            .await
            .map_err(unreadable)?;
        let credentials = store_secrets(ctx, name, &repository.spec).await.map_err(|e| error_chain(&e))?;
        found.push((name.clone(), repository, password, credentials));
    }
    let access: Vec<RepositoryAccess<'_>> = found
        .iter()
        .map(|(name, repository, password, credentials)| RepositoryAccess {
            name,
            spec: &repository.spec,
            password: password.clone(),
            credentials: credentials.clone(),
        })
        .collect();
    agent_env(&access, reach).map_err(|e| format!("{owner}: {e}"))
}

fn list(objects: &[String]) -> String {
    if objects.is_empty() { "nothing".into() } else { objects.join(", ") }
}

fn summary(applied: &Applied) -> String {
    let parts = [("created", &applied.created), ("updated", &applied.updated), ("deleted", &applied.deleted)];
    let said: Vec<String> = parts
        .iter()
        .filter(|(_, objects)| !objects.is_empty())
        .map(|(what, objects)| format!("{what} {}", list(objects)))
        .collect();
    said.join("; ")
}

/// A new database password: 128 random bits as hex, safe in a URL unescaped.
pub(super) fn password() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_names_what_changed_and_only_that() {
        let applied = Applied {
            created: vec!["Service a-app".into()],
            deleted: vec!["Ingress a-app".into(), "ConfigMap old".into()],
            ..Applied::default()
        };
        assert_eq!(summary(&applied), "created Service a-app; deleted Ingress a-app, ConfigMap old");
    }

    #[test]
    fn passwords_are_fresh_and_url_safe() {
        let (a, b) = (password(), password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    }
}
