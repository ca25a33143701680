//! Least privilege: a Redis ACL user limited to the key prefix and to the commands the crate
//! sends can do everything the crate does (lock, renew, release, `min_hold`, `slot`, `fencing`,
//! and the restart check's `INFO`), cannot touch any other key, and needs every command of its
//! line: without one, calls fail with `Error::Refused`, which names the refused command. An
//! operator (`inspect`, `list`, `health`) needs `+pttl +scan +ping` besides.
//!
//! The ACL line, as the README gives it:
//!
//! ```text
//! ACL SETUSER singleton on >PASSWORD resetkeys ~singleton:* resetchannels -@all +get +set +del +pexpire +evalsha +script|load +info +time
//! ```

mod common;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Options, Runtime};
use cluster_singleton::{Error, Outcome, Skip};
use cluster_singleton_testkit::Cluster;
use common::{eventually, PROMPTLY};

const USER: &str = "singleton";
const PASSWORD: &str = "acl-pa55word";

/// What the user may do, after `on >PASSWORD`: keys under the default prefix only, no pub/sub,
/// and only the commands the crate sends. Scripts run their `redis.call`s with the caller's
/// permissions, so the commands inside the scripts (`GET`, `SET`, `DEL`, `PEXPIRE`) are here too;
/// `SCRIPT LOAD` is what redis-rs sends when a node does not have a script yet (after a restart
/// or `SCRIPT FLUSH`), `INFO` is the restart check's, and `TIME` the epoch script's (it writes
/// the node's time with the epoch).
const LEAST_PRIVILEGE: [&str; 12] = [
    "resetkeys",
    "~singleton:*",
    "resetchannels",
    "-@all",
    "+get",
    "+set",
    "+del",
    "+pexpire",
    "+evalsha",
    "+script|load",
    "+info",
    "+time",
];

/// The longest ttl of these tests, and so the restart grace: the runtime reads every node's
/// uptime with `INFO`, as it does by default, and the tests wait until the node is older.
const MAX_TTL: Duration = Duration::from_secs(2);

/// The `slot` period of the tests: short, so that a period that began after the node had been up
/// for a while comes soon. (A node that started during a period cannot say it is not done: it
/// may have forgotten its marker in a restart.)
const SLOT: Duration = Duration::from_secs(2);

/// Waits until a `SLOT` period has just begun, so that two calls fall in it.
async fn early_in_a_period() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % SLOT.as_millis();
    let left = SLOT.as_millis() - into;
    tokio::time::sleep(Duration::from_millis(left as u64 + 20)).await;
}

/// Creates the ACL user `name` with `LEAST_PRIVILEGE` less the rules in `without`.
fn create_user(cluster: &Cluster, name: &str, without: &[&str]) {
    let mut admin = cluster.connection(0).expect("connect as the default user");
    let mut command = redis::cmd("ACL");
    command
        .arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(format!(">{PASSWORD}"));
    for rule in LEAST_PRIVILEGE
        .iter()
        .filter(|rule| !without.contains(rule))
    {
        command.arg(*rule);
    }
    let () = command.query(&mut admin).expect("ACL SETUSER");
}

