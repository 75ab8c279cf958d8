//! The PATCH body formats: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), Kubernetes strategic merge patch, and server-side apply (whose
//! merging lives in `managed`).

use serde_json::{Map, Value};

/// What a PATCH's Content-Type asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    /// What a PATCH may be sent as.
    pub const MEDIA_TYPES: [&str; 4] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
    ];

    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Parses a YAML apply body. NB: with YAML 1.2 booleans only, as the real
/// server reads it: a key or value `y`, `yes` or `on` stays a string.
pub fn yaml(text: &str) -> Result<Value, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
}

/// Applies an RFC 7386 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch, or says why it does not apply.
pub fn json(target: &mut Value, body: &[u8]) -> Result<(), String> {
    let operations: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| format!("the JSON patch is not valid: {e}"))?;
    json_patch::patch(target, &operations).map_err(|e| e.to_string())
}

/// Applies a strategic merge patch the way `kubectl` writes them.
///
/// NB: the real server knows each built-in type's merge keys from its Go
/// struct tags; this one learns them from the patch itself: `kubectl`
/// sends `$setElementOrder/<list>` (whose entries hold just the merge key)
/// for every list it merges, and that is what makes a list merge here. A
/// list without that directive is replaced, as in a JSON merge patch. The
/// directives `$patch: replace|delete`, `$retainKeys` and
/// `$deleteFromPrimitiveList/<list>` are honoured.
pub fn strategic(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(fields), Value::Object(changes)) => strategic_object(fields, changes),
        (target, patch) => *target = without_directives(patch),
    }
}

fn strategic_object(fields: &mut Map<String, Value>, changes: &Map<String, Value>) {
    if changes.get("$patch").and_then(Value::as_str) == Some("replace") {
        *fields = match without_directives(&Value::Object(changes.clone())) {
            Value::Object(replacement) => replacement,
            _ => Map::new(),
        };
        return;
    }
    if let Some(retain) = changes.get("$retainKeys").and_then(Value::as_array) {
        fields.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    for (name, change) in changes {
        if name.starts_with('$') {
            continue;
        }
        let order = changes.get(&format!("$setElementOrder/{name}")).and_then(Value::as_array);
        let deletions = changes.get(&format!("$deleteFromPrimitiveList/{name}")).and_then(Value::as_array);
        match change {
            Value::Null => {
                fields.remove(name);
            }
            Value::Object(inner) if inner.get("$patch").and_then(Value::as_str) == Some("delete") => {
                fields.remove(name);
            }
            Value::Object(inner) => match fields.get_mut(name) {
                Some(Value::Object(existing)) => strategic_object(existing, inner),
                _ => {
                    fields.insert(name.clone(), without_directives(change));
                }
            },
            Value::Array(items) => {
                let merged = match (fields.remove(name), order) {
                    (Some(Value::Array(existing)), Some(order)) => merge_list(existing, items, order, deletions),
                    _ => Value::Array(
                        items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(without_directives)
                            .collect(),
                    ),
                };
                fields.insert(name.clone(), merged);
            }
            other => {
                fields.insert(name.clone(), other.clone());
            }
        }
    }
    // Directives for lists the patch does not otherwise mention.
    for (directive, values) in changes {
        let Some(values) = values.as_array() else { continue };
        if let Some(name) = directive.strip_prefix("$deleteFromPrimitiveList/")
            && !changes.contains_key(name)
            && let Some(Value::Array(existing)) = fields.get_mut(name)
        {
            existing.retain(|v| !values.contains(v));
        }
        if let Some(name) = directive.strip_prefix("$setElementOrder/")
            && !changes.contains_key(name)
            && let Some(Value::Array(existing)) = fields.get_mut(name)
        {
            let merge_key = merge_key(values);
            *existing = reorder(std::mem::take(existing), values, merge_key.as_deref());
        }
    }
}

/// The merge key a `$setElementOrder` list names: its entries are objects
/// holding only that key (or plain values, for a list of primitives).
fn merge_key(order: &[Value]) -> Option<String> {
    order.first()?.as_object()?.keys().next().cloned()
}

fn merge_list(mut existing: Vec<Value>, items: &[Value], order: &[Value], deletions: Option<&Vec<Value>>) -> Value {
    match merge_key(order) {
        Some(key) => {
            for item in items {
                let id = item.get(&key);
                let position = existing.iter().position(|e| e.get(&key) == id);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        existing.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic(&mut existing[i], item),
                    (None, false) => existing.push(without_directives(item)),
                }
            }
            Value::Array(reorder(existing, order, Some(&key)))
        }
        None => {
            for item in items {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
            if let Some(deletions) = deletions {
                existing.retain(|v| !deletions.contains(v));
            }
            Value::Array(reorder(existing, order, None))
        }
    }
}

/// Puts the items named in `order` first, in that order, then the rest.
fn reorder(items: Vec<Value>, order: &[Value], key: Option<&str>) -> Vec<Value> {
    let identity = |v: &Value| -> Value {
        match key {
            Some(key) => v.get(key).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(identity).collect();
    let mut slots: Vec<Option<Value>> = items.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    for id in &wanted {
        if let Some(slot) = slots.iter_mut().find(|s| s.as_ref().is_some_and(|v| identity(v) == *id)) {
            out.extend(slot.take());
        }
    }
    out.extend(slots.into_iter().flatten());
    out
}

/// A patch value with every `$` directive removed.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::strategic;

    #[test]
    fn strategic_patch_merges_lists_kubectl_orders() {
        let mut live = json!({"spec": {"versions": [
            {"name": "v1", "served": true, "storage": true},
            {"name": "v2", "served": false},
        ], "finalizers": ["a"], "labels": {"x": "1"}}});
        let patch = json!({"spec": {
            "$setElementOrder/versions": [{"name": "v2"}, {"name": "v1"}],
            "versions": [{"name": "v2", "served": true}],
            "$setElementOrder/finalizers": ["a", "b"],
            "finalizers": ["b"],
            "labels": {"x": null, "y": "2"},
        }});
        strategic(&mut live, &patch);
        assert_eq!(
            live,
            json!({"spec": {"versions": [
                {"name": "v2", "served": true},
                {"name": "v1", "served": true, "storage": true},
            ], "finalizers": ["a", "b"], "labels": {"y": "2"}}})
        );
    }

    #[test]
    fn strategic_patch_without_order_replaces_lists_and_honours_delete() {
        let mut live = json!({"items": [1, 2], "ports": [{"name": "a"}, {"name": "b"}]});
        let patch = json!({
            "items": [3],
            "$setElementOrder/ports": [{"name": "b"}],
            "ports": [{"name": "a", "$patch": "delete"}],
        });
        strategic(&mut live, &patch);
        assert_eq!(live, json!({"items": [3], "ports": [{"name": "b"}]}));
    }
}
