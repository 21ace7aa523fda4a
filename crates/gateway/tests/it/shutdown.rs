//! SIGTERM with 10,000 clients: every one gets `1001 Server shutting down`
//! and the process exits within `GATEWAY_SHUTDOWN_GRACE`. The gateway runs
//! as its own process (the compiled binary), so the clients' and the
//! server's sockets do not share one file-descriptor limit.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::helpers::{Backing, nats_url};
use crate::raw::{OP_CLOSE, RawWs, Read};
use test_support::free_port;

const CLIENTS: usize = 10_000;
const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_10000_clients_within_the_grace() {
    let b = Backing::new().await;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("DATABASE_URL", &b.db.url)
        .env("NATS_URL", nats_url())
        .env("NATS_PREFIX", b.ns.prefix())
        .env("GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("GATEWAY_SHUTDOWN_GRACE", "5s")
        .env("GATEWAY_WORKERS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let connected = Arc::new(AtomicUsize::new(0));
    let closed_1001 = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (connected, closed, permits, token) = (
            connected.clone(),
            closed_1001.clone(),
            permits.clone(),
            b.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ws = {
                let _p = permits.acquire().await.unwrap();
                RawWs::connect_ok(addr, &token).await
            };
            connected.fetch_add(1, Ordering::SeqCst);
            loop {
                match ws.read_within(Duration::from_secs(120)).await {
                    Read::Frame(f) if f.opcode == OP_CLOSE => {
                        if f.close() == (1001, "Server shutting down".to_owned()) {
                            closed.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                    Read::Frame(_) => continue,
                    _ => return,
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} clients connected",
            connected.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = child.id().expect("pid");
    let start = tokio::time::Instant::now();
    test_support::terminate(pid).expect("SIGTERM");
    let exit = tokio::time::timeout(GRACE + Duration::from_secs(10), child.wait())
        .await
        .expect("the gateway did not exit")
        .expect("wait");
    let took = start.elapsed();
    assert!(exit.success(), "{exit:?}");
    for t in tasks {
        t.await.unwrap();
    }
    let closed = closed_1001.load(Ordering::SeqCst);
    eprintln!("{CLIENTS} clients: SIGTERM → exit in {took:?}, {closed} got 1001");
    assert_eq!(closed, CLIENTS);
    assert!(
        took < GRACE + Duration::from_secs(3),
        "SIGTERM → exit took {took:?}"
    );
    b.cleanup().await;
}

/// SIGTERM while NATS is unreachable (nothing listens on port 1): the
/// gateway does not wait for JetStream requests or a drain that cannot
/// complete.
#[tokio::test]
async fn sigterm_stops_the_gateway_within_seconds_while_nats_is_unreachable() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("DATABASE_URL", storage::testing::server_url().unwrap())
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("GATEWAY_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gateway");
    // Long enough to be inside the reconnect and stream-creation loops.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let pid = child.id().expect("pid");
    test_support::terminate(pid).expect("SIGTERM");
    let sent = std::time::Instant::now();
    let exited = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
    let status = exited
        .unwrap_or_else(|_| panic!("still running {:?} after SIGTERM", sent.elapsed()))
        .expect("wait");
    assert!(status.success(), "{status}");
}

/// An idle keep-alive HTTP connection (a scraper between two `/metrics`
/// reads) is closed as shutdown starts, instead of holding the stop until
/// its keep-alive timer (5 s) runs out.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_http_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backing::new().await;
    let app = crate::helpers::TestApp::spawn(b.config()).await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = std::time::Instant::now();
    app.shutdown.cancel();
    // the connection is kept alive until shutdown: then EOF, well before
    // the 5 s keep-alive
    let eof = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "{eof:?}");
    let stopped = tokio::time::timeout(Duration::from_secs(3), app.handle).await;
    assert!(
        stopped.is_ok(),
        "still running {:?} after shutdown",
        started.elapsed()
    );
    b.cleanup().await;
}
