//! Leader election through a coordination.k8s.io Lease: one operator replica
//! per site reconciles; the others wait and take over when the leader's lease
//! runs out. The decision is pure ([`decide`]); [`Elector`] does the API calls,
//! with the resourceVersion as the guard, so two replicas cannot both win a race.
//!
//! A lease runs out on the clock of the replica that waits: once it has seen
//! the same version of the Lease for the lease's duration. The renewal time
//! written in it is the leader's clock, and comparing it with another node's
//! would let a replica whose clock is ahead take over from a leader still
//! renewing, and one whose clock is behind wait for hours after the leader died.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The decision for `identity`, given the lease as read and how long this
/// replica has seen that same version of it.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    if spec.holder_identity.as_deref() == Some(identity) {
        return Decision::Renew;
    }
    let (Some(_), Some(seconds)) = (spec.holder_identity.as_ref(), spec.lease_duration_seconds) else {
        return Decision::TakeOver;
    };
    let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    if unchanged_for >= duration { Decision::TakeOver } else { Decision::Wait }
}

/// Holds or waits for the lease `name` in `namespace`.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's resourceVersion as last read, and when this replica first read it.
    seen: Mutex<Option<(String, Instant)>>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            seen: Mutex::new(None),
        }
    }

    /// How long the Lease has stayed at `version`, as far as this replica saw.
    fn unchanged_for(&self, version: Option<&str>) -> Duration {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match (&*seen, version) {
            (Some((known, since)), Some(version)) if known == version => since.elapsed(),
            (_, version) => {
                *seen = version.map(|v| (v.to_owned(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One round: reads the lease and creates, renews or takes it if it may.
    /// True when this replica holds it afterwards; a lost race is false, not an error.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let unchanged_for = self.unchanged_for(current.as_ref().and_then(|l| l.metadata.resource_version.as_deref()));
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, unchanged_for);
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
        let secs = Duration::from_secs;
        assert_eq!(decide(None, "a", secs(0)), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), 0, 15)), "a", secs(100)), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("b"), 0, 15)), "a", secs(14)), Decision::Wait);
        assert_eq!(decide(Some(&lease(Some("b"), 0, 15)), "a", secs(15)), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(None, 0, 15)), "a", secs(0)), Decision::TakeOver);
        assert_eq!(decide(Some(&LeaseSpec::default()), "a", secs(0)), Decision::TakeOver);
    }

    /// The renewal time written in the Lease is another node's clock: a day
    /// old or a day ahead, it changes nothing; only how long this replica has
    /// seen the same Lease does.
    #[test]
    fn a_lease_runs_out_on_the_waiting_replicas_clock_not_on_the_time_written_in_it() {
        let secs = Duration::from_secs;
        let day = 86_400;
        let now = Timestamp::now().as_second();
        assert_eq!(decide(Some(&lease(Some("b"), now - day, 15)), "a", secs(1)), Decision::Wait);
        assert_eq!(decide(Some(&lease(Some("b"), now + day, 15)), "a", secs(15)), Decision::TakeOver);
    }
}
