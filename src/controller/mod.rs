//! The operator: kube-runtime controllers sharing one [`Context`]. Each
//! controller's decisions are pure functions of (spec, status, what was
//! observed, now) with unit tests; the kube and store I/O around them is kept
//! apart. Built so far: BackupRepository (probes), BackupPolicy (the schedule
//! creates Backups, retention), Backup (runs at Local sites) and
//! InvoicingTenant (stacks at Local and Kubernetes sites); the other kinds are told, in a
//! condition, that nothing is done for them yet (`not_built`).

pub mod backup;
mod backup_job;
mod backup_run;
mod certificates;
pub mod drill;
pub mod drill_job;
pub mod drill_schedule;
pub mod failover;
pub mod failover_driver;
pub mod leader;
pub mod lease_agent;
pub mod lease_watch;
pub mod local_archiving;
pub mod local_failover_driver;
pub mod local_fence;
pub mod local_recovery;
pub mod local_sites;
pub mod local_standby;
pub mod metrics;
pub mod not_built;
pub mod policy;
pub mod repository;
pub mod restore;
mod restore_job;
pub mod retention;
pub mod schedule;
pub mod secrets;
pub mod site_clients;
pub mod tenant;
pub mod tenant_site;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, controller, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use self::local_sites::LocalSites;
use self::metrics::Metrics;
use crate::api::backup::Backup;
use crate::api::condition;
use crate::api::plan::FailoverPlan;
use crate::api::policy::BackupPolicy;
use crate::api::repository::BackupRepository;
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;

/// The field manager of everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "fenice";
/// How soon work that could not be done is tried again.
pub const RETRY: Duration = Duration::from_secs(15);

/// What every controller shares.
pub struct Context {
    pub client: Client,
    /// The operator's namespace: where cluster-scoped resources' Secrets are by default.
    pub namespace: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How often each repository is probed.
    pub probe_interval: Duration,
    /// The sites whose driver is Local: processes on this machine.
    pub local: Arc<LocalSites>,
    /// What the watches hold, so that a reconcile looks objects up rather
    /// than asking the API server (38,000 tenants would be 38,000 GETs).
    pub cache: Cache,
    /// Clients of the Kubernetes sites' clusters.
    pub site_clients: site_clients::SiteClients,
    /// The images tenants' stacks run at Kubernetes sites.
    pub images: crate::site::kubernetes::Images,
    /// What the agents at Kubernetes sites open each policy's repositories with.
    pub agent_envs: tenant_site::AgentEnvs,
    /// The Site this operator runs at (`--site`): it runs that site's lease
    /// agents ([`lease_agent`]); none without it.
    pub site: Option<String>,
    /// The lease agents [`lease_agent`] runs, for the failovers at this site.
    pub lease_agents: lease_agent::Agents,
    /// How long each request to a repository's or a witness's store may take,
    /// and how often it is tried (`--store-timeout`, `--store-attempts`).
    pub store_retry: crate::store::retry::RetryPolicy,
    writers: std::sync::Mutex<Option<Writers>>,
}

/// Readers of the objects the controllers watch.
#[derive(Clone)]
pub struct Cache {
    pub tenants: Cached<InvoicingTenant>,
    pub sites: Cached<Site>,
    pub policies: Cached<BackupPolicy>,
    /// Where each tenant's standby is: the FailoverPlans' target sites.
    pub plans: Cached<FailoverPlan>,
}

/// One kind's objects as a watch last saw them.
#[derive(Clone)]
pub struct Cached<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    // NB: not `Store::wait_until_ready`: its oneshot keeps one waker, so of
    // several tasks waiting at once all but the last wait forever.
    listed: tokio::sync::watch::Receiver<bool>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    /// Waits until the watch has listed everything once; false if it stopped first.
    pub async fn ready(&self) -> bool {
        self.listed.clone().wait_for(|listed| *listed).await.is_ok()
    }

    /// The cluster-scoped object `name`, once everything was listed.
    pub async fn get(&self, name: &str) -> Option<Arc<K>> {
        if !self.ready().await {
            return None;
        }
        self.store.get(&ObjectRef::new(name))
    }

    /// The object `name` in `namespace`, once everything was listed.
    pub async fn get_in(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        if !self.ready().await {
            return None;
        }
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every object, once everything was listed; `None` if the watch stopped first.
    pub async fn all(&self) -> Option<Vec<Arc<K>>> {
        self.ready().await.then(|| self.store.state())
    }
}

