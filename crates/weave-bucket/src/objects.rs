//! Bucket addresses (`s3://bucket/prefix`, `file:///dir`) and the
//! storage behind them, through `object_store`: one code path for an
//! S3-compatible bucket and for a directory.

use crate::store::Store;
use crate::BucketError;
use futures_util::TryStreamExt;
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a bucket replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketAddress {
    /// `s3://BUCKET[/PREFIX]`.
    S3 {
        bucket: String,
        prefix: String,
        given: String,
    },
    /// `file:///DIR`: a directory as a bucket (a removable drive, a
    /// mount of storage that is not trusted).
    Dir { dir: PathBuf, given: String },
}

impl BucketAddress {
    /// Parses `s3://…` or `file://…`; None for any other scheme.
    pub fn parse(given: &str) -> Option<Result<BucketAddress, BucketError>> {
        let bad = |problem: &str| BucketError::Address {
            given: given.to_string(),
            problem: problem.to_string(),
        };
        if let Some(rest) = given.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            return Some(if bucket.is_empty() {
                Err(bad(
                    "no bucket name; give s3://BUCKET or s3://BUCKET/PREFIX",
                ))
            } else if prefix.split('/').any(|c| c == "." || c == "..") {
                Err(bad("a prefix may not have . or .. in it"))
            } else {
                Ok(BucketAddress::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                    given: given.to_string(),
                })
            });
        }
        let rest = given.strip_prefix("file://")?;
        Some(if rest.starts_with('/') {
            Ok(BucketAddress::Dir {
                dir: PathBuf::from(rest),
                given: given.to_string(),
            })
        } else {
            Err(bad(
                "a file:// bucket needs an absolute path: file:///mnt/usb/docs",
            ))
        })
    }

    /// The storage, reached. A directory is made only if `create`; one
    /// that holds other files but no bucket is refused.
    pub fn connect(&self, create: bool) -> Result<Box<dyn Store>, BucketError> {
        let fail = |problem: String| BucketError::Store {
            bucket: self.to_string(),
            problem,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match self {
            BucketAddress::S3 { bucket, prefix, .. } => (s3(bucket).map_err(fail)?, prefix.clone()),
            BucketAddress::Dir { dir, .. } => {
                let parent = dir.parent().unwrap_or(dir);
                if !parent.is_dir() {
                    return Err(fail(format!(
                        "{} is not a directory; check the path (is the drive mounted?)",
                        parent.display()
                    )));
                }
                let foreign = std::fs::read_dir(dir)
                    .ok()
                    .is_some_and(|mut d| d.next().is_some())
                    && !dir.join(crate::pool::CONFIG).exists();
                if foreign {
                    return Err(fail(format!(
                        "{} holds files but no bucket; give an empty or new directory for one",
                        dir.display()
                    )));
                }
                if !dir.is_dir() {
                    if !create {
                        // A dry run into a bucket that is not there yet.
                        return Ok(Box::new(crate::store::Memory::default()));
                    }
                    std::fs::create_dir_all(dir)
                        .map_err(|e| fail(format!("cannot make {}: {e}", dir.display())))?;
                }
                // Flushed before a record names them: a drive pulled out
                // loses no object a replica counts on.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| fail(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(fs), String::new())
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start its I/O runtime: {e}")))?;
        Ok(Box::new(Objects {
            store,
            prefix,
            rt,
            shown: self.to_string(),
            dir: match self {
                BucketAddress::Dir { dir, .. } => Some(dir.clone()),
                BucketAddress::S3 { .. } => None,
            },
        }))
    }
}

impl fmt::Display for BucketAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketAddress::S3 { given, .. } | BucketAddress::Dir { given, .. } => {
                f.write_str(given)
            }
        }
    }
}

/// An S3-compatible bucket, from the standard AWS variables (and the
/// `[default]` or `AWS_PROFILE` section of `~/.aws/credentials` for
/// the keys they do not give), addressed by path (as S3-compatible
/// servers want), with bounded retries.
fn s3(bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    // reqwest finds its TLS provider here: ring, the one weave uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_client_options(
            object_store::ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(10))
                .with_allow_http(true),
        )
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        });
    // The environment's settings, as AmazonS3Builder::from_env reads them
    // (after the client options, which would replace them).
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if k.starts_with("AWS_") {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                b = b.with_config(key, v);
            }
        }
    }
    // A role given by the environment (a container's, a web identity)
    // needs no keys.
    let role = [
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && !role {
        match credentials_file() {
            Some(c) => {
                b = b.with_access_key_id(c.id).with_secret_access_key(c.secret);
                if let Some(t) = c.token {
                    b = b.with_token(t);
                }
            }
            None => {
                return Err("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them in ~/.aws/credentials (section [default], or the one AWS_PROFILE names)".into())
            }
        }
    }
    b.with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| {
            format!("{e} (set AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)")
        })
}

