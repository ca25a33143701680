//! The Lua scripts a node runs: each does in one atomic step what a lock needs checked and
//! written together.

use std::sync::LazyLock;

use redis::Script;

#[cfg(doc)]
use super::FleetGrace;

/// Compare-and-expire: only while the key still holds our token, deletes it (`ARGV[2]` is 0) or
/// sets it to expire in `ARGV[2]` milliseconds; returns 1 when the key was ours. Release, renewal
/// and `min_hold` are all this one script, so none of them ever touches a lock that someone else
/// took after ours ran out.
pub(super) static EXPIRE_IF_OURS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == "0" then
    return redis.call("DEL", KEYS[1])
end
return redis.call("PEXPIRE", KEYS[1], ARGV[2])"#,
    )
});

/// The done marker of a period (`slot`): only while the lock `KEYS[1]` still holds our token,
/// sets the marker `KEYS[2]` to it, expiring in `ARGV[2]` milliseconds; returns 1 when it did.
pub(super) static MARK_DONE_IF_OURS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
return 1"#,
    )
});

/// Each node's epoch (see [`FleetGrace`]): written, when the node has none, as `ARGV[1]` (a random
/// value) followed by `:` and the node's own time in microseconds; returns the epoch and the
/// node's time now, so that every client can tell how long ago it was written.
pub(super) static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local time = redis.call("TIME")
local now = time[1] .. string.format("%06d", tonumber(time[2]))
redis.call("SET", KEYS[1], ARGV[1] .. ":" .. now, "NX")
return {redis.call("GET", KEYS[1]), now}"#,
    )
});

/// A machine's announcement of its `Config::max_ttl` (`ARGV[1]`, milliseconds) at `KEYS[1]`, and of
/// how many nodes it locks on (`ARGV[3]`; 0 announces none) at `KEYS[2]` (the fewest announced) and
/// `KEYS[3]` (the most). Each is kept, with an expiry of `ARGV[2]` milliseconds, when it is at
/// least the largest there (at most the fewest, for `KEYS[2]`); 0 is never kept (`max_ttl` is at
/// least a millisecond). Returns the largest `max_ttl`, the
/// fewest nodes and the most nodes announced (0 when none are). Each announcer renews its own every
/// second, so an announcement lasts as long as its machine may hold a lock of that ttl, and a
/// little longer.
pub(super) static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local function keep(key, ours, wins)
    local there = tonumber(redis.call("GET", key) or "")
    if ours > 0 and (there == nil or wins(ours, there)) then
        redis.call("SET", key, ours, "PX", ARGV[2])
        return ours
    end
    return there or 0
end
local function at_least(ours, there) return ours >= there end
local function at_most(ours, there) return ours <= there end
local nodes = tonumber(ARGV[3])
return {
    keep(KEYS[1], tonumber(ARGV[1]), at_least),
    keep(KEYS[2], nodes, at_most),
    keep(KEYS[3], nodes, at_least),
}"#,
    )
});

/// Renewal of several leases at once: for each lock key `KEYS[i]` (i from 1 to n, with
/// `n = #ARGV // 2`), while it holds the token `ARGV[i]`, sets it to expire in `ARGV[n + i]`
/// milliseconds (1); where it is absent (a node that missed our SET, or lost it), puts the token
/// back with that expiry (2), so that a lease taken on a bare quorum regains its fault tolerance;
/// where another token holds it, touches nothing (0). Returns those digits in the keys' order, as
/// one string: a thousand leases' answers are then one value for the client to read, not a
/// thousand.
/// With an epoch key (`KEYS[n + 1]`), returns -1 and touches nothing when the node no longer has
/// the epoch `ARGV[2n + 1]` (see [`FleetGrace`]).
pub(super) static EXTEND_OR_REPAIR_EACH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local n = math.floor(#ARGV / 2)
if #KEYS > n and redis.call("GET", KEYS[n + 1]) ~= ARGV[2 * n + 1] then
    return -1
end
local renewed = {}
for i = 1, n do
    local value = redis.call("GET", KEYS[i])
    if value == ARGV[i] then
        redis.call("PEXPIRE", KEYS[i], ARGV[n + i])
        renewed[i] = "1"
    elseif not value then
        redis.call("SET", KEYS[i], ARGV[i], "PX", ARGV[n + i])
        renewed[i] = "2"
    else
        renewed[i] = "0"
    end
end
return table.concat(renewed)"#,
    )
});

/// The scripts that can put a key back (a fenced `SET`, renewal's repair), which are sent only
/// once (see `Node::run_script_once`), and so are loaded on every connection when it opens.
pub(super) static ONCE_ONLY_SCRIPTS: [&LazyLock<Script>; 2] =
    [&SET_NX_READ_FENCE, &EXTEND_OR_REPAIR_EACH];

/// `SET key token NX PX ttl` that also reads the key's fencing counter when it grants: the
/// counter read and the grant are one atomic step, which the fencing argument relies on. Returns
/// whether the node still has the epoch `ARGV[3]` at `KEYS[3]` (when given; see [`FleetGrace`]),
/// the counter as a decimal string ("0" when there is none yet) or nil when the key was already
/// set, and the node's `TIME` (seconds, microseconds). Counters stay strings: Lua numbers are
/// doubles, exact only up to 2^53.
pub(super) static SET_NX_READ_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local time = redis.call("TIME")
if KEYS[3] and redis.call("GET", KEYS[3]) ~= ARGV[3] then
    return {0, false, time[1], time[2]}
end
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return {1, false, time[1], time[2]}
end
return {1, redis.call("GET", KEYS[2]) or "0", time[1], time[2]}"#,
    )
});

/// Raises the key's fencing counter to `ARGV[2]`, only while the lock still holds our token;
/// returns 1 when the lock was ours. Counters are compared as decimal strings without leading
/// zeros (longer is larger, then by characters), so they stay exact over all of `u64`.
pub(super) static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
local current = redis.call("GET", KEYS[2]) or "0"
local raised = ARGV[2]
if #current < #raised or (#current == #raised and current < raised) then
    redis.call("SET", KEYS[2], raised)
end
return 1"#,
    )
});
