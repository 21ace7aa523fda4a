//! Keeping the bot's API tokens usable here (docs/architecture.md, "Token
//! sync"): every `BOT_TOKEN_SYNC_INTERVAL` the bot's `web_api_tokens` is
//! read (read only) and ours brought in line by `bot_token_id`, so a token
//! the bot issues, rehashes or revokes after the switch works (or stops
//! working) within a few seconds, in every service that reads ours.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storage::{DbPool, PoolConfig, StorageError};
use tokio_util::sync::CancellationToken;

/// Syncs every `every` until `stop`, once `ready` says our schema is in
/// place. A bot database that is down (or a sync that fails) is logged as
/// a warning and tried again at the next tick; it never makes the registry
/// unready.
pub async fn run(
    ours: DbPool,
    bot_url: String,
    every: Duration,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let shown = proto_events::redact_url(&bot_url);
    let bot = match storage::build_pool(
        &bot_url,
        &PoolConfig {
            max_size: 1,
            ..PoolConfig::default()
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, bot_database = %shown, "BOT_DATABASE_URL is unusable; bot tokens are not synced");
            return;
        }
    };
    tracing::info!(bot_database = %shown, every = ?every, "syncing the bot's API tokens");
    let mut failing = false;
    let mut conflicts: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if !ready.load(Ordering::Acquire) {
            continue;
        }
        // A query to a database that stopped answering ends only with its
        // timeout: shutdown does not wait for it.
        let result = tokio::select! {
            r = sync_once(&ours, &bot) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(report) => {
                if failing {
                    tracing::info!(bot_database = %shown, "bot token sync works again");
                    failing = false;
                }
                if report.changed() {
                    tracing::info!(
                        created = report.tally.created,
                        updated = report.tally.updated,
                        adopted = report.adopted,
                        deactivated = report.deactivated,
                        "bot tokens synced"
                    );
                }
                // Warned when they change, not at every tick.
                if report.conflicts != conflicts {
                    for c in &report.conflicts {
                        tracing::warn!(conflict = %c, "bot token not synced");
                    }
                    conflicts = report.conflicts;
                }
            }
            Err(e) => {
                // Warn once per outage, not every tick.
                if !failing {
                    tracing::warn!(error = %e, bot_database = %shown,
                        "cannot sync the bot's API tokens; retrying every tick");
                    failing = true;
                } else {
                    tracing::debug!(error = %e, "bot token sync still failing");
                }
            }
        }
    }
}

/// Reads the bot's tokens and syncs ours in one transaction.
pub async fn sync_once(
    ours: &DbPool,
    bot: &DbPool,
) -> Result<storage::bot::TokenReport, StorageError> {
    let tokens = {
        let mut conn = bot.get().await?;
        storage::bot::read_tokens(&mut conn).await?
    };
    let mut conn = ours.get().await?;
    storage::bot::sync_tokens_atomically(&mut conn, &tokens).await
}
