//! The BackupRepository controller: probes each repository's store. It writes a
//! small probe object and reads its retention back from the store itself, so
//! `immutabilityInForce` says what the store enforces, not what the spec asks.
//! Decisions ([`probe_due`], [`status_after`], [`events_after`]) are pure; the
//! store and kube I/O is in [`reconcile`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};

use super::{Context, secrets};
use crate::api::common::{StoreLocation, StoreType};
use crate::api::condition::{self, Observed};
use crate::api::repository::{BackupRepository, BackupRepositorySpec, BackupRepositoryStatus};
use crate::error_chain::error_chain;
use crate::store::azure::{AzureAuth, AzureConfig, AzureStore, SasUrl};
use crate::store::fs::FsStore;
use crate::store::open::AZURE_SAS_ENV;
use crate::store::s3::{S3Config, S3Store, StaticCredentials};
use crate::store::{ObjectStore, PutCondition, Retention};
use zeroize::Zeroizing;

pub const CONTROLLER: &str = "backuprepository";
/// Probe objects are locked this long: enough to read the lock back, no more.
const PROBE_RETENTION: Duration = Duration::from_secs(24 * 3600);
const PROBE_PREFIX: &str = "fenice-probes/";

pub mod types {
    pub const REACHABLE: &str = "Reachable";
    pub const IMMUTABILITY: &str = "ImmutabilityInForce";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `owner`: the object that names the store, e.g. `BackupRepository offsite`.
    #[error("{owner}: {message}")]
    Spec { owner: String, message: String },

    #[error("{owner}: its credentials")]
    Secret {
        owner: String,
        #[source]
        source: Box<secrets::Error>,
    },

    #[error("BackupRepository {name}: writing its status")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a probe of the store found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `Err` says why the store did not answer.
    pub reachable: Result<(), String>,
    pub immutability: Immutability,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Immutability {
    /// The store reported retention on the probe object until then.
    InForce { until: Timestamp },
    /// Asked for, and not in force: why.
    Off { why: String },
    /// The spec does not ask for it.
    NotRequested,
}

/// When to probe next: `None` to probe now (never probed, spec changed since,
/// or the interval passed), otherwise how long to wait.
pub fn probe_due(repo: &BackupRepository, now: Timestamp, interval: Duration) -> Option<Duration> {
    let status = repo.status.as_ref()?;
    if status.observed_generation != repo.metadata.generation {
        return None;
    }
    let last = status.last_probe_time.as_ref()?.0;
    let since = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
    interval.checked_sub(since).filter(|left| !left.is_zero())
}

/// The status after `probe` at `now`.
pub fn status_after(repo: &BackupRepository, probe: &Probe, now: Timestamp) -> BackupRepositoryStatus {
    let old = repo.status.clone().unwrap_or_default();
    let generation = repo.metadata.generation;
    let reachable = match &probe.reachable {
        Ok(()) => Observed {
            type_: types::REACHABLE,
            status: true,
            reason: "Probed",
            message: "a probe object was written and read back".into(),
        },
        Err(why) => Observed { type_: types::REACHABLE, status: false, reason: "Unreachable", message: why.clone() },
    };
    let immutable = match &probe.immutability {
        Immutability::InForce { until } => Observed {
            type_: types::IMMUTABILITY,
            status: true,
            reason: "RetentionReadBack",
            message: format!("the store holds the probe object under retention until {until}"),
        },
        Immutability::Off { why } => {
            Observed { type_: types::IMMUTABILITY, status: false, reason: "RetentionNotInForce", message: why.clone() }
        }
        Immutability::NotRequested => Observed {
            type_: types::IMMUTABILITY,
            status: false,
            reason: "NotRequested",
            message: "spec.immutability.enabled is false".into(),
        },
    };
    let ready_ok = probe.reachable.is_ok() && !matches!(probe.immutability, Immutability::Off { .. });
    let ready = Observed {
        type_: condition::types::READY,
        status: ready_ok,
        reason: if ready_ok { "Probed" } else { "ProbeFailed" },
        message: if ready_ok {
            "the store answers and enforces what the spec asks".into()
        } else {
            "see the Reachable and ImmutabilityInForce conditions".into()
        },
    };
    let mut conditions = old.conditions.clone();
    for observed in [reachable, immutable, ready] {
        conditions = condition::set(&conditions, observed, generation, now);
    }
    BackupRepositoryStatus {
        reachable: Some(probe.reachable.is_ok()),
        immutability_in_force: Some(matches!(probe.immutability, Immutability::InForce { .. })),
        last_probe_time: Some(Time(now)),
        observed_generation: generation,
        conditions,
        ..old
    }
}

/// The Events a probe's outcome calls for: a Warning for each problem, every
/// time; a Normal one when the repository becomes ready.
pub fn events_after(old: Option<&BackupRepositoryStatus>, probe: &Probe) -> Vec<Event> {
    let mut events = Vec::new();
    let warn = |reason: &str, note: String| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Probe".into(),
        secondary: None,
    };
    if let Err(why) = &probe.reachable {
        events.push(warn("Unreachable", why.clone()));
    }
    if let Immutability::Off { why } = &probe.immutability {
        events.push(warn("ImmutabilityOff", why.clone()));
    }
    let was_ready = old.is_some_and(|s| condition::is_true(&s.conditions, condition::types::READY));
    if events.is_empty() && !was_ready {
        let note = match &probe.immutability {
            Immutability::InForce { until } => {
                format!("reachable; the store enforces retention (probe locked until {until})")
            }
            _ => "reachable; no immutability requested".into(),
        };
        events.push(Event {
            type_: EventType::Normal,
            reason: "Ready".into(),
            note: Some(note),
            action: "Probe".into(),
            secondary: None,
        });
    }
    events
}

