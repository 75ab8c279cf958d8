//! How a site is driven. A site is a place tenants run: a Kubernetes cluster at
//! a cloud provider in production, a set of local processes in the lab
//! ([`local`]).

pub mod local;
pub mod local_failover;
