//! One tenant's audit from what the cluster records: the copies of its latest
//! backup (a Backup's status), whether each is really locked (its BackupRepository's
//! probe found immutability in force at the store, and the copy's lock date is
//! still ahead), and its last verification (a verified Restore or a drill).

use jiff::Timestamp;
use kube::ResourceExt;

use super::{Copy, Verification, Violation, check_3_2_1_1_0};
use crate::api::backup::{Backup, BackupPhase};
use crate::api::repository::BackupRepository;
use crate::api::restore::{Restore, RestorePhase};
use crate::api::site::Site;
use crate::api::tenant::InvoicingTenant;

/// What the audit found for one tenant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantAudit {
    pub namespace: String,
    pub tenant: String,
    /// The Backup whose copies were judged.
    pub latest_backup: Option<String>,
    pub copies: Vec<AuditedCopy>,
    pub verification: &'static str,
    pub violations: Vec<AuditedViolation>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditedCopy {
    pub repository: String,
    pub provider: String,
    pub immutable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditedViolation {
    pub rule: &'static str,
    pub message: String,
}

/// Everything the audit reads, listed once.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub sites: Vec<Site>,
    pub repositories: Vec<BackupRepository>,
    pub backups: Vec<Backup>,
    pub restores: Vec<Restore>,
}

/// Judges `tenant` against 3-2-1-1-0 on what `observed` holds at `now`.
pub fn assess(tenant: &InvoicingTenant, observed: &Observed, now: Timestamp) -> TenantAudit {
    let namespace = tenant.namespace().unwrap_or_default();
    let name = tenant.name_any();
    let mine = |ns: Option<String>, of: &str| ns.as_deref() == Some(namespace.as_str()) && of == name;
    let latest = observed
        .backups
        .iter()
        .filter(|b| mine(b.namespace(), &b.spec.tenant))
        .filter(|b| {
            let phase = b.status.as_ref().map(|s| s.phase);
            matches!(phase, Some(BackupPhase::Succeeded | BackupPhase::PartiallySucceeded))
        })
        .max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.as_ref().map(|t| t.0)));
    let copies: Vec<Copy> = latest
        .and_then(|b| b.status.as_ref())
        .map(|s| s.copies.iter().filter(|c| c.written).filter_map(|c| judged(c, observed, now)).collect())
        .unwrap_or_default();
    let verification = verification(tenant, observed);
    let site_name = tenant.status.as_ref().and_then(|s| s.active_site.clone());
    let site_name = site_name.unwrap_or_else(|| tenant.spec.primary_site.clone());
    let violations = match observed.sites.iter().find(|s| s.name_any() == site_name) {
        Some(site) => check_3_2_1_1_0(&name, site.spec.provider, &copies, verification),
        None => vec![Violation {
            rule: "primary site",
            message: format!(
                "tenant {name}'s site {site_name} does not exist: its provider, and so its off-site copies, cannot be judged"
            ),
        }],
    };
    TenantAudit {
        namespace,
        tenant: name,
        latest_backup: latest.map(|b| b.name_any()),
        copies: copies
            .iter()
            .map(|c| AuditedCopy {
                repository: c.repository.clone(),
                provider: format!("{:?}", c.provider),
                immutable: c.immutable,
            })
            .collect(),
        verification: match verification {
            Verification::Passed => "passed",
            Verification::Failed => "failed",
            Verification::Never => "never",
        },
        violations: violations.into_iter().map(|v| AuditedViolation { rule: v.rule, message: v.message }).collect(),
    }
}

/// A written copy as the audit counts it: its provider (the copy's, or its
/// repository's), and locked only when the store was found enforcing retention
/// and the copy's lock is still ahead. A copy whose repository is gone and
/// that recorded no provider is not counted.
fn judged(copy: &crate::api::backup::BackupCopy, observed: &Observed, now: Timestamp) -> Option<Copy> {
    let repository = observed.repositories.iter().find(|r| r.name_any() == copy.repository);
    let provider = copy.provider.or_else(|| repository.map(|r| r.spec.provider))?;
    let enforced = repository.and_then(|r| r.status.as_ref()).and_then(|s| s.immutability_in_force) == Some(true);
    let ahead = copy.immutable_until.as_ref().is_some_and(|t| t.0 > now);
    Some(Copy { repository: copy.repository.clone(), provider, immutable: enforced && ahead })
}

