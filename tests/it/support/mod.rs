//! Helpers for end-to-end tests: a real `tidegate` process on ephemeral
//! ports, a programmable downstream HTTP server, and polling with deadlines.

#![allow(dead_code)]

pub mod downstream;
pub mod nats;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use downstream::{Downstream, Reply};

/// Polls `cond` until it holds or `timeout` passes; panics with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running tidegate binary with its own data directory.
pub struct Tidegate {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    data: PathBuf,
    child: Option<Child>,
    open_files_limit: Option<u32>,
    /// The working directory the process starts in (the test's own if None).
    pub cwd: Option<PathBuf>,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Copies the process's stderr into `stderr`; joined after the process
    /// exits, so `log()` then holds every line it wrote.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// Which queue the tests of a test binary run on: each binary's root says
/// (`tests/it/main.rs`: SQLite; `tests/cluster_suite.rs`: JetStream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    JetStream,
}

/// `[storage]` keys that put the queue on this binary's backend: for
/// JetStream, the process's shared NATS server, under a stream prefix of
/// the test's own (derived from its data directory, so a rewritten config
/// finds the same streams).
pub fn backend_storage(data: &Path) -> String {
    match crate::BACKEND {
        Backend::Sqlite => String::new(),
        Backend::JetStream => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            format!(
                "backend = \"jetstream\"\n[storage.jetstream]\nurls = [\"{}\"]\nreplicas = 1\nstream_prefix = \"T{:016x}\"\n",
                nats::shared_url(),
                h.finish()
            )
        }
    }
}

/// The head of every test config: ephemeral ports, a private data dir.
fn base_config(data: &Path, extra: &Extra) -> String {
    format!(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[storage]\npath = \"{}\"\n{}\n{}\n[log]\nformat = \"{}\"\n[server]\nshutdown_timeout = \"{}\"\n\n",
        extra.ingress,
        extra.admin,
        data.display(),
        extra.storage,
        if extra.storage.contains("backend") { String::new() } else { backend_storage(data) },
        if extra.log_json { "json" } else { "text" },
        extra.shutdown_timeout.unwrap_or("5s")
    )
}

/// Extra keys for the fixed sections of a test config.
#[derive(Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Where the journal lives, instead of the test's temporary directory
    /// (a relative path is relative to the config file).
    pub data: Option<&'a Path>,
    /// The working directory tidegate starts in.
    pub cwd: Option<&'a Path>,
    pub ingress: &'a str,
    pub admin: &'a str,
    pub log_json: bool,
    pub storage: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    /// Runs tidegate under `ulimit -n` this low.
    pub open_files_limit: Option<u32>,
    /// `server.shutdown_timeout`, if not 5 s.
    pub shutdown_timeout: Option<&'a str>,
}

impl Tidegate {
    /// Starts tidegate with `destinations` (TOML for `[[destination]]`
    /// tables) and optional extra `[ingress]` keys.
    pub async fn start(destinations: &str) -> Tidegate {
        Self::start_with(destinations, Extra::default()).await
    }

    pub async fn start_with(destinations: &str, extra: Extra<'_>) -> Tidegate {
        let (dir, config_path, data) = test_config(destinations, &extra);
        let mut t = Tidegate {
            dir,
            config_path,
            data,
            child: None,
            open_files_limit: extra.open_files_limit,
            cwd: extra.cwd.map(Path::to_path_buf),
            ingress: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            client: client(),
            stderr: Arc::new(Mutex::new(Vec::new())),
            stderr_reader: None,
        };
        t.spawn(extra.env).await;
        t
    }

