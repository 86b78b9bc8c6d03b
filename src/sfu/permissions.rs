//! What a participant may do in a room. Signaling derives it from a token's grants; the
//! router enforces it.

/// What a participant may do once joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub publish_data: bool,
    pub hidden: bool,
}
