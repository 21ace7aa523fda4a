//! Measures what token authentication costs per request on the hot path:
//! `TokenAuth::authenticate` for a token already in its 3 s cache (hash,
//! cache lookup, usage bookkeeping), and for comparison the first, uncached
//! call (one indexed query). Uses a fresh test database.
//!
//! `cargo run --release -p webhook-registry --example auth_overhead`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use storage::testing::TestDb;
use storage::tokens::{AuthCacheConfig, TokenAuth, TokenHasher, TokenSpec};

#[tokio::main]
async fn main() {
    let db = TestDb::new().await.expect("test database");
    let pool = db.pool().unwrap();
    for (label, key) in [("sha256", None), ("hmac-sha256", Some("bench-key"))] {
        let hasher = TokenHasher::new(key);
        let token = {
            let mut conn = pool.get().await.unwrap();
            storage::tokens::create_token(
                &mut conn,
                &hasher,
                TokenSpec {
                    name: format!("bench-{label}"),
                    ..TokenSpec::default()
                },
            )
            .await
            .unwrap()
            .1
        };
        let auth = TokenAuth::new(pool.clone(), hasher, AuthCacheConfig::default());
        let t = Instant::now();
        assert!(
            auth.authenticate(&token, Some("127.0.0.1"))
                .await
                .unwrap()
                .is_some()
        );
        let miss = t.elapsed();

        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            let p = auth.authenticate(&token, Some("127.0.0.1")).await.unwrap();
            std::hint::black_box(p);
        }
        let per_hit = t.elapsed() / n;
        println!(
            "{label:<12} cache hit: {:>7.2} µs/request   first (uncached) call: {:>7.2} ms",
            per_hit.as_secs_f64() * 1e6,
            miss.as_secs_f64() * 1e3
        );
    }
}
