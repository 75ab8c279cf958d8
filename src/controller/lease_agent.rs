//! The witness lease at a Kubernetes site: `fenice operator --site S` runs
//! one lease agent ([`crate::failover::lease::LeaseAgent`], the same the lab
//! runs) for every FailoverPlan with a witness that names S as its source or
//! target. The source creates the lease; whichever site holds it renews it;
//! an agent that cannot renew in time fences its site. What each agent says
//! is applied to the plan's `status.sites` (one entry per site, each under
//! the field manager `fenice-lease-<site>`), and the tenant controller serves
//! the plan's tenants at a site only while its entry is Active
//! ([`super::tenant::fenced_by`]).
//!
//! An Automatic plan's standby probes the source (its Site's health
//! endpoints, and its renewals of the lease) by the plan's `detection`; once
//! the source is down and its lease expired, the agent takes the lease, and a
//! Failover `<plan>-e<epoch>` is created for the Failover controller to carry
//! out. Fencing is a status write that the tenant controller carries out by
//! stopping the apps; SdI refusing a sender of an older epoch is the second
//! line. An entry in `status.sites` is what that site's agent last said: a
//! site that died keeps its last entry, so the higher epoch tells the holder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::Context;
use crate::api::plan::{FailoverPlan, SiteStanding, Standing};
use crate::api::site::SiteRole;
use crate::error_chain::error_chain;
use crate::failover::clock::SystemClock;
use crate::failover::convert;
use crate::failover::fencing::FenceControl;
use crate::failover::health::DetectionRule;
use crate::failover::health::SiteHealth;
use crate::failover::lease::{LeaseAgent, LeaseView, Takeover, new_incarnation};
use crate::failover::probing::{self, Probes, Probing};
use crate::failover::witness::{LeaseCommand, LeaseStatus, RunningAgent, Witness};

/// How often the plans are looked at for agents to start or stop.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Tries of a standing write before it is given up (the next change writes again).
const WRITE_ATTEMPTS: u32 = 5;

/// What a failover at this site uses of a plan's running agent.
#[derive(Clone)]
pub struct Handle {
    pub status: watch::Receiver<LeaseStatus>,
    pub commands: mpsc::WeakSender<LeaseCommand>,
    pub timing: crate::failover::lease::LeaseTiming,
    /// The plan's lease in the witness store, whose store also keeps failovers' state.
    pub witness: Witness,
    pub store: Arc<dyn crate::store::ObjectStore>,
}

impl Handle {
    /// Sends the agent a command; false if it has ended.
    pub async fn command(&self, command: LeaseCommand) -> bool {
        match self.commands.upgrade() {
            Some(commands) => commands.send(command).await.is_ok(),
            None => false,
        }
    }
}

/// The agents running at this site, by plan.
#[derive(Clone, Default)]
pub struct Agents(Arc<std::sync::Mutex<HashMap<String, Handle>>>);

impl Agents {
    /// The agent of `plan`, if it runs.
    pub fn get(&self, plan: &str) -> Option<Handle> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(plan).cloned()
    }

    fn set(&self, running: &HashMap<String, Started>) {
        let handles = running.iter().map(|(plan, started)| (plan.clone(), started.handle.clone())).collect();
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = handles;
    }
}

/// The field manager of `site`'s entry in a plan's `status.sites`.
pub fn manager(site: &str) -> String {
    format!("fenice-lease-{site}")
}

/// A plan's agent as started: what it was started for (a hash of the plan's
/// sites, mode, witness and the witness Site's store), the agent, its
/// handle, and the probes of the source site that feed an Automatic plan's
/// standby its health (stopped with it).
struct Started {
    key: u64,
    _agent: RunningAgent,
    handle: Handle,
    _probing: Option<Probing>,
}

