//! The delivery audit (docs/contract.md, "Delivery audit"): every event the
//! worker processed, with the webhooks it matched, in `delivery_events`
//! (daily partitions dropped with the delivery history).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int8, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::StorageError;
use crate::models::{Circuit, CircuitState, DeliveryStatus};
use crate::schema::delivery_events as e;

/// One processed event: written by the worker in the transaction that
/// records its first deliveries (or alone, when it matched nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    pub event_id: String,
    pub event_type: String,
    /// Its sequence in the events stream.
    pub stream_seq: i64,
    /// When JetStream stored it.
    pub published_at: DateTime<Utc>,
    /// When the worker processed it (the partition key).
    pub processed_at: DateTime<Utc>,
    /// The webhooks it is delivered to (or queued for).
    pub matched: Vec<i32>,
    /// The webhooks whose type patterns matched but whose payload filter
    /// refused it.
    pub filtered: Vec<i32>,
}

/// Inserts `events` in one statement; call it inside the transaction that
/// writes their deliveries.
pub async fn insert_events(
    conn: &mut AsyncPgConnection,
    events: &[SeenEvent],
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    let id: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let event_type: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let seq: Vec<i64> = events.iter().map(|e| e.stream_seq).collect();
    let published: Vec<DateTime<Utc>> = events.iter().map(|e| e.published_at).collect();
    let processed: Vec<DateTime<Utc>> = events.iter().map(|e| e.processed_at).collect();
    // Arrays of arrays must be rectangular in SQL: each list travels as
    // text ('{1,2}') and is cast back.
    let matched: Vec<String> = events.iter().map(|e| int_array(&e.matched)).collect();
    let filtered: Vec<String> = events.iter().map(|e| int_array(&e.filtered)).collect();
    crate::prepared::query(
        "INSERT INTO delivery_events (event_id, event_type, stream_seq, published_at, \
           processed_at, matched, filtered) \
         SELECT v.id, v.t, v.seq, v.published, v.processed, v.matched::int4[], v.filtered::int4[] \
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::timestamptz[], \
           $6::text[], $7::text[]) AS v(id, t, seq, published, processed, matched, filtered)",
    )
    .bind::<Array<Text>, _>(&id)
    .bind::<Array<Text>, _>(&event_type)
    .bind::<Array<Int8>, _>(&seq)
    .bind::<Array<Timestamptz>, _>(&published)
    .bind::<Array<Timestamptz>, _>(&processed)
    .bind::<Array<Text>, _>(&matched)
    .bind::<Array<Text>, _>(&filtered)
    .execute(conn)
    .await?;
    Ok(())
}

fn int_array(ids: &[i32]) -> String {
    let mut s = String::with_capacity(2 + ids.len() * 4);
    s.push('{');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push('}');
    s
}

// ------------------------------------------------------------------ reads

