//! `fenice failover witness`: a plan's lease as the witness store holds it,
//! and the first lease of a new witness store when the old one is lost
//! (runbooks/witness-unreachable.md).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::repo::StoreArgs;
use crate::failover::lease::{LeaseRecord, new_incarnation};
use crate::failover::witness::Witness;

#[derive(Args, Debug)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: WitnessCommand,
}

#[derive(Subcommand, Debug)]
enum WitnessCommand {
    /// The plan's lease in the witness store: holder, epoch, renewals. Exit 1
    /// when the store holds none.
    Show {
        #[command(flatten)]
        at: WitnessAt,
        /// Print one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Writes the first lease of a plan into a witness store that holds none,
    /// naming the site to hold it, in an epoch above every one used: for
    /// moving the witness to a new store when the old one is lost. The named
    /// site's agent renews it once the witness Site points at the store.
    Seed {
        #[command(flatten)]
        at: WitnessAt,
        /// The site that holds the lease: the one that serves the plan's tenants.
        #[arg(long)]
        holder: String,
        /// Above every epoch any site of the plan was active under (the highest
        /// `epoch` in the plan's `status.sites`, plus one; higher is as safe).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        epoch: u64,
    },
    /// Probes a site's health endpoints from where it runs and posts each
    /// result in the witness store, where the plan's standby reads it as one
    /// more vantage point: run it at a third provider (docs/failover.md,
    /// "Lookouts"). Runs until SIGTERM or Ctrl-C; prints a line when what it
    /// sees changes.
    Lookout {
        #[command(flatten)]
        at: WitnessAt,
        /// The site probed: the plan's source, as its Site is named.
        #[arg(long)]
        site: String,
        /// A health endpoint of the site (answers 2xx while it serves); repeat
        /// for several: the site answers when most of them do.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        /// This lookout's name in the witness store; one process per name.
        #[arg(long, default_value_t = crate::repo::host_name())]
        name: String,
        /// How often to probe.
        #[arg(long, default_value = "5s", value_parser = super::app_serve::parse_interval)]
        interval: std::time::Duration,
        /// How long one probe may take.
        #[arg(long, default_value = "2s", value_parser = super::app_serve::parse_interval)]
        timeout: std::time::Duration,
    },
}

/// Which plan's lease, in which store.
#[derive(Args, Debug)]
struct WitnessAt {
    /// The FailoverPlan.
    #[arg(long)]
    plan: String,
    /// The witness store: a path, s3://bucket/prefix or az://account/container/prefix
    /// (the witness Site's `witnessStore`).
    #[arg(long)]
    witness: String,
    #[command(flatten)]
    stores: StoreArgs,
}

impl WitnessAt {
    async fn open(&self) -> anyhow::Result<(Witness, String)> {
        let store = self.stores.open(&self.witness).await?;
        let described = store.describe();
        Ok((Witness::new(store, &self.plan), described))
    }
}

pub async fn run(args: WitnessArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WitnessCommand::Show { at, json } => show(&at, json).await,
        WitnessCommand::Seed { at, holder, epoch } => seed(&at, &holder, epoch).await,
        WitnessCommand::Lookout { at, site, urls, name, interval, timeout } => {
            lookout(&at, Lookout { site, urls, name, interval, timeout }).await
        }
    }
}

struct Lookout {
    site: String,
    urls: Vec<String>,
    name: String,
    interval: std::time::Duration,
    timeout: std::time::Duration,
}

async fn lookout(at: &WitnessAt, lookout: Lookout) -> anyhow::Result<ExitCode> {
    use crate::failover::clock::{Clock, SystemClock};
    use crate::failover::lookout::{Poster, key};
    anyhow::ensure!(!lookout.name.is_empty() && !lookout.name.contains('/'), "--name must be a name without '/'");
    for url in &lookout.urls {
        let parsed = reqwest::Url::parse(url);
        anyhow::ensure!(
            parsed.is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
            "--url {url:?} is not an http:// or https:// URL: give the site's health endpoints as its Site lists them"
        );
    }
    let stop = super::serving::shutdown_signal()?;
    let (witness, store) = at.open().await?;
    let client = reqwest::Client::builder().timeout(lookout.timeout).build()?;
    let clock = SystemClock::default();
    let mut poster = Poster::new(&at.plan, &lookout.name, &lookout.site, lookout.interval);
    println!(
        "lookout {} probes {} every {:?}, posting to {} in {store}",
        lookout.name,
        lookout.site,
        lookout.interval,
        key(&at.plan, &lookout.name),
    );
    let mut ticker = tokio::time::interval(lookout.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // NB: so that the first probe that answers, and the first post after a failed one, are told.
    let (mut answered, mut posted_before) = (false, true);
    let work = async {
        loop {
            ticker.tick().await;
            let ok = crate::failover::probing::answer(&client, &lookout.urls).await;
            let report = poster.record(clock.now(), ok);
            let posted = poster.post(witness.store(), &report).await;
            let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now());
            // NB: a closed stdout must not stop the lookout.
            let say = |line: String| {
                let _ = writeln!(std::io::stdout(), "{now} {line}");
            };
            if let Err(e) = &posted {
                say(format!("could not post: {}", crate::error_chain::error_chain(e)));
            }
            if !ok {
                let failing = std::time::Duration::from_millis(report.failing_for_ms);
                say(format!("{} does not answer: {} probes in a row over {failing:?}", lookout.site, report.failures));
            } else if !answered {
                say(format!("{} answers", lookout.site));
            }
            if !posted_before && posted.is_ok() {
                say("posting again".to_owned());
            }
            (answered, posted_before) = (ok, posted.is_ok());
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(at: &WitnessAt, json: bool) -> anyhow::Result<ExitCode> {
    let (witness, store) = at.open().await?;
    let Some(lease) = witness.read().await? else {
        eprintln!("no lease of plan {} at {store} (no {})", at.plan, witness.key());
        return Ok(ExitCode::FAILURE);
    };
    let record = &lease.record;
    let mut out = std::io::stdout().lock();
    if json {
        let doc = serde_json::json!({
            "plan": at.plan, "witness": store, "holder": record.holder, "epoch": record.epoch, "renewals": record.renewals,
        });
        writeln!(out, "{doc}")?;
    } else {
        writeln!(out, "plan      {}", at.plan)?;
        writeln!(out, "witness   {store}")?;
        writeln!(out, "holder    {}", record.holder)?;
        writeln!(out, "epoch     {}", record.epoch)?;
        writeln!(out, "renewals  {}", record.renewals)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn seed(at: &WitnessAt, holder: &str, epoch: u64) -> anyhow::Result<ExitCode> {
    let (witness, store) = at.open().await?;
    if let Some(lease) = witness.read().await? {
        anyhow::bail!(
            "{store} already holds a lease of plan {} (holder {}, epoch {}): only a store without one is seeded; \
             to use this store as it is, point the witness Site at it",
            at.plan,
            lease.record.holder,
            lease.record.epoch
        );
    }
    // NB: a fresh incarnation: the holder's agent takes the lease for one of
    // an earlier run of its own, renews it, and is active once that succeeds.
    let record = LeaseRecord { holder: holder.to_owned(), epoch, renewals: 1, incarnation: new_incarnation() };
    witness.create(&record).await?;
    println!(
        "seeded the lease of plan {} at {store}: holder {holder}, epoch {epoch}; \
         {holder} serves again once the witness Site points at this store",
        at.plan
    );
    Ok(ExitCode::SUCCESS)
}
