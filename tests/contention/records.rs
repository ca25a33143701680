//! What the workers write down and the checker reads: one line per event, on the machine-wide
//! monotonic clock.
//!
//! Each worker process appends to a file of its own, one `write` per line and no buffering, so
//! that a worker killed with SIGKILL leaves every record up to its death behind and never half a
//! line from two tasks mixed together (`O_APPEND` writes are placed whole).
//!
//! The lines, fields separated by single spaces (keys contain none, and a token is the random
//! part of the lease's token, before its space):
//!
//! ```text
//! R <pid>                                                   the worker is up
//! E <at> <valid_until> <pid> <task> <key> <token>           a body entered under a lease
//! X <at> <pid> <key> <token>                                that body exited, before the release
//! O <pid> <token> <ran>                                     its call returned: 1 `Ran`, 0 a lost lease
//! S <pid> <acquired> <busy> <no_quorum> <expired> <lost> <unexpected>   counts so far
//! U <pid> <message>                                         an error no fault explains
//! Q <at> <pid> <message>                                    a sample no-quorum error
//! ```
//!
//! `<at>` and `<valid_until>` are nanoseconds of `CLOCK_MONOTONIC`, which every process on the
//! machine reads alike; `<valid_until>` is when the lease stops being safe to rely on.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub type Nanos = u64;

/// Now on `CLOCK_MONOTONIC`: the clock that stamps every record, comparable between the
/// processes of one machine (unlike `Instant`, whose value cannot be shown to another process).
pub fn monotonic_now() -> Nanos {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which is valid and writable.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    let seconds = u64::try_from(now.tv_sec).expect("the monotonic clock is not negative");
    let nanos = u64::try_from(now.tv_nsec).expect("the monotonic clock is not negative");
    seconds * 1_000_000_000 + nanos
}

/// How many attempts of a worker ended which way; summed over workers for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Locks taken: each one is a body.
    pub acquired: u64,
    /// `Ok(None)`: a quorum answered and another holder had the key.
    pub busy: u64,
    /// `Error::NoQuorum`: too few nodes answered (expected while nodes are faulty).
    pub no_quorum: u64,
    /// `Error::Expired`: a quorum granted, too slowly to leave validity.
    pub expired: u64,
    /// `Error::LeaseLost`: the body ran, but outlived its lease, and the call said so.
    pub lost: u64,
    /// Errors that no fault explains; each also has a `U` record.
    pub unexpected: u64,
}

impl Counts {
    /// What happened since `earlier` was taken.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            acquired: self.acquired - earlier.acquired,
            busy: self.busy - earlier.busy,
            no_quorum: self.no_quorum - earlier.no_quorum,
            expired: self.expired - earlier.expired,
            lost: self.lost - earlier.lost,
            unexpected: self.unexpected - earlier.unexpected,
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.acquired += other.acquired;
        self.busy += other.busy;
        self.no_quorum += other.no_quorum;
        self.expired += other.expired;
        self.lost += other.lost;
        self.unexpected += other.unexpected;
    }
}

/// One line of a record file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Ready {
        pid: u32,
    },
    Enter {
        at: Nanos,
        valid_until: Nanos,
        pid: u32,
        task: usize,
        key: String,
        token: String,
    },
    Exit {
        at: Nanos,
        pid: u32,
        key: String,
        token: String,
    },
    /// The call of the body with `token` returned: `Ran` (its lease was valid to the body's
    /// end, the call claims), or a lost lease.
    Outcome {
        pid: u32,
        token: String,
        ran: bool,
    },
    Counts {
        pid: u32,
        counts: Counts,
    },
    Unexpected {
        pid: u32,
        message: String,
    },
    NoQuorum {
        at: Nanos,
        pid: u32,
        message: String,
    },
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Ready { pid } => write!(f, "R {pid}"),
            Record::Enter {
                at,
                valid_until,
                pid,
                task,
                key,
                token,
            } => write!(f, "E {at} {valid_until} {pid} {task} {key} {token}"),
            Record::Exit {
                at,
                pid,
                key,
                token,
            } => write!(f, "X {at} {pid} {key} {token}"),
            Record::Outcome { pid, token, ran } => write!(f, "O {pid} {token} {}", u8::from(*ran)),
            Record::Counts { pid, counts: c } => write!(
                f,
                "S {pid} {} {} {} {} {} {}",
                c.acquired, c.busy, c.no_quorum, c.expired, c.lost, c.unexpected
            ),
            // One line per record: the message's own line breaks would start bogus records.
            Record::Unexpected { pid, message } => {
                write!(f, "U {pid} {}", message.replace('\n', " "))
            }
            Record::NoQuorum { at, pid, message } => {
                write!(f, "Q {at} {pid} {}", message.replace('\n', " "))
            }
        }
    }
}

