//! What each verb does to the store, with the real server's rules: metadata
//! the server owns, the status subresource, generation, finalizers,
//! resourceVersion preconditions, field ownership, schema admission,
//! namespace lifecycle and owner-reference garbage collection.
//!
//! Every function runs with the store locked and does no I/O.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::managed::{self, Scope, Shape};
use super::patch::{self, PatchType};
use super::resources::{self, APIEXTENSIONS, Resource};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, Cause};
use super::store::{ResourceKey, Store};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The object a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub resource: Arc<Resource>,
    pub version: String,
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    /// Empty for a collection.
    pub name: String,
    /// Whether the request is on the `status` subresource.
    pub status: bool,
}

impl Target {
    fn key(&self) -> ResourceKey {
        (self.resource.group.clone(), self.resource.plural.clone())
    }

    fn api_version(&self) -> String {
        self.resource.api_version(&self.version)
    }

    fn shape(&self) -> Shape<'_> {
        Shape::Root(self.resource.version(&self.version).and_then(|v| v.schema.as_deref()))
    }

    fn scope(&self) -> Scope {
        if self.status {
            Scope::Status
        } else {
            Scope::Main { status_subresource: self.resource.has_status(&self.version) }
        }
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.resource.plural, &self.resource.group, &self.name)
    }

    /// 422 for this object, with the given causes.
    fn invalid(&self, causes: Vec<Cause>) -> ApiError {
        ApiError::invalid(&self.resource.kind, &self.resource.group, &self.name, causes)
    }

    /// 422 for this object, with one cause.
    fn invalid_field(&self, reason: &'static str, field: &str, message: impl Into<String>) -> ApiError {
        self.invalid(vec![Cause { reason, message: message.into(), field: field.into() }])
    }
}

/// How unknown fields are reported (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// The options every write takes.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The field manager: `fieldManager`, else derived from the User-Agent;
    /// empty for what the server loads itself, which nobody owns.
    pub manager: String,
    /// Whether `fieldManager` was given (server-side apply needs it).
    pub manager_given: bool,
    pub force: bool,
    pub dry_run: bool,
    pub validation: FieldValidation,
}

/// The result of a write.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// `metadata.creationTimestamp` and friends: RFC 3339, whole seconds, UTC.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

fn meta_str<'v>(object: &'v Value, field: &str) -> Option<&'v str> {
    meta(object)?.get(field)?.as_str()
}

/// The object's metadata, made an object if it is not one. Callers have
/// checked that `object` is a JSON object; anything else is replaced.
fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(metadata) => metadata,
        None => unreachable!("metadata was just made an object"),
    }
}

fn finalizers(object: &Value) -> Vec<String> {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    meta(object).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|t| !t.is_null()))
}

/// The object as the client asked for it: with the requested apiVersion.
fn in_version(mut object: Value, api_version: &str) -> Value {
    if let Some(fields) = object.as_object_mut() {
        fields.insert("apiVersion".into(), json!(api_version));
    }
    object
}

pub fn get(store: &Store, target: &Target) -> Result<Value> {
    store
        .get(&target.key(), &target.namespace, &target.name)
        .map(|o| in_version(o.clone(), &target.api_version()))
        .ok_or_else(|| target.not_found())
}

/// Which objects a list, watch or delete-collection covers.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `None` for every namespace.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Where a paged list goes on: the version its first page was listed at, and
/// the key of the last object it returned. Sent to the client as an opaque
/// `continue` token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Continue {
    rv: u64,
    after: (String, String),
}

impl Continue {
    fn token(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("serializes"))
    }

    /// Reads a token, or 400 as the real server answers a malformed one; 410
    /// when its version left the history (the real server keeps pages of a
    /// list consistent with its first page only that long).
    pub fn parse(token: &str, store: &Store) -> Result<Continue> {
        use base64::Engine as _;
        let invalid = || ApiError::bad_request(format!("continue key is not valid: {token}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let parsed: Continue = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if parsed.rv < store.compacted() {
            return Err(ApiError::expired(format!(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter ({} < {})",
                parsed.rv,
                store.compacted()
            )));
        }
        Ok(parsed)
    }
}

