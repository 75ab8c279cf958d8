//! What the real server does to a custom resource with a structural schema
//! before storing it: prune unknown fields, apply `default`s, validate.
//!
//! NB: CEL rules (`x-kubernetes-validations`) are not evaluated: no CEL
//! interpreter is available to the library. Everything else a CRD schema
//! says is checked: types, `required`, `enum`, `pattern`, `format: date-time`,
//! `minimum`/`maximum` (and exclusive), `multipleOf`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `uniqueItems`, list-type map/set uniqueness,
//! `minProperties`/`maxProperties`, `nullable`, `anyOf`/`allOf`/`oneOf`/`not`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::{Map, Value};

use super::status::Cause;
use regex::Regex;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// What admission found: fields it pruned and what is invalid.
#[derive(Debug, Default)]
pub struct Report {
    /// Paths of unknown fields that were removed (`spec.foo`).
    pub pruned: Vec<String>,
    pub causes: Vec<Cause>,
}

/// The fields of ObjectMeta; anything else under `metadata` is pruned.
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Prunes, defaults and validates a whole object against its version's root schema.
pub fn admit(object: &mut Value, root: &JSONSchemaProps) -> Report {
    let mut report = Report::default();
    if let Some(fields) = object.as_object_mut() {
        prune_root(fields, root, &mut report.pruned);
        default_fields(fields, root);
    }
    validate_root(object, root, &mut report.causes);
    report
}

fn prune_root(fields: &mut Map<String, Value>, root: &JSONSchemaProps, pruned: &mut Vec<String>) {
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Some(meta) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.retain(|k, _| {
                        let known = OBJECT_META.contains(&k.as_str());
                        if !known {
                            pruned.push(format!("metadata.{k}"));
                        }
                        known
                    });
                }
            }
            _ => match property(root, &key) {
                Some(schema) => {
                    if let Some(value) = fields.get_mut(&key) {
                        prune(value, schema, &key, pruned);
                    }
                }
                None if preserves(root) => {}
                None => {
                    fields.remove(&key);
                    pruned.push(key);
                }
            },
        }
    }
}

fn preserves(schema: &JSONSchemaProps) -> bool {
    schema.x_kubernetes_preserve_unknown_fields == Some(true)
}

/// The schema of a named property: from `properties`, else `additionalProperties`.
fn property<'s>(schema: &'s JSONSchemaProps, name: &str) -> Option<&'s JSONSchemaProps> {
    if let Some(found) = schema.properties.as_ref().and_then(|p| p.get(name)) {
        return Some(found);
    }
    match &schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s),
        _ => None,
    }
}

/// The schema of list items.
pub fn items(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(s)) => Some(s),
        Some(JSONSchemaPropsOrArray::Schemas(all)) => all.first(),
        None => None,
    }
}

/// The schema a child field is checked against, for other modules
/// (server-side apply follows list types through it).
pub fn child<'s>(schema: &'s JSONSchemaProps, name: &str) -> Option<&'s JSONSchemaProps> {
    property(schema, name)
}

