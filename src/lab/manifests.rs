//! The resources `fenice lab --operators` applies: what an SRE would write
//! for the lab's providers, its two Local sites, the witness, the backup
//! policy, the plan and the tenants. They are written to the run's directory
//! (`manifests.yaml`, without the Secrets) so that a kept run shows them.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::providers::{Providers, Repo, RepoStore, WITNESS_BUCKET, WitnessPlace};
use super::{NAMESPACE, PLAN, PRIMARY, STANDBY, tier_of, vat_of};
use crate::api::common::Duration as SpecDuration;
use crate::failover::lease::LeaseTiming;
use crate::store::azure::account_sas;
use crate::testkit::azurite::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};

/// The operators' own namespace: their leader Leases and the Secrets.
pub const OPERATOR_NAMESPACE: &str = "fenice-system";
/// The witness's Site.
pub const WITNESS: &str = "witness";
/// The tenants' BackupPolicy.
const POLICY: &str = "lab";
/// The Secret with the repositories' password.
const PASSWORD_SECRET: &str = "repo-password";
/// The S3 servers take any key: these stand in for a provider's.
const S3_KEYS: [(&str, &str); 2] =
    [("AWS_ACCESS_KEY_ID", "fenice-lab-access-key"), ("AWS_SECRET_ACCESS_KEY", "fenice-lab-secret-key")];
/// The RPO each tenant declares, which a Drill judges its restored backup's
/// age by (a Drill restores the newest backup, not the archive after it); the
/// lab's own RPO target judges the failover.
pub const DECLARED_RPO: Duration = Duration::from_secs(60);
/// The Secret with the tenants' SdI channel certificate, in their namespace.
const CHANNEL_SECRET: &str = "sdi-channel";
/// A self-signed certificate valid until 2051, as an SdI channel's.
const CHANNEL_CERTIFICATE: &str = include_str!("sdi-channel.pem");
/// How long the Azure Blob repository's SAS URL is valid: longer than any lab.
const SAS_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the resources depend on besides the providers.
pub struct Lab<'a> {
    pub tenants: &'a [String],
    /// The SdI endpoint every tenant's channels reach, at both sites.
    pub sdi: String,
    /// Where the primary's health is probed: its operator's `/healthz`.
    pub primary_health: String,
    pub probe_interval: Duration,
    pub lease: &'a LeaseTiming,
    pub archive_timeout: Duration,
    pub parallelism: u32,
    /// What waits for each tenant at the standby site.
    pub standby: crate::api::tenant::StandbyMode,
}

/// Every resource but the Secrets, in the order they are applied.
pub fn resources(lab: &Lab<'_>, repos: &[Repo], witness: &WitnessPlace) -> Vec<Value> {
    let mut out = vec![namespace(OPERATOR_NAMESPACE), namespace(NAMESPACE)];
    out.extend(repos.iter().enumerate().map(|(i, repo)| repository(i, repo)));
    out.extend([site_at(PRIMARY, "Westpole", "Primary", Some(lab)), site_at(STANDBY, "Azure", "Standby", None)]);
    out.push(witness_site(witness));
    out.push(policy(repos, lab.archive_timeout));
    out.push(plan(lab));
    out.extend(lab.tenants.iter().enumerate().map(|(i, name)| tenant(name, i, lab)));
    out
}

/// The Secrets the resources reference. Their values are secrets: they are
/// applied, never written nor printed.
pub fn secrets(providers: &Providers) -> Vec<Value> {
    let keys: serde_json::Map<String, Value> = S3_KEYS.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let mut out = vec![
        secret(PASSWORD_SECRET, json!({"password": providers.password()})),
        secret("repo-s3", Value::Object(keys.clone())),
        secret("witness-s3", Value::Object(keys)),
    ];
    // NB: the SdI simulator takes no client certificate: the key is not read; drills check the certificate's dates.
    out.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CHANNEL_SECRET, "namespace": NAMESPACE},
        "stringData": {"tls.crt": CHANNEL_CERTIFICATE, "tls.key": "unused: the SdI simulator takes no client certificate"}}));
    if providers.repos.iter().any(|r| matches!(r.store, RepoStore::Azure { .. })) {
        out.push(secret("repo-azure", json!({"sasUrl": azurite_sas().as_str()})));
    }
    out
}

/// A SAS URL for Azurite's development account, as a storage account's owner signs one.
fn azurite_sas() -> Zeroizing<String> {
    Zeroizing::new(
        account_sas(DEV_ACCOUNT, &DEV_ACCOUNT_KEY, "rwdlaci", SystemTime::now() + SAS_VALIDITY).expose().to_owned(),
    )
}

/// `d` as a resource writes it; in milliseconds when it is not whole seconds.
fn spec_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { SpecDuration::from_std(d).as_str().to_owned() } else { format!("{}ms", d.as_millis()) }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE}, "stringData": data})
}