/// Lists what `selection` covers, at most `limit` objects from where `from`
/// left off; a partial page carries a `continue` token. Every page reports the
/// version of the first one, so that a watch from it misses nothing that
/// changed while the pages were read.
pub fn list(
    store: &Store,
    resource: &Resource,
    version: &str,
    selection: &Selection,
    limit: Option<usize>,
    from: Option<Continue>,
) -> Value {
    let api_version = resource.api_version(version);
    let key = (resource.group.clone(), resource.plural.clone());
    let rv = from.as_ref().map_or(store.rv(), |c| c.rv);
    let mut matching = store
        .list_after(&key, selection.namespace.as_deref(), from.as_ref().map(|c| &c.after))
        .filter(|(_, o)| selection.matches(o));
    let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut last = None;
    for (k, o) in matching.by_ref().take(limit) {
        items.push(in_version(o.clone(), &api_version));
        last = Some(k.clone());
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(after) = last.filter(|_| matching.next().is_some()) {
        metadata["continue"] = json!(Continue { rv, after }.token());
    }
    json!({
        "apiVersion": api_version,
        "kind": resource.list_kind,
        "metadata": metadata,
        "items": items,
    })
}

fn check_kind(target: &Target, body: &Value) -> Result<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != target.resource.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the resource ({})",
            target.resource.kind
        )));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && api_version != target.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            target.api_version()
        )));
    }
    Ok(())
}

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn name_problem(resource: &Resource, name: &str) -> Option<Cause> {
    let namespace = resource.group.is_empty() && resource.plural == "namespaces";
    let valid = if namespace { is_label(name) } else { name.len() <= 253 && name.split('.').all(is_label) };
    (!valid).then(|| Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: \"{name}\": {}", if namespace { LABEL_MESSAGE } else { SUBDOMAIN_MESSAGE }),
        field: "metadata.name".into(),
    })
}

fn namespaces_key() -> ResourceKey {
    (String::new(), "namespaces".into())
}

/// A namespaced object can only be created in a namespace that exists and
/// is not being deleted.
fn check_namespace(store: &Store, target: &Target) -> Result<()> {
    if !target.resource.namespaced {
        return Ok(());
    }
    match store.get(&namespaces_key(), "", &target.namespace) {
        None => Err(ApiError::not_found("namespaces", "", &target.namespace)),
        Some(ns) if deleting(ns) => Err(ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
            super::status::qualified(&target.resource.plural, &target.resource.group),
            target.name,
            target.namespace
        ))),
        Some(_) => Ok(()),
    }
}

/// Five characters from the alphabet the real server uses for generateName.
fn random_suffix(store: &mut Store) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    store
        .uid()
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(5)
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// POST: create an object in `target.namespace` (`target.name` is ignored).
pub fn create(store: &mut Store, target: &Target, mut body: Value, options: &WriteOptions) -> Result<Written> {
    check_kind(target, &body)?;
    let metadata = meta_mut(&mut body);
    if let Some(ns) = metadata.get("namespace").and_then(Value::as_str)
        && target.resource.namespaced
        && !ns.is_empty()
        && ns != target.namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if metadata.get("resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    let given = metadata.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned);
    let generate = metadata.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned);
    let mut target = target.clone();
    target.name = match (given, generate) {
        (Some(name), _) => name,
        (None, Some(prefix)) => {
            let mut name = format!("{prefix}{}", random_suffix(store));
            for _ in 0..8 {
                if store.get(&target.key(), &target.namespace, &name).is_none() {
                    break;
                }
                name = format!("{prefix}{}", random_suffix(store));
            }
            name
        }
        (None, None) => {
            return Err(ApiError::invalid(
                &target.resource.kind,
                &target.resource.group,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
    };
    if let Some(problem) = name_problem(&target.resource, &target.name) {
        return Err(target.invalid(vec![problem]));
    }
    check_namespace(store, &target)?;
    if store.get(&target.key(), &target.namespace, &target.name).is_some() {
        return Err(ApiError::already_exists(&target.resource.plural, &target.resource.group, &target.name));
    }
    commit(store, &target, None, body, Ownership::Update, options)
}

/// The body is of the URL's kind and, if it names itself, of the URL's name.
fn check_identity(target: &Target, body: &Value) -> Result<()> {
    check_kind(target, body)?;
    match meta_str(body, "name") {
        Some(name) if name != target.name => Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            target.name
        ))),
        _ => Ok(()),
    }
}

