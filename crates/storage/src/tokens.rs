//! API tokens: hashing compatible with the bot, queries, and an
//! authenticator with a short cache and batched `last_used_*` writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use moka::sync::Cache;
use parking_lot::Mutex;
use rand::RngCore;
use ring::hmac;

use crate::models::{ApiToken, NewApiToken};
use crate::schema::web_api_tokens::dsl as t;
use crate::{DbPool, StorageError};

/// How a token becomes its stored `token_hash`: hex SHA-256, or hex
/// HMAC-SHA256 keyed with `WEB_API_TOKEN_HMAC_SECRET` (the bot's schemes).
#[derive(Clone)]
pub struct TokenHasher {
    hmac_key: Option<hmac::Key>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHasher")
            .field("hmac", &self.hmac_key.is_some())
            .finish()
    }
}

impl TokenHasher {
    /// Plain SHA-256 when `hmac_secret` is `None` or empty.
    pub fn new(hmac_secret: Option<&str>) -> Self {
        Self {
            hmac_key: hmac_secret
                .filter(|s| !s.is_empty())
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
        }
    }

    /// The hex hash stored for `token`.
    pub fn hash(&self, token: &str) -> String {
        match &self.hmac_key {
            Some(key) => hex::encode(hmac::sign(key, token.as_bytes()).as_ref()),
            None => hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                token.as_bytes(),
            )),
        }
    }
}

/// The stored prefix of a token: enough to recognise it in a list, too
/// short to use.
pub fn token_prefix(token: &str) -> String {
    token.chars().take(8).collect()
}

/// A new random token: `bdl_` and 43 URL-safe characters (256 bits).
pub fn generate_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 43];
    rand::rng().fill_bytes(&mut bytes);
    let body: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b & 63) as usize] as char)
        .collect();
    format!("bdl_{body}")
}

/// What a new token should be.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub name: String,
    pub description: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<String>,
}

/// Creates a token; returns its row and the token itself, which is not
/// stored and cannot be shown again.
pub async fn create_token(
    conn: &mut AsyncPgConnection,
    hasher: &TokenHasher,
    spec: TokenSpec,
) -> Result<(ApiToken, String), StorageError> {
    let token = generate_token();
    let row = diesel::insert_into(t::web_api_tokens)
        .values(NewApiToken {
            name: spec.name,
            token_hash: hasher.hash(&token),
            token_prefix: token_prefix(&token),
            description: spec.description,
            expires_at: spec.expires_at,
            is_active: true,
            created_by: spec.created_by,
        })
        .returning(ApiToken::as_returning())
        .get_result(conn)
        .await?;
    Ok((row, token))
}

