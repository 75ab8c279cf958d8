//! `fenice crd`: the CustomResourceDefinitions as one multi-document YAML.

use std::io::{self, Write};

use anyhow::Context;

use crate::api;

/// Writes every CRD, each document introduced by `---`.
pub fn print(out: &mut impl Write) -> anyhow::Result<()> {
    let mut text = String::new();
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd).with_context(|| format!("serializing CRD {name} to YAML"))?;
        text.push_str("---\n");
        text.push_str(&yaml);
    }
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // NB: `fenice crd | head` closes the pipe early; that is not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the CRDs to stdout"),
    }
}
