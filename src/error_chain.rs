//! Errors as one line of text, for messages, status fields and JSON output.

/// An error and its sources, `outer: inner: innermost`, each said once
/// (wrappers often repeat their source's text, and a source often begins by
/// naming what its wrapper ended with: `repository s3://b/p` then
/// `s3://b/p: list failed` reads `repository s3://b/p: list failed`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(err) = next {
        let mut text = err.to_string();
        if let (Some(last), Some((head, rest))) = (parts.last(), text.split_once(": "))
            && head.len() >= 8
            && last.ends_with(head)
        {
            text = rest.to_owned();
        }
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
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

    #[derive(Debug, thiserror::Error)]
    #[error("repository s3://tenants/lab at http://127.0.0.1:9000")]
    struct Repository(#[source] std::io::Error);

    #[test]
    fn a_source_naming_what_its_wrapper_named_says_it_once() {
        let inner = std::io::Error::other("s3://tenants/lab at http://127.0.0.1:9000: list on prefix index/ failed");
        assert_eq!(
            error_chain(&Repository(inner)),
            "repository s3://tenants/lab at http://127.0.0.1:9000: list on prefix index/ failed"
        );
        // A short shared word is not taken for a name.
        let e = Outer(std::io::Error::other("acme: no such database"));
        assert_eq!(error_chain(&e), "restoring tenant acme: acme: no such database");
    }
}
