//! Is a tenant really protected? The rules a BackupPolicy states, and the
//! 3-2-1-1-0 rule, checked against the copies of the tenant's latest backup as
//! they were observed (immutability read back from the store, never taken from
//! configuration). Pure: the controllers and `fenice audit` gather the copies.

pub mod observed;

use std::collections::BTreeSet;

use crate::api::common::Provider;
use crate::api::policy::Rules;

/// One copy of a tenant's latest backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The BackupRepository that holds it.
    pub repository: String,
    pub provider: Provider,
    /// The store itself reported retention in force (a probe, not the spec).
    pub immutable: bool,
}

/// What the tenant's last verification (a restore check or a drill) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    Passed,
    Failed,
    /// Never verified: counts as an error for 3-2-1-1-0.
    Never,
}

/// One broken rule, said so that an SRE knows what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule, as the policy or 3-2-1-1-0 names it.
    pub rule: &'static str,
    pub message: String,
}

fn providers(copies: &[Copy], except: Option<Provider>) -> BTreeSet<String> {
    copies.iter().filter(|c| Some(c.provider) != except).map(|c| format!("{:?}", c.provider)).collect()
}

fn listed(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".into() } else { set.iter().cloned().collect::<Vec<_>>().join(", ") }
}

/// The policy's rules for `tenant`, whose primary site is at `primary`.
pub fn check_policy(tenant: &str, rules: &Rules, primary: Provider, copies: &[Copy]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule, message: String| out.push(Violation { rule, message });
    if (copies.len() as u32) < rules.min_copies {
        violation(
            "minCopies",
            format!(
                "tenant {tenant}'s latest backup has {} copies; the policy asks for {}",
                copies.len(),
                rules.min_copies
            ),
        );
    }
    let distinct = providers(copies, None);
    if (distinct.len() as u32) < rules.min_distinct_providers {
        let only = if distinct.len() == 1 { "only one provider holds" } else { "too few providers hold" };
        violation(
            "minDistinctProviders",
            format!(
                "{only} tenant {tenant}'s latest backup ({}); the policy asks for {}",
                listed(&distinct),
                rules.min_distinct_providers
            ),
        );
    }
    for copy in copies {
        if rules.forbid_primary_provider && copy.provider == primary {
            violation(
                "forbidPrimaryProvider",
                format!(
                    "repository {} is at {:?}, the provider of tenant {tenant}'s primary site: it would die with it",
                    copy.repository, copy.provider
                ),
            );
        }
        if rules.forbidden_providers.contains(&copy.provider) {
            violation(
                "forbiddenProviders",
                format!("repository {} is at {:?}, which the policy forbids", copy.repository, copy.provider),
            );
        }
        if rules.require_immutable && !copy.immutable {
            violation(
                "requireImmutable",
                format!(
                    "repository {} does not hold tenant {tenant}'s backup under retention (checked at the store)",
                    copy.repository
                ),
            );
        }
    }
    out
}

/// The 3-2-1-1-0 rule: at least 3 copies of the data (the live database and
/// its backup copies), backups at 2 distinct providers other than the
/// primary's (which makes 1 off-site), 1 copy immutable at the store, and 0
/// errors in the last verification.
pub fn check_3_2_1_1_0(tenant: &str, primary: Provider, copies: &[Copy], verification: Verification) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut violation = |rule, message: String| out.push(Violation { rule, message });
    if copies.len() + 1 < 3 {
        violation(
            "3 copies",
            format!("tenant {tenant} has its live data and {} backup copies: 3 in all are needed", copies.len()),
        );
    }
    let elsewhere = providers(copies, Some(primary));
    if elsewhere.len() < 2 {
        violation(
            "2 providers",
            format!(
                "tenant {tenant}'s backups are at {} provider(s) other than its primary's {primary:?} ({}): 2 are needed",
                elsewhere.len(),
                listed(&elsewhere)
            ),
        );
    }
    if elsewhere.is_empty() {
        violation("1 off-site", format!("no copy of tenant {tenant} is outside its primary's provider {primary:?}"));
    }
    if !copies.iter().any(|c| c.immutable) {
        violation("1 immutable", format!("no copy of tenant {tenant} is under retention at its store"));
    }
    match verification {
        Verification::Passed => {}
        Verification::Failed => violation("0 errors", format!("tenant {tenant}'s last verification or drill failed")),
        Verification::Never => {
            violation("0 errors", format!("tenant {tenant}'s backups were never verified by a restore or a drill"))
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(repository: &str, provider: Provider, immutable: bool) -> Copy {
        Copy { repository: repository.into(), provider, immutable }
    }

    fn strict() -> Rules {
        Rules {
            min_copies: 2,
            min_distinct_providers: 2,
            forbid_primary_provider: true,
            forbidden_providers: vec![Provider::Aruba],
            require_immutable: true,
        }
    }

    #[test]
    fn two_locked_copies_at_two_other_providers_satisfy_both_rules() {
        let copies = [copy("azure-italynorth", Provider::Azure, true), copy("ovh-milan", Provider::Ovhcloud, true)];
        assert_eq!(check_policy("acme", &strict(), Provider::Westpole, &copies), vec![]);
        assert_eq!(check_3_2_1_1_0("acme", Provider::Westpole, &copies, Verification::Passed), vec![]);
    }

    #[test]
    fn each_broken_rule_is_named_with_what_to_change() {
        // One copy, at the primary's provider, unlocked, never verified.
        let copies = [copy("westpole-nas", Provider::Westpole, false)];
        let policy: Vec<&str> =
            check_policy("acme", &strict(), Provider::Westpole, &copies).iter().map(|v| v.rule).collect();
        assert_eq!(policy, ["minCopies", "minDistinctProviders", "forbidPrimaryProvider", "requireImmutable"]);
        let found = check_3_2_1_1_0("acme", Provider::Westpole, &copies, Verification::Never);
        let rules: Vec<&str> = found.iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["3 copies", "2 providers", "1 off-site", "1 immutable", "0 errors"]);
        let message = &check_policy("acme", &strict(), Provider::Westpole, &copies)[1].message;
        assert!(message.starts_with("only one provider holds tenant acme's latest backup"), "{message}");
        // A forbidden provider, and a failed drill.
        let copies = [copy("aruba", Provider::Aruba, true), copy("ovh", Provider::Ovhcloud, true)];
        let policy = check_policy("acme", &strict(), Provider::Westpole, &copies);
        assert_eq!(policy.iter().map(|v| v.rule).collect::<Vec<_>>(), ["forbiddenProviders"]);
        let found = check_3_2_1_1_0("acme", Provider::Westpole, &copies, Verification::Failed);
        assert_eq!(found.iter().map(|v| v.rule).collect::<Vec<_>>(), ["0 errors"]);
    }
}
