//! The Redis keys the crate writes: each kind in a namespace of its own under the key prefix,
//! so that no lock key, whatever the user's key, can ever be a done marker or a fencing counter.
//!
//! With the default prefix, the job `daily-email` has the lock `singleton:lock:daily-email`, the
//! done markers `singleton:done:daily-email:<period>` and the fencing counter
//! `singleton:fence:daily-email`; the machines' longest ttl is announced at `singleton:max-ttl`,
//! the fewest and the most nodes they lock on at `singleton:nodes-fewest` and
//! `singleton:nodes-most`, and each node's epoch is at `singleton:epoch`.
//! The kinds differ right after the prefix, and a marker's period (digits only) is what follows
//! its last `:`, so no two keys of any kinds or jobs are the same. (Within one prefix: two
//! applications on the same nodes need prefixes of which neither begins the other.)

/// The lock of `key`.
pub(crate) fn lock(prefix: &str, key: &str) -> String {
    format!("{prefix}lock:{key}")
}

/// The done marker of `key` for the period numbered `period` (see `slot::Period`).
pub(crate) fn done_marker(prefix: &str, key: &str, period: u64) -> String {
    format!("{prefix}done:{key}:{period}")
}

/// Where the machines using the nodes announce their `Config::max_ttl` (see
/// `node::FleetGrace`).
pub(crate) fn max_ttl(prefix: &str) -> String {
    format!("{prefix}max-ttl")
}

/// Where the machines using the nodes announce the fewest and the most nodes any of them locks on
/// (see `node::FleetGrace`).
pub(crate) fn node_counts(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}nodes-fewest"),
        format!("{prefix}nodes-most"),
    ]
}

/// Each node's epoch: a random value that tells a node that lost its data (see
/// `node::FleetGrace`).
pub(crate) fn epoch(prefix: &str) -> String {
    format!("{prefix}epoch")
}

/// The fencing counter of `key`.
pub(crate) fn fence(prefix: &str, key: &str) -> String {
    format!("{prefix}fence:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_of_one_kind_is_a_key_of_another() {
        let prefix = "singleton:";
        // A user key spelled like each other kind of key still lands in the lock namespace.
        assert_eq!(lock(prefix, "done:job:7"), "singleton:lock:done:job:7");
        assert_ne!(lock(prefix, "done:job:7"), done_marker(prefix, "job", 7));
        assert_ne!(lock(prefix, "fence:job"), fence(prefix, "job"));
        // Markers of different jobs and periods never meet: the period is after the last `:`.
        assert_ne!(done_marker(prefix, "a:1", 2), done_marker(prefix, "a", 12));
        assert_ne!(done_marker(prefix, "a:1", 2), done_marker(prefix, "a", 1));
    }
}
