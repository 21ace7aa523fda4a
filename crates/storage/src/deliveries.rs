//! Writing single delivery rows with their counters (the worker writes
//! batches with its own queries; the registry and tests write one row).

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::StorageError;
use crate::counts::{self, CountDeltas};
use crate::models::{Delivery, NewDelivery};
use crate::schema::webhook_deliveries;

/// Inserts one delivery row and counts it; call it inside the caller's
/// transaction when more is written with it.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: NewDelivery,
) -> Result<Delivery, StorageError> {
    use diesel::SelectableHelper;
    let row = diesel::insert_into(webhook_deliveries::table)
        .values(new)
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await?;
    let mut deltas = CountDeltas::default();
    deltas.add(
        row.webhook_id,
        counts::day_of(row.created_at),
        row.status.as_str(),
        1,
    );
    counts::apply(conn, &deltas).await?;
    Ok(row)
}