/// What fills a [`Cached`]: the reflector's writer and the listed flag.
struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    listed: tokio::sync::watch::Sender<bool>,
}

fn cached<K>() -> (Cached<K>, Feed<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, writer) = reflector::store();
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    (Cached { store, listed }, Feed { writer, listed: listed_tx })
}

/// `events` reflected into `feed`'s store, which is marked listed at the end of each full list.
fn fill<K, S>(events: S, feed: Feed<K>) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let Feed { writer, listed } = feed;
    events.reflect(writer).inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            listed.send_replace(true);
        }
    })
}

struct Writers {
    tenants: Feed<InvoicingTenant>,
    sites: Feed<Site>,
    policies: Feed<BackupPolicy>,
    plans: Feed<FailoverPlan>,
}

impl Context {
    pub fn new(
        client: Client,
        namespace: &str,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        local: Arc<LocalSites>,
    ) -> Self {
        let reporter = Reporter { controller: "fenice-operator".into(), instance };
        let (tenants, tenants_writer) = cached();
        let (sites, sites_writer) = cached();
        let (policies, policies_writer) = cached();
        let (plans, plans_writer) = cached();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: namespace.into(),
            metrics,
            probe_interval: Duration::from_secs(300),
            local,
            cache: Cache { tenants, sites, policies, plans },
            site_clients: Default::default(),
            images: crate::site::kubernetes::Images::of_this_build(),
            agent_envs: Default::default(),
            site: None,
            lease_agents: Default::default(),
            store_retry: Default::default(),
            writers: std::sync::Mutex::new(Some(Writers {
                tenants: tenants_writer,
                sites: sites_writer,
                policies: policies_writer,
                plans: plans_writer,
            })),
        }
    }

    /// Whether the Local site `site` is another operator's: the operator of
    /// one site (`--site`) runs the processes of its own Local site only, so
    /// that the operators of two sites watching one cluster never both start a
    /// tenant's stack, nor take the work the other runs for interrupted (it is
    /// in the other's process); an operator of no site runs every Local site.
    pub async fn local_elsewhere(&self, site: &str) -> bool {
        if self.site.as_deref().is_none_or(|own| own == site) {
            return false;
        }
        let found = self.cache.sites.get(site).await;
        matches!(tenant::placement(site, found.as_deref()), tenant::Placement::Local { .. })
    }

    /// [`local_elsewhere`](Self::local_elsewhere) for `at`, else for the site
    /// the tenant `namespace/name` is active at (its primary until a failover
    /// moved it); false for a tenant not found, whose work fails here with a reason.
    pub async fn tenant_elsewhere(&self, namespace: &str, name: &str, at: Option<&str>) -> bool {
        if let Some(site) = at {
            return self.local_elsewhere(site).await;
        }
        let Some(tenant) = self.cache.tenants.get_in(namespace, name).await else { return false };
        self.local_elsewhere(&tenant::active_site(&tenant)).await
    }
}

/// How soon work left to another site's operator is looked at again (the
/// tenant may have moved here meanwhile).
pub const ELSEWHERE: Duration = Duration::from_secs(60);

/// Runs one reconcile of `controller`, counting it and timing it in the metrics.
pub async fn measured<T, E>(
    ctx: &Context,
    controller: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = work.await;
    ctx.metrics.reconciled(controller, started.elapsed(), result.is_ok());
    result
}

