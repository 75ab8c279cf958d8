//! The kinds without a controller of their own (Site; FailoverPlan at an
//! operator that runs at no Site) are not left silent: each object gets, once, a
//! False `Ready` condition with reason `NotBuilt` saying what does not happen
//! and what to use meanwhile. A FailoverPlan asking for automatic failover
//! that nothing carries out must say so where an SRE looks.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::{Context, FIELD_MANAGER};
use crate::api::condition::{self, Observed};

pub const CONTROLLER: &str = "notbuilt";
pub const NOT_BUILT: &str = "NotBuilt";

/// A kind not reconciled yet, and what its objects are told.
pub struct Kind {
    pub resource: ApiResource,
    pub message: &'static str,
}

/// The kinds, with their messages, for an operator at `site` (`--site`), or at none.
pub fn kinds(site: Option<&str>) -> Vec<Kind> {
    use crate::api::{plan::FailoverPlan, site::Site};
    let mut kinds = vec![Kind {
        resource: ApiResource::erase::<Site>(&()),
        message: "Sites have no controller of their own: nothing writes their status; with `fenice operator --site`, \
                  the standby of each Automatic FailoverPlan probes its source's health endpoints (docs/failover.md)",
    }];
    if site.is_none() {
        kinds.push(Kind {
            resource: ApiResource::erase::<FailoverPlan>(&()),
            message: "this operator runs at no Site (`fenice operator --site`): it keeps no witness lease and \
                      carries out no Failover, so no automatic failover happens from this plan here (its scheduled \
                      drills do run); run each site's operator with --site (docs/failover.md)",
        });
    }
    kinds
}

#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: writing its status")]
pub struct Error {
    kind: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// The conditions that say it, or `None` when the object says it already.
pub fn told(
    conditions: &[Condition],
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Vec<Condition>> {
    if conditions.iter().any(|c| c.reason == NOT_BUILT && c.message == message) {
        return None;
    }
    let observed =
        Observed { type_: condition::types::READY, status: false, reason: NOT_BUILT, message: message.to_owned() };
    Some(condition::set(conditions, observed, generation, now))
}

pub async fn reconcile(object: Arc<DynamicObject>, ctx: Arc<(Arc<Context>, Arc<Kind>)>) -> Result<Action, Error> {
    let (ctx, kind) = (&ctx.0, &ctx.1);
    super::measured(ctx, CONTROLLER, async {
        let conditions: Vec<Condition> =
            serde_json::from_value(object.data["status"]["conditions"].clone()).unwrap_or_default();
        let Some(conditions) = told(&conditions, kind.message, object.meta().generation, Timestamp::now()) else {
            return Ok(Action::await_change());
        };
        let api: Api<DynamicObject> = match object.namespace() {
            Some(namespace) => Api::namespaced_with(ctx.client.clone(), &namespace, &kind.resource),
            None => Api::all_with(ctx.client.clone(), &kind.resource),
        };
        let patch = serde_json::json!({
            "apiVersion": kind.resource.api_version, "kind": kind.resource.kind,
            "status": {"conditions": conditions},
        });
        api.patch_status(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error { kind: kind.resource.kind.clone(), name: object.name_any(), source })?;
        Ok(Action::await_change())
    })
    .await
}

pub fn error_policy(object: Arc<DynamicObject>, error: &Error, _ctx: Arc<(Arc<Context>, Arc<Kind>)>) -> Action {
    super::retry_after_error(&object.name_any(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_object_is_told_once() {
        let now = Timestamp::UNIX_EPOCH;
        let conditions = told(&[], "not yet", Some(1), now).unwrap();
        assert_eq!((conditions[0].status.as_str(), conditions[0].reason.as_str()), ("False", NOT_BUILT));
        assert_eq!(told(&conditions, "not yet", Some(1), now), None);
        assert!(told(&conditions, "a newer message", Some(1), now).is_some());
    }

    #[test]
    fn every_kind_without_a_controller_has_a_message_saying_what_to_use() {
        let kinds = kinds(None);
        let names: Vec<&str> = kinds.iter().map(|k| k.resource.kind.as_str()).collect();
        assert_eq!(names, ["Site", "FailoverPlan"]);
        assert!(kinds.iter().all(|k| k.message.contains("fenice ")));
        let at_a_site: Vec<String> = super::kinds(Some("rome")).iter().map(|k| k.resource.kind.clone()).collect();
        assert_eq!(at_a_site, ["Site"], "a site's operator carries out its plans");
    }
}
