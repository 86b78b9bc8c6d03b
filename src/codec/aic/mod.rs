//! AIC, the neural speech codec: its bitstream (and, as they land, its model and the stage
//! that runs it on tracks). See docs/aic.md.

pub mod bitstream;
