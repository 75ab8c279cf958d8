//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! A field set is a set of paths to the leaves a manager set, in the
//! `fieldsV1` shape the real server writes: `f:<field>` for object fields,
//! `k:{"name":"x"}` for items of `x-kubernetes-list-type: map` lists (plus
//! the item itself, as `.`), `v:<value>` for items of `set` lists; any
//! other list is atomic and owned whole. The schema says which list is
//! which; built-in kinds have none, so their lists are atomic, except
//! `metadata.finalizers` (a set) and `metadata.ownerReferences` (a map on
//! `uid`), as in the real server.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::{Map, Value, json};

use super::schema;

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// An object field.
    Field(String),
    /// An item of a map list, by its key fields (canonical JSON object).
    Key(String),
    /// An item of a set list, by its value (canonical JSON).
    Value(String),
}

pub type Path = Vec<Step>;

/// A set of owned paths.
pub type FieldSet = BTreeSet<Path>;

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Where in an object a value sits, for the list kinds below it.
#[derive(Clone, Copy, Debug)]
pub enum Shape<'s> {
    /// The object root, with the version's schema if it has one.
    Root(Option<&'s JSONSchemaProps>),
    Schema(&'s JSONSchemaProps),
    Metadata,
    Finalizers,
    OwnerReferences,
    /// Anything without a schema: lists are atomic.
    Unknown,
}

impl<'s> Shape<'s> {
    pub fn field(self, name: &str) -> Shape<'s> {
        match self {
            Shape::Root(_) if name == "metadata" => Shape::Metadata,
            Shape::Root(Some(s)) | Shape::Schema(s) => schema::child(s, name).map_or(Shape::Unknown, Shape::Schema),
            Shape::Metadata if name == "finalizers" => Shape::Finalizers,
            Shape::Metadata if name == "ownerReferences" => Shape::OwnerReferences,
            _ => Shape::Unknown,
        }
    }

    pub fn item(self) -> Shape<'s> {
        match self {
            Shape::Schema(s) => schema::items(s).map_or(Shape::Unknown, Shape::Schema),
            _ => Shape::Unknown,
        }
    }

    pub fn list_kind(self) -> ListKind {
        match self {
            Shape::Finalizers => ListKind::Set,
            Shape::OwnerReferences => ListKind::Map(vec!["uid".to_owned()]),
            Shape::Schema(s) => match s.x_kubernetes_list_type.as_deref() {
                Some("set") => ListKind::Set,
                Some("map") => ListKind::Map(s.x_kubernetes_list_map_keys.clone().unwrap_or_default()),
                _ => ListKind::Atomic,
            },
            _ => ListKind::Atomic,
        }
    }
}

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: everything but `status` when there is a status subresource.
    Main { status_subresource: bool },
    /// The `status` subresource.
    Status,
}

impl Scope {
    /// Whether a top-level field (other than metadata) belongs to this scope.
    pub fn owns(self, field: &str) -> bool {
        match self {
            Scope::Main { status_subresource } => {
                let reserved = matches!(field, "apiVersion" | "kind" | "metadata");
                let subresource_only = status_subresource && field == "status";
                !(reserved || subresource_only)
            }
            Scope::Status => field == "status",
        }
    }

    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main { .. } => None,
            Scope::Status => Some("status"),
        }
    }
}

/// The metadata fields ownership is tracked for.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// JSON with object keys sorted, so equal values give equal text.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(fields) => {
                let ordered: BTreeMap<&String, Value> = fields.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let map: Map<String, Value> =
        keys.iter().map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null))).collect();
    canonical(&Value::Object(map))
}

/// The paths a (partial) object sets, within `scope`.
pub fn field_set(object: &Value, shape: Shape<'_>, scope: Scope) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(fields) = object.as_object() else { return set };
    for (name, value) in fields {
        if name == "metadata" {
            if scope == Scope::Status {
                continue;
            }
            for (meta_name, meta_value) in value.as_object().into_iter().flatten() {
                if OWNED_METADATA.contains(&meta_name.as_str()) && !meta_value.is_null() {
                    let path = vec![Step::Field("metadata".into()), Step::Field(meta_name.clone())];
                    collect(meta_value, Shape::Metadata.field(meta_name), path, &mut set);
                }
            }
        } else if scope.owns(name) && !value.is_null() {
            collect(value, shape.field(name), vec![Step::Field(name.clone())], &mut set);
        }
    }
    set
}

fn collect(value: &Value, shape: Shape<'_>, path: Path, set: &mut FieldSet) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (name, child) in fields {
                if child.is_null() {
                    continue;
                }
                let mut child_path = path.clone();
                child_path.push(Step::Field(name.clone()));
                collect(child, shape.field(name), child_path, set);
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list_kind() {
            ListKind::Atomic => {
                set.insert(path);
            }
            ListKind::Set => {
                for item in items {
                    let mut item_path = path.clone();
                    item_path.push(Step::Value(canonical(item)));
                    set.insert(item_path);
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    let mut item_path = path.clone();
                    item_path.push(Step::Key(key_of(item, &keys)));
                    set.insert(item_path.clone());
                    collect(item, shape.item(), item_path, set);
                }
            }
        },
        _ => {
            set.insert(path);
        }
    }
}

