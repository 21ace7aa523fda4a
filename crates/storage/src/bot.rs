//! Adopting the bot's data (docs/architecture.md, "Moving over from the
//! bot"): reading its `web_api_tokens`, `webhooks` and `webhook_deliveries`
//! (DDL in the bot's models), copying them into ours
//! (`webhook-registry import-bot`), and keeping tokens in step afterwards
//! (the registry's token sync, [`sync_tokens`]).
//!
//! Every function that reads takes a connection to the bot's database;
//! every function that writes takes one to ours. Nothing here writes to the
//! bot's database: it is read in one read-only snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use proto_events::Pattern;

use crate::StorageError;
use crate::counts::{self, CountDeltas};
use crate::models::{ApiToken, BodyFormat, DeliveryStatus, Webhook};
use crate::schema::{web_api_tokens as t, webhook_deliveries, webhooks as w};
use crate::secrets::Keyring;
use crate::subscription::purpose;

/// Held (per transaction) while tokens are synced, so that registry
/// replicas that all sync take turns instead of racing on inserts.
const TOKEN_SYNC_LOCK: i64 = 7_263_540_003;

/// Rows of delivery history inserted per statement (15 columns each, far
/// under Postgres' 65,535 parameters).
const DELIVERY_BATCH: usize = 2_000;

/// Marks an imported delivery row: `bot:<the bot's delivery id>`.
pub const EVENT_ID_PREFIX: &str = "bot:";

/// The time a row without one gets, so a second run computes the same row.
fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// A row of the bot's `web_api_tokens`. No `Debug`: it holds a hash.
#[derive(Clone, QueryableByName)]
pub struct BotToken {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub token_hash: String,
    #[diesel(sql_type = Text)]
    pub token_prefix: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub description: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_used_ip: Option<String>,
    #[diesel(sql_type = Bool)]
    pub is_active: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub created_by: Option<String>,
}

/// A row of the bot's `webhooks`. No `Debug`: it holds the secret.
#[derive(Clone, QueryableByName)]
pub struct BotWebhook {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub secret: Option<String>,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Bool)]
    pub is_active: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub description: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_triggered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub failure_count: i64,
    #[diesel(sql_type = BigInt)]
    pub success_count: i64,
}

/// A row of the bot's `webhook_deliveries` (those with a `created_at`).
#[derive(Debug, Clone, QueryableByName)]
pub struct BotDelivery {
    #[diesel(sql_type = Int4)]
    pub id: i32,
    #[diesel(sql_type = Int4)]
    pub webhook_id: i32,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// The `json` column as stored (text).
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Nullable<Int4>)]
    pub response_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub response_body: Option<String>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error_message: Option<String>,
    #[diesel(sql_type = Int4)]
    pub attempt_number: i32,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Every token of the bot, by id.
pub async fn read_tokens(bot: &mut AsyncPgConnection) -> Result<Vec<BotToken>, StorageError> {
    Ok(diesel::sql_query(
        "SELECT id, name::text, token_hash::text, token_prefix::text, description, \
           created_at::timestamptz, updated_at::timestamptz, expires_at::timestamptz, \
           last_used_at::timestamptz, last_used_ip::text, is_active, created_by::text \
         FROM web_api_tokens ORDER BY id",
    )
    .load(bot)
    .await?)
}

/// Every webhook of the bot, by id.
pub async fn read_webhooks(bot: &mut AsyncPgConnection) -> Result<Vec<BotWebhook>, StorageError> {
    Ok(diesel::sql_query(
        "SELECT id, name::text, url, secret::text, event_type::text, is_active, description, \
           created_at::timestamptz, updated_at::timestamptz, last_triggered_at::timestamptz, \
           failure_count::int8, success_count::int8 \
         FROM webhooks ORDER BY id",
    )
    .load(bot)
    .await?)
}