/// After a failed reconcile: log it with its causes, try again shortly.
pub fn retry_after_error(object: &str, error: &(dyn std::error::Error + 'static)) -> kube::runtime::controller::Action {
    tracing::warn!(object, error = crate::error_chain::error_chain(error), "reconcile failed");
    kube::runtime::controller::Action::requeue(RETRY)
}

/// A call to the API about one object failed: which object, and what for.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {what}")]
pub struct ObjectError {
    /// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
    object: String,
    what: &'static str,
    #[source]
    source: kube::Error,
}

/// The first `len` letters and digits of `object`'s uid: a short name that
/// is the object's own, for what it runs (a PostgreSQL database name holds 63 bytes).
pub fn short_uid<K: Resource>(object: &K, len: usize) -> String {
    object.meta().uid.as_deref().unwrap_or_default().chars().filter(char::is_ascii_alphanumeric).take(len).collect()
}

/// Names `object` in the error of a call made `what` for.
pub fn about<K: Resource<DynamicType = ()>>(object: &K, what: &'static str) -> impl FnOnce(kube::Error) -> ObjectError {
    let name = match object.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    };
    let object = format!("{} {name}", K::kind(&()));
    move |source| ObjectError { object, what, source }
}

/// Writes `status` as `object`'s status with server-side apply (field manager [`FIELD_MANAGER`]).
pub async fn apply_status<K>(api: &Api<K>, object: &K, status: &impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    apply_status_as(api, object, status, FIELD_MANAGER).await
}

/// [`apply_status`] under another field manager, for the status fields a
/// controller writes on objects another controller owns.
/// An owner reference to `object`, so that what is made for it goes with it.
pub fn owner<K: Resource<DynamicType = ()>>(
    object: &K,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: object.meta().name.clone().unwrap_or_default(),
        uid: object.meta().uid.clone().unwrap_or_default(),
        ..Default::default()
    }
}

pub async fn apply_status_as<K>(
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
    manager: &str,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status,
    });
    api.patch_status(&object.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await.map(|_| ())
}

/// Publishes how a run ended: a Normal Event `reason` when it `succeeded`,
/// a Warning otherwise, with the message of the `Ready` condition.
pub async fn publish_outcome<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    succeeded: bool,
    reason: &str,
    action: &str,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let type_ = if succeeded { EventType::Normal } else { EventType::Warning };
    let note = conditions.iter().find(|c| c.type_ == condition::types::READY).map(|c| c.message.clone());
    publish(ctx, object, type_, reason, action, note.unwrap_or_default()).await;
}