impl Record {
    /// Parses one line, without its line break; `None` for anything else.
    pub fn parse(line: &str) -> Option<Record> {
        let (kind, rest) = line.split_once(' ')?;
        if kind == "U" {
            let (pid, message) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(Record::Unexpected {
                pid: pid.parse().ok()?,
                message: message.to_owned(),
            });
        }
        if kind == "Q" {
            let mut parts = rest.splitn(3, ' ');
            return Some(Record::NoQuorum {
                at: parts.next()?.parse().ok()?,
                pid: parts.next()?.parse().ok()?,
                message: parts.next().unwrap_or("").to_owned(),
            });
        }
        let fields: Vec<&str> = rest.split(' ').collect();
        let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
        let text = |i: usize| fields.get(i).map(|s| (*s).to_owned());
        let pid = |i: usize| fields.get(i)?.parse::<u32>().ok();
        match (kind, fields.len()) {
            ("R", 1) => Some(Record::Ready { pid: pid(0)? }),
            ("E", 6) => Some(Record::Enter {
                at: number(0)?,
                valid_until: number(1)?,
                pid: pid(2)?,
                task: fields[3].parse().ok()?,
                key: text(4)?,
                token: text(5)?,
            }),
            ("X", 4) => Some(Record::Exit {
                at: number(0)?,
                pid: pid(1)?,
                key: text(2)?,
                token: text(3)?,
            }),
            ("O", 3) => Some(Record::Outcome {
                pid: pid(0)?,
                token: text(1)?,
                ran: match fields[2] {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
            }),
            ("S", 7) => Some(Record::Counts {
                pid: pid(0)?,
                counts: Counts {
                    acquired: number(1)?,
                    busy: number(2)?,
                    no_quorum: number(3)?,
                    expired: number(4)?,
                    lost: number(5)?,
                    unexpected: number(6)?,
                },
            }),
            _ => None,
        }
    }
}

/// A worker's record file, shared by its tasks.
pub struct RecordWriter {
    file: File,
}

impl RecordWriter {
    pub fn create(path: &Path) -> io::Result<RecordWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(RecordWriter { file })
    }

    /// Appends one record with a single `write`, so that it is on file before the body goes on.
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let line = format!("{record}\n");
        (&self.file).write_all(line.as_bytes())
    }
}

/// Reads a record file as it grows: each call returns the whole lines added since the last.
pub struct RecordTail {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: String,
}

impl RecordTail {
    pub fn new(path: PathBuf) -> RecordTail {
        RecordTail {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records completed since the last call; none if the file does not exist yet.
    pub fn read_new(&mut self) -> io::Result<Vec<Record>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let complete = match self.partial.rfind('\n') {
            Some(end) => {
                let rest = self.partial.split_off(end + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => return Ok(Vec::new()),
        };
        complete
            .lines()
            .map(|line| {
                Record::parse(line).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a record in {}: {line:?}", self.path.display()),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_round_trip() {
        let records = [
            Record::Ready { pid: 7 },
            Record::Enter {
                at: 10,
                valid_until: 2_000_000_010,
                pid: 7,
                task: 2,
                key: "contention-1".into(),
                token: "00ff".into(),
            },
            Record::Exit {
                at: 20,
                pid: 7,
                key: "contention-1".into(),
                token: "00ff".into(),
            },
            Record::Outcome {
                pid: 7,
                token: "00ff".into(),
                ran: true,
            },
            Record::Counts {
                pid: 7,
                counts: Counts {
                    acquired: 1,
                    busy: 2,
                    no_quorum: 3,
                    expired: 4,
                    lost: 5,
                    unexpected: 6,
                },
            },
            Record::Unexpected {
                pid: 7,
                message: "internal failure: boom".into(),
            },
            Record::NoQuorum {
                at: 30,
                pid: 7,
                message: "no quorum for `singleton:lock:contention-1`: 2 of 5".into(),
            },
        ];
        for record in records {
            assert_eq!(Record::parse(&record.to_string()), Some(record));
        }
        assert_eq!(Record::parse("E 1 2"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn the_monotonic_clock_goes_forward() {
        let before = monotonic_now();
        assert!(monotonic_now() >= before);
    }

    #[test]
    fn a_tail_returns_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.records");
        let mut tail = RecordTail::new(path.clone());
        assert!(tail.read_new().unwrap().is_empty(), "no file yet");

        let mut file = File::create(&path).unwrap();
        file.write_all(b"R 1\nR 2\nR").unwrap();
        assert_eq!(
            tail.read_new().unwrap(),
            [Record::Ready { pid: 1 }, Record::Ready { pid: 2 }]
        );
        file.write_all(b" 3\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), [Record::Ready { pid: 3 }]);
    }
}
