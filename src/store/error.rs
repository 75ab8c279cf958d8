//! Errors of object stores. Every message names the store and the key, and none
//! carries a credential.

use std::time::SystemTime;

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{store}: object {key} does not exist")]
    NotFound { store: String, key: String },

    #[error("{store}: object {key} already exists and objects are never rewritten")]
    AlreadyExists { store: String, key: String },

    #[error("{store}: object {key} changed since it was read (its ETag no longer matches)")]
    PreconditionFailed { store: String, key: String },

    #[error("{store}: object {key} is immutable{}; the store refused to delete or overwrite it", until_text(.until))]
    Immutable { store: String, key: String, until: Option<SystemTime> },

    #[error("{store}: access denied for {operation} on {key}: check the credentials and their permissions")]
    Denied { store: String, operation: &'static str, key: String },

    #[error("{store}: unreachable after {attempts} attempts: {reason}; check the endpoint and the network")]
    Unreachable { store: String, attempts: u32, reason: String },

    #[error("{store}: {what} is not supported here: {why}")]
    Unsupported { store: String, what: &'static str, why: String },

    #[error("{store}: {operation} on {key} failed")]
    Io {
        store: String,
        operation: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{store}: {operation} on {key} failed: {message}")]
    Service { store: String, operation: &'static str, key: String, message: String },

    #[error("invalid key {key:?}: keys are relative `/`-separated paths without `.`, `..` or empty parts")]
    InvalidKey { key: String },

    #[error("invalid repository location {location:?}: {why}")]
    InvalidLocation { location: String, why: String },
}

fn until_text(until: &Option<SystemTime>) -> String {
    match until.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => format!(" until {}s after the Unix epoch", d.as_secs()),
        None => String::new(),
    }
}

impl Error {
    /// A short stable label for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "NotFound",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::PreconditionFailed { .. } => "PreconditionFailed",
            Error::Immutable { .. } => "Immutable",
            Error::Denied { .. } => "Denied",
            Error::Unreachable { .. } => "Unreachable",
            Error::Unsupported { .. } => "Unsupported",
            Error::Io { .. } => "Io",
            Error::Service { .. } => "Service",
            Error::InvalidKey { .. } => "InvalidKey",
            Error::InvalidLocation { .. } => "InvalidLocation",
        }
    }
}

/// Refuses keys that could escape a prefix or a directory.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|part| part.is_empty() || part == "." || part == "..")
        || key.contains('\\')
        || key.contains('\0');
    if bad { Err(Error::InvalidKey { key: key.to_owned() }) } else { Ok(()) }
}

impl Error {
    /// A failure that may pass (no answer, throttled, a 5xx after the
    /// retries): worth trying the whole operation again later, unlike a
    /// missing object, a refusal or a bad location.
    pub fn may_pass(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Service { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for key in ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b"] {
            assert!(matches!(check_key(key), Err(Error::InvalidKey { .. })), "{key:?}");
        }
        for key in ["config", "data/3f/3f2a", "keys/a.b"] {
            assert!(check_key(key).is_ok(), "{key:?}");
        }
    }
}