    /// Rewrites the config with other destinations (same ports: 0 again).
    pub fn rewrite_destinations(&self, destinations: &str) {
        let cfg = format!(
            "{}{destinations}",
            base_config(&self.dir.path().join("data"), &Extra::default())
        );
        std::fs::write(&self.config_path, cfg).expect("write config");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Starts (or restarts) the process and waits for its listening line.
    pub async fn spawn(&mut self, env: &[(&str, &str)]) {
        let bin = env!("CARGO_BIN_EXE_tidegate");
        let mut cmd = match self.open_files_limit {
            None => Command::new(bin),
            // `exec`: the process the test signals is tidegate itself.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                sh
            }
        };
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tidegate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = self.stderr.clone();
        self.stderr_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        let line = match line {
            Ok(l) => l,
            Err(_) => {
                let status = child.try_wait();
                panic!(
                    "tidegate did not start ({status:?}); stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
        };
        self.ingress = addr_in(&line, "ingress");
        self.admin = addr_in(&line, "admin");
        // A restarted process may get the port numbers of the old one; the
        // old process's pooled connections must not be reused for it.
        self.client = client();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingress)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs `body` to `/{path}` on ingress.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("ingress request")
    }

    /// POSTs and returns the message id from a 202.
    pub async fn send(&self, path: &str, body: &str) -> String {
        let r = self.post(path, body).await;
        assert_eq!(r.status(), 202, "POST {path}");
        accepted_id(r).await
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        // GET is idempotent: a pooled connection closed under the client
        // is retried, as any HTTP client would.
        let mut tries = 0;
        loop {
            match self.client.get(self.admin_url(path)).send().await {
                Ok(r) => return r.json().await.expect("admin json"),
                Err(e) if tries < 3 && !e.is_timeout() => {
                    tries += 1;
                    eprintln!("retrying GET {path}: {e}");
                }
                Err(e) => panic!("admin request GET {path}: {e}"),
            }
        }
    }

    pub async fn admin_post(&self, path: &str, body: &str) -> reqwest::Response {
        match self
            .client
            .post(self.admin_url(path))
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("admin POST {path}: {e:?}\ntidegate log:\n{}", self.log()),
        }
    }

    /// A GET's body as text (an export), asserting a 200.
    pub async fn client_get(&self, url: &str) -> String {
        let r = self.client.get(url).send().await.expect("GET");
        assert_eq!(r.status(), 200, "GET {url}");
        r.text().await.expect("text")
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics request");
        r.text().await.expect("metrics text")
    }

    pub async fn destination(&self, name: &str) -> serde_json::Value {
        self.admin_get(&format!("/v1/destinations/{name}")).await
    }

    pub async fn message(&self, id: &str) -> serde_json::Value {
        self.admin_get(&format!("/v1/messages/{id}")).await
    }

    pub async fn wait_state(&self, dest: &str, state: &str) {
        eventually(Duration::from_secs(20), &format!("{dest} to be {state}"), || async {
            self.destination(dest).await["state"] == state
        })
        .await
    }

