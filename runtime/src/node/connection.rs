//! The connection to a node: opening it, checking it every second, and replacing it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::runtime::Handle;

use crate::{driver, telemetry, Config, Error};

use super::error::{is_no_script, is_refusal, ConnectFailure};
use super::grace::FleetGrace;
use super::scripts::ONCE_ONLY_SCRIPTS;
use super::server::Server;
use super::{Backend, Node, NodeError};

/// After a failed attempt to connect, calls fail at once with its cause for this long before the
/// next attempt, so that a dead node costs nothing per call and is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Commands a connection queues before a sender must wait (see `open`).
const PIPELINE_QUEUE: usize = 4096;

/// TCP keepalive on every connection: an idle connection whose peer vanished is found within
/// about `KEEPALIVE_IDLE + 3 × KEEPALIVE_INTERVAL`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long sent data may go unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`): a request that left on a black-holed flow arrives within this long, or
/// never.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The once-a-second check replaces a connection that gives no answer within the node timeout, or
/// this long if that is shorter: a node that is only slow for a moment, on a loaded machine,
/// keeps its connection (and the order of the commands on it).
const CHECK_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// The state of the connection to a node.
pub(super) enum Link {
    Up(Arc<Session>),
    /// An attempt to connect, running as a task of its own so that it goes on (up to the connect
    /// timeout) when the calls waiting for it give up at their shorter per-node deadline.
    Connecting {
        attempt: Shared<BoxFuture<'static, Opened>>,
        since: Instant,
    },
    Down {
        cause: ConnectFailure,
        retry_after: Instant,
    },
}

/// A connection attempt's result: the session, or why it failed.
type Opened = Result<Arc<Session>, ConnectFailure>;

/// One open connection and the server behind it.
pub(super) struct Session {
    pub(super) connection: MultiplexedConnection,
    /// The server behind the connection; `None` when not read (restart grace off).
    pub(super) server: Mutex<Option<Server>>,
    /// Cleared when the runtime that drives the connection shuts down (see [`crate::driver`]).
    driver_alive: Option<Arc<AtomicBool>>,
}

impl Session {
    /// Whether the runtime that drives the connection still runs.
    pub(super) fn is_usable(&self) -> bool {
        driver::is_alive(self.driver_alive.as_ref())
    }

    pub(super) fn server(&self) -> Option<Server> {
        self.with_server(Option::clone)
    }