/// PUT: replace an object (or its status).
pub fn update(store: &mut Store, target: &Target, body: Value, options: &WriteOptions) -> Result<Written> {
    check_identity(target, &body)?;
    let live = store.get(&target.key(), &target.namespace, &target.name).cloned().ok_or_else(|| target.not_found())?;
    match meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty()) {
        Some(rv) if Some(rv) != meta_str(&live, "resourceVersion") => {
            return Err(ApiError::stale(&target.resource.plural, &target.resource.group, &target.name));
        }
        Some(_) => {}
        None if target.resource.custom => {
            return Err(target.invalid_field(
                "FieldValueInvalid",
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            ));
        }
        None => {}
    }
    commit(store, target, Some(&live), body, Ownership::Update, options)
}

/// PATCH, in any of the four formats.
pub fn patch(
    store: &mut Store,
    target: &Target,
    kind: PatchType,
    body: &[u8],
    options: &WriteOptions,
) -> Result<Written> {
    let live = store.get(&target.key(), &target.namespace, &target.name).cloned();
    if kind == PatchType::Apply {
        return apply(store, target, live, body, options);
    }
    let live = live.ok_or_else(|| target.not_found())?;
    let mut object = live.clone();
    match kind {
        PatchType::Json => {
            patch::json(&mut object, body).map_err(|e| target.invalid_field("FieldValueInvalid", "", e))?
        }
        PatchType::Merge | PatchType::Strategic => {
            let changes: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !changes.is_object() {
                return Err(ApiError::bad_request("the patch must be a JSON object"));
            }
            if kind == PatchType::Merge {
                patch::merge(&mut object, &changes);
            } else {
                patch::strategic(&mut object, &changes);
            }
        }
        PatchType::Apply => unreachable!("handled above"),
    }
    if !object.is_object() {
        return Err(ApiError::bad_request("the patched object is not a JSON object"));
    }
    if meta_str(&object, "resourceVersion") != meta_str(&live, "resourceVersion") {
        return Err(ApiError::stale(&target.resource.plural, &target.resource.group, &target.name));
    }
    if meta_str(&object, "name") != Some(target.name.as_str()) {
        return Err(target.invalid_field(
            "FieldValueInvalid",
            "metadata.name",
            "Invalid value: the name of an object cannot be changed: field is immutable",
        ));
    }
    commit(store, target, Some(&live), object, Ownership::Update, options)
}

/// Server-side apply; creates the object when it does not exist.
fn apply(
    store: &mut Store,
    target: &Target,
    live: Option<Value>,
    body: &[u8],
    options: &WriteOptions,
) -> Result<Written> {
    if !options.manager_given {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: is required for apply patch".into(),
                field: "fieldManager".into(),
            }],
        ));
    }
    let applied: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
            patch::yaml(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
    };
    if !applied.is_object() {
        return Err(ApiError::bad_request("the apply patch must be an object"));
    }
    if applied.get("apiVersion").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("apiVersion must be set in the applied configuration"));
    }
    if applied.get("kind").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("kind must be set in the applied configuration"));
    }
    check_identity(target, &applied)?;
    if let (Some(rv), Some(live)) = (meta_str(&applied, "resourceVersion"), live.as_ref())
        && !rv.is_empty()
        && Some(rv) != meta_str(live, "resourceVersion")
    {
        return Err(ApiError::stale(&target.resource.plural, &target.resource.group, &target.name));
    }
    if live.is_none() {
        if target.status {
            return Err(target.not_found());
        }
        if let Some(problem) = name_problem(&target.resource, &target.name) {
            return Err(target.invalid(vec![problem]));
        }
        check_namespace(store, target)?;
    }
    let mut merged = managed::apply(
        live.as_ref(),
        &applied,
        &options.manager,
        options.force,
        &target.api_version(),
        &now(),
        target.shape(),
        target.scope(),
    )
    .map_err(|conflicts| {
        ApiError::apply_conflicts(&target.resource.plural, &target.resource.group, &target.name, &conflicts)
    })?;
    let metadata = meta_mut(&mut merged);
    metadata.insert("name".into(), json!(target.name));
    if live.is_none()
        && let Some(generate) = meta_str(&applied, "generateName")
    {
        metadata.insert("generateName".into(), json!(generate));
    }
    commit(store, target, live.as_ref(), merged, Ownership::Applied, options)
}