/// The newest of the tenant's verified Restores and its last drill.
fn verification(tenant: &InvoicingTenant, observed: &Observed) -> Verification {
    let namespace = tenant.namespace();
    let restore = observed
        .restores
        .iter()
        .filter(|r| r.namespace() == namespace && r.spec.tenant == tenant.name_any())
        .filter_map(|r| {
            let s = r.status.as_ref()?;
            let done = matches!(s.phase, RestorePhase::Succeeded | RestorePhase::Failed);
            let passed = s.phase == RestorePhase::Succeeded && s.verified == Some(true);
            done.then_some((s.completion_time.as_ref()?.0, passed))
        })
        .max_by_key(|(at, _)| *at);
    let status = tenant.status.as_ref();
    let drill = status.and_then(|s| Some((s.last_drill_time.as_ref()?.0, s.last_drill_passed?)));
    match [restore, drill].into_iter().flatten().max_by_key(|(at, _)| *at) {
        Some((_, true)) => Verification::Passed,
        Some((_, false)) => Verification::Failed,
        None => Verification::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> InvoicingTenant {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/examples/tenants.yaml")).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        serde_json::from_value(docs.into_iter().find(|d| !d.is_null()).unwrap()).unwrap()
    }

    fn observed(copies: serde_json::Value, restore_verified: Option<bool>) -> Observed {
        let site = serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Site", "metadata": {"name": "westpole-rome"},
            "spec": {"provider": "Westpole", "region": "rome", "role": "Primary", "cluster": {"driver": "Local"}},
        });
        let repository = |name: &str, provider: &str, locked: bool| {
            serde_json::json!({
                "apiVersion": "fenice.io/v1alpha1", "kind": "BackupRepository", "metadata": {"name": name},
                "spec": {"provider": provider, "storage": {"type": "S3", "s3": {"bucket": "b"}},
                         "immutability": {"enabled": locked, "retention": "30d"},
                         "passwordSecretRef": {"name": "p", "key": "k"}},
                "status": {"immutabilityInForce": locked},
            })
        };
        let backup = serde_json::json!({
            "apiVersion": "fenice.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": "studio-rossi-1", "namespace": "invoicing"},
            "spec": {"tenant": "studio-rossi"},
            "status": {"phase": "Succeeded", "completionTime": "2026-11-23T10:00:00Z", "copies": copies},
        });
        let restores = restore_verified.map(|verified| {
            serde_json::json!({
                "apiVersion": "fenice.io/v1alpha1", "kind": "Restore",
                "metadata": {"name": "check", "namespace": "invoicing"},
                "spec": {"tenant": "studio-rossi", "repository": "azure"},
                "status": {"phase": if verified { "Succeeded" } else { "Failed" }, "verified": verified,
                           "completionTime": "2026-11-23T11:00:00Z"},
            })
        });
        Observed {
            sites: vec![serde_json::from_value(site).unwrap()],
            repositories: vec![
                serde_json::from_value(repository("azure", "Azure", true)).unwrap(),
                serde_json::from_value(repository("ovh", "Ovhcloud", false)).unwrap(),
            ],
            backups: vec![serde_json::from_value(backup).unwrap()],
            restores: restores.into_iter().map(|r| serde_json::from_value(r).unwrap()).collect(),
        }
    }

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn copies_at_two_other_providers_one_locked_and_a_verified_restore_pass() {
        let copies = serde_json::json!([
            {"repository": "azure", "provider": "Azure", "written": true, "immutableUntil": "2026-12-23T10:00:00Z"},
            {"repository": "ovh", "provider": "Ovhcloud", "written": true},
        ]);
        let audit = assess(&tenant(), &observed(copies, Some(true)), now());
        assert_eq!(audit.violations, vec![], "{audit:#?}");
        assert_eq!(audit.latest_backup.as_deref(), Some("studio-rossi-1"));
        assert_eq!(audit.verification, "passed");
        assert!(audit.copies[0].immutable && !audit.copies[1].immutable);
    }

    #[test]
    fn copies_at_one_provider_are_caught_and_named() {
        let copies = serde_json::json!([
            {"repository": "azure", "provider": "Azure", "written": true, "immutableUntil": "2026-12-23T10:00:00Z"},
            {"repository": "azure", "provider": "Azure", "written": true, "immutableUntil": "2026-12-23T10:00:00Z"},
        ]);
        let audit = assess(&tenant(), &observed(copies, Some(true)), now());
        let rules: Vec<&str> = audit.violations.iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["2 providers"], "{audit:#?}");
        assert!(audit.violations[0].message.contains("1 provider(s) other than its primary's Westpole (Azure)"));
    }

    #[test]
    fn an_expired_lock_an_unwritten_copy_and_a_failed_restore_count_against() {
        let copies = serde_json::json!([
            {"repository": "azure", "provider": "Azure", "written": true, "immutableUntil": "2026-11-01T00:00:00Z"},
            {"repository": "ovh", "provider": "Ovhcloud", "written": false, "error": "timeout"},
        ]);
        let audit = assess(&tenant(), &observed(copies, Some(false)), now());
        let rules: Vec<&str> = audit.violations.iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["3 copies", "2 providers", "1 immutable", "0 errors"], "{audit:#?}");
        let never = assess(&tenant(), &observed(serde_json::json!([]), None), now());
        assert_eq!(never.verification, "never");
    }
}
