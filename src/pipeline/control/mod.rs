//! The pipeline's own control: which tracks get which stage. It follows the router's track
//! events (`track_events.rs`), reads a room's stored settings when a track appears
//! (`settings.rs`), and takes new settings for one room from the control API, which only
//! validates, stores and audits them. `aic.rs` and `speech.rs` keep the stages of each
//! room, within the node's and each org's limits (`capacity.rs`).

pub mod aic;
pub mod capacity;
pub mod settings;
pub mod speech;
mod track_events;