/// Runs the agents of `site`'s plans until the watches stop.
pub async fn run(ctx: Arc<Context>, site: String) {
    // Per plan: what its agent was started for, the agent, and its handle.
    let mut agents: HashMap<String, Started> = HashMap::new();
    loop {
        let Some(plans) = ctx.cache.plans.all().await else { return };
        let mut wanted = HashMap::new();
        for plan in plans.iter().filter(|p| p.spec.source_site == site || p.spec.target_site == site) {
            let Some(witness) = &plan.spec.witness else { continue };
            // NB: the witness Site's store, not its resourceVersion: a status
            // write must not restart an agent (a failover's takeover setting is the agent's).
            let witness_site = ctx.cache.sites.get(&witness.site).await;
            let store = witness_site.map(|s| serde_json::to_string(&s.spec.witness_store).unwrap_or_default());
            let witness = serde_json::to_string(witness).unwrap_or_default();
            let key = super::hash_of(&(&plan.spec.source_site, &plan.spec.target_site, plan.spec.mode, witness, store));
            wanted.insert(plan.name_any(), (key, plan.clone()));
        }
        agents.retain(|name, started| wanted.get(name).is_some_and(|(wanted, _)| *wanted == started.key));
        for (name, (key, plan)) in wanted {
            if agents.contains_key(&name) {
                continue;
            }
            match start(&ctx, &site, &plan, key).await {
                Ok(started) => {
                    tracing::info!(plan = %name, site = %site, "lease agent started");
                    agents.insert(name, started);
                }
                Err(why) => {
                    tracing::warn!(plan = %name, site = %site, error = %why, "no lease agent: the site stays fenced");
                    PlanStanding::of(&ctx, &plan, &site).fence().await;
                }
            }
        }
        ctx.lease_agents.set(&agents);
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Starts `site`'s agent for `plan`, fenced until it holds the lease.
async fn start(ctx: &Arc<Context>, site: &str, plan: &FailoverPlan, key: u64) -> Result<Started, String> {
    let name = plan.name_any();
    let witness = plan.spec.witness.as_ref().ok_or_else(|| format!("FailoverPlan {name} has no witness"))?;
    let timing = convert::lease_timing(witness).map_err(|e| format!("FailoverPlan {name}: {}", error_chain(&e)))?;
    let witness_site =
        ctx.cache.sites.get(&witness.site).await.ok_or_else(|| format!("Site {} does not exist", witness.site))?;
    if witness_site.spec.role != SiteRole::Witness {
        return Err(format!("Site {} is not a Witness site", witness.site));
    }
    let location =
        witness_site.spec.witness_store.as_ref().ok_or_else(|| format!("Site {} has no witnessStore", witness.site))?;
    let store = super::repository::open_location(ctx, &format!("Site {}", witness.site), location, None)
        .await
        .map_err(|e| error_chain(&e))?;
    let fence = Arc::new(PlanStanding::of(ctx, plan, site));
    // NB: a new agent starts fenced, and so must its site, until it holds the lease.
    fence.fence().await;
    let takeover = convert::takeover(plan.spec.mode, site, &plan.spec.target_site);
    let may_create = plan.spec.source_site == site;
    let every = timing.renew_interval;
    let used = plan.status.iter().flat_map(|s| &s.sites).filter_map(|e| e.epoch).max().unwrap_or(0);
    let agent = LeaseAgent::new(site, new_incarnation(), timing.clone(), takeover, may_create).with_epoch_floor(used);
    let witness = Witness::new(store.clone(), &name);
    let clock: Arc<dyn crate::failover::clock::Clock> = Arc::new(SystemClock::new());
    // An Automatic plan's standby probes the source; elsewhere the holder is never seen down.
    let probing = match takeover {
        Takeover::WhenHolderDown => probe_source(ctx, plan, &timing, witness.clone(), clock.clone()).await,
        _ => None,
    };
    let health = match &probing {
        Some(probing) => probing.health.clone(),
        None => watch::channel(SiteHealth::Up).1,
    };
    let running = RunningAgent::start(agent, witness.clone(), fence, clock, health.clone());
    let asker = Asked {
        witness: witness.clone(),
        site: site.to_owned(),
        sites: [plan.spec.source_site.clone(), plan.spec.target_site.clone()],
    };
    tokio::spawn(asker.honour(running.status.clone(), running.commander(), every));
    if takeover == Takeover::WhenHolderDown {
        let declare = Declare {
            ctx: ctx.clone(),
            plan: name.clone(),
            site: site.to_owned(),
            source: plan.spec.source_site.clone(),
        };
        tokio::spawn(declare.watch(running.status.clone(), health.clone()));
    }
    let handle = Handle { status: running.status.clone(), commands: running.commander(), timing, witness, store };
    Ok(Started { key, _agent: running, handle, _probing: probing })
}

/// Probes the plan's source Site from here: its health endpoints (one
/// vantage point) and its renewals of the lease (another), judged by the
/// plan's `detection`. `None`, with a warning, when the Site declares no
/// endpoints: then this site never takes the lease by itself.
async fn probe_source(
    ctx: &Context,
    plan: &FailoverPlan,
    timing: &crate::failover::lease::LeaseTiming,
    witness: Witness,
    clock: Arc<dyn crate::failover::clock::Clock>,
) -> Option<Probing> {
    let source = &plan.spec.source_site;
    let health = ctx.cache.sites.get(source).await.and_then(|s| s.spec.health.clone());
    let Some(health) = health else {
        tracing::warn!(plan = %plan.name_any(), source = %source,
            "the source Site declares no health endpoints: no automatic takeover from this site");
        return None;
    };
    let probes = Probes {
        urls: health.endpoints.iter().map(|e| e.url.clone()).collect(),
        http_vantage_points: 1,
        interval: health.interval.as_std(),
        timeout: health.timeout.as_std(),
        stale_after: timing.renew_interval * 2,
    };
    let rule = DetectionRule::from(&plan.spec.detection);
    Some(probing::spawn(source, probes, witness, rule, clock))
}

/// Creates the Failover of an Automatic plan once this site took the lease
/// by itself: `<plan>-e<epoch>`, unless a Failover of the plan is already
/// under way or ran under that epoch (a person's, which handed the lease over).
/// Its `lossTime` is when the probes first found the source down (the
/// detection), so RTO counts from there.
struct Declare {
    ctx: Arc<Context>,
    plan: String,
    site: String,
    source: String,
}

impl Declare {
    async fn watch(self, mut status: watch::Receiver<LeaseStatus>, mut health: watch::Receiver<SiteHealth>) {
        let mut declared = 0;
        let mut down_since = (*health.borrow() == SiteHealth::Down).then(jiff::Timestamp::now);
        let mut probing = true;
        loop {
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                changed = health.changed(), if probing => {
                    probing = changed.is_ok();
                    match *health.borrow() {
                        SiteHealth::Down => { down_since.get_or_insert_with(jiff::Timestamp::now); }
                        _ => down_since = None,
                    }
                    continue;
                }
            }
            let epoch = {
                let now = status.borrow();
                match (&now.standing, &now.view) {
                    (crate::failover::lease::Standing::Active { epoch, .. }, LeaseView::Held { holder, .. })
                        if *holder == self.site && *epoch > declared =>
                    {
                        *epoch
                    }
                    _ => continue,
                }
            };
            match self.declare(epoch, down_since).await {
                Ok(()) => declared = epoch,
                Err(e) => {
                    tracing::error!(plan = %self.plan, epoch, error = %error_chain(&e), "the automatic Failover could not be created")
                }
            }
        }
    }

    async fn declare(&self, epoch: u64, detected: Option<jiff::Timestamp>) -> Result<(), kube::Error> {
        use crate::api::failover::{Failover, FailoverPhase};
        let api: Api<Failover> = Api::all(self.ctx.client.clone());
        let existing = api.list(&Default::default()).await?;
        let covered = existing.items.iter().filter(|f| f.spec.plan == self.plan).any(|f| {
            let status = f.status.clone().unwrap_or_default();
            let ended =
                matches!(status.phase, FailoverPhase::Succeeded | FailoverPhase::Failed | FailoverPhase::Aborted);
            !ended || status.epoch == Some(epoch)
        });
        if covered {
            return Ok(());
        }
        let name = format!("{}-e{epoch}", self.plan.chars().take(50).collect::<String>());
        let failover: Failover = serde_json::from_value(serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Failover", "metadata": {"name": name},
            "spec": {"plan": self.plan, "mode": "Automatic", "lossTime": detected, "reason": format!(
                "{} was down from the plan's vantage points and its lease expired: {} took the lease in epoch {epoch}",
                self.source, self.site
            )},
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&kube::api::PostParams::default(), &failover).await {
            Ok(_) => {
                tracing::warn!(plan = %self.plan, failover = %name, epoch, "automatic failover declared");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What the hand-over requests of a plan's lease are read with.
struct Asked {
    witness: Witness,
    site: String,
    /// The plan's sites: the only ones the lease may be handed to.
    sites: [String; 2],
}

impl Asked {
    /// Every `every`, while this site holds the lease, reads the hand-over
    /// request of its epoch and, if a Failover asks for the plan's other site,
    /// has the agent hand over (fence, then write the lease naming that site
    /// with the next epoch). Ends with the agent.
    async fn honour(
        self,
        status: watch::Receiver<LeaseStatus>,
        commands: mpsc::WeakSender<LeaseCommand>,
        every: Duration,
    ) {
        let mut handed = None;
        loop {
            tokio::time::sleep(every).await;
            // NB: no strong sender is held across the read below: it would
            // keep a replaced agent's loop running for as long as the store hangs.
            if commands.upgrade().is_none() {
                return;
            }
            let held = match &status.borrow().view {
                LeaseView::Held { holder, epoch, .. } if *holder == self.site => Some(*epoch),
                _ => None,
            };
            let Some(epoch) = held.filter(|e| handed != Some(*e)) else { continue };
            let to = match self.witness.handover_request(epoch).await {
                Ok(Some(request)) if request.to != self.site && self.sites.contains(&request.to) => {
                    tracing::warn!(site = %self.site, to = %request.to, epoch, failover = %request.failover,
                        "handing the witness lease over, as a Failover asks");
                    request.to
                }
                Ok(Some(request)) => {
                    tracing::warn!(site = %self.site, to = %request.to, epoch, "a hand-over to a site outside the plan is ignored");
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(site = %self.site, epoch, error = %error_chain(&e), "hand-over requests cannot be read");
                    continue;
                }
            };
            let Some(commands) = commands.upgrade() else { return };
            if commands.send(LeaseCommand::HandOver { to }).await.is_err() {
                return;
            }
            handed = Some(epoch);
        }
    }
}

/// Carries an agent's decisions to its site's entry in the plan's status.
struct PlanStanding {
    ctx: Arc<Context>,
    plan: String,
    site: String,
    /// The epoch the site was last active under, kept in its Fenced entry too:
    /// the highest in the list is where a witness moved to a new store goes on.
    last_epoch: std::sync::Mutex<Option<u64>>,
}

impl PlanStanding {
    fn of(ctx: &Arc<Context>, plan: &FailoverPlan, site: &str) -> Self {
        let entries = plan.status.iter().flat_map(|s| &s.sites);
        let last_epoch = entries.filter(|e| e.site == site).find_map(|e| e.epoch);
        Self { ctx: ctx.clone(), plan: plan.name_any(), site: site.to_owned(), last_epoch: last_epoch.into() }
    }

    async fn write(&self, standing: Standing, epoch: Option<u64>) {
        let api: Api<FailoverPlan> = Api::all(self.ctx.client.clone());
        let entry =
            SiteStanding { site: self.site.clone(), standing, epoch, since: Some(Time(jiff::Timestamp::now())) };
        let patch = serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "FailoverPlan", "status": {"sites": [entry]},
        });
        let params = PatchParams::apply(&manager(&self.site)).force();
        for attempt in 1..=WRITE_ATTEMPTS {
            match api.patch_status(&self.plan, &params, &Patch::Apply(&patch)).await {
                Ok(_) => return,
                Err(e) if attempt == WRITE_ATTEMPTS => {
                    tracing::error!(plan = %self.plan, site = %self.site, ?standing, error = %error_chain(&e),
                        "the site's standing could not be written");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
            }
        }
    }
}

#[async_trait]
impl FenceControl for PlanStanding {
    async fn fence(&self) {
        super::local_fence::fence_plan_apps(&self.ctx, &self.plan, &self.site).await;
        let last = *self.last_epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.write(Standing::Fenced, last).await;
    }

    async fn activate(&self, epoch: u64) {
        *self.last_epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(epoch);
        self.write(Standing::Active, Some(epoch)).await;
    }
}
