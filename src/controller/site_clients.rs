//! A client per Kubernetes site: the operator's own for `inCluster: true`,
//! otherwise one made from the kubeconfig in the Site's Secret, kept while
//! that kubeconfig stays the same (a rotated Secret gives a new client).

use std::collections::HashMap;
use std::sync::Mutex;

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

#[derive(Default)]
pub struct SiteClients {
    /// By site: the kubeconfig's hash and the client made from it.
    remote: Mutex<HashMap<String, (blake3::Hash, Client)>>,
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
        let text = secrets::key(own, namespace, reference)
            .await
            .map_err(|source| Error::Secret { site: name.clone(), source })?;
        let hash = blake3::hash(text.as_bytes());
        if let Some((known, client)) = self.remote.lock().unwrap_or_else(|e| e.into_inner()).get(&name)
            && *known == hash
        {
            return Ok(SiteCluster { site: name, client: client.clone(), local: false });
        }
        let unusable = || Error::Kubeconfig {
            site: name.clone(),
            secret: format!("{}/{}", reference.namespace.as_deref().unwrap_or(namespace), reference.name),
            key: reference.key.clone(),
        };
        let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|_| unusable())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|_| unusable())?;
        let client = Client::try_from(config).map_err(|_| unusable())?;
        self.remote.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), (hash, client.clone()));
        Ok(SiteCluster { site: name, client, local: false })
    }
}
