//! How many tracks one of a node's stages (AIC, speech) runs at once, and how many of them one
//! org may have: each is a thread with model state, so neither the node nor any one org can
//! be made to hold them without end.

use crate::ids::RoomName;

/// A stage's limits: tracks on the node, tracks of one org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapCapacity {
    pub node: usize,
    pub per_org: usize,
}

/// What a stage runs now: `(on the node, in rooms of org)`, from each room's track count.
pub fn running<'a>(rooms: impl Iterator<Item = (&'a RoomName, usize)>, org: Option<&str>) -> (usize, usize) {
    rooms.fold((0, 0), |(node, mine), (room, n)| (node + n, if room.org() == org { mine + n } else { mine }))
}

impl TapCapacity {
    /// Whether one more track fits beside `running` (see [`running`]).
    pub fn admits(&self, (node, org): (usize, usize)) -> bool {
        node < self.node && org < self.per_org
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_org_cannot_take_the_whole_node() {
        let room = |org: &str, name: &str| RoomName::in_org(org, &RoomName::new(name).unwrap());
        let rooms = [(room("org_a", "x"), 3), (room("org_a", "y"), 1), (room("org_b", "x"), 2)];
        let cap = TapCapacity { node: 8, per_org: 4 };
        let now = |org| running(rooms.iter().map(|(r, n)| (r, *n)), Some(org));
        assert_eq!(now("org_a"), (6, 4));
        assert!(!cap.admits(now("org_a")), "org_a has its share");
        assert!(cap.admits(now("org_b")));
        assert!(!TapCapacity { node: 6, per_org: 4 }.admits(now("org_b")), "the node is full");
    }
}
