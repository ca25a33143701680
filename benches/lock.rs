//! The lock benchmark: what a lock costs, against the floor that physics sets.
//!
//! ```sh
//! cargo bench --bench lock                      # the full tables, about 6 minutes on 2 cores
//! cargo bench --bench lock -- --quick           # its shape in about a minute
//! cargo bench --bench lock -- --rows memory     # resident size over a million cycles
//! cargo bench --bench lock -- --help            # rows, contenders, repetitions, windows
//! ```
//!
//! It starts its own redis-server nodes through the test kit (1, 3 and 5 of them) and, on the
//! same nodes and in the same run, measures four contenders side by side:
//!
//! - the **floor**: raw redis-rs, `SET key token NX PX ttl` to every node at once and then the
//!   compare-and-delete `EVALSHA` to every node at once, over one multiplexed connection per
//!   node (`harness/floor.rs`): one round trip to lock, one to release;
//! - this crate's **runtime API**: `runtime.lock(key, ttl)` and `lease.release()`;
//! - a **`#[singleton]`** function with an empty body, called inside `runtime.scope`;
//! - **rslock**, the leading Rust Redlock crate, set to one attempt, in a process of its own
//!   (`benches/rslock`, whose `Cargo.toml` says why).
//!
//! Rows: each task locking its own key (1, 16 and 64 tasks); 16 tasks trying one key that
//! another machine holds (busy attempts; the floor is then a raw `SET NX` loop); five nodes with
//! one frozen by SIGSTOP; renewal on against off for an empty body; behind `--memory`, the
//! resident size over a million cycles; and behind `--rows hold` and `--rows burst`, the rows of
//! issue 12: up to a hundred thousand leases held at once in this process while renewal keeps
//! them, and tens of thousands of acquisitions started at once (`harness/scale.rs`). Every
//! repetition measures every row, the contenders of a row taking turns (in an order that rotates
//! from one repetition to the next); the tables show medians over repetitions, and ratios are
//! medians of each repetition's own ratio.

mod harness;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_singleton::runtime::{Config, Options, Runtime, DEFAULT_KEY_PREFIX};
use cluster_singleton::{singleton, Outcome};
use cluster_singleton_testkit::Cluster;

use harness::drive::{drive, Attempt, Sample};
use harness::floor::{self, Floor};
use harness::model::{Contender, Figures, Results, Row, Shape};
use harness::nodes::{self, Admin};
use harness::report::{self, Memory};
use harness::rslock::Rslock;
use harness::scale::{self, HOLD_ATTEMPTS, HOLD_TTL, HOLD_WAVE};
use harness::settings::{Pick, RowKind, Settings, USAGE};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The ttl of every lock. Long against any window, so that no lock expires mid-measurement;
/// `attributed`'s `ttl = "10s"` must say the same.
const TTL: Duration = Duration::from_secs(10);

/// Tasks of the contended row, as the issue sets it.
const CONTENDED_TASKS: usize = 16;

/// The frozen row runs on this many nodes, with the last one frozen.
const FROZEN_ROW_NODES: usize = 5;

/// Where the renewal comparison runs: the smallest cluster that tolerates a failure.
const RENEWAL_NODES: usize = 3;
const RENEWAL_TASKS: [usize; 2] = [1, 64];

/// Where the rows of issue 12 (hold, burst) run: the smallest cluster that tolerates a failure.
const SCALE_NODES: usize = 3;

/// The memory row: the `#[singleton]` path (the runtime API's and then some) under load.
const MEMORY_NODES: usize = 3;
const MEMORY_TASKS: usize = 64;
/// Cycles before the first resident-size reading: connections, pools and caches settle first.
const MEMORY_WARM_UP_CYCLES: u64 = 100_000;
/// Readings taken over the measured cycles, so that the table shows a trend, not two points.
const MEMORY_CHECKPOINTS: u64 = 10;

