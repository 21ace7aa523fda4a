//! Raw SQL statements that are prepared once per connection.
//!
//! diesel's `sql_query` marks every statement unsafe to cache, so
//! PostgreSQL parses and plans it again at every execution. Over the
//! partitioned `webhook_deliveries` that planning is most of a small
//! batch's cost (BENCHMARKS.md, issue 29). [`query`] takes the same fixed
//! SQL text and typed binds, but leaves the statement cacheable: diesel
//! prepares it as a named statement the first time a connection runs it
//! (keyed by the SQL text and the bind types) and only binds and executes
//! it afterwards.
//!
//! The text numbers its parameters `$1`, `$2`, … like `sql_query`; a
//! parameter may appear more than once and in any order. Each appearance
//! is sent as a parameter of its own (diesel numbers the parameters as it
//! writes them), which PostgreSQL cannot tell apart from the original.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A statement of fixed text and its binds; run it with
/// [`diesel_async::RunQueryDsl`] like a `sql_query`.
#[must_use = "a statement runs only when it is loaded or executed"]
pub struct Prepared<'a> {
    sql: &'a str,
    binds: Vec<Box<dyn QueryFragment<Pg> + Send + 'a>>,
}

/// The statement `sql`, to be given its binds in the order of their
/// numbers. The text must be the same at every call (it names the cached
/// statement): put values in binds, never into the text.
pub fn query(sql: &str) -> Prepared<'_> {
    Prepared {
        sql,
        binds: Vec::new(),
    }
}

impl<'a> Prepared<'a> {
    /// The next parameter (`$1` first), of SQL type `ST`.
    pub fn bind<ST, U>(mut self, value: U) -> Self
    where
        Pg: HasSqlType<ST>,
        U: ToSql<ST, Pg> + Send + 'a,
        ST: 'a,
    {
        self.binds.push(Box::new(Bind::<ST, U> {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

struct Bind<ST, U> {
    value: U,
    sql_type: PhantomData<fn() -> ST>,
}

impl<ST, U> QueryFragment<Pg> for Bind<ST, U>
where
    Pg: HasSqlType<ST>,
    U: ToSql<ST, Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, U>(&self.value)
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let number: usize = rest[at + 1..at + 1 + digits].parse().unwrap_or(0);
            let bind = number
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!(
                            "${number} has no bind ({} given) in: {}",
                            self.binds.len(),
                            self.sql
                        )
                        .into(),
                    )
                })?;
            bind.walk_ast(out.reborrow())?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    // No type names the statement: diesel keys its cache by the SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use diesel::debug_query;
    use diesel::sql_types::{Array, Int4, Text};

    use super::*;

    #[test]
    fn parameters_are_numbered_as_written_and_may_repeat() {
        let ids = vec![1, 2];
        let q = query("SELECT $2::text, x FROM unnest($1::int4[]) x WHERE $2 <> '$' || $2")
            .bind::<Array<Int4>, _>(&ids)
            .bind::<Text, _>("a");
        let shown = debug_query::<Pg, _>(&q).to_string();
        assert!(
            shown.starts_with(
                "SELECT $1::text, x FROM unnest($2::int4[]) x WHERE $3 <> '$' || $4 -- binds: \
                 [\"a\", [1, 2], \"a\", \"a\"]"
            ),
            "{shown}"
        );
        assert!(
            diesel::query_builder::QueryFragment::<Pg>::is_safe_to_cache_prepared(&q, &Pg).unwrap()
        );
    }

    #[test]
    fn a_parameter_without_its_bind_is_an_error() {
        let q = query("SELECT $1, $2").bind::<Int4, _>(1);
        let mut sql = String::new();
        let mut builder = diesel::pg::PgQueryBuilder::default();
        let err = QueryFragment::<Pg>::to_sql(&q, &mut builder, &Pg).unwrap_err();
        sql.push_str(&err.to_string());
        assert!(sql.contains("$2 has no bind (1 given)"), "{sql}");
    }
}
