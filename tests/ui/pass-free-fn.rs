#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

use cluster_singleton::{singleton, Outcome};

#[derive(Debug)]
pub struct MailError;

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mail server refused")
    }
}

impl std::error::Error for MailError {}

pub struct Mailer {
    recipients: Vec<String>,
}

impl Mailer {
    async fn send_all(&self) -> Result<usize, MailError> {
        Ok(self.recipients.len())
    }
}

#[singleton(key = "daily-email", ttl = "10m")]
pub async fn send_daily_email(mailer: &Mailer) -> Result<usize, MailError> {
    mailer.send_all().await
}

async fn cron_tick(mailer: &Mailer) -> Result<(), Box<dyn std::error::Error>> {
    match send_daily_email(mailer).await? {
        Outcome::Ran(sent) => println!("sent {}", sent?),
        Outcome::Skipped(why) => println!("another machine has it: {why}"),
    }
    Ok(())
}

fn main() {
    let mailer = Mailer {
        recipients: vec!["a@example.com".to_owned()],
    };
    let _tick = cron_tick(&mailer);
}
