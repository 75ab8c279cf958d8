//! How the lab's primary is lost: its machines killed, or its network cut.
//! A cut site keeps running: its own lease agent must fence it before the
//! lease can expire for the standby, and once the network is back it must
//! find the higher epoch and stay fenced, without transmitting anything.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::testkit::NetNs;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL to every process of the primary, as when its machines die.
    #[default]
    Kill,
    /// The primary's network cut (its processes run in a network namespace,
    /// whose one link goes down): everything keeps running, unreachable.
    NetworkCut,
}

/// A runtime on a thread of its own inside a site's network namespace: what
/// runs on it reaches others, and is reached, only over the site's link.
/// Dropping it stops the runtime and everything spawned on it.
pub struct SiteRuntime {
    stop: Option<oneshot::Sender<()>>,
}

impl SiteRuntime {
    /// Enters `netns` on a new thread, and runs `start` on a runtime there;
    /// what `start` spawns keeps running until this value is dropped.
    pub async fn start<T, F, Fut>(netns: Arc<NetNs>, start: F) -> anyhow::Result<(Self, T)>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("site {}", netns.name());
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let runtime = netns.enter().map_err(anyhow::Error::from).and_then(|()| {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    Ok(runtime)
                });
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = start().await;
                    let ok = started.is_ok();
                    if ready_tx.send(started).is_ok() && ok {
                        let _ = stopped.await;
                    }
                });
            })
            .with_context(|| format!("starting a thread for {name}"))?;
        let value = ready_rx.await.with_context(|| format!("{name}: the thread ended before it started"))??;
        Ok((Self { stop: Some(stop) }, value))
    }
}

impl Drop for SiteRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
