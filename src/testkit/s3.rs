//! An S3 service: moto's server (`moto_server`, from PyPI `moto[server]`), keeping
//! everything in memory. It takes any credentials and checks no signature.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use super::process;
use super::{Error, HttpServer, Result};

const SERVER: &str = "s3 (moto)";
const PROGRAM: &str = "moto_server";

/// A running moto S3 server, stopped on drop. Its address, port, process id and
/// log come from [`HttpServer`].
#[derive(Debug)]
pub struct S3Server {
    inner: HttpServer,
}

impl Deref for S3Server {
    type Target = HttpServer;

    fn deref(&self) -> &HttpServer {
        &self.inner
    }
}

impl S3Server {
    /// Starts moto on a free port and waits until it lists buckets.
    pub fn start() -> Result<Self> {
        let program = find_moto()?;
        let inner = HttpServer::start(
            SERVER,
            "fenice-s3-",
            None,
            &super::Placement::here(),
            "/",
            |r| r.status == 200 && r.text().contains("ListAllMyBucketsResult"),
            |addr, _dir| {
                let mut cmd = Command::new(&program);
                cmd.arg("-H").arg(addr.ip().to_string()).arg("-p").arg(addr.port().to_string());
                // Log lines as they happen, not when a buffer fills.
                cmd.env("PYTHONUNBUFFERED", "1");
                // NB: the server copies whole objects on some requests, and with
                // glibc's sliding mmap threshold the freed copies stay in its
                // per-thread heaps: a backup that uploaded nothing grew it by 31–35 MB.
                // A fixed threshold and two heaps give them back (about 1 MB).
                cmd.env("MALLOC_MMAP_THRESHOLD_", "131072").env("MALLOC_ARENA_MAX", "2");
                cmd
            },
        )?;
        Ok(Self { inner })
    }

    /// The service's URL, `http://127.0.0.1:PORT`; buckets are addressed by path.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.addr())
    }

    /// A store on `bucket`, below `prefix`, with the credentials moto accepts
    /// (`test`/`test`) given directly rather than through the environment.
    pub async fn store(&self, bucket: &str, prefix: &str) -> crate::store::Result<crate::store::s3::S3Store> {
        Self::store_at(&self.endpoint(), bucket, prefix).await
    }

    /// [`store`](Self::store) of the server at `endpoint`, made where it is
    /// called from: a client of its own, whose connections are made by the
    /// runtime that uses it (in the network namespace of that runtime's thread).
    pub async fn store_at(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
    ) -> crate::store::Result<crate::store::s3::S3Store> {
        use crate::store::s3::{S3Config, S3Store, StaticCredentials};
        S3Store::connect(S3Config {
            prefix: prefix.into(),
            endpoint: Some(endpoint.to_owned()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some(StaticCredentials {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                session_token: None,
            }),
            ..S3Config::new(bucket)
        })
        .await
    }

    /// A plain S3 client with moto's credentials, for what a store would refuse
    /// to do: an attacker's writes in tests.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Puts `body` as a new current version of `key` in `bucket`, the way a
    /// writer holding the store's credentials can even over a locked object.
    pub async fn write_over(&self, bucket: &str, key: &str, body: &[u8]) {
        let body = aws_sdk_s3::primitives::ByteStream::from(body.to_vec());
        self.client().put_object().bucket(bucket).key(key).body(body).send().await.expect("moto takes the write");
    }
}

/// `moto_server` on PATH (a pyenv shim counts), or else in the scripts
/// directory of `python3`, where pip put it.
fn find_moto() -> Result<PathBuf> {
    if let Some(found) = process::find_on_path(PROGRAM) {
        return Ok(found);
    }
    let scripts = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    scripts.map(|dir| dir.join(PROGRAM)).filter(|p| process::is_executable(p)).ok_or(Error::NotInstalled {
        server: SERVER,
        program: PROGRAM,
        looked: "PATH and the scripts directory of python3".to_owned(),
    })
}
