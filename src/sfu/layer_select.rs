//! Choosing a simulcast layer for a subscriber from its bandwidth estimate and the quality it
//! asked for. Pure functions over measured layer bitrates.

use str0m::media::Rid;

/// Quality a subscriber asks for, as LiveKit's VideoQuality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Low,
    Medium,
    #[default]
    High,
}

/// One received simulcast layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRate {
    pub rid: Rid,
    /// Measured bits per second over the last window; 0 when the layer is not flowing.
    pub bps: u64,
}

/// Orders layers lowest quality first: by measured rate, names breaking ties before any rate
/// is known (`q`/`l`/`low` < `h`/`m`/`mid` < `f`/`high`; `h` is "half" in Chrome's q/h/f).
pub fn order(layers: &mut [LayerRate]) {
    let all_names: Vec<String> = layers.iter().map(|l| l.rid.to_string()).collect();
    let uses_qhf = all_names.iter().any(|n| n == "q" || n == "f");
    let rank = |rid: &Rid| -> u8 {
        match rid.to_string().as_str() {
            "q" | "l" | "low" | "0" => 0,
            "h" if uses_qhf => 1,
            "m" | "mid" | "medium" | "1" => 1,
            _ => 2,
        }
    };
    layers.sort_by(|a, b| a.bps.cmp(&b.bps).then_with(|| rank(&a.rid).cmp(&rank(&b.rid))));
    if layers.iter().all(|l| l.bps == 0) {
        layers.sort_by_key(|l| rank(&l.rid));
    }
}

/// Share of the estimate that video may use; the rest covers audio, RTCP and retransmissions.
const HEADROOM: f64 = 0.85;

/// Picks the best layer that fits `estimate_bps` (when known) and `max` quality.
/// `layers` must be ordered with [`order`]. Returns `None` only when there are no layers.
pub fn select(layers: &[LayerRate], estimate_bps: Option<u64>, max: Quality) -> Option<Rid> {
    let flowing: Vec<&LayerRate> = if layers.iter().any(|l| l.bps > 0) {
        layers.iter().filter(|l| l.bps > 0).collect()
    } else {
        layers.iter().collect()
    };
    let n = flowing.len();
    if n == 0 {
        return None;
    }
    let cap = match max {
        Quality::Low => 0,
        Quality::Medium => (n - 1).min(1),
        Quality::High => n - 1,
    };
    let budget = estimate_bps.map(|e| (e as f64 * HEADROOM) as u64);
    let fits = |l: &LayerRate| budget.is_none_or(|b| l.bps <= b);
    // The lowest layer is always allowed: a frozen picture is worse than a soft one.
    let idx = flowing[..=cap].iter().rposition(|l| fits(l)).unwrap_or(0);
    Some(flowing[idx].rid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(spec: &[(&str, u64)]) -> Vec<LayerRate> {
        let mut v: Vec<_> = spec.iter().map(|(r, b)| LayerRate { rid: Rid::from(*r), bps: *b }).collect();
        order(&mut v);
        v
    }

    #[test]
    fn picks_by_estimate_and_quality() {
        let l = layers(&[("f", 2_500_000), ("q", 150_000), ("h", 600_000)]);
        assert_eq!(l[0].rid, Rid::from("q"));
        assert_eq!(select(&l, None, Quality::High), Some(Rid::from("f")));
        assert_eq!(select(&l, Some(1_000_000), Quality::High), Some(Rid::from("h")));
        assert_eq!(select(&l, Some(10_000), Quality::High), Some(Rid::from("q")));
        assert_eq!(select(&l, Some(10_000_000), Quality::Low), Some(Rid::from("q")));
        assert_eq!(select(&l, Some(10_000_000), Quality::Medium), Some(Rid::from("h")));
        assert_eq!(select(&[], None, Quality::High), None);
    }

    #[test]
    fn names_order_layers_before_rates_are_known() {
        let l = layers(&[("h", 0), ("m", 0), ("l", 0)]);
        let names: Vec<String> = l.iter().map(|x| x.rid.to_string()).collect();
        assert_eq!(names, ["l", "m", "h"]);
        let l = layers(&[("f", 0), ("h", 0), ("q", 0)]);
        assert_eq!(l[1].rid, Rid::from("h"));
        // A layer that stopped flowing is skipped.
        let l = layers(&[("l", 100_000), ("h", 0)]);
        assert_eq!(select(&l, None, Quality::High), Some(Rid::from("l")));
    }
}
