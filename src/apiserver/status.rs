//! Failures as the Kubernetes API reports them: a `kind: Status` body with
//! `status: Failure`, a `reason`, the HTTP `code`, and a message worded like
//! the real server's, which clients match on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level cause of a failure (`details.causes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldManagerConflict`, ...
    pub reason: &'static str,
    pub message: String,
    /// The field path, `spec.app.replicas` or `spec.sdi.channels[0].site`.
    pub field: String,
}

/// What a request failed with.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<Box<Details>>,
}

#[derive(Clone, Debug)]
struct Details {
    name: String,
    group: String,
    /// The resource (plural) for most reasons, the kind for Invalid, like the real server.
    kind: String,
    causes: Vec<Cause>,
}

/// The `plural.group` (or just `plural` for the core group) the real server
/// names resources by in messages.
pub fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str, causes: Vec<Cause>) -> ApiError {
        self.details =
            Some(Box::new(Details { name: name.to_owned(), group: group.to_owned(), kind: kind.to_owned(), causes }));
        self
    }

    /// 404: `invoicingtenants.fenice.io "acme" not found`.
    pub fn not_found(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(plural, group))).with_details(
            name,
            group,
            plural,
            Vec::new(),
        )
    }

    /// 404 for a path that names no resource at all.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// 409: `invoicingtenants.fenice.io "acme" already exists`.
    pub fn already_exists(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(plural, group)))
            .with_details(name, group, plural, Vec::new())
    }

    /// 409: `Operation cannot be fulfilled on invoicingtenants.fenice.io "acme": {why}`.
    pub fn conflict(plural: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", qualified(plural, group)),
        )
        .with_details(name, group, plural, Vec::new())
    }

    /// 409 for a stale `metadata.resourceVersion`.
    pub fn stale(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::conflict(
            plural,
            group,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 from server-side apply: fields owned by other managers.
    /// `conflicts` pairs each manager with a field path (`.spec.tier`).
    pub fn apply_conflicts(plural: &str, group: &str, name: &str, conflicts: &[(String, String)]) -> ApiError {
        let count = conflicts.len();
        let plural_s = if count == 1 { "" } else { "s" };
        let mut message = format!("Apply failed with {count} conflict{plural_s}:");
        let mut managers: Vec<&str> = conflicts.iter().map(|(m, _)| m.as_str()).collect();
        managers.dedup();
        for manager in managers {
            let fields: Vec<&str> = conflicts.iter().filter(|(m, _)| m == manager).map(|(_, f)| f.as_str()).collect();
            if fields.len() == 1 {
                message.push_str(&format!(" conflict with \"{manager}\": {}", fields[0]));
            } else {
                message.push_str(&format!(" conflicts with \"{manager}\":"));
                for field in fields {
                    message.push_str(&format!("\n- {field}"));
                }
            }
        }
        let causes = conflicts
            .iter()
            .map(|(manager, field)| Cause {
                reason: "FieldManagerConflict",
                message: format!("conflict with \"{manager}\""),
                field: field.clone(),
            })
            .collect();
        ApiError::new(409, "Conflict", message).with_details(name, group, plural, causes)
    }

    /// 422: `InvoicingTenant.fenice.io "acme" is invalid: spec.tier: Required value`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let qualified_kind = qualified(kind, group);
        let described: Vec<String> = causes.iter().map(describe_cause).collect();
        let list = if described.len() == 1 { described[0].clone() } else { format!("[{}]", described.join(", ")) };
        ApiError::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {list}"))
            .with_details(name, group, kind, causes)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// 415, naming the media types that would do.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 410 for a resourceVersion older than the kept history. NB: the real
    /// server says reason `Expired` here (code 410, "Gone"), and clients look
    /// at the code.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 403, e.g. creating in a namespace that is being deleted.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    /// 500, for what should not happen.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// The `kind: Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            let mut d = json!({"kind": details.kind});
            if !details.name.is_empty() {
                d["name"] = json!(details.name);
            }
            if !details.group.is_empty() {
                d["group"] = json!(details.group);
            }
            if !details.causes.is_empty() {
                d["causes"] = details
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = d;
        }
        status
    }
}

/// `spec.tier: Required value`, the way the real server joins a field error.
fn describe_cause(cause: &Cause) -> String {
    if cause.field.is_empty() { cause.message.clone() } else { format!("{}: {}", cause.field, cause.message) }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}