/// Two rows of one event (it was processed again after a crash) are at
/// most this far apart: the lookup that merges them reads only the
/// partitions of this window around the page.
const REPROCESS_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How long before its processing a delivery row of an event may have been
/// created (the worker takes `processed_at` from its own clock while the
/// rows take the transaction's): the bound that lets the delivery lookup
/// skip older partitions.
const CLOCK_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A processed event as the audit shows it: every row of it merged (the
/// first processing's times, the union of the webhook lists).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = crate::schema::delivery_events, check_for_backend(diesel::pg::Pg))]
pub struct AuditEvent {
    pub event_id: String,
    pub event_type: String,
    pub stream_seq: i64,
    pub published_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub matched: Vec<i32>,
    pub filtered: Vec<i32>,
}

impl AuditEvent {
    /// Every webhook the event concerns (matched, then filtered), once each.
    pub fn webhook_ids(&self) -> Vec<i32> {
        let mut ids = self.matched.clone();
        for id in &self.filtered {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids
    }

    /// Takes `other`, another row of the same event, into this one.
    fn absorb(&mut self, other: AuditEvent) {
        if (other.processed_at, other.stream_seq) < (self.processed_at, self.stream_seq) {
            self.processed_at = other.processed_at;
            self.published_at = other.published_at;
            self.stream_seq = other.stream_seq;
        }
        for id in other.matched {
            if !self.matched.contains(&id) {
                self.matched.push(id);
            }
        }
        for id in other.filtered {
            if !self.filtered.contains(&id) {
                self.filtered.push(id);
            }
        }
    }
}

/// The event `event_id`, its rows merged; `None` when the worker never
/// processed it (or its day is no longer kept).
pub async fn event(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> Result<Option<AuditEvent>, StorageError> {
    let rows: Vec<AuditEvent> = e::table
        .filter(e::event_id.eq(event_id))
        .order((e::processed_at.asc(), e::stream_seq.asc()))
        .select(AuditEvent::as_select())
        .load(conn)
        .await?;
    let mut rows = rows.into_iter();
    let Some(mut first) = rows.next() else {
        return Ok(None);
    };
    for other in rows {
        first.absorb(other);
    }
    Ok(Some(first))
}

/// Where a page of events starts: after the event with this sort key
/// (`processed_at` descending, then `event_id` descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub processed_at: DateTime<Utc>,
    pub event_id: String,
}

impl EventCursor {
    /// What a cursor looks like: `<processed_at µs since 1970>.<event id,
    /// base64url without padding>`. Clients treat it as opaque.
    pub const PATTERN: &'static str = "^[0-9]{1,18}\\.[A-Za-z0-9_-]{2,86}$";

    pub fn encode(&self) -> String {
        use base64::Engine;
        format!(
            "{}.{}",
            self.processed_at.timestamp_micros(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.event_id)
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        use base64::Engine;
        static PATTERN: std::sync::LazyLock<Option<regex::Regex>> =
            std::sync::LazyLock::new(|| regex::Regex::new(EventCursor::PATTERN).ok());
        if !PATTERN.as_ref()?.is_match(s) {
            return None;
        }
        let (micros, id) = s.split_once('.')?;
        // Only a sort position: a cursor this API did not write (not
        // base64, or not text) still reads as a place in the order.
        let event_id = match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => id.to_owned(),
        };
        if event_id.is_empty() || event_id.chars().count() > 64 {
            return None;
        }
        Some(Self {
            processed_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            event_id,
        })
    }
}

/// Which processed events a page reads.
#[derive(Debug, Clone, Default)]
pub struct EventScan {
    pub event_type: Option<String>,
    /// Processed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Processed before this time.
    pub until: Option<DateTime<Utc>>,
    /// Start after this event.
    pub after: Option<EventCursor>,
    /// Rows to read, at most.
    pub rows: i64,
}

/// What [`scan_events`] read: the events (merged, each once, at its first
/// processing) and where the next read starts, `None` when nothing older
/// is left.
#[derive(Debug, Clone)]
pub struct ScannedEvents {
    pub events: Vec<AuditEvent>,
    /// The sort key of each event, for a cursor that ends a page there.
    pub keys: Vec<EventCursor>,
    pub next: Option<EventCursor>,
}

/// Up to `scan.rows` processed events, newest first: one index range scan
/// of `(processed_at, event_id)` (or of `(event_type, processed_at,
/// event_id)` with a type), bounded by the window and the cursor so that
/// only the partitions of the days read are touched. Rows of an event
/// processed twice are merged, and the event is listed at its first
/// processing.
pub async fn scan_events(
    conn: &mut AsyncPgConnection,
    scan: &EventScan,
) -> Result<ScannedEvents, StorageError> {
    let mut q = e::table
        .select(AuditEvent::as_select())
        .order((e::processed_at.desc(), e::event_id.desc()))
        .limit(scan.rows)
        .into_boxed();
    if let Some(t) = &scan.event_type {
        q = q.filter(e::event_type.eq(t.clone()));
    }
    if let Some(since) = scan.since {
        q = q.filter(e::processed_at.ge(since));
    }
    if let Some(until) = scan.until {
        q = q.filter(e::processed_at.lt(until));
    }
    if let Some(c) = &scan.after {
        // The plain bound lets the planner skip newer partitions; the row
        // comparison is the keyset condition in the index's order.
        q = q.filter(e::processed_at.le(c.processed_at)).filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>(
                "(delivery_events.processed_at, delivery_events.event_id) < (",
            )
            .bind::<Timestamptz, _>(c.processed_at)
            .sql(", ")
            .bind::<Text, _>(c.event_id.clone())
            .sql(")"),
        );
    }
    let rows: Vec<AuditEvent> = q.load(conn).await?;
    let next = match rows.last() {
        Some(last) if rows.len() as i64 == scan.rows => Some(EventCursor {
            processed_at: last.processed_at,
            event_id: last.event_id.clone(),
        }),
        _ => None,
    };
    let others = if rows.is_empty() {
        Vec::new()
    } else {
        other_rows(conn, &rows).await?
    };
    let (events, keys) = merge_rows(rows, others);
    Ok(ScannedEvents { events, keys, next })
}

/// Every row of the events of `rows` within [`REPROCESS_WINDOW`] of them.
async fn other_rows(
    conn: &mut AsyncPgConnection,
    rows: &[AuditEvent],
) -> Result<Vec<AuditEvent>, StorageError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let from = rows
        .iter()
        .map(|r| r.processed_at)
        .min()
        .unwrap_or_default()
        - REPROCESS_WINDOW;
    let to = rows
        .iter()
        .map(|r| r.processed_at)
        .max()
        .unwrap_or_default()
        + REPROCESS_WINDOW;
    Ok(e::table
        .filter(e::event_id.eq_any(ids))
        .filter(e::processed_at.ge(from))
        .filter(e::processed_at.le(to))
        .select(AuditEvent::as_select())
        .load(conn)
        .await?)
}

