//! The `memory://` backend: the commands a lock sends to a Redis node, answered in process.
//!
//! For tests and single-process programs only: it locks nothing across processes. Every runtime
//! in the process whose URL names the same store (`memory://`, or `memory://name`) shares it, so
//! several runtimes in one test contend as several machines would.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Renewed;

/// The URL scheme that selects this backend.
pub(crate) const SCHEME: &str = "memory://";

/// Expired entries are swept from a store once it holds this many, so that done markers and
/// abandoned locks do not pile up in a long-running process.
const SWEEP_ABOVE: usize = 1024;

/// The stores of this process, by URL.
static STORES: LazyLock<Mutex<HashMap<String, Arc<Store>>>> = LazyLock::new(Default::default);

/// One in-process "node": keys with values and optional expiries.
#[derive(Default)]
pub(crate) struct Store {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    value: String,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The store that `url` (starting with [`SCHEME`]) names, created on first use.
pub(crate) fn store(url: &str) -> Arc<Store> {
    let mut stores = STORES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores.entry(url.to_owned()).or_default().clone()
}

impl Store {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live value of `key`, dropping it if it has expired.
    fn live_value<'a>(
        entries: &'a mut HashMap<String, Entry>,
        key: &str,
        now: Instant,
    ) -> Option<&'a mut Entry> {
        if entries.get(key).is_some_and(|entry| !entry.live(now)) {
            entries.remove(key);
        }
        entries.get_mut(key)
    }

    fn insert(
        entries: &mut HashMap<String, Entry>,
        key: &str,
        value: String,
        expires_at: Option<Instant>,
        now: Instant,
    ) {
        if entries.len() > SWEEP_ABOVE {
            entries.retain(|_, entry| entry.live(now));
        }
        entries.insert(key.to_owned(), Entry { value, expires_at });
    }

    /// `SET key token NX PX ttl`.
    pub(crate) fn set_nx(&self, key: &str, token: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        if Self::live_value(&mut entries, key, now).is_some() {
            return false;
        }
        Self::insert(&mut entries, key, token.to_owned(), Some(now + ttl), now);
        true
    }

    /// `SET NX` that also reads the fencing counter when it grants, as one step.
    pub(crate) fn set_nx_reading_fence(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut entries = self.entries();
        if Self::live_value(&mut entries, key, now).is_some() {
            return None;
        }
        Self::insert(&mut entries, key, token.to_owned(), Some(now + ttl), now);
        let counter = Self::live_value(&mut entries, fence_key, now)
            .and_then(|entry| entry.value.parse().ok());
        Some(counter.unwrap_or(0))
    }

    /// Raises the fencing counter to `fence` while `key` holds `token`.
    pub(crate) fn raise_fence(&self, key: &str, fence_key: &str, token: &str, fence: u64) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        if Self::live_value(&mut entries, key, now).is_none_or(|entry| entry.value != token) {
            return false;
        }
        let current: u64 = Self::live_value(&mut entries, fence_key, now)
            .and_then(|entry| entry.value.parse().ok())
            .unwrap_or(0);
        if current < fence {
            Self::insert(&mut entries, fence_key, fence.to_string(), None, now);
        }
        true
    }

    /// Only while `key` holds `token`: deletes it (`keep` is zero) or sets it to expire `keep`
    /// from now; whether it was ours.
    pub(crate) fn expire_if_ours(&self, key: &str, token: &str, keep: Duration) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        match Self::live_value(&mut entries, key, now) {
            Some(entry) if entry.value == token => {
                if keep.is_zero() {
                    entries.remove(key);
                } else {
                    entry.expires_at = Some(now + keep);
                }
                true
            }
            _ => false,
        }
    }

    /// Renewal, as the `EXTEND_OR_REPAIR` script does it: extends `key` to expire `keep` from
    /// now while it holds `token`, puts `token` back where the key is absent, and leaves another
    /// token alone.
    pub(crate) fn extend_or_repair(&self, key: &str, token: &str, keep: Duration) -> Renewed {
        let now = Instant::now();
        let mut entries = self.entries();
        match Self::live_value(&mut entries, key, now) {
            Some(entry) if entry.value == token => {
                entry.expires_at = Some(now + keep);
                Renewed::Kept
            }
            Some(_) => Renewed::NotOurs,
            None => {
                Self::insert(&mut entries, key, token.to_owned(), Some(now + keep), now);
                Renewed::Repaired
            }
        }
    }

    /// `GET key`.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        Self::live_value(&mut self.entries(), key, now).map(|entry| entry.value.clone())
    }

    /// `GET key` and `PTTL key`: the live value and how long until it expires (`None`: never).
    pub(crate) fn read(&self, key: &str) -> Option<(String, Option<Duration>)> {
        let now = Instant::now();
        Self::live_value(&mut self.entries(), key, now).map(|entry| {
            let left = entry.expires_at.map(|at| at.saturating_duration_since(now));
            (entry.value.clone(), left)
        })
    }

    /// `GET key` then `DEL key`.
    pub(crate) fn delete(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.entries();
        let value = Self::live_value(&mut entries, key, now).map(|entry| entry.value.clone());
        entries.remove(key);
        value
    }

    /// The live keys matching `pattern`, a glob with `*` and `?` (Redis globs also know `[...]`
    /// and `\`, which this store takes literally).
    pub(crate) fn keys_matching(&self, pattern: &str) -> Vec<String> {
        let now = Instant::now();
        let pattern: Vec<char> = pattern.chars().collect();
        self.entries()
            .iter()
            .filter(|(key, entry)| entry.live(now) && glob_matches(&pattern, key))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The done marker, as the `MARK_DONE_IF_OURS` script writes it: `marker` set to `token`
    /// for `expiry`, only while `lock_key` holds `token`.
    pub(crate) fn mark_done_if_ours(
        &self,
        lock_key: &str,
        token: &str,
        marker: &str,
        expiry: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        if Self::live_value(&mut entries, lock_key, now).is_none_or(|entry| entry.value != token) {
            return false;
        }
        Self::insert(
            &mut entries,
            marker,
            token.to_owned(),
            Some(now + expiry),
            now,
        );
        true
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters, `?` any one, and `\\`
/// makes the next character stand for itself.
fn glob_matches(pattern: &[char], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    // Escapes resolved first: (character, whether it is a wildcard).
    let mut tokens = Vec::with_capacity(pattern.len());
    let mut chars = pattern.iter();
    while let Some(&c) = chars.next() {
        match c {
            '\\' => tokens.push((chars.next().copied().unwrap_or('\\'), false)),
            '*' | '?' => tokens.push((c, true)),
            _ => tokens.push((c, false)),
        }
    }
    let pattern = tokens;
    // The classic two-pointer walk: on a mismatch, let the last `*` swallow one more character.
    let (mut p, mut t, mut star, mut resume) = (0, 0, None, 0);
    while t < text.len() {
        match pattern.get(p) {
            Some(('*', true)) => {
                star = Some(p);
                resume = t;
                p += 1;
            }
            Some(&(c, wild)) if (wild && c == '?') || (!wild && c == text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some(at) => {
                    p = at + 1;
                    resume += 1;
                    t = resume;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&token| token == ('*', true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_does_for_star_and_question_mark() {
        let matches =
            |pattern: &str, text: &str| glob_matches(&pattern.chars().collect::<Vec<_>>(), text);
        assert!(matches("*", ""));
        assert!(matches("lock:*", "lock:invoice:42"));
        assert!(matches("lock:invoice:?2", "lock:invoice:42"));
        assert!(matches("*:42", "lock:invoice:42"));
        assert!(matches("l*k:*e:*", "lock:invoice:42"));
        assert!(!matches("lock:?", "lock:42"));
        assert!(!matches("done:*", "lock:invoice"));
        assert!(!matches("lock", "lock:x"));
        assert!(matches("a\\*b:*", "a*b:1"));
        assert!(!matches("a\\*b:*", "axb:1"));
    }

    #[test]
    fn it_answers_like_the_scripts() {
        let store = Store::default();
        let ttl = Duration::from_secs(10);
        assert!(store.set_nx("k", "a", ttl));
        assert!(!store.set_nx("k", "b", ttl));
        assert!(
            !store.expire_if_ours("k", "b", Duration::ZERO),
            "not ours, not deleted"
        );
        assert!(store.expire_if_ours("k", "a", Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.get("k"), None, "expired");
        assert_eq!(
            store.set_nx_reading_fence("k", "k:fence", "c", ttl),
            Some(0)
        );
        assert!(store.raise_fence("k", "k:fence", "c", 7));
        assert!(
            !store.raise_fence("k", "k:fence", "d", 9),
            "only the holder raises it"
        );
        assert!(store.expire_if_ours("k", "c", Duration::ZERO));
        assert_eq!(
            store.set_nx_reading_fence("k", "k:fence", "e", ttl),
            Some(7)
        );
        assert_eq!(store.extend_or_repair("k", "e", ttl), Renewed::Kept);
        assert_eq!(store.extend_or_repair("k", "f", ttl), Renewed::NotOurs);
        assert!(store.expire_if_ours("k", "e", Duration::ZERO));
        assert_eq!(store.extend_or_repair("k", "f", ttl), Renewed::Repaired);
        assert_eq!(store.get("k").as_deref(), Some("f"));
    }

    #[test]
    fn stores_are_shared_by_url() {
        assert!(Arc::ptr_eq(
            &store("memory://shared-test"),
            &store("memory://shared-test")
        ));
        assert!(!Arc::ptr_eq(&store("memory://one"), &store("memory://two")));
    }
}