/// The bot's delivery rows created at or after `since`, oldest first.
pub async fn read_deliveries(
    bot: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<BotDelivery>, StorageError> {
    Ok(diesel::sql_query(
        "SELECT id, webhook_id, event_type::text, payload::text, response_status, \
           response_body, status::text, error_message, attempt_number, \
           created_at::timestamptz AS created_at, delivered_at::timestamptz \
         FROM webhook_deliveries WHERE created_at >= $1 ORDER BY created_at, id",
    )
    .bind::<Timestamptz, _>(since)
    .load(bot)
    .await?)
}

/// What is read from the bot for one import.
pub struct BotData {
    pub tokens: Vec<BotToken>,
    pub webhooks: Vec<BotWebhook>,
    /// `None` without `--history`.
    pub deliveries: Option<Vec<BotDelivery>>,
}

/// Reads the bot's tables in one read-only, repeatable-read snapshot;
/// deliveries only when `history_since` is given.
pub async fn read(
    bot: &mut AsyncPgConnection,
    history_since: Option<DateTime<Utc>>,
) -> Result<BotData, StorageError> {
    bot.build_transaction()
        .read_only()
        .repeatable_read()
        .run(async |c| {
            let tokens = read_tokens(c).await?;
            let webhooks = read_webhooks(c).await?;
            let deliveries = match history_since {
                Some(since) => Some(read_deliveries(c, since).await?),
                None => None,
            };
            Ok::<_, StorageError>(BotData {
                tokens,
                webhooks,
                deliveries,
            })
        })
        .await
}

/// Rows of one table by what happened to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped: u64,
}

/// What a token import or sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReport {
    pub tally: Tally,
    /// Of `updated`: tokens of ours (e.g. `WEB_API_DEFAULT_TOKEN`) that
    /// had the hash of a bot token and now carry its id.
    pub adopted: u64,
    /// Tokens copied from the bot that are no longer in its table and were
    /// switched off here.
    pub deactivated: u64,
    /// Bot tokens not copied, and why (names and ids only).
    pub conflicts: Vec<String>,
}

impl TokenReport {
    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.tally.created + self.tally.updated + self.deactivated > 0
    }
}

/// A webhook imported switched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub id: i32,
    pub name: String,
    pub event_type: String,
}

/// A bot webhook whose id is another webhook's here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: i32,
    pub bot_name: String,
    pub our_name: String,
}

/// What the webhook import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookReport {
    pub tally: Tally,
    /// Imported with `is_active = false`: their event type is not a
    /// pattern of the catalogue.
    pub disabled: Vec<Disabled>,
    pub conflicts: Vec<Conflict>,
    /// The value the `webhooks` id sequence was moved to (in a dry run:
    /// would be moved to), when it had to move.
    pub sequence_moved_to: Option<i64>,
}

/// What the history import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// `unchanged`: imported by an earlier run; `skipped`: of a webhook not
    /// imported, or with a status the bot does not write.
    pub tally: Tally,
    /// Of `created`: rows `pending` in the bot, stored as `failed`.
    pub pending_as_failed: u64,
    /// Partitions created for the days of the history.
    pub partitions_created: i64,
}

/// What one import did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub dry_run: bool,
    pub tokens: TokenReport,
    pub webhooks: WebhookReport,
    /// `None` when no history was asked for.
    pub deliveries: Option<DeliveryReport>,
}

