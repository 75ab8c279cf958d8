//! A client per Kubernetes site: the operator's own for `inCluster: true`,
//! otherwise one made from the kubeconfig in the Site's Secret, kept while
//! that kubeconfig stays the same. The Secret is read at most once per
//! [`FRESH_FOR`], not once per tenant: a rotated kubeconfig is used within it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::secrets;
use crate::api::site::Site;
use crate::site::cluster::SiteCluster;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Site {site} has no spec.cluster.kubeconfigSecretRef and is not inCluster: say how to reach its cluster")]
    NoAccess { site: String },
    #[error("Site {site}: reading its kubeconfig")]
    Secret {
        site: String,
        #[source]
        source: secrets::Error,
    },
    // NB: no source: a kubeconfig parse error may quote the text, and the text holds credentials.
    #[error(
        "Site {site}: Secret {secret}, key {key:?}, is not a usable kubeconfig (YAML with clusters, users and a \
         current context); `kubectl --kubeconfig FILE get ns` tells what is wrong with it"
    )]
    Kubeconfig { site: String, secret: String, key: String },
}

/// How long what was read from a Site's Secret (or a policy's repositories) is used without reading it again.
pub const FRESH_FOR: Duration = Duration::from_secs(60);

/// A remote site's client, the kubeconfig it was made from, and when that was read.
struct Remote {
    /// `namespace/name/key` of the Secret.
    reference: String,
    hash: blake3::Hash,
    client: Client,
    read_at: Instant,
}

#[derive(Default)]
pub struct SiteClients {
    remote: Mutex<HashMap<String, Remote>>,
}

impl SiteClients {
    /// The cluster of `site`; `own` is the operator's client and `namespace` its namespace.
    pub async fn cluster(&self, own: &Client, namespace: &str, site: &Site) -> Result<SiteCluster, Error> {
        let name = site.metadata.name.clone().unwrap_or_default();
        let access = site.spec.cluster.as_ref();
        if access.is_some_and(|a| a.in_cluster) {
            return Ok(SiteCluster { site: name, client: own.clone(), local: true });
        }
        let reference =
            access.and_then(|a| a.kubeconfig_secret_ref.as_ref()).ok_or(Error::NoAccess { site: name.clone() })?;
        let secret = format!("{}/{}", reference.namespace.as_deref().unwrap_or(namespace), reference.name);
        let full = format!("{secret}/{}", reference.key);
        let known = |fresh: bool| {
            let remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            remote
                .get(&name)
                .filter(|r| r.reference == full && (!fresh || r.read_at.elapsed() < FRESH_FOR))
                .map(|r| (r.hash, r.client.clone()))
        };
        if let Some((_, client)) = known(true) {
            return Ok(SiteCluster { site: name, client, local: false });
        }
        let text = secrets::key(own, namespace, reference)
            .await
            .map_err(|source| Error::Secret { site: name.clone(), source })?;
        let hash = blake3::hash(text.as_bytes());
        let remember = |client: &Client| {
            let remote = Remote { reference: full.clone(), hash, client: client.clone(), read_at: Instant::now() };
            self.remote.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), remote);
        };
        if let Some((_, client)) = known(false).filter(|(known, _)| *known == hash) {
            remember(&client);
            return Ok(SiteCluster { site: name, client, local: false });
        }
        let unusable = || Error::Kubeconfig { site: name.clone(), secret: secret.clone(), key: reference.key.clone() };
        let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|_| unusable())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|_| unusable())?;
        let client = Client::try_from(config).map_err(|_| unusable())?;
        remember(&client);
        Ok(SiteCluster { site: name, client, local: false })
    }
}