/// Keys from a credentials file.
#[derive(Debug, PartialEq, Eq)]
struct Credentials {
    id: String,
    secret: String,
    token: Option<String>,
}

/// The keys of the `AWS_PROFILE` (or `default`) section of
/// `$AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`.
fn credentials_file() -> Option<Credentials> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    parse_credentials(&text, &profile)
}

fn parse_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let (mut id, mut secret, mut token, mut inside) = (None, None, None, false);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(Credentials {
        id: id?,
        secret: secret?,
        token,
    })
}

/// Objects larger than this go up in parts of this size (S3 wants at
/// least 5 MiB a part but the last): a pack is not one long request, and
/// its parts go up side by side.
pub const PART: usize = 8 << 20;

/// How many parts of one object are sent at once.
const PARTS_AT_ONCE: usize = 4;

/// Writes `data` at `p` as a multipart upload, aborted (its parts let
/// go) if a part fails.
async fn multipart(store: &dyn ObjectStore, p: &OPath, data: Vec<u8>) -> object_store::Result<()> {
    use futures_util::StreamExt;
    let mut upload = store.put_multipart(p).await?;
    let data = bytes::Bytes::from(data);
    let parts: Vec<_> = (0..data.len())
        .step_by(PART)
        .map(|at| {
            upload.put_part(PutPayload::from(
                data.slice(at..(at + PART).min(data.len())),
            ))
        })
        .collect();
    let sent: Vec<object_store::Result<()>> = futures_util::stream::iter(parts)
        .buffered(PARTS_AT_ONCE)
        .collect()
        .await;
    if let Some(e) = sent.into_iter().find_map(Result::err) {
        let _ = upload.abort().await;
        return Err(e);
    }
    match upload.complete().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// A bucket's objects in an `object_store`, under a prefix.
struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
    shown: String,
    /// The directory of a directory bucket.
    dir: Option<PathBuf>,
}

impl Objects {
    fn path(&self, name: &str) -> OPath {
        if self.prefix.is_empty() {
            OPath::from(name)
        } else {
            OPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The storage's error, said for a user: what to check.
    fn error(&self, name: &str, e: object_store::Error) -> BucketError {
        use object_store::Error as E;
        let text = e.to_string();
        let code = |c: &str| text.contains(&format!("<Code>{c}</Code>"));
        let connect = || {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
                    return matches!(
                        h.kind(),
                        object_store::client::HttpErrorKind::Connect
                            | object_store::client::HttpErrorKind::Timeout
                    );
                }
                src = s.source();
            }
            false
        };
        let hint = if code("NoSuchBucket") {
            "the bucket does not exist: check its name, or make it first (`aws s3 mb s3://BUCKET`, or in your provider's console); nothing was written"
        } else if matches!(e, E::PermissionDenied { .. } | E::Unauthenticated { .. })
            || code("InvalidAccessKeyId")
            || code("SignatureDoesNotMatch")
            || code("AccessDenied")
        {
            "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)"
        } else if connect() {
            "cannot reach the storage: check AWS_ENDPOINT_URL and that the server is up"
        } else {
            "the storage refused or failed"
        };
        BucketError::Store {
            bucket: self.shown.clone(),
            problem: format!("{name}: {hint} ({text})"),
        }
    }
}