    /// Looks at the server without copying it: every vote does.
    pub(super) fn with_server<R>(&self, look: impl FnOnce(&Option<Server>) -> R) -> R {
        look(
            &self
                .server
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn set_server(&self, server: Server) {
        *self
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(server);
    }
}

impl Node {
    /// The check [`crate::Runtime`] runs on every node once a second: announces our longest ttl,
    /// reads `INFO server` and the epoch on the open connection, and takes a changed `run_id` or
    /// epoch for a restart (the node is young again from now), as a reconnect would; a connection
    /// that gives no answer within the node timeout (at least [`CHECK_ANSWER_WITHIN`]) is
    /// replaced by a new one, so that a silently dead flow costs a second or two of votes, not
    /// the quarter of an hour TCP would take to give it up. A link that is down is opened again.
    pub(crate) async fn check(&self) {
        if self.memory().is_some() {
            return;
        }
        let Some(session) = self.open_session() else {
            // Opened again here rather than at the next call, which may be a renewal a third of
            // a ttl away: connecting reads the node's age and announces our longest ttl, which
            // a restarted node has lost.
            let _ = self.session().await;
            return;
        };
        let mut connection = session.connection.clone();
        let within = self.timeout.max(CHECK_ANSWER_WITHIN);
        let read = driver::timeout(&self.crate_thread, within, async {
            match &self.grace {
                Some(grace) => {
                    let node_counts = grace.announce(&mut connection).await?;
                    Server::read(&mut connection, &grace.epoch_key, node_counts)
                        .await
                        .map(Some)
                }
                None => redis::cmd("PING")
                    .query_async::<()>(&mut connection)
                    .await
                    .map(|()| None),
            }
        })
        .await;
        match read {
            Ok(Ok(Some(server))) => session.set_server(self.witness(server)),
            // The restart grace is off: nothing to compare.
            Ok(Ok(None)) => {}
            Ok(Err(err)) if is_refusal(&err) => {} // `INFO` refused: the calls say so
            Ok(Err(_)) | Err(_) => self.replace_if_a_new_connection_answers(&session).await,
        }
    }

    /// After `session` gave no answer: opens a new connection, and uses it instead if it
    /// answers. A node that answers nothing on a new connection either (frozen, overloaded) keeps
    /// the old one, so that the commands already sent on it, and those sent after them (a
    /// release after its `SET`), stay in order; a flow that a NAT or a firewall dropped is
    /// replaced.
    async fn replace_if_a_new_connection_answers(&self, session: &Arc<Session>) {
        let Backend::Redis(client) = &self.backend else {
            return;
        };
        let opened = connect_on_a_driver(
            redis::Client::clone(client),
            self.connect_timeout,
            self.grace.clone(),
            self.crate_thread.clone(),
        )
        .await;
        let Ok(fresh) = opened else {
            return;
        };
        if let Some(server) = fresh.server() {
            fresh.set_server(self.witness(server));
        }
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(&*link, Link::Up(current) if Arc::ptr_eq(current, session)) {
            telemetry::node_reconnecting(&self.name);
            tracing::warn!(
                node = self.name,
                "Redis node gave no answer on its open connection, and does on a new one: the \
                 new one replaces it"
            );
            *link = Link::Up(fresh);
        }
    }

    /// Drops `session` (if it is still the open one), so that the next call opens a new
    /// connection and reads the server again.
    fn forget(&self, session: &Arc<Session>, cause: &str) {
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(&*link, Link::Up(current) if Arc::ptr_eq(current, session)) {
            telemetry::node_reconnecting(&self.name);
            *link = Link::Down {
                cause: ConnectFailure {
                    cause: cause.to_owned(),
                    refused: false,
                },
                retry_after: Instant::now(),
            };
        }
    }

    /// Opens the connection now rather than on the first lock, so that the first lock is as fast
    /// as the others; a failure here is retried by later calls.
    pub(crate) async fn connect(&self) -> Result<(), NodeError> {
        if self.memory().is_some() {
            return Ok(());
        }
        within(&self.crate_thread, self.connect_timeout, self.session())
            .await
            .map(drop)
    }

    /// Opens the connection if it is not open (or joins the attempt under way); a failure is
    /// for the next command to report.
    pub(crate) async fn open(&self) {
        if self.memory().is_none() {
            let _ = self.session().await;
        }
    }

    /// Whether a round should wait for this node's connection to open: it is not open, and
    /// either no attempt to open it is under way (one starts now) or the one under way began
    /// less than `fresh` ago. An attempt older than that (a node that accepts connections and
    /// answers nothing) is not waited for again, and a node that failed to connect a moment ago
    /// fails at once.
    pub(crate) fn worth_waiting_for(&self, fresh: Duration) -> bool {
        if self.is_connected() {
            return false;
        }
        match &*self
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            Link::Up(_) => true,
            Link::Connecting { since, .. } => since.elapsed() < fresh,
            Link::Down { retry_after, .. } => Instant::now() >= *retry_after,
        }
    }

    /// The open connection, for a lock's commands, which never wait for one to open (see
    /// [`crate::round`]): not open, the node fails at once, with why.
    pub(super) fn connected_session(&self) -> Result<Arc<Session>, NodeError> {
        if let Some(session) = self.open_session() {
            return Ok(session);
        }
        let link = self
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Err(NodeError::Down(match &*link {
            Link::Down { cause, .. } => cause.clone(),
            Link::Connecting { since, .. } => ConnectFailure {
                cause: format!("no connection within {:?} (still trying)", since.elapsed()),
                refused: false,
            },
            Link::Up(_) => ConnectFailure {
                cause: "its connection is being opened again".into(),
                refused: false,
            },
        }))
    }

    /// The open connection, or the one being opened, or a fresh attempt to open one.
    pub(super) async fn session(&self) -> Result<Arc<Session>, NodeError> {
        let Backend::Redis(client) = &self.backend else {
            unreachable!("memory nodes answer before asking for a session");
        };
        if let Some(session) = self.open_session() {
            return Ok(session);
        }
        let attempt = {
            let mut link = self
                .link
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*link {
                Link::Up(session) if session.is_usable() => return Ok(session.clone()),
                Link::Connecting { attempt, .. } => attempt.clone(),
                Link::Down { cause, retry_after } if Instant::now() < *retry_after => {
                    return Err(NodeError::Down(cause.clone()));
                }
                // Never opened, broken, or its runtime shut down: open one (again).
                Link::Up(_) | Link::Down { .. } => {
                    let attempt = connect_on_a_driver(
                        redis::Client::clone(client),
                        self.connect_timeout,
                        self.grace.clone(),
                        self.crate_thread.clone(),
                    )
                    .boxed()
                    .shared();
                    *link = Link::Connecting {
                        attempt: attempt.clone(),
                        since: Instant::now(),
                    };
                    attempt
                }
            }
        };
        let opened = attempt.clone().await;
        let mut link = self
            .link
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Whoever sees the attempt end first records its result; later waiters find it there.
        if matches!(&*link, Link::Connecting { attempt: current, .. } if current.ptr_eq(&attempt)) {
            *link = match &opened {
                Ok(session) => {
                    if let Some(server) = session.server() {
                        session.set_server(self.witness(server));
                    }
                    Link::Up(session.clone())
                }
                Err(cause) => Link::Down {
                    cause: cause.clone(),
                    retry_after: Instant::now() + RECONNECT_PAUSE,
                },
            };
        }
        opened.map_err(NodeError::Down)
    }

    /// Runs a script on `session` (by its SHA1, loading it when the node lacks it).
    pub(super) async fn run_script<T: redis::FromRedisValue>(
        &self,
        session: &Arc<Session>,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, NodeError> {
        self.query(
            session,
            invocation.invoke_async(&mut session.connection.clone()),
        )
        .await
    }

    /// Runs `call`, an `EVALSHA` of `script` (see `Node::script_call`), and never sends it
    /// again: a node that lacks the script (it flushed its scripts, or restarted behind a proxy
    /// that kept the connection) fails this call, and gets the script for the next one. Sent
    /// again, the call would be queued behind whatever went to the node meanwhile: a release,
    /// after which a `SET` or an extension would put a released key back. (Scripts are loaded
    /// when a connection opens, so this is rare.)
    pub(super) async fn run_script_once<T: redis::FromRedisValue>(
        &self,
        session: &Arc<Session>,
        script: &redis::Script,
        call: &redis::Cmd,
    ) -> Result<T, NodeError> {
        let answer = self
            .query(session, call.query_async(&mut session.connection.clone()))
            .await;
        match answer {
            Err(NodeError::Redis(err)) if is_no_script(&err) => {
                self.load_script(session, script).await?;
                Err(NodeError::Redis(err))
            }
            answer => answer,
        }
    }

    /// Loads `script` on `session`'s node, which answered `NOSCRIPT`.
    pub(super) async fn load_script(
        &self,
        session: &Arc<Session>,
        script: &redis::Script,
    ) -> Result<(), NodeError> {
        let mut connection = session.connection.clone();
        self.query::<String>(session, script.load_async(&mut connection))
            .await
            .map(drop)
    }

    /// Awaits a command on `session`; a broken connection is dropped, so that the next call
    /// opens a fresh one (and reads the server's uptime again: it may have restarted).
    pub(super) async fn query<T>(
        &self,
        session: &Arc<Session>,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, NodeError> {
        let result = command.await;
        if let Err(err) = &result {
            if err.is_unrecoverable_error() || err.is_connection_dropped() || err.is_io_error() {
                self.forget(session, &err.to_string());
            }
        }
        result.map_err(NodeError::Redis)
    }
}

/// The client for the Redis URL `url` (the `position`-th, named `name`), set up for TLS when
/// the URL is `rediss://`.
#[cfg_attr(
    not(feature = "tls"),
    expect(unused_variables, reason = "only TLS reads the configuration here")
)]
pub(super) fn client(
    position: usize,
    name: &str,
    url: &str,
    config: &Config,
) -> Result<redis::Client, Error> {
    // Checked before redis-rs sees the URL: another crate in the program may have turned on
    // redis-rs's own TLS support, and `rediss://` would then connect without this crate's TLS
    // set-up (the crypto provider, the root certificate).
    #[cfg(not(feature = "tls"))]
    if is_tls_url(url) {
        return Err(Error::InvalidConfig(format!(
            "Redis URL #{position} ({name}) asks for TLS, which needs the `tls` feature: \
             `cluster-singleton = {{ version = \"0.1\", features = [\"tls\"] }}`"
        )));
    }
    let client = redis::Client::open(url).map_err(|err| {
        Error::InvalidConfig(format!(
            "Redis URL #{position} ({name}) is not valid: {err}; \
             expected `redis://[user:password@]host[:port][/db]`{} (or `memory://` for tests)",
            if cfg!(feature = "tls") {
                ", or `rediss://` for TLS"
            } else {
                ""
            }
        ))
    })?;
    #[cfg(feature = "tls")]
    let client = crate::tls::client(
        client,
        position,
        name,
        url,
        config.tls_root_certificate.as_ref(),
        config.tls_client_certificate.as_ref(),
    )?;
    with_tcp_settings(client)
}

/// `client`, with TCP keepalive and a user timeout on its connections, so that the kernel too
/// gives up a connection whose peer went silent (see [`Node::check`] for the faster way).
fn with_tcp_settings(client: redis::Client) -> Result<redis::Client, Error> {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let settings = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT);
    let info = client
        .get_connection_info()
        .clone()
        .set_tcp_settings(settings);
    redis::Client::open(info)
        .map_err(|err| Error::Internal(format!("cannot set up the TCP settings: {err}")))
}