/// Whether `commit` still has to record field ownership.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ownership {
    Update,
    Applied,
}

/// Checks and stores a new state of an object (`old` is `None` for a create).
fn commit(
    store: &mut Store,
    target: &Target,
    old: Option<&Value>,
    mut object: Value,
    ownership: Ownership,
    options: &WriteOptions,
) -> Result<Written> {
    let resource = &target.resource;
    let api_version = target.api_version();
    let has_status = resource.has_status(&target.version);
    let now = now();

    // The parts of the object a write on this endpoint may not change.
    if let Some(old) = old {
        if target.status {
            let status = object.get("status").cloned();
            let mut only_status = old.clone();
            match status {
                Some(status) => only_status["status"] = status,
                None => {
                    if let Some(fields) = only_status.as_object_mut() {
                        fields.remove("status");
                    }
                }
            }
            // Ownership of status fields was recorded in `object`.
            if let Some(managed) = meta(&object).and_then(|m| m.get("managedFields")).cloned() {
                meta_mut(&mut only_status).insert("managedFields".into(), managed);
            }
            object = only_status;
        } else if has_status {
            match old.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(fields) = object.as_object_mut() {
                        fields.remove("status");
                    }
                }
            }
        }
    } else if has_status && let Some(fields) = object.as_object_mut() {
        fields.remove("status");
    }

    if let Some(fields) = object.as_object_mut() {
        fields.insert("apiVersion".into(), json!(api_version));
        fields.insert("kind".into(), json!(resource.kind));
    }
    let metadata = meta_mut(&mut object);
    metadata.insert("name".into(), json!(target.name));
    if resource.namespaced {
        metadata.insert("namespace".into(), json!(target.namespace));
    } else {
        metadata.remove("namespace");
    }
    metadata.remove("selfLink");
    match old {
        Some(old) => {
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
            ] {
                match meta(old).and_then(|m| m.get(field)) {
                    Some(value) => metadata.insert(field.into(), value.clone()),
                    None => metadata.remove(field),
                };
            }
            if let Some(rv) = meta_str(old, "resourceVersion") {
                metadata.insert("resourceVersion".into(), json!(rv));
            }
        }
        None => {
            let uid = store.uid();
            let metadata = meta_mut(&mut object);
            metadata.insert("uid".into(), json!(uid));
            metadata.insert("creationTimestamp".into(), json!(now));
            for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
                metadata.remove(field);
            }
            if resource.generation {
                metadata.insert("generation".into(), json!(1));
            } else {
                metadata.remove("generation");
            }
        }
    }

    if let Some(old) = old
        && deleting(old)
    {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&object).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            return Err(target.invalid_field("FieldValueForbidden", "metadata.finalizers", format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    )));
        }
    }

    let mut warnings = Vec::new();
    if let Some(root) = resource.version(&target.version).and_then(|v| v.schema.clone()) {
        let report = schema::admit(&mut object, &root);
        if !report.pruned.is_empty() {
            match options.validation {
                FieldValidation::Strict => {
                    let fields: Vec<String> = report.pruned.iter().map(|p| format!("unknown field \"{p}\"")).collect();
                    return Err(ApiError::bad_request(format!("strict decoding error: {}", fields.join(", "))));
                }
                FieldValidation::Warn => {
                    warnings.extend(report.pruned.iter().map(|p| format!("unknown field \"{p}\"")));
                }
                FieldValidation::Ignore => {}
            }
        }
        if !report.causes.is_empty() {
            return Err(target.invalid(report.causes));
        }
    }
    special_kinds(target, old, &mut object, &now)?;

    if resource.generation
        && let Some(old) = old
    {
        let spec_of = |o: &Value| {
            let mut o = o.clone();
            if let Some(fields) = o.as_object_mut() {
                fields.remove("metadata");
                fields.remove("status");
            }
            o
        };
        if spec_of(old) != spec_of(&object) {
            let generation = meta(old).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut object).insert("generation".into(), json!(generation + 1));
        }
    }

    if ownership == Ownership::Update && !options.manager.is_empty() {
        let mut entries = managed::entries(old.unwrap_or(&object));
        if old.is_none() {
            entries.clear();
        }
        managed::record_update(
            &mut entries,
            old,
            &object,
            &options.manager,
            &api_version,
            &now,
            target.shape(),
            target.scope(),
        );
        managed::store_entries(&mut object, &entries);
    }

    // Nothing changed but timestamps: no write, no event, no new resourceVersion.
    if let Some(old) = old
        && without_times(old) == without_times(&object)
    {
        return Ok(Written { object: in_version(old.clone(), &api_version), created: false, warnings });
    }
    if options.dry_run {
        return Ok(Written { object, created: old.is_none(), warnings });
    }
    let key = target.key();
    if deleting(&object) && finalizers(&object).is_empty() {
        store.put(&key, &target.namespace, &target.name, object);
        let removed = remove_now(store, &key, &target.namespace, &target.name).unwrap_or(Value::Null);
        return Ok(Written { object: removed, created: false, warnings });
    }
    let stored = store.put(&key, &target.namespace, &target.name, object);
    after_write(store, target, &stored)?;
    Ok(Written { object: stored, created: old.is_none(), warnings })
}

