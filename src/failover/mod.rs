//! Failing a tenant set over from one site to another, without kube: health
//! detection, the witness lease and its fencing epoch, and the resumable failover
//! state machine with its waves. The controllers and the lab translate resources
//! and sites into calls of this logic; docs/failover.md is its specification.

pub mod capacity;
pub mod clock;
pub mod convert;
pub mod error;
pub mod executor;
pub mod fencing;
pub mod health;
pub mod lease;
pub mod lookout;
pub mod machine;
pub mod probing;
pub mod report;
pub mod sim;
pub mod waves;
pub mod witness;

pub use error::{Error, Result};
