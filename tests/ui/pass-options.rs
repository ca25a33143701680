#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use std::fmt::Display;

use cluster_singleton::{singleton, Outcome};

#[derive(Debug)]
pub struct ReportError;

#[singleton(key = "waits", ttl = "10s", wait = "30s")]
async fn waits() -> u8 {
    1
}

#[singleton(key = "no-renewal", ttl = "10m", renew = false)]
async fn no_renewal() {}

#[singleton(key = "renewal-on", ttl = "10m", renew = true, max_hold = "10m")]
async fn renewal_on() {}

#[singleton(key = "bounded", ttl = "10m", max_hold = "1h 30m")]
async fn bounded() -> Result<(), ReportError> {
    Ok(())
}

#[singleton(key = "cancelled-when-lost", ttl = "1m", on_lost = "cancel")]
async fn cancelled_when_lost() {}

#[singleton(key = "finishes-when-lost", ttl = "1m", on_lost = "continue")]
async fn finishes_when_lost(rows: Vec<u32>) -> usize {
    rows.len()
}

#[singleton(key = "held", ttl = "1m", min_hold = "1m")]
async fn held() -> Result<u32, ReportError> {
    Err(ReportError)
}

#[singleton(key = "daily", ttl = "10m", slot = "1d")]
async fn daily() -> Result<(), ReportError> {
    Ok(())
}

#[singleton(key = "fenced", ttl = "1m", fencing = true)]
async fn fenced() -> Option<u64> {
    cluster_singleton::lease().and_then(|lease| lease.fencing_token())
}

// Every option at once, in another order than the expansion's.
#[singleton(
    fencing = false,
    slot = "1h",
    min_hold = "50s",
    on_lost = "continue",
    max_hold = "2h",
    renew = true,
    wait = "500ms",
    crate = "::cluster_singleton",
    ttl = "1m",
    key = "everything"
)]
async fn everything() -> Result<String, ReportError> {
    Ok("done".to_owned())
}

// The body's success is judged at the declared return type, whatever it names.
type Judged<'a> = Result<&'a str, ReportError>;

struct Report {
    title: String,
}

impl Report {
    #[singleton(key = "report-title", ttl = "1m", min_hold = "30s")]
    async fn title(&self) -> &str {
        &self.title
    }

    #[singleton(key = "report-judged", ttl = "1m", min_hold = "30s")]
    async fn judged<'a>(&'a self, fail: bool) -> Judged<'a> {
        if fail {
            return Err(ReportError);
        }
        Ok(&self.title)
    }

    #[singleton(key = "report-copy", ttl = "1m", min_hold = "30s")]
    async fn copy(&self) -> Self {
        Report {
            title: self.title.clone(),
        }
    }

    #[singleton(key = "report-generic", ttl = "1m", min_hold = "30s")]
    async fn generic<T: Display + Send>(
        &self,
        value: T,
    ) -> Result<Option<T>, Box<dyn std::error::Error + Send + Sync + '_>> {
        println!("{}: {value}", self.title);
        Ok(Some(value))
    }

    #[singleton(key = "report-shown", ttl = "1m", min_hold = "30s")]
    async fn shown(&self) -> Result<impl Display + '_, ReportError> {
        Ok(&self.title)
    }
}

async fn nightly() -> Result<(), cluster_singleton::Error> {
    let _waits = waits().await?;
    let _no_renewal = no_renewal().await?;
    let _renewal_on = renewal_on().await?;
    let _bounded = bounded().await?;
    let _cancelled = cancelled_when_lost().await?;
    let _finished = finishes_when_lost(vec![1, 2]).await?;
    let _held = held().await?;
    let _daily = daily().await?;
    if let Outcome::Ran(Some(token)) = fenced().await? {
        println!("{token}");
    }
    if let Outcome::Ran(Ok(text)) = everything().await? {
        println!("{text}");
    }
    let report = Report {
        title: "nightly".to_owned(),
    };
    let _title = report.title().await?;
    let _judged = report.judged(false).await?;
    let _copy = report.copy().await?;
    let _generic = report.generic(3).await?;
    if let Outcome::Ran(Ok(shown)) = report.shown().await? {
        println!("{shown}");
    }
    Ok(())
}

fn main() {
    let _nightly = nightly();
}
