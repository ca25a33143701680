#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::num::ParseIntError;

use cluster_singleton::{singleton, Outcome};

#[derive(Debug)]
enum ImportError {
    Empty,
    Parse(ParseIntError),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Empty => f.write_str("nothing to import"),
            ImportError::Parse(error) => write!(f, "not a number: {error}"),
        }
    }
}

impl From<ParseIntError> for ImportError {
    fn from(error: ParseIntError) -> Self {
        ImportError::Parse(error)
    }
}

#[singleton(key = "import", ttl = "2m")]
async fn import(lines: &[&str]) -> Result<u64, ImportError> {
    if lines.is_empty() {
        return Err(ImportError::Empty);
    }
    let mut total = 0;
    for line in lines {
        // `?` converts through `From`, as it would without the attribute.
        let value: u64 = line.trim().parse()?;
        if value == 0 {
            return Ok(total);
        }
        total += value;
    }
    Ok(total)
}

#[singleton(key = "import-boxed", ttl = "2m")]
async fn import_boxed(line: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(line.parse::<u64>()?)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    match import(&["1", "2"]).await? {
        Outcome::Ran(Ok(total)) => println!("imported {total}"),
        Outcome::Ran(Err(error)) => println!("import failed: {error}"),
        Outcome::Skipped(why) => println!("skipped: {why}"),
    }
    if let Outcome::Ran(parsed) = import_boxed("7").await? {
        println!("{}", parsed.map_err(|error| error.to_string())?);
    }
    Ok(())
}

fn main() {
    let _run = run();
}
