//! Per-process verdict cache. Keys are SHA-256 of (login user, token): the token itself is never
//! stored. Each entry carries its own lifetime (positive: min(cache_ttl, token exp); negative: the
//! short negative TTL), checked on every read; the entry count is bounded (quick_cache evicts the
//! least useful entries, expired or not, when full); concurrent misses for one key share one provider
//! request (quick_cache's placeholder guards). Temporary failures are never cached.
//!
//! An acceptance may outlive its freshness by a "stale" window (`stale_if_error_secs`, never past the
//! token's exp): once stale it is checked again, and used only if the provider cannot answer.

use crate::claims::Identity;
use crate::clock::Clock;
use crate::errors::{Rejection, Unavailable};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Key = [u8; 32];

/// A cached verdict and how long it may be used.
#[derive(Debug, Clone)]
pub struct Entry {
    pub verdict: Result<Identity, Rejection>,
    /// How long the verdict is used without asking again.
    pub ttl: Duration,
    /// How much longer (after `ttl`) an acceptance may stand in for a provider that cannot answer.
    pub stale: Duration,
    pub created: Instant,
}

impl Entry {
    pub fn new(verdict: Result<Identity, Rejection>, ttl: Duration, stale: Duration, created: Instant) -> Entry {
        let stale = if verdict.is_ok() { stale } else { Duration::ZERO };
        Entry { verdict, ttl, stale, created }
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < self.ttl
    }

    /// Past its freshness and its stale window: as if it were not there.
    fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= self.ttl + self.stale
    }

    fn worth_keeping(&self) -> bool {
        !(self.ttl + self.stale).is_zero()
    }
}

pub struct VerdictCache {
    inner: Option<quick_cache::sync::Cache<Key, Arc<Entry>>>,
    clock: Clock,
}

/// Where a verdict came from, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Provider,
    /// A stale acceptance used because the provider could not answer (`stale_if_error_secs`).
    Stale,
}

impl VerdictCache {
    /// `max_entries = 0` turns caching off.
    pub fn new(max_entries: u64, clock: Clock) -> Self {
        let inner = (max_entries > 0).then(|| quick_cache::sync::Cache::new(max_entries as usize));
        VerdictCache { inner, clock }
    }

    pub fn key(user: &str, token: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(token);
        h.finalize().into()
    }

    /// The key of a token checked with no login user (the daemon's introspection). Domain-separated
    /// from [`VerdictCache::key`]: its hash input starts with a user-name length no name can have
    /// (2^64 - 1), so the two inputs never coincide and a verdict for the token alone is never served
    /// to a (user, token) login, nor the other way round.
    pub fn token_key(token: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update(u64::MAX.to_be_bytes());
        h.update(b"token-only\0");
        h.update(token);
        h.finalize().into()
    }

    /// The cached verdict for `key`, or the one `load` computes (shared by concurrent callers).
    /// A stale acceptance is checked again; if that fails for lack of an answer, the stale one is used
    /// and the reason returned with it.
    pub async fn get_or_load<F>(
        &self,
        key: Key,
        load: F,
    ) -> Result<(Arc<Entry>, Source, Option<Unavailable>), Unavailable>
    where
        F: Future<Output = Result<Entry, Unavailable>>,
    {
        let Some(cache) = &self.inner else {
            return load.await.map(|e| (Arc::new(e), Source::Provider, None));
        };
        loop {
            match cache.get_value_or_guard_async(&key).await {
                Ok(old) if old.is_expired(self.clock.now()) => {
                    cache.remove_if(&key, |v| Arc::ptr_eq(v, &old));
                }
                Ok(fresh) if fresh.is_fresh(self.clock.now()) => return Ok((fresh, Source::Cache, None)),
                Ok(old) => {
                    return match load.await {
                        Ok(new) => {
                            let new = Arc::new(new);
                            if new.worth_keeping() {
                                cache.insert(key, new.clone());
                            } else {
                                cache.remove(&key);
                            }
                            Ok((new, Source::Provider, None))
                        }
                        Err(why) => Ok((old, Source::Stale, Some(why))),
                    };
                }
                // A miss: this caller loads; others asking for the same key meanwhile wait for it.
                // If the load fails, the guard is dropped unfilled and a waiter loads in its turn.
                Err(guard) => {
                    let new = Arc::new(load.await?);
                    if new.worth_keeping() {
                        let _ = guard.insert(new.clone());
                    }
                    return Ok((new, Source::Provider, None));
                }
            }
        }
    }

    /// A fresh entry for `key`, if there is one (no loading, no waiting).
    pub fn fresh(&self, key: &Key) -> Option<Arc<Entry>> {
        self.inner.as_ref()?.get(key).filter(|e| e.is_fresh(self.clock.now()))
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }
    fn ok(clock: &Clock, ttl: u64) -> Entry {
        stale_ok(clock, ttl, 0)
    }
    fn stale_ok(clock: &Clock, ttl: u64, stale: u64) -> Entry {
        let id = Identity { expires_at: None, fields: vec![], introspection: None };
        Entry::new(Ok(id), Duration::from_millis(ttl), Duration::from_millis(stale), clock.now())
    }

    /// A load that takes 30 ms and counts itself; with `first_fails`, the first one finds the provider down.
    async fn counted_load(clock: &Clock, loads: &AtomicUsize, first_fails: bool) -> Result<Entry, Unavailable> {
        let n = loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if first_fails && n == 0 {
            Err(Unavailable::Internal("down".into()))
        } else {
            Ok(ok(clock, 60_000))
        }
    }

