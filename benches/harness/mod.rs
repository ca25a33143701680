//! The lock benchmark's parts; `benches/lock.rs` puts them together.

pub mod drive;
pub mod floor;
pub mod model;
pub mod nodes;
pub mod report;
pub mod rslock;
pub mod scale;
pub mod settings;
