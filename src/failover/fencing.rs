//! Carrying out the lease's decisions at a site: fence (stop app writes and the
//! SdI sender) and activate under an epoch. The lease logic only decides; what
//! fencing means at a site (the app's `/v1/admin/fence` and
//! `/v1/admin/activate {"epoch": N}`, or scaling a Deployment) is behind this trait.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

/// Where a site's lease agent sends its decisions.
#[async_trait]
pub trait FenceControl: Send + Sync {
    /// Stops every write and SdI transmission. Returns only when nothing is in
    /// flight any more, and within the timing's `max_fence_time`: an
    /// implementation that cannot reach its app must make sure otherwise (stop
    /// the process) before it returns.
    async fn fence(&self);

    /// Lets the site write and transmit under `epoch`. The app and SdI refuse an
    /// epoch lower than one they have seen.
    async fn activate(&self, epoch: u64);
}

/// One decision carried out, as [`FenceLog`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceEvent {
    Fenced,
    Activated { epoch: u64 },
}

/// A [`FenceControl`] that only records, for the lab's dry runs and for tests.
#[derive(Debug, Default)]
pub struct FenceLog {
    events: Mutex<Vec<FenceEvent>>,
}

impl FenceLog {
    /// Everything recorded so far, oldest first.
    pub fn events(&self) -> Vec<FenceEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The epoch this site is active under, if the last decision activated it.
    pub fn active_epoch(&self) -> Option<u64> {
        match self.events.lock().unwrap_or_else(PoisonError::into_inner).last() {
            Some(FenceEvent::Activated { epoch }) => Some(*epoch),
            _ => None,
        }
    }
}

#[async_trait]
impl FenceControl for FenceLog {
    async fn fence(&self) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(FenceEvent::Fenced);
    }

    async fn activate(&self, epoch: u64) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(FenceEvent::Activated { epoch });
    }
}