/// Adds `finalizer` to `object`. The patch holds only if the object is still
/// the one read; when it changed meanwhile (409, or 422 from the failed
/// `test`), it is read again and the patch retried, a few times.
pub async fn add_finalizer<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut current = object.clone();
    for attempt in 1.. {
        if current.finalizers().iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let version = current.resource_version().unwrap_or_default();
        let add = match current.meta().finalizers.as_ref() {
            Some(list) if !list.is_empty() => {
                serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
            }
            _ => serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}),
        };
        let operations = serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            add,
        ]);
        let patch: json_patch::Patch = serde_json::from_value(operations).expect("a valid JSON patch");
        match api.patch(&current.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if (status.code == 409 || status.code == 422) && attempt < 5 => {
                tracing::debug!(object = current.name_any(), attempt, "changed meanwhile: reading it again");
                current = api.get(&current.name_any()).await?;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Whether the API server still holds `object` as read. A run that ended
/// wrote its outcome; a reconcile queued meanwhile may get the object from
/// before that write (the watch lags behind), and must not take a run it
/// sees in progress for one an operator restart cut short.
pub async fn still_current<K>(api: &Api<K>, object: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let fresh = api.get(&object.name_any()).await?;
    Ok(fresh.resource_version() == object.resource_version())
}

/// How soon a reconcile that got an outdated object looks again.
pub const OUTDATED: Duration = Duration::from_secs(1);

/// Removes `finalizer` from `object`, if the list still holds it where it was read.
pub async fn remove_finalizer<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(index) = object.finalizers().iter().position(|f| f == finalizer) else { return Ok(()) };
    let path = format!("/metadata/finalizers/{index}");
    let operations = serde_json::json!([
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(operations).expect("a valid JSON patch");
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await.map(|_| ())
}

/// Publishes an Event about `object`; a failure to publish is logged, never fatal.
pub async fn publish<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(reason, error = %e, "publishing an Event");
    }
}

/// Reconciles of one controller running at once: bounds the memory and the
/// load on the API server when thousands of objects are due together.
const CONCURRENCY: u16 = 16;
/// Backups (and restores) running at once: each streams a database dump through this process.
const BACKUP_CONCURRENCY: u16 = 4;

/// The InvoicingTenant controller, on watches that fill the [`Cache`]. Cached
/// tenants drop their managedFields (nothing here reads them; at 38,000
/// tenants they are most of the memory). A tenant is reconciled when its spec
/// changes or its deletion starts, not on status writes (its own, or the
/// last backup's), nor again when a watch lists everything anew; and when the
/// Site or BackupPolicy it names appears, changes or goes.
fn tenant_controller(ctx: &Context, writers: Writers) -> Controller<InvoicingTenant> {
    let config = watcher::Config::default;
    let tenants = watcher(Api::<InvoicingTenant>::all(ctx.client.clone()), config())
        .default_backoff()
        .modify(|t| t.managed_fields_mut().clear());
    let tenants =
        fill(tenants, writers.tenants).applied_objects().predicate_filter(spec_or_deletion, Default::default());
    let sites = watcher(Api::<Site>::all(ctx.client.clone()), config()).default_backoff();
    let sites =
        fill(sites, writers.sites).touched_objects().predicate_filter(predicates::resource_version, Default::default());
    let policies = watcher(Api::<BackupPolicy>::all(ctx.client.clone()), config()).default_backoff();
    let policies = fill(policies, writers.policies)
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
    let plans = watcher(Api::<FailoverPlan>::all(ctx.client.clone()), config()).default_backoff();
    let plans = fill(plans, writers.plans).touched_objects().predicate_filter(spec_or_lease, Default::default());
    let (by_site, by_policy, by_plan) =
        (ctx.cache.tenants.store.clone(), ctx.cache.tenants.store.clone(), ctx.cache.tenants.store.clone());
    let plans_by_site = ctx.cache.plans.store.clone();
    Controller::for_stream(tenants, ctx.cache.tenants.store.clone())
        .watches_stream(sites, move |site: Site| {
            let site = site.name_any();
            let plans = plans_by_site.state();
            naming(&by_site, |t| {
                t.spec.primary_site == site
                    || tenant::serving_site(t) == site
                    || tenant::standby_sites(t, plans.iter().map(|p| &**p)).contains(&site)
            })
        })
        .watches_stream(policies, move |policy: BackupPolicy| {
            naming(&by_policy, |t| t.spec.backup_policy == policy.name_any())
        })
        // NB: every tenant the plan selects, warm or not: one turned cold has a standby to remove.
        .watches_stream(plans, move |plan: FailoverPlan| match crate::drill::Matcher::new(&plan.spec.tenants) {
            Ok(matcher) => naming(&by_plan, |t| matcher.matches(t)),
            Err(_) => Vec::new(),
        })
}

/// What makes a tenant worth a reconcile: its spec (generation), whether it
/// is being deleted, and where a failover moved it.
fn spec_or_deletion(tenant: &InvoicingTenant) -> Option<u64> {
    let serving = tenant.status.as_ref().and_then(|s| s.serving.as_ref());
    Some(hash_of(&(tenant.metadata.generation, tenant.metadata.deletion_timestamp.is_some(), serving)))
}

/// What makes a plan worth looking at its tenants again: its spec, and who
/// holds its lease (a failover fences them at one site and serves them at another).
fn spec_or_lease(plan: &FailoverPlan) -> Option<u64> {
    let status = plan.status.as_ref();
    let standings = status.map(|s| s.sites.iter().map(|e| (&e.site, e.standing, e.epoch)).collect::<Vec<_>>());
    let lease = status.map(|s| (&s.lease_holder, s.epoch, &s.handover));
    Some(hash_of(&(plan.metadata.generation, lease, standings)))
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
}

/// The tenants in `store` for which `names` holds.
fn naming(store: &Store<InvoicingTenant>, names: impl Fn(&InvoicingTenant) -> bool) -> Vec<ObjectRef<InvoicingTenant>> {
    store.state().iter().filter(|t| names(t)).map(|t| ObjectRef::from_obj(&**t)).collect()
}

/// How long reconciles in progress get to finish once the operator is told to
/// stop: less than Kubernetes' default termination grace period (30 s), after
/// which the kubelet kills the process anyway.
const STOP_GRACE: Duration = Duration::from_secs(25);

/// Runs the controllers until `shutdown` completes; reconciles in progress
/// get [`STOP_GRACE`] to finish.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    // NB: kube-runtime 5's graceful shutdown never ends for a controller told to
    // stop before its first list completed (its runner waits for the store to
    // be ready, and the watch filling it is no longer polled): bounded here.
    let bound = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            tokio::time::sleep(STOP_GRACE).await;
            tracing::warn!(grace = ?STOP_GRACE, "reconciles still in progress were stopped");
        }
    };
    let repositories = Controller::new(Api::<BackupRepository>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(repository::reconcile, repository::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policies = Controller::new(Api::<BackupPolicy>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let backups = Controller::new(Api::<Backup>::all(ctx.client.clone()), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(BACKUP_CONCURRENCY))
        .graceful_shutdown_on(shutdown.clone())
        .run(backup::reconcile, backup::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let not_built = futures::future::join_all(not_built::kinds(ctx.site.as_deref()).into_iter().map(|kind| {
        let api = Api::<kube::api::DynamicObject>::all_with(ctx.client.clone(), &kind.resource);
        let resource = kind.resource.clone();
        Controller::new_with(api, watcher::Config::default(), resource)
            .graceful_shutdown_on(shutdown.clone())
            .run(not_built::reconcile, not_built::error_policy, Arc::new((ctx.clone(), Arc::new(kind))))
            .for_each(|_| futures::future::ready(()))
    }));
    let writers = ctx.writers.lock().unwrap_or_else(|e| e.into_inner()).take().expect("the controllers run once");
    let restores =
        Controller::new(Api::<crate::api::restore::Restore>::all(ctx.client.clone()), watcher::Config::default())
            .with_config(controller::Config::default().concurrency(BACKUP_CONCURRENCY))
            .graceful_shutdown_on(shutdown.clone())
            .run(restore::reconcile, restore::error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));
    let drills = Controller::new(Api::<crate::api::drill::Drill>::all(ctx.client.clone()), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(BACKUP_CONCURRENCY))
        .graceful_shutdown_on(shutdown.clone())
        .run(drill::reconcile, drill::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let drill_schedules = Controller::new(Api::<FailoverPlan>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(drill_schedule::reconcile, drill_schedule::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let lease_watch = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        async move {
            let agents = async {
                match ctx.site.clone() {
                    Some(site) => lease_agent::run(ctx.clone(), site).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = lease_watch::run(ctx.clone()) => {}
                () = agents => {}
                () = shutdown => {}
            }
        }
    };
    let failovers =
        Controller::new(Api::<crate::api::failover::Failover>::all(ctx.client.clone()), watcher::Config::default())
            .graceful_shutdown_on(shutdown.clone())
            .run(failover::reconcile, failover::error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));
    let tenants = tenant_controller(&ctx, writers)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(tenant::reconcile, tenant::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    let controllers = async {
        futures::join!(
            repositories,
            policies,
            backups,
            restores,
            drills,
            drill_schedules,
            failovers,
            tenants,
            not_built,
            lease_watch
        )
    };
    tokio::select! {
        _ = controllers => {}
        () = bound => {}
    }
}