impl Store for Objects {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BucketError> {
        let p = self.path(name);
        let r = self.rt.block_on(async {
            match self.store.get(&p).await {
                Ok(g) => g.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(b) => Ok(b.map(|b| b.to_vec())),
            Err(e) => Err(self.error(name, e)),
        }
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, BucketError> {
        let p = self.path(name);
        self.rt
            .block_on(self.store.get_range(&p, range))
            .map(|b| b.to_vec())
            .map_err(|e| self.error(name, e))
    }

    // Names are random: a plain write (a conditional one needs hard
    // links on a directory, which FAT and exFAT drives have not, and
    // If-None-Match on S3, which not every server knows).
    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BucketError> {
        let p = self.path(name);
        let done = if data.len() > PART {
            self.rt.block_on(multipart(&*self.store, &p, data))
        } else {
            self.rt
                .block_on(self.store.put(&p, PutPayload::from(data)))
                .map(|_| ())
        };
        done.map_err(|e| self.error(name, e))
    }

    fn delete(&self, name: &str) -> Result<(), BucketError> {
        let p = self.path(name);
        match self.rt.block_on(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error(name, e)),
        }
        // A directory bucket's log directory goes with its last record.
        if let Some(parent) = self.dir.as_ref().zip(std::path::Path::new(name).parent()) {
            if parent.1.starts_with("logs") && parent.1 != std::path::Path::new("logs") {
                let _ = std::fs::remove_dir(parent.0.join(parent.1));
            }
        }
        Ok(())
    }

    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, BucketError> {
        let p = self.path(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(data.clone());
        match self.rt.block_on(self.store.put_opts(&p, payload, opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            // Where a conditional write cannot be made, a plain one after
            // a look.
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) => {
                if self.get(name)?.is_some() {
                    return Ok(false);
                }
                self.put(name, data).map(|()| true)
            }
            Err(e) if matches!(self.get(name), Ok(None)) && e.to_string().contains("link") => {
                self.put(name, data).map(|()| true)
            }
            Err(e) => Err(self.error(name, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError> {
        Ok(self
            .list_modified(prefix)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, u64)>, BucketError> {
        let base = self.path("");
        let under = self.path(prefix.trim_end_matches('/'));
        let listed: Result<Vec<_>, _> = self
            .rt
            .block_on(self.store.list(Some(&under)).try_collect());
        let listed = listed.map_err(|e| self.error(prefix, e))?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let rel = match base.as_ref() {
                    "" => full.as_str(),
                    b => full.strip_prefix(b)?.trim_start_matches('/'),
                };
                let at = m.last_modified.timestamp_millis().max(0) as u64;
                rel.starts_with(prefix).then(|| (rel.to_string(), at))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        let p = |s: &str| BucketAddress::parse(s).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(
            p("s3://b/docs/x/"),
            Some(Ok(BucketAddress::S3 {
                bucket: "b".into(),
                prefix: "docs/x".into(),
                given: "s3://b/docs/x/".into()
            }))
        );
        assert!(matches!(p("s3://b"), Some(Ok(BucketAddress::S3 { .. }))));
        assert!(p("s3:///x")
            .unwrap()
            .unwrap_err()
            .contains("no bucket name"));
        assert!(p("s3://b/../x").unwrap().is_err());
        assert!(p("file://rel/dir")
            .unwrap()
            .unwrap_err()
            .contains("absolute"));
        assert!(matches!(
            p("file:///mnt/usb"),
            Some(Ok(BucketAddress::Dir { .. }))
        ));
        assert_eq!(p("ssh://h/x"), None);
    }

    #[test]
    fn credentials_come_from_the_profile_asked_for() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n[other]\naws_access_key_id=C\naws_secret_access_key=D\n";
        let c = |id: &str, secret: &str, token: Option<&str>| {
            Some(Credentials {
                id: id.into(),
                secret: secret.into(),
                token: token.map(Into::into),
            })
        };
        assert_eq!(parse_credentials(text, "default"), c("A", "B", None));
        let text = format!("{text}aws_session_token = T\n");
        assert_eq!(parse_credentials(&text, "other"), c("C", "D", Some("T")));
        assert_eq!(parse_credentials(&text, "none"), None);
    }

    #[test]
    fn a_directory_bucket_puts_gets_and_lists() {
        let t = tempfile::tempdir().unwrap();
        let a = BucketAddress::parse(&format!("file://{}/b", t.path().display()))
            .unwrap()
            .unwrap();
        let s = a.connect(true).unwrap();
        assert_eq!(s.get("logs/x/1").unwrap(), None);
        s.put("logs/x/1", b"one".to_vec()).unwrap();
        s.put("packs/p", b"0123456789".to_vec()).unwrap();
        // put_new writes only what is not there.
        assert!(s.put_new("c", b"1".to_vec()).unwrap());
        assert!(!s.put_new("c", b"2".to_vec()).unwrap());
        assert_eq!(s.get("c").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("logs/x/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(s.get_range("packs/p", 2..5).unwrap(), b"234");
        assert_eq!(s.list("logs/").unwrap(), vec!["logs/x/1".to_string()]);
        // Larger than a part: sent in parts, read back whole.
        let big: Vec<u8> = (0..PART * 2 + 12345).map(|i| (i % 251) as u8).collect();
        s.put("packs/big", big.clone()).unwrap();
        assert_eq!(s.get("packs/big").unwrap().as_deref(), Some(&big[..]));
        s.delete("packs/big").unwrap();
        s.delete("packs/big").unwrap();
        assert_eq!(s.get("packs/big").unwrap(), None);
        // A log's directory goes with its last record.
        s.delete("logs/x/1").unwrap();
        assert!(!t.path().join("b/logs/x").exists());
        assert!(t.path().join("b/logs").exists());
    }
}
