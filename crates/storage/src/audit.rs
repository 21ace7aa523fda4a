//! The delivery audit (docs/contract.md, "Delivery audit"): every event the
//! worker processed, with the webhooks it matched, in `delivery_events`
//! (daily partitions dropped with the delivery history).

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Int8, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::StorageError;

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
    diesel::sql_query(
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
