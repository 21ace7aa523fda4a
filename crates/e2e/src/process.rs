//! The built service binaries as child processes: where they are, free
//! ports, start with an environment, wait for `/readyz`, stop with SIGTERM
//! or SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::eventually;

/// The folder with the built binaries: `E2E_BIN_DIR`, or the profile
/// folder of the test executable itself (`target/debug/deps/e2e-…` →
/// `target/debug`), where `cargo build` put the services.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test executable lives in <target>/<profile>/deps")
}

/// The path of a built binary; panics with what to run when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build the services first (deploy/test.sh --e2e does, or \
         `cargo build -p webhook-registry -p delivery-worker -p gateway`), or set E2E_BIN_DIR",
        path.display()
    );
    path
}

pub use test_support::free_port;

/// A directory for one test's files, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "bedolaga-e2e-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create the test directory");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // `E2E_KEEP_DIR=1` keeps the logs, configurations and stores.
        if std::env::var_os("E2E_KEEP_DIR").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for a child to exit; `None` when it is still running after `within`.
pub async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One running service binary with an HTTP address for `/readyz` and
/// `/metrics`, its output in a log file. Killed when dropped; the last lines
/// of its log are printed when that happens during a failing test.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Service {
    /// Starts `binary` with `env` (on top of a cleared environment, plus
    /// `PATH`), `bind_var` set to a free port; output to `<dir>/<name>.log`.
    pub fn start(
        name: &str,
        binary_name: &str,
        bind_var: &str,
        env: &[(String, String)],
        dir: &Path,
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("socket address");
        Self::start_on(name, binary_name, bind_var, addr, env, dir)
    }

    /// Like [`Service::start`] on a given address (a restart on the same port).
    pub fn start_on(
        name: &str,
        binary_name: &str,
        bind_var: &str,
        addr: SocketAddr,
        env: &[(String, String)],
        dir: &Path,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let err = out.try_clone().expect("clone the log file");
        let mut cmd = Command::new(binary(binary_name));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SECRETS_KEY_FILE", storage::testing::key_file())
            .env(bind_var, addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary_name}: {e}"));
        Self {
            name: name.to_owned(),
            addr,
            log,
            child: Some(child),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `(status, body)` of `/readyz`; `None` when nothing answers.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let resp = self.http.get(self.url("/readyz")).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = self.readyz().await;
            if matches!(answer, Some((200, _))) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}) before it was ready; last lines:\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after {within:?}: {answer:?}; last lines:\n{}",
                self.name,
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/readyz` answers 503 with `check` failing; returns the
    /// report.
    pub async fn wait_not_ready(&self, check: &str, within: Duration) -> Value {
        let what = format!("{} /readyz reports {check} down", self.name);
        eventually(within, &what, || async {
            match self.readyz().await {
                Some((503, body)) if body["checks"][check].as_str().is_some_and(|c| c != "ok") => {
                    Some(body)
                }
                _ => None,
            }
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("{} /metrics: {e}", self.name))
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of an unlabelled metric (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// SIGTERM, then the exit status (panics when it outlives `within`).
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the service is running");
        let pid = child.id();
        test_support::terminate(pid).unwrap_or_else(|e| panic!("SIGTERM to {pid}: {e}"));
        match wait_exit(&mut child, within).await {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} still running {within:?} after SIGTERM; last lines:\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            if std::thread::panicking() {
                eprintln!(
                    "--- last lines of {} ({}):\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
        }
    }
}

/// The value of an unlabelled Prometheus sample `name` (counters may carry
/// the `_total` suffix), 0 when absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name || key.strip_suffix("_total") == Some(name))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}
