//! The non-serving subcommands: `migrate`, `prune`, `import-bot` and
//! `token create|list|revoke`.

use std::io::Write;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use storage::tokens::{self, TokenSpec};

use secrecy::{ExposeSecret as _, SecretString};
use storage::bot::{ImportReport, Tally};
use storage::history::Retention;

use crate::config::{Config, SecretsCommand, TokenCommand};

/// `webhook-registry migrate`
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = storage::run_migrations(config.database.url())
        .await
        .with_context(|| format!("migrating {}", config.database.redacted_url()))?;
    if applied.is_empty() {
        eprintln!("migrations: up to date");
    } else {
        eprintln!("migrations applied: {}", applied.join(", "));
    }
    Ok(())
}

/// `webhook-registry prune [--older-than D]`: drops the history partitions
/// whose whole day is older than D (default `DELIVERY_RETENTION`) and
/// prints each one with its rows and size.
pub async fn prune(
    config: &Config,
    older_than: Option<Retention>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Retention(keep) = older_than.unwrap_or(config.delivery_retention);
    let Some(keep) = keep else {
        writeln!(out, "retention is 0 (keep everything): nothing to prune")?;
        return Ok(());
    };
    let cutoff = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|k| Utc::now().checked_sub_signed(k))
        .context("--older-than is too long")?;
    let mut conn = connect(config).await?;
    // Wait (briefly) for a maintenance run of a serving registry to finish.
    let mut report = None;
    for _ in 0..60 {
        let policy = storage::history::HistoryPolicy {
            retention: Some(keep),
            days_ahead: config.partitions_ahead,
        };
        let r = storage::history::maintain(&mut conn, policy, Utc::now()).await?;
        if !r.skipped {
            report = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let report = report.context("another process kept the maintenance lock for 30 s")?;
    let (mut rows, mut bytes) = (0i64, 0i64);
    for d in &report.dropped {
        writeln!(
            out,
            "dropped {} ({}): {} rows, {}",
            d.partition.name,
            d.partition.day,
            d.rows,
            size(d.bytes)
        )?;
        if d.moved_pending > 0 {
            writeln!(
                out,
                "  kept {} pending deliveries (moved to today's partition)",
                d.moved_pending
            )?;
        }
        rows += d.rows;
        bytes += d.bytes;
    }
    writeln!(
        out,
        "pruned {} partitions, {rows} rows, {} (history before {})",
        report.dropped.len(),
        size(bytes),
        cutoff.format("%Y-%m-%dT%H:%M:%SZ")
    )?;
    Ok(())
}

/// `webhook-registry import-bot [--from URL] [--history D] [--dry-run]`:
/// migrates our database, reads the bot's tables in one read-only snapshot
/// and copies them in one transaction (rolled back with `--dry-run`), then
/// prints the summary on `out`. Never prints secrets or hashes.
pub async fn import_bot(
    config: &Config,
    from: Option<SecretString>,
    history: Option<std::time::Duration>,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let from = match &from {
        Some(url) => url.expose_secret().to_owned(),
        None => config
            .bot_database_url()
            .context("name the bot's database: --from <its DATABASE_URL> (or BOT_DATABASE_URL)")?
            .to_owned(),
    };
    let shown = proto_events::redact_url(&from);
    if from.trim() == config.database.url().trim() {
        bail!("--from names this service's own database ({shown}); it must be the bot's database");
    }
    // Before anything is read: the bot's secrets are sealed as they are copied.
    let keys = config.secrets.keyring()?;
    let since = match history {
        Some(h) => Some(
            chrono::Duration::from_std(h)
                .ok()
                .and_then(|h| Utc::now().checked_sub_signed(h))
                .context("--history is too long")?,
        ),
        None => None,
    };
    storage::run_migrations(config.database.url())
        .await
        .with_context(|| format!("migrating {}", config.database.redacted_url()))?;
    let mut bot = storage::connect(&from)
        .await
        .with_context(|| format!("cannot connect to the bot's database {shown}"))?;
    if !storage::bot::has_bot_tables(&mut bot).await? {
        bail!("{shown} has no web_api_tokens and webhooks tables: is it the bot's database?");
    }
    let data = storage::bot::read(&mut bot, since)
        .await
        .with_context(|| format!("reading the bot's tables from {shown}"))?;
    drop(bot);
    let mut conn = connect(config).await?;
    let report = storage::bot::import(&mut conn, &keys, &data, dry_run)
        .await
        .with_context(|| format!("importing into {}", config.database.redacted_url()))?;
    write_import_report(out, &report)?;
    if let (Some(h), Retention(Some(keep))) = (history, config.delivery_retention)
        && h > keep
    {
        eprintln!(
            "note: --history ({}) is longer than DELIVERY_RETENTION ({}): the older days are \
             dropped at the next history maintenance",
            humantime::format_duration(h),
            humantime::format_duration(keep)
        );
    }
    Ok(())
}

/// `webhook-registry secrets new-key|seal`.
pub async fn secrets(
    config: &Config,
    command: SecretsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey { file, if_missing } => {
            let path = file
                .or_else(|| config.secrets.secrets_key_file.clone())
                .context("name the key file: --file <path> (or SECRETS_KEY_FILE)")?;
            if if_missing && let Ok(keys) = storage::secrets::Keyring::load(&path) {
                writeln!(out, "{}", keys.newest_id())?;
                eprintln!("{} has a key already; nothing changed", path.display());
                return Ok(());
            }
            let id = new_key(&path)?;
            writeln!(out, "{id}")?;
            eprintln!(
                "key {id} added to {}; it seals from now on (restart the registry and the \
                 delivery workers with the file, then run `webhook-registry secrets seal`)",
                path.display()
            );
            Ok(())
        }
        SecretsCommand::Seal => {
            let keys = config.secrets.keyring()?;
            let mut conn = connect(config).await?;
            let report = storage::webhooks::seal_all(&mut conn, &keys).await?;
            writeln!(
                out,
                "sealed {} value(s) of {} webhook(s) with key {} ({} webhooks read)",
                report.values,
                report.changed,
                keys.newest_id(),
                report.webhooks
            )?;
            Ok(())
        }
    }
}