    /// Waits for a message to reach `state`, then for its destination to
    /// have no attempt in flight: an attempt's counters and log lines come
    /// after its outcome is visible, and are done once it is released.
    pub async fn wait_message_state(&self, id: &str, state: &str) {
        eventually(
            Duration::from_secs(20),
            &format!("message {id} to be {state}"),
            || async { self.message(id).await["state"] == state },
        )
        .await;
        let dest = self.message(id).await["destination"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        eventually(
            Duration::from_secs(20),
            &format!("{dest} to have nothing in flight"),
            || async { self.destination(&dest).await["queue"]["in_flight"] == 0 },
        )
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.drain_log();
    }

    /// After an exit: waits until the log holds everything the process
    /// wrote (its reader sees end of file once the process is gone).
    fn drain_log(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit().await
    }

    /// The exit status if the process has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.drain_log();
        Some(status)
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let reader = self.stderr_reader.take();
        tokio::task::spawn_blocking(move || {
            let status = c.wait().expect("wait");
            if let Some(reader) = reader {
                let _ = reader.join();
            }
            status
        })
        .await
        .unwrap()
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid}");
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `ds` has seen an attempt for every id in `acked`.
pub async fn all_delivered(ds: &Downstream, acked: &[String], within: Duration) {
    eventually(within, "every acknowledged message delivered", || async {
        let delivered: std::collections::HashSet<String> = ds.seen().iter().map(|s| s.message_id()).collect();
        acked.iter().all(|id| delivered.contains(id))
    })
    .await;
}

/// `tidegate journal verify --config CONFIG`, run to its end.
pub fn journal_verify(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["journal", "verify", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A process's stderr, line by line as it is written.
pub struct StderrLines(tokio::sync::mpsc::UnboundedReceiver<String>);

impl StderrLines {
    /// The next line containing `what`; panics if none comes within 30 s.
    pub async fn until(&mut self, what: &str) -> String {
        let next = async {
            while let Some(line) = self.0.recv().await {
                if line.contains(what) {
                    return line;
                }
            }
            panic!("stderr ended before a line with {what:?}")
        };
        tokio::time::timeout(Duration::from_secs(30), next)
            .await
            .unwrap_or_else(|_| panic!("no line with {what:?} within 30 s"))
    }
}

/// A tidegate started outside the harness (which waits for it to come
/// up): for starts that are meant to fail or stall. Killed when dropped, so
/// a failing test leaves no process behind.
pub struct RawTidegate(pub std::process::Child);

impl RawTidegate {
    pub fn spawn(config: &std::path::Path) -> RawTidegate {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        RawTidegate(child)
    }

    /// Its stderr, read as it comes (`exit_within` then returns none).
    pub fn stderr_lines(&mut self) -> StderrLines {
        let stderr = self.0.stderr.take().expect("stderr not taken yet");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        StderrLines(rx)
    }

    /// Waits up to `timeout` for the process to exit; its status and stderr.
    pub async fn exit_within(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut status = None;
        eventually(timeout, "the process to exit", || {
            status = self.0.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        let mut err = String::new();
        // Unless the test took stderr to read it as it came.
        if let Some(mut stderr) = self.0.stderr.take() {
            stderr.read_to_string(&mut err).unwrap();
        }
        (status.unwrap(), err)
    }
}

impl Drop for RawTidegate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `name=` address in tidegate's listening (or ready) line.
pub fn addr_in(line: &str, name: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// The config `Tidegate::start_with` runs, written to a new temporary
/// directory: that directory, the config's path and the data directory.
pub fn test_config(destinations: &str, extra: &Extra) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("tidegate.toml");
    let data = extra
        .data
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("data"));
    let cfg = format!("{}{destinations}", base_config(&data, extra));
    std::fs::write(&config_path, cfg).expect("write config");
    (dir, config_path, data)
}

/// A config file for a tidegate the test runs itself: `sections` (any
/// `[ingress]`/`[admin]` lines), a private data directory, then
/// `destinations`. The directory lives as long as the returned guard.
pub fn config_file(sections: &str, destinations: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        format!("{sections}[storage]\npath = \"{}\"\n{destinations}", data.display()),
    )
    .unwrap();
    (dir, path)
}

/// The message id in an ingress 202 answer.
pub async fn accepted_id(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().expect("an id in the answer").to_string()
}

/// A `[[destination]]` table pointing at `url`, with extra lines.
pub fn destination(name: &str, url: &str, extra: &str) -> String {
    format!("[[destination]]\nname = \"{name}\"\nurl = \"{url}\"\nowner = \"test@example.com\"\n{extra}\n")
}

/// Asserts `r` is a problem+json answer with `status` and `code`, complete
/// (type, title, detail); returns its body.
pub async fn problem(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status(), status, "expected {status} {code}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], code);
    assert_eq!(v["status"], status);
    assert!(v["type"].is_string() && v["title"].is_string() && v["detail"].is_string());
    v
}

/// The CSRF value on a console page loaded with the session `cookie` (a
/// `Cookie` header's value).
pub async fn console_csrf(tg: &Tidegate, c: &reqwest::Client, cookie: &str) -> String {
    let page = c
        .get(tg.admin_url("/ui/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF value") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

/// Runs the `tidegate` CLI against `tg`'s admin API: (success, stdout, stderr).
pub fn cli(tg: &Tidegate, args: &[&str]) -> (bool, String, String) {
    cli_with_token(tg, None, args)
}

/// The same, with `TIDEGATE_ADMIN_TOKEN` set to `token`.
pub fn cli_with_token(tg: &Tidegate, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    cmd.args(args).arg("--admin").arg(tg.admin_url(""));
    if let Some(t) = token {
        cmd.env("TIDEGATE_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client a test talks to tidegate with. It keeps an idle connection
/// for less than tidegate's `idle_timeout` (60 s by default), as a client
/// behind any server should: a connection reused at the instant the server
/// closes it for idleness fails its request with `IncompleteMessage` (a
/// test that was quiet for a minute while a fuzzer ran met exactly that).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(20))
        .build()
        .expect("a reqwest client")
}
