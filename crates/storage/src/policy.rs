//! The delivery policy's shared state (docs/contract.md, "Delivery
//! policy"): the rate limiter every worker replica takes from, and the
//! circuit breaker's probe. The circuit's moves on attempts are written
//! with the attempts ([`crate::attempts::write_batch`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Bool, Double, Int4, Timestamptz};
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;

use crate::models::{Circuit, CircuitState};
use crate::schema::webhook_circuit;
use crate::{DbPool, StorageError};

/// The circuits that are not closed-since-creation, by webhook.
pub async fn circuits(pool: &DbPool) -> Result<HashMap<i32, Circuit>, StorageError> {
    use webhook_circuit::dsl as c;
    let mut conn = pool.get().await?;
    let rows: Vec<(i32, String, DateTime<Utc>, i32)> = c::webhook_circuit
        .select((c::webhook_id, c::state, c::since, c::consecutive_failures))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, state, since, n)| {
            let circuit = Circuit {
                state: state.parse().unwrap_or(CircuitState::Closed),
                since: Some(since),
                consecutive_failures: n,
            };
            (id, circuit)
        })
        .collect())
}

/// The circuit of one webhook.
pub async fn circuit(pool: &DbPool, webhook_id: i32) -> Result<Circuit, StorageError> {
    use diesel::OptionalExtension;
    use webhook_circuit::dsl as c;
    let mut conn = pool.get().await?;
    let row: Option<(String, DateTime<Utc>, i32)> = c::webhook_circuit
        .filter(c::webhook_id.eq(webhook_id))
        .select((c::state, c::since, c::consecutive_failures))
        .first(&mut conn)
        .await
        .optional()?;
    Ok(
        row.map_or_else(Circuit::default, |(state, since, n)| Circuit {
            state: state.parse().unwrap_or(CircuitState::Closed),
            since: Some(since),
            consecutive_failures: n,
        }),
    )
}

/// A rate limit: at most `per_s` requests a second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_s: f64,
    pub burst: i32,
}

impl RateLimit {
    /// A webhook's limit: its rate and burst (the rate rounded up when no
    /// burst is set).
    pub fn of(per_s: Option<f64>, burst: Option<i32>) -> Option<Self> {
        let per_s = per_s.filter(|r| *r > 0.0 && r.is_finite())?;
        // The rate is at most 100 000 (a CHECK), so this fits.
        #[allow(clippy::cast_possible_truncation)]
        let default_burst = per_s.ceil().max(1.0) as i32;
        Some(Self {
            per_s,
            burst: burst.unwrap_or(default_burst).max(1),
        })
    }
}

/// What the limiter said about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateTake {
    /// Send it after this wait (its slot; zero when one is free now).
    Go(Duration),
    /// Hold the delivery: try again at `due` (database time).
    Hold { due: DateTime<Utc> },
}

/// Takes one request of `webhook_id` from the shared limiter: a slot at
/// most `horizon` away, or the time to try again (`webhook_rate_take`).
pub async fn take_rate(
    pool: &DbPool,
    webhook_id: i32,
    limit: RateLimit,
    horizon: Duration,
) -> Result<RateTake, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Took {
        #[diesel(sql_type = Bool)]
        go: bool,
        #[diesel(sql_type = Double)]
        wait_s: f64,
        #[diesel(sql_type = Timestamptz)]
        due: DateTime<Utc>,
    }
    let mut conn = pool.get().await?;
    let took: Took =
        diesel::sql_query("SELECT go, wait_s, due FROM webhook_rate_take($1, $2, $3, $4)")
            .bind::<Int4, _>(webhook_id)
            .bind::<Double, _>(1.0 / limit.per_s)
            .bind::<Int4, _>(limit.burst)
            .bind::<Double, _>(horizon.as_secs_f64())
            .get_result(&mut conn)
            .await?;
    Ok(if took.go {
        RateTake::Go(Duration::from_secs_f64(took.wait_s.max(0.0)))
    } else {
        RateTake::Hold { due: took.due }
    })
}

/// What the circuit lets a delivery do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitTake {
    /// Closed: deliver.
    Closed,
    /// This delivery is the probe (the circuit is now half-open).
    Probe,
    /// Hold the delivery: open until `until`; or a probe is in flight
    /// (`probing`), whose outcome is known at the latest by `until`.
    Hold { until: DateTime<Utc>, probing: bool },
}

/// Asks the circuit of `webhook_id` whether a delivery may go. An open
/// circuit whose cooldown (its override, else `cooldown`) is over becomes
/// half-open and this caller sends the probe; a half-open circuit whose
/// probe started more than `probe_lease` ago (its worker died) lets a new
/// probe go. Only one caller wins a probe, whatever the replica.
pub async fn take_circuit(
    pool: &DbPool,
    webhook_id: i32,
    cooldown: Duration,
    probe_lease: Duration,
) -> Result<CircuitTake, StorageError> {
    #[derive(diesel::QueryableByName)]
    struct Took {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = Timestamptz)]
        until: DateTime<Utc>,
        #[diesel(sql_type = Bool)]
        probe: bool,
    }
    let mut conn = pool.get().await?;
    let took: Option<Took> = diesel::sql_query(
        "WITH cur AS ( \
           SELECT c.state, c.since, \
             CASE WHEN c.state = 'open' \
               THEN c.since + make_interval(secs => COALESCE(w.circuit_cooldown_s, $2)) \
               ELSE c.since + make_interval(secs => $3) END AS until \
           FROM webhook_circuit c JOIN webhooks w ON w.id = c.webhook_id \
           WHERE c.webhook_id = $1 \
         ), took AS ( \
           UPDATE webhook_circuit c SET state = 'half_open', since = clock_timestamp() \
           FROM cur WHERE c.webhook_id = $1 AND c.state = cur.state AND c.since = cur.since \
             AND cur.state <> 'closed' AND cur.until <= clock_timestamp() \
           RETURNING c.since \
         ) \
         SELECT cur.state::text AS state, cur.until, EXISTS (SELECT 1 FROM took) AS probe FROM cur",
    )
    .bind::<Int4, _>(webhook_id)
    .bind::<Double, _>(cooldown.as_secs_f64())
    .bind::<Double, _>(probe_lease.as_secs_f64())
    .get_result(&mut conn)
    .await
    .map(Some)
    .or_else(|e| match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    })?;
    Ok(match took {
        None => CircuitTake::Closed,
        Some(t) if t.state == "closed" => CircuitTake::Closed,
        Some(t) if t.probe => CircuitTake::Probe,
        Some(t) => CircuitTake::Hold {
            until: t.until,
            probing: t.state == "half_open",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_defaults_to_the_rate_rounded_up() {
        assert_eq!(
            RateLimit::of(Some(2.5), None),
            Some(RateLimit {
                per_s: 2.5,
                burst: 3
            })
        );
        assert_eq!(RateLimit::of(Some(0.2), None).map(|l| l.burst), Some(1));
        assert_eq!(RateLimit::of(Some(10.0), Some(1)).map(|l| l.burst), Some(1));
        assert_eq!(RateLimit::of(None, Some(4)), None);
    }
}
