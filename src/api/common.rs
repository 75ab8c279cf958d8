//! Types shared by several custom resources: providers, tiers, secret references,
//! durations, schedules, object-store locations and the conditions list.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A cloud provider: the failure domain. Two sites of one provider fail together
/// (December 2023: Rome and Milan went down at once), so rules about "another
/// provider" compare this value, never the region.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Provider {
    Westpole,
    Azure,
    Aws,
    Gcp,
    Ovhcloud,
    Aruba,
    Hetzner,
    /// A location on the operator's own premises, e.g. a NAS.
    OnPremises,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A tenant's service tier. Failover waves go in tier order and objectives and
/// resources follow from it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Tier {
    Gold,
    Silver,
    Bronze,
}

/// A key inside a Kubernetes Secret. Credentials and key material are only ever
/// referenced, never written inline into a resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret. For cluster-scoped resources it defaults to the
    /// operator's namespace; for namespaced ones, to the resource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret as a whole, for credentials made of several keys (for example
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults as for [`SecretKeyRef`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A tenant named by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantRef {
    pub namespace: String,
    pub name: String,
}

/// Recovery objectives of a tenant, the figures drills and failovers are judged by.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Objectives {
    /// Recovery point objective: the most recent work that may be lost.
    pub rpo: Duration,
    /// Recovery time objective: from the declared loss to serving again.
    pub rto: Duration,
}

const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// A duration written as Kubernetes users write them: `30s`, `5m`, `1h30m`, `90d`.
/// Units: ms, s, m, h, d (24 h). Validated by the API server through the schema's
/// pattern and again on deserialization.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

/// A string that is not a duration in the `1h30m` form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: write a number and a unit (ms, s, m, h, d), e.g. 30s, 5m, 1h30m, 90d")]
pub struct InvalidDuration {
    pub text: String,
}

impl Duration {
    /// The parsed value.
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    /// The value as written in the resource.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Formats a measured duration in the same notation, to whole seconds
    /// (e.g. `4m12s`), for status fields an SRE reads in `kubectl get`.
    pub fn from_std(d: std::time::Duration) -> Self {
        let mut secs = d.as_secs();
        let mut text = String::new();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs >= size {
                text.push_str(&format!("{}{unit}", secs / size));
                secs %= size;
            }
        }
        if secs > 0 || text.is_empty() {
            text.push_str(&format!("{secs}s"));
        }
        let value = std::time::Duration::from_secs(d.as_secs());
        Self { text, value }
    }
}

impl std::str::FromStr for Duration {
    type Err = InvalidDuration;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDuration { text: text.to_owned() };
        let mut value = std::time::Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
            if digits == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let millis_per_unit: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(invalid()),
            };
            let millis = number.checked_mul(millis_per_unit).ok_or_else(invalid)?;
            value = value.checked_add(std::time::Duration::from_millis(millis)).ok_or_else(invalid)?;
            rest = &rest[unit_len..];
        }
        Ok(Self { text: text.to_owned(), value })
    }
}

impl TryFrom<String> for Duration {
    type Error = InvalidDuration;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> Self {
        d.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 30s, 5m, 1h30m or 90d (units: ms, s, m, h, d).",
        })
    }
}

/// A cron schedule with five fields (minute hour day-of-month month day-of-week)
/// or one of the `@hourly`, `@daily`, `@weekly`, `@monthly` shorthands; the time
/// zone is a separate field of the resource that holds it.
pub fn cron_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$",
        "description": "Cron schedule: five fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly.",
    })
}

/// An IANA time zone name such as `Europe/Rome`.
pub fn time_zone_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": r"^(UTC|[A-Za-z_]+(/[A-Za-z0-9_+-]+)+)$",
        "default": "UTC",
        "description": "IANA time zone of the schedule, e.g. Europe/Rome.",
    })
}

/// An `http://` or `https://` URL.
pub fn url_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": r"^https?://[^\s/$.?#][^\s]*$",
        "maxLength": 2048,
    })
}

/// The `conditions` list: Kubernetes conditions, merged by `type` under
/// server-side apply so several field managers can own one condition each.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Which object-store service a location uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StoreType {
    S3,
    AzureBlob,
    Filesystem,
}

/// Where objects are kept: exactly one of `s3`, `azureBlob` or `filesystem`,
/// matching `type`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.type == 'S3') == has(self.s3)").message("storage: set s3 exactly when type is S3"),
    validation = Rule::new("(self.type == 'AzureBlob') == has(self.azureBlob)").message("storage: set azureBlob exactly when type is AzureBlob"),
    validation = Rule::new("(self.type == 'Filesystem') == has(self.filesystem)").message("storage: set filesystem exactly when type is Filesystem"),
)]
pub struct StoreLocation {
    /// The service: S3 (any S3-compatible endpoint), AzureBlob, or Filesystem.
    #[serde(rename = "type")]
    pub type_: StoreType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<AzureBlobLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemLocation>,
}

/// An S3 bucket and prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket, without a leading slash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service; AWS's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "url_schema")]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. When absent, the
    /// standard AWS credential chain applies (e.g. IRSA / workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// An Azure Blob Storage container and prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureBlobLocation {
    #[schemars(length(min = 3, max = 24), regex(pattern = r"^[a-z0-9]+$"))]
    pub account: String,
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9](-?[a-z0-9])+$"))]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Blob endpoint; `https://<account>.blob.core.windows.net` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "url_schema")]
    pub endpoint: Option<String>,
    /// Secret key holding a SAS URL for the container. When absent, Entra ID
    /// workload identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas_url_secret_ref: Option<SecretKeyRef>,
}

/// A directory, e.g. a mounted NAS share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemLocation {
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_kubernetes_notation() {
        let cases = [("30s", 30_000), ("5m", 300_000), ("1h30m", 5_400_000), ("90d", 7_776_000_000), ("250ms", 250)];
        for (text, millis) in cases {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_std().as_millis(), millis, "{text}");
            assert_eq!(d.as_str(), text);
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_text_and_the_fix() {
        for text in ["", "5", "m", "5x", "1.5h", "-1s", "5m 3s", "h1"] {
            let err = text.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
            assert!(err.to_string().contains("e.g. 30s"), "{err}");
        }
    }

    #[test]
    fn measured_durations_format_for_kubectl() {
        let cases = [(0, "0s"), (59, "59s"), (252, "4m12s"), (3_600, "1h"), (90_061, "1d1h1m1s")];
        for (secs, text) in cases {
            let d = Duration::from_std(std::time::Duration::from_secs(secs));
            assert_eq!(d.as_str(), text);
            assert_eq!(d.as_str().parse::<Duration>().unwrap().as_std().as_secs(), secs);
        }
    }
}
