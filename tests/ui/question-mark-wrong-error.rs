use cluster_singleton::singleton;

#[derive(Debug)]
struct MailError;

#[singleton(key = "daily-email", ttl = "10m")]
async fn send_daily_email(count: &str) -> Result<usize, MailError> {
    let sent: usize = count.parse()?;
    Ok(sent)
}

fn main() {}
