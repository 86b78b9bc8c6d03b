//! The three AIC modes operators choose between (DESIGN.md "AIC modes") and the models that
//! run them. The per-track settings built on them are the pipeline's
//! (`crate::pipeline::aic::AicConfig`).

use serde::{Deserialize, Serialize};

/// How hard AIC compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    /// 12 kbit/s: half of Opus at 24 kbit/s, better than Opus at 12.
    Conservative,
    /// 4.8 kbit/s (the default): a fifth of Opus at 24, better than Opus at 6.
    Adaptive,
    /// 2.4 kbit/s: a tenth, still intelligible.
    Aggressive,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Conservative, Mode::Adaptive, Mode::Aggressive];

    /// The bitstream's rate.
    pub fn bitrate_bps(self) -> u32 {
        match self {
            Mode::Conservative => 12_000,
            Mode::Adaptive => 4_800,
            Mode::Aggressive => 2_400,
        }
    }

    /// What `target_ratio` is relative to: Opus at 24 kbit/s.
    pub const REFERENCE_BPS: u32 = 24_000;

    /// Size relative to Opus at 24 kbit/s.
    pub fn target_ratio(self) -> f64 {
        f64::from(self.bitrate_bps()) / f64::from(Mode::REFERENCE_BPS)
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Conservative => "conservative",
            Mode::Adaptive => "adaptive",
            Mode::Aggressive => "aggressive",
        }
    }

    /// Either spelling (`ADAPTIVE`, `adaptive`).
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s))
    }
}

/// The models AIC can run (docs/aic.md): aic-v2 (the default) sends CONSERVATIVE and
/// ADAPTIVE as Opus enhanced by a network and AGGRESSIVE as aic-v1's codes; aic-v1 sends its
/// codes in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelType {
    #[serde(rename = "aic-v1")]
    AicV1,
    #[serde(rename = "aic-v2")]
    AicV2,
}

impl ModelType {
    pub const ALL: [ModelType; 2] = [ModelType::AicV1, ModelType::AicV2];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::AicV1 => "aic-v1",
            ModelType::AicV2 => "aic-v2",
        }
    }

    pub fn parse(s: &str) -> Option<ModelType> {
        ModelType::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_either_case_and_match_the_design_rates() {
        assert_eq!(Mode::parse("ADAPTIVE"), Some(Mode::Adaptive));
        assert_eq!(Mode::parse("aggressive"), Some(Mode::Aggressive));
        assert_eq!(Mode::parse("turbo"), None);
        assert_eq!(Mode::Conservative.target_ratio(), 0.5);
        assert_eq!(Mode::Adaptive.target_ratio(), 0.2);
        assert_eq!(Mode::Aggressive.target_ratio(), 0.1);
        assert_eq!(serde_json::to_value(Mode::Adaptive).unwrap(), "ADAPTIVE");
        assert_eq!(ModelType::parse("aic-v2"), Some(ModelType::AicV2));
        assert_eq!(ModelType::parse("AIC-V2"), None);
        assert_eq!(serde_json::to_value(ModelType::AicV1).unwrap(), "aic-v1");
    }
}
