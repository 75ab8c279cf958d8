//! Leader election through a coordination.k8s.io Lease: one operator replica
//! per site reconciles; the others wait and take over when the leader's lease
//! runs out. The decision is pure ([`decide`]); [`Elector`] does the API calls,
//! with the resourceVersion as the guard, so two replicas cannot both win a race.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// What a replica does with the lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, naming us.
    Create,
    /// It names us: renew it.
    Renew,
    /// It names another whose renewal is older than its duration: take it.
    TakeOver,
    /// Another holds it: wait.
    Wait,
}

/// The decision for `identity` at `now`, given the lease as read.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    if spec.holder_identity.as_deref() == Some(identity) {
        return Decision::Renew;
    }
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return Decision::TakeOver;
    };
    let expires = renewed.0.checked_add(jiff_seconds(seconds)).unwrap_or(Timestamp::MAX);
    if spec.holder_identity.is_none() || now >= expires { Decision::TakeOver } else { Decision::Wait }
}

fn jiff_seconds(seconds: i32) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds))
}

/// Holds or waits for the lease `name` in `namespace`.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    /// One round: reads the lease and creates, renews or takes it if it may.
    /// True when this replica holds it afterwards; a lost race is false, not an error.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        let spec = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let result = match (decision, current) {
            (Decision::Wait, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(spec(None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, None) => return Ok(false),
            (decision, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(decision == Decision::TakeOver);
                let acquired = if decision == Decision::Renew { old.acquire_time } else { None };
                lease.spec = Some(spec(acquired, transitions));
                // NB: replace carries the resourceVersion read: a concurrent writer makes it 409.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How often to call [`try_lead`](Self::try_lead): a third of the lease.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// The lease's duration: a leader that could not renew for this long must stop.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_at: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).unwrap())),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_replica_creates_renews_waits_and_takes_over_an_expired_lease() {
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(decide(None, "a", at(0)), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), 0, 15)), "a", at(100)), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("b"), 0, 15)), "a", at(14)), Decision::Wait);
        assert_eq!(decide(Some(&lease(Some("b"), 0, 15)), "a", at(15)), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(None, 0, 15)), "a", at(1)), Decision::TakeOver);
        assert_eq!(decide(Some(&LeaseSpec::default()), "a", at(1)), Decision::TakeOver);
    }
}
