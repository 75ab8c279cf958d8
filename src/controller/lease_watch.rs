//! Reads each FailoverPlan's witness lease, as an observer: whether the
//! witness store answers, the lease's epoch, and how long since its holder
//! last renewed it, exported as metrics for the alerts
//! `FeniceWitnessLeaseNotRenewed` and `FeniceWitnessUnreachable`. It never
//! writes the lease: the sites' lease agents do.
//!
//! A renewal is seen as a new ETag (every write of the lease has new bytes,
//! see [`crate::failover::lease::LeaseRecord`]), so the age is measured on
//! this operator's clock from the poll that first saw the version: skew with
//! the store's clock does not matter, and a restarted operator starts the
//! age at its first poll (it under-states the age by at most one poll).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::Context;
use super::metrics::WitnessFigures;
use crate::api::plan::FailoverPlan;
use crate::api::site::{Site, SiteRole};
use crate::error_chain::error_chain;
use crate::failover::witness::Witness;
use crate::store::ObjectStore;

/// New plans are noticed within this, whatever their renew interval.
const NOTICE: Duration = Duration::from_secs(5);
/// No plan's lease is read more often than this.
const FLOOR: Duration = Duration::from_secs(1);

/// What one poll of a plan's lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The lease as it is: its ETag and epoch.
    Lease { etag: String, epoch: u64 },
    /// The store answered and holds no lease for the plan.
    NoLease,
    /// The store did not answer, or the witness is not usable; why.
    Unreachable(String),
}

/// The lease versions seen so far, by plan.
#[derive(Default)]
pub struct Watched {
    /// Per plan: the ETag last seen and the instant it was first seen.
    seen: HashMap<String, (String, Instant)>,
    /// Per plan: when its lease is read next.
    due: HashMap<String, Instant>,
    /// Per witness Site: its store, opened for the Site's resourceVersion.
    stores: HashMap<String, (Option<String>, Arc<dyn ObjectStore>)>,
    /// Per plan: why it was last unreachable, so that a cause is logged once.
    told: HashMap<String, String>,
}

impl Watched {
    /// The figures after `observed` at `now`, remembering when each version
    /// of the lease was first seen.
    pub fn figures(&mut self, plan: &FailoverPlan, observed: &Observed, now: Instant) -> WitnessFigures {
        let name = plan.name_any();
        let witness = plan.spec.witness.as_ref();
        let site = witness.map(|w| w.site.clone()).unwrap_or_default();
        let lease_duration = witness.map(|w| w.lease_duration.as_std()).unwrap_or_default();
        let mut figures = WitnessFigures { site, reachable: true, epoch: None, renewed_at: None, lease_duration };
        match observed {
            Observed::Lease { etag, epoch } => {
                let entry = self.seen.entry(name.clone()).or_insert_with(|| (etag.clone(), now));
                if entry.0 != *etag {
                    *entry = (etag.clone(), now);
                }
                figures.epoch = Some(*epoch);
                figures.renewed_at = Some(entry.1);
            }
            Observed::NoLease => {
                self.seen.remove(&name);
            }
            Observed::Unreachable(why) => {
                figures.reachable = false;
                // NB: the version last seen is kept: its age goes on rising while the store is away.
                figures.renewed_at = self.seen.get(&name).map(|(_, at)| *at);
                if self.told.get(&name) != Some(why) {
                    tracing::warn!(plan = %name, site = %figures.site, error = %why, "the witness lease cannot be read");
                    self.told.insert(name.clone(), why.clone());
                }
                return figures;
            }
        }
        if self.told.remove(&name).is_some() {
            tracing::info!(plan = %name, site = %figures.site, "the witness lease can be read again");
        }
        figures
    }

    /// Forgets plans that are gone or have no witness any more.
    fn retain(&mut self, plans: &[Arc<FailoverPlan>]) {
        let watched: Vec<String> = plans.iter().filter(|p| p.spec.witness.is_some()).map(|p| p.name_any()).collect();
        self.seen.retain(|plan, _| watched.contains(plan));
        self.due.retain(|plan, _| watched.contains(plan));
        self.told.retain(|plan, _| watched.contains(plan));
    }
}

