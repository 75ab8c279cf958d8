//! Fencing: whether this process may write (issue invoices, record what SdI
//! says) and transmit, and under which epoch.
//!
//! Every write and every transmission holds a [`Permit`] while it runs.
//! [`Fencing::fence`] waits for the permits out to come back, so when it
//! returns nothing is in flight and nothing new starts: the failover can then
//! activate another site without two sites ever transmitting at once. SdI
//! enforces the same from its side: it refuses an epoch older than the highest
//! it has seen (and the sender then fences this process).

use tokio::sync::{RwLock, RwLockReadGuard, watch};

/// What the fencing state is at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceState {
    pub active: bool,
    pub epoch: u64,
}

/// Why a write or an activation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("this site is fenced (epoch {epoch}): it issues nothing and sends nothing until activated")]
    Fenced { epoch: u64 },

    #[error("epoch {requested} is older than the current epoch {current}; activate with {current} or higher")]
    StaleEpoch { requested: u64, current: u64 },
}

/// The new state after `POST /v1/admin/activate {"epoch": requested}`: an epoch
/// never goes back.
pub fn activation(current: FenceState, requested: u64) -> Result<FenceState, Error> {
    if requested < current.epoch {
        return Err(Error::StaleEpoch { requested, current: current.epoch });
    }
    Ok(FenceState { active: true, epoch: requested })
}

/// The fencing state of this process.
#[derive(Debug)]
pub struct Fencing {
    /// Held shared by each write or transmission, exclusively to change state.
    lock: RwLock<FenceState>,
    /// A copy for readers that must not wait for in-flight work (`/healthz`),
    /// and to wake the sender.
    published: watch::Sender<FenceState>,
}

/// Leave to write or transmit under [`epoch`](Permit::epoch) while it is held.
#[derive(Debug)]
pub struct Permit<'a> {
    guard: RwLockReadGuard<'a, FenceState>,
}

impl Permit<'_> {
    pub fn epoch(&self) -> u64 {
        self.guard.epoch
    }
}

impl Fencing {
    pub fn new(epoch: u64, active: bool) -> Self {
        let state = FenceState { active, epoch };
        Self { lock: RwLock::new(state), published: watch::Sender::new(state) }
    }

    /// The state now, without waiting for in-flight work.
    pub fn state(&self) -> FenceState {
        *self.published.borrow()
    }

    /// A receiver that sees every change of state.
    pub fn subscribe(&self) -> watch::Receiver<FenceState> {
        self.published.subscribe()
    }

    /// Leave to write or transmit, unless fenced.
    pub async fn permit(&self) -> Result<Permit<'_>, Error> {
        let guard = self.lock.read().await;
        if !guard.active {
            return Err(Error::Fenced { epoch: guard.epoch });
        }
        Ok(Permit { guard })
    }

    /// Fences: waits until no permit is out, then refuses new ones.
    pub async fn fence(&self) -> FenceState {
        let mut state = self.lock.write().await;
        state.active = false;
        self.published.send_replace(*state);
        *state
    }

    /// Fences only if the epoch is still `epoch` (SdI said another site took
    /// over from it); a later activation stays.
    pub async fn fence_epoch(&self, epoch: u64) -> Option<FenceState> {
        let mut state = self.lock.write().await;
        if state.epoch > epoch {
            return None;
        }
        state.active = false;
        self.published.send_replace(*state);
        Some(*state)
    }

    /// Activates under `epoch`, which must not be older than the current one.
    pub async fn activate(&self, epoch: u64) -> Result<FenceState, Error> {
        let mut state = self.lock.write().await;
        *state = activation(*state, epoch)?;
        self.published.send_replace(*state);
        Ok(*state)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn an_epoch_never_goes_back() {
        let fenced = FenceState { active: false, epoch: 3 };
        assert_eq!(activation(fenced, 3), Ok(FenceState { active: true, epoch: 3 }));
        assert_eq!(activation(fenced, 7), Ok(FenceState { active: true, epoch: 7 }));
        assert_eq!(activation(fenced, 2), Err(Error::StaleEpoch { requested: 2, current: 3 }));
    }

    #[tokio::test]
    async fn fencing_waits_for_work_in_flight_and_then_refuses_permits() {
        let fencing = Arc::new(Fencing::new(1, true));
        let permit = fencing.permit().await.unwrap();
        assert_eq!(permit.epoch(), 1);
        let fence = tokio::spawn({
            let fencing = fencing.clone();
            async move { fencing.fence().await }
        });
        // On this single-threaded runtime the fence task runs at each yield, until it waits for the permit.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!fence.is_finished(), "fence returned with a permit out");
        assert!(fencing.state().active);
        drop(permit);
        assert_eq!(fence.await.unwrap(), FenceState { active: false, epoch: 1 });
        assert_eq!(fencing.permit().await.unwrap_err(), Error::Fenced { epoch: 1 });
        assert_eq!(fencing.activate(2).await.unwrap(), FenceState { active: true, epoch: 2 });
        assert_eq!(fencing.fence_epoch(1).await, None, "a refusal of an older epoch leaves the newer one active");
        assert!(fencing.state().active);
        assert_eq!(fencing.fence_epoch(2).await, Some(FenceState { active: false, epoch: 2 }));
    }
}