/// The object without what changes on every write even when nothing else does.
fn without_times(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(entries) = object.pointer_mut("/metadata/managedFields").and_then(Value::as_array_mut) {
        for entry in entries {
            if let Some(fields) = entry.as_object_mut() {
                fields.remove("time");
            }
        }
    }
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
    }
    object
}

fn is_crd(resource: &Resource) -> bool {
    resource.group == APIEXTENSIONS && resource.plural == "customresourcedefinitions"
}

fn is_namespace(resource: &Resource) -> bool {
    resource.group.is_empty() && resource.plural == "namespaces"
}

/// What the real server's strategies add for kinds it knows.
fn special_kinds(target: &Target, old: Option<&Value>, object: &mut Value, now: &str) -> Result<()> {
    let resource = &target.resource;
    let created = old.is_none();
    if is_crd(resource) {
        let crd = resources::parse_crd(object)?;
        resources::from_crd(&crd).map_err(|causes| target.invalid(causes))?;
        let status = resources::crd_status(&crd, now);
        // The conditions keep their transition time while the names stand.
        let unchanged = old.and_then(|o| o.get("status")).filter(|s| {
            s.get("acceptedNames") == status.get("acceptedNames")
                && s.get("storedVersions") == status.get("storedVersions")
        });
        object["status"] = unchanged.cloned().unwrap_or(status);
    } else if resource.group.is_empty() && resource.plural == "secrets" {
        // `stringData` is write-only: merged into `data`, base64-encoded.
        if let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
            use base64::Engine;
            let data = object.as_object_mut().map(|o| o.entry("data").or_insert_with(|| json!({})));
            if let Some(Value::Object(data)) = data {
                for (key, value) in strings {
                    let text = value.as_str().unwrap_or_default();
                    data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
        }
    } else if is_namespace(resource) && created {
        object["status"] = json!({"phase": "Active"});
        if let Some(labels) = meta_mut(object).entry("labels").or_insert_with(|| json!({})).as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), json!(target.name));
        }
    }
    Ok(())
}

/// Follows a stored CRD with the served resource it defines.
fn after_write(store: &mut Store, target: &Target, stored: &Value) -> Result<()> {
    if is_crd(&target.resource) {
        let crd = resources::parse_crd(stored)?;
        if let Ok(resource) = resources::from_crd(&crd) {
            store.registry.insert(resource);
        }
    }
    Ok(())
}

