//! The environment the agents in a tenant's pods open its repositories with
//! (`fenice agent wal-push` in PostgreSQL's archive_command, the backup and
//! restore Jobs): the same variables a person sets to run `fenice repo` by
//! hand. One process opens every repository with one password, one S3
//! configuration and one Azure configuration; repositories that need two of
//! either cannot be handed to one agent, and say so.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::api::common::StoreType;
use crate::api::repository::BackupRepositorySpec;
use crate::store::location::Location;
use crate::store::open::AZURE_SAS_ENV;

/// A repository with the secret values it is opened with.
pub struct RepositoryAccess<'a> {
    pub name: &'a str,
    pub spec: &'a BackupRepositorySpec,
    /// From `passwordSecretRef`.
    pub password: Zeroizing<String>,
    /// S3: the keys of `credentialsSecretRef` (AWS_ACCESS_KEY_ID, …); Azure:
    /// the SAS URL of `sasUrlSecretRef` under [`AZURE_SAS_ENV`].
    pub credentials: BTreeMap<String, Zeroizing<String>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("the tenant's BackupPolicy names no repository: its database cannot archive WAL")]
    NoRepository,
    #[error(
        "BackupRepository {name} is a Filesystem repository, a path on the operator's machine: pods at a \
         Kubernetes site cannot reach it; use S3 or Azure Blob"
    )]
    Filesystem { name: String },
    #[error("BackupRepository {name}: spec.storage has no {what}")]
    Incomplete { name: String, what: &'static str },
    // NB: names the setting, never its values: two of them may be secrets.
    #[error(
        "BackupRepositories {first} and {second} differ in {what}: the agents open every repository of a tenant \
         with one; give them the same, or split the tenants between two policies"
    )]
    Conflict { first: String, second: String, what: &'static str },
}

/// One variable, and which repository set it.
type Set = BTreeMap<&'static str, (String, Zeroizing<String>)>;

fn set(env: &mut Set, repository: &str, key: &'static str, value: &str, what: &'static str) -> Result<(), EnvError> {
    match env.get(key) {
        Some((first, known)) if known.as_str() != value => {
            Err(EnvError::Conflict { first: first.clone(), second: repository.to_owned(), what })
        }
        Some(_) => Ok(()),
        None => {
            env.insert(key, (repository.to_owned(), Zeroizing::new(value.to_owned())));
            Ok(())
        }
    }
}

/// Where the agents that open the repositories run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// In pods at a Kubernetes site: a path on the operator's machine is out of reach.
    Pods,
    /// On the operator's own machine (the Local site driver): a path is reachable.
    OperatorMachine,
}

/// The location the agents open the repository `name` at, as `--repo` takes it.
pub fn location(name: &str, spec: &BackupRepositorySpec, reach: Reach) -> Result<Location, EnvError> {
    let storage = &spec.storage;
    let incomplete = |what| EnvError::Incomplete { name: name.to_owned(), what };
    match storage.type_ {
        StoreType::Filesystem if reach == Reach::Pods => Err(EnvError::Filesystem { name: name.to_owned() }),
        StoreType::Filesystem => {
            let fs = storage.filesystem.as_ref().ok_or(incomplete("filesystem"))?;
            Ok(Location::Filesystem { path: fs.path.clone().into() })
        }
        StoreType::S3 => {
            let s3 = storage.s3.as_ref().ok_or(incomplete("s3"))?;
            Ok(Location::S3 { bucket: s3.bucket.clone(), prefix: s3.prefix.clone().unwrap_or_default() })
        }
        StoreType::AzureBlob => {
            let az = storage.azure_blob.as_ref().ok_or(incomplete("azureBlob"))?;
            let prefix = az.prefix.clone().unwrap_or_default();
            Ok(Location::Azure { account: az.account.clone(), container: az.container.clone(), prefix })
        }
    }
}