/// Whether two values are the same, numbers compared by value: `0` and
/// `0.0` are equal, as they are to the real server (Go decodes both to a
/// float64), whatever encoder wrote them.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn equal(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(u, v)| equal(u, v)),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, u)| y.get(k).is_some_and(|v| equal(u, v)))
            }
            (x, y) => x == y,
        }
    }
    match (a, b) {
        (Some(a), Some(b)) => equal(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The value at a path, if present.
pub fn get<'v>(object: &'v Value, path: &[Step]) -> Option<&'v Value> {
    let mut here = object;
    for step in path {
        here = match step {
            Step::Field(name) => here.get(name)?,
            Step::Key(key) => {
                let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
                let keys: Vec<String> = wanted.keys().cloned().collect();
                here.as_array()?.iter().find(|item| key_of(item, &keys) == *key)?
            }
            Step::Value(text) => here.as_array()?.iter().find(|item| canonical(item) == *text)?,
        };
    }
    Some(here)
}

/// Removes the value at a path, if present.
fn remove(object: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut here = object;
    for step in parent_path {
        here = match step {
            Step::Field(name) => match here.get_mut(name) {
                Some(next) => next,
                None => return,
            },
            Step::Key(_) | Step::Value(_) => {
                let Some(position) = position(here, step) else { return };
                match here.as_array_mut() {
                    Some(items) => &mut items[position],
                    None => return,
                }
            }
        };
    }
    match last {
        Step::Field(name) => {
            if let Some(fields) = here.as_object_mut() {
                fields.remove(name);
            }
        }
        step => {
            if let Some(position) = position(here, step)
                && let Some(items) = here.as_array_mut()
            {
                items.remove(position);
            }
        }
    }
}

fn position(list: &Value, step: &Step) -> Option<usize> {
    let items = list.as_array()?;
    match step {
        Step::Key(key) => {
            let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
            let keys: Vec<String> = wanted.keys().cloned().collect();
            items.iter().position(|item| key_of(item, &keys) == *key)
        }
        Step::Value(text) => items.iter().position(|item| canonical(item) == *text),
        Step::Field(_) => None,
    }
}

/// `.spec.sdi.channels[site="rome"].endpoint`, the way the real server names
/// a field in a conflict.
pub fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Step::Key(key) => {
                let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(text) => out.push_str(&format!("[={text}]")),
        }
    }
    out
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }
}

/// Reads `metadata.managedFields`; entries that do not parse are dropped.
pub fn entries(object: &Value) -> Vec<Entry> {
    let Some(list) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_owned(),
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_owned(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
                time: e.get("time").and_then(Value::as_str).unwrap_or_default().to_owned(),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_owned),
                fields: from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

/// Writes the entries back as `metadata.managedFields` (removed when empty).
pub fn store_entries(object: &mut Value, entries: &[Entry]) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(sub) = &e.subresource {
                entry["subresource"] = json!(sub);
            }
            entry
        })
        .collect();
    if list.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(list));
    }
}