/// Copies `data` into our tables in one transaction; with `dry_run` the
/// transaction is rolled back (and the id sequence left alone), and the
/// report says what would have been done.
pub async fn import(
    ours: &mut AsyncPgConnection,
    keys: &Keyring,
    data: &BotData,
    dry_run: bool,
) -> Result<ImportReport, StorageError> {
    enum Stop {
        DryRun(Box<ImportReport>),
        Failed(StorageError),
    }
    impl From<diesel::result::Error> for Stop {
        fn from(e: diesel::result::Error) -> Self {
            Stop::Failed(e.into())
        }
    }
    impl From<StorageError> for Stop {
        fn from(e: StorageError) -> Self {
            Stop::Failed(e)
        }
    }
    let result = ours
        .transaction::<_, Stop, _>(async |c| {
            let tokens = sync_tokens(c, &data.tokens).await?;
            let webhooks = import_webhooks(c, keys, &data.webhooks, dry_run).await?;
            let deliveries = match &data.deliveries {
                Some(rows) => {
                    let imported: HashSet<i32> = data
                        .webhooks
                        .iter()
                        .map(|w| w.id)
                        .filter(|id| !webhooks.conflicts.iter().any(|c| c.id == *id))
                        .collect();
                    Some(import_deliveries(c, rows, &imported).await?)
                }
                None => None,
            };
            let report = ImportReport {
                dry_run,
                tokens,
                webhooks,
                deliveries,
            };
            if dry_run {
                Err(Stop::DryRun(Box::new(report)))
            } else {
                Ok(report)
            }
        })
        .await;
    match result {
        Ok(report) => Ok(report),
        Err(Stop::DryRun(report)) => Ok(*report),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// The token of ours a bot token should become: inserted as it is, or
/// written over our row (NULLs included).
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
struct TokenRow<'a> {
    bot_token_id: i32,
    name: &'a str,
    token_hash: &'a str,
    token_prefix: &'a str,
    description: Option<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    last_used_ip: Option<&'a str>,
    is_active: bool,
    created_by: Option<&'a str>,
}

impl<'a> TokenRow<'a> {
    /// `b` as a row of ours; `current` is our row it updates, whose usage
    /// (recorded here since the switch) is kept when it is newer.
    fn new(b: &'a BotToken, current: Option<&'a ApiToken>) -> Self {
        let created_at = b.created_at.or(b.updated_at).unwrap_or_else(epoch);
        let (last_used_at, last_used_ip) = match current {
            Some(o) if o.last_used_at.is_some() && o.last_used_at >= b.last_used_at => {
                (o.last_used_at, o.last_used_ip.as_deref())
            }
            _ => (b.last_used_at, b.last_used_ip.as_deref()),
        };
        Self {
            bot_token_id: b.id,
            name: &b.name,
            token_hash: &b.token_hash,
            token_prefix: &b.token_prefix,
            description: b.description.as_deref(),
            created_at,
            updated_at: b.updated_at.unwrap_or(created_at),
            expires_at: b.expires_at,
            last_used_at,
            last_used_ip,
            is_active: b.is_active,
            created_by: b.created_by.as_deref(),
        }
    }
}

/// [`sync_tokens`] in a transaction of its own.
pub async fn sync_tokens_atomically(
    ours: &mut AsyncPgConnection,
    bot: &[BotToken],
) -> Result<TokenReport, StorageError> {
    use diesel_async::AsyncConnection;
    ours.transaction::<_, StorageError, _>(async |c| sync_tokens(c, bot).await)
        .await
}

/// Brings our copies of the bot's tokens in line with `bot` (its whole
/// table), matching by `bot_token_id`: new tokens are inserted, changed
/// ones (the bot rehashes, renames, revokes, …) updated, and tokens gone
/// from the bot's table switched off. A token of ours with the hash of a
/// bot token and no `bot_token_id` (our `WEB_API_DEFAULT_TOKEN`) is
/// adopted instead of duplicated. Only rows that differ are written.
/// `last_used_at`/`last_used_ip` keep whichever use is later.
///
/// Run it in a transaction: it takes a transaction-level advisory lock so
/// that replicas syncing at once take turns.
pub async fn sync_tokens(
    ours: &mut AsyncPgConnection,
    bot: &[BotToken],
) -> Result<TokenReport, StorageError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(TOKEN_SYNC_LOCK)
        .execute(ours)
        .await?;
    let existing: Vec<ApiToken> = t::table.select(ApiToken::as_select()).load(ours).await?;
    let by_bot_id: HashMap<i32, &ApiToken> = existing
        .iter()
        .filter_map(|r| r.bot_token_id.map(|id| (id, r)))
        .collect();
    let by_hash: HashMap<&str, &ApiToken> = existing
        .iter()
        .map(|r| (r.token_hash.as_str(), r))
        .collect();
    let mut report = TokenReport::default();
    for b in bot {
        let holder = by_hash.get(b.token_hash.as_str()).copied();
        let target = by_bot_id
            .get(&b.id)
            .copied()
            .or(holder.filter(|h| h.bot_token_id.is_none()));
        if let Some(h) = holder
            && target.is_none_or(|t| t.id != h.id)
        {
            report.tally.skipped += 1;
            report.conflicts.push(format!(
                "bot token {} ({:?}): its hash is already token {} ({:?}) here",
                b.id, b.name, h.id, h.name
            ));
            continue;
        }
        match target {
            None => {
                insert_token(ours, &TokenRow::new(b, None)).await?;
                report.tally.created += 1;
            }
            Some(current) => {
                let adopting = current.bot_token_id.is_none();
                if update_token(ours, current.id, &TokenRow::new(b, Some(current))).await? {
                    report.tally.updated += 1;
                    report.adopted += u64::from(adopting);
                } else {
                    report.tally.unchanged += 1;
                }
            }
        }
    }
    let live: Vec<i32> = bot.iter().map(|b| b.id).collect();
    let gone = diesel::update(
        t::table
            .filter(t::bot_token_id.is_not_null())
            .filter(diesel::dsl::not(t::bot_token_id.eq_any(&live)))
            .filter(t::is_active.eq(true)),
    )
    .set((t::is_active.eq(false), t::updated_at.eq(diesel::dsl::now)))
    .execute(ours)
    .await?;
    report.deactivated = u64::try_from(gone).unwrap_or_default();
    Ok(report)
}

