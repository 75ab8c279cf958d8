//! `fenice apiserver`: an in-memory Kubernetes API server for trying Fenice
//! and for tests. Not for production: no authentication, no persistence, one
//! process.
//!
//! The operator runs against it unchanged, through an ordinary kubeconfig
//! and kube-rs's `Client`, `Api`, `watcher` and `Controller`.
//! docs/apiserver.md says what it implements and where it differs from the
//! real server. The parts: [`store`] keeps objects and the change history,
//! [`verbs`] gives each verb the real server's rules, [`schema`] prunes,
//! defaults and validates custom resources, [`managed`] does field ownership
//! and server-side apply, [`patch`] the other patch formats, [`watch`] the
//! streams, [`selector`] label and field selectors, [`discovery`] the
//! discovery documents, [`http`] the routes, [`status`] the error bodies.

pub mod access;
mod discovery;
mod http;
mod managed;
mod patch;
mod protobuf;
mod resources;
mod schema;
mod selector;
mod status;
mod store;
mod table;
mod verbs;
mod watch;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use status::ApiError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("in-memory API server: CustomResourceDefinition {name} cannot be loaded: {source}")]
    LoadCrd {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("in-memory API server: the initial namespace {name} cannot be created: {source}")]
    LoadNamespace {
        name: String,
        #[source]
        source: ApiError,
    },

    #[error("in-memory API server: cannot read the address it listens on")]
    LocalAddr {
        #[source]
        source: io::Error,
    },

    #[error("in-memory API server: cannot listen on 127.0.0.1: is the loopback interface up?")]
    Bind {
        #[source]
        source: io::Error,
    },

    #[error("in-memory API server: serving HTTP on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("in-memory API server: the kubeconfig it writes does not load")]
    Kubeconfig {
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("in-memory API server: cannot build a client for it")]
    Client {
        #[source]
        source: kube::Error,
    },

    #[error("in-memory API server: the server task ended abnormally")]
    Join {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl std::error::Error for ApiError {}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How many changes (across all kinds) are kept for watches to resume
    /// from; a watch from an older resourceVersion gets 410 Gone.
    pub history: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// The CRDs served from the start; more can be created through the API.
    pub crds: Vec<CustomResourceDefinition>,
}

impl Default for ServerOptions {
    /// 10 000 changes of history, a bookmark every 15 s, and Fenice's CRDs.
    fn default() -> Self {
        ServerOptions { history: 10_000, bookmark_interval: Duration::from_secs(15), crds: crate::api::crds() }
    }
}

/// An in-memory API server, loaded and ready to serve.
pub struct ApiServer {
    shared: Arc<http::Shared>,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiServer {
    /// Builds the store: the built-in kinds, the initial namespaces and the CRDs of `options`.
    pub fn new(options: ServerOptions) -> Result<ApiServer> {
        let mut store = store::Store::new(resources::Registry::builtin(), options.history);
        for crd in &options.crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let object = serde_json::to_value(crd)
                .map_err(|e| ApiError::internal(format!("serializing the CRD: {e}")))
                .and_then(|object| verbs::preload_crd(&mut store, &object));
            object.map_err(|source| Error::LoadCrd { name, source })?;
        }
        for namespace in INITIAL_NAMESPACES {
            verbs::preload_namespace(&mut store, namespace)
                .map_err(|source| Error::LoadNamespace { name: (*namespace).to_owned(), source })?;
        }
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(http::Shared::new(store, options.bookmark_interval, stopping_rx));
        Ok(ApiServer { shared, stopping })
    }

    /// Serves on `listener` until `shutdown` completes; open watches are then
    /// ended so that the server stops promptly.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = listener.local_addr().map_err(|source| Error::LocalAddr { source })?;
        let stopping = self.stopping;
        let graceful = async move {
            shutdown.await;
            // NB: an error only means no watch is open.
            let _ = stopping.send(true);
        };
        tracing::info!(%addr, "in-memory API server serving");
        axum::serve(listener, http::router(self.shared))
            .with_graceful_shutdown(graceful)
            .await
            .map_err(|source| Error::Serve { addr, source })
    }
}

/// Serves Fenice's CRDs and the built-in kinds with default options until
/// `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    ApiServer::new(ServerOptions::default())?.serve(listener, shutdown).await
}

/// A kubeconfig for a server at `addr`: cluster, user (no credentials) and
/// context all named `fenice-memory`, the context current.
pub fn kubeconfig(addr: SocketAddr) -> String {
    kubeconfig_as(addr, None)
}

/// [`kubeconfig`] whose user sends `token`: how the server tells clients
/// apart in [`Running::accesses`] (it authenticates nobody).
pub fn kubeconfig_as(addr: SocketAddr, token: Option<&str>) -> String {
    let user = token.map_or("{}".to_owned(), |t| format!("{{token: {t}}}"));
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fenice-memory
  cluster:
    server: http://{addr}
users:
- name: fenice-memory
  user: {user}
contexts:
- name: fenice-memory
  context:
    cluster: fenice-memory
    user: fenice-memory
    namespace: default
current-context: fenice-memory
preferences: {{}}
"
    )
}

/// A server running in this process on a free loopback port, for tests and
/// the lab; it stops when dropped.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

/// Starts a server on `127.0.0.1:0` in the current tokio runtime.
pub async fn spawn(options: ServerOptions) -> Result<Running> {
    let server = ApiServer::new(options)?;
    let shared = server.shared.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|source| Error::Bind { source })?;
    let addr = listener.local_addr().map_err(|source| Error::LocalAddr { source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr, shared, stop: Some(stop), task: Some(task) })
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig that reaches this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(self.addr)
    }

    /// A kube client built from [`Running::kubeconfig`], the way the
    /// operator builds one from a kubeconfig file.
    pub async fn client(&self) -> Result<kube::Client> {
        let config =
            kube::config::Kubeconfig::from_yaml(&self.kubeconfig()).map_err(|source| Error::Kubeconfig { source })?;
        let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig { source })?;
        kube::Client::try_from(config).map_err(|source| Error::Client { source })
    }

    /// [`Running::kubeconfig`] for a client that sends `token`.
    pub fn kubeconfig_as(&self, token: &str) -> String {
        kubeconfig_as(self.addr, Some(token))
    }

    /// Every distinct request to a resource so far, by user, verb, resource and namespace.
    pub fn accesses(&self) -> Vec<access::Access> {
        self.shared.accesses.all()
    }

    /// Drops the change history and ends every open watch with a 410 Gone,
    /// as a real server does after etcd compacts or restarts: clients must
    /// list again. For testing that they do.
    pub fn compact(&self) {
        self.shared.compact();
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) -> Result<()> {
        self.halt().await
    }

    /// Stops the server and waits until it has, keeping what it recorded
    /// ([`accesses`](Self::accesses)): a cluster lost with its provider.
    pub async fn halt(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|source| Error::Join { source })?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
