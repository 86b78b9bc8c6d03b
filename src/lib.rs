//! AuraLink: a real-time media server with an AI pipeline inside it.

pub mod api;
pub mod client;
pub mod codec;
pub mod config;
pub mod db;
pub mod error;
pub mod ids;
pub mod pipeline;
pub mod secrets;
pub mod server;
pub mod sfu;
pub mod signal;
pub mod wall;
