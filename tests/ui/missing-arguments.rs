use cluster_singleton::singleton;

#[singleton]
async fn no_parentheses() {}

#[singleton()]
async fn empty_parentheses() {}

fn main() {}