fn prune(value: &mut Value, schema: &JSONSchemaProps, path: &str, pruned: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let embedded = schema.x_kubernetes_embedded_resource == Some(true);
            let keep_unknown =
                preserves(schema) || matches!(schema.additional_properties, Some(JSONSchemaPropsOrBool::Bool(true)));
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match property(schema, &key) {
                    Some(child) => {
                        if let Some(value) = fields.get_mut(&key) {
                            prune(value, child, &child_path, pruned);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        fields.remove(&key);
                        pruned.push(child_path);
                    }
                }
            }
        }
        Value::Array(list) => {
            if let Some(item_schema) = items(schema) {
                for (i, item) in list.iter_mut().enumerate() {
                    prune(item, item_schema, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

fn default_fields(fields: &mut Map<String, Value>, schema: &JSONSchemaProps) {
    if let Some(properties) = &schema.properties {
        for (name, child) in properties {
            let missing = match fields.get(name) {
                None => true,
                Some(Value::Null) => child.nullable != Some(true),
                Some(_) => false,
            };
            if missing && let Some(default) = &child.default {
                fields.insert(name.clone(), default.0.clone());
            }
        }
    }
    for (name, value) in fields.iter_mut() {
        // The root's metadata is not the schema's business.
        if let Some(child) = property(schema, name) {
            default_value(value, child);
        }
    }
}

fn default_value(value: &mut Value, schema: &JSONSchemaProps) {
    match value {
        Value::Object(fields) => default_fields(fields, schema),
        Value::Array(list) => {
            if let Some(item_schema) = items(schema) {
                for item in list {
                    default_value(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

fn validate_root(object: &Value, root: &JSONSchemaProps, causes: &mut Vec<Cause>) {
    let Some(fields) = object.as_object() else {
        causes.push(cause("FieldValueTypeInvalid", "", "Invalid value: the object must be a JSON object".into()));
        return;
    };
    for name in root.required.iter().flatten() {
        if !fields.contains_key(name) || fields.get(name) == Some(&Value::Null) {
            causes.push(cause("FieldValueRequired", name, "Required value".into()));
        }
    }
    for (name, value) in fields {
        if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(schema) = property(root, name) {
            validate(value, schema, name, causes);
        }
    }
}

fn cause(reason: &'static str, field: &str, message: String) -> Cause {
    Cause { reason, message, field: field.to_owned() }
}

/// How a value is shown in a message: strings quoted, the rest as JSON.
fn shown(value: &Value) -> String {
    value.to_string()
}

/// The JSON type name the real server reports for a value.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match wanted {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn validate(value: &Value, schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    let int_or_string = schema.x_kubernetes_int_or_string == Some(true);
    if value.is_null() {
        if schema.nullable == Some(true) || (schema.type_.is_none() && !int_or_string) {
            return;
        }
        let wanted = schema.type_.as_deref().unwrap_or("string");
        causes.push(cause(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"null\": {path} in body must be of type {wanted}: \"null\""),
        ));
        return;
    }
    if int_or_string {
        if !(has_type(value, "integer") || value.is_string()) {
            causes.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer or string: \"{}\"",
                    type_name(value),
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(wanted) = schema.type_.as_deref()
        && !has_type(value, wanted)
    {
        let got = type_name(value);
        causes.push(cause(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"{got}\": {path} in body must be of type {wanted}: \"{got}\""),
        ));
        return;
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let list: Vec<String> = allowed.iter().map(|a| shown(&a.0)).collect();
        causes.push(cause(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {}: supported values: {}", shown(value), list.join(", ")),
        ));
    }
    match value {
        Value::String(text) => validate_string(text, schema, path, causes),
        Value::Number(_) => validate_number(value, schema, path, causes),
        Value::Array(list) => validate_array(list, schema, path, causes),
        Value::Object(fields) => validate_object(fields, schema, path, causes),
        _ => {}
    }
    validate_combinators(value, schema, path, causes);
}

fn validate_string(text: &str, schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    let length = text.chars().count() as i64;
    let quoted = Value::String(text.to_owned()).to_string();
    if let Some(min) = schema.min_length
        && length < min
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {quoted}: {path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(max) = schema.max_length
        && length > max
    {
        causes.push(cause("FieldValueTooLong", path, format!("Too long: may not be more than {max} bytes")));
    }
    if let Some(pattern) = &schema.pattern
        && let Some(regex) = compiled(pattern)
        && !regex.is_match(text)
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {quoted}: {path} in body should match '{pattern}'"),
        ));
    }
    if schema.format.as_deref() == Some("date-time") && text.parse::<jiff::Timestamp>().is_err() {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {quoted}: {path} in body must be of type date-time: {quoted}"),
        ));
    }
}

/// A schema `pattern`, compiled once per distinct pattern; `None` when it does
/// not compile (it is then not checked, as before).
fn compiled(pattern: &str) -> Option<Regex> {
    static CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(regex) = cache.get(pattern) {
        return regex.clone();
    }
    let regex = Regex::new(pattern).inspect_err(|e| tracing::debug!(error = %e, pattern, "pattern not checked")).ok();
    cache.insert(pattern.to_owned(), regex.clone());
    regex
}

fn validate_number(value: &Value, schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    let Some(n) = value.as_f64() else { return };
    if let Some(min) = schema.minimum {
        let exclusive = schema.exclusive_minimum == Some(true);
        if n < min || (exclusive && n == min) {
            let relation = if exclusive { "greater than" } else { "greater than or equal to" };
            causes.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {value}: {path} in body should be {relation} {}", number(min)),
            ));
        }
    }
    if let Some(max) = schema.maximum {
        let exclusive = schema.exclusive_maximum == Some(true);
        if n > max || (exclusive && n == max) {
            let relation = if exclusive { "less than" } else { "less than or equal to" };
            causes.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {value}: {path} in body should be {relation} {}", number(max)),
            ));
        }
    }
    if let Some(factor) = schema.multiple_of
        && factor != 0.0
        && (n / factor).fract() != 0.0
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {value}: {path} in body should be a multiple of {}", number(factor)),
        ));
    }
}

