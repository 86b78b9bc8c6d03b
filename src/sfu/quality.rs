//! Connection quality, as LiveKit clients show it, from what str0m measures on a connection:
//! packet loss both ways and round-trip time.

use std::time::Duration;

/// LiveKit's ConnectionQuality scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Lost,
    Poor,
    Good,
    Excellent,
}

/// Rates one measurement. Thresholds follow the usual VoIP rules of thumb: under 2 % loss
/// and 300 ms round trip nobody notices; past 10 % or 600 ms speech breaks up.
pub fn rate(loss: f32, rtt: Option<Duration>) -> Quality {
    let rtt = rtt.unwrap_or_default();
    if loss < 0.02 && rtt < Duration::from_millis(300) {
        Quality::Excellent
    } else if loss < 0.10 && rtt < Duration::from_millis(600) {
        Quality::Good
    } else {
        Quality::Poor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(rate(0.0, Some(Duration::from_millis(20))), Quality::Excellent);
        assert_eq!(rate(0.05, None), Quality::Good);
        assert_eq!(rate(0.0, Some(Duration::from_millis(400))), Quality::Good);
        assert_eq!(rate(0.2, None), Quality::Poor);
        assert!(Quality::Lost < Quality::Poor && Quality::Good < Quality::Excellent);
    }
}
