//! Test plumbing shared by the crates' integration tests, the e2e harness
//! and the `bench` crate:
//!
//! - [`Receiver`]: a local HTTP/1.1 webhook receiver (scripted replies,
//!   delays, hanging requests, a record of every request as it came off
//!   the wire), lean enough to take a benchmark's load;
//! - [`nats_url`]: the NATS server the tests use (`TEST_NATS_URL`);
//! - [`terminate`]: SIGTERM to a child process without running `kill`;
//! - [`free_port`]: a loopback port for a server a test starts;
//! - [`eventually`]: poll a condition until it holds or time runs out;
//! - [`tinyproxy`]: a real HTTP proxy (Debian's tinyproxy) on loopback.

mod receiver;
pub mod tinyproxy;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use receiver::{Received, Receiver, Reply, Request};

/// The NATS server of the tests when `TEST_NATS_URL` is not set.
pub const DEFAULT_TEST_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The NATS URL tests connect to: `TEST_NATS_URL`, beside the
/// `TEST_DATABASE_URL` of `storage::testing`; default the local server.
/// (A service started by a test still gets it as its own `NATS_URL`.)
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_NATS_URL.to_owned())
}

/// A loopback port nothing listens on now, never handed out before in
/// this process. Tests of one binary run in parallel and each may start
/// servers on ports of its own; the kernel can give a port that was just
/// released to the next `bind(0)`, and two tests handed the same port had
/// one's requests answered by the other's server.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"));
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// Sends SIGTERM to the process `pid` (a child the caller started), with a
/// system call rather than the `kill` program.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no such pid"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

/// Polls `check` every 50 ms until it gives `Some`; panics naming `what`
/// after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(within, Duration::from_millis(50), what, check).await
}

/// [`eventually`] with another polling interval.
pub async fn eventually_every<T, F, Fut>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nats_url_defaults_to_the_local_server() {
        // Only the default is checked: tests run in parallel and the
        // environment is shared.
        if std::env::var_os("TEST_NATS_URL").is_none() {
            assert_eq!(nats_url(), DEFAULT_TEST_NATS_URL);
        }
    }

    #[tokio::test]
    async fn terminate_stops_a_child() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sleep");
        terminate(child.id().expect("pid")).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("exited")
            .expect("status");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15), "{status:?}");
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..2000).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        // and nothing listens on them
        assert!(
            ports[..20]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        );
    }

    #[test]
    fn terminate_refuses_pid_zero() {
        assert!(terminate(0).is_err());
    }

    #[tokio::test]
    async fn eventually_returns_the_value_or_panics_with_what() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(2), "three polls", || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(v, 3);
        let r = tokio::spawn(eventually(Duration::from_millis(100), "never", || async {
            None::<()>
        }))
        .await;
        let panic = r.expect_err("panicked").into_panic();
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("never"), "{text}");
    }
}