/// The variables, by name. Values may be secrets: they go into a Secret, or
/// the environment of the operator's own children, only.
pub fn agent_env(
    repositories: &[RepositoryAccess<'_>],
    reach: Reach,
) -> Result<BTreeMap<String, Zeroizing<String>>, EnvError> {
    if repositories.is_empty() {
        return Err(EnvError::NoRepository);
    }
    let mut env = Set::new();
    let mut locations = Vec::new();
    for repo in repositories {
        let name = repo.name;
        let storage = &repo.spec.storage;
        set(&mut env, name, "FENICE_PASSWORD", &repo.password, "password")?;
        locations.push(location(name, repo.spec, reach)?.to_string());
        match storage.type_ {
            StoreType::Filesystem => {}
            StoreType::S3 => {
                let s3 = storage.s3.as_ref().ok_or(EnvError::Incomplete { name: name.to_owned(), what: "s3" })?;
                if let Some(endpoint) = &s3.endpoint {
                    set(&mut env, name, "AWS_ENDPOINT_URL", endpoint, "S3 endpoint")?;
                }
                if let Some(region) = &s3.region {
                    set(&mut env, name, "AWS_REGION", region, "S3 region")?;
                }
                let style = if s3.force_path_style { "true" } else { "false" };
                set(&mut env, name, "FENICE_S3_PATH_STYLE", style, "S3 path style")?;
                for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
                    if let Some(value) = repo.credentials.get(key) {
                        set(&mut env, name, key, value, "S3 credentials")?;
                    }
                }
            }
            StoreType::AzureBlob => {
                let az = storage
                    .azure_blob
                    .as_ref()
                    .ok_or(EnvError::Incomplete { name: name.to_owned(), what: "azureBlob" })?;
                if let Some(endpoint) = &az.endpoint {
                    set(&mut env, name, "FENICE_AZURE_ENDPOINT", endpoint, "Azure Blob endpoint")?;
                }
                if let Some(sas) = repo.credentials.get(AZURE_SAS_ENV) {
                    set(&mut env, name, AZURE_SAS_ENV, sas, "Azure SAS URL")?;
                }
            }
        }
    }
    let mut out: BTreeMap<String, Zeroizing<String>> =
        env.into_iter().map(|(key, (_, value))| (key.to_owned(), value)).collect();
    out.insert("FENICE_REPOSITORY".into(), Zeroizing::new(locations.join(",")));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(storage: serde_json::Value) -> BackupRepositorySpec {
        serde_json::from_value(json!({
            "provider": "Aws", "storage": storage, "immutability": {"enabled": false},
            "passwordSecretRef": {"name": "p", "key": "password"},
        }))
        .unwrap()
    }

    fn access<'a>(
        name: &'a str,
        spec: &'a BackupRepositorySpec,
        password: &str,
        creds: &[(&str, &str)],
    ) -> RepositoryAccess<'a> {
        RepositoryAccess {
            name,
            spec,
            password: Zeroizing::new(password.into()),
            credentials: creds.iter().map(|(k, v)| ((*k).to_owned(), Zeroizing::new((*v).to_owned()))).collect(),
        }
    }

    #[test]
    fn an_s3_and_an_azure_repository_make_one_environment() {
        let s3 = spec(json!({"type": "S3", "s3": {
            "bucket": "backups", "prefix": "tenants", "endpoint": "https://s3.example", "region": "eu-south-1",
            "forcePathStyle": true, "credentialsSecretRef": {"name": "c"},
        }}));
        let az = spec(json!({"type": "AzureBlob", "azureBlob": {
            "account": "fenice", "container": "backups", "sasUrlSecretRef": {"name": "s", "key": "url"},
        }}));
        let env = agent_env(
            &[
                access("ovh", &s3, "pw", &[("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "key")]),
                access("azure", &az, "pw", &[(AZURE_SAS_ENV, "https://fenice.blob/?sig=x")]),
            ],
            Reach::Pods,
        )
        .unwrap();
        let shown: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(shown["FENICE_REPOSITORY"], "s3://backups/tenants,az://fenice/backups");
        assert_eq!(shown["FENICE_PASSWORD"], "pw");
        assert_eq!(shown["AWS_ENDPOINT_URL"], "https://s3.example");
        assert_eq!(shown["FENICE_S3_PATH_STYLE"], "true");
        assert_eq!(shown["AWS_SECRET_ACCESS_KEY"], "key");
        assert_eq!(shown[AZURE_SAS_ENV], "https://fenice.blob/?sig=x");
    }

    #[test]
    fn what_one_agent_cannot_hold_is_named_without_values() {
        let s3 = spec(json!({"type": "S3", "s3": {"bucket": "a"}}));
        let Err(error) = agent_env(
            &[access("one", &s3, "first-secret", &[]), access("two", &s3, "second-secret", &[])],
            Reach::Pods,
        ) else {
            panic!("two passwords in one environment")
        };
        assert_eq!(error, EnvError::Conflict { first: "one".into(), second: "two".into(), what: "password" });
        let shown = error.to_string();
        assert!(!shown.contains("secret"), "{shown}");
        let fs = spec(json!({"type": "Filesystem", "filesystem": {"path": "/backups"}}));
        assert!(
            matches!(agent_env(&[access("nas", &fs, "pw", &[])], Reach::Pods), Err(EnvError::Filesystem { name }) if name == "nas")
        );
        assert!(matches!(agent_env(&[], Reach::Pods), Err(EnvError::NoRepository)));
        // The operator's own children reach a path on its machine.
        let here = agent_env(&[access("nas", &fs, "pw", &[])], Reach::OperatorMachine).unwrap();
        assert_eq!(here["FENICE_REPOSITORY"].as_str(), "/backups");
    }
}
