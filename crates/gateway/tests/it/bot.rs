//! Tokens copied from the bot (`webhook-registry import-bot`, the
//! registry's token sync) open `/ws` when the gateway hashes the bot's way:
//! sha512 + HMAC here, and the legacy plain digest the bot still accepts.

use storage::testing::TestDb;
use storage::tokens::{HashAlgorithm, TokenHasher};

use crate::helpers::{Backing, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_sha512_hmac_tokens_open_the_websocket() {
    let b = Backing::new().await;
    let bot = TestDb::bot().await.unwrap();
    let key = "bot-hmac-ключ";
    let h = TokenHasher::with_algorithm(HashAlgorithm::Sha512, Some(key));
    let keyed = "bot-keyed-token-abcdefghijklmnopqrstuvwxyz";
    let legacy = "bot-legacy-token-abcdefghijklmnopqrstuvwxy";
    let revoked = "bot-revoked-token-abcdefghijklmnopqrstuvwx";
    bot.add_bot_token("keyed", &h.hash(keyed), true)
        .await
        .unwrap();
    bot.add_bot_token("legacy", &h.plain_hash(legacy), true)
        .await
        .unwrap();
    bot.add_bot_token("revoked", &h.hash(revoked), false)
        .await
        .unwrap();

    // What `import-bot` does, through the same storage functions.
    let bot_pool = bot.pool().unwrap();
    let data = storage::bot::read(&mut bot_pool.get().await.unwrap(), None)
        .await
        .unwrap();
    let ours = b.db.pool().unwrap();
    let report = storage::bot::import(
        &mut ours.get().await.unwrap(),
        &storage::secrets::Keyring::for_tests(),
        &data,
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.tokens.tally.created, 3);

    let mut config = b.config();
    config.token_hash_algorithm = HashAlgorithm::Sha512;
    config.token_hmac_secret = key.into();
    let app = TestApp::spawn(config).await;
    let ws = app.connect_ok(keyed).await;
    drop(ws);
    let ws = app.connect_ok(legacy).await;
    drop(ws);
    let mut ws = app.connect(&format!("?token={revoked}")).await;
    assert_eq!(ws.expect_close().await.0, 1008);
    // The backing's own token was hashed with plain SHA-256: not accepted
    // under sha512.
    let mut ws = app.connect(&format!("?token={}", b.token)).await;
    assert_eq!(ws.expect_close().await.0, 1008);
    app.stop().await;
    b.cleanup().await;
}
