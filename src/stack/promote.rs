//! Promoting a tenant's warm standby to its primary: first let it replay up to
//! the newest segment the archive holds, so that it loses no more than a
//! restore would (promotion ends replay at the first segment it cannot
//! fetch), then `pg_promote`. The lab's Local driver and `fenice agent verify
//! --promote` (a failover's Job at a Kubernetes site) both promote this way.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::wal;
use crate::repo::repository::Repository;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("promoting tenant {tenant}'s standby: {what} failed")]
    Query {
        tenant: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("promoting tenant {tenant}'s standby: reading the WAL archive")]
    Archive {
        tenant: String,
        #[source]
        source: wal::Error,
    },

    #[error(
        "tenant {tenant} was promoted, but its timeline's history file {history} did not reach the archive \
         within {waited:?}: check that archive_command (`fenice agent wal-push`) works there; the step is tried again"
    )]
    HistoryNotArchived { tenant: String, history: String, waited: Duration },
}

/// How a promotion went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Promoted {
    /// The standby replayed the newest archived segment, then was promoted.
    CaughtUp,
    /// It had not replayed the newest archived segment (`newest`) after the
    /// wait, and was promoted where it was (`replayed`, an LSN).
    Behind { newest: String, replayed: Option<String> },
    /// It was not in recovery: promoted already.
    Already,
}

/// Promotes the standby `client` is connected to, after waiting up to
/// `catch_up` for it to replay the newest segment `repo` holds of `tenant`.
pub async fn promote(repo: &Repository, tenant: &str, client: &Client, catch_up: Duration) -> Result<Promoted, Error> {
    let query = |what| move |source| Error::Query { tenant: tenant.to_owned(), what, source };
    let in_recovery: bool =
        client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(query("pg_is_in_recovery"))?.get(0);
    if !in_recovery {
        return Ok(Promoted::Already);
    }
    let newest = wal::newest_segment(repo, tenant)
        .await
        .map_err(|source| Error::Archive { tenant: tenant.to_owned(), source })?;
    let deadline = Instant::now() + catch_up;
    let outcome = loop {
        let Some(newest) = &newest else { break Promoted::CaughtUp };
        let row = client
            .query_one("SELECT pg_last_wal_replay_lsn()::text, pg_size_bytes(current_setting('wal_segment_size'))", &[])
            .await
            .map_err(query("pg_last_wal_replay_lsn"))?;
        let (replayed, size): (Option<String>, i64) = (row.get(0), row.get(1));
        let size = size.max(1) as u64;
        let at = replayed.as_deref().and_then(lsn).map(|lsn| lsn / size);
        let wanted = wal::segment_number(newest, size);
        if at.zip(wanted).is_none_or(|(at, wanted)| at >= wanted) {
            break Promoted::CaughtUp;
        }
        if Instant::now() >= deadline {
            break Promoted::Behind { newest: newest.clone(), replayed };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    client.execute("SELECT pg_promote(true, 60)", &[]).await.map_err(query("pg_promote"))?;
    Ok(outcome)
}

/// Waits, up to `within`, until the history file of the timeline the
/// promoted server `client` writes on is in the archive; that timeline. Until
/// then another site cannot tell that this promotion replaced its database
/// (`pitr::set_aside_if_diverged`), so a failover does not serve it before.
pub async fn wait_until_timeline_archived(
    repo: &Repository,
    tenant: &str,
    client: &Client,
    within: Duration,
) -> Result<u32, Error> {
    let query = |what| move |source| Error::Query { tenant: tenant.to_owned(), what, source };
    let row = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(query("pg_current_wal_lsn"))?;
    let segment: String = row.get(0);
    let timeline = segment.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()).unwrap_or(1);
    if timeline == 1 {
        return Ok(timeline);
    }
    let history = wal::history_file(timeline);
    let deadline = Instant::now() + within;
    loop {
        let archived = wal::is_archived(repo, tenant, &history)
            .await
            .map_err(|source| Error::Archive { tenant: tenant.to_owned(), source })?;
        if archived {
            return Ok(timeline);
        }
        if Instant::now() >= deadline {
            return Err(Error::HistoryNotArchived { tenant: tenant.to_owned(), history, waited: within });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An LSN as PostgreSQL prints it (`16/B374D848`), as a number.
fn lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some(u64::from_str_radix(high, 16).ok()? << 32 | u64::from_str_radix(low, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lsn_reads_as_its_byte_position() {
        assert_eq!(lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn("0/0"), Some(0));
        assert_eq!(lsn("nonsense"), None);
    }
}