/// The secret values the repository's store is reached with: every key of
/// its S3 credentials Secret, or its Azure SAS URL under [`AZURE_SAS_ENV`];
/// nothing for a store reached by the workload's own identity.
pub async fn store_secrets(
    ctx: &Context,
    name: &str,
    spec: &BackupRepositorySpec,
) -> Result<BTreeMap<String, Zeroizing<String>>, Error> {
    location_secrets(ctx, &format!("BackupRepository {name}"), &spec.storage).await
}

/// The secret values `storage` is reached with; errors name `owner`.
async fn location_secrets(
    ctx: &Context,
    owner: &str,
    storage: &StoreLocation,
) -> Result<BTreeMap<String, Zeroizing<String>>, Error> {
    let secret = |source| Error::Secret { owner: owner.to_owned(), source: Box::new(source) };
    let mut values = BTreeMap::new();
    if let Some(reference) = storage.s3.as_ref().and_then(|s3| s3.credentials_secret_ref.as_ref()) {
        values = secrets::all(&ctx.client, &ctx.namespace, reference).await.map_err(secret)?;
    }
    if let Some(reference) = storage.azure_blob.as_ref().and_then(|az| az.sas_url_secret_ref.as_ref()) {
        let sas = secrets::key(&ctx.client, &ctx.namespace, reference).await.map_err(secret)?;
        values.insert(AZURE_SAS_ENV.to_owned(), sas);
    }
    Ok(values)
}

/// Opens the repository's store as the spec and its Secrets say, locking what
/// it writes for `immutability`.
pub async fn open_store(
    ctx: &Context,
    name: &str,
    spec: &BackupRepositorySpec,
    immutability: Option<Duration>,
) -> Result<Arc<dyn ObjectStore>, Error> {
    open_location(ctx, &format!("BackupRepository {name}"), &spec.storage, immutability).await
}

