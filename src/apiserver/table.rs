//! Server-side printing: a `meta.k8s.io/v1` Table built from a CRD's
//! `additionalPrinterColumns`, for `kubectl get` (which asks for one with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`). Kinds without
//! printer columns answer with the plain object or list, which kubectl
//! prints itself as NAME and AGE. Also the metadata-only form kube's
//! `metadata_watcher` asks for.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;
use serde_json::{Value, json};

/// What a client asked to get rows with (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(text: Option<&str>) -> IncludeObject {
        match text {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|media| media.contains("as=Table") && media.contains("g=meta.k8s.io"))
}

/// Whether an Accept header asks for metadata only
/// (`as=PartialObjectMetadata` or `as=PartialObjectMetadataList`).
pub fn metadata_only(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|media| media.contains("as=PartialObjectMetadata"))
}

/// An object reduced to its metadata, as a `PartialObjectMetadata`.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// How to print one resource version.
#[derive(Clone, Debug)]
pub struct Printer {
    columns: Vec<CustomResourceColumnDefinition>,
    include: IncludeObject,
}

impl Printer {
    /// A printer for these columns, or `None` when there are none.
    pub fn new(columns: &[CustomResourceColumnDefinition], include: IncludeObject) -> Option<Printer> {
        (!columns.is_empty()).then(|| Printer { columns: columns.to_vec(), include })
    }

    fn definitions(&self) -> Vec<Value> {
        let mut definitions = vec![json!({
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        })];
        for column in &self.columns {
            definitions.push(json!({
                "name": column.name,
                "type": column.type_,
                "format": column.format.clone().unwrap_or_default(),
                "description": column.description.clone().unwrap_or_default(),
                "priority": column.priority.unwrap_or(0),
            }));
        }
        definitions
    }

    fn row(&self, object: &Value, now: jiff::Timestamp) -> Value {
        let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
        let mut cells = vec![name];
        cells.extend(self.columns.iter().map(|c| cell(object, c, now)));
        let mut row = json!({"cells": cells});
        match self.include {
            IncludeObject::None => {}
            IncludeObject::Object => row["object"] = object.clone(),
            IncludeObject::Metadata => row["object"] = partial_metadata(object),
        }
        row
    }

    /// A Table of `objects`; `with_definitions` false leaves out the column
    /// definitions (watch events after the first).
    pub fn table(&self, objects: &[Value], resource_version: Option<String>, with_definitions: bool) -> Value {
        let now = jiff::Timestamp::now();
        let mut metadata = json!({});
        if let Some(rv) = resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "columnDefinitions": if with_definitions { self.definitions() } else { Vec::new() },
            "rows": objects.iter().map(|o| self.row(o, now)).collect::<Vec<_>>(),
        })
    }
}

fn cell(object: &Value, column: &CustomResourceColumnDefinition, now: jiff::Timestamp) -> Value {
    let found = evaluate(object, &column.json_path);
    let Some(first) = found.first() else { return Value::Null };
    match column.type_.as_str() {
        "date" => match first.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
            Some(then) => json!(human_duration(now.as_second() - then.as_second())),
            None => Value::Null,
        },
        "string" if found.len() > 1 => {
            let texts: Vec<String> = found.iter().map(|v| plain(v)).collect();
            json!(texts.join(","))
        }
        "string" => json!(plain(first)),
        _ => (*first).clone(),
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `5m`, `2d3h`: like Kubernetes' `duration.HumanDuration`.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    let pair = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{small_unit}") }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        pair(minutes, "m", seconds % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        pair(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        pair(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if years < 8 {
        pair(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

/// One step of the JSONPath subset printer columns use.
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.a.b=="x")]`
    Filter(Vec<String>, Value),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}').trim();
    let mut steps = Vec::new();
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            steps.push(Step::Field(after[..end].to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inside = &after[..end];
            rest = &after[end + 1..];
            if inside == "*" {
                steps.push(Step::All);
            } else if let Ok(index) = inside.parse() {
                steps.push(Step::Index(index));
            } else {
                let filter = inside.strip_prefix("?(@.")?.strip_suffix(')')?;
                let (field, value) = filter.split_once("==")?;
                let value = value.trim();
                let value = serde_json::from_str(value)
                    .or_else(|_| serde_json::from_str(&format!("\"{}\"", value.trim_matches('\''))))
                    .ok()?;
                steps.push(Step::Filter(field.trim().split('.').map(str::to_owned).collect(), value));
            }
        } else {
            return None;
        }
    }
    Some(steps)
}

fn evaluate<'v>(object: &'v Value, path: &str) -> Vec<&'v Value> {
    let Some(steps) = parse(path) else { return Vec::new() };
    let mut current = vec![object];
    for step in steps {
        current = current
            .into_iter()
            .flat_map(|value| -> Vec<&'v Value> {
                match &step {
                    Step::Field(name) => value.get(name).into_iter().collect(),
                    Step::Index(i) => value.get(*i).into_iter().collect(),
                    Step::All => value.as_array().map(|a| a.iter().collect()).unwrap_or_default(),
                    Step::Filter(field, wanted) => value
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .filter(|item| {
                                    field.iter().try_fold(*item, |v, f| v.get(f)).is_some_and(|v| v == wanted)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
    }
    current
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{evaluate, human_duration};

    #[test]
    fn printer_column_paths_find_their_values() {
        let object = json!({"spec": {"tier": "Gold"}, "status": {"conditions": [
            {"type": "Progressing", "status": "False"},
            {"type": "Ready", "status": "True"},
        ]}});
        assert_eq!(evaluate(&object, ".spec.tier"), [&json!("Gold")]);
        assert_eq!(evaluate(&object, ".status.conditions[?(@.type==\"Ready\")].status"), [&json!("True")]);
        assert_eq!(evaluate(&object, ".status.conditions[0].type"), [&json!("Progressing")]);
        assert_eq!(evaluate(&object, ".status.conditions[*].type").len(), 2);
        assert!(evaluate(&object, ".status.missing").is_empty());
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (seconds, want) in [(5, "5s"), (130, "2m10s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (50 * 3600, "2d2h")] {
            assert_eq!(human_duration(seconds), want);
        }
    }
}