/// Makes sure `token` exists and is active (`WEB_API_DEFAULT_TOKEN`).
/// Returns the row.
pub async fn ensure_token(
    conn: &mut AsyncPgConnection,
    hasher: &TokenHasher,
    token: &str,
    name: &str,
) -> Result<ApiToken, StorageError> {
    let row = diesel::insert_into(t::web_api_tokens)
        .values(NewApiToken {
            name: name.to_owned(),
            token_hash: hasher.hash(token),
            token_prefix: token_prefix(token),
            description: Some("Ensured from WEB_API_DEFAULT_TOKEN at start".to_owned()),
            expires_at: None,
            is_active: true,
            created_by: Some("bootstrap".to_owned()),
        })
        .on_conflict(t::token_hash)
        .do_update()
        .set((
            t::is_active.eq(true),
            t::expires_at.eq(None::<DateTime<Utc>>),
            t::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ApiToken::as_returning())
        .get_result(conn)
        .await?;
    Ok(row)
}

/// Every token, newest first.
pub async fn list_tokens(conn: &mut AsyncPgConnection) -> Result<Vec<ApiToken>, StorageError> {
    Ok(t::web_api_tokens
        .order((t::created_at.desc(), t::id.desc()))
        .select(ApiToken::as_select())
        .load(conn)
        .await?)
}

/// Deactivates a token; false when no token has that id.
pub async fn revoke_token(conn: &mut AsyncPgConnection, id: i32) -> Result<bool, StorageError> {
    let n = diesel::update(t::web_api_tokens.find(id))
        .set((t::is_active.eq(false), t::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// The row for a stored hash, whatever its state.
pub async fn find_by_hash(
    conn: &mut AsyncPgConnection,
    hash: &str,
) -> Result<Option<ApiToken>, StorageError> {
    Ok(t::web_api_tokens
        .filter(t::token_hash.eq(hash))
        .select(ApiToken::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Of the given ids, those that are active and unexpired now.
pub async fn usable_ids(
    conn: &mut AsyncPgConnection,
    ids: &[i32],
) -> Result<Vec<i32>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(t::web_api_tokens
        .filter(t::id.eq_any(ids))
        .filter(t::is_active.eq(true))
        .filter(
            t::expires_at
                .is_null()
                .or(t::expires_at.gt(diesel::dsl::now)),
        )
        .select(t::id)
        .load(conn)
        .await?)
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i32,
    pub name: String,
}

/// Cache lifetimes of [`TokenAuth`].
#[derive(Debug, Clone)]
pub struct AuthCacheConfig {
    /// How long a valid token is trusted without asking the database; a
    /// revoked token stops working within this time.
    pub positive_ttl: Duration,
    /// How long an unknown token is remembered as unknown.
    pub negative_ttl: Duration,
    /// How often `last_used_at`/`last_used_ip` are written.
    pub last_used_flush: Duration,
    /// Valid tokens kept at most, and half as many unknown ones (in a cache
    /// of their own, so that a flood of wrong tokens cannot push out the
    /// valid ones); past that the least used are evicted.
    pub max_entries: usize,
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(3),
            negative_ttl: Duration::from_secs(1),
            last_used_flush: Duration::from_secs(5),
            max_entries: 10_000,
        }
    }
}

/// When a token was last used, and from where.
type Usage = (DateTime<Utc>, Option<String>);

/// A valid token as cached: who it is, and when the token itself expires.
#[derive(Clone)]
struct Known {
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
}

/// The token a request carried in its headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    /// Present but not visible ASCII: can never be a valid token.
    Unreadable,
    Token(&'a str),
}

/// The token of a request, from the raw values of its `Authorization` and
/// `X-API-Key` headers: `Authorization: Bearer <token>` (scheme in any
/// case) first, then `X-API-Key`. Surrounding spaces are trimmed and
/// empty values count as missing; another scheme is ignored. A value that
/// is not visible ASCII (what HTTP header values may hold) is
/// [`Presented::Unreadable`] unless the other header has a token.
pub fn presented_token<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
) -> Presented<'a> {
    let mut unreadable = false;
    if let Some(v) = authorization {
        match visible_ascii(v) {
            Some(s) => {
                if let Some((scheme, rest)) = s.trim().split_once(' ')
                    && scheme.eq_ignore_ascii_case("bearer")
                    && !rest.trim().is_empty()
                {
                    return Presented::Token(rest.trim());
                }
            }
            None => unreadable = true,
        }
    }
    if let Some(v) = x_api_key {
        match visible_ascii(v) {
            Some(s) if !s.trim().is_empty() => return Presented::Token(s.trim()),
            Some(_) => {}
            None => unreadable = true,
        }
    }
    if unreadable {
        Presented::Unreadable
    } else {
        Presented::None
    }
}

/// The header value as text when every byte is visible ASCII or a tab
/// (the rule of `http::HeaderValue::to_str`).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Checks tokens against `web_api_tokens`, shared by the registry and the
/// gateway. Lookups are by hash (the token itself is never kept, not even
/// as a cache key), cached briefly, and usage is recorded in memory and
/// written in batches.
#[derive(Clone)]
pub struct TokenAuth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    pool: DbPool,
    hasher: TokenHasher,
    cfg: AuthCacheConfig,
    /// Valid tokens by hash, for `positive_ttl`.
    known: Cache<String, Known>,
    /// Wrong, revoked and expired tokens by hash, for `negative_ttl`.
    refused: Cache<String, ()>,
    last_used: Mutex<HashMap<i32, Usage>>,
}

impl TokenAuth {
    pub fn new(pool: DbPool, hasher: TokenHasher, cfg: AuthCacheConfig) -> Self {
        let capacity = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let known = Cache::builder()
            .max_capacity(capacity(cfg.max_entries))
            .time_to_live(cfg.positive_ttl)
            .build();
        let refused = Cache::builder()
            .max_capacity(capacity(cfg.max_entries / 2))
            .time_to_live(cfg.negative_ttl)
            .build();
        Self {
            inner: Arc::new(AuthInner {
                pool,
                hasher,
                cfg,
                known,
                refused,
                last_used: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The hasher in use.
    pub fn hasher(&self) -> &TokenHasher {
        &self.inner.hasher
    }

    /// `Ok(Some)` for an active, unexpired token; `Ok(None)` for a wrong,
    /// revoked or expired one; `Err` when the database cannot be asked.
    /// `ip` is recorded as the token's `last_used_ip`.
    pub async fn authenticate(
        &self,
        token: &str,
        ip: Option<&str>,
    ) -> Result<Option<Principal>, StorageError> {
        let hash = self.inner.hasher.hash(token);
        let cached = match self.inner.known.get(&hash) {
            Some(k) if k.expires_at.is_none_or(|t| t > Utc::now()) => Some(Some(k.principal)),
            Some(_) => None,
            None => self.inner.refused.contains_key(&hash).then_some(None),
        };
        let principal = match cached {
            Some(answer) => answer,
            None => self.lookup(&hash).await?,
        };
        if let Some(p) = &principal {
            self.inner
                .last_used
                .lock()
                .insert(p.token_id, (Utc::now(), ip.map(|s| truncate(s, 64))));
        }
        Ok(principal)
    }

    async fn lookup(&self, hash: &str) -> Result<Option<Principal>, StorageError> {
        let mut conn = self.inner.pool.get().await?;
        let row = find_by_hash(&mut conn, hash).await?;
        let now = Utc::now();
        // The database matched on the hash; compare again in constant time
        // so no code path branches on a partial match.
        let principal = row.as_ref().and_then(|r| {
            let same = constant_time_eq::constant_time_eq(r.token_hash.as_bytes(), hash.as_bytes());
            (same && r.is_usable(now)).then(|| Principal {
                token_id: r.id,
                name: r.name.clone(),
            })
        });
        match (&principal, row) {
            (Some(p), Some(r)) => {
                self.inner.refused.invalidate(hash);
                self.inner.known.insert(
                    hash.to_owned(),
                    Known {
                        principal: p.clone(),
                        expires_at: r.expires_at,
                    },
                );
            }
            _ => {
                self.inner.known.invalidate(hash);
                self.inner.refused.insert(hash.to_owned(), ());
            }
        }
        Ok(principal)
    }

    /// Writes the recorded `last_used_at`/`last_used_ip` values; one
    /// statement per token used since the last flush.
    pub async fn flush_last_used(&self) -> Result<usize, StorageError> {
        let pending: Vec<_> = self.inner.last_used.lock().drain().collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let mut conn = match self.inner.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                self.requeue(pending);
                return Err(e.into());
            }
        };
        let n = pending.len();
        for (i, (id, (at, ip))) in pending.iter().enumerate() {
            let res = diesel::update(t::web_api_tokens.find(*id))
                .set((t::last_used_at.eq(*at), t::last_used_ip.eq(ip.as_deref())))
                .execute(&mut conn)
                .await;
            if let Err(e) = res {
                self.requeue(pending.into_iter().skip(i).collect());
                return Err(e.into());
            }
        }
        Ok(n)
    }

    fn requeue(&self, pending: Vec<(i32, Usage)>) {
        let mut map = self.inner.last_used.lock();
        for (id, v) in pending {
            map.entry(id).or_insert(v);
        }
    }

    /// Flushes usage every `last_used_flush` until `stop` resolves, then
    /// once more.
    pub async fn run_last_used_flusher(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.inner.cfg.last_used_flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.flush_last_used().await {
                        tracing::warn!(error = %e, "could not record token usage; will retry");
                    }
                }
                () = &mut stop => break,
            }
        }
        if let Err(e) = self.flush_last_used().await {
            tracing::warn!(error = %e, "could not record token usage at shutdown");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        let p =
            |auth: Option<&'static [u8]>, key: Option<&'static [u8]>| presented_token(auth, key);
        assert_eq!(p(None, None), Presented::None);
        assert_eq!(p(Some(b"Bearer abc"), None), Presented::Token("abc"));
        assert_eq!(p(Some(b"bearer  abc "), None), Presented::Token("abc"));
        assert_eq!(p(None, Some(b"k1")), Presented::Token("k1"));
        assert_eq!(p(Some(b"Basic Zm9v"), Some(b"k2")), Presented::Token("k2"));
        assert_eq!(p(Some(b"Bearer "), None), Presented::None);
        assert_eq!(p(None, Some(b" ")), Presented::None);
        assert_eq!(p(None, Some(b"\xff\xfe")), Presented::Unreadable);
        assert_eq!(p(Some(b"Bearer \x01"), None), Presented::Unreadable);
        assert_eq!(
            p(Some(b"Bearer \xc3\xa9"), Some(b"k3")),
            Presented::Token("k3")
        );
        assert_eq!(p(Some(b"Bearer\ta\tb"), None), Presented::None);
    }

    #[test]
    fn hashes_match_the_bot() {
        // python3 -c "import hashlib;print(hashlib.sha256(b'abc').hexdigest())"
        // (an empty HMAC secret means plain SHA-256, as in the bot)
        let plain = TokenHasher::new(Some("")).hash("abc");
        assert_eq!(
            plain,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // python3 -c "import hmac,hashlib;print(hmac.new(b'key',b'abc',hashlib.sha256).hexdigest())"
        assert_eq!(
            TokenHasher::new(Some("key")).hash("abc"),
            "9c196e32dc0175f86f4b1cb89289d6619de6bee699e4c378e68309ed97a1a6ab"
        );
    }

    #[test]
    fn generated_tokens_are_distinct_and_url_safe() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 47);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(token_prefix(&a), &a[..8]);
    }
}
