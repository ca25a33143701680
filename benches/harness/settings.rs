//! What to measure and for how long: the command line of `cargo bench --bench lock -- ...`.

use std::time::Duration;

use super::scale::BURST_TTL;

/// Repetitions by default: five gives a median that one noisy window cannot move.
const DEFAULT_REPETITIONS: usize = 5;
/// The measured window of one contender in one row, by default.
const DEFAULT_WINDOW: Duration = Duration::from_millis(750);
/// Unrecorded attempts before each window, so that every contender starts warm.
const DEFAULT_WARM_UP: Duration = Duration::from_millis(150);

/// `--quick`: enough to see the shape of the table in about a minute, not to quote from.
const QUICK_REPETITIONS: usize = 2;
const QUICK_WINDOW: Duration = Duration::from_millis(200);
const QUICK_WARM_UP: Duration = Duration::from_millis(50);

/// `--memory`: the figure, one million lock cycles.
pub const DEFAULT_MEMORY_CYCLES: u64 = 1_000_000;

/// The hold row's lease counts by default: quick enough for any run; issue 12 asks for up to
/// 100 000 (`--leases 1000,10000,30000,100000`).
const DEFAULT_LEASES: [usize; 2] = [1_000, 10_000];
/// The hold row's measuring window: about ten renewal rounds at its 3 s ttl.
const DEFAULT_HOLD_WINDOW: Duration = Duration::from_secs(10);
/// Calls the burst row starts at once.
const DEFAULT_BURST: usize = 50_000;

pub const USAGE: &str = "\
usage: cargo bench --bench lock -- [options]

Starts its own redis-server nodes (1, 3 and 5 of them) and measures, side by side and taking
turns within each repetition: a raw redis-rs Redlock cycle (the floor), this crate's runtime API,
a #[singleton] function, and rslock (built on first use, in a process of its own). Prints
Markdown tables of medians on stdout; progress goes to stderr.

options:
  --quick               2 repetitions of 200 ms windows: a quick look, about a minute
  --reps N              repetitions (default 5)
  --window-ms N         measured window per contender and row (default 750)
  --warm-up-ms N        unrecorded warm-up before each window (default 150)
  --nodes LIST          node counts, from 1,3,5 (default all)
  --tasks LIST          concurrent tasks of the distinct-key rows (default 1,16,64)
  --rows LIST           from distinct,contended,frozen,renewal,memory,hold,burst
                        (default: all but memory, hold and burst)
  --contenders LIST     from floor,runtime,attribute,rslock (default all; without the
                        floor there are no ratios: for profiling one contender alone)
  --memory              also run the memory row (resident size over a million cycles)
  --memory-cycles N     cycles of the memory row (default 1000000)
  --leases LIST         leases the hold row holds at once, one measurement each
                        (default 1000,10000)
  --hold-window-ms N    the hold row's measuring window (default 10000: ten renewal
                        rounds at its 3 s ttl)
  --burst N             calls the burst row starts at once (default 50000)
  --burst-ttl-ms N      the ttl of each burst call (default and most 10000)
  --no-restart-grace    the runtime with `restart_grace(Duration::ZERO)`, as for nodes that
                        persist every write: no epoch read with each vote (default: the
                        grace on, as a user gets it, with `max_ttl` the bench's ttl; the run
                        first waits until the fresh nodes have been up that long)
  -h, --help            this text
";

/// Kinds of rows, as `--rows` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    Distinct,
    Contended,
    Frozen,
    Renewal,
    Memory,
    /// Many leases held at once while renewal keeps them (issue 12).
    Hold,
    /// Many acquisitions started at once (issue 12).
    Burst,
}

/// The contenders that `--contenders` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pick {
    Floor,
    Runtime,
    Attribute,
    Rslock,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub repetitions: usize,
    pub window: Duration,
    pub warm_up: Duration,
    pub nodes: Vec<usize>,
    pub tasks: Vec<usize>,
    pub rows: Vec<RowKind>,
    pub contenders: Vec<Pick>,
    pub memory_cycles: u64,
    /// Leases held at once in the hold row, one measurement per count.
    pub leases: Vec<usize>,
    pub hold_window: Duration,
    /// Calls started at once in the burst row.
    pub burst: usize,
    /// The ttl of each burst call.
    pub burst_ttl: Duration,
    /// The runtime's restart grace on (its default), rather than off.
    pub restart_grace: bool,
    pub help: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            repetitions: DEFAULT_REPETITIONS,
            window: DEFAULT_WINDOW,
            warm_up: DEFAULT_WARM_UP,
            nodes: vec![1, 3, 5],
            tasks: vec![1, 16, 64],
            rows: vec![
                RowKind::Distinct,
                RowKind::Contended,
                RowKind::Frozen,
                RowKind::Renewal,
            ],
            contenders: vec![Pick::Floor, Pick::Runtime, Pick::Attribute, Pick::Rslock],
            memory_cycles: DEFAULT_MEMORY_CYCLES,
            leases: DEFAULT_LEASES.to_vec(),
            hold_window: DEFAULT_HOLD_WINDOW,
            burst: DEFAULT_BURST,
            burst_ttl: BURST_TTL,
            restart_grace: true,
            help: false,
        }
    }
}

