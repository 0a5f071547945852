//! Model ids through the hub, over real HTTP: a small hub-shaped server on 127.0.0.1 serves
//! `/{owner}/{name}/resolve/{rev}/{file}` the way huggingface.co does (what hf-hub's sync client relies on):
//! - the metadata request is `GET` with `Range: bytes=0-0` and redirects off; it needs `ETag` (or `X-Linked-Etag`),
//!   `X-Repo-Commit` and `Content-Range: bytes 0-0/<size>`;
//! - LFS files (`*.safetensors`) answer 302 with an absolute `Location` to a CDN URL plus `X-Linked-Etag` and
//!   `X-Repo-Commit`; hf-hub then asks the CDN for `bytes=0-0` (size) and downloads with `Range: bytes=0-`;
//! - errors carry `X-Error-Code` (`RepositoryNotFound`, `EntryNotFound`, ...).
//!
//! `HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` are process-global, so every test holds `ENV_LOCK` while it runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use codec::hub;
use codec::Error;

const COMMIT: &str = "4f2c9a0d1b7e3c5a6f8e9d0c1b2a3f4e5d6c7b8a";

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct HubServer {
    endpoint: String,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl HubServer {
    /// Serves `repos` (repo id → file name → bytes) until the test process exits.
    fn start(repos: HashMap<String, HashMap<String, Vec<u8>>>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (thread_log, thread_endpoint) = (log.clone(), endpoint.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // One request per connection (`Connection: close`), so serving inline is enough.
                let _ = handle(stream, &repos, &thread_endpoint, &thread_log);
            }
        });
        HubServer { endpoint, log }
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

/// The hub's etags: an LFS file's is its sha256 (which the client checks); a plain file's is its git sha1, which
/// the client cannot check (40 hex digits here too, cut from the sha256).
fn etag_of(bytes: &[u8], lfs: bool) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    if lfs {
        hex
    } else {
        hex[..40].to_string()
    }
}

fn handle(
    stream: TcpStream,
    repos: &HashMap<String, HashMap<String, Vec<u8>>>,
    endpoint: &str,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
        authorization: headers.get("authorization").cloned(),
    });

    let mut out = stream;
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    match parts.as_slice() {
        // The CDN an LFS redirect points to: content addressed by its etag.
        ["cdn", etag] => {
            let body = repos.values().flat_map(|files| files.values()).find(|b| etag_of(b, true) == *etag);
            match body {
                Some(body) => serve(&mut out, body, range.as_deref(), &[("ETag", format!("\"{etag}\""))]),
                None => reply(&mut out, 404, &[], b"no such blob"),
            }
        }
        [owner, name, "resolve", rev, file] => {
            let Some(files) = repos.get(&format!("{owner}/{name}")) else {
                return reply(&mut out, 404, &[("X-Error-Code", "RepositoryNotFound".into())], b"Repository not found");
            };
            if *rev != "main" && *rev != COMMIT {
                return reply(&mut out, 404, &[("X-Error-Code", "RevisionNotFound".into())], b"Revision not found");
            }
            let Some(body) = files.get(*file) else {
                return reply(&mut out, 404, &[("X-Error-Code", "EntryNotFound".into())], b"Entry not found");
            };
            let lfs = file.ends_with(".safetensors");
            let etag = etag_of(body, lfs);
            if lfs {
                let headers = [
                    ("Location", format!("{endpoint}/cdn/{etag}")),
                    ("X-Linked-Etag", format!("\"{etag}\"")),
                    ("X-Linked-Size", body.len().to_string()),
                    ("X-Repo-Commit", COMMIT.to_string()),
                    ("ETag", "\"lfs-pointer-etag\"".to_string()),
                ];
                reply(&mut out, 302, &headers, b"")
            } else {
                serve(
                    &mut out,
                    body,
                    range.as_deref(),
                    &[("ETag", format!("\"{etag}\"")), ("X-Repo-Commit", COMMIT.into())],
                )
            }
        }
        _ => reply(&mut out, 404, &[], b"not found"),
    }
}

