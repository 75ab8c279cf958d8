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
    }
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