async fn insert_token(ours: &mut AsyncPgConnection, r: &TokenRow<'_>) -> Result<(), StorageError> {
    diesel::insert_into(t::table)
        .values(r)
        .execute(ours)
        .await?;
    Ok(())
}

/// Writes `r` over token `id` when any column differs; true when it did.
async fn update_token(
    ours: &mut AsyncPgConnection,
    id: i32,
    r: &TokenRow<'_>,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        t::table.find(id).filter(
            t::bot_token_id
                .is_distinct_from(Some(r.bot_token_id))
                .or(t::name.is_distinct_from(r.name))
                .or(t::token_hash.is_distinct_from(r.token_hash))
                .or(t::token_prefix.is_distinct_from(r.token_prefix))
                .or(t::description.is_distinct_from(r.description))
                .or(t::created_at.is_distinct_from(r.created_at))
                .or(t::updated_at.is_distinct_from(r.updated_at))
                .or(t::expires_at.is_distinct_from(r.expires_at))
                .or(t::last_used_at.is_distinct_from(r.last_used_at))
                .or(t::last_used_ip.is_distinct_from(r.last_used_ip))
                .or(t::is_active.is_distinct_from(r.is_active))
                .or(t::created_by.is_distinct_from(r.created_by)),
        ),
    )
    .set(r)
    .execute(ours)
    .await?;
    Ok(n == 1)
}

/// Why an imported webhook is switched off.
pub fn not_in_catalogue_reason(event_type: &str) -> String {
    format!(
        "imported from the bot: its event type {event_type:?} is not in the catalogue \
         (docs/contract.md, \"Event catalogue\"); change it with PATCH and switch it on"
    )
}

