//! Repository locations as users write them: a path or `file://…`,
//! `s3://bucket/prefix`, `az://account/container/prefix`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::Error;

/// Where a store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Filesystem { path: PathBuf },
    S3 { bucket: String, prefix: String },
    Azure { account: String, container: String, prefix: String },
}

impl FromStr for Location {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| Error::InvalidLocation { location: text.to_owned(), why: why.to_owned() };
        let split = |rest: &str| -> (String, String) {
            let rest = rest.trim_end_matches('/');
            match rest.split_once('/') {
                Some((head, tail)) => (head.to_owned(), tail.trim_matches('/').to_owned()),
                None => (rest.to_owned(), String::new()),
            }
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest);
            if bucket.is_empty() {
                return Err(invalid("name the bucket: s3://bucket/prefix"));
            }
            return Ok(Location::S3 { bucket, prefix });
        }
        if let Some(rest) = text.strip_prefix("az://") {
            let (account, rest) = split(rest);
            let (container, prefix) = split(&rest);
            if account.is_empty() || container.is_empty() {
                return Err(invalid("name the account and the container: az://account/container/prefix"));
            }
            return Ok(Location::Azure { account, container, prefix });
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(invalid(&format!("unknown scheme {scheme}://; use a path, file://, s3:// or az://")));
        }
        Ok(Location::Filesystem { path: PathBuf::from(path) })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_prefix = |f: &mut fmt::Formatter<'_>, base: String, prefix: &str| {
            if prefix.is_empty() { f.write_str(&base) } else { write!(f, "{base}/{prefix}") }
        };
        match self {
            Location::Filesystem { path } => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => with_prefix(f, format!("s3://{bucket}"), prefix),
            Location::Azure { account, container, prefix } => {
                with_prefix(f, format!("az://{account}/{container}"), prefix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        let cases = [
            ("/srv/backups", Location::Filesystem { path: "/srv/backups".into() }),
            ("file:///srv/backups", Location::Filesystem { path: "/srv/backups".into() }),
            ("s3://bkt", Location::S3 { bucket: "bkt".into(), prefix: String::new() }),
            ("s3://bkt/a/b/", Location::S3 { bucket: "bkt".into(), prefix: "a/b".into() }),
            (
                "az://acct/cont/p",
                Location::Azure { account: "acct".into(), container: "cont".into(), prefix: "p".into() },
            ),
        ];
        for (text, want) in cases {
            let got: Location = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            let again: Location = got.to_string().parse().unwrap();
            assert_eq!(again, want, "{text} printed as {got}");
        }
    }

    #[test]
    fn malformed_locations_say_what_to_write() {
        for (text, hint) in [
            ("s3://", "s3://bucket/prefix"),
            ("az://acct", "az://account/container/prefix"),
            ("gs://bucket", "unknown scheme gs://"),
            ("", "empty path"),
        ] {
            let err = text.parse::<Location>().unwrap_err().to_string();
            assert!(err.contains(hint), "{text}: {err}");
        }
    }
}
