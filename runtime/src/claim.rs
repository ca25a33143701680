//! What an acquisition writes on the nodes: the lock's key, and its own token as the key's value.

use std::fmt;
use std::sync::Arc;

/// A lock's key and one acquisition's token, which every command about the lock names together
/// (the vote, the fence, the renewal, the release): kept in one allocation, since renewal reads
/// both for every lease held, every round.
#[derive(Clone)]
pub(crate) struct Claim {
    /// The key, then the token.
    text: Arc<str>,
    key_len: usize,
}

impl Claim {
    pub(crate) fn new(key: &str, token: &str) -> Claim {
        let mut text = String::with_capacity(key.len() + token.len());
        text.push_str(key);
        text.push_str(token);
        Claim {
            text: Arc::from(text),
            key_len: key.len(),
        }
    }

    /// The Redis key, with the runtime's prefix.
    pub(crate) fn key(&self) -> &str {
        &self.text[..self.key_len]
    }

    /// The value of the key while the lock is ours.
    pub(crate) fn token(&self) -> &str {
        &self.text[self.key_len..]
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("key", &self.key())
            .field("token", &self.token())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_gives_back_its_key_and_token_whatever_they_hold() {
        for (key, token) in [
            (
                "singleton:lock:daily-email",
                "0123456789abcdef0123456789abcdef host:1",
            ),
            ("", "token"),
            ("key with spaces and ünïcödé", ""),
        ] {
            let claim = Claim::new(key, token);
            assert_eq!((claim.key(), claim.token()), (key, token));
        }
    }
}