/// The page of `rows` (newest first) with each event once: at its first
/// processing, with every row of it in `all` merged in. A row that is not
/// its event's first processing is left out (the event is listed where
/// its first row is).
fn merge_rows(rows: Vec<AuditEvent>, all: Vec<AuditEvent>) -> (Vec<AuditEvent>, Vec<EventCursor>) {
    let mut events = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (row.processed_at, row.stream_seq);
        let same: Vec<&AuditEvent> = all.iter().filter(|o| o.event_id == row.event_id).collect();
        if same.iter().any(|o| (o.processed_at, o.stream_seq) < key)
            || events
                .iter()
                .any(|e: &AuditEvent| e.event_id == row.event_id)
        {
            continue;
        }
        keys.push(EventCursor {
            processed_at: row.processed_at,
            event_id: row.event_id.clone(),
        });
        let mut merged = row;
        for o in same {
            merged.absorb(o.clone());
        }
        events.push(merged);
    }
    (events, keys)
}

/// One delivery row of an event as the audit shows it (no payload).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = crate::schema::webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub id: i64,
    pub webhook_id: i32,
    pub event_id: Option<String>,
    pub attempt_number: i32,
    pub status: DeliveryStatus,
    pub response_status: Option<i32>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub held: Option<String>,
}

/// The delivery rows of `event_ids`, oldest first, created since `from`
/// less a margin (the earliest processing of those events): one probe of
/// `(event_id, webhook_id)` per event in the partitions from then on.
pub async fn attempts(
    conn: &mut AsyncPgConnection,
    event_ids: &[&str],
    from: DateTime<Utc>,
) -> Result<Vec<Attempt>, StorageError> {
    use crate::schema::webhook_deliveries as d;
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(d::table
        .filter(d::event_id.eq_any(event_ids))
        .filter(d::created_at.ge(from - CLOCK_MARGIN))
        .order((d::created_at.asc(), d::id.asc()))
        .select(Attempt::as_select())
        .load(conn)
        .await?)
}

/// The payload of one of the event's delivery rows, if any is kept.
pub async fn payload(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    from: DateTime<Utc>,
) -> Result<Option<serde_json::Value>, StorageError> {
    use crate::schema::webhook_deliveries as d;
    Ok(d::table
        .filter(d::event_id.eq(event_id))
        .filter(d::created_at.ge(from - CLOCK_MARGIN))
        .select(d::payload)
        .first(conn)
        .await
        .optional()?)
}

/// What the audit needs of a webhook: its name, and whether it is active.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct WebhookBrief {
    pub id: i32,
    pub name: String,
    pub is_active: bool,
}

/// The webhooks of `ids` that still exist.
pub async fn webhooks(
    conn: &mut AsyncPgConnection,
    ids: &[i32],
) -> Result<Vec<WebhookBrief>, StorageError> {
    use crate::schema::webhooks as w;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(w::table
        .filter(w::id.eq_any(ids))
        .select((w::id, w::name, w::is_active))
        .load(conn)
        .await?)
}

/// The circuit of each of `ids` that has a row (the others are closed).
pub async fn circuits(
    conn: &mut AsyncPgConnection,
    ids: &[i32],
) -> Result<std::collections::HashMap<i32, Circuit>, StorageError> {
    use crate::schema::webhook_circuit as c;
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<(i32, CircuitState, DateTime<Utc>, i32)> = c::table
        .filter(c::webhook_id.eq_any(ids))
        .select((c::webhook_id, c::state, c::since, c::consecutive_failures))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, state, since, consecutive_failures)| {
            (
                id,
                Circuit {
                    state,
                    since: Some(since),
                    consecutive_failures,
                },
            )
        })
        .collect())
}

