//! Blacklist sources (a local directory or an S3 bucket/prefix of CSV files) and the refresher
//! that re-reads only what changed and publishes a new snapshot atomically.
//!
//! Change detection: S3 objects by the ETag of the listing (an object whose ETag is unchanged is
//! not downloaded again); local files by (size, modification time). Nothing changed: nothing is
//! read. While the whole list is small (`KEEP_PARSED_MAX`), each file's parsed numbers are kept
//! so a change to one file re-reads that file only; above it they are dropped (8 B/number
//! saved) and a change re-reads every file. Then the set is rebuilt from all files.
//! Failure (S3 down, unreadable file, a file with no valid line) keeps the last good copy of
//! the whole list: nothing is published from a partial view.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use super::blacklist::{Blacklist, parse_csv};
use super::engine::BlacklistCell;
use super::number::Normalizer;

/// Where the CSV files are.
#[derive(Debug, Clone)]
pub enum Source {
    /// Every `*.csv` file directly in this directory.
    Dir(PathBuf),
    /// Every object under `prefix` ending in `.csv`.
    S3(S3Source),
}

#[derive(Clone)]
pub struct S3Source {
    pub bucket: String,
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000`; empty → AWS for `region`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub path_style: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("S3: {0}")]
    S3(String),
    #[error("{0}: no valid number in a non-empty file ({1} bad lines, first: {2})")]
    NoNumbers(String, usize, String),
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct LoaderStats {
    /// Objects/files downloaded or read (i.e. changed or new).
    pub fetches: AtomicU64,
    /// Refresh rounds that failed (the last good copy stayed).
    pub failures: AtomicU64,
    /// Snapshots published.
    pub publishes: AtomicU64,
}

struct Cached {
    version: String,
    /// The file's parsed numbers, kept while the whole list is small (`KEEP_PARSED_MAX`).
    keys: Option<Vec<u64>>,
}

/// Up to this many numbers in all files (8 MiB), each file's parsed numbers are kept so a
/// change to one file re-reads only that file.
const KEEP_PARSED_MAX: usize = 1_000_000;

/// Re-reads sources and publishes; one per process, driven by `run` or by tests via `refresh`.
pub struct Loader {
    sources: Vec<Source>,
    normalizer: Normalizer,
    cell: Arc<BlacklistCell>,
    cache: BTreeMap<String, Cached>,
    pub stats: Arc<LoaderStats>,
    /// Whether something was published at least once.
    loaded: bool,
}

impl Loader {
    pub fn new(sources: Vec<Source>, normalizer: Normalizer, cell: Arc<BlacklistCell>) -> Loader {
        Loader {
            sources,
            normalizer,
            cell,
            cache: BTreeMap::new(),
            stats: Arc::new(LoaderStats::default()),
            loaded: false,
        }
    }

    /// One round: list, fetch what changed, publish if anything changed. Returns whether a new
    /// snapshot was published. On error nothing changes (the cache keeps the last good files).
    pub async fn refresh(&mut self) -> Result<bool, LoadError> {
        let r = self.refresh_inner().await;
        if let Err(e) = &r {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "blacklist refresh failed; keeping the last good copy");
        }
        r
    }

    async fn refresh_inner(&mut self) -> Result<bool, LoadError> {
        // (id, version) of every file now present.
        let mut listing: Vec<(String, String, FetchFrom)> = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            match src {
                Source::Dir(dir) => list_dir(i, dir, &mut listing)?,
                Source::S3(s3) => list_s3(i, s3, &mut listing).await?,
            }
        }
        let changed = !self.loaded
            || listing.len() != self.cache.len()
            || listing
                .iter()
                .any(|(id, v, _)| self.cache.get(id).is_none_or(|c| &c.version != v));
        if !changed {
            return Ok(false);
        }
        // Something changed: reuse the numbers kept for unchanged files, fetch the rest. The
        // cache is replaced only when the whole round succeeded.
        let mut next: BTreeMap<String, Cached> = BTreeMap::new();
        for (id, version, from) in listing {
            if let Some(c) = self.cache.get(&id)
                && c.version == version
                && let Some(keys) = &c.keys
            {
                next.insert(
                    id,
                    Cached {
                        version,
                        keys: Some(keys.clone()),
                    },
                );
                continue;
            }
            let text = match &from {
                FetchFrom::Path(p) => std::fs::read_to_string(p)
                    .map_err(|e| LoadError::Io(p.display().to_string(), e))?,
                FetchFrom::S3(i, key) => {
                    let Source::S3(s3) = &self.sources[*i] else {
                        unreachable!("S3 fetch from a non-S3 source")
                    };
                    get_s3(s3, key).await?
                }
            };
            self.stats.fetches.fetch_add(1, Ordering::Relaxed);
            let parsed = parse_csv(&text, &self.normalizer);
            if parsed.keys.is_empty() && parsed.rejected > 0 {
                let (line, why) = parsed.first_error.unwrap_or_default();
                return Err(LoadError::NoNumbers(
                    id,
                    parsed.rejected,
                    format!("line {line}: {why}"),
                ));
            }
            if parsed.rejected > 0 {
                let (line, why) = parsed.first_error.clone().unwrap_or_default();
                warn!(file = %id, bad_lines = parsed.rejected, first_line = line, first_error = %why,
                    "blacklist: lines skipped");
            }
            next.insert(
                id,
                Cached {
                    version,
                    keys: Some(parsed.keys),
                },
            );
        }
        let total: usize = next
            .values()
            .map(|c| c.keys.as_ref().map_or(0, Vec::len))
            .sum();
        let mut all = Vec::with_capacity(total);
        for c in next.values() {
            all.extend_from_slice(c.keys.as_deref().unwrap_or_default());
        }
        // Keeping every file's numbers costs 8 B/number on top of the set; above this many
        // numbers they are dropped, and a later change re-reads every file instead.
        if total > KEEP_PARSED_MAX {
            for c in next.values_mut() {
                c.keys = None;
            }
        }
        self.cache = next;
        let list = Blacklist::from_keys(all);
        info!(
            files = self.cache.len(),
            numbers = list.len(),
            "blacklist loaded"
        );
        self.cell.publish(list);
        self.loaded = true;
        self.stats.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Refreshes every `interval` until the runtime stops.
    pub async fn run(mut self, interval: Duration) {
        loop {
            let _ = self.refresh().await;
            tokio::time::sleep(interval).await;
        }
    }
}

enum FetchFrom {
    Path(PathBuf),
    S3(usize, String),
}

fn list_dir(
    i: usize,
    dir: &std::path::Path,
    out: &mut Vec<(String, String, FetchFrom)>,
) -> Result<(), LoadError> {
    let rd = std::fs::read_dir(dir).map_err(|e| LoadError::Io(dir.display().to_string(), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| LoadError::Io(dir.display().to_string(), e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("csv") {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| LoadError::Io(path.display().to_string(), e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push((
            format!("{i}:{}", path.display()),
            format!("{}:{mtime}", meta.len()),
            FetchFrom::Path(path),
        ));
    }
    Ok(())
}

fn bucket(s3: &S3Source) -> Result<Box<s3::Bucket>, LoadError> {
    let region = if s3.endpoint.is_empty() {
        s3.region
            .parse()
            .map_err(|e| LoadError::S3(format!("region {:?}: {e}", s3.region)))?
    } else {
        s3::Region::Custom {
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
        }
    };
    let (ak, sk) = (
        Some(s3.access_key.as_str()).filter(|s| !s.is_empty()),
        Some(s3.secret_key.as_str()).filter(|s| !s.is_empty()),
    );
    let creds = s3::creds::Credentials::new(ak, sk, None, None, None)
        .map_err(|e| LoadError::S3(format!("credentials: {e}")))?;
    let b = s3::Bucket::new(&s3.bucket, region, creds).map_err(|e| LoadError::S3(e.to_string()))?;
    let b = if s3.path_style {
        b.with_path_style()
    } else {
        b
    };
    b.with_request_timeout(s3.timeout)
        .map_err(|e| LoadError::S3(e.to_string()))
}

async fn list_s3(
    i: usize,
    s3: &S3Source,
    out: &mut Vec<(String, String, FetchFrom)>,
) -> Result<(), LoadError> {
    let b = bucket(s3)?;
    let pages = tokio::time::timeout(s3.timeout * 2, b.list(s3.prefix.clone(), None))
        .await
        .map_err(|_| LoadError::S3(format!("listing timed out after {:?}", s3.timeout * 2)))?
        .map_err(|e| LoadError::S3(format!("listing s3://{}/{}: {e}", s3.bucket, s3.prefix)))?;
    for page in pages {
        for obj in page.contents {
            if !obj.key.ends_with(".csv") {
                continue;
            }
            // Without an ETag, size + date is the best version we have.
            let version = obj
                .e_tag
                .clone()
                .unwrap_or_else(|| format!("{}:{}", obj.size, obj.last_modified));
            out.push((
                format!("{i}:s3://{}/{}", s3.bucket, obj.key),
                version,
                FetchFrom::S3(i, obj.key),
            ));
        }
    }
    Ok(())
}

/// Most bytes one blacklist object may have (10M numbers × ~16 bytes, with room).
const MAX_OBJECT_BYTES: usize = 512 << 20;

async fn get_s3(s3: &S3Source, key: &str) -> Result<String, LoadError> {
    let b = bucket(s3)?;
    let resp = tokio::time::timeout(s3.timeout * 4, b.get_object(key))
        .await
        .map_err(|_| LoadError::S3(format!("GET {key} timed out")))?
        .map_err(|e| LoadError::S3(format!("GET {key}: {e}")))?;
    // Built without `fail-on-err`: a non-2xx answer arrives as Ok, so check it here.
    let status = resp.status_code();
    if !(200..300).contains(&status) {
        return Err(LoadError::S3(format!("GET {key}: HTTP {status}")));
    }
    if resp.bytes().len() > MAX_OBJECT_BYTES {
        return Err(LoadError::S3(format!(
            "GET {key}: {} bytes, more than {MAX_OBJECT_BYTES}",
            resp.bytes().len()
        )));
    }
    String::from_utf8(resp.bytes().to_vec())
        .map_err(|_| LoadError::S3(format!("GET {key}: not UTF-8 text")))
}
