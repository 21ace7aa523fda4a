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

/// The digest behind token hashes: `WEB_API_TOKEN_HASH_ALGORITHM`, as in
/// the bot (`sha256`, `sha384` or `sha512`, any case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HashAlgorithm {
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlgorithm::Sha256 => &ring::digest::SHA256,
            HashAlgorithm::Sha384 => &ring::digest::SHA384,
            HashAlgorithm::Sha512 => &ring::digest::SHA512,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            HashAlgorithm::Sha256 => hmac::HMAC_SHA256,
            HashAlgorithm::Sha384 => hmac::HMAC_SHA384,
            HashAlgorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HashAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha384" => Ok(HashAlgorithm::Sha384),
            "sha512" => Ok(HashAlgorithm::Sha512),
            _ => Err(format!(
                "unsupported token hash algorithm {s:?}; use sha256, sha384 or sha512"
            )),
        }
    }
}

/// How a token becomes its stored `token_hash`, by the bot's rules: the hex
/// digest of the token with `WEB_API_TOKEN_HASH_ALGORITHM`, or the hex HMAC
/// with the same algorithm keyed with `WEB_API_TOKEN_HMAC_SECRET` when that
/// is set. With a key, the plain digest is still accepted (a legacy hash
/// stored before the key was set), as the bot does.
#[derive(Clone)]
pub struct TokenHasher {
    algorithm: HashAlgorithm,
    hmac_key: Option<hmac::Key>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHasher")
            .field("algorithm", &self.algorithm)
            .field("hmac", &self.hmac_key.is_some())
            .finish()
    }
}

impl TokenHasher {
    /// SHA-256 (the default algorithm); plain when `hmac_secret` is `None`
    /// or empty.
    pub fn new(hmac_secret: Option<&str>) -> Self {
        Self::with_algorithm(HashAlgorithm::Sha256, hmac_secret)
    }

