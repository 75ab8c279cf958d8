//! The custom resources of Fenice: group `fenice.io`, version `v1alpha1`.
//!
//! Types only: the controllers that act on them live in `controller`, the logic
//! in `repo`, `failover` and `drill`.

// NB: clippy reads the repeated `type_ = "string"` of kube's `printcolumn(...)`
// derive arguments as duplicated attributes; they are not.
#![allow(clippy::duplicated_attributes)]

pub mod backup;
pub mod common;
pub mod condition;
pub mod drill;
pub mod failover;
pub mod plan;
pub mod policy;
pub mod repository;
pub mod restore;
pub mod site;
pub mod tenant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use backup::{Backup, BackupSpec, BackupStatus};
pub use drill::{Drill, DrillSpec, DrillStatus};
pub use failover::{Failover, FailoverSpec, FailoverStatus};
pub use plan::{FailoverPlan, FailoverPlanSpec, FailoverPlanStatus};
pub use policy::{BackupPolicy, BackupPolicySpec, BackupPolicyStatus};
pub use repository::{BackupRepository, BackupRepositorySpec, BackupRepositoryStatus};
pub use restore::{Restore, RestoreSpec, RestoreStatus};
pub use site::{Site, SiteSpec, SiteStatus};
pub use tenant::{InvoicingTenant, InvoicingTenantSpec, InvoicingTenantStatus};

/// The API group of every Fenice resource.
pub const GROUP: &str = "fenice.io";
/// The API version of every Fenice resource.
pub const VERSION: &str = "v1alpha1";

/// Every CustomResourceDefinition, in the order they are printed and applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Site::crd(),
        BackupRepository::crd(),
        BackupPolicy::crd(),
        InvoicingTenant::crd(),
        Backup::crd(),
        Restore::crd(),
        FailoverPlan::crd(),
        Failover::crd(),
        Drill::crd(),
    ]
}
