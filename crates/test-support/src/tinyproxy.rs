//! A real HTTP proxy for tests: Debian's `tinyproxy` on loopback, in the
//! foreground with a config and log file of its own (CI installs it,
//! deploy/lib.sh `ensure_test_tools`; without it a test fails, saying so).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running tinyproxy; stopped and its files removed on drop.
pub struct TinyProxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TinyProxy {
    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts tinyproxy on a free loopback port with `extra` config lines.
    pub fn start(extra: &str) -> TinyProxy {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bedolaga-tinyproxy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = crate::free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 10\nMaxClients 16\nAllow 127.0.0.1\n\
                 LogLevel Info\nLogFile \"{}\"\n{extra}\n",
                log.display()
            ),
        )
        .unwrap();
        let child = match Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "tinyproxy is required for the proxy tests and could not be started ({e}); \
                 install it with `apt-get install -y tinyproxy` (deploy/lib.sh ensure_test_tools)"
            ),
        };
        let mut proxy = TinyProxy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("tinyproxy exited at start ({status}): {}", proxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen: {}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The readiness probe is usually logged as a connection: wait a
        // little for that line, so later counts of connections start from
        // a settled log (a busy tinyproxy may drop the closed probe
        // without a line, which is fine too).
        let settle = Instant::now() + Duration::from_secs(3);
        while proxy.connections() == 0 && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }

    /// The request lines tinyproxy logged (one per proxied request or CONNECT).
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor ").map(|(_, r)| r))
            .filter_map(|r| r.split_once("): ").map(|(_, line)| line.to_owned()))
            .collect()
    }

    /// Client connections tinyproxy logged (its readiness probe included).
    pub fn connections(&self) -> usize {
        self.log().matches("]: Connect (file descriptor ").count()
    }
}
