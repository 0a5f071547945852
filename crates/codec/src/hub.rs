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
//!
//! Cache policy: the first use of an id resolves its revision (default `main`) to a commit and downloads it;
//! later uses find that commit in hf-hub's local refs and the GGUF converted from it, and touch no network at all,
//! so a converted model keeps working offline. A newer upload to the same revision is therefore not picked up
//! automatically: pass `owner/name@<commit>`, or delete `$HF_HOME/hub/models--<owner>--<name>` to re-resolve.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::convert::{self, ConvertOptions};
use crate::{Error, Result};

/// The files a hub repo must hold; the converter reads them from one snapshot directory.
pub const REPO_FILES: [&str; 2] = ["config.json", "model.safetensors"];

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const DEFAULT_REVISION: &str = "main";
const LOCAL_FILE_HINT: &str = "pass a local model file instead (codec convert DIR -o model.gguf, then -m model.gguf)";

/// A hub model id: `owner/name`, optionally pinned with `@revision` (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub owner: String,
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
    let hub = Hub::from_env();

    // Cache hit: hf-hub's refs name the commit, and the GGUF for it exists. No network, no re-download.
    if let Some(snapshot) = hub.cached_snapshot(&id) {
        let gguf = gguf_path(&id, &snapshot)?;
        if gguf.is_file() {
            return Ok(gguf);
        }
    }

    let snapshot = hub.download(&id, progress)?;
    let gguf = gguf_path(&id, &snapshot)?;
    if !gguf.is_file() {
        if progress {
            eprintln!("converting {id} to {}", gguf.display());
        }
        convert_atomically(&snapshot, &gguf)?;
    }
    Ok(gguf)
}

/// Downloads `config.json` and `model.safetensors` of the model id `spec` into hf-hub's cache (files already
/// cached are not fetched again) and returns the snapshot directory holding both.
pub fn download(spec: &str, progress: bool) -> Result<PathBuf> {
    let id = parse_id(spec)?;
    Hub::from_env().download(&id, progress)
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
}

impl Hub {
    /// Built by hand rather than with `ApiBuilder::from_env`: that one ignores `HF_TOKEN`, keeps a trailing `/`
    /// of `HF_ENDPOINT` (giving `//` URLs) and panics when no home directory exists.
    fn from_env() -> Hub {
        let home = hf_home();
        let endpoint = non_empty_env("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let hub_cache = non_empty_env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = non_empty_env("HF_TOKEN").or_else(|| {
            let text = fs::read_to_string(home.join("token")).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
        Hub { endpoint, hub_cache, token }
    }

    fn api_repo(&self, id: &ModelId, progress: bool) -> Result<ApiRepo> {
        let api = ApiBuilder::from_cache(Cache::new(self.hub_cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(progress)
            .with_user_agent("codec-rs", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| Error::Hub(format!("cannot set up the hub client for {id}: {e}")))?;
        Ok(api.repo(id.repo()))
    }

    /// The snapshot directory of the locally known commit for `id`'s revision, if it holds every file.
    fn cached_snapshot(&self, id: &ModelId) -> Option<PathBuf> {
        let cache = Cache::new(self.hub_cache.clone()).repo(id.repo());
        // `CacheRepo::get` only looks in the snapshot of the commit the ref points to, so all paths share a parent.
        let first = cache.get(REPO_FILES[0])?;
        REPO_FILES[1..].iter().all(|f| cache.get(f).is_some()).then(|| first.parent().map(Path::to_path_buf))?
    }

    fn download(&self, id: &ModelId, progress: bool) -> Result<PathBuf> {
        let repo = self.api_repo(id, progress)?;
        // `get` serves files already in the current snapshot from disk and downloads only the missing ones.
        for file in REPO_FILES {
            repo.get(file).map_err(|e| self.error(id, &repo, file, e))?;
        }
        // A download moves the ref to the hub's current commit; files cached from an older commit then sit in
        // another snapshot. Fetch those again so the converter sees one commit; a second pass covers a push
        // that landed between our requests.
        let cache = Cache::new(self.hub_cache.clone()).repo(id.repo());
        for _ in 0..2 {
            if let Some(snapshot) = self.cached_snapshot(id) {
                return Ok(snapshot);
            }
            for file in REPO_FILES {
                if cache.get(file).is_none() {
                    repo.download(file).map_err(|e| self.error(id, &repo, file, e))?;
                }
            }
        }
        self.cached_snapshot(id)
            .ok_or_else(|| Error::Hub(format!("cannot download {id}: the repo changed while downloading; try again")))
    }

    /// One line: what failed, where, why, and how to do without the hub.
    fn error(&self, id: &ModelId, repo: &ApiRepo, file: &str, err: ApiError) -> Error {
        let reason = match &err {
            ApiError::RequestError(e) => match e.as_ref() {
                ureq::Error::Status(code, response) => status_reason(*code, response.header("x-error-code"), id, file),
                ureq::Error::Transport(t) => {
                    // ureq's own Display repeats the URL, which the message already names.
                    let mut reason = t.kind().to_string();
                    if let Some(msg) = t.message() {
                        reason += &format!(": {msg}");
                    }
                    if let Some(source) = std::error::Error::source(t) {
                        reason += &format!(": {source}");
                    }
                    reason
                }
            },
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => {
                format!("the reply has no valid '{h}' header (is HF_ENDPOINT={} a Hugging Face hub?)", self.endpoint)
            }
            ApiError::IoError(e) => format!("cannot write the hub cache in {}: {e}", self.hub_cache.display()),
            other => other.to_string(),
        };
        let reason = reason.replace(['\n', '\r'], " ");
        Error::Hub(format!("cannot download {id} from {}: {reason}; {LOCAL_FILE_HINT}", repo.url(file)))
    }
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