/// `DeleteOptions` that matter here.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads the `preconditions` and `dryRun` of a DeleteOptions body.
    pub fn from_body(body: &Value, dry_run: bool) -> DeleteOptions {
        let text =
            |field: &str| body.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str).map(str::to_owned);
        let dry_run = dry_run || body.get("dryRun").and_then(Value::as_array).is_some_and(|d| !d.is_empty());
        DeleteOptions { uid: text("uid"), resource_version: text("resourceVersion"), dry_run }
    }
}

/// A delete's precondition on a metadata field: 409 when the object's differs.
fn precondition(target: &Target, live: &Value, field: &str, shown: &str, expected: Option<&str>) -> Result<()> {
    let actual = meta_str(live, field);
    match expected {
        Some(expected) if Some(expected) != actual => Err(ApiError::conflict(
            &target.resource.plural,
            &target.resource.group,
            &target.name,
            &format!(
                "Precondition failed: {shown} in precondition: {expected}, {shown} in object meta: {}",
                actual.unwrap_or_default()
            ),
        )),
        _ => Ok(()),
    }
}

/// DELETE of one object: gone at once, or marked for deletion while it has
/// finalizers.
pub fn delete(store: &mut Store, target: &Target, options: &DeleteOptions) -> Result<Value> {
    let key = target.key();
    let live = store.get(&key, &target.namespace, &target.name).cloned().ok_or_else(|| target.not_found())?;
    precondition(target, &live, "uid", "UID", options.uid.as_deref())?;
    precondition(target, &live, "resourceVersion", "ResourceVersion", options.resource_version.as_deref())?;
    if options.dry_run {
        return Ok(in_version(live, &target.api_version()));
    }
    let result = if is_namespace(&target.resource) {
        delete_namespace(store, &target.name)
    } else {
        mark_deleted(store, &key, &target.namespace, &target.name)
    };
    Ok(in_version(result.unwrap_or(live), &target.api_version()))
}