/// Copies the bot's webhooks with their ids. A webhook here with the same
/// id and `created_at` is the same one (imported before): it takes the
/// bot's configuration when the bot's `updated_at` is later than ours, and
/// the larger of the two counters and `last_triggered_at`. Any other
/// webhook with that id is a conflict and stays as it is.
async fn import_webhooks(
    ours: &mut AsyncPgConnection,
    keys: &Keyring,
    bot: &[BotWebhook],
    dry_run: bool,
) -> Result<WebhookReport, StorageError> {
    let ids: Vec<i32> = bot.iter().map(|b| b.id).collect();
    let existing: HashMap<i32, Webhook> = w::table
        .filter(w::id.eq_any(&ids))
        .select(Webhook::as_select())
        .load(ours)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut report = WebhookReport::default();
    for b in bot {
        let in_catalogue = Pattern::parse(&b.event_type).is_ok();
        let created_at = b.created_at.or(b.updated_at).unwrap_or_else(epoch);
        let updated_at = b.updated_at.unwrap_or(created_at);
        let disabled_reason = (!in_catalogue).then(|| not_in_catalogue_reason(&b.event_type));
        match existing.get(&b.id) {
            None => {
                let secret = seal_secret(keys, b.secret.as_deref())?;
                diesel::insert_into(w::table)
                    .values((
                        w::id.eq(b.id),
                        w::name.eq(&b.name),
                        w::url.eq(&b.url),
                        w::secret.eq(&secret),
                        w::event_type.eq(&b.event_type),
                        w::is_active.eq(b.is_active && in_catalogue),
                        w::description.eq(&b.description),
                        w::created_at.eq(created_at),
                        w::updated_at.eq(updated_at),
                        w::last_triggered_at.eq(b.last_triggered_at),
                        w::failure_count.eq(b.failure_count),
                        w::success_count.eq(b.success_count),
                        w::disabled_reason.eq(&disabled_reason),
                        w::body_format.eq(BodyFormat::Bot),
                    ))
                    .execute(ours)
                    .await?;
                report.tally.created += 1;
            }
            Some(o) if o.created_at == created_at => {
                let secret = same_or_sealed(keys, o.secret.as_deref(), b.secret.as_deref())?;
                let changed = update_webhook(
                    ours,
                    b,
                    o,
                    secret.as_deref(),
                    updated_at,
                    disabled_reason.as_deref(),
                )
                .await?;
                if changed {
                    report.tally.updated += 1;
                } else {
                    report.tally.unchanged += 1;
                }
            }
            Some(o) => {
                report.tally.skipped += 1;
                report.conflicts.push(Conflict {
                    id: b.id,
                    bot_name: b.name.clone(),
                    our_name: o.name.clone(),
                });
                continue;
            }
        }
        if !in_catalogue {
            report.disabled.push(Disabled {
                id: b.id,
                name: b.name.clone(),
                event_type: b.event_type.clone(),
            });
        }
    }
    report.sequence_moved_to = move_id_sequence(ours, dry_run).await?;
    Ok(report)
}

/// The bot's secret sealed for our `secret` column.
fn seal_secret(keys: &Keyring, secret: Option<&str>) -> Result<Option<String>, StorageError> {
    secret
        .map(|s| keys.seal(purpose::SECRET, s))
        .transpose()
        .map_err(StorageError::from)
}

/// Our stored secret when it is the bot's (sealing is not repeatable, so
/// the sealed texts cannot be compared), else the bot's sealed anew.
fn same_or_sealed(
    keys: &Keyring,
    ours: Option<&str>,
    bot: Option<&str>,
) -> Result<Option<String>, StorageError> {
    let same = match (ours, bot) {
        (None, None) => true,
        (Some(o), Some(b)) => {
            crate::subscription::open(keys, purpose::SECRET, o).is_ok_and(|opened| {
                constant_time_eq::constant_time_eq(opened.as_bytes(), b.as_bytes())
            })
        }
        _ => false,
    };
    if same {
        Ok(ours.map(str::to_owned))
    } else {
        seal_secret(keys, bot)
    }
}

