//! Model ids → local GGUF files (DESIGN.md: "MODEL is a .gguf path, or a model id").
//!
//! `kyutai/mimi` (or `kyutai/mimi@<revision>`) is fetched through hf-hub's cache — `config.json` and
//! `model.safetensors` — converted once with [`convert::convert`], and the GGUF is kept next to that cache as
//! `$HF_HOME/codec-rs/v1/<owner>--<name>--<commit>.gguf`.
//!
//! Environment, with the names and meanings of Python's `huggingface_hub` so both share one cache:
//! - `HF_ENDPOINT`: the hub's URL (default `https://huggingface.co`), e.g. a mirror.
//! - `HF_HOME`: the cache root (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).
//!   hf-hub's files go under `hub/` (or `HF_HUB_CACHE`), converted models under `codec-rs/`.
//! - `HF_TOKEN`: an access token for gated or private repos; without it, the `token` file under `HF_HOME`
//!   (written by `huggingface-cli login`) is used if present.
//! - `HF_HUB_DOWNLOAD_TIMEOUT`: seconds a request may wait to connect, or for its next bytes (default: 10 to connect,
//!   60 for a reply or more data). A hub that accepts the connection and then says nothing fails after that long with
//!   a "timed out" error, instead of hanging; an interrupted download resumes from its `.part` file on the next run.
//!
//! The requests are ours (ureq, with those timeouts; hf-hub's client cannot be given any) and follow hf-hub's protocol
//! and cache layout: `blobs/<etag>`, `snapshots/<commit>/<file>` linking to the blob, `refs/<revision>`.
//!
//! Damaged cache: a download is checked against the size the hub announced and, for LFS files (whose etag is their
//! sha256), against that hash, before it enters the cache. Before converting, the cached LFS files are hashed again and
//! any that changed are fetched again, once; a converted GGUF that no longer opens is converted again. A conversion
//! that still fails names the cached file and the directory to delete.
//!
//! Cache policy: the first use of an id resolves its revision (default `main`) to a commit and downloads it;
//! later uses find that commit in hf-hub's local refs and the GGUF converted from it, and touch no network at all,
//! so a converted model keeps working offline. A newer upload to the same revision is therefore not picked up
//! automatically: pass `owner/name@<commit>`, or delete `$HF_HOME/hub/models--<owner>--<name>` to re-resolve.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use crate::convert::{self, ConvertOptions};
use crate::{Error, Result};

/// The files a hub repo must hold; the converter reads them from one snapshot directory.
pub const REPO_FILES: [&str; 2] = ["config.json", "model.safetensors"];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const DEFAULT_REVISION: &str = "main";
/// Defaults of the connect timeout and of the read timeout (the longest wait for a reply or for more data).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// huggingface_hub's name for the same setting; here it sets both timeouts.
const TIMEOUT_ENV: &str = "HF_HUB_DOWNLOAD_TIMEOUT";
/// Redirects a download may follow (the hub sends LFS files to a CDN, which may redirect once more).
const MAX_REDIRECTS: u32 = 5;
const LOCAL_FILE_HINT: &str = "pass a local model file instead (codec convert DIR -o model.gguf, then -m model.gguf)";

/// A hub model id: `owner/name`, optionally pinned with `@revision` (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// The account or organisation owning the repo.
    pub owner: String,
    /// The repo's name.
    pub name: String,
    /// `None` means the default branch, `main`.
    pub revision: Option<String>,
}

impl ModelId {
    /// Parses `owner/name[@revision]` with the hub's naming rules; `None` if `spec` does not have that shape.
    ///
    /// A name ending in `.gguf` is taken for a mistyped file path, not a repo, so the caller reports
    /// "no such file" rather than a hub 404.
    pub fn parse(spec: &str) -> Option<ModelId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        let (owner, name) = repo.split_once('/')?;
        if !valid_repo_part(owner) || !valid_repo_part(name) || name.to_ascii_lowercase().ends_with(".gguf") {
            return None;
        }
        if let Some(rev) = revision {
            if !valid_revision(rev) {
                return None;
            }
        }
        Some(ModelId { owner: owner.into(), name: name.into(), revision: revision.map(str::to_string) })
    }

    /// `owner/name`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The requested revision, `main` by default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo_id(), RepoType::Model, self.revision().to_string())
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)?;
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        Ok(())
    }
}