/// 1.0 as `1`, like Go prints a float64 that holds an integer.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }
}

fn validate_array(list: &[Value], schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    let count = list.len() as i64;
    if let Some(min) = schema.min_items
        && count < min
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {count}: {path} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = schema.max_items
        && count > max
    {
        causes.push(cause("FieldValueTooMany", path, format!("Too many: {count}: must have at most {max} items")));
    }
    let list_type = schema.x_kubernetes_list_type.as_deref();
    if schema.unique_items == Some(true) || list_type == Some("set") {
        for (i, item) in list.iter().enumerate() {
            if list[..i].contains(item) {
                causes.push(cause("FieldValueDuplicate", &format!("{path}[{i}]"), format!("Duplicate value: {item}")));
            }
        }
    }
    if list_type == Some("map") {
        let keys = schema.x_kubernetes_list_map_keys.clone().unwrap_or_default();
        let key_of = |item: &Value| -> Value {
            keys.iter().map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null))).collect::<Map<_, _>>().into()
        };
        for (i, item) in list.iter().enumerate() {
            let key = key_of(item);
            if list[..i].iter().any(|earlier| key_of(earlier) == key) {
                causes.push(cause("FieldValueDuplicate", &format!("{path}[{i}]"), format!("Duplicate value: {key}")));
            }
        }
    }
    if let Some(item_schema) = items(schema) {
        for (i, item) in list.iter().enumerate() {
            validate(item, item_schema, &format!("{path}[{i}]"), causes);
        }
    }
}

fn validate_object(fields: &Map<String, Value>, schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    for name in schema.required.iter().flatten() {
        if !fields.contains_key(name) {
            causes.push(cause("FieldValueRequired", &format!("{path}.{name}"), "Required value".into()));
        }
    }
    let count = fields.len() as i64;
    if let Some(min) = schema.min_properties
        && count < min
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {count}: {path} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = schema.max_properties
        && count > max
    {
        causes.push(cause("FieldValueTooMany", path, format!("Too many: {count}: must have at most {max} items")));
    }
    let embedded = schema.x_kubernetes_embedded_resource == Some(true);
    for (name, value) in fields {
        if embedded && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(child) = property(schema, name) {
            validate(value, child, &format!("{path}.{name}"), causes);
        }
    }
}

fn validate_combinators(value: &Value, schema: &JSONSchemaProps, path: &str, causes: &mut Vec<Cause>) {
    let passes = |branch: &JSONSchemaProps| {
        let mut found = Vec::new();
        validate(value, branch, path, &mut found);
        found.is_empty()
    };
    for branch in schema.all_of.iter().flatten() {
        validate(value, branch, path, causes);
    }
    if let Some(any) = &schema.any_of
        && !any.iter().any(passes)
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body must validate at least one schema (anyOf)", shown(value)),
        ));
    }
    if let Some(one) = &schema.one_of
        && one.iter().filter(|b| passes(b)).count() != 1
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body must validate one and only one schema (oneOf)", shown(value)),
        ));
    }
    if let Some(not) = &schema.not
        && passes(not)
    {
        causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body should not validate the schema (not)", shown(value)),
        ));
    }
}