/// Whether `url` asks for TLS: `rediss://` (or redis-rs's `valkeys://`).
#[cfg(not(feature = "tls"))]
fn is_tls_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|parsed| matches!(parsed.scheme(), "rediss" | "valkeys"))
}

/// Why opening a connection failed, with advice for the failures that have one.
fn connect_failure(err: &RedisError) -> String {
    #[cfg(feature = "tls")]
    if let Some(advice) = crate::tls::advice(err) {
        return format!("{err} ({advice})");
    }
    err.to_string()
}

/// Opens a connection as a task of its own, on the runtime that should drive it (see
/// [`crate::driver`]). A caller's runtime without I/O or timers enabled makes that task panic;
/// the connection is then opened on the crate's own runtime, as are all later ones made on it.
async fn connect_on_a_driver(
    client: redis::Client,
    connect_timeout: Duration,
    grace: Option<Arc<FleetGrace>>,
    crate_thread: Handle,
) -> Opened {
    let on = driver::for_connection(&crate_thread);
    let callers = on.alive.is_some();
    let joined = on
        .handle
        .spawn(open(
            client.clone(),
            connect_timeout,
            grace.clone(),
            on.alive,
        ))
        .await;
    let joined = match joined {
        Err(err) if callers && err.is_panic() => {
            driver::cannot_drive(&on.handle);
            tracing::warn!(error = %err, "the caller's tokio runtime cannot drive Redis connections (is it built without `enable_all()`?); the crate's own thread drives them instead");
            crate_thread
                .spawn(open(client, connect_timeout, grace, None))
                .await
        }
        joined => joined,
    };
    joined.unwrap_or_else(|err| {
        Err(ConnectFailure {
            cause: format!("the connect task failed: {err}"),
            refused: false,
        })
    })
}

