//! The operator's controllers run in the test process against an in-memory
//! API server, as their own user (so that tests/common/rbac.rs can check what
//! they did), until the returned sender is used or dropped; and what they did
//! checked against the grants (with tests/common/rbac.rs, which the test must
//! include as `rbac`).

use std::sync::Arc;

use fenice::apiserver;
use fenice::apiserver::access::Access;
use fenice::controller::{Context, local_sites::LocalSites, metrics::Metrics};
use kube::Client;

pub async fn run(
    control: &apiserver::Running,
    user: &str,
    namespace: &str,
    state: &std::path::Path,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    run_at(control, user, namespace, state, None).await
}

/// [`run`] as the operator of `site` (`fenice operator --site`), which runs its lease agents.
#[allow(dead_code)]
pub async fn run_at(
    control: &apiserver::Running,
    user: &str,
    namespace: &str,
    state: &std::path::Path,
    site: Option<&str>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&control.kubeconfig_as(user)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    let local = Arc::new(LocalSites::new(state, std::path::Path::new(env!("CARGO_BIN_EXE_fenice"))));
    let mut ctx = Context::new(client, namespace, None, Arc::new(Metrics::default()), local);
    ctx.site = site.map(str::to_owned);
    let ctx = Arc::new(ctx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(fenice::controller::run(ctx, async move {
        let _ = stopped.await;
    }));
    (stop, running)
}

/// What the operator (`operator_user`) did in its own cluster (`control`) is
/// allowed by manifests/rbac.yaml plus the site Role in `namespace` (a Site
/// may be the operator's own cluster); what it did at `site` as `site_user`,
/// by that Role alone, and it did something there.
pub fn within(control: &[Access], operator_user: &str, site: &[Access], site_user: &str, namespace: &str) {
    let site_role = crate::rbac::grants("manifests/site/tenant-namespace-rbac.yaml", Some(namespace));
    let mut operator = crate::rbac::grants("manifests/rbac.yaml", None);
    operator.extend(site_role.iter().cloned());
    let refused = crate::rbac::denied(control, operator_user, &operator);
    assert!(refused.is_empty(), "beyond what the operator is granted:\n{}", refused.join("\n"));
    let refused = crate::rbac::denied(site, site_user, &site_role);
    assert!(refused.is_empty(), "beyond the site Role:\n{}", refused.join("\n"));
    assert!(site.iter().any(|a| a.user == site_user), "the site saw no request from the driver");
}
