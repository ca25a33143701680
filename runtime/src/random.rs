//! Lock tokens and random pauses, from the OS random source.
//!
//! One system call each: a pool of random bytes kept in the process would be copied by a
//! `fork`, and two processes would then hand out the same tokens.

use std::time::Duration;

use crate::Error;

/// Bytes of OS randomness in a lock token: 128 bits, so that no two acquisitions, anywhere,
/// ever share a token.
const TOKEN_BYTES: usize = 16;

fn fill(bytes: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(bytes)
        .map_err(|err| Error::Internal(format!("the OS random source failed: {err}")))
}

/// A fresh lock token: 32 hex digits, a space, and `holder_id`, so that whoever reads the key
/// can tell who holds it (the random part alone makes it unique).
pub(crate) fn token(holder_id: &str) -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    fill(&mut bytes)?;
    Ok(format!("{:032x} {holder_id}", u128::from_be_bytes(bytes)))
}

/// The holder id in a lock's value written by [`token`]; `None` for a value that is not a
/// token of ours (an older version's, or another program's).
pub(crate) fn holder_of(value: &str) -> Option<&str> {
    let (random, holder) = value.split_once(' ')?;
    (random.len() == TOKEN_BYTES * 2 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(holder)
}

/// A random pause in `[0, window)`.
pub(crate) fn pause_below(window: Duration) -> Result<Duration, Error> {
    let mut bytes = [0u8; 8];
    fill(&mut bytes)?;
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
    Ok(Duration::from_nanos(u64::from_le_bytes(bytes) % nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_128_bit_hex_then_the_holder() {
        let a = token("web-3:42").unwrap();
        let b = token("web-3:42").unwrap();
        let (random, holder) = a.split_once(' ').unwrap();
        assert_eq!(random.len(), 32);
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(holder, "web-3:42");
        assert_eq!(holder_of(&a), Some("web-3:42"));
        assert_ne!(a, b);
        assert_eq!(holder_of("not ours"), None);
        assert_eq!(holder_of("0123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn pauses_stay_below_their_window() {
        let window = Duration::from_millis(3);
        assert!((0..100).all(|_| pause_below(window).unwrap() < window));
        assert_eq!(pause_below(Duration::ZERO).unwrap(), Duration::ZERO);
    }
}
