//! The check of a tenant's SdI channel certificates a drill makes: each
//! channel's certificate is read from its Secret and judged by the date in
//! the certificate itself. Expired, missing or unreadable fails the drill (the
//! channel could not transmit after a failover); expiring within 30 days is a
//! warning. Messages name the channel and the Secret, never a value.

use jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use super::secrets;
use crate::api::tenant::InvoicingTenant;
use crate::drill::certificate::{self, Standing};

/// What the check found.
#[derive(Debug, Default)]
pub struct Checked {
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    /// When the first readable certificate expires.
    pub earliest: Option<Timestamp>,
}

pub async fn check(ctx: &Context, tenant: &InvoicingTenant, now: Timestamp) -> Checked {
    let namespace = tenant.namespace().unwrap_or_else(|| "default".into());
    let mut checked = Checked::default();
    for channel in &tenant.spec.sdi.channels {
        let reference = &channel.certificate_secret_ref;
        // NB: the kind as manifests spell it (SDICoop), not as Rust does.
        let kind = serde_json::to_value(channel.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
        let shown = format!(
            "the {} channel at site {} (certificate in Secret {}/{}, key {:?})",
            kind.unwrap_or_default(),
            channel.site,
            reference.namespace.as_deref().unwrap_or(&namespace),
            reference.name,
            reference.key
        );
        let text = match secrets::key(&ctx.client, &namespace, reference).await {
            Ok(text) => text,
            Err(e) => {
                checked.failures.push(format!("{shown} cannot be checked: {e}"));
                continue;
            }
        };
        let not_after = match certificate::not_after(&text) {
            Ok(not_after) => not_after,
            Err(e) => {
                checked.failures.push(format!("{shown}: {e}"));
                continue;
            }
        };
        checked.earliest = Some(checked.earliest.map_or(not_after, |t| t.min(not_after)));
        let days = not_after.duration_since(now).as_secs() / 86_400;
        match certificate::standing(not_after, now) {
            Standing::Valid => {}
            Standing::Expiring => checked
                .warnings
                .push(format!("{shown} expires on {not_after}, in {days} days: renew it before it does")),
            Standing::Expired => checked
                .failures
                .push(format!("{shown} expired on {not_after}: the channel cannot transmit; renew the certificate")),
        }
    }
    checked
}
