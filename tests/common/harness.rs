//! The service-test harness: spawn the real `layerstream serve` binary on a free port of 127.0.0.1,
//! wait for READY, and talk HTTP/1.1 to it over a plain `TcpStream` — whole responses (JSON) and
//! server-sent events read as they arrive. Each server's stderr is kept under
//! `target/test-artifacts/serve/` for debugging; the process is killed when the `Server` drops, and
//! a watchdog kills it if the test process dies first (so a server kept in a `static` never leaks).
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long `Server::spawn` waits for `listening on http://…`.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-read timeout of the HTTP client: long enough for a real-model request on a slow
/// machine, short enough that a hang fails the test instead of stalling it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(180);

/// The binary under test: the one cargo builds for integration tests, or `LAYERSTREAM_TEST_BIN`
/// (to run the tests against another build, e.g. to see a new test fail on the previous one).
pub fn binary() -> PathBuf {
    std::env::var_os("LAYERSTREAM_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_layerstream")))
}

/// `target/test-artifacts` (respects `CARGO_TARGET_DIR`).
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The running test's name (libtest names each test thread after its test).
fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The test binary's name without cargo's hash (`service_generate`), to name per-binary files.
fn binary_stem() -> String {
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_string_lossy().to_string();
    match stem.rsplit_once('-') {
        Some((base, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => base.to_string(),
        _ => stem,
    }
}

pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

fn next_log_path() -> PathBuf {
    let dir = artifacts_dir().join("serve");
    std::fs::create_dir_all(&dir).unwrap();
    let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{}-{n}.stderr.log", binary_stem(), test_name()))
}

/// Remove terminal colour sequences (`ESC [ … m`) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `layerstream serve` process on 127.0.0.1 and a free port.
pub struct Server {
    child: Mutex<Child>,
    watchdog: Mutex<Child>,
    _watchdog_stdin: Mutex<Option<ChildStdin>>,
    /// The server's process id (for signals).
    pub pid: u32,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub port: u16,
    /// Taken just before the process was started.
    pub spawned_at: Instant,
    /// Where the server's stderr (its log) goes.
    pub log_path: PathBuf,
}

impl Server {
    /// Start `layerstream serve --port 0 ARGS…` with extra environment variables and wait until it
    /// prints `listening on http://HOST:PORT` (10 s; fails fast with the log tail if it exits).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::try_spawn(args, envs).unwrap_or_else(|exit| {
            panic!(
                "`serve {}` exited with {} before listening; log tail:\n{}",
                args.join(" "),
                exit.status,
                tail(&exit.stderr, 30)
            )
        })
    }

    /// Like `spawn`, but a process that exits before listening is an answer, not a failure:
    /// `Err` carries its status and log.
    pub fn try_spawn(args: &[&str], envs: &[(&str, &str)]) -> Result<Server, Exit> {
        let log_path = next_log_path();
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let (watchdog, watchdog_stdin) = spawn_watchdog(pid);
        let lines = drain_lines(child.stdout.take().unwrap());
        let server = Server {
            child: Mutex::new(child),
            watchdog: Mutex::new(watchdog),
            _watchdog_stdin: Mutex::new(Some(watchdog_stdin)),
            pid,
            addr: String::new(),
            port: 0,
            spawned_at,
            log_path,
        };
        server.await_listening(lines, args)
    }

    fn await_listening(
        mut self,
        lines: mpsc::Receiver<String>,
        args: &[&str],
    ) -> Result<Server, Exit> {
        let deadline = self.spawned_at + LISTEN_TIMEOUT;
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                        self.addr = addr.to_string();
                        self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
                        return Ok(self);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting (or closed it, which counts as failing).
                    let status = self.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
                        panic!(
                            "`serve {}` closed stdout without listening and kept running; log tail:\n{}",
                            args.join(" "),
                            tail(&self.log(), 30)
                        )
                    });
                    return Err(self.exit_of(status));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = self.try_exit() {
                return Err(self.exit_of(status));
            }
            assert!(
                Instant::now() < deadline,
                "`serve {}` did not print `listening on` within {LISTEN_TIMEOUT:?}; log tail:\n{}",
                args.join(" "),
                tail(&self.log(), 30)
            );
        }
    }

    fn exit_of(&self, status: ExitStatus) -> Exit {
        Exit {
            status,
            stdout: String::new(),
            stderr: self.log(),
        }
    }

    /// Poll `/health` every 10 ms until it answers 200; returns the time since spawn. Fails fast
    /// if the process exits or the load fails, and after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            // Bounded per poll, so that a server that accepts but never answers still fails on time.
            let per_poll = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            if let Ok(r) = request(&self.addr, "GET", "/health", &[], b"", per_poll) {
                if r.status == 200 {
                    return self.spawned_at.elapsed();
                }
                if r.json().get("status").and_then(Value::as_str) == Some("failed") {
                    panic!("the load failed before READY: {}", r.text());
                }
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "server exited with {status} before READY; log tail:\n{}",
                    tail(&self.log(), 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "server not READY within {timeout:?}; log tail:\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Poll `/load-progress` until its state is `state` (or `timeout`); returns the snapshot.
    pub fn wait_load_state(&self, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.get("/load-progress").json();
            if snap["state"] == state {
                return snap;
            }
            assert!(
                Instant::now() < deadline,
                "load state did not become {state} within {timeout:?}; last: {snap}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far (colour codes removed).
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Wait until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {timeout:?}; log tail:\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Poll `/health` until its `engine` object satisfies `ok`; returns it. Fails naming `what`
    /// (with the last object seen) after `timeout`.
    pub fn wait_engine(&self, what: &str, ok: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let e = self.get("/health").json()["engine"].clone();
            if ok(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "{what}: {e}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send SIGTERM (through `kill`, no libc).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {} failed", self.pid);
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        request(&self.addr, method, path, headers, body, READ_TIMEOUT)
    }

    /// Any request; panics on an I/O error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    /// POST a JSON document.
    pub fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        self.post_raw(path, body.to_string().as_bytes())
    }

    /// POST bytes labelled as JSON (for malformed bodies).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> HttpResponse {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    /// Open a server-sent-event stream (GET with `Accept: text/event-stream`).
    pub fn sse_get(&self, path: &str, timeout: Duration) -> SseStream {
        open_stream(
            &self.addr,
            "GET",
            path,
            &[("Accept", "text/event-stream")],
            b"",
            timeout,
        )
        .unwrap_or_else(|e| panic!("GET {path} (SSE): {e}"))
    }

    /// POST a JSON body and read the answer as server-sent events.
    pub fn sse_post(&self, path: &str, body: &Value, timeout: Duration) -> SseStream {
        open_stream(
            &self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
            timeout,
        )
        .unwrap_or_else(|e| panic!("POST {path} (SSE): {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(mut w) = self.watchdog.lock() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A shell that kills `pid` once its stdin closes, which happens when the test process exits
/// however it exits (servers kept in statics are never dropped).
fn spawn_watchdog(pid: u32) -> (Child, ChildStdin) {
    let mut w = Command::new("sh")
        .args([
            "-c",
            &format!("read _ignored; kill -KILL {pid} 2>/dev/null"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = w.stdin.take().unwrap();
    (w, stdin)
}

/// Read lines from a pipe on a thread; keeps draining after the receiver is gone.
fn drain_lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(l) => {
                    let _ = tx.send(l);
                }
                Err(_) => break,
            }
        }
    });
    rx
}

/// What a process run to completion left.
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `layerstream ARGS…` to completion; fails if it runs longer than `timeout`.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Exit {
    let dir = artifacts_dir().join("serve");
    std::fs::create_dir_all(&dir).unwrap();
    let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("{}-{}-{n}.stdout.log", binary_stem(), test_name()));
    let err_path = dir.join(format!("{}-{}-{n}.stderr.log", binary_stem(), test_name()));
    let mut child = Command::new(binary())
        .args(args)
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`layerstream {}` still running after {timeout:?}; stderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exit {
        status,
        stdout: strip_ansi(&std::fs::read_to_string(&out_path).unwrap_or_default()),
        stderr: strip_ansi(&std::fs::read_to_string(&err_path).unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------------------------
// Models

/// The tiny model of the brief (2 layers, hidden 64, the real tokenizer), written once per test
/// binary (each run rewrites it, so it always comes from the binary under test).
pub fn tiny_model() -> PathBuf {
    static TINY: OnceLock<PathBuf> = OnceLock::new();
    TINY.get_or_init(|| {
        gen_model(
            "tiny",
            &[
                "--layers",
                "2",
                "--hidden",
                "64",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--ffn",
                "128",
            ],
        )
    })
    .clone()
}

/// Write a random-weight model with `layerstream gen-model ARGS… --vocab-from <vocab> --seed 1`
/// to `target/test-artifacts/models/<binary>-<name>.gguf` (through a temporary name, so a reader
/// never sees half a file).
pub fn gen_model(name: &str, args: &[&str]) -> PathBuf {
    let dir = artifacts_dir().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{}-{name}.gguf", binary_stem()));
    let tmp = dir.join(format!(
        "{}-{name}.gguf.{}.tmp",
        binary_stem(),
        std::process::id()
    ));
    let vocab = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-vocab.gguf");
    let mut full: Vec<&str> = vec!["gen-model"];
    full.extend_from_slice(args);
    let (vocab_s, tmp_s) = (vocab.to_string_lossy(), tmp.to_string_lossy());
    full.extend_from_slice(&["--vocab-from", &vocab_s, "--seed", "1", "--out", &tmp_s]);
    let exit = run_to_exit(&full, &[], Duration::from_secs(120));
    assert!(exit.status.success(), "gen-model failed: {}", exit.stderr);
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Token ids of `text` (raw-prompt semantics) by `layerstream tokenize`.
pub fn tokenize(model: &Path, text: &str) -> Vec<u32> {
    let model = model.to_string_lossy();
    let exit = run_to_exit(
        &["tokenize", "--model", &model, "--text", text],
        &[],
        Duration::from_secs(60),
    );
    assert!(exit.status.success(), "tokenize failed: {}", exit.stderr);
    serde_json::from_str(exit.stdout.trim()).unwrap()
}

/// A copy of `src` under `target/test-artifacts/models/` that a test may damage.
pub fn copy_model(src: &Path, name: &str) -> PathBuf {
    let dir = artifacts_dir().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join(format!("{}-{name}.gguf", binary_stem()));
    std::fs::copy(src, &dst).unwrap();
    dst
}

#[path = "harness_http.rs"]
mod http;
pub use http::{open_stream, request, HttpResponse, SseEvent, SseStream};

// ---------------------------------------------------------------------------------------------
// Assertions shared by the service tests

/// Check the one error shape `{"error":{"code","type","message","param"?}}` and return `error`.
pub fn assert_error(r: &HttpResponse, status: u16, kind: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "expected {status} {kind}, got: {}",
        r.text()
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "error without a JSON content type: {:?}",
        r.headers
    );
    let body = r.json();
    let e = body["error"].clone();
    assert_eq!(e["code"], status, "{body}");
    assert_eq!(e["type"], kind, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    e
}

/// Check a streamed generation: `started` first, `token`s with consecutive `i`, exactly one
/// terminal `end` last, and the tokens' ids and text agreeing with `end`. Returns the `end` data.
pub fn assert_generation_stream(events: &[SseEvent]) -> Value {
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "events: {names:?}");
    assert_eq!(names.last(), Some(&"end"), "events: {names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "end").count(),
        1,
        "events: {names:?}"
    );
    let tokens: Vec<&SseEvent> = events.iter().filter(|e| e.event == "token").collect();
    assert_eq!(
        tokens.len() + 2,
        events.len(),
        "only started/token/end expected: {names:?}"
    );
    let end = events.last().unwrap().data.clone();
    let mut text = String::new();
    let mut ids = Vec::new();
    for (k, t) in tokens.iter().enumerate() {
        assert_eq!(
            t.data["i"], k,
            "token indices must count from 0: {}",
            t.data
        );
        ids.push(t.data["id"].as_u64().unwrap());
        text.push_str(t.data["t"].as_str().unwrap());
    }
    text.push_str(end["tail"].as_str().unwrap_or(""));
    let end_ids: Vec<u64> = end["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, end_ids, "streamed ids differ from the end event's");
    assert_eq!(
        text, end["text"],
        "streamed text (+ tail) differs from the end event's"
    );
    end
}

/// `token_ids` of a JSON generation result.
pub fn token_ids(v: &Value) -> Vec<u64> {
    v["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no token_ids in {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}
