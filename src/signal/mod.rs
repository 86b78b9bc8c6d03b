//! Signaling: how sessions reach the router. Each protocol is a thin adapter over
//! [`crate::sfu::driver::SfuHandle`]; the router itself knows none of them.

pub mod livekit;
pub mod revocation;
pub mod room_settings;
pub mod sdpfrag;
pub mod token;
pub mod whip;
