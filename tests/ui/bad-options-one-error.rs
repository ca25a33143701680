// A combination that does not fit (`min_hold` longer than `ttl`) is reported once, on the value
// to change; the function still gets its rewritten signature, so the caller adds no error.
use cluster_singleton::{singleton, Outcome};

#[singleton(key = "invoice:{customer_id}", ttl = "1m", min_hold = "5m")]
async fn issue_invoice(customer_id: u64) -> Result<u64, std::io::Error> {
    Ok(customer_id)
}

async fn cron_tick() -> Result<(), Box<dyn std::error::Error>> {
    match issue_invoice(7).await? {
        Outcome::Ran(issued) => println!("issued {}", issued?),
        Outcome::Skipped(why) => println!("skipped: {why}"),
    }
    Ok(())
}

fn main() {
    let _tick = cron_tick();
}
