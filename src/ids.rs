//! Newtype identifiers shared across modules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A participant session inside one node. Never reused while the process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParticipantId(pub u64);

/// A published track inside one node. Never reused while the process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrackId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PA_{:x}", self.0)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TR_{:x}", self.0)
    }
}

impl std::str::FromStr for ParticipantId {
    type Err = ();

    /// Parses the `PA_…` form [`fmt::Display`] writes (LiveKit sids).
    fn from_str(s: &str) -> Result<Self, ()> {
        let hex = s.strip_prefix("PA_").ok_or(())?;
        u64::from_str_radix(hex, 16).map(ParticipantId).map_err(|_| ())
    }
}

impl std::str::FromStr for TrackId {
    type Err = ();

    /// Parses the `TR_…` form [`fmt::Display`] writes (LiveKit sids).
    fn from_str(s: &str) -> Result<Self, ()> {
        let hex = s.strip_prefix("TR_").ok_or(())?;
        u64::from_str_radix(hex, 16).map(TrackId).map_err(|_| ())
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must be 1 to {max} characters")]
    Length { max: usize },
    #[error("may contain only letters, digits and - _ . @ :")]
    Charset,
}

/// Validates names that end up in URLs, tokens and logs (rooms, identities).
fn check_name(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() || s.len() > max {
        return Err(NameError::Length { max });
    }
    let ok = s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'));
    if ok { Ok(()) } else { Err(NameError::Charset) }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check_name(&s, $max)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A room name, as it appears in tokens and URLs.
    RoomName,
    128
);
impl RoomName {
    /// The router's name for `org`'s room `room`: rooms of different orgs never meet, even
    /// when their names are the same.
    pub fn in_org(org: &str, room: &RoomName) -> RoomName {
        RoomName(format!("{org}:{}", room.0))
    }

    /// The org of a router room name.
    pub fn org(&self) -> Option<&str> {
        self.0.split_once(':').map(|(org, _)| org).filter(|org| org.starts_with("org_"))
    }

    /// The name the room's org knows it by.
    pub fn local(&self) -> &str {
        match self.org() {
            Some(org) => &self.0[org.len() + 1..],
            None => &self.0,
        }
    }
}

name_type!(
    /// A participant identity, unique within a room (the token's `sub`).
    Identity,
    128
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(RoomName::new("demo-1").is_ok());
        assert_eq!(RoomName::new(""), Err(NameError::Length { max: 128 }));
        assert_eq!(RoomName::new("a/b"), Err(NameError::Charset));
        // A room called like another org's scoped name stays in its own org.
        let tricky = RoomName::new("org_b:x").unwrap();
        let scoped = RoomName::in_org("org_a", &tricky);
        assert_eq!((scoped.org(), scoped.local()), (Some("org_a"), "org_b:x"));
        assert_ne!(scoped, RoomName::in_org("org_b", &RoomName::new("x").unwrap()));
        assert_eq!(Identity::new("x".repeat(129)), Err(NameError::Length { max: 128 }));
        assert!(serde_json::from_str::<RoomName>("\"../etc\"").is_err());
        assert_eq!("TR_1f".parse::<TrackId>(), Ok(TrackId(31)));
        assert_eq!(ParticipantId(42).to_string().parse::<ParticipantId>(), Ok(ParticipantId(42)));
        assert!("TR_zz".parse::<TrackId>().is_err() && "PA_1".parse::<TrackId>().is_err());
    }
}

/// A new record id: `prefix_` then 26 Crockford base32 characters, 48 bits of milliseconds
/// since the epoch and 80 random bits (the ULID layout). Ids sort by creation time, which
/// keeps B-tree inserts local and lets `ORDER BY id` page newest-first. One process hands
/// out strictly increasing ids (ULID's monotonic mode, extended to a clock that steps back),
/// so that order is the order of creation.
pub fn record_id(prefix: &str, now_ms: i64) -> String {
    use rand::Rng;
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    // Leave headroom so many ids in one millisecond still increase without a carry.
    let random: u128 = rand::thread_rng().r#gen::<u128>() & ((1 << 79) - 1);
    let fresh = ((now_ms as u128 & ((1 << 48) - 1)) << 80) | random;
    let value = {
        let mut last = LAST.lock().expect("not poisoned");
        *last = fresh.max(*last + 1);
        *last
    };
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        out.push(ALPHABET[((value >> (i * 5)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod record_id_tests {
    use super::record_id;

    #[test]
    fn ids_are_prefixed_unique_and_time_ordered() {
        let a = record_id("org", 1_700_000_000_000);
        let b = record_id("org", 1_700_000_000_001);
        assert!(a.starts_with("org_") && a.len() == 30, "{a}");
        assert!(a < b);
        let (c, d) = (record_id("org", 5), record_id("org", 5));
        assert!(c < d, "same millisecond, still in order: {c} {d}");
        assert!(record_id("org", 4) > d, "a clock stepping back does not reorder");
    }
}