/// Answers a `Range: bytes=a-b` / `bytes=a-` request with 206 and `Content-Range`, or the whole body with 200.
fn serve(out: &mut TcpStream, body: &[u8], range: Option<&str>, headers: &[(&str, String)]) -> std::io::Result<()> {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return reply(out, 200, headers, body);
    };
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = start.parse().unwrap_or(0);
    let end: usize =
        end.parse().map(|e: usize| e.min(body.len().saturating_sub(1))).unwrap_or(body.len().saturating_sub(1));
    if start >= body.len() || start > end {
        return reply(out, 416, &[("Content-Range", format!("bytes */{}", body.len()))], b"");
    }
    let mut headers = headers.to_vec();
    headers.push(("Content-Range", format!("bytes {start}-{end}/{}", body.len())));
    reply(out, 206, &headers, &body[start..=end])
}

fn reply(out: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Points the hub client at `endpoint` with a fresh `HF_HOME`; returns that directory. Proxy variables are cleared
/// because ureq 2 ignores `NO_PROXY` and would send 127.0.0.1 through a proxy.
fn hub_env(test: &str, endpoint: &str) -> PathBuf {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hub-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", endpoint);
    for var in [
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "ALL_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "all_proxy",
        "https_proxy",
        "http_proxy",
    ] {
        std::env::remove_var(var);
    }
    home
}

fn lock_env() -> MutexGuard<'static, ()> {
    // A failed test must not poison the others.
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn count(requests: &[Seen], needle: &str) -> usize {
    requests.iter().filter(|r| r.path.contains(needle)).count()
}

/// The placeholder repo: the download path does not look inside the files.
fn placeholder_repo() -> HashMap<String, Vec<u8>> {
    let weights: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    HashMap::from([
        ("config.json".to_string(), br#"{"model_type": "mimi"}"#.to_vec()),
        ("model.safetensors".to_string(), weights),
    ])
}

fn fixture_repo() -> HashMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mimi/hub");
    hub::REPO_FILES
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (generate it with scripts/make_fixtures.py)", path.display()));
            (f.to_string(), bytes)
        })
        .collect()
}

#[test]
fn download_fetches_the_repo_over_http_into_hf_home() {
    let _env = lock_env();
    let files = placeholder_repo();
    let server = HubServer::start(HashMap::from([("acme/tiny-codec".to_string(), files.clone())]));
    // A trailing slash, as users paste it, must not produce `//` URLs.
    let home = hub_env("download", &format!("{}/", server.endpoint));
    std::env::set_var("HF_TOKEN", "hf_test_token");

    let snapshot = hub::download("acme/tiny-codec", false).unwrap();
    assert!(snapshot.starts_with(home.join("hub/models--acme--tiny-codec/snapshots")), "{}", snapshot.display());
    assert_eq!(snapshot.file_name().unwrap(), COMMIT);
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(snapshot.join(name)).unwrap(), bytes, "{name}");
    }

    let seen = server.requests();
    assert!(count(&seen, "/acme/tiny-codec/resolve/main/config.json") >= 1, "{seen:#?}");
    // The first reply names the commit; the rest of the snapshot is asked for at that commit.
    assert!(count(&seen, &format!("/acme/tiny-codec/resolve/{COMMIT}/model.safetensors")) >= 1, "{seen:#?}");
    assert!(count(&seen, "/cdn/") >= 1, "LFS redirect not followed: {seen:#?}");
    assert!(seen.iter().all(|r| !r.path.starts_with("//")), "{seen:#?}");
    assert!(seen.iter().any(|r| r.range.as_deref() == Some("bytes=0-")), "{seen:#?}");
    // HF_TOKEN reaches the hub (the resolve requests; the CDN is the same host here).
    assert!(
        seen.iter()
            .filter(|r| r.path.contains("/resolve/"))
            .all(|r| r.authorization.as_deref() == Some("Bearer hf_test_token")),
        "{seen:#?}"
    );

    // Already cached: no request at all.
    let before = server.requests().len();
    assert_eq!(hub::download("acme/tiny-codec", false).unwrap(), snapshot);
    assert_eq!(server.requests().len(), before, "{:#?}", &server.requests()[before..]);
}