/// The hub's rules for an owner or repo name: ASCII alphanumerics and `-_.`, no `--` or `..`, neither `-` nor `.`
/// at either end, at most 96 characters.
fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Branch, tag or commit names. hf-hub stores the revision as a path under `refs/`, so anything that could
/// climb out of the cache (`..`, a leading `/`) is refused here.
fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.contains("..")
}

/// Turns a `MODEL` argument into a local file: an existing path is returned as is; a model id is downloaded
/// (once) and converted (once) into [`cache_dir`], and the cached GGUF is returned.
///
/// `progress` shows hf-hub's download bars (on a terminal) and a line when converting; pass `false` for `--quiet`.
pub fn resolve_model(spec: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let id = parse_id(spec)?;
    let hub = Hub::from_env()?;

    // Cache hit: hf-hub's refs name the commit, and the GGUF for it exists. No network, no re-download.
    if let Some(snapshot) = hub.cached_snapshot(&id) {
        let gguf = gguf_path(&id, &snapshot)?;
        if intact_gguf(&gguf, progress)? {
            return Ok(gguf);
        }
    }

    let mut snapshot = hub.download(&id, progress)?;
    let gguf = gguf_path(&id, &snapshot)?;
    if !intact_gguf(&gguf, progress)? {
        // A download damaged since it was fetched would fail the conversion on every run, or convert into wrong
        // weights: such files are fetched again first.
        if hub.discard_damaged(&snapshot)? {
            if progress {
                eprintln!("fetching the damaged files of {id} again");
            }
            snapshot = hub.download(&id, progress)?;
        }
        if progress {
            eprintln!("converting {id} to {}", gguf.display());
        }
        convert_atomically(&snapshot, &gguf).map_err(|e| {
            Error::Hub(format!(
                "{e}; if the cached download is damaged, delete {} to fetch it again",
                hub.repo_dir(&id).display()
            ))
        })?;
    }
    Ok(gguf)
}

/// Whether the cached GGUF exists and opens; one that does not open (a full disk, an edit) is deleted so it is
/// converted again, instead of failing on every run.
fn intact_gguf(gguf: &Path, progress: bool) -> Result<bool> {
    if !gguf.is_file() {
        return Ok(false);
    }
    match crate::gguf::ModelFile::open(gguf) {
        Ok(_) => Ok(true),
        Err(e) => {
            if progress {
                eprintln!("{e}; converting it again");
            }
            fs::remove_file(gguf).map_err(|e| Error::io(gguf, e))?;
            Ok(false)
        }
    }
}

/// Downloads `config.json` and `model.safetensors` of the model id `spec` into hf-hub's cache (files already
/// cached are not fetched again) and returns the snapshot directory holding both.
pub fn download(spec: &str, progress: bool) -> Result<PathBuf> {
    let id = parse_id(spec)?;
    Hub::from_env()?.download(&id, progress)
}

/// Version of what the converter writes; bump it when converted files change, so stale cached GGUFs are not reused.
const CONVERTED_FORMAT: &str = "v1";

/// Where converted models are kept: `$HF_HOME/codec-rs/v1` (the converter's output version).
pub fn cache_dir() -> PathBuf {
    hf_home().join("codec-rs").join(CONVERTED_FORMAT)
}