/// Reads every plan's lease at its renew interval, until the watches stop.
pub async fn run(ctx: Arc<Context>) {
    let mut watched = Watched::default();
    loop {
        let Some(plans) = ctx.cache.plans.all().await else { return };
        watched.retain(&plans);
        let now = Instant::now();
        let mut figures = BTreeMap::new();
        for plan in plans.iter().filter(|p| p.spec.witness.is_some()) {
            let name = plan.name_any();
            let due = watched.due.get(&name).is_none_or(|at| *at <= now);
            if !due {
                if let Some(last) = ctx.metrics.witness_of(&name) {
                    figures.insert(name, last);
                }
                continue;
            }
            let observed = observe(&ctx, &mut watched, plan).await;
            figures.insert(name.clone(), watched.figures(plan, &observed, Instant::now()));
            let interval = plan.spec.witness.as_ref().map_or(NOTICE, |w| w.renew_interval.as_std()).max(FLOOR);
            watched.due.insert(name, now + interval);
        }
        ctx.metrics.witnesses(figures);
        let next = watched.due.values().min().copied().unwrap_or(now + NOTICE).min(now + NOTICE);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// One read of `plan`'s lease, bounded by its renew interval.
async fn observe(ctx: &Context, watched: &mut Watched, plan: &FailoverPlan) -> Observed {
    let Some(witness) = &plan.spec.witness else { return Observed::NoLease };
    let store = match store_of(ctx, watched, &witness.site).await {
        Ok(store) => store,
        Err(why) => return Observed::Unreachable(why),
    };
    let bound = witness.renew_interval.as_std().max(NOTICE);
    let lease = Witness::new(store, &plan.name_any());
    match tokio::time::timeout(bound, lease.read()).await {
        Ok(Ok(Some(version))) => Observed::Lease { etag: version.etag, epoch: version.record.epoch },
        Ok(Ok(None)) => Observed::NoLease,
        Ok(Err(e)) => {
            // NB: a store opened with credentials since rotated is opened again next time.
            watched.stores.remove(&witness.site);
            Observed::Unreachable(error_chain(&e))
        }
        Err(_) => {
            Observed::Unreachable(format!("Site {}: the witness store did not answer within {bound:?}", witness.site))
        }
    }
}

/// The witness Site's store, opened once per version of the Site.
async fn store_of(ctx: &Context, watched: &mut Watched, name: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let site: Arc<Site> = ctx.cache.sites.get(name).await.ok_or_else(|| format!("Site {name} does not exist"))?;
    if site.spec.role != SiteRole::Witness {
        return Err(format!("Site {name} is not a Witness site"));
    }
    let version = site.resource_version();
    if let Some((opened, store)) = watched.stores.get(name)
        && *opened == version
    {
        return Ok(store.clone());
    }
    let location = site.spec.witness_store.as_ref().ok_or_else(|| format!("Site {name} has no witnessStore"))?;
    let store = super::repository::open_location(ctx, &format!("Site {name}"), location, None)
        .await
        .map_err(|e| error_chain(&e))?;
    watched.stores.insert(name.to_owned(), (version, store.clone()));
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FailoverPlan {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "FailoverPlan", "metadata": {"name": "rome-to-milan"},
            "spec": {"sourceSite": "rome", "targetSite": "milan", "mode": "Automatic", "tenants": {},
                     "witness": {"site": "frankfurt", "leaseDuration": "30s", "renewInterval": "10s"}, "waves": []},
        }))
        .unwrap()
    }

    #[test]
    fn the_age_starts_at_each_new_version_and_goes_on_while_the_store_is_away() {
        let plan = plan();
        let mut watched = Watched::default();
        let start = Instant::now();
        let lease = |etag: &str, epoch| Observed::Lease { etag: etag.into(), epoch };
        let first = watched.figures(&plan, &lease("a", 3), start);
        assert_eq!((first.epoch, first.renewed_at, first.reachable), (Some(3), Some(start), true));
        assert_eq!((first.site.as_str(), first.lease_duration), ("frankfurt", Duration::from_secs(30)));
        let later = start + Duration::from_secs(10);
        assert_eq!(watched.figures(&plan, &lease("a", 3), later).renewed_at, Some(start), "not renewed");
        let renewed = later + Duration::from_secs(1);
        assert_eq!(watched.figures(&plan, &lease("b", 3), renewed).renewed_at, Some(renewed));
        let away = watched.figures(&plan, &Observed::Unreachable("refused".into()), renewed + Duration::from_secs(5));
        assert_eq!((away.reachable, away.renewed_at, away.epoch), (false, Some(renewed), None));
        let gone = watched.figures(&plan, &Observed::NoLease, renewed + Duration::from_secs(6));
        assert_eq!((gone.reachable, gone.renewed_at), (true, None));
    }
}
