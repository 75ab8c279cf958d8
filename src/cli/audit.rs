//! `fenice audit`: every tenant against the 3-2-1-1-0 rule, from what the
//! cluster records (Backups' copies, the repositories' probes, Restores and
//! drills). A table, or `--json`; exit 1 when any tenant violates the rule.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use kube::api::ListParams;
use kube::{Api, Client};

use super::output::table;
use crate::api::backup::Backup;
use crate::api::repository::BackupRepository;
use crate::api::restore::Restore;
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;
use crate::audit::observed::{self, Observed, TenantAudit};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The cluster; in-cluster configuration (or $KUBECONFIG) otherwise.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Audit the tenants of this namespace only; all by default.
    #[arg(long)]
    namespace: Option<String>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = super::operator::client(args.kubeconfig.as_ref()).await?;
    let audits = audit(&client, args.namespace.as_deref()).await?;
    let failing = audits.iter().filter(|a| !a.violations.is_empty()).count();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&audits)?)?;
    } else {
        print(&mut out, &audits, failing)?;
    }
    Ok(if failing > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn list<K>(api: Api<K>, what: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await.with_context(|| format!("listing {what}"))?.items)
}

/// Every tenant's audit, at this moment.
async fn audit(client: &Client, namespace: Option<&str>) -> anyhow::Result<Vec<TenantAudit>> {
    fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let tenants: Vec<InvoicingTenant> = list(scoped(client, namespace), "InvoicingTenants").await?;
    let observed = Observed {
        sites: list(Api::<Site>::all(client.clone()), "Sites").await?,
        repositories: list(Api::<BackupRepository>::all(client.clone()), "BackupRepositories").await?,
        backups: list(scoped::<Backup>(client, namespace), "Backups").await?,
        restores: list(scoped::<Restore>(client, namespace), "Restores").await?,
    };
    let now = jiff::Timestamp::now();
    Ok(tenants.iter().map(|t| observed::assess(t, &observed, now)).collect())
}

fn print(out: &mut impl Write, audits: &[TenantAudit], failing: usize) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = audits
        .iter()
        .map(|a| {
            let mut providers: Vec<&str> = a.copies.iter().map(|c| c.provider.as_str()).collect();
            providers.sort();
            providers.dedup();
            vec![
                a.namespace.clone(),
                a.tenant.clone(),
                a.latest_backup.clone().unwrap_or_else(|| "none".into()),
                a.copies.len().to_string(),
                if providers.is_empty() { "-".into() } else { providers.join(",") },
                a.copies.iter().filter(|c| c.immutable).count().to_string(),
                a.verification.to_string(),
                match a.violations.len() {
                    0 => "ok".into(),
                    n => format!("{n} violation{}", if n == 1 { "" } else { "s" }),
                },
            ]
        })
        .collect();
    let header = ["NAMESPACE", "TENANT", "LATEST BACKUP", "COPIES", "PROVIDERS", "IMMUTABLE", "VERIFIED", "3-2-1-1-0"];
    table(out, &header, &rows)?;
    if failing > 0 {
        writeln!(out)?;
        for a in audits {
            for v in &a.violations {
                writeln!(out, "{}/{}: [{}] {}", a.namespace, a.tenant, v.rule, v.message)?;
            }
        }
    }
    writeln!(out, "\n{} of {} tenants satisfy 3-2-1-1-0", audits.len() - failing, audits.len())
}
