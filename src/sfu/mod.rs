//! Selective forwarding: a sans-IO room router over str0m, its tokio driver, and signaling.

pub mod core;
pub mod data;
mod describe;
pub mod driver;
pub mod forward;
pub mod ice_tcp;
pub mod layer_select;
pub mod mirror;
mod peer;
pub mod permissions;
pub mod quality;
pub mod speaker;
pub mod tap;

pub use self::core::{
    ClientAnswer, JoinRequest, LeaveReason, ParticipantInfo, Sfu, SfuConfig, SfuError, SfuEvent, SfuStats,
    SubscriptionGrant, TrackInfo,
};
pub use self::layer_select::Quality;
pub use self::peer::{Negotiation, SubscribeFilter};
pub use self::permissions::Permissions;
pub use self::tap::{Offer, TapFrame, TapSink};
