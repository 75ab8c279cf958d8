//! `labelSelector` and `fieldSelector` query parameters: parsing, and matching
//! an object's JSON.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl Requirement {
    /// Whether the requirement holds, given how to look a key up.
    fn holds<'v>(&self, lookup: impl Fn(&str) -> Option<&'v str>) -> bool {
        match self {
            Requirement::Equals(k, v) => lookup(k) == Some(v.as_str()),
            // NB: as in Kubernetes, `!=` and `notin` also match objects without the key.
            Requirement::NotEquals(k, v) => lookup(k) != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::NotIn(k, vs) => lookup(k).is_none_or(|have| vs.iter().all(|v| v != have)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::DoesNotExist(k) => lookup(k).is_none(),
            Requirement::GreaterThan(k, n) => lookup(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => lookup(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        }
    }
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value`,
/// comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the Kubernetes label selector syntax: `k=v`, `k==v`, `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_label_requirement(part)?);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.requirements.iter().all(|r| r.holds(|key| labels.and_then(|l| l.get(key)).and_then(Value::as_str)))
    }
}

impl FieldSelector {
    /// Parses `path=value` terms. Any dotted path into the object is accepted
    /// (the real server accepts only a few per kind; `metadata.name` and
    /// `metadata.namespace` work everywhere).
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else {
                return Err(format!("invalid selector: '{text}'; can't understand '{part}'"));
            };
            requirements.push(requirement);
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the object's fields satisfy the selector. A missing field reads
    /// as the empty string, as in Kubernetes (`metadata.namespace=` selects
    /// cluster-scoped objects).
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(path, value) => field_text(object, path) == *value,
            Requirement::NotEquals(path, value) => field_text(object, path) != *value,
            _ => true,
        })
    }
}

/// The text of a field at a dotted path, as a field selector compares it.
fn field_text(object: &Value, path: &str) -> String {
    let mut here = object;
    for step in path.split('.') {
        match here.get(step) {
            Some(next) => here = next,
            None => return String::new(),
        }
    }
    match here {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_requirement(part: &str) -> Result<Requirement, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {part:?}");
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key.trim()).map_err(|e| bad(&e))?));
    }
    for (op, set_op) in [(" notin ", true), (" in ", false)] {
        if let Some((key, rest)) = part.split_once(op) {
            let key = label_key(key.trim()).map_err(|e| bad(&e))?;
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected a list of values in parentheses"))?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
            if values.is_empty() {
                return Err(bad("for 'in', 'notin' operators, values set can't be empty"));
            }
            return Ok(if set_op { Requirement::NotIn(key, values) } else { Requirement::In(key, values) });
        }
    }
    type Build = fn(String, String) -> Result<Requirement, String>;
    let ops: [(&str, Build); 5] = [
        ("!=", |k, v| Ok(Requirement::NotEquals(k, v))),
        ("==", |k, v| Ok(Requirement::Equals(k, v))),
        ("=", |k, v| Ok(Requirement::Equals(k, v))),
        (">", |k, v| v.parse().map(|n| Requirement::GreaterThan(k, n)).map_err(|_| "not an integer".to_owned())),
        ("<", |k, v| v.parse().map(|n| Requirement::LessThan(k, n)).map_err(|_| "not an integer".to_owned())),
    ];
    for (op, build) in ops {
        if let Some((key, value)) = part.split_once(op) {
            let key = label_key(key.trim()).map_err(|e| bad(&e))?;
            let value = value.trim();
            label_value(value).map_err(|e| bad(&e))?;
            return build(key, value.to_owned()).map_err(|e| bad(&e));
        }
    }
    Ok(Requirement::Exists(label_key(part).map_err(|e| bad(&e))?))
}

fn label_key(key: &str) -> Result<String, String> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_owned())
}

fn label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{FieldSelector, LabelSelector};

    fn labelled(labels: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let object = labelled(json!({"tier": "gold", "app": "fenice", "n": "5"}));
        let cases = [
            ("tier=gold", true),
            ("tier==gold", true),
            ("tier!=gold", false),
            ("tier!=silver", true),
            ("missing!=x", true),
            ("tier in (gold, silver)", true),
            ("tier notin (gold)", false),
            ("missing notin (gold)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("tier=gold,app=fenice", true),
            ("tier in (silver,bronze),app", false),
            ("n>4", true),
            ("n<4", false),
            ("", true),
        ];
        for (selector, want) in cases {
            let parsed = LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(&object), want, "{selector}");
        }
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        for selector in ["tier in gold", "tier in ()", "bad key=1", "k=v w"] {
            assert!(LabelSelector::parse(selector).is_err(), "{selector}");
        }
    }

    #[test]
    fn field_selectors_match_name_and_namespace() {
        let object = labelled(json!({}));
        for (selector, want) in [
            ("metadata.name=a", true),
            ("metadata.name==b", false),
            ("metadata.namespace!=ns", false),
            ("metadata.name=a,metadata.namespace=ns", true),
        ] {
            assert_eq!(FieldSelector::parse(selector).unwrap().matches(&object), want, "{selector}");
        }
    }
}