impl Settings {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
        let mut settings = Settings::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("`{arg}` needs a value; see --help"))
            };
            match arg.as_str() {
                // `cargo bench` passes it to every bench binary.
                "--bench" => {}
                "-h" | "--help" => settings.help = true,
                "--quick" => {
                    settings.repetitions = QUICK_REPETITIONS;
                    settings.window = QUICK_WINDOW;
                    settings.warm_up = QUICK_WARM_UP;
                }
                "--reps" => settings.repetitions = number::<usize>(&arg, &value()?)?.max(1),
                "--window-ms" => settings.window = millis(&arg, &value()?)?,
                "--warm-up-ms" => settings.warm_up = millis(&arg, &value()?)?,
                "--nodes" => {
                    settings.nodes = list(&arg, &value()?, |word| match word {
                        "1" => Some(1),
                        "3" => Some(3),
                        "5" => Some(5),
                        _ => None,
                    })?
                }
                "--tasks" => {
                    settings.tasks = list(&arg, &value()?, |word| {
                        word.parse::<usize>().ok().filter(|tasks| *tasks > 0)
                    })?
                }
                "--rows" => {
                    settings.rows = list(&arg, &value()?, |word| match word {
                        "distinct" => Some(RowKind::Distinct),
                        "contended" => Some(RowKind::Contended),
                        "frozen" => Some(RowKind::Frozen),
                        "renewal" => Some(RowKind::Renewal),
                        "memory" => Some(RowKind::Memory),
                        "hold" => Some(RowKind::Hold),
                        "burst" => Some(RowKind::Burst),
                        _ => None,
                    })?
                }
                "--contenders" => {
                    settings.contenders = list(&arg, &value()?, |word| match word {
                        "floor" => Some(Pick::Floor),
                        "runtime" => Some(Pick::Runtime),
                        "attribute" => Some(Pick::Attribute),
                        "rslock" => Some(Pick::Rslock),
                        _ => None,
                    })?;
                }
                "--memory" => {
                    if !settings.rows.contains(&RowKind::Memory) {
                        settings.rows.push(RowKind::Memory);
                    }
                }
                "--memory-cycles" => settings.memory_cycles = number(&arg, &value()?)?,
                "--leases" => {
                    settings.leases = list(&arg, &value()?, |word| {
                        word.parse::<usize>().ok().filter(|leases| *leases > 0)
                    })?
                }
                "--hold-window-ms" => settings.hold_window = millis(&arg, &value()?)?,
                "--burst" => settings.burst = number::<usize>(&arg, &value()?)?.max(1),
                "--burst-ttl-ms" => {
                    settings.burst_ttl = millis(&arg, &value()?)?;
                    if settings.burst_ttl.is_zero() || settings.burst_ttl > BURST_TTL {
                        return Err(format!(
                            "`{arg}` takes 1 to {} (the bench runtime's `max_ttl`)",
                            BURST_TTL.as_millis()
                        ));
                    }
                }
                "--no-restart-grace" => settings.restart_grace = false,
                other => return Err(format!("unknown argument `{other}`; see --help")),
            }
        }
        settings.nodes.sort_unstable();
        settings.nodes.dedup();
        Ok(settings)
    }

    pub fn wants(&self, kind: RowKind) -> bool {
        self.rows.contains(&kind)
    }

    pub fn picks(&self, pick: Pick) -> bool {
        self.contenders.contains(&pick)
    }
}

fn number<T: std::str::FromStr>(arg: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{arg}` takes a whole number, got `{value}`"))
}

fn millis(arg: &str, value: &str) -> Result<Duration, String> {
    number(arg, value).map(Duration::from_millis)
}

fn list<T>(arg: &str, value: &str, item: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|word| {
            item(word.trim()).ok_or_else(|| format!("`{arg}` does not take `{word}`; see --help"))
        })
        .collect()
}