fn parse_id(spec: &str) -> Result<ModelId> {
    ModelId::parse(spec).ok_or_else(|| {
        Error::InvalidArgument(format!("MODEL '{spec}': no such file, and not a model id like kyutai/mimi"))
    })
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (huggingface_hub's order).
fn hf_home() -> PathBuf {
    if let Some(home) = non_empty_env("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    // Without any home directory, a temp dir still works (hf-hub itself would panic here).
    std::env::home_dir().unwrap_or_else(std::env::temp_dir).join(".cache").join("huggingface")
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// The GGUF converted from one snapshot: `<owner>--<name>--<commit>.gguf` in [`cache_dir`].
fn gguf_path(id: &ModelId, snapshot: &Path) -> Result<PathBuf> {
    // The snapshot directory is named after the commit the server reported; it becomes part of a file name,
    // so it must be a plain hash.
    let commit = snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
        .ok_or_else(|| Error::Hub(format!("{id}: the hub reported an invalid commit id ({})", snapshot.display())))?;
    Ok(cache_dir().join(format!("{}--{}--{commit}.gguf", id.owner, id.name)))
}

/// Converts into a temp file in the destination directory and renames it into place, so an interrupted or failed
/// conversion never leaves a file that looks cached; concurrent conversions each rename a complete file.
fn convert_atomically(snapshot: &Path, gguf: &Path) -> Result<()> {
    let dir = gguf.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let stem = gguf.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let tmp = TempFile(dir.join(format!(".{stem}.{}.tmp.gguf", std::process::id())));

    let opts = ConvertOptions { name: gguf_name(gguf), ..Default::default() };
    convert::convert(snapshot, &tmp.0, &opts)?;
    // Flush to disk before the rename publishes the file, so a crash cannot leave a renamed but empty file.
    fs::File::open(&tmp.0).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp.0, e))?;
    fs::rename(&tmp.0, gguf).map_err(|e| Error::io(gguf, e))?;
    std::mem::forget(tmp);
    Ok(())
}

/// `owner/name` for the GGUF's `general.name`, from the cache file name `<owner>--<name>--<commit>.gguf`.
fn gguf_name(gguf: &Path) -> Option<String> {
    let stem = gguf.file_stem()?.to_str()?;
    let mut parts = stem.splitn(3, "--");
    Some(format!("{}/{}", parts.next()?, parts.next()?))
}

/// Removes a partial output on error or panic.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// hf-hub's settings, read from the environment once per call.
struct Hub {
    endpoint: String,
    hub_cache: PathBuf,
    token: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// Where the bytes of one file at one commit are, as the hub's metadata reply describes them.
struct Remote {
    commit: String,
    etag: String,
    size: u64,
    url: String,
}

/// Why one file could not be fetched; [`Hub::error`] turns it into the one-line message.
enum Failure {
    Http(Box<ureq::Error>),
    /// Reading the reply's body failed (the connection broke or stalled).
    Body(std::io::Error),
    /// Writing the hub cache failed.
    Cache(PathBuf, std::io::Error),
    /// The reply is not what a hub sends (headers, length, hash).
    Reply(String),
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Self {
        Failure::Http(Box::new(e))
    }
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure::Cache(path.to_path_buf(), e)
}

impl Hub {
    /// Built by hand rather than with hf-hub's `ApiBuilder::from_env`: that one ignores `HF_TOKEN`, keeps a trailing
    /// `/` of `HF_ENDPOINT` (giving `//` URLs) and panics when no home directory exists.
    fn from_env() -> Result<Hub> {
        let home = hf_home();
        let endpoint = non_empty_env("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let hub_cache = non_empty_env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = non_empty_env("HF_TOKEN").or_else(|| {
            let text = fs::read_to_string(home.join("token")).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
        let (connect_timeout, read_timeout) = match non_empty_env(TIMEOUT_ENV) {
            None => (CONNECT_TIMEOUT, READ_TIMEOUT),
            Some(text) => {
                let t = text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("{TIMEOUT_ENV}='{text}': expected a positive number of seconds"))
                    })?;
                (t, t)
            }
        };
        Ok(Hub { endpoint, hub_cache, token, connect_timeout, read_timeout })
    }

    /// `models--<owner>--<name>` in hf-hub's cache.
    fn repo_dir(&self, id: &ModelId) -> PathBuf {
        self.hub_cache.join(id.repo().folder_name())
    }

    /// A client with our timeouts; `redirects` 0 for the metadata request, which reads the redirect itself.
    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(self.connect_timeout)
            .timeout_read(self.read_timeout)
            .timeout_write(self.read_timeout)
            .redirects(redirects)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(&format!("codec-rs/{}; rust/unknown", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// A `GET` of `range`, with the token only for the hub itself (a CDN's URL is presigned).
    fn get(&self, agent: &ureq::Agent, url: &str, range: &str) -> ureq::Request {
        let request = agent.get(url).set("Range", range);
        match &self.token {
            Some(token) if origin(url) == origin(&self.endpoint) => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// The snapshot directory of the locally known commit for `id`'s revision, if it holds every file.
    fn cached_snapshot(&self, id: &ModelId) -> Option<PathBuf> {
        let cache = Cache::new(self.hub_cache.clone()).repo(id.repo());
        // `CacheRepo::get` only looks in the snapshot of the commit the ref points to, so all paths share a parent.
        let first = cache.get(REPO_FILES[0])?;
        REPO_FILES[1..].iter().all(|f| cache.get(f).is_some()).then(|| first.parent().map(Path::to_path_buf))?
    }

    /// Fetches every file of [`REPO_FILES`] missing from the cache and returns the snapshot directory holding them.
    fn download(&self, id: &ModelId, progress: bool) -> Result<PathBuf> {
        if let Some(snapshot) = self.cached_snapshot(id) {
            return Ok(snapshot);
        }
        // The first reply names the commit the revision points to; the other files are asked for at that commit,
        // so all land in one snapshot even if a push lands meanwhile.
        let mut commit: Option<String> = None;
        for file in REPO_FILES {
            let revision = commit.clone().unwrap_or_else(|| id.revision().replace('/', "%2F"));
            let url = format!("{}/{}/resolve/{revision}/{file}", self.endpoint, id.repo_id());
            let remote =
                self.fetch(id, &url, file, commit.as_deref(), progress).map_err(|f| self.error(id, &url, f))?;
            commit.get_or_insert(remote.commit);
        }
        let commit = commit.unwrap_or_default();
        Cache::new(self.hub_cache.clone())
            .repo(id.repo())
            .create_ref(&commit)
            .map_err(|e| Error::Hub(format!("cannot write the hub cache in {}: {e}", self.repo_dir(id).display())))?;
        Ok(self.repo_dir(id).join("snapshots").join(commit))
    }

    /// One file into `blobs/<etag>` (unless a complete copy is there) and `snapshots/<commit>/<file>`.
    fn fetch(
        &self,
        id: &ModelId,
        url: &str,
        file: &str,
        commit: Option<&str>,
        progress: bool,
    ) -> std::result::Result<Remote, Failure> {
        let mut remote = self.remote(url)?;
        if let Some(commit) = commit {
            remote.commit = commit.to_string();
        }
        let dir = self.repo_dir(id);
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(cache_err(&blobs))?;
        let blob = blobs.join(&remote.etag);
        // hf-hub's lock file, so two processes (ours or hf-hub's) never write one blob at once.
        let lock_path = blob.with_extension("lock");
        let lock = fs::File::create(&lock_path).map_err(cache_err(&lock_path))?;
        lock.lock().map_err(cache_err(&lock_path))?;
        if !intact_blob(&blob, remote.size, &remote.etag).map_err(cache_err(&blob))? {
            self.download_blob(&remote, &blob, file, progress)?;
        }
        drop(lock);

        let snapshot = dir.join("snapshots").join(&remote.commit);
        fs::create_dir_all(&snapshot).map_err(cache_err(&snapshot))?;
        let pointer = snapshot.join(file);
        if fs::symlink_metadata(&pointer).is_ok() {
            fs::remove_file(&pointer).map_err(cache_err(&pointer))?;
        }
        link_blob(&remote.etag, &blob, &pointer).map_err(cache_err(&pointer))?;
        Ok(remote)
    }

    /// hf-hub's metadata request: `GET` of byte 0 without following redirects. The hub answers a plain file itself
    /// and an LFS file with a redirect to its CDN; both carry the etag and the commit.
    fn remote(&self, url: &str) -> std::result::Result<Remote, Failure> {
        let agent = self.agent(0);
        let mut url = url.to_string();
        let mut response = self.get(&agent, &url, "bytes=0-0").call()?;
        // Relative redirects (a renamed repo) stay on the hub; an absolute one is the CDN.
        for _ in 0..MAX_REDIRECTS {
            match response.header("Location").filter(|l| l.starts_with('/') && is_redirect(response.status())) {
                Some(location) => url = format!("{}{location}", origin(&url)),
                None => break,
            }
            response = self.get(&agent, &url, "bytes=0-0").call()?;
        }
        let not_a_hub =
            |what: String| Failure::Reply(format!("{what} (is HF_ENDPOINT={} a Hugging Face hub?)", self.endpoint));
        let header = |name: &'static str| {
            response.header(name).ok_or_else(|| not_a_hub(format!("the reply has no '{name}' header")))
        };
        let etag = response.header("X-Linked-Etag").map_or_else(|| header("ETag"), Ok)?;
        let etag = etag.trim_start_matches("W/").replace('"', "");
        let commit = header("X-Repo-Commit")?.to_string();
        // Both become file names in the cache.
        for (what, value) in [("ETag", &etag), ("X-Repo-Commit", &commit)] {
            if !plain_name(value) {
                return Err(not_a_hub(format!("the reply's {what} header ({value:?}) is not a plain hash")));
            }
        }
        if !is_redirect(response.status()) {
            let size = total_size(&response).ok_or_else(|| not_a_hub(format!("the reply {NO_CONTENT_RANGE}")))?;
            return Ok(Remote { commit, etag, size, url });
        }
        let location = header("Location")?.to_string();
        if location.starts_with('/') {
            return Err(Failure::Reply(format!("more than {MAX_REDIRECTS} redirects")));
        }
        let size = match response.header("X-Linked-Size").and_then(|s| s.parse().ok()) {
            Some(size) => size,
            None => total_size(&self.get(&self.agent(MAX_REDIRECTS), &location, "bytes=0-0").call()?)
                .ok_or_else(|| Failure::Reply(format!("the reply of {location} {NO_CONTENT_RANGE}")))?,
        };
        Ok(Remote { commit, etag, size, url: location })
    }

    /// Downloads into `<blob>.part` (resuming what an interrupted run left), checks length and hash, then renames.
    fn download_blob(
        &self,
        remote: &Remote,
        blob: &Path,
        file: &str,
        progress: bool,
    ) -> std::result::Result<(), Failure> {
        let part = blob.with_extension("part");
        let mut out = fs::OpenOptions::new().create(true).append(true).open(&part).map_err(cache_err(&part))?;
        let mut start = out.metadata().map_err(cache_err(&part))?.len();
        if start > remote.size {
            out.set_len(0).map_err(cache_err(&part))?;
            start = 0;
        }
        let mut bar = if progress { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
        Progress::init(&mut bar, usize::try_from(remote.size).unwrap_or(usize::MAX), file);
        bar.inc(start);
        if start < remote.size {
            let response = self.get(&self.agent(MAX_REDIRECTS), &remote.url, &format!("bytes={start}-")).call()?;
            if response.status() != 206 {
                // The whole file, not the range asked for.
                out.set_len(0).map_err(cache_err(&part))?;
            }
            let mut body = response.into_reader().take(remote.size);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buf).map_err(Failure::Body)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(cache_err(&part))?;
                bar.inc(n as u64);
            }
            out.sync_all().map_err(cache_err(&part))?;
        }
        bar.finish_and_clear();
        let got = fs::metadata(&part).map_err(cache_err(&part))?.len();
        if got != remote.size {
            return Err(Failure::Reply(format!(
                "the download ended after {got} of {} bytes; run again to resume",
                remote.size
            )));
        }
        if !intact_blob(&part, remote.size, &remote.etag).map_err(cache_err(&part))? {
            fs::remove_file(&part).map_err(cache_err(&part))?;
            return Err(Failure::Reply(format!("the download does not match its sha256 ({}); run again", remote.etag)));
        }
        fs::rename(&part, blob).map_err(cache_err(blob))
    }

    /// Hashes the cached files of `snapshot` whose etag is a sha256 and removes those that no longer match (blob and
    /// snapshot link), so the next download fetches them again; whether any was removed.
    fn discard_damaged(&self, snapshot: &Path) -> Result<bool> {
        let mut damaged = false;
        for file in REPO_FILES {
            let pointer = snapshot.join(file);
            let Ok(blob) = fs::canonicalize(&pointer) else { continue };
            let Some(etag) = blob.file_name().and_then(|n| n.to_str()).filter(|e| is_sha256(e)) else { continue };
            let size = fs::metadata(&blob).map_err(|e| Error::io(&blob, e))?.len();
            if !intact_blob(&blob, size, etag).map_err(|e| Error::io(&blob, e))? {
                fs::remove_file(&blob).map_err(|e| Error::io(&blob, e))?;
                fs::remove_file(&pointer).map_err(|e| Error::io(&pointer, e))?;
                damaged = true;
            }
        }
        Ok(damaged)
    }

    /// One line: what failed, where, why, and how to do without the hub.
    fn error(&self, id: &ModelId, url: &str, failure: Failure) -> Error {
        let reason = match failure {
            Failure::Http(e) => match *e {
                ureq::Error::Status(code, response) => {
                    let file = url.rsplit('/').next().unwrap_or(url);
                    status_reason(code, response.header("x-error-code"), id, file)
                }
                ureq::Error::Transport(t) if is_timeout(&t) => {
                    self.timed_out(t.kind() == ureq::ErrorKind::ConnectionFailed)
                }
                ureq::Error::Transport(t) => {
                    // ureq's own Display repeats the URL, which the message already names.
                    let mut reason = t.kind().to_string();
                    if let Some(msg) = t.message() {
                        reason += &format!(": {msg}");
                    }
                    if let Some(source) = std::error::Error::source(&t) {
                        reason += &format!(": {source}");
                    }
                    reason
                }
            },
            Failure::Body(e) if is_timeout(&e) => self.timed_out(false),
            Failure::Body(e) => format!("the connection broke ({e}); run again to resume"),
            Failure::Cache(path, e) => format!("cannot write the hub cache at {}: {e}", path.display()),
            Failure::Reply(msg) => msg,
        };
        let reason = reason.replace(['\n', '\r'], " ");
        Error::Hub(format!("cannot download {id} from {url}: {reason}; {LOCAL_FILE_HINT}"))
    }

    fn timed_out(&self, connecting: bool) -> String {
        let (what, limit) =
            if connecting { ("no connection", self.connect_timeout) } else { ("no reply or data", self.read_timeout) };
        format!(
            "timed out ({what} for {} s); retry later, or raise {TIMEOUT_ENV} (seconds) on a slow link",
            limit.as_secs_f64()
        )
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find('/').map_or(url, |i| &url[..after_scheme + i])
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

const NO_CONTENT_RANGE: &str = "has no valid 'Content-Range' header";

/// The file size from `Content-Range: bytes 0-0/<size>`.
fn total_size(response: &ureq::Response) -> Option<u64> {
    response.header("Content-Range").and_then(|r| r.rsplit('/').next()).and_then(|s| s.trim().parse().ok())
}

/// A name safe as one path component: ASCII alphanumerics and `-_.`, not starting with `.`.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// LFS files' etag is the sha256 of their content (plain files' is a git sha1, which is not checked).
fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether `path` exists with `size` bytes and, where the etag is a sha256, that hash.
fn intact_blob(path: &Path, size: u64, etag: &str) -> std::io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() == size => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if !is_sha256(etag) {
        return Ok(true);
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex.eq_ignore_ascii_case(etag))
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>`, as hf-hub links them.
#[cfg(unix)]
fn link_blob(etag: &str, _blob: &Path, pointer: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), pointer)
}

/// Without unix symlinks, a copy (hf-hub falls back to moving the blob).
#[cfg(not(unix))]
fn link_blob(_etag: &str, blob: &Path, pointer: &Path) -> std::io::Result<()> {
    fs::copy(blob, pointer).map(|_| ())
}

/// A timeout anywhere in an error's chain (ureq reports a read timeout as `TimedOut`, some systems as `WouldBlock`).
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Explains an HTTP error status, using the hub's `X-Error-Code` header when present.
fn status_reason(code: u16, error_code: Option<&str>, id: &ModelId, file: &str) -> String {
    match (error_code, code) {
        // The hub answers 401 for unknown repos too, so as not to reveal private ones.
        (Some("RepositoryNotFound"), 401) | (None, 401) => format!(
            "repository not found, or private/gated (HTTP 401; set HF_TOKEN if you have access to {})",
            id.repo_id()
        ),
        (Some("RepositoryNotFound"), _) => format!("repository {} not found (HTTP {code})", id.repo_id()),
        (Some("RevisionNotFound"), _) => format!("revision '{}' not found (HTTP {code})", id.revision()),
        (Some("EntryNotFound"), _) => format!("the repo has no file {file} (HTTP {code})"),
        (Some("GatedRepo"), _) => {
            format!("the repo is gated: accept its terms on the hub and set HF_TOKEN (HTTP {code})")
        }
        (_, 404) => format!("not found (HTTP 404): no such repo, revision or file {file}"),
        (_, 403) => format!("access denied (HTTP 403; check HF_TOKEN's permissions for {})", id.repo_id()),
        (_, 429) => "rate limited by the hub (HTTP 429); retry later or set HF_TOKEN".to_string(),
        (_, code) => format!("HTTP {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        let id = ModelId::parse("kyutai/mimi").unwrap();
        assert_eq!((id.repo_id().as_str(), id.revision()), ("kyutai/mimi", "main"));
        let id = ModelId::parse("descript/dac_44khz@refs/pr/3").unwrap();
        assert_eq!((id.repo_id().as_str(), id.revision()), ("descript/dac_44khz", "refs/pr/3"));
        assert_eq!(id.to_string(), "descript/dac_44khz@refs/pr/3");
        for bad in [
            "mimi",
            "model.gguf",
            "models/mimi.gguf",
            "./a/b",
            "/abs/path",
            "a/b/c",
            "a--b/c",
            "-a/b",
            "a/b@",
            "a/b@../../etc",
            "a/b@/x",
            "a b/c",
            "",
        ] {
            assert_eq!(ModelId::parse(bad), None, "{bad}");
        }
    }
}