/// Waits until node 0's votes count: it has been up, and has held its epoch, for the restart
/// grace. The default user locks until it can (writing the epoch if the node has none, as after
/// a `FLUSHALL`), so that the ACL user's votes count as soon as its runtime has read the node.
async fn wait_until_voting(cluster: &Cluster) {
    let admin = Config::new([cluster.url(0)])
        .max_ttl(MAX_TTL)
        .node_timeout(common::NODE_TIMEOUT)
        .build()
        .expect("valid configuration");
    let deadline = std::time::Instant::now() + MAX_TTL * 2 + Duration::from_secs(5);
    loop {
        if let Ok(Some(lease)) = admin.lock("acl-warm-up", MAX_TTL).await {
            lease.release().await.expect("release the warm-up lock");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never came of age"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The URL of node 0 for the ACL user `name`.
fn url_for(cluster: &Cluster, name: &str) -> String {
    format!("redis://{name}:{PASSWORD}@127.0.0.1:{}", cluster.port(0))
}

/// A runtime that connects to node 0 as the ACL user `name`, with every setting that decides
/// which commands are sent at its default, but the longest ttl (and so the restart grace).
async fn runtime_as(cluster: &Cluster, name: &str) -> Runtime {
    wait_until_voting(cluster).await;
    // A wider allowance for clocks than the default: these tests are about permissions, and a
    // 300 ms ttl leaves the clock check 5 ms, which a loaded CI machine's round trips exceed.
    Config::new([url_for(cluster, name)])
        .max_ttl(MAX_TTL)
        .node_timeout(common::NODE_TIMEOUT)
        .drift_factor(0.05)
        .build()
        .expect("valid configuration")
}

fn get(cluster: &Cluster, key: &str) -> Option<String> {
    let mut admin = cluster.connection(0).expect("connect as the default user");
    redis::cmd("GET").arg(key).query(&mut admin).expect("GET")
}

fn keys(cluster: &Cluster, pattern: &str) -> Vec<String> {
    let mut admin = cluster.connection(0).expect("connect as the default user");
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut admin)
        .expect("KEYS")
}

#[tokio::test]
async fn the_user_can_lock_renew_and_release() {
    let cluster = Cluster::start(1).expect("start redis-server");
    create_user(&cluster, USER, &[]);
    let runtime = runtime_as(&cluster, USER).await;

    let mut lease = runtime
        .lock("acl-job", MAX_TTL)
        .await
        .expect("the user may lock")
        .expect("the key is free");
    assert_eq!(
        get(&cluster, "singleton:lock:acl-job").as_deref(),
        Some(lease.token())
    );
    lease.extend().await.expect("the user may extend");
    lease.release().await.expect("the user may release");
    assert_eq!(get(&cluster, "singleton:lock:acl-job"), None);

    // A body three ttls long keeps its lease only if the renewals go through.
    let ttl = Duration::from_millis(300);
    let outcome = runtime
        .run("acl-renewed", ttl, async {
            tokio::time::sleep(ttl * 3).await;
            cluster_singleton::lease()
                .expect("inside the body")
                .is_held()
        })
        .await
        .expect("renewed as the ACL user");
    assert_eq!(outcome, Outcome::Ran(true));
    assert_eq!(get(&cluster, "singleton:lock:acl-renewed"), None);
}

#[tokio::test]
async fn the_user_can_use_min_hold_slot_and_fencing() {
    let cluster = Cluster::start(1).expect("start redis-server");
    create_user(&cluster, USER, &[]);
    let runtime = runtime_as(&cluster, USER).await;
    let succeeded = |_: &()| true;

    // `min_hold`: the key stays after the body, so the next call skips.
    let held = Options::new(MAX_TTL).min_hold(MAX_TTL / 2);
    let first = runtime
        .run_with("acl-min-hold", held, async {}, succeeded)
        .await;
    assert_eq!(first.expect("min_hold as the ACL user"), Outcome::Ran(()));
    assert!(get(&cluster, "singleton:lock:acl-min-hold").is_some());
    let second = runtime
        .run_with("acl-min-hold", held, async {}, succeeded)
        .await;
    assert_eq!(second.unwrap(), Outcome::Skipped(Skip::Busy));

    // `slot`: a done marker, `singleton:done:<key>:<n>`, and the next call in the period skips.
    let periodic = Options::new(MAX_TTL).slot(SLOT);
    early_in_a_period().await;
    let first = runtime
        .run_with("acl-slot", periodic, async {}, succeeded)
        .await;
    assert_eq!(first.expect("slot as the ACL user"), Outcome::Ran(()));
    assert_eq!(keys(&cluster, "singleton:done:acl-slot:*").len(), 1);
    let second = runtime
        .run_with("acl-slot", periodic, async {}, succeeded)
        .await;
    assert!(
        matches!(second, Ok(Outcome::Skipped(Skip::AlreadyDone { .. }))),
        "{second:?}"
    );

    // `fencing`: the counter `singleton:fence:<key>` holds the latest token, and tokens grow.
    let fenced = Options::new(MAX_TTL).fencing(true);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let lease = runtime
            .lock_with("acl-fenced", &fenced)
            .await
            .expect("fencing as the ACL user")
            .expect("the key is free");
        let token = lease.fencing_token().expect("a fenced lease has a token");
        assert_eq!(
            get(&cluster, "singleton:fence:acl-fenced"),
            Some(token.to_string())
        );
        tokens.push(token);
        lease.release().await.expect("release");
    }
    assert!(tokens[1] > tokens[0], "{tokens:?}");
}

#[tokio::test]
async fn the_user_cannot_touch_keys_outside_the_prefix() {
    let cluster = Cluster::start(1).expect("start redis-server");
    create_user(&cluster, USER, &[]);
    let mut user = redis::Client::open(url_for(&cluster, USER))
        .unwrap()
        .get_connection()
        .expect("the user may connect");

    let own: redis::RedisResult<()> = redis::cmd("SET")
        .arg("singleton:mine")
        .arg("1")
        .query(&mut user);
    assert!(own.is_ok(), "{own:?}");

    for command in [
        redis::cmd("SET")
            .arg("billing:invoices")
            .arg("1")
            .to_owned(),
        redis::cmd("GET").arg("billing:invoices").to_owned(),
        redis::cmd("DEL").arg("billing:invoices").to_owned(),
        redis::cmd("KEYS").arg("*").to_owned(),
        redis::cmd("FLUSHALL").to_owned(),
        redis::cmd("EVAL")
            .arg("return redis.call('SET', 'billing:invoices', '1')")
            .arg(0)
            .to_owned(),
    ] {
        let refused: redis::RedisResult<redis::Value> = command.query(&mut user);
        let err = refused.expect_err("outside the user's rights");
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }

    // Nor through a script that the user may run: the script's commands are checked too.
    let mut admin = cluster.connection(0).unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('SET', 'billing:invoices', '1')")
        .query(&mut admin)
        .unwrap();
    let escaped: redis::RedisResult<redis::Value> = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("singleton:mine")
        .query(&mut user);
    let err = escaped.expect_err("a script must not reach outside the prefix");
    assert!(
        err.to_string()
            .contains("can't access at least one of the keys"),
        "{err}"
    );
    assert_eq!(get(&cluster, "billing:invoices"), None);
}

/// What the crate sends: lock, extend and release; a fenced lock; a run with `slot`.
async fn every_kind_of_call(runtime: &Runtime) -> Result<(), Error> {
    let ttl = MAX_TTL;
    let mut lease = runtime.lock("acl-every", ttl).await?.expect("free");
    lease.extend().await?;
    lease.release().await?;
    let fenced = runtime
        .lock_with("acl-every-fenced", &Options::new(ttl).fencing(true))
        .await?
        .expect("free");
    fenced.release().await?;
    let options = Options::new(ttl).slot(SLOT);
    early_in_a_period().await;
    let outcome = runtime
        .run_with("acl-every-slot", options, async {}, |_| true)
        .await?;
    assert_eq!(outcome, Outcome::Ran(()));
    Ok(())
}

#[tokio::test]
async fn every_command_of_the_line_is_needed_and_its_lack_is_a_clear_error() {
    let cluster = Cluster::start(1).expect("start redis-server");
    let mut admin = cluster.connection(0).unwrap();
    // Every command the line grants, one at a time.
    for missing in LEAST_PRIVILEGE
        .into_iter()
        .filter(|rule| rule.starts_with('+'))
    {
        let name = format!(
            "without-{}",
            missing.trim_start_matches('+').replace('|', "-")
        );
        create_user(&cluster, &name, &[missing]);
        // Scripts cached by an earlier user would hide a missing `SCRIPT LOAD`.
        let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).unwrap();
        let () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
        let runtime = runtime_as(&cluster, &name).await;

        let err = every_kind_of_call(&runtime)
            .await
            .expect_err(&format!("a user without `{missing}` must fail"));

        let Error::Refused(no_quorum) = &err else {
            panic!("without `{missing}`: expected a refusal, got {err:?}");
        };
        let cause = &no_quorum.failures[0].cause;
        // Commands sent by the crate are refused with NOPERM ("no permissions to run the 'set'
        // command"); a command inside a script makes the script fail with the reason.
        assert!(
            cause.contains("no permissions to run")
                || cause.contains("can't run this command or subcommand"),
            "without `{missing}`: {cause}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("{name}:***@")), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
    }
    // And with the whole line, the same calls go through.
    create_user(&cluster, USER, &[]);
    let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin).unwrap();
    let () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
    let runtime = runtime_as(&cluster, USER).await;
    every_kind_of_call(&runtime)
        .await
        .expect("the whole line is enough");
    assert!(
        eventually(PROMPTLY, || keys(&cluster, "singleton:lock:acl-every")
            .is_empty())
        .await,
        "released"
    );
}

