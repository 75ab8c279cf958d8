//! Reading the Secrets resources reference. Values never reach logs, Events,
//! status or errors: errors name the Secret and the key only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use zeroize::Zeroizing;

use crate::api::common::{SecretKeyRef, SecretRef};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Secret {namespace}/{name} does not exist: create it, or fix the reference")]
    Missing { namespace: String, name: String },

    #[error("Secret {namespace}/{name} has no key {key:?}: add it, or fix the reference's key")]
    MissingKey { namespace: String, name: String, key: String },

    #[error("Secret {namespace}/{name}, key {key:?}, is not UTF-8 text")]
    NotText { namespace: String, name: String, key: String },

    #[error("reading Secret {namespace}/{name}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Every key of the Secret `name` in `namespace`, as text.
async fn read(client: &Client, namespace: &str, name: &str) -> Result<BTreeMap<String, Zeroizing<String>>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(Error::Missing { namespace: namespace.into(), name: name.into() }),
        Err(source) => return Err(Error::Api { namespace: namespace.into(), name: name.into(), source }),
    };
    let mut out = BTreeMap::new();
    for (key, value) in secret.data.unwrap_or_default() {
        let text = String::from_utf8(value.0).map_err(|_| Error::NotText {
            namespace: namespace.into(),
            name: name.into(),
            key: key.clone(),
        })?;
        out.insert(key, Zeroizing::new(text));
    }
    for (key, value) in secret.string_data.unwrap_or_default() {
        out.insert(key, Zeroizing::new(value));
    }
    Ok(out)
}

/// The value `reference` names; its namespace defaults to `default_namespace`.
pub async fn key(
    client: &Client,
    default_namespace: &str,
    reference: &SecretKeyRef,
) -> Result<Zeroizing<String>, Error> {
    let namespace = reference.namespace.as_deref().unwrap_or(default_namespace);
    let mut all = read(client, namespace, &reference.name).await?;
    all.remove(&reference.key).ok_or_else(|| Error::MissingKey {
        namespace: namespace.into(),
        name: reference.name.clone(),
        key: reference.key.clone(),
    })
}

/// Every key of the Secret `reference` names, and the namespace it was read in.
pub async fn all(
    client: &Client,
    default_namespace: &str,
    reference: &SecretRef,
) -> Result<BTreeMap<String, Zeroizing<String>>, Error> {
    let namespace = reference.namespace.as_deref().unwrap_or(default_namespace);
    read(client, namespace, &reference.name).await
}

/// `key` of `values`, or [`Error::MissingKey`].
pub fn required(
    values: &BTreeMap<String, Zeroizing<String>>,
    default_namespace: &str,
    reference: &SecretRef,
    key: &str,
) -> Result<String, Error> {
    values.get(key).map(|v| v.to_string()).ok_or_else(|| Error::MissingKey {
        namespace: reference.namespace.clone().unwrap_or_else(|| default_namespace.to_owned()),
        name: reference.name.clone(),
        key: key.to_owned(),
    })
}