/// Updates an imported webhook from the bot (its secret already sealed as
/// `secret`); true when a column changed.
async fn update_webhook(
    ours: &mut AsyncPgConnection,
    b: &BotWebhook,
    o: &Webhook,
    secret: Option<&str>,
    updated_at: DateTime<Utc>,
    disabled_reason: Option<&str>,
) -> Result<bool, StorageError> {
    let last_triggered_at = o.last_triggered_at.max(b.last_triggered_at);
    let failure_count = o.failure_count.max(b.failure_count);
    let success_count = o.success_count.max(b.success_count);
    // The bot's configuration when it changed there after ours did.
    let take_config = updated_at > o.updated_at;
    let n = if take_config {
        let is_active = b.is_active && disabled_reason.is_none();
        diesel::update(
            w::table.find(o.id).filter(
                w::name
                    .is_distinct_from(&b.name)
                    .or(w::url.is_distinct_from(&b.url))
                    .or(w::secret.is_distinct_from(secret))
                    .or(w::event_type.is_distinct_from(&b.event_type))
                    .or(w::is_active.is_distinct_from(is_active))
                    .or(w::description.is_distinct_from(&b.description))
                    .or(w::updated_at.is_distinct_from(updated_at))
                    .or(w::disabled_reason.is_distinct_from(disabled_reason))
                    .or(w::last_triggered_at.is_distinct_from(last_triggered_at))
                    .or(w::failure_count.is_distinct_from(failure_count))
                    .or(w::success_count.is_distinct_from(success_count)),
            ),
        )
        .set((
            w::name.eq(&b.name),
            w::url.eq(&b.url),
            w::secret.eq(secret),
            w::event_type.eq(&b.event_type),
            w::event_types.eq(None::<Vec<String>>),
            w::is_active.eq(is_active),
            w::description.eq(&b.description),
            w::updated_at.eq(updated_at),
            w::disabled_reason.eq(disabled_reason),
            w::last_triggered_at.eq(last_triggered_at),
            w::failure_count.eq(failure_count),
            w::success_count.eq(success_count),
        ))
        .execute(ours)
        .await?
    } else {
        diesel::update(
            w::table.find(o.id).filter(
                w::last_triggered_at
                    .is_distinct_from(last_triggered_at)
                    .or(w::failure_count.is_distinct_from(failure_count))
                    .or(w::success_count.is_distinct_from(success_count)),
            ),
        )
        .set((
            w::last_triggered_at.eq(last_triggered_at),
            w::failure_count.eq(failure_count),
            w::success_count.eq(success_count),
        ))
        .execute(ours)
        .await?
    };
    Ok(n == 1)
}

/// Moves the `webhooks` id sequence past the largest id, so the next
/// `POST /webhooks` does not collide with an imported id; returns the new
/// value when it had to move. `dry_run` only computes it: a sequence change
/// survives a rollback.
async fn move_id_sequence(
    ours: &mut AsyncPgConnection,
    dry_run: bool,
) -> Result<Option<i64>, StorageError> {
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // $1 is false in a dry run: the CASE then only reports the value.
    let moved: Option<Moved> = diesel::sql_query(
        "SELECT (CASE WHEN $1 THEN setval(s.seq, m.max_id) ELSE m.max_id END)::int8 AS n \
         FROM (SELECT pg_get_serial_sequence('webhooks', 'id')::regclass AS seq) s, \
              (SELECT max(id)::int8 AS max_id FROM webhooks) m \
         WHERE m.max_id IS NOT NULL \
           AND m.max_id >= COALESCE(pg_sequence_last_value(s.seq) + 1, 1)",
    )
    .bind::<Bool, _>(!dry_run)
    .get_result(ours)
    .await
    .optional()?;
    Ok(moved.map(|m| m.n))
}

/// A delivery row as imported: `created_at` is the bot's.
#[derive(Insertable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
struct ImportedDelivery {
    webhook_id: i32,
    event_type: String,
    payload: serde_json::Value,
    response_status: Option<i32>,
    response_body: Option<String>,
    status: DeliveryStatus,
    error_message: Option<String>,
    attempt_number: i32,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    next_retry_at: Option<DateTime<Utc>>,
    event_id: Option<String>,
}

