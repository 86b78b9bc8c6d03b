//! Audio codecs: the AIC neural compression stage and its settings (see docs/aic.md).

pub mod modes;