/// Opens the store `storage` names, with its Secrets; errors name `owner`
/// (`BackupRepository offsite`, `Site witness`).
pub async fn open_location(
    ctx: &Context,
    owner: &str,
    storage: &StoreLocation,
    immutability: Option<Duration>,
) -> Result<Arc<dyn ObjectStore>, Error> {
    let invalid = |message: String| Error::Spec { owner: owner.to_owned(), message };
    let secret = |source| Error::Secret { owner: owner.to_owned(), source: Box::new(source) };
    let mut values = location_secrets(ctx, owner, storage).await?;
    let store: Arc<dyn ObjectStore> = match storage.type_ {
        StoreType::S3 => {
            let s3 = storage.s3.as_ref().ok_or_else(|| invalid("storage.s3 is missing".into()))?;
            let credentials = match &s3.credentials_secret_ref {
                Some(reference) => {
                    let get = |key| secrets::required(&values, &ctx.namespace, reference, key).map_err(secret);
                    Some(StaticCredentials {
                        access_key_id: get("AWS_ACCESS_KEY_ID")?,
                        secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
                        session_token: values.get("AWS_SESSION_TOKEN").map(|t| t.to_string()),
                    })
                }
                None => None,
            };
            let config = S3Config {
                prefix: s3.prefix.clone().unwrap_or_default(),
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                force_path_style: s3.force_path_style,
                immutability,
                credentials,
                retry: ctx.store_retry.clone(),
                ..S3Config::new(s3.bucket.clone())
            };
            Arc::new(S3Store::connect(config).await.map_err(|e| invalid(error_chain(&e)))?)
        }
        StoreType::AzureBlob => {
            let az = storage.azure_blob.as_ref().ok_or_else(|| invalid("storage.azureBlob is missing".into()))?;
            let auth = match values.remove(AZURE_SAS_ENV) {
                Some(sas) => AzureAuth::SasUrl(SasUrl::new(sas.to_string())),
                None => AzureAuth::EntraId,
            };
            let config = AzureConfig {
                endpoint: az
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", az.account)),
                account: az.account.clone(),
                container: az.container.clone(),
                prefix: az.prefix.clone().unwrap_or_default(),
                auth,
                immutability,
                retry: ctx.store_retry.clone(),
            };
            Arc::new(AzureStore::connect(config).map_err(|e| invalid(error_chain(&e)))?)
        }
        StoreType::Filesystem => {
            let fs = storage.filesystem.as_ref().ok_or_else(|| invalid("storage.filesystem is missing".into()))?;
            Arc::new(FsStore::open(&fs.path).map_err(|e| invalid(error_chain(&e)))?)
        }
    };
    Ok(store)
}

/// Writes a probe object and reads its retention back.
pub async fn probe(store: &dyn ObjectStore, immutable: bool, now: SystemTime) -> Probe {
    let key = format!("{PROBE_PREFIX}{}", crate::repo::id::hex(&crate::repo::crypto::random::<16>()));
    let written = store.put(&key, Bytes::from_static(b"fenice probe\n"), PutCondition::IfAbsent).await;
    if let Err(e) = written {
        let why = error_chain(&e);
        let immutability = if immutable {
            Immutability::Off { why: format!("not checked: {why}") }
        } else {
            Immutability::NotRequested
        };
        return Probe { reachable: Err(why), immutability };
    }
    let immutability = if !immutable {
        // NB: best effort; an unlocked probe object is only litter.
        let _ = store.delete(&key).await;
        Immutability::NotRequested
    } else {
        match store.retention(&key).await {
            Ok(Retention::Until(until)) if until > now => match Timestamp::try_from(until) {
                Ok(until) => Immutability::InForce { until },
                Err(_) => Immutability::Off { why: "the store reported a retention date out of range".into() },
            },
            Ok(Retention::Until(_) | Retention::None) => Immutability::Off {
                why: "the store holds the probe object without retention in force: Object Lock / immutability is off"
                    .into(),
            },
            Ok(Retention::Unsupported { why }) => Immutability::Off { why },
            Err(e) => Immutability::Off { why: format!("reading the probe object's retention: {}", error_chain(&e)) },
        }
    };
    Probe { reachable: Ok(()), immutability }
}

/// Opens the store as the spec says and probes it, with locked writes when `immutable`.
async fn probe_spec(ctx: &Context, name: &str, spec: &BackupRepositorySpec, immutable: bool) -> Probe {
    match open_store(ctx, name, spec, immutable.then_some(PROBE_RETENTION)).await {
        Ok(store) => probe(store.as_ref(), immutable, SystemTime::now()).await,
        Err(e) => {
            let why = error_chain(&e);
            let immutability =
                if immutable { Immutability::Off { why: "not checked".into() } } else { Immutability::NotRequested };
            Probe { reachable: Err(why), immutability }
        }
    }
}

/// Probes the repository when due and writes what it found.
pub async fn reconcile(repo: Arc<BackupRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&repo, &ctx)).await
}