/// The name of the `index`th repository's BackupRepository.
pub fn repository_name(index: usize) -> String {
    format!("offsite-{}", ["a", "b", "c", "d"].get(index).copied().unwrap_or("n"))
}

fn repository(index: usize, repo: &Repo) -> Value {
    let (provider, storage) = match &repo.store {
        RepoStore::S3 { endpoint, bucket, prefix } => (
            "Ovhcloud",
            json!({"type": "S3", "s3": {"bucket": bucket, "prefix": prefix, "region": "us-east-1",
                "endpoint": endpoint, "forcePathStyle": true, "credentialsSecretRef": {"name": "repo-s3"}}}),
        ),
        RepoStore::Azure { endpoint, account, container, prefix } => (
            "Azure",
            json!({"type": "AzureBlob", "azureBlob": {"account": account, "container": container, "prefix": prefix,
                "endpoint": endpoint, "sasUrlSecretRef": {"name": "repo-azure", "key": "sasUrl"}}}),
        ),
        RepoStore::Directory { path } => {
            ("OnPremises", json!({"type": "Filesystem", "filesystem": {"path": path.display().to_string()}}))
        }
    };
    let immutability =
        if repo.immutable { json!({"enabled": true, "retention": "1d"}) } else { json!({"enabled": false}) };
    json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": repository_name(index)},
        "spec": {"provider": provider, "storage": storage, "immutability": immutability,
            "passwordSecretRef": {"name": PASSWORD_SECRET, "key": "password"}},
    })
}

/// A Local site; the primary's health is its operator's.
fn site_at(name: &str, provider: &str, role: &str, probed: Option<&Lab<'_>>) -> Value {
    let mut spec = json!({"provider": provider, "region": "lab", "role": role, "cluster": {"driver": "Local"}});
    if let Some(lab) = probed {
        spec["health"] = json!({
            "endpoints": [{"name": "operator", "url": lab.primary_health}],
            "interval": spec_duration(lab.probe_interval),
            "timeout": spec_duration(lab.probe_interval / 2),
        });
    }
    json!({"apiVersion": "fenice.io/v1alpha1", "kind": "Site", "metadata": {"name": name}, "spec": spec})
}

fn witness_site(place: &WitnessPlace) -> Value {
    let store = match place {
        WitnessPlace::S3 { endpoint } => json!({"type": "S3", "s3": {"bucket": WITNESS_BUCKET, "region": "us-east-1",
            "endpoint": endpoint, "forcePathStyle": true, "credentialsSecretRef": {"name": "witness-s3"}}}),
        WitnessPlace::Dir(path) => json!({"type": "Filesystem", "filesystem": {"path": path.display().to_string()}}),
    };
    json!({"apiVersion": "fenice.io/v1alpha1", "kind": "Site", "metadata": {"name": WITNESS},
        "spec": {"provider": "Aws", "region": "lab", "role": "Witness", "witnessStore": store}})
}

fn policy(repos: &[Repo], archive_timeout: Duration) -> Value {
    let names: Vec<String> = (0..repos.len()).map(repository_name).collect();
    let immutable = repos.iter().any(|r| r.immutable);
    json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": POLICY},
        "spec": {
            // NB: the lab takes its backups by hand (a Backup per tenant); the schedule is the daily one.
            "schedule": "0 3 * * *", "timeZone": "Europe/Rome",
            "repositories": names,
            "retention": {"keepLast": 4},
            "rules": {"minCopies": names.len(), "minDistinctProviders": 2, "forbidPrimaryProvider": true,
                "forbiddenProviders": ["Westpole"], "requireImmutable": immutable},
            "walArchiving": {"enabled": true, "archiveTimeout": spec_duration(archive_timeout)},
        },
    })
}

fn plan(lab: &Lab<'_>) -> Value {
    let wave = |name: &str, tier: &str| json!({"name": name, "tiers": [tier], "parallelism": lab.parallelism});
    json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "FailoverPlan", "metadata": {"name": PLAN},
        "spec": {
            "sourceSite": PRIMARY, "targetSite": STANDBY,
            "tenants": {"selector": {"matchLabels": {"fenice.io/plan": PLAN}}, "namespaces": [NAMESPACE]},
            "mode": "Automatic",
            // NB: the lab's rule: down after 3 failed probes over at least 1 s, from 2 vantage points.
            "detection": {"failureThreshold": 3, "window": "1s", "minVantagePoints": 2},
            "witness": {"site": WITNESS, "leaseDuration": spec_duration(lab.lease.lease_duration),
                "renewInterval": spec_duration(lab.lease.renew_interval)},
            "waves": [wave("gold", "Gold"), wave("silver", "Silver"), wave("bronze", "Bronze")],
        },
    })
}