/// The `#[singleton]` contender: an empty body, so that only the lock is measured.
#[singleton(key = "bench:{name}", ttl = "10s")]
async fn attributed(name: &str) {}

fn main() -> ExitCode {
    let settings = match Settings::parse(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if settings.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("the benchmark failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One set of nodes, and every contender's way onto them.
struct Site {
    id: usize,
    cluster: Cluster,
    runtime: Runtime,
    floor: Arc<Floor>,
    admin: Admin,
    frozen: Option<usize>,
}

impl Site {
    fn start(
        id: usize,
        nodes: usize,
        restart_grace: bool,
        tokio: &tokio::runtime::Runtime,
    ) -> Result<Site> {
        let cluster = Cluster::start(nodes)?;
        let urls = cluster.urls();
        // The grace as a user has it, the fleet's longest ttl being the bench's; the fresh nodes
        // serve it out before the first row (see `Admin::wait_until_up`).
        let config = if restart_grace {
            Config::new(&urls).max_ttl(TTL)
        } else {
            Config::new(&urls).restart_grace(Duration::ZERO)
        };
        let runtime = config.build()?;
        // The floor's connections are driven by the benchmark's runtime, as a user's would be.
        let floor = Arc::new(tokio.block_on(Floor::connect(&urls, TTL))?);
        let admin = Admin::open(&cluster)?;
        Ok(Site {
            id,
            cluster,
            runtime,
            floor,
            admin,
            frozen: None,
        })
    }

    /// Waits until the runtime can lock on every node: each has been up, and held its epoch
    /// (written by the runtime's first connection), for the restart grace.
    fn wait_until_voting(&self, tokio: &tokio::runtime::Runtime) -> Result<()> {
        let deadline = std::time::Instant::now() + TTL * 3;
        let warm_up = |key: &str| -> Option<()> {
            let lease = tokio.block_on(self.runtime.lock(key, TTL)).ok()??;
            tokio.block_on(lease.release()).ok()
        };
        // A key per node would not say which node voted; a quorum of all of them must, and the
        // first lock after the grace shows it.
        while warm_up("bench:warm-up").is_none() {
            if std::time::Instant::now() >= deadline {
                return Err("the nodes' votes never counted".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every node, not only a quorum, is past its grace by the time the slowest epoch was
        // written plus the grace: wait for that too, so that no row counts a young node.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    fn nodes(&self) -> usize {
        self.cluster.len()
    }

    /// The nodes that can be asked: all but a frozen one.
    fn askable(&self) -> Vec<usize> {
        (0..self.nodes())
            .filter(|node| Some(*node) != self.frozen)
            .collect()
    }

    fn freeze_last(&mut self) -> Result<()> {
        let last = self.nodes() - 1;
        self.cluster.freeze(last)?;
        self.frozen = Some(last);
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        if let Some(node) = self.frozen.take() {
            self.cluster.resume(node)?;
            // What was queued for it meanwhile must not slow the next row down.
            self.admin.wait_quiet(node)?;
        }
        Ok(())
    }
}

/// What every measurement needs besides its site.
struct Bench<'a> {
    settings: &'a Settings,
    tokio: tokio::runtime::Runtime,
    rslock: Option<Rslock>,
    results: Results,
}

fn run(settings: &Settings) -> Result<()> {
    let tokio = tokio::runtime::Runtime::new()?;
    let table_rows = [
        RowKind::Distinct,
        RowKind::Contended,
        RowKind::Frozen,
        RowKind::Renewal,
    ]
    .iter()
    .any(|kind| settings.wants(*kind));
    let rslock = if settings.picks(Pick::Rslock) && table_rows {
        Some(Rslock::start()?)
    } else {
        None
    };
    let mut bench = Bench {
        settings,
        tokio,
        rslock,
        results: Results::default(),
    };

    let mut sites = Vec::new();
    for (id, &nodes) in settings.nodes.iter().enumerate() {
        if table_rows {
            eprintln!("starting {nodes} redis-server node(s)");
            let site = Site::start(id, nodes, settings.restart_grace, &bench.tokio)?;
            if let Some(rslock) = &mut bench.rslock {
                rslock.connect(id, &site.cluster.urls())?;
            }
            sites.push(site);
        }
    }

    if settings.restart_grace && !sites.is_empty() {
        eprintln!("waiting until the fresh nodes have been up for the restart grace ({TTL:?})");
        for site in &sites {
            site.wait_until_voting(&bench.tokio)?;
        }
    }

    // The tables' rows only: the other rows are measured once each, below.
    let repetitions = if table_rows { settings.repetitions } else { 0 };
    for repetition in 0..repetitions {
        eprintln!("repetition {}/{}", repetition + 1, settings.repetitions);
        for site in &mut sites {
            let (healthy, frozen) = rows_for(settings, site.nodes());
            for row in healthy {
                bench.measure_row(site, row, repetition)?;
            }
            if !frozen.is_empty() {
                site.freeze_last()?;
                let measured = frozen
                    .into_iter()
                    .try_for_each(|row| bench.measure_row(site, row, repetition));
                // Resumed even when a measurement failed, so that the node can be stopped.
                site.resume()?;
                measured?;
            }
        }
    }

    let memory = if settings.wants(RowKind::Memory) {
        let site = site_with(&mut sites, MEMORY_NODES, settings, &bench.tokio)?;
        Some(memory_row(&bench.tokio, site, settings.memory_cycles)?)
    } else {
        None
    };

    let (mut held, mut floors) = (Vec::new(), Vec::new());
    if settings.wants(RowKind::Hold) {
        let site = site_with(&mut sites, SCALE_NODES, settings, &bench.tokio)?;
        for &leases in &settings.leases {
            held.push(hold_row(&bench.tokio, site, leases, settings.hold_window)?);
            floors.push(hold_floor_row(
                &bench.tokio,
                site,
                leases,
                settings.hold_window,
            )?);
        }
    }
    let burst = if settings.wants(RowKind::Burst) {
        let site = site_with(&mut sites, SCALE_NODES, settings, &bench.tokio)?;
        Some(burst_row(
            &bench.tokio,
            site,
            settings.burst,
            settings.burst_ttl,
        )?)
    } else {
        None
    };

    if table_rows {
        println!("{}", header(settings, &bench.tokio));
        println!("{}", report::figures(&bench.results));
        println!("{LEGEND}");
        let renewal = report::renewal(&bench.results);
        if !renewal.is_empty() {
            println!("Renewal on against off, `run_with` with an empty body:\n\n{renewal}");
        }
    }
    if let Some(memory) = &memory {
        println!("Memory:\n\n{}", report::memory(memory));
    }
    if table_rows || memory.is_some() {
        println!(
            "Targets (issue 6):\n\n{}",
            report::targets(&bench.results, memory.as_ref())
        );
    }
    if !held.is_empty() {
        println!(
            "Leases held (issue 12): {SCALE_NODES} nodes, ttl {} s with renewal on (`Options::new(ttl)`), \
             each lease a `run_with` call of its own task whose body waits for the end of a {} ms \
             window; taken in waves of {HOLD_WAVE} acquisitions, each awaited before the next, a failed \
             acquisition tried again (up to {HOLD_ATTEMPTS} tries).\n\n{}",
            HOLD_TTL.as_secs(),
            settings.hold_window.as_millis(),
            report::held(&held)
        );
        println!("{HOLD_LEGEND}");
        println!(
            "The same leases' keys renewed by the floor (nothing but redis-rs: every key set on \
             every node, then one renewal script call per node and thousand keys every {} ms, all \
             at once; no lease state, validity or loss detection), measured right after the \
             crate's row over the same window:\n\n{}",
            (HOLD_TTL / 3).as_millis(),
            report::held_against_floor(&held, &floors)
        );
    }
    if let Some(burst) = &burst {
        println!(
            "Burst (issue 12): {SCALE_NODES} healthy nodes, every call started at once, each on a \
             key of its own with ttl {:?} and an empty body.\n\n{}",
            settings.burst_ttl,
            report::burst(burst)
        );
    }
    Ok(())
}

const HOLD_LEGEND: &str = "CPU % of one core: CPU time of the whole process over the window, \
per second of it (100 %: one core saturated); memory per lease: resident size once every lease \
was held and renewed once, minus before the first was taken, per lease (the harness's own task \
per lease included); allocated per lease: the same for the bytes the allocator handed out and \
was not given back (glibc's `mallinfo2`): the live data alone, without the allocator's free \
memory and other pages the process touched; node commands per lease per second: lock commands \
the nodes ran over the window (`INFO commandstats`, summed over nodes, commands inside scripts \
included), per lease and second; lost: leases lost before the window ended (the call returned early, as it does when \
its lease is lost); errors: calls that did not return `Ok(Ran)` once the window ended.\n";

const LEGEND: &str = "ops/s: lock+release cycles per second (busy attempts per second in the \
\"held elsewhere\" rows); ×floor: the contender's figure over the floor's, same row and \
repetition; conns/node: TCP connections the contender's process holds to one node (`CLIENT \
LIST`); cmds/op: lock commands the nodes ran per attempt (a frozen node is not counted); CPU \
µs/op and ctx sw/op: CPU time and context switches of the contender's process per attempt; \
engine busy: CPU time of the crate's own runtime thread over the window (100 %: one core, \
saturated); errors: failed attempts, all repetitions.\n";

/// The rows to measure on a site of `nodes` nodes: those while every node is up, and those
/// with its last node frozen.
fn rows_for(settings: &Settings, nodes: usize) -> (Vec<Row>, Vec<Row>) {
    let row = |shape, tasks| Row {
        shape,
        nodes,
        tasks,
    };
    let mut healthy = Vec::new();
    let mut frozen = Vec::new();
    if settings.wants(RowKind::Distinct) {
        healthy.extend(settings.tasks.iter().map(|&t| row(Shape::Distinct, t)));
    }
    if settings.wants(RowKind::Contended) {
        healthy.push(row(Shape::Contended, CONTENDED_TASKS));
    }
    let renewal_nodes = if settings.nodes.contains(&RENEWAL_NODES) {
        RENEWAL_NODES
    } else {
        settings.nodes[0]
    };
    if settings.wants(RowKind::Renewal) && nodes == renewal_nodes {
        healthy.extend(RENEWAL_TASKS.iter().map(|&t| row(Shape::Renewal, t)));
    }
    if settings.wants(RowKind::Frozen) && nodes == FROZEN_ROW_NODES {
        frozen.extend(settings.tasks.iter().map(|&t| row(Shape::Frozen, t)));
    }
    (healthy, frozen)
}

impl Bench<'_> {
    /// Measures every contender of `row` once, in an order that rotates with the repetition.
    fn measure_row(&mut self, site: &mut Site, row: Row, repetition: usize) -> Result<()> {
        let mut contenders: Vec<Contender> = if row.shape == Shape::Renewal {
            vec![Contender::RenewOff, Contender::RenewOn]
        } else {
            self.settings
                .contenders
                .iter()
                .map(|pick| match pick {
                    Pick::Floor => Contender::Floor,
                    Pick::Runtime => Contender::Runtime,
                    Pick::Attribute => Contender::Attribute,
                    Pick::Rslock => Contender::Rslock,
                })
                .collect()
        };
        let turn = repetition % contenders.len();
        contenders.rotate_left(turn);
        for contender in contenders {
            let figures = self.measure(site, row, contender)?;
            self.results.add(row, contender, figures);
        }
        Ok(())
    }

    /// One window of one contender in one row.
    fn measure(&mut self, site: &mut Site, row: Row, contender: Contender) -> Result<Figures> {
        let contended = row.shape == Shape::Contended;
        // What follows `bench:` in each task's key: the runtime puts its prefix before
        // `bench:...`, and the floor and rslock are handed the whole Redis key, so that every
        // contender's keys look alike on the nodes and no two contenders share one.
        let suffixes: Vec<String> = (0..row.tasks)
            .map(|task| match contended {
                true => format!("{}:contended", contender.slug()),
                false => format!("{}:{task}", contender.slug()),
            })
            .collect();
        let logical: Arc<Vec<String>> =
            Arc::new(suffixes.iter().map(|s| format!("bench:{s}")).collect());
        let full: Arc<Vec<String>> = Arc::new(
            logical
                .iter()
                .map(|key| format!("{DEFAULT_KEY_PREFIX}lock:{key}"))
                .collect(),
        );
        let suffixes = Arc::new(suffixes);

        // In the contended row, the one key every task tries; another machine holds it.
        let held = full[0].clone();
        let askable = site.askable();
        if contended {
            site.admin.hold(&askable, &held)?;
        }
        let commands_before = site.admin.lock_commands(&askable)?;
        let (tasks, warm_up, window) = (row.tasks, self.settings.warm_up, self.settings.window);
        let runtime = site.runtime.clone();
        let sample: Sample = match contender {
            Contender::Floor => {
                let floor = site.floor.clone();
                self.tokio
                    .block_on(drive(tasks, warm_up, window, move |task| {
                        let (floor, keys) = (floor.clone(), full.clone());
                        async move { floor.attempt(task, &keys[task]).await }
                    }))
            }
            Contender::Runtime => self
                .tokio
                .block_on(drive(tasks, warm_up, window, move |task| {
                    let (runtime, keys) = (runtime.clone(), logical.clone());
                    async move {
                        match runtime.lock(&keys[task], TTL).await {
                            Ok(Some(lease)) => match lease.release().await {
                                Ok(()) => Attempt::Locked,
                                Err(_) => Attempt::Failed,
                            },
                            Ok(None) => Attempt::Busy,
                            Err(_) => Attempt::Failed,
                        }
                    }
                })),
            Contender::Attribute => {
                self.tokio
                    .block_on(drive(tasks, warm_up, window, move |task| {
                        let (runtime, names) = (runtime.clone(), suffixes.clone());
                        async move {
                            match runtime.scope(attributed(&names[task])).await {
                                Ok(Outcome::Ran(())) => Attempt::Locked,
                                Ok(Outcome::Skipped(_)) => Attempt::Busy,
                                Err(_) => Attempt::Failed,
                            }
                        }
                    }))
            }
            Contender::RenewOff | Contender::RenewOn => {
                let options = Options::new(TTL).renew(contender == Contender::RenewOn);
                self.tokio
                    .block_on(drive(tasks, warm_up, window, move |task| {
                        let (runtime, keys) = (runtime.clone(), logical.clone());
                        async move {
                            match runtime
                                .run_with(&keys[task], options, async {}, |_| true)
                                .await
                            {
                                Ok(Outcome::Ran(())) => Attempt::Locked,
                                Ok(Outcome::Skipped(_)) => Attempt::Busy,
                                Err(_) => Attempt::Failed,
                            }
                        }
                    }))
            }
            Contender::Rslock => {
                let rslock = self
                    .rslock
                    .as_mut()
                    .ok_or("the rslock contender is not running")?;
                // It makes the distinct keys `<key>:<task>` itself, alike to the others'.
                let key = match contended {
                    true => held.clone(),
                    false => format!("{DEFAULT_KEY_PREFIX}lock:bench:{}", contender.slug()),
                };
                rslock.run(site.id, contended, tasks, warm_up, window, TTL, &key)?
            }
        };
        let commands = site.admin.lock_commands(&askable)? - commands_before;
        if contended {
            site.admin.free(&askable, &held)?;
        }

        let (pid, name) = match contender {
            Contender::Floor => (std::process::id(), floor::CLIENT_NAME),
            Contender::Rslock => (
                self.rslock.as_ref().map_or(0, Rslock::pid),
                // rslock's connections have no name; nothing else in its process connects.
                "",
            ),
            // The runtime's connections have no name; the harness's own are named.
            _ => (std::process::id(), ""),
        };
        let mut counts = Vec::with_capacity(askable.len());
        for &node in &askable {
            counts.push(site.admin.connections(node, pid, name)?);
        }
        let connections = counts
            .iter()
            .min()
            .copied()
            .zip(counts.iter().max().copied());
        eprintln!(
            "  {} nodes, {} tasks, {:?}, {}: {} attempts in {:?} ({} locked, {} busy, {} failed), p50 {:?}, p99 {:?}",
            row.nodes,
            row.tasks,
            row.shape,
            contender.slug(),
            sample.attempts(),
            sample.elapsed,
            sample.locked,
            sample.busy,
            sample.failed,
            sample.latency(0.50).unwrap_or_default(),
            sample.latency(0.99).unwrap_or_default(),
        );
        Ok(Figures::new(&row, &sample, connections, Some(commands)))
    }
}

/// The site of `nodes` nodes in `sites`, started (and waited for until past its restart grace)
/// if there is none yet.
fn site_with<'a>(
    sites: &'a mut Vec<Site>,
    nodes: usize,
    settings: &Settings,
    tokio: &tokio::runtime::Runtime,
) -> Result<&'a mut Site> {
    let index = match sites.iter().position(|site| site.nodes() == nodes) {
        Some(index) => index,
        None => {
            eprintln!("starting {nodes} redis-server nodes");
            let site = Site::start(sites.len(), nodes, settings.restart_grace, tokio)?;
            if settings.restart_grace {
                eprintln!(
                    "waiting until the fresh nodes have been up for the restart grace ({TTL:?})"
                );
                site.wait_until_voting(tokio)?;
            }
            sites.push(site);
            sites.len() - 1
        }
    };
    Ok(&mut sites[index])
}

/// The hold row for one number of leases.
fn hold_row(
    tokio: &tokio::runtime::Runtime,
    site: &mut Site,
    leases: usize,
    window: Duration,
) -> Result<scale::Held> {
    eprintln!(
        "hold row: {leases} leases on {} nodes, a {window:?} window",
        site.nodes()
    );
    // Made and dropped unpolled: the bytes a call keeps in its task while it holds its lease.
    let call = site
        .runtime
        .run_with("hold:size", Options::new(HOLD_TTL), async {}, |_| true);
    let attributed = attributed("hold:size");
    eprintln!(
        "  each call's future: {} bytes (its body boxed); an empty `#[singleton]` function's of one `&str`: {} bytes",
        std::mem::size_of_val(&call),
        std::mem::size_of_val(&attributed),
    );
    drop((call, attributed));
    let askable = site.askable();
    let held = scale::hold(
        tokio,
        &site.runtime,
        &mut site.admin,
        &askable,
        leases,
        window,
    )?;
    eprintln!(
        "  {} of {leases} leases held after {:?} ({} acquisitions tried again)",
        held.holding, held.acquiring, held.retried
    );
    eprintln!(
        "  {:.2} s of CPU over {:?} ({:.2} s of it the runtime's own thread), {} lock commands, {} lost ({} before the window), {} errors{}",
        held.cpu.as_secs_f64(),
        held.window,
        held.engine_cpu.as_secs_f64(),
        held.commands,
        held.lost,
        held.lost_before_window,
        held.errors,
        held.first_error
            .as_ref()
            .map_or_else(String::new, |message| format!(", for example: {message}")),
    );
    Ok(held)
}

/// The hold row's floor for one number of leases.
fn hold_floor_row(
    tokio: &tokio::runtime::Runtime,
    site: &mut Site,
    leases: usize,
    window: Duration,
) -> Result<scale::FloorHeld> {
    eprintln!("hold row's floor: {leases} keys renewed by redis-rs alone, a {window:?} window");
    let askable = site.askable();
    let floor = scale::hold_floor(
        tokio,
        &site.floor,
        &mut site.admin,
        &askable,
        leases,
        window,
    )?;
    eprintln!(
        "  {:.2} s of CPU over {:?}, {} lock commands, {} not renewed",
        floor.cpu.as_secs_f64(),
        floor.window,
        floor.commands,
        floor.not_renewed
    );
    Ok(floor)
}

/// The burst row.
fn burst_row(
    tokio: &tokio::runtime::Runtime,
    site: &mut Site,
    calls: usize,
    ttl: Duration,
) -> Result<scale::Burst> {
    eprintln!(
        "burst row: {calls} calls at once on {} nodes, ttl {ttl:?}",
        site.nodes()
    );
    let askable = site.askable();
    let burst = scale::burst(tokio, &site.runtime, &mut site.admin, &askable, calls, ttl)?;
    for message in [&burst.first_no_quorum, &burst.first_failure]
        .into_iter()
        .flatten()
    {
        eprintln!("  for example: {message}");
    }
    Ok(burst)
}

/// Resident size over `cycles` `#[singleton]` calls, after a warm-up.
fn memory_row(tokio: &tokio::runtime::Runtime, site: &Site, cycles: u64) -> Result<Memory> {
    eprintln!(
        "memory row: {MEMORY_WARM_UP_CYCLES} warm-up cycles, then {cycles} measured, on {} nodes",
        site.nodes()
    );
    let names: Arc<Vec<String>> = Arc::new(
        (0..MEMORY_TASKS)
            .map(|task| format!("memory:{task}"))
            .collect(),
    );
    let mut failed = tokio.block_on(cycle_many(&site.runtime, &names, MEMORY_WARM_UP_CYCLES));
    let warm = nodes::resident_bytes()?;
    let step = (cycles / MEMORY_CHECKPOINTS).max(1);
    let mut done = 0;
    let mut checkpoints = Vec::new();
    while done < cycles {
        let batch = step.min(cycles - done);
        failed += tokio.block_on(cycle_many(&site.runtime, &names, batch));
        done += batch;
        let resident = nodes::resident_bytes()?;
        eprintln!(
            "  {done} cycles: {:.1} MiB resident",
            resident as f64 / 1048576.0
        );
        checkpoints.push((done, resident));
    }
    Ok(Memory {
        nodes: site.nodes(),
        tasks: MEMORY_TASKS,
        warm_up_cycles: MEMORY_WARM_UP_CYCLES,
        warm,
        checkpoints,
        failed,
    })
}

/// Runs `cycles` `#[singleton]` calls over [`MEMORY_TASKS`] tasks; how many failed.
async fn cycle_many(runtime: &Runtime, names: &Arc<Vec<String>>, cycles: u64) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..names.len())
        .map(|task| {
            let (runtime, names, next) = (runtime.clone(), names.clone(), next.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                while next.fetch_add(1, Ordering::Relaxed) < cycles {
                    if !matches!(
                        runtime.scope(attributed(&names[task])).await,
                        Ok(Outcome::Ran(()))
                    ) {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.expect("a memory-row task panicked");
    }
    failed
}

/// What the tables were measured on.
fn header(settings: &Settings, tokio: &tokio::runtime::Runtime) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} repetitions; in each, every contender of a row gets a {} ms window after {} ms of \
         warm-up, the contenders taking turns. Medians over repetitions; ratios are medians of \
         the per-repetition ratios. redis-server on loopback, {cpus} CPUs, callers on a tokio \
         multi-thread runtime with {} workers, ttl {} s.\n",
        settings.repetitions,
        settings.window.as_millis(),
        settings.warm_up.as_millis(),
        tokio.metrics().num_workers(),
        TTL.as_secs(),
    )
}