/// Appends a new key to the key file at `path` (created with mode 600);
/// returns its id, made from the time so later keys sort after earlier
/// ones.
pub fn new_key(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut existing = String::new();
    if path.exists() {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut existing))
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !existing.trim().is_empty() {
            storage::secrets::Keyring::parse(&existing)
                .with_context(|| format!("{} is not a key file", path.display()))?;
        }
    }
    let mut id = Utc::now().format("k%Y%m%d%H%M%S").to_string();
    while existing
        .lines()
        .any(|l| l.split_whitespace().next() == Some(id.as_str()))
    {
        id.push('b');
    }
    let line = storage::secrets::Keyring::generate_key_line(&id)?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let sep = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(file, "{sep}{line}").with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()?;
    Ok(id)
}

fn tally(t: &Tally) -> String {
    format!(
        "{} created, {} updated, {} unchanged, {} skipped",
        t.created, t.updated, t.unchanged, t.skipped
    )
}

/// The summary of an import: counts per table, then the webhooks imported
/// switched off and the conflicts, by name and id.
pub fn write_import_report(out: &mut impl Write, r: &ImportReport) -> std::io::Result<()> {
    if r.dry_run {
        writeln!(
            out,
            "dry run: nothing was written; this is what an import would do"
        )?;
    }
    writeln!(
        out,
        "tokens:     {} ({} adopted), {} deactivated (gone from the bot)",
        tally(&r.tokens.tally),
        r.tokens.adopted,
        r.tokens.deactivated
    )?;
    writeln!(out, "webhooks:   {}", tally(&r.webhooks.tally))?;
    match &r.deliveries {
        Some(d) => writeln!(
            out,
            "deliveries: {} ({} pending in the bot, imported as failed)",
            tally(&d.tally),
            d.pending_as_failed
        )?,
        None => writeln!(out, "deliveries: not imported (no --history)")?,
    }
    if let Some(n) = r.webhooks.sequence_moved_to {
        writeln!(out, "webhook ids: the id sequence moved to {n}")?;
    }
    if !r.webhooks.disabled.is_empty() {
        writeln!(
            out,
            "disabled webhooks (event type not in the catalogue; fix it with PATCH, then switch it on):"
        )?;
        for d in &r.webhooks.disabled {
            writeln!(out, "  webhook {} {:?}: {:?}", d.id, d.name, d.event_type)?;
        }
    }
    if !r.webhooks.conflicts.is_empty() || !r.tokens.conflicts.is_empty() {
        writeln!(out, "conflicts (not imported):")?;
        for c in &r.webhooks.conflicts {
            writeln!(
                out,
                "  webhook {} {:?}: id {} is already webhook {:?} here",
                c.id, c.bot_name, c.id, c.our_name
            )?;
        }
        for c in &r.tokens.conflicts {
            writeln!(out, "  {c}")?;
        }
    }
    Ok(())
}

fn size(bytes: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB", bytes as f64 / MIB)
}

async fn connect(config: &Config) -> anyhow::Result<storage::Connection> {
    storage::connect(config.database.url())
        .await
        .with_context(|| format!("cannot connect to {}", config.database.redacted_url()))
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
    let hasher = config.token_hasher();
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