#[test]
fn resolve_converts_once_then_hits_the_cache() {
    let _env = lock_env();
    let server = HubServer::start(HashMap::from([("kyutai/mimi".to_string(), fixture_repo())]));
    let home = hub_env("resolve", &server.endpoint);

    let gguf = hub::resolve_model("kyutai/mimi", false).unwrap();
    assert_eq!(gguf, home.join(format!("codec-rs/v1/kyutai--mimi--{COMMIT}.gguf")));
    assert_eq!(hub::cache_dir(), home.join("codec-rs/v1"));
    let bytes = std::fs::read(&gguf).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    let file = codec::gguf::ModelFile::open(&gguf).unwrap();
    assert_eq!(file.string(codec::gguf::keys::NAME).unwrap(), "kyutai/mimi");
    let seen = server.requests();
    assert!(count(&seen, "config.json") >= 1 && count(&seen, "model.safetensors") >= 1, "{seen:#?}");
    // Only the finished file is left in the cache dir: no temp files.
    let entries: Vec<_> = std::fs::read_dir(hub::cache_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // Second call: the cached GGUF, untouched, without any request.
    let mtime = std::fs::metadata(&gguf).unwrap().modified().unwrap();
    let before = server.requests().len();
    assert_eq!(hub::resolve_model("kyutai/mimi", false).unwrap(), gguf);
    assert_eq!(std::fs::metadata(&gguf).unwrap().modified().unwrap(), mtime);
    assert_eq!(server.requests().len(), before, "{:#?}", &server.requests()[before..]);

    // GGUF gone but the download cached: converted again from hf-hub's cache, weights not fetched again.
    std::fs::remove_file(&gguf).unwrap();
    assert_eq!(hub::resolve_model("kyutai/mimi", false).unwrap(), gguf);
    assert!(gguf.is_file());
    assert_eq!(count(&server.requests()[before..], "model.safetensors"), 0);

    // A local path is returned as is, whatever it looks like.
    let local = gguf.to_str().unwrap();
    assert_eq!(hub::resolve_model(local, false).unwrap(), gguf);
}

#[test]
fn hub_errors_are_one_line_and_point_to_local_files() {
    let _env = lock_env();
    let mut weightless = placeholder_repo();
    weightless.remove("model.safetensors");
    let server = HubServer::start(HashMap::from([("acme/weightless".to_string(), weightless)]));
    hub_env("errors", &server.endpoint);

    let hub_message = |spec: &str| match hub::resolve_model(spec, false) {
        Err(Error::Hub(msg)) => {
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.contains(&format!("cannot download {spec} from ")), "{msg}");
            assert!(msg.contains("pass a local model file instead"), "{msg}");
            msg
        }
        other => panic!("{spec}: expected a hub error, got {other:?}"),
    };

    let msg = hub_message("nobody/missing");
    assert!(msg.contains("repository nobody/missing not found (HTTP 404)"), "{msg}");
    assert!(msg.contains(&format!("{}/nobody/missing/resolve/main/config.json", server.endpoint)), "{msg}");

    let msg = hub_message("acme/weightless");
    assert!(msg.contains("the repo has no file model.safetensors (HTTP 404)"), "{msg}");

    let msg = hub_message("acme/weightless@v9");
    assert!(msg.contains("revision 'v9' not found"), "{msg}");

    // A closed port: bind, note the port, close.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    hub_env("unreachable", &format!("http://127.0.0.1:{closed}"));
    let msg = hub_message("kyutai/mimi");
    assert!(msg.contains(&format!("http://127.0.0.1:{closed}/kyutai/mimi/resolve/main/config.json")), "{msg}");
    assert!(msg.contains("Connection Failed"), "{msg}");
    eprintln!("unreachable: {msg}");

    // Neither a file nor an id.
    for spec in ["no/such/dir/model.gguf", "missing.gguf", "models/mimi.gguf", "mimi"] {
        match hub::resolve_model(spec, false) {
            Err(Error::InvalidArgument(msg)) => {
                assert_eq!(msg, format!("MODEL '{spec}': no such file, and not a model id like kyutai/mimi"))
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
}

/// A server that accepts connections and never answers; or, with `stall_body`, answers the metadata request of a
/// 100-byte `config.json` and then sends 10 bytes of it and nothing more. Each connection is held until the client
/// gives up and closes it.
fn start_stalling(stall_body: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if stall_body {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut metadata = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                            break;
                        }
                        metadata |= line.to_ascii_lowercase().starts_with("range: bytes=0-0");
                    }
                    let head = if metadata {
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: 1\r\nETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\n\
                             Content-Range: bytes 0-0/100\r\nConnection: close\r\n\r\n{{",
                            "a".repeat(40)
                        )
                    } else {
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\nContent-Range: bytes 0-99/100\r\n\r\n{\"0123456\""
                            .to_string()
                    };
                    let _ = stream.write_all(head.as_bytes());
                }
                // Hold the connection open, silent, until the client closes it.
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            });
        }
    });
    endpoint
}

