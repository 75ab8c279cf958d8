//! Errors as one line of text, for messages, status fields and JSON output.

/// An error and its sources, `outer: inner: innermost`, each said once
/// (wrappers often repeat their source's text).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("restoring tenant acme")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_follow_their_wrapper_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "restoring tenant acme: connection refused");
    }
}
