use cluster_singleton::singleton;

#[singleton(key = "daily-email", ttl = "10m")]
struct DailyEmail;

trait Job {
    #[singleton(key = "job", ttl = "10m")]
    async fn run(&self);
}

fn main() {
    let _ = DailyEmail;
}
