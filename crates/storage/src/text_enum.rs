//! Enums kept in VARCHAR columns: the column holds the same strings as
//! before, strum spells them (`IntoStaticStr`, `EnumString`), and diesel
//! reads and writes the enum.

/// `ToSql`/`FromSql` of `Text` for an enum that derives strum's
/// `IntoStaticStr` and `EnumString`, `AsExpression` and `FromSqlRow`.
macro_rules! text_column {
    ($ty:ty) => {
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                let text: &'static str = self.into();
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    text, out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $ty {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(value)?;
                text.parse()
                    .map_err(|_| format!("unknown {} {text:?}", stringify!($ty)).into())
            }
        }
    };
}

pub(crate) use text_column;
