//! NATS servers of a test's own: one node with JetStream file storage, or
//! a cluster of nodes routed to each other on loopback. Configuration files
//! and stores live in the test's directory; ports are picked free.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto_events::nats::{FirstConnect, NatsArgs};

use crate::eventually;
use crate::process::{free_port, tail};

/// The nats-server executable: `NATS_SERVER_BIN`, Debian's `/usr/sbin`, or
/// `nats-server` on `PATH`.
fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}

struct Node {
    name: String,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let child = Command::new(nats_server_bin())
            .args(["-c".as_ref(), self.conf.as_os_str()])
            .args(["-l".as_ref(), self.log.as_os_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
    }

    /// True when the server sends its `INFO` line.
    fn answers(&self) -> bool {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
    }
}

/// A set of nats-server processes started by one test.
pub struct NatsServers {
    nodes: Vec<Node>,
}

impl NatsServers {
    /// One server with JetStream on file storage under `dir`.
    pub async fn single(dir: &Path) -> Self {
        let port = free_port();
        let store = dir.join("nats-store");
        let conf = format!(
            "server_name: n1\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            store.display()
        );
        let servers = Self::write_and_start(dir, vec![("n1".to_owned(), port, conf)]);
        servers.wait_jetstream().await;
        servers
    }

    /// `n` servers clustered with routes to each other, JetStream on each.
    pub async fn cluster(dir: &Path, n: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let specs = (0..n)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let (port, route_port) = ports[i];
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}"))
                    .collect();
                let conf = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{\n  store_dir: \"{}\"\n}}\n\
                     cluster {{\n  name: e2e\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                    dir.join(format!("nats-store-{name}")).display(),
                    routes.join(", ")
                );
                (name, port, conf)
            })
            .collect();
        let servers = Self::write_and_start(dir, specs);
        servers.wait_jetstream().await;
        servers
    }

    fn write_and_start(dir: &Path, specs: Vec<(String, u16, String)>) -> Self {
        let nodes = specs
            .into_iter()
            .map(|(name, port, conf_text)| {
                let conf = dir.join(format!("nats-{name}.conf"));
                std::fs::write(&conf, conf_text).expect("write the NATS configuration");
                let mut node = Node {
                    log: dir.join(format!("nats-{name}.log")),
                    name,
                    port,
                    conf,
                    child: None,
                };
                node.spawn();
                node
            })
            .collect();
        Self { nodes }
    }

    /// Every node's client URL, comma-separated (the `NATS_URL` form).
    pub fn urls(&self) -> String {
        self.urls_starting_with(0)
    }

    /// The comma-separated list with node `first` in front.
    pub fn urls_starting_with(&self, first: usize) -> String {
        let mut urls = vec![self.nodes[first].url()];
        urls.extend(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, n)| n.url()),
        );
        urls.join(",")
    }

    /// The server name of node `i` (`n1`, `n2`, …).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// A client that knows every node.
    pub async fn client(&self) -> async_nats::Client {
        NatsArgs::for_url(&self.urls())
            .connect("e2e", FirstConnect::RetryInBackground)
            .await
            .expect("connect to the test's NATS")
    }

    /// The index of the node leading `stream` and its replica count, as
    /// the cluster reports it; `None` while it has no leader.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<(usize, usize)> {
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let replicas = info.config.num_replicas;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        Some((self.index_of(leader)?, replicas))
    }

    /// The process id of node `i` (0 when it is not running).
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i]
            .child
            .as_ref()
            .map_or(0, std::process::Child::id)
    }

    /// SIGKILL node `i` (its store stays for a restart).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port and store; waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        let node = &self.nodes[i];
        let what = format!("nats-server {} answers again", node.name);
        eventually(Duration::from_secs(20), &what, || async {
            node.answers().then_some(())
        })
        .await;
    }

    /// Waits until JetStream answers account requests through every node.
    async fn wait_jetstream(&self) {
        for node in &self.nodes {
            eventually(
                Duration::from_secs(20),
                &format!("nats-server {} answers", node.name),
                || async { node.answers().then_some(()) },
            )
            .await;
        }
        let client = self.client().await;
        // The account info request answers without an error once JetStream
        // (and in a cluster its meta leader) is up.
        eventually(
            Duration::from_secs(30),
            "JetStream is available",
            || async {
                let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
                let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                info.get("error").is_none().then_some(())
            },
        )
        .await;
    }

    /// The last lines of every node's log (for failure messages).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.name, tail(&n.log, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