/// Opens a connection (its driver task lives on the runtime this runs on, whose sentinel clears
/// `driver_alive`) and, with a restart grace, reads when the server started and its `run_id`,
/// and announces our longest ttl (see [`FleetGrace`]).
async fn open(
    client: redis::Client,
    connect_timeout: Duration,
    grace: Option<Arc<FleetGrace>>,
    driver_alive: Option<Arc<AtomicBool>>,
) -> Opened {
    let opening = async {
        // No response timeout inside: every command has the node's deadline around it already.
        // A deep queue: a command parked in the backlog is queued by its first poll, which a
        // full queue (redis-rs's default holds 50) would make wait for a later one.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None)
            .set_pipeline_buffer_size(PIPELINE_QUEUE);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let server = match &grace {
            Some(grace) => {
                let node_counts = grace.announce(&mut connection).await?;
                Some(Server::read(&mut connection, &grace.epoch_key, node_counts).await?)
            }
            None => None,
        };
        // Before the connection counts as open: the scripts that must be sent only once (see
        // `Node::run_script_once`) are then there. A user whose ACL forbids loading them finds
        // out from the first lock, which says so.
        for script in ONCE_ONLY_SCRIPTS {
            let _ = script.load_async(&mut connection).await;
        }
        Ok::<_, RedisError>(Arc::new(Session {
            connection,
            server: Mutex::new(server),
            driver_alive,
        }))
    };
    match tokio::time::timeout(connect_timeout, opening).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(err)) => Err(ConnectFailure {
            cause: connect_failure(&err),
            refused: is_refusal(&err),
        }),
        Err(_elapsed) => Err(ConnectFailure {
            cause: format!("no connection within {connect_timeout:?}"),
            refused: false,
        }),
    }
}

/// Bounds one call by a deadline, whatever the connection is doing (connecting, waiting on a
/// frozen server).
pub(super) async fn within<T>(
    crate_thread: &Handle,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    driver::timeout(crate_thread, timeout, call)
        .await
        .unwrap_or(Err(NodeError::Timeout(timeout)))
}
