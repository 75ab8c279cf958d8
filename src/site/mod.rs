//! How a site is driven. A site is a place tenants run: a Kubernetes cluster at
//! a cloud provider in production ([`kubernetes`]: what a tenant's stack is
//! there, [`cluster`]: putting them into its cluster), a set of local processes in the lab ([`local`];
//! [`network_cut`]: such a site in a network namespace of its own, whose link can be cut).

pub mod agent_env;
pub mod cloud_native_pg;
pub mod cluster;
pub mod kubernetes;
pub mod local;
pub mod local_failover;
pub mod network_cut;
pub mod restore_copy;