fn step_text(step: &Step) -> String {
    match step {
        Step::Field(name) => format!("f:{name}"),
        Step::Key(key) => format!("k:{key}"),
        Step::Value(value) => format!("v:{value}"),
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn render(node: Node) -> Value {
        let mut map = Map::new();
        // A member that also has children is marked with ".".
        if node.member && !node.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (key, child) in node.children {
            map.insert(key, render(child));
        }
        Value::Object(map)
    }
    let mut root = Node::default();
    for path in set {
        let mut here = &mut root;
        for step in path {
            here = here.children.entry(step_text(step)).or_default();
        }
        here.member = true;
    }
    render(root)
}

fn parse_step(text: &str) -> Option<Step> {
    let (prefix, rest) = text.split_at_checked(2)?;
    match prefix {
        "f:" => Some(Step::Field(rest.to_owned())),
        "k:" => serde_json::from_str::<Value>(rest).ok().map(|v| Step::Key(canonical(&v))),
        "v:" => serde_json::from_str::<Value>(rest).ok().map(|v| Step::Value(canonical(&v))),
        _ => None,
    }
}

fn from_fields_v1(value: &Value) -> FieldSet {
    fn walk(node: &Map<String, Value>, path: &mut Path, set: &mut FieldSet) {
        for (key, child) in node {
            if key == "." {
                set.insert(path.clone());
                continue;
            }
            let Some(step) = parse_step(key) else { continue };
            path.push(step);
            match child.as_object() {
                Some(children) if !children.is_empty() => walk(children, path, set),
                _ => {
                    set.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    if let Some(root) = value.as_object() {
        walk(root, &mut Vec::new(), &mut set);
    }
    set
}

/// Records an Update (create, update, patch) by `manager`: it now owns what
/// it changed, and nobody owns what it removed.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    entries: &mut Vec<Entry>,
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
    shape: Shape<'_>,
    scope: Scope,
) {
    let null = Value::Null;
    let old_value = old.unwrap_or(&null);
    let new_set = field_set(new, shape, scope);
    let old_set = field_set(old_value, shape, scope);
    let changed: FieldSet = new_set.iter().filter(|p| !same(get(old_value, p), get(new, p))).cloned().collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    let subresource = scope.subresource();
    for entry in entries.iter_mut() {
        if !entry.same_owner(manager, "Update", subresource) {
            entry.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
    }
    let position = entries.iter().position(|e| e.same_owner(manager, "Update", subresource));
    let mut owned = position.map(|i| entries[i].fields.clone()).unwrap_or_default();
    owned.extend(changed);
    owned.retain(|p| new_set.contains(p));
    let entry = Entry {
        manager: manager.to_owned(),
        operation: "Update".into(),
        api_version: api_version.to_owned(),
        time: now.to_owned(),
        subresource: subresource.map(str::to_owned),
        fields: owned,
    };
    match position {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// A server-side apply that others own fields of: (manager, field) pairs.
pub type Conflicts = Vec<(String, String)>;

/// Server-side apply of `applied` by `manager` onto `live` (or onto nothing,
/// for a create): the merged object, with its managed fields updated.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
    shape: Shape<'_>,
    scope: Scope,
) -> Result<Value, Conflicts> {
    let subresource = scope.subresource();
    let mut object = live.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    let mut all = entries(&object);
    let applied_set = field_set(applied, shape, scope);

    let mut conflicts = Conflicts::new();
    for entry in all.iter_mut().filter(|e| !e.same_owner(manager, "Apply", subresource)) {
        let clashing: Vec<Path> = entry
            .fields
            .intersection(&applied_set)
            // A map-list item is shared by everyone who sets fields in it.
            .filter(|p| !matches!(p.last(), Some(Step::Key(_))))
            .filter(|p| !same(get(&object, p), get(applied, p)))
            .cloned()
            .collect();
        if force {
            entry.fields.retain(|p| !clashing.contains(p));
        } else {
            conflicts.extend(clashing.iter().map(|p| (entry.manager.clone(), render(p))));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // Fields this manager applied before and no longer does go, unless
    // someone else owns them or something under them.
    let position = all.iter().position(|e| e.same_owner(manager, "Apply", subresource));
    let previous = position.map(|i| all[i].fields.clone()).unwrap_or_default();
    let mut dropped: Vec<&Path> = previous.difference(&applied_set).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        let owned_elsewhere = all
            .iter()
            .filter(|e| !e.same_owner(manager, "Apply", subresource))
            .any(|e| e.fields.iter().any(|p| p.starts_with(path)));
        if !owned_elsewhere {
            remove(&mut object, path);
        }
    }

    merge_scoped(&mut object, applied, shape, scope);

    let entry = Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: api_version.to_owned(),
        time: now.to_owned(),
        subresource: subresource.map(str::to_owned),
        fields: applied_set,
    };
    match position {
        Some(i) => all[i] = entry,
        None => all.push(entry),
    }
    all.retain(|e| !e.fields.is_empty());
    store_entries(&mut object, &all);
    Ok(object)
}

/// Merges the parts of `applied` that `scope` covers into `object`.
fn merge_scoped(object: &mut Value, applied: &Value, shape: Shape<'_>, scope: Scope) {
    let (Some(target), Some(source)) = (object.as_object_mut(), applied.as_object()) else { return };
    for (name, value) in source {
        if name == "metadata" {
            if scope == Scope::Status {
                continue;
            }
            let meta = target.entry("metadata").or_insert_with(|| json!({}));
            for (meta_name, meta_value) in value.as_object().into_iter().flatten() {
                if OWNED_METADATA.contains(&meta_name.as_str())
                    && let Some(meta_fields) = meta.as_object_mut()
                {
                    merge_field(meta_fields, meta_name, meta_value, Shape::Metadata.field(meta_name));
                }
            }
        } else if scope.owns(name) {
            merge_field(target, name, value, shape.field(name));
        }
    }
}

fn merge_field(target: &mut Map<String, Value>, name: &str, value: &Value, shape: Shape<'_>) {
    if value.is_null() {
        return;
    }
    match target.get_mut(name) {
        Some(existing) => merge_value(existing, value, shape),
        None => {
            target.insert(name.to_owned(), value.clone());
        }
    }
}

fn merge_value(target: &mut Value, source: &Value, shape: Shape<'_>) {
    match (target, source) {
        (Value::Object(t), Value::Object(s)) => {
            for (name, value) in s {
                merge_field(t, name, value, shape.field(name));
            }
        }
        (Value::Array(t), Value::Array(s)) => match shape.list_kind() {
            ListKind::Atomic => *t = s.clone(),
            ListKind::Set => {
                for item in s {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListKind::Map(keys) => {
                for item in s {
                    let key = key_of(item, &keys);
                    match t.iter_mut().find(|existing| key_of(existing, &keys) == key) {
                        Some(existing) => merge_value(existing, item, shape.item()),
                        None => t.push(item.clone()),
                    }
                }
            }
        },
        (target, source) => *target = source.clone(),
    }
}