/// What an operator's user adds to the lock's line for `inspect`, `list` and `health` (and the
/// command-line tool): three read-only commands.
const OPERATOR_EXTRA: [&str; 3] = ["+pttl", "+scan", "+ping"];

#[tokio::test]
async fn an_operator_needs_pttl_scan_and_ping_beside_the_line() {
    let cluster = Cluster::start(1).expect("start redis-server");
    create_user(&cluster, USER, &[]);
    create_user(&cluster, "operator", &[]);
    let mut admin = cluster.connection(0).expect("connect as the default user");
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("operator")
        .arg(&OPERATOR_EXTRA[..])
        .query(&mut admin)
        .expect("ACL SETUSER");
    let worker = runtime_as(&cluster, USER).await;
    let operator = runtime_as(&cluster, "operator").await;
    let lease = worker
        .lock("acl-inspected", MAX_TTL)
        .await
        .unwrap()
        .expect("free");

    let err = worker.inspect("acl-inspected").await.unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("pttl"), "{err}");
    let health = worker.health().await;
    assert!(
        !health[0].reachable && health[0].problem.as_deref().unwrap().contains("ping"),
        "{health:?}"
    );

    let state = operator
        .inspect("acl-inspected")
        .await
        .expect("inspect as the operator");
    assert_eq!(
        state.holder().unwrap().holder_id.as_deref(),
        Some(worker.holder_id())
    );
    assert_eq!(
        operator
            .list("acl-*")
            .await
            .expect("list as the operator")
            .len(),
        1
    );
    assert!(operator.health().await[0].votes);
    assert_eq!(
        operator
            .force_unlock("acl-inspected")
            .await
            .expect("DEL is on the line"),
        1
    );
    drop(lease);
}