/// The circuit of webhook `id` (closed when it has no row).
pub async fn circuit(conn: &mut AsyncPgConnection, id: i32) -> Result<Circuit, StorageError> {
    Ok(circuits(conn, &[id]).await?.remove(&id).unwrap_or_default())
}

// ----------------------------------------------------------------- states

crate::text_enum::text_enum! {
    /// Where an event stands for one webhook (docs/contract.md, "Delivery
    /// audit").
    pub enum AuditState {
        /// A delivery succeeded.
        Succeeded,
        /// An attempt failed; another is scheduled.
        Retrying,
        /// Not attempted yet: held by the webhook's rate limit.
        #[strum(serialize = "rate_limited")]
        RateLimited,
        /// Held while the webhook's circuit is open.
        #[strum(serialize = "circuit_open")]
        CircuitOpen,
        /// Not attempted yet: waiting its turn (concurrency limit, ordered
        /// delivery) or in flight.
        Queued,
        /// Every scheduled attempt failed.
        Exhausted,
        /// Failed for good without exhausting retries: a 410 Gone, or a
        /// failure that is never retried.
        Failed,
        /// The webhook is switched off and the event was not delivered.
        Disabled,
        /// The webhook's payload filter refused it.
        #[strum(serialize = "filtered_out")]
        FilteredOut,
        /// The webhook no longer exists.
        Deleted,
    }
}

/// The error message of attempts that are never retried because the
/// destination was refused (an internal address).
const REFUSED_PREFIX: &str = "destination refused:";

/// What one webhook's rows say about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub state: AuditState,
    /// When the next attempt is due, for a pending one.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The state of an event for one webhook: `webhook` is `None` when it was