async fn reconcile_inner(repo: &BackupRepository, ctx: &Context) -> Result<Action, Error> {
    let name = repo.name_any();
    if repo.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_repository(&name);
        return Ok(Action::await_change());
    }
    if let Some(wait) = probe_due(repo, Timestamp::now(), ctx.probe_interval) {
        return Ok(Action::requeue(wait));
    }
    let immutable = repo.spec.immutability.enabled;
    let mut probed = probe_spec(ctx, &name, &repo.spec, immutable).await;
    // NB: a store that refuses locked writes may still answer: then it is
    // reachable, and what it refused is why immutability is off.
    if let (true, Err(why)) = (immutable, &probed.reachable)
        && probe_spec(ctx, &name, &repo.spec, false).await.reachable.is_ok()
    {
        probed = Probe { reachable: Ok(()), immutability: Immutability::Off { why: why.clone() } };
    }
    let status = status_after(repo, &probed, Timestamp::now());
    ctx.metrics.repository(
        &name,
        probed.reachable.is_ok(),
        matches!(probed.immutability, Immutability::InForce { .. }),
    );
    let api: Api<BackupRepository> = Api::all(ctx.client.clone());
    super::apply_status(&api, repo, &status).await.map_err(|source| Error::Status { name: name.clone(), source })?;
    for event in events_after(repo.status.as_ref(), &probed) {
        let note = event.note.unwrap_or_default();
        super::publish(ctx, repo, event.type_, &event.reason, &event.action, note).await;
    }
    Ok(Action::requeue(ctx.probe_interval))
}

pub fn error_policy(repo: Arc<BackupRepository>, error: &Error, _ctx: Arc<Context>) -> Action {
    super::retry_after_error(&repo.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(generation: i64, status: Option<BackupRepositoryStatus>) -> BackupRepository {
        let mut repo: BackupRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "ovh-milan", "generation": generation},
            "spec": {"provider": "Ovhcloud", "storage": {"type": "S3", "s3": {"bucket": "tenant-backups"}},
                     "immutability": {"enabled": true, "retention": "30d"},
                     "passwordSecretRef": {"name": "repo-ovh", "key": "password"}},
        }))
        .unwrap();
        repo.status = status;
        repo
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_probe_is_due_when_never_done_after_a_spec_change_and_after_the_interval() {
        let every = Duration::from_secs(300);
        assert_eq!(probe_due(&repo(1, None), at(0), every), None);
        let probed = |generation| BackupRepositoryStatus {
            last_probe_time: Some(Time(at(1_000))),
            observed_generation: Some(generation),
            ..Default::default()
        };
        assert_eq!(probe_due(&repo(1, Some(probed(1))), at(1_100), every), Some(Duration::from_secs(200)));
        assert_eq!(probe_due(&repo(2, Some(probed(1))), at(1_100), every), None);
        assert_eq!(probe_due(&repo(1, Some(probed(1))), at(1_300), every), None);
    }

    #[test]
    fn the_status_says_what_the_store_enforces_and_keeps_transition_times() {
        let good = Probe { reachable: Ok(()), immutability: Immutability::InForce { until: at(90_000) } };
        let first = status_after(&repo(3, None), &good, at(1_000));
        assert_eq!(
            (first.reachable, first.immutability_in_force, first.observed_generation),
            (Some(true), Some(true), Some(3))
        );
        assert!(condition::is_true(&first.conditions, condition::types::READY));
        assert_eq!(events_after(None, &good).len(), 1, "ready: one Normal event");

        let off = Probe { reachable: Ok(()), immutability: Immutability::Off { why: "Object Lock is off".into() } };
        let later = status_after(&repo(3, Some(first.clone())), &off, at(2_000));
        assert_eq!(later.immutability_in_force, Some(false));
        assert!(!condition::is_true(&later.conditions, condition::types::READY));
        let reachable =
            |s: &BackupRepositoryStatus| s.conditions.iter().find(|c| c.type_ == types::REACHABLE).cloned().unwrap();
        assert_eq!(reachable(&later).last_transition_time, reachable(&first).last_transition_time);
        let events = events_after(Some(&first), &off);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].type_, events[0].reason.as_str()), (EventType::Warning, "ImmutabilityOff"));
        assert!(events_after(Some(&first), &good).is_empty(), "still ready: nothing to say");
    }

    #[tokio::test]
    async fn a_filesystem_store_is_reachable_and_says_why_it_cannot_be_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let plain = probe(&store, false, SystemTime::now()).await;
        assert_eq!(plain, Probe { reachable: Ok(()), immutability: Immutability::NotRequested });
        assert!(store.list(PROBE_PREFIX).await.unwrap().is_empty(), "an unlocked probe is cleaned up");
        let asked = probe(&store, true, SystemTime::now()).await;
        assert!(matches!(asked.immutability, Immutability::Off { .. }), "{asked:?}");
    }
}
