//! A database that stops answering without closing its connections (a
//! frozen server, a silent network): pooled queries fail within the
//! statement timeout plus [`storage::SILENCE_MARGIN`] instead of waiting,
//! and the pool works again once the server answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use storage::testing::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to the database that, while `frozen`, holds every byte in
/// both directions (the connections stay open, as with a stopped server).
struct FreezableProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A read done just before the freeze is held until it ends.
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl FreezableProxy {
    async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, f.clone()));
                tokio::spawn(pump(sr, cw, f.clone()));
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_frozen_database_fails_pooled_queries_within_the_deadline() {
    let db = TestDb::new().await.unwrap();
    let url = url::Url::parse(&db.url).unwrap();
    let proxy = FreezableProxy::start((
        url.host_str().unwrap().to_owned(),
        url.port().unwrap_or(5432),
    ))
    .await;
    let mut via_proxy = url.clone();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.port)).unwrap();
    let limit = Duration::from_secs(1);
    let pool = storage::build_pool(
        via_proxy.as_str(),
        &storage::PoolConfig {
            max_size: 2,
            wait_timeout: Duration::from_secs(1),
            create_timeout: Duration::from_secs(1),
            recycle_timeout: Duration::from_secs(1),
            // The REST API's setting: a checked-out connection is not pinged.
            fast_recycle: true,
            statement_timeout: Some(limit),
        },
    )
    .unwrap();
    storage::ping(&pool).await.unwrap();

    proxy.freeze(true);
    let started = Instant::now();
    // Without the deadline this waits for as long as the freeze lasts.
    let outcome = tokio::time::timeout(Duration::from_secs(30), storage::ping(&pool)).await;
    let took = started.elapsed();
    let err = outcome
        .expect("a query on a frozen database must not wait for the freeze to end")
        .unwrap_err();
    assert!(err.is_unavailable(), "a 503, not a 500: {err}");
    let bound = limit + storage::SILENCE_MARGIN + Duration::from_secs(1);
    assert!(took <= bound, "failed after {took:?}, more than {bound:?}");

    proxy.freeze(false);
    // The broken connection was dropped: the next query opens a new one.
    storage::ping(&pool).await.unwrap();
}

#[tokio::test]
async fn a_slow_statement_is_cancelled_by_the_server_and_the_connection_kept() {
    let db = TestDb::new().await.unwrap();
    let pool = storage::build_pool(
        &db.url,
        &storage::PoolConfig {
            max_size: 1,
            statement_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut conn = pool.get().await.unwrap();
    use diesel_async::RunQueryDsl;
    let err = diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    // The same connection answers the next query.
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .unwrap();
}
