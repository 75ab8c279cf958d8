//! The operator: kube-runtime controllers sharing one [`Context`]. Each
//! controller's decisions are pure functions of (spec, status, what was
//! observed, now) with unit tests; the kube and store I/O around them is kept
//! apart. Built so far: BackupRepository (probes), BackupPolicy (the schedule
//! creates Backups) and Backup (says it is not run here yet); the other kinds
//! are not reconciled yet.

pub mod backup;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod repository;
pub mod schedule;
pub mod secrets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

use self::metrics::Metrics;
use crate::api::backup::Backup;
use crate::api::policy::BackupPolicy;
use crate::api::repository::BackupRepository;

/// The field manager of everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "fenice";

/// What every controller shares.
pub struct Context {
    pub client: Client,
    /// The operator's namespace: where cluster-scoped resources' Secrets are by default.
    pub namespace: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How often each repository is probed.
    pub probe_interval: Duration,
}

impl Context {
    pub fn new(client: Client, namespace: &str, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "fenice-operator".into(), instance };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: namespace.into(),
            metrics,
            probe_interval: Duration::from_secs(300),
        }
    }
}

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
    kube::runtime::controller::Action::requeue(Duration::from_secs(15))
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

/// Runs the controllers until `shutdown` completes; reconciles in progress finish first.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let repositories = Controller::new(Api::<BackupRepository>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(repository::reconcile, repository::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policies = Controller::new(Api::<BackupPolicy>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone())
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let backups = Controller::new(Api::<Backup>::all(ctx.client.clone()), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(backup::reconcile, backup::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    futures::join!(repositories, policies, backups);
}