    #[test]
    fn key_depends_on_user_and_token_and_is_not_the_token() {
        let k = VerdictCache::key("alice", b"tok");
        assert_ne!(k, VerdictCache::key("bob", b"tok"));
        assert_ne!(k, VerdictCache::key("alice", b"tok2"));
        assert_ne!(VerdictCache::key("ab", b"c"), VerdictCache::key("a", b"bc"));
    }

    #[test]
    fn a_token_only_key_never_equals_a_user_and_token_key() {
        let t = b"tok";
        let k = VerdictCache::token_key(t);
        assert_ne!(k, VerdictCache::token_key(b"tok2"));
        for user in ["", "a", "token-only", "\u{0}"] {
            assert_ne!(k, VerdictCache::key(user, t), "{user:?}");
        }
        // The bytes a user name would need to imitate the token-only prefix: not a possible length.
        let mut forged = b"token-only\0".to_vec();
        forged.extend_from_slice(t);
        assert_ne!(k, VerdictCache::key("", &forged));
    }

    #[test]
    fn second_lookup_is_served_from_cache() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let k = VerdictCache::key("a", b"t");
            let (_, s1, _) = c.get_or_load(k, async { Ok(ok(&clock, 60_000)) }).await.unwrap();
            let (_, s2, _) = c.get_or_load(k, async { panic!("must not load") }).await.unwrap();
            assert_eq!((s1, s2), (Source::Provider, Source::Cache));
        });
    }

    #[test]
    fn entry_expires_after_its_own_ttl() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let k = VerdictCache::key("a", b"t");
            c.get_or_load(k, async { Ok(ok(&clock, 50)) }).await.unwrap();
            clock.advance(Duration::from_millis(50));
            let (_, s, _) = c.get_or_load(k, async { Ok(ok(&clock, 50)) }).await.unwrap();
            assert_eq!(s, Source::Provider);
        });
    }

    #[test]
    fn temporary_failures_are_not_cached() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let k = VerdictCache::key("a", b"t");
            let e = c.get_or_load(k, async { Err(Unavailable::Internal("down".into())) }).await;
            assert!(e.is_err());
            let (_, s, _) = c.get_or_load(k, async { Ok(ok(&clock, 60_000)) }).await.unwrap();
            assert_eq!(s, Source::Provider);
        });
    }

    #[test]
    fn concurrent_misses_for_one_key_make_one_load() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let loads = AtomicUsize::new(0);
            let k = VerdictCache::key("a", b"t");
            let one = || async { c.get_or_load(k, counted_load(&clock, &loads, false)).await.unwrap() };
            let _ = tokio::join!(one(), one(), one(), one());
            assert_eq!(loads.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn a_failed_load_lets_a_waiting_caller_load_again() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let loads = AtomicUsize::new(0);
            let k = VerdictCache::key("a", b"t");
            let one = || async { c.get_or_load(k, counted_load(&clock, &loads, true)).await.map(|(_, s, _)| s) };
            let (first, second) = tokio::join!(one(), one());
            assert!(first.is_err());
            assert_eq!(second, Ok(Source::Provider));
            assert_eq!(loads.load(Ordering::SeqCst), 2);
            assert_eq!(c.get_or_load(k, async { panic!("cached") }).await.unwrap().1, Source::Cache);
        });
    }

    #[test]
    fn stale_acceptance_is_used_only_when_the_provider_cannot_answer() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(10, clock.clone());
            let k = VerdictCache::key("a", b"t");
            c.get_or_load(k, async { Ok(stale_ok(&clock, 30, 60_000)) }).await.unwrap();
            clock.advance(Duration::from_millis(30));
            let (_, s, why) = c.get_or_load(k, async { Err(Unavailable::Internal("down".into())) }).await.unwrap();
            assert_eq!(s, Source::Stale);
            assert_eq!(why, Some(Unavailable::Internal("down".into())));
            let (_, s, _) = c.get_or_load(k, async { Ok(stale_ok(&clock, 60_000, 0)) }).await.unwrap();
            assert_eq!(s, Source::Provider, "a stale entry is checked again when the provider answers");
            let (_, s, _) = c.get_or_load(k, async { panic!("fresh again") }).await.unwrap();
            assert_eq!(s, Source::Cache);
        });
    }

    #[test]
    fn rejections_get_no_stale_window() {
        let e = Entry::new(Err(Rejection::Inactive), Duration::from_secs(1), Duration::from_secs(100), Instant::now());
        assert_eq!(e.stale, Duration::ZERO);
    }

    #[test]
    fn entry_count_is_bounded() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(100, clock.clone());
            for i in 0..1000u32 {
                c.get_or_load(VerdictCache::key("a", &i.to_be_bytes()), async { Ok(ok(&clock, 60_000)) })
                    .await
                    .unwrap();
            }
            assert!(c.entry_count() <= 100, "{}", c.entry_count());
        });
    }

    #[test]
    fn zero_capacity_disables_caching() {
        rt().block_on(async {
            let clock = Clock::manual();
            let c = VerdictCache::new(0, clock.clone());
            let k = VerdictCache::key("a", b"t");
            c.get_or_load(k, async { Ok(ok(&clock, 60_000)) }).await.unwrap();
            let (_, s, _) = c.get_or_load(k, async { Ok(ok(&clock, 60_000)) }).await.unwrap();
            assert_eq!(s, Source::Provider);
        });
    }
}
