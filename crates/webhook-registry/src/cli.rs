//! The non-serving subcommands: `migrate` and `token create|list|revoke`.

use std::io::Write;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use storage::tokens::{self, TokenHasher, TokenSpec};

use crate::config::{Config, TokenCommand};

/// `webhook-registry migrate`
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = storage::run_migrations(&config.database_url)
        .await
        .with_context(|| format!("migrating {}", storage::redact_url(&config.database_url)))?;
    if applied.is_empty() {
        eprintln!("migrations: up to date");
    } else {
        eprintln!("migrations applied: {}", applied.join(", "));
    }
    Ok(())
}

async fn connect(config: &Config) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {}",
                storage::redact_url(&config.database_url)
            )
        })
}

fn state(t: &storage::models::ApiToken, now: DateTime<Utc>) -> &'static str {
    if !t.is_active {
        "revoked"
    } else if t.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

fn date(d: Option<DateTime<Utc>>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// `webhook-registry token …`. Output goes to `out` (stdout in the binary).
pub async fn token(
    config: &Config,
    command: TokenCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut conn = connect(config).await?;
    let hasher = TokenHasher::new(config.token_hmac_secret.as_deref());
    match command {
        TokenCommand::Create {
            name,
            expires_in,
            description,
        } => {
            let len = name.chars().count();
            if len == 0 || len > 255 || name.contains('\0') {
                bail!("--name must be 1 to 255 characters");
            }
            if description.as_deref().is_some_and(|d| d.contains('\0')) {
                bail!("--description must not contain NUL characters");
            }
            let expires_at = match expires_in {
                Some(d) => Some(
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| Utc::now().checked_add_signed(d))
                        .context("--expires-in is too long")?,
                ),
                None => None,
            };
            let (row, token) = tokens::create_token(
                &mut conn,
                &hasher,
                TokenSpec {
                    name,
                    description,
                    expires_at,
                    created_by: Some("webhook-registry token create".to_owned()),
                },
            )
            .await
            .context("creating the token (did you run `webhook-registry migrate`?)")?;
            // The token alone on stdout: scripts read it; it is not shown again.
            writeln!(out, "{token}")?;
            eprintln!(
                "created token id={} name={:?} prefix={} expires={} (store it now: only its hash is kept)",
                row.id,
                row.name,
                row.token_prefix,
                date(row.expires_at)
            );
        }
        TokenCommand::List => {
            let rows = tokens::list_tokens(&mut conn)
                .await
                .context("listing tokens (did you run `webhook-registry migrate`?)")?;
            let now = Utc::now();
            writeln!(
                out,
                "{:<6} {:<24} {:<10} {:<8} {:<20} {:<20} {:<20}",
                "ID", "NAME", "PREFIX", "STATE", "CREATED", "EXPIRES", "LAST USED"
            )?;
            for t in rows {
                writeln!(
                    out,
                    "{:<6} {:<24} {:<10} {:<8} {:<20} {:<20} {:<20}",
                    t.id,
                    t.name,
                    t.token_prefix,
                    state(&t, now),
                    date(Some(t.created_at)),
                    date(t.expires_at),
                    date(t.last_used_at)
                )?;
            }
        }
        TokenCommand::Revoke { id } => {
            if tokens::revoke_token(&mut conn, id).await? {
                writeln!(out, "revoked token {id}")?;
            } else {
                bail!("no token with id {id}");
            }
        }
    }
    Ok(())
}
