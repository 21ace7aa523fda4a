//! The compiled binary: SIGTERM while NATS is unreachable, and credentials
//! kept out of the logs at every level.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storage::testing::TestDb;
use telemetry::testing::drain;

/// Nothing listens on port 1: every connection attempt fails at once.
const NATS_DOWN: &str = "127.0.0.1:1";

/// A running binary whose stdout and stderr are read on threads (a full
/// pipe would block its logging).
struct Running {
    child: Child,
    readers: Vec<std::thread::JoinHandle<String>>,
}

/// Starts the worker with `RUST_LOG=debug`, stdout and stderr captured.
fn start(database_url: &str, nats_url: &str) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_delivery-worker"))
        .env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .env("DATABASE_URL", database_url)
        .env("NATS_URL", nats_url)
        .env("WORKER_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start delivery-worker");
    let readers = vec![drain(child.stdout.take()), drain(child.stderr.take())];
    Running { child, readers }
}

/// SIGTERM, then the time until the process ended (None past `limit`, the
/// process is then killed) and everything it wrote.
async fn terminate(running: Running, limit: Duration) -> (Option<Duration>, i32, String) {
    let Running { mut child, readers } = running;
    test_support::terminate(child.id()).expect("SIGTERM");
    let sent = Instant::now();
    let exited = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some((sent.elapsed(), s.code().unwrap_or(-1)));
        }
        if sent.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    match exited {
        Some((took, code)) => (Some(took), code, out),
        None => (None, -1, out),
    }
}

#[tokio::test]
async fn sigterm_stops_the_worker_within_seconds_while_nats_is_unreachable() {
    let db = TestDb::new().await.unwrap();
    let child = start(&db.url, &format!("nats://{NATS_DOWN}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (took, code, out) = terminate(child, Duration::from_secs(10)).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "still running 10 s after SIGTERM; last lines:\n{}",
            tail(&out)
        )
    });
    eprintln!("delivery-worker exited {took:?} after SIGTERM");
    assert_eq!(code, 0, "graceful exit; last lines:\n{}", tail(&out));
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}; last lines:\n{}",
        tail(&out)
    );
}

#[tokio::test]
async fn credentials_never_reach_the_logs_even_at_debug_level() {
    let db = TestDb::new().await.unwrap();
    // The test role's password, or one written in for a server that trusts
    // the test user (never checked, but part of the configuration the
    // worker logs about).
    let (db_url, db_password) = db.url_with_password("DbPassw0rdXyz");
    for (nats_url, secrets) in [
        (
            format!("nats://natsuser:NatsPassw0rdXyz@{NATS_DOWN}"),
            vec!["NatsPassw0rdXyz", db_password.as_str()],
        ),
        (
            format!("nats://NatsT0kenXyzAbc@{NATS_DOWN}"),
            vec!["NatsT0kenXyzAbc", db_password.as_str()],
        ),
    ] {
        let child = start(&db_url, &nats_url);
        // Long enough for several reconnect attempts and database queries.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, _, out) = terminate(child, Duration::from_secs(20)).await;
        assert!(
            out.contains("DEBUG"),
            "debug lines are written: {}",
            tail(&out)
        );
        for secret in secrets {
            let leaks: Vec<&str> = out.lines().filter(|l| l.contains(secret)).collect();
            assert!(
                leaks.is_empty(),
                "{secret} appears in {} log lines, e.g. {}",
                leaks.len(),
                leaks[0]
            );
        }
    }
}

fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[test]
fn help_lists_every_nats_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_delivery-worker"))
        .env_clear()
        .env("SECRETS_KEY_FILE", storage::testing::key_file())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "NATS_URL",
        "NATS_PREFIX",
        "NATS_CREDS",
        "NATS_NKEY",
        "NATS_TLS_CA",
        "NATS_TLS_CERT",
        "NATS_TLS_KEY",
        "EVENTS_REPLICAS",
        "EVENTS_MAX_AGE",
        "EVENTS_MAX_BYTES",
    ] {
        assert!(
            help.contains(&format!("env: {var}")),
            "--help lacks {var}:\n{help}"
        );
    }
    for default in ["[default: 7d]", "[default: unlimited]", "[default: 1]"] {
        assert!(help.contains(default), "--help lacks {default}");
    }
}

#[tokio::test]
async fn a_server_list_with_a_dead_first_entry_connects_through_the_next() {
    let db = TestDb::new().await.unwrap();
    let live = test_support::nats_url();
    let child = start(&db.url, &format!("nats://{NATS_DOWN},{live}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, code, out) = terminate(child, Duration::from_secs(20)).await;
    assert_eq!(code, 0, "graceful exit; last lines:\n{}", tail(&out));
    assert!(
        out.contains("connected to NATS"),
        "no connection; last lines:\n{}",
        tail(&out)
    );
}

#[test]
fn without_a_key_file_the_worker_refuses_to_start_and_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_delivery-worker"))
        .env_clear()
        .env("DATABASE_URL", "postgres://x@127.0.0.1:1/none")
        .env("WORKER_BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without a key file");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("SECRETS_KEY_FILE is not set"), "{said}");
}
