//! The operator's controllers run in the test process against an in-memory
//! API server, as their own user (so that tests/common/rbac.rs can check what
//! they did), until the returned sender is used or dropped.

use std::sync::Arc;

use fenice::apiserver;
use fenice::controller::{Context, local_sites::LocalSites, metrics::Metrics};
use kube::Client;

pub async fn run(
    control: &apiserver::Running,
    user: &str,
    namespace: &str,
    state: &std::path::Path,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&control.kubeconfig_as(user)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    let local = Arc::new(LocalSites::new(state, std::path::Path::new(env!("CARGO_BIN_EXE_fenice"))));
    let ctx = Arc::new(Context::new(client, namespace, None, Arc::new(Metrics::default()), local));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(fenice::controller::run(ctx, async move {
        let _ = stopped.await;
    }));
    (stop, running)
}
