use cluster_singleton::singleton;

#[singleton(key = "answer", ttl = "10m")]
const fn answer() -> u8 {
    42
}

fn main() {
    let _answer: u8 = answer();
}
