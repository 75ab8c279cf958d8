//! A FailoverPlan's scheduled drills: at each time `spec.drills.schedule`
//! names (in its time zone), one Drill of the plan's sample, which the Drill
//! controller runs. As with backups, a controller that was away creates the
//! latest missed drill once, not every one it missed; the Drill's name carries
//! the scheduled time, so a retry creates nothing twice. The plan's
//! `lastDrillTime` and `nextDrillTime` are written under a field manager of
//! their own: the rest of the plan's status belongs to others.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::schedule::{self, Schedule, wait_until};
use super::{Context, ObjectError, about};
use crate::api::drill::{Drill, DrillSpec};
use crate::api::plan::FailoverPlan;

pub const CONTROLLER: &str = "drillschedule";
const MANAGER: &str = "fenice-drill-schedule";

pub type Error = ObjectError;

/// The Drill's name for the plan's run at `at`: `<plan>-<yyyymmdd-hhmm>` (UTC).
pub fn drill_name(plan: &str, at: Timestamp) -> String {
    schedule::run_name(plan, at)
}

pub async fn reconcile(plan: Arc<FailoverPlan>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::measured(&ctx, CONTROLLER, reconcile_inner(&plan, &ctx)).await
}

async fn reconcile_inner(plan: &FailoverPlan, ctx: &Context) -> Result<Action, Error> {
    let Some(drills) = &plan.spec.drills else { return Ok(Action::await_change()) };
    let schedule = match Schedule::parse(&drills.schedule, &drills.time_zone) {
        Ok(parsed) => parsed,
        Err(e) => {
            let note = format!("spec.drills: {e}: no drill is scheduled until it is fixed");
            super::publish(ctx, plan, EventType::Warning, "InvalidDrillSchedule", "Schedule", note).await;
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    let last = plan.status.as_ref().and_then(|s| s.last_drill_time.as_ref()).map(|t| t.0);
    let due = schedule.due(last, plan.metadata.creation_timestamp.as_ref().map(|t| t.0), now);
    if let Some(run) = due.run {
        let mut drill = Drill::new(
            &drill_name(&plan.name_any(), run),
            DrillSpec {
                plan: plan.name_any(),
                sample: drills.sample.clone(),
                sdi_test_endpoint: drills.sdi_test_endpoint.clone(),
                keep_for: None,
                namespace: None,
            },
        );
        drill.metadata.owner_references = Some(vec![super::owner(plan)]);
        let created = match Api::<Drill>::all(ctx.client.clone()).create(&PostParams::default(), &drill).await {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 409 => false,
            Err(e) => return Err(about(plan, "creating its scheduled Drill")(e)),
        };
        if created {
            let note = format!("Drill {} for the scheduled time {run}", drill.name_any());
            super::publish(ctx, plan, EventType::Normal, "DrillCreated", "Schedule", note).await;
        }
    }
    let mut status = serde_json::Map::new();
    if let Some(last) = due.run.or(last) {
        status.insert("lastDrillTime".into(), serde_json::json!(Time(last)));
    }
    if let Some(next) = due.next {
        status.insert("nextDrillTime".into(), serde_json::json!(Time(next)));
    }
    let api: Api<FailoverPlan> = Api::all(ctx.client.clone());
    super::apply_status_as(&api, plan, &status, MANAGER).await.map_err(about(plan, "writing its drill times"))?;
    Ok(Action::requeue(wait_until(due.next, now)))
}

pub fn error_policy(plan: Arc<FailoverPlan>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(plan = plan.name_any(), error = %crate::error_chain::error_chain(error), "scheduling drills");
    Action::requeue(super::RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_drill_is_named_after_its_plan_and_time() {
        let at: Timestamp = "2026-11-22T02:00:00Z".parse().unwrap();
        assert_eq!(drill_name("westpole-to-azure", at), "westpole-to-azure-20261122-0200");
    }
}