fn tenant(name: &str, index: usize, lab: &Lab<'_>) -> Value {
    let channel = |site: &str| {
        json!({"site": site, "kind": "SDICoop", "endpoint": lab.sdi, "environment": "Production",
            "certificateSecretRef": {"name": CHANNEL_SECRET, "key": "tls.crt"},
            "privateKeySecretRef": {"name": CHANNEL_SECRET, "key": "tls.key"}})
    };
    json!({
        "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"fenice.io/plan": PLAN}},
        "spec": {
            "displayName": format!("Lab tenant {name}"),
            "vatNumber": vat_of(index),
            "invoiceFormat": "FPR12",
            "tier": tier_of(index, lab.tenants.len()),
            "primarySite": PRIMARY,
            "standby": lab.standby,
            "objectives": {"rpo": spec_duration(DECLARED_RPO), "rto": spec_duration(super::RTO_OBJECTIVE)},
            "backupPolicy": POLICY,
            "sdi": {"channels": [channel(PRIMARY), channel(STANDBY)]},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::plan::FailoverPlan;
    use crate::api::policy::BackupPolicy;
    use crate::api::repository::BackupRepository;
    use crate::api::site::Site;
    use crate::api::tenant::InvoicingTenant;

    fn lab_resources(tenants: &[String]) -> Vec<Value> {
        let repos = vec![
            Repo {
                provider: "s3".into(),
                location: "s3://b/p".into(),
                immutable: true,
                store: RepoStore::S3 { endpoint: "http://127.0.0.1:1".into(), bucket: "b".into(), prefix: "p".into() },
            },
            Repo {
                provider: "dir".into(),
                location: "/x/offsite-b".into(),
                immutable: false,
                store: RepoStore::Directory { path: "/x/offsite-b".into() },
            },
        ];
        let lease = LeaseTiming::for_lease(Duration::from_secs(5), Duration::from_millis(500)).unwrap();
        let lab = Lab {
            tenants,
            sdi: "http://127.0.0.1:2".into(),
            primary_health: "http://127.0.0.1:3/healthz".into(),
            probe_interval: Duration::from_millis(500),
            lease: &lease,
            archive_timeout: Duration::from_secs(1),
            parallelism: 8,
            standby: crate::api::tenant::StandbyMode::Synchronous,
        };
        resources(&lab, &repos, &WitnessPlace::Dir("/x/witness".into()))
    }

    fn of_kind<K: serde::de::DeserializeOwned>(all: &[Value], kind: &str) -> Vec<K> {
        all.iter().filter(|d| d["kind"] == kind).map(|d| serde_json::from_value(d.clone()).unwrap()).collect()
    }

    #[test]
    fn the_lab_s_resources_are_valid_and_name_each_other() {
        let names: Vec<String> = (1..=10).map(|i| format!("tenant-{i:03}")).collect();
        let all = lab_resources(&names);
        let repos: Vec<BackupRepository> = of_kind(&all, "BackupRepository");
        let sites: Vec<Site> = of_kind(&all, "Site");
        let policies: Vec<BackupPolicy> = of_kind(&all, "BackupPolicy");
        let plans: Vec<FailoverPlan> = of_kind(&all, "FailoverPlan");
        let tenants: Vec<InvoicingTenant> = of_kind(&all, "InvoicingTenant");
        assert_eq!((repos.len(), sites.len(), policies.len(), plans.len(), tenants.len()), (2, 3, 1, 1, 10));
        let site_names: Vec<String> = sites.iter().map(ResourceExt::name_any).collect();
        let plan = &plans[0].spec;
        let witness = plan.witness.as_ref().unwrap();
        for site in [&plan.source_site, &plan.target_site, &witness.site] {
            assert!(site_names.contains(site), "{site} is not among {site_names:?}");
        }
        let repo_names: Vec<String> = repos.iter().map(ResourceExt::name_any).collect();
        assert_eq!(policies[0].spec.repositories, repo_names);
        assert!(repos[0].spec.immutability.enabled && !repos[1].spec.immutability.enabled);
        for tenant in &tenants {
            assert_eq!(tenant.spec.backup_policy, policies[0].name_any());
            assert_eq!(tenant.labels().get("fenice.io/plan"), Some(&plans[0].name_any()));
            let channels: Vec<&str> = tenant.spec.sdi.channels.iter().map(|c| c.site.as_str()).collect();
            assert_eq!(channels, [PRIMARY, STANDBY], "{}", tenant.name_any());
        }
        assert_eq!(witness.renew_interval.as_std(), Duration::from_millis(500), "sub-second timing is kept");
        // Every tier gets a wave, and tenants of every tier are there.
        let tiers: BTreeSet<String> = tenants.iter().map(|t| format!("{:?}", t.spec.tier)).collect();
        assert_eq!(tiers.len(), 3, "{tiers:?}");
    }

    #[test]
    fn the_written_resources_hold_no_secret_value() {
        let all = lab_resources(&["tenant-001".into()]);
        assert!(all.iter().all(|d| d["kind"] != "Secret"));
        let text = serde_json::to_string(&all).unwrap();
        for (_, value) in S3_KEYS {
            assert!(!text.contains(value), "{value} is written");
        }
    }

    use kube::ResourceExt;
    use std::collections::BTreeSet;
}
