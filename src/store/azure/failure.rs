//! What an Azure call left behind after retries, and how it becomes a store
//! [`Error`]. Nothing here copies a URL or a service message verbatim into an
//! error: URLs carry the SAS, so text from outside goes through [`scrub`].

use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;

use crate::store::Error;
use crate::store::retry::{GaveUp, LastFailure};

/// Service error codes we act on (`x-ms-error-code`).
pub(super) const BLOB_IMMUTABLE: &str = "BlobImmutableDueToPolicy";
pub(super) const CONTAINER_EXISTS: &str = "ContainerAlreadyExists";

/// The last failure of a call, after retries.
#[derive(Debug)]
pub(super) struct Failure {
    pub attempts: u32,
    pub last: LastFailure<azure_core::Error>,
}

impl From<GaveUp<azure_core::Error>> for Failure {
    fn from(gave_up: GaveUp<azure_core::Error>) -> Self {
        Self { attempts: gave_up.attempts, last: gave_up.last }
    }
}

impl Failure {
    /// The HTTP status the service answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match &self.last {
            LastFailure::Failed(e) => e.http_status().map(u16::from),
            LastFailure::TimedOut(_) => None,
        }
    }

    /// The service's error code, e.g. `BlobAlreadyExists`.
    pub fn code(&self) -> Option<&str> {
        match &self.last {
            LastFailure::Failed(e) => match e.kind() {
                ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
                _ => None,
            },
            LastFailure::TimedOut(_) => None,
        }
    }

    /// The store error for everything the caller did not sort out itself.
    pub fn into_error(self, store: String, operation: &'static str, key: &str) -> Error {
        let key = key.to_owned();
        let attempts = self.attempts;
        let e = match self.last {
            LastFailure::TimedOut(limit) => {
                let reason = format!("no answer within {} per attempt", seconds(limit));
                return Error::Unreachable { store, attempts, reason };
            }
            LastFailure::Failed(e) => e,
        };
        match e.kind() {
            ErrorKind::Connection => Error::Unreachable { store, attempts, reason: connection_reason(&e) },
            ErrorKind::Io => Error::Unreachable {
                store,
                attempts,
                reason: format!("the connection broke: {}", connection_reason(&e)),
            },
            ErrorKind::Credential => {
                Error::Service { store, operation, key, message: scrub(&format!("authentication failed: {e}")) }
            }
            ErrorKind::HttpResponse { status, error_code, .. } => {
                let code = error_code.as_deref().unwrap_or("no error code");
                match u16::from(*status) {
                    401 | 403 => Error::Denied { store, operation, key },
                    404 => Error::NotFound { store, key },
                    409 if code == BLOB_IMMUTABLE => Error::Immutable { store, key, until: None },
                    501 => Error::Unsupported {
                        store,
                        what: operation,
                        why: format!("the service does not implement it (501 {})", scrub(code)),
                    },
                    s if is_transient_status(s) => Error::Service {
                        store,
                        operation,
                        key,
                        message: format!("the service still answered {s} ({}) after {attempts} attempts", scrub(code)),
                    },
                    s => Error::Service { store, operation, key, message: format!("HTTP {s} ({})", scrub(code)) },
                }
            }
            _ => Error::Service { store, operation, key, message: scrub(&e.to_string()) },
        }
    }
}

/// Worth another attempt: throttling (429, 503 ServerBusy), server errors and
/// broken connections. 501 is a server error that never heals.
pub(super) fn is_transient(e: &azure_core::Error) -> bool {
    match e.kind() {
        ErrorKind::Connection | ErrorKind::Io => true,
        ErrorKind::HttpResponse { status, .. } => is_transient_status(u16::from(*status)),
        _ => false,
    }
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Whether a request may have reached the service (so a write may have
/// happened even though we got no answer).
pub(super) fn may_have_landed(e: &azure_core::Error) -> bool {
    !matches!(e.kind(), ErrorKind::Connection)
}

pub(super) fn is_azurite(headers: &azure_core::http::headers::Headers) -> bool {
    headers.get_optional_str(&HeaderName::from_static("server")).is_some_and(|s| s.starts_with("Azurite"))
}

/// Why a connection failed, from the innermost I/O error: the outer errors
/// (reqwest's) print the request URL, SAS included.
fn connection_reason(e: &azure_core::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut found = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            found = Some(io.to_string());
        }
        source = s.source();
    }
    scrub(&found.unwrap_or_else(|| "the connection failed".to_owned()))
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Cuts SAS signatures out of text that came from outside.
pub(super) fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at]);
        out.push_str("[redacted]");
        let tail = &rest[at + 4..];
        let end = tail.find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace()).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_signature() {
        let text = "error sending request for url (http://h/c/k?sv=1&sig=AbC%2B%3D&se=x) and sig=zz";
        let clean = scrub(text);
        assert!(!clean.contains("sig=") && !clean.contains("AbC") && !clean.contains("zz"), "{clean}");
        assert!(clean.contains("sv=1&[redacted]&se=x)"), "{clean}");
    }

    #[test]
    fn throttling_and_server_errors_are_retried_but_not_501() {
        for status in [429, 500, 503] {
            assert!(is_transient_status(status), "{status}");
        }
        for status in [400, 403, 404, 409, 412, 501] {
            assert!(!is_transient_status(status), "{status}");
        }
    }
}