/// deleted; `filtered` when its payload filter refused the event (and it
/// is not among the matched); `rows` are its delivery rows of the event,
/// oldest first.
pub fn standing(webhook: Option<&WebhookBrief>, filtered: bool, rows: &[&Attempt]) -> Standing {
    let at = |state| Standing {
        state,
        next_attempt_at: None,
    };
    let Some(webhook) = webhook else {
        return at(AuditState::Deleted);
    };
    if filtered {
        return at(AuditState::FilteredOut);
    }
    if rows.iter().any(|r| r.status == DeliveryStatus::Success) {
        return at(AuditState::Succeeded);
    }
    let pending = rows
        .iter()
        .filter(|r| r.status == DeliveryStatus::Pending)
        .min_by_key(|r| r.next_retry_at);
    let failed_any = rows.iter().any(|r| r.status == DeliveryStatus::Failed);
    let last_failed = rows
        .iter()
        .rev()
        .find(|r| r.status == DeliveryStatus::Failed);
    // A final failure: no pending row and the last attempt failed without
    // a retry scheduled.
    if pending.is_none()
        && let Some(last) = last_failed
        && last.next_retry_at.is_none()
    {
        let for_good = last.response_status == Some(410)
            || last
                .error_message
                .as_deref()
                .is_some_and(|m| m.starts_with(REFUSED_PREFIX));
        return at(if for_good {
            AuditState::Failed
        } else {
            AuditState::Exhausted
        });
    }
    if !webhook.is_active {
        return at(AuditState::Disabled);
    }
    let (state, next) = match pending {
        Some(p) => {
            let state = match p.held.as_deref() {
                Some("rate_limit") => AuditState::RateLimited,
                Some("circuit") => AuditState::CircuitOpen,
                _ if failed_any => AuditState::Retrying,
                _ => AuditState::Queued,
            };
            (state, p.next_retry_at)
        }
        // The retry row is being attempted right now.
        None if failed_any => (
            AuditState::Retrying,
            last_failed.and_then(|r| r.next_retry_at),
        ),
        // Matched, no row yet: waiting behind earlier events (ordered), or
        // in flight.
        None => (AuditState::Queued, None),
    };
    Standing {
        state,
        next_attempt_at: next,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(status: DeliveryStatus, attempt: i32) -> Attempt {
        Attempt {
            id: i64::from(attempt),
            webhook_id: 1,
            event_id: Some("e".to_owned()),
            attempt_number: attempt,
            status,
            response_status: (status == DeliveryStatus::Failed).then_some(500),
            error_message: None,
            created_at: Utc::now(),
            delivered_at: None,
            next_retry_at: None,
            held: None,
        }
    }

    fn state(active: bool, filtered: bool, rows: &[Attempt]) -> AuditState {
        let w = WebhookBrief {
            id: 1,
            name: "w".to_owned(),
            is_active: active,
        };
        let rows: Vec<&Attempt> = rows.iter().collect();
        standing(Some(&w), filtered, &rows).state
    }

    #[test]
    fn states_from_rows() {
        use AuditState as S;
        use DeliveryStatus::{Failed, Pending, Success};
        let due = Some(Utc::now());
        let retried = Attempt {
            next_retry_at: due,
            ..row(Failed, 1)
        };
        let held = |why: &str| Attempt {
            held: Some(why.to_owned()),
            next_retry_at: due,
            ..row(Pending, 1)
        };
        assert_eq!(standing(None, false, &[]).state, S::Deleted);
        assert_eq!(state(true, true, &[]), S::FilteredOut);
        assert_eq!(state(true, false, &[]), S::Queued);
        assert_eq!(state(false, false, &[]), S::Disabled);
        assert_eq!(
            state(true, false, &[retried.clone(), row(Success, 2)]),
            S::Succeeded
        );
        assert_eq!(state(false, false, &[row(Success, 1)]), S::Succeeded);
        assert_eq!(
            state(true, false, &[retried.clone(), row(Pending, 2)]),
            S::Retrying
        );
        assert_eq!(
            state(true, false, std::slice::from_ref(&retried)),
            S::Retrying
        );
        assert_eq!(state(true, false, &[held("rate_limit")]), S::RateLimited);
        assert_eq!(state(true, false, &[held("circuit")]), S::CircuitOpen);
        assert_eq!(state(true, false, &[held("busy")]), S::Queued);
        assert_eq!(state(true, false, &[row(Pending, 1)]), S::Queued);
        assert_eq!(state(false, false, &[held("rate_limit")]), S::Disabled);
        assert_eq!(
            state(true, false, &[retried.clone(), row(Failed, 2)]),
            S::Exhausted
        );
        assert_eq!(state(false, false, &[row(Failed, 1)]), S::Exhausted);
        let gone = Attempt {
            response_status: Some(410),
            ..row(Failed, 1)
        };
        assert_eq!(state(false, false, &[gone]), S::Failed);
        let refused = Attempt {
            response_status: None,
            error_message: Some("destination refused: loopback".to_owned()),
            ..row(Failed, 1)
        };
        assert_eq!(state(true, false, &[refused]), S::Failed);
        let rows = [held("rate_limit")];
        let refs: Vec<&Attempt> = rows.iter().collect();
        let w = WebhookBrief {
            id: 1,
            name: "w".to_owned(),
            is_active: true,
        };
        assert_eq!(standing(Some(&w), false, &refs).next_attempt_at, due);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = EventCursor {
            processed_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
            event_id: "0194b3c2-7c1e-7a3f-9e4b-2f1d8c6a5b40 ✅".to_owned(),
        };
        assert_eq!(EventCursor::decode(&c.encode()), Some(c));
        for bad in ["", "1.", ".YQ", "x.YQ", "-1.YQ", "1.YQ==", "1.a b"] {
            assert_eq!(EventCursor::decode(bad), None, "{bad}");
        }
        // Any text of the cursor's shape is a place in the order.
        assert!(EventCursor::decode("0.00").is_some());
    }

    #[test]
    fn rows_of_one_event_merge_at_its_first_processing() {
        let t = Utc::now();
        let ev = |id: &str, secs: i64, matched: Vec<i32>| AuditEvent {
            event_id: id.to_owned(),
            event_type: "user.created".to_owned(),
            stream_seq: 1,
            published_at: t,
            processed_at: t + chrono::TimeDelta::seconds(secs),
            matched,
            filtered: Vec::new(),
        };
        let page = vec![
            ev("b", 30, vec![2]),
            ev("a", 20, vec![1]),
            ev("b", 10, vec![1]),
        ];
        let all = page.clone();
        let (events, keys) = merge_rows(page, all);
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(events[1].matched, [1, 2]);
        assert_eq!(events[1].processed_at, t + chrono::TimeDelta::seconds(10));
        assert_eq!(keys.len(), 2);
    }
}