/// DELETE of a collection: each selected object as by `delete`.
pub fn delete_collection(
    store: &mut Store,
    resource: &Arc<Resource>,
    version: &str,
    selection: &Selection,
    options: &DeleteOptions,
) -> Value {
    let key = (resource.group.clone(), resource.plural.clone());
    let names: Vec<(String, String)> = store
        .list(&key, selection.namespace.as_deref())
        .filter(|o| selection.matches(o))
        .map(|o| {
            (
                meta_str(o, "namespace").unwrap_or_default().to_owned(),
                meta_str(o, "name").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut items = Vec::new();
    for (namespace, name) in names {
        let target = Target { resource: resource.clone(), version: version.to_owned(), namespace, name, status: false };
        if let Ok(object) = delete(store, &target, options) {
            items.push(object);
        }
    }
    json!({
        "apiVersion": resource.api_version(version),
        "kind": resource.list_kind,
        "metadata": {"resourceVersion": store.rv().to_string()},
        "items": items,
    })
}

/// Deletes an object the way the API does: with finalizers it only gets a
/// deletionTimestamp; without, it goes. Returns its new or last state.
fn mark_deleted(store: &mut Store, key: &ResourceKey, namespace: &str, name: &str) -> Option<Value> {
    let object = store.get(key, namespace, name)?.clone();
    if finalizers(&object).is_empty() {
        return remove_now(store, key, namespace, name);
    }
    if deleting(&object) {
        return Some(object);
    }
    let mut marked = object;
    let metadata = meta_mut(&mut marked);
    metadata.insert("deletionTimestamp".into(), json!(now()));
    metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
    Some(store.put(key, namespace, name, marked))
}

/// A namespace first turns Terminating and has its objects deleted; it goes
/// once it is empty and has no finalizers of its own.
fn delete_namespace(store: &mut Store, name: &str) -> Option<Value> {
    let key = namespaces_key();
    let mut namespace = store.get(&key, "", name)?.clone();
    if !deleting(&namespace) {
        let metadata = meta_mut(&mut namespace);
        metadata.insert("deletionTimestamp".into(), json!(now()));
        metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
        namespace["status"] = json!({"phase": "Terminating"});
        namespace = store.put(&key, "", name, namespace);
    }
    let inside: Vec<(ResourceKey, String)> = store
        .everything()
        .filter(|(_, o)| meta_str(o, "namespace") == Some(name))
        .map(|(k, o)| (k.clone(), meta_str(o, "name").unwrap_or_default().to_owned()))
        .collect();
    for (resource, object) in inside {
        mark_deleted(store, &resource, name, &object);
    }
    if store.namespace_is_empty(name) && finalizers(&namespace).is_empty() {
        return remove_now(store, &key, "", name);
    }
    store.get(&key, "", name).cloned()
}

/// Removes an object for good, then what depended on it: a CRD's objects,
/// dependents whose owners are all gone, a terminating namespace left empty.
fn remove_now(store: &mut Store, key: &ResourceKey, namespace: &str, name: &str) -> Option<Value> {
    let removed = store.remove(key, namespace, name)?;
    if key.0 == APIEXTENSIONS
        && key.1 == "customresourcedefinitions"
        && let Ok(crd) = resources::parse_crd(&removed)
    {
        let defined = (crd.spec.group.clone(), crd.spec.names.plural.clone());
        let objects: Vec<(String, String)> = store
            .list(&defined, None)
            .map(|o| {
                (
                    meta_str(o, "namespace").unwrap_or_default().to_owned(),
                    meta_str(o, "name").unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (ns, object) in objects {
            store.remove(&defined, &ns, &object);
        }
        store.registry.remove(&defined.0, &defined.1);
    }
    collect_garbage(store);
    if !namespace.is_empty()
        && let Some(ns) = store.get(&namespaces_key(), "", namespace)
        && deleting(ns)
        && finalizers(ns).is_empty()
        && store.namespace_is_empty(namespace)
    {
        remove_now(store, &namespaces_key(), "", namespace);
    }
    Some(removed)
}

/// Deletes (background propagation) every object whose owners are all gone.
fn collect_garbage(store: &mut Store) {
    let uids: HashSet<String> = store.everything().filter_map(|(_, o)| meta_str(o, "uid").map(str::to_owned)).collect();
    let orphans: Vec<(ResourceKey, String, String)> = store
        .everything()
        .filter(|(_, o)| !deleting(o))
        .filter(|(_, o)| {
            let owners: Vec<&str> = meta(o)
                .and_then(|m| m.get("ownerReferences"))
                .and_then(Value::as_array)
                .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            !owners.is_empty() && owners.iter().all(|uid| !uids.contains(*uid))
        })
        .map(|(k, o)| {
            (
                k.clone(),
                meta_str(o, "namespace").unwrap_or_default().to_owned(),
                meta_str(o, "name").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (key, namespace, name) in orphans {
        mark_deleted(store, &key, &namespace, &name);
    }
}

/// Loads a CRD at start-up, as if it had been created.
pub fn preload_crd(store: &mut Store, crd: &Value) -> Result<()> {
    let resource = store
        .registry
        .get(APIEXTENSIONS, "customresourcedefinitions")
        .cloned()
        .ok_or_else(|| ApiError::internal("the CustomResourceDefinition kind is missing"))?;
    let name = meta_str(crd, "name").unwrap_or_default().to_owned();
    let target = Target { resource, version: "v1".into(), namespace: String::new(), name, status: false };
    let options = WriteOptions {
        manager: String::new(),
        manager_given: true,
        force: false,
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
    create(store, &target, crd.clone(), &options).map(|_| ())
}

/// Creates a namespace at start-up.
pub fn preload_namespace(store: &mut Store, name: &str) -> Result<()> {
    let resource = store
        .registry
        .get("", "namespaces")
        .cloned()
        .ok_or_else(|| ApiError::internal("the Namespace kind is missing"))?;
    let target =
        Target { resource, version: "v1".into(), namespace: String::new(), name: name.to_owned(), status: false };
    let options = WriteOptions {
        manager: String::new(),
        manager_given: true,
        force: false,
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    create(store, &target, body, &options).map(|_| ())
}
