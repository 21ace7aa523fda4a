//! Enums kept in VARCHAR columns: the column holds the same strings as
//! before, strum spells them (lowercase variant names), serde writes them
//! so in JSON, and diesel reads and writes the enum.

/// Defines an enum stored as text: `as_str`, `FromStr`, `Display`,
/// `VARIANTS` (strum), `Serialize` as the string, and diesel's
/// `ToSql`/`FromSql` of `Text` (an unknown string is a decoding error).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            serde::Serialize,
            strum::EnumString,
            strum::IntoStaticStr,
            strum::Display,
            strum::VariantArray,
            diesel::expression::AsExpression,
            diesel::deserialize::FromSqlRow,
        )]
        #[serde(into = "&'static str")]
        #[strum(serialize_all = "lowercase")]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(value)?;
                text.parse()
                    .map_err(|_| format!("unknown {} {text:?}", stringify!($name)).into())
            }
        }
    };
}

pub(crate) use text_enum;