    /// `algorithm`, HMAC-keyed with `hmac_secret` unless it is `None` or
    /// empty (the key is the secret's UTF-8 bytes).
    pub fn with_algorithm(algorithm: HashAlgorithm, hmac_secret: Option<&str>) -> Self {
        Self {
            algorithm,
            hmac_key: hmac_secret
                .filter(|s| !s.is_empty())
                .map(|s| hmac::Key::new(algorithm.hmac(), s.as_bytes())),
        }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// The hex hash stored for `token` now.
    pub fn hash(&self, token: &str) -> String {
        match &self.hmac_key {
            Some(key) => hex::encode(hmac::sign(key, token.as_bytes()).as_ref()),
            None => self.plain_hash(token),
        }
    }

    /// The hex digest without a key (what the bot stored before a key was
    /// set).
    pub fn plain_hash(&self, token: &str) -> String {
        hex::encode(ring::digest::digest(
            self.algorithm.digest(),
            token.as_bytes(),
        ))
    }

    /// The hashes under which `token` may be stored: [`Self::hash`], then
    /// the legacy plain digest when a key is set.
    pub fn accepted_hashes(&self, token: &str) -> Vec<String> {
        let mut out = vec![self.hash(token)];
        if self.hmac_key.is_some() {
            out.push(self.plain_hash(token));
        }
        out
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

/// The rows stored under any of `hashes` (one query), whatever their state.
pub async fn find_by_hashes(
    conn: &mut AsyncPgConnection,
    hashes: &[String],
) -> Result<Vec<ApiToken>, StorageError> {
    Ok(t::web_api_tokens
        .filter(t::token_hash.eq_any(hashes))
        .select(ApiToken::as_select())
        .load(conn)
        .await?)
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
            None => self.lookup(token, &hash).await?,
        };
        if let Some(p) = &principal {
            self.inner
                .last_used
                .lock()
                .insert(p.token_id, (Utc::now(), ip.map(|s| truncate(s, 64))));
        }
        Ok(principal)
    }

    /// Asks the database for the row of `token`, whose current hash is
    /// `hash` (the cache key): one query for every hash it may be stored
    /// under (the legacy plain digest too when an HMAC key is set), the
    /// current hash preferred, as in the bot.
    async fn lookup(&self, token: &str, hash: &str) -> Result<Option<Principal>, StorageError> {
        let hashes = self.inner.hasher.accepted_hashes(token);
        let mut conn = self.inner.pool.get().await?;
        let rows = find_by_hashes(&mut conn, &hashes).await?;
        drop(conn);
        let now = Utc::now();
        // The database matched on the hash; compare again in constant time
        // so no code path branches on a partial match.
        let row = hashes.iter().find_map(|h| {
            rows.iter()
                .find(|r| constant_time_eq::constant_time_eq(r.token_hash.as_bytes(), h.as_bytes()))
        });
        let principal = row.and_then(|r| {
            r.is_usable(now).then(|| Principal {
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
    fn every_algorithm_matches_python() {
        // Vectors from python3: hashlib.<alg>(token.encode()).hexdigest() and
        // hmac.new(key.encode(), token.encode(), "<alg>").hexdigest() with
        // token = "bdl_tokén-1", key = "ключ-k3y".
        let token = "bdl_tokén-1";
        let key = "ключ-k3y";
        let cases = [
            (
                "sha256",
                "7c3de1fac40454ea1282d6b70dca078f81e112c2789f53b261834de63b5f90d5",
                "0c0756bb9086a6a5f410dc20c6021b9493941327017b0d2c0f218e7f1bdc72fc",
            ),
            (
                "SHA384",
                "a10ab81fd79835f1eef614663fb80ed909f798b06a08201525d9a11aa6ffa669fed866b898072ff0127f23a1cb935a86",
                "504ded785975cf513b8064338844d2a2111573e55067652e99100293df2b4e3e4998ac3c63d84dfaaabdb9173ae3c4f2",
            ),
            (
                "Sha512",
                "82dd77acef41efa8b3f2d4f95b046d6b0c4fed85c18b561cc79fa0b23b247af805763563ec52680fda1658bc41170af5200759a2cf24649b1ef132bb3f598413",
                "4c663ad9c4e34208979170a44ccdad7f4ee9f2b1d804d21fc2dce3ef23c1c48bb1368622198ada56758712401cf18a92b238d0220a760217b3d94efb371da2c9",
            ),
        ];
        for (name, plain, keyed) in cases {
            let alg: HashAlgorithm = name.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(alg.as_str(), name.to_ascii_lowercase());
            let unkeyed = TokenHasher::with_algorithm(alg, None);
            assert_eq!(unkeyed.hash(token), plain, "{name}");
            assert_eq!(unkeyed.accepted_hashes(token), vec![plain.to_owned()]);
            let hmac = TokenHasher::with_algorithm(alg, Some(key));
            assert_eq!(hmac.hash(token), keyed, "{name} hmac");
            assert_eq!(hmac.plain_hash(token), plain);
            // With a key, the legacy plain digest is accepted after the keyed one.
            assert_eq!(
                hmac.accepted_hashes(token),
                vec![keyed.to_owned(), plain.to_owned()]
            );
            // An empty key means no key, as in the bot.
            assert_eq!(
                TokenHasher::with_algorithm(alg, Some("")).hash(token),
                plain
            );
        }
        for bad in ["md5", "sha1", "", "sha-256"] {
            let err = bad.parse::<HashAlgorithm>().err().unwrap_or_default();
            assert!(err.contains("sha256, sha384 or sha512"), "{bad}: {err}");
        }
        assert_eq!(HashAlgorithm::default(), HashAlgorithm::Sha256);
        let debug = format!(
            "{:?}",
            TokenHasher::with_algorithm(HashAlgorithm::Sha512, Some(key))
        );
        assert!(!debug.contains(key) && debug.contains("Sha512"), "{debug}");
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
