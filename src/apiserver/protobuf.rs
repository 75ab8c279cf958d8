//! Just enough of the Kubernetes protobuf encoding to read what
//! `kubectl create namespace|secret|configmap|serviceaccount` sends: kubectl's
//! typed clients write built-in kinds as protobuf and do not fall back to
//! JSON. Anything else sent as protobuf gets 415; responses are always JSON.

use serde_json::{Map, Value, json};

/// The four bytes before every protobuf-encoded object.
const MAGIC: &[u8] = b"k8s\x00";

/// One field of a message: its number and raw value.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Reads the fields of one message, or fails on malformed input.
fn fields(mut data: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(&mut data)?),
            2 => {
                let length = usize::try_from(varint(&mut data)?).map_err(|_| "length overflows")?;
                if length > data.len() {
                    return Err("truncated field".into());
                }
                let (value, rest) = data.split_at(length);
                data = rest;
                Field::Bytes(value)
            }
            1 => {
                data = data.get(8..).ok_or("truncated fixed64")?;
                continue;
            }
            5 => {
                data = data.get(4..).ok_or("truncated fixed32")?;
                continue;
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

fn varint(data: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first().ok_or("truncated varint")?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_owned())
}

/// A `map<string, string>` (or `map<string, bytes>`, base64-encoded as in JSON) entry.
fn map_entry(bytes: &[u8], values_are_bytes: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) if values_are_bytes => {
                use base64::Engine;
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Field::Bytes(b)) => value = Value::String(text(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(object: &mut Map<String, Value>, field: &str, entry: (String, Value)) {
    if let Some(map) = object.entry(field).or_insert_with(|| json!({})).as_object_mut() {
        map.insert(entry.0, entry.1);
    }
}

fn push(object: &mut Map<String, Value>, field: &str, value: Value) {
    if let Some(list) = object.entry(field).or_insert_with(|| json!([])).as_array_mut() {
        list.push(value);
    }
}

fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    for (number, field) in fields(bytes)? {
        // NB: Go writes empty strings too; they mean "not set".
        if matches!(field, Field::Bytes(b) if b.is_empty()) {
            continue;
        }
        match (number, field) {
            (1, Field::Bytes(b)) => drop(meta.insert("name".into(), json!(text(b)?))),
            (2, Field::Bytes(b)) => drop(meta.insert("generateName".into(), json!(text(b)?))),
            (3, Field::Bytes(b)) => drop(meta.insert("namespace".into(), json!(text(b)?))),
            (6, Field::Bytes(b)) => drop(meta.insert("resourceVersion".into(), json!(text(b)?))),
            (11, Field::Bytes(b)) => insert_entry(&mut meta, "labels", map_entry(b, false)?),
            (12, Field::Bytes(b)) => insert_entry(&mut meta, "annotations", map_entry(b, false)?),
            (14, Field::Bytes(b)) => push(&mut meta, "finalizers", json!(text(b)?)),
            _ => {}
        }
    }
    Ok(Value::Object(meta))
}

/// Decodes a protobuf-encoded Namespace, Secret, ConfigMap or ServiceAccount
/// into its JSON form; `Err` says why not.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(MAGIC).ok_or("not a Kubernetes protobuf message")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (number, field) in fields(envelope)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    for (number, field) in fields(raw)? {
        let Field::Bytes(b) = field else {
            if let (5, "Secret", Field::Varint(v)) | (4, "ConfigMap", Field::Varint(v)) = (number, kind.as_str(), field)
            {
                object.insert("immutable".into(), json!(v != 0));
            }
            continue;
        };
        match (kind.as_str(), number) {
            (_, 1) => drop(object.insert("metadata".into(), object_meta(b)?)),
            ("Namespace", 2) => {
                let mut spec = Map::new();
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(finalizer)) = (n, f) {
                        push(&mut spec, "finalizers", json!(text(finalizer)?));
                    }
                }
                object.insert("spec".into(), Value::Object(spec));
            }
            ("ConfigMap", 2) => insert_entry(&mut object, "data", map_entry(b, false)?),
            ("ConfigMap", 3) => insert_entry(&mut object, "binaryData", map_entry(b, true)?),
            ("Secret", 2) => insert_entry(&mut object, "data", map_entry(b, true)?),
            ("Secret", 3) => drop(object.insert("type".into(), json!(text(b)?))),
            ("Secret", 4) => insert_entry(&mut object, "stringData", map_entry(b, false)?),
            ("Namespace" | "ConfigMap" | "Secret" | "ServiceAccount", _) => {}
            _ => return Err(format!("{kind} in protobuf is not supported; send it as JSON (kubectl apply -f)")),
        }
    }
    if !matches!(kind.as_str(), "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount") {
        return Err(format!("{kind} in protobuf is not supported; send it as JSON (kubectl apply -f)"));
    }
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::decode;

    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        [field(1, key.as_bytes()), field(2, value)].concat()
    }

    #[test]
    fn a_secret_from_kubectl_create_decodes() {
        let meta = [field(1, b"repo"), field(2, b""), field(11, &entry("app", b"fenice"))].concat();
        let secret = [field(1, &meta), field(2, &entry("password", b"hunter2")), field(3, b"Opaque")].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [b"k8s\x00".to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "repo", "labels": {"app": "fenice"}},
                "data": {"password": "aHVudGVyMg=="},
                "type": "Opaque",
            })
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let type_meta = [field(1, b"batch/v1"), field(2, b"Job")].concat();
        let job = [b"k8s\x00".to_vec(), field(1, &type_meta), field(2, &field(1, &field(1, b"j")))].concat();
        assert!(decode(&job).is_err());
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\x00\x0a\xff").is_err());
    }
}