#[test]
fn a_hub_that_stops_answering_times_out_with_a_retry_hint() {
    let _env = lock_env();
    for (case, stall_body) in [("silent", false), ("stalled body", true)] {
        let endpoint = start_stalling(stall_body);
        hub_env("timeout", &endpoint);
        std::env::set_var("HF_HUB_DOWNLOAD_TIMEOUT", "1");
        let start = std::time::Instant::now();
        let result = hub::resolve_model("kyutai/mimi", false);
        let elapsed = start.elapsed();
        std::env::remove_var("HF_HUB_DOWNLOAD_TIMEOUT");
        let msg = match result {
            Err(Error::Hub(msg)) => msg,
            other => panic!("{case}: expected a hub error, got {other:?}"),
        };
        assert!(elapsed < std::time::Duration::from_secs(10), "{case}: took {elapsed:?}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains(&format!(
                "cannot download kyutai/mimi from {endpoint}/kyutai/mimi/resolve/main/config.json: timed out (no reply \
                 or data for 1 s); retry later, or raise HF_HUB_DOWNLOAD_TIMEOUT (seconds) on a slow link"
            )),
            "{case}: {msg}"
        );
    }

    std::env::set_var("HF_HUB_DOWNLOAD_TIMEOUT", "soon");
    let result = hub::resolve_model("kyutai/mimi", false);
    std::env::remove_var("HF_HUB_DOWNLOAD_TIMEOUT");
    match result {
        Err(Error::InvalidArgument(msg)) => {
            assert_eq!(msg, "HF_HUB_DOWNLOAD_TIMEOUT='soon': expected a positive number of seconds")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn damaged_cache_files_are_fetched_or_converted_again() {
    let _env = lock_env();
    let files = fixture_repo();
    let server = HubServer::start(HashMap::from([("kyutai/mimi".to_string(), files.clone())]));
    let home = hub_env("damaged", &server.endpoint);
    let gguf = hub::resolve_model("kyutai/mimi", false).unwrap();
    let converted_len = std::fs::metadata(&gguf).unwrap().len();
    let snapshot = hub::download("kyutai/mimi", false).unwrap();
    let truncate = |path: &Path| {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
    };

    // A truncated GGUF (a full disk, say) is converted again from the cached download, without any request.
    truncate(&gguf);
    let before = server.requests().len();
    assert_eq!(hub::resolve_model("kyutai/mimi", false).unwrap(), gguf);
    assert_eq!(std::fs::metadata(&gguf).unwrap().len(), converted_len);
    codec::gguf::ModelFile::open(&gguf).unwrap();
    assert_eq!(server.requests().len(), before, "{:#?}", &server.requests()[before..]);

    // A truncated weights file fails its sha256 before converting and is fetched again.
    truncate(&snapshot.join("model.safetensors"));
    std::fs::remove_file(&gguf).unwrap();
    assert_eq!(hub::resolve_model("kyutai/mimi", false).unwrap(), gguf);
    codec::gguf::ModelFile::open(&gguf).unwrap();
    assert_eq!(std::fs::read(snapshot.join("model.safetensors")).unwrap(), files["model.safetensors"]);
    assert!(count(&server.requests()[before..], "/cdn/") >= 1, "{:#?}", &server.requests()[before..]);

    // A damaged config.json (its etag, a git sha1, cannot be checked): the error names it and what to delete.
    std::fs::write(snapshot.join("config.json"), b"{\"model_type\": \"mi").unwrap();
    std::fs::remove_file(&gguf).unwrap();
    let repo_dir = home.join("hub/models--kyutai--mimi");
    match hub::resolve_model("kyutai/mimi", false) {
        Err(Error::Hub(msg)) => {
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.starts_with(&snapshot.join("config.json").display().to_string()), "{msg}");
            assert!(
                msg.ends_with(&format!(
                    "; if the cached download is damaged, delete {} to fetch it again",
                    repo_dir.display()
                )),
                "{msg}"
            );
        }
        other => panic!("expected a hub error, got {other:?}"),
    }
    // Following the hint works.
    std::fs::remove_dir_all(&repo_dir).unwrap();
    assert_eq!(hub::resolve_model("kyutai/mimi", false).unwrap(), gguf);
    codec::gguf::ModelFile::open(&gguf).unwrap();
}