/// What an imported row that was `pending` in the bot says.
pub const PENDING_IN_THE_BOT: &str =
    "pending in the bot when imported; the bot does not retry, so neither is it retried here";

/// Copies delivery rows of the `imported` webhooks that earlier runs did
/// not (their `event_id` is `bot:<id>`), with their counters. No row
/// becomes due work: `next_retry_at` is NULL, and a row `pending` in the
/// bot (which never retries) is stored as `failed`.
async fn import_deliveries(
    ours: &mut AsyncPgConnection,
    bot: &[BotDelivery],
    imported: &HashSet<i32>,
) -> Result<DeliveryReport, StorageError> {
    let mut report = DeliveryReport::default();
    let event_ids: Vec<String> = bot
        .iter()
        .map(|d| format!("{EVENT_ID_PREFIX}{}", d.id))
        .collect();
    let done: HashSet<String> = webhook_deliveries::table
        .filter(webhook_deliveries::event_id.eq_any(&event_ids))
        .select(webhook_deliveries::event_id.assume_not_null())
        .load::<String>(ours)
        .await?
        .into_iter()
        .collect();
    let mut rows = Vec::new();
    for (d, event_id) in bot.iter().zip(event_ids) {
        if done.contains(&event_id) {
            report.tally.unchanged += 1;
            continue;
        }
        let status = match d.status.as_str() {
            "success" => DeliveryStatus::Success,
            "failed" => DeliveryStatus::Failed,
            "pending" => DeliveryStatus::Pending,
            _ => {
                report.tally.skipped += 1;
                continue;
            }
        };
        if !imported.contains(&d.webhook_id) {
            report.tally.skipped += 1;
            continue;
        }
        let payload = serde_json::from_str(&d.payload)
            .unwrap_or_else(|_| serde_json::Value::String(d.payload.clone()));
        let (status, error_message) = if status == DeliveryStatus::Pending {
            report.pending_as_failed += 1;
            (
                DeliveryStatus::Failed,
                Some(
                    d.error_message
                        .clone()
                        .unwrap_or_else(|| PENDING_IN_THE_BOT.to_owned()),
                ),
            )
        } else {
            (status, d.error_message.clone())
        };
        rows.push(ImportedDelivery {
            webhook_id: d.webhook_id,
            event_type: d.event_type.clone(),
            payload,
            response_status: d.response_status,
            response_body: d.response_body.clone(),
            status,
            error_message,
            attempt_number: d.attempt_number,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            next_retry_at: None,
            event_id: Some(event_id),
        });
    }
    let days: BTreeSet<NaiveDate> = rows.iter().map(|r| counts::day_of(r.created_at)).collect();
    for day in &days {
        report.partitions_created += crate::history::ensure_partitions(ours, *day, *day).await?;
    }
    let mut deltas = CountDeltas::default();
    for r in &rows {
        deltas.add(
            r.webhook_id,
            counts::day_of(r.created_at),
            r.status.as_str(),
            1,
        );
    }
    for chunk in rows.chunks(DELIVERY_BATCH) {
        diesel::insert_into(webhook_deliveries::table)
            .values(chunk)
            .execute(ours)
            .await?;
    }
    counts::apply(ours, &deltas).await?;
    report.tally.created = u64::try_from(rows.len()).unwrap_or_default();
    Ok(report)
}

/// `true` when the database at the other end holds the bot's
/// `web_api_tokens` (the sync's sanity check of `BOT_DATABASE_URL`).
pub async fn has_bot_tables(bot: &mut AsyncPgConnection) -> Result<bool, StorageError> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Bool)]
        found: bool,
    }
    let f: Found = diesel::sql_query(
        "SELECT to_regclass('web_api_tokens') IS NOT NULL \
           AND to_regclass('webhooks') IS NOT NULL AS found",
    )
    .get_result(bot)
    .await?;
    Ok(f.found)
}
