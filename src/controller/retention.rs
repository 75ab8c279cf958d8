//! A BackupPolicy's retention, applied to one tenant in one repository after
//! each successful backup: `forget` of the snapshots the policy does not keep,
//! never a prune (the operator holds no credential that deletes data, and the
//! stores' immutability would refuse it inside the window anyway).

use jiff::tz::TimeZone;

use crate::api::policy::Retention;
use crate::repo::forget::{self, KeepPolicy, Outcome};
use crate::repo::repository::Repository;

/// What forgetting did to a tenant's snapshots in one repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgot {
    pub kept: usize,
    pub forgotten: usize,
    /// Not kept by the policy, but the store's retention still holds them.
    pub held: usize,
}

/// The `forget` policy of a BackupPolicy's retention; empty keeps everything.
pub fn keep_policy(retention: &Retention) -> KeepPolicy {
    let n = |v: Option<u32>| v.unwrap_or(0);
    KeepPolicy {
        last: n(retention.keep_last),
        hourly: n(retention.keep_hourly),
        daily: n(retention.keep_daily),
        weekly: n(retention.keep_weekly),
        monthly: n(retention.keep_monthly),
        yearly: n(retention.keep_yearly),
    }
}

/// Forgets the snapshots of `tenant` in `repo` that `policy` does not keep
/// (buckets in `tz`); other tenants' snapshots are not looked at.
pub async fn forget_tenant(
    repo: &Repository,
    tenant: &str,
    policy: &KeepPolicy,
    tz: &TimeZone,
) -> Result<Forgot, crate::repo::repository::Error> {
    if policy.is_empty() {
        return Ok(Forgot::default());
    }
    let mut snapshots = repo.snapshots().await?;
    snapshots.retain(|(_, s)| s.tenant.as_deref() == Some(tenant));
    let decisions = forget::decide(&snapshots, policy, tz);
    let done = forget::apply(repo, decisions, false).await?;
    let mut forgot = Forgot::default();
    for (_, outcome) in done {
        match outcome {
            Outcome::Kept(_) | Outcome::WouldForget => forgot.kept += 1,
            Outcome::Forgotten => forgot.forgotten += 1,
            Outcome::Held => forgot.held += 1,
        }
    }
    Ok(forgot)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::archiver::{self, BackupOptions, Progress, Source};
    use crate::repo::keyfile::{KdfParams, Passphrase};
    use crate::store::ObjectStore;
    use crate::store::fs::FsStore;

    async fn snapshot(repo: &Arc<Repository>, tenant: &str) {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("dump"), tenant).unwrap();
        let options = BackupOptions { tenant: Some(tenant.into()), host: "h".into(), ..BackupOptions::default() };
        let copies = archiver::backup(
            vec![repo.clone()],
            Source::Paths(vec![data.path().into()]),
            options,
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
        assert!(copies[0].result.is_ok());
    }

    #[tokio::test]
    async fn only_the_tenants_snapshots_beyond_the_policy_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let fast = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let repo = Arc::new(Repository::init(store, &Passphrase::new("p".into()), fast, None).await.unwrap());
        for tenant in ["acme", "acme", "acme", "globex"] {
            snapshot(&repo, tenant).await;
        }
        let keep_two = keep_policy(&Retention { keep_last: Some(2), ..Retention::default() });
        let forgot = forget_tenant(&repo, "acme", &keep_two, &TimeZone::UTC).await.unwrap();
        assert_eq!(forgot, Forgot { kept: 2, forgotten: 1, held: 0 });
        let left: Vec<String> = repo.snapshots().await.unwrap().into_iter().filter_map(|(_, s)| s.tenant).collect();
        assert_eq!(left.iter().filter(|t| *t == "acme").count(), 2);
        assert_eq!(left.iter().filter(|t| *t == "globex").count(), 1, "another tenant's snapshot is not touched");
        let nothing = forget_tenant(&repo, "acme", &keep_policy(&Retention::default()), &TimeZone::UTC).await.unwrap();
        assert_eq!(nothing, Forgot::default(), "an empty retention keeps everything");
    }
}
