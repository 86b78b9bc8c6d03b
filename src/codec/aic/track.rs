//! One track's AIC encoder and decoder, whichever design its mode runs: aic-v2 sends
//! CONSERVATIVE and ADAPTIVE as 16 kHz Opus that the decoder's network enhances
//! ([`super::enhance`]) and AGGRESSIVE as a vocoder's parameters ([`super::lpc`]); aic-v1
//! sends codes in every mode. Packets name the model that made them, so the decoder follows the encoder's switches.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::ModelError;
use super::bitstream::{AIC_V1, Frame, OPUS_CORE, Packet, VOCODER_CORE};
use super::enhance::{self, Core, Enhancer, EnhancerState};
use super::lpc::{self, LpcDecoder, LpcEncoder};
use super::mdct::HOP;
use super::model::{AicDecoder, AicEncoder, AicModel};
use super::quality::QualityMeter;
use crate::codec::device::Devices;
use crate::codec::modes::{Mode, ModelType};
use crate::codec::opus::{OpusDecoder, OpusEncoder, WIDEBAND_RATE};

/// Both networks and the quality meter, built once and shared by every track.
pub struct AicModels {
    pub codes: Arc<AicModel>,
    pub enhancer: Arc<Enhancer>,
    pub meter: QualityMeter,
}

impl AicModels {
    pub fn new(codes: Arc<AicModel>, enhancer: Arc<Enhancer>) -> Result<AicModels, ModelError> {
        let meter = QualityMeter::new(codes.device())?;
        Ok(AicModels { codes, enhancer, meter })
    }

    /// aic-v1's weights and the Opus enhancer's (`models/aic/`).
    pub fn load(codes: &Path, enhancer: &Path, device: &Device) -> Result<AicModels, ModelError> {
        AicModels::new(Arc::new(AicModel::load(codes, device)?), Arc::new(Enhancer::load(enhancer, device)?))
    }
}

/// The models on each device this node has: the CPU always; the GPU too in a `cuda` build on a
/// machine with one ([`Devices`]). A track's `use_gpu` setting picks.
pub struct AicDevices {
    pub cpu: Arc<AicModels>,
    pub gpu: Option<Arc<AicModels>>,
}

impl AicDevices {
    /// Loads the weights on the CPU and, where there is one, on the GPU; a GPU that cannot
    /// take them leaves every track on the CPU.
    pub fn load(codes: &Path, enhancer: &Path, devices: &Devices) -> Result<AicDevices, ModelError> {
        let cpu = Arc::new(AicModels::load(codes, enhancer, &Device::Cpu)?);
        let gpu = if devices.gpu_available() {
            AicModels::load(codes, enhancer, &devices.pick(true))
                .inspect_err(
                    |e| tracing::warn!(error = %e, "AIC models not loaded on the GPU: every track runs on the CPU"),
                )
                .ok()
                .map(Arc::new)
        } else {
            None
        };
        Ok(AicDevices { cpu, gpu })
    }

    /// The GPU's models where `use_gpu` asks for them and they are there, else the CPU's.
    pub fn pick(&self, use_gpu: bool) -> &Arc<AicModels> {
        match (&self.gpu, use_gpu) {
            (Some(gpu), true) => gpu,
            _ => &self.cpu,
        }
    }
}

/// The core `model` sends `mode` with, or `None` where it sends codes.
fn core(model: ModelType, mode: Mode) -> Option<Core> {
    match model {
        ModelType::AicV1 => None,
        ModelType::AicV2 => Some(enhance::core(mode)),
    }
}

pub struct TrackEncoder {
    codes: AicEncoder,
    opus: OpusEncoder,
    opus_delay: usize,
    vocoder: LpcEncoder,
    /// The model id and mode of the last frame.
    last: Option<(u8, Mode)>,
    sequence: u8,
    /// The rate the Opus core runs at.
    opus_rate: u32,
}

impl TrackEncoder {
    pub fn new(models: &AicModels) -> Result<TrackEncoder, ModelError> {
        let rate = enhance::opus_rate(Mode::Conservative).expect("CONSERVATIVE runs on Opus");
        let mut opus = OpusEncoder::at(WIDEBAND_RATE, rate)?;
        let opus_delay = opus.lookahead()?;
        Ok(TrackEncoder {
            codes: AicEncoder::new(models.codes.clone())?,
            opus,
            opus_delay,
            vocoder: LpcEncoder::default(),
            last: None,
            sequence: 0,
            opus_rate: rate,
        })
    }

    /// One packet for one 20 ms frame (HOP samples at 16 kHz). Where the mode's core is Opus,
    /// packets come to about `target_ratio` the size of Opus at 24 kbit/s: it sets the core's
    /// rate ([`enhance::opus_rate_at`]; `mode.target_ratio()` is the mode's own). The vocoder and
    /// aic-v1's codes have one rate per mode.
    pub fn encode(
        &mut self,
        pcm: &[f32],
        mode: Mode,
        model: ModelType,
        target_ratio: f64,
    ) -> Result<Vec<u8>, ModelError> {
        if pcm.len() != HOP {
            return Err(ModelError::FrameSize(pcm.len()));
        }
        let last_model = self.last.map(|(m, _)| m);
        let (model_id, frame) = match core(model, mode) {
            Some(Core::Opus(_)) => {
                let rate = enhance::opus_rate_at(mode, target_ratio).expect("the mode's core is Opus");
                // Opus moves to another bandwidth over several frames; from a reset it
                // starts on the one it is held to, as the bitstream needs (the mode fixes the
                // TOC). A new rate in the same bandwidth needs no reset.
                if self.last != Some((OPUS_CORE, mode)) {
                    self.opus.reset_state()?;
                    enhance::set_core(&mut self.opus, mode, target_ratio)?;
                } else if rate != self.opus_rate {
                    self.opus.set_bitrate(rate)?;
                }
                self.opus_rate = rate;
                (OPUS_CORE, Frame::Opus(self.opus.encode(pcm)?))
            }
            Some(Core::Vocoder) => {
                // Its analysis looks back 20 ms: stale after another design's frames.
                if last_model != Some(VOCODER_CORE) {
                    self.vocoder = LpcEncoder::default();
                }
                (VOCODER_CORE, Frame::Vocoder(self.vocoder.encode(pcm)?))
            }
            None => {
                if last_model.is_some_and(|m| m != AIC_V1.model_id) {
                    self.codes.reset_state()?;
                }
                let mut codes = self.codes.encode(pcm, mode)?;
                (AIC_V1.model_id, Frame::Codes(codes.pop().expect("one frame in, one frame of codes out")))
            }
        };
        self.last = Some((model_id, mode));
        let packet = Packet { mode, model_id, sequence: self.sequence, frame }.encode()?;
        self.sequence = self.sequence.wrapping_add(1);
        Ok(packet)
    }

    /// How many samples the decoded audio lags the input by in `mode`: aic-v1's MDCT frame;
    /// Opus's lookahead and the enhancer's frame; the vocoder's resamplers.
    pub fn delay(&self, mode: Mode, model: ModelType) -> usize {
        match core(model, mode) {
            Some(Core::Opus(_)) => self.opus_delay + HOP,
            Some(Core::Vocoder) => lpc::DELAY,
            None => HOP,
        }
    }

    pub fn reset_state(&mut self) -> Result<(), ModelError> {
        self.codes.reset_state()?;
        self.opus.reset_state()?;
        self.vocoder = LpcEncoder::default();
        self.last = None;
        Ok(())
    }
}

pub struct TrackDecoder {
    codes: AicDecoder,
    opus: OpusDecoder,
    vocoder: LpcDecoder,
    enhancer: EnhancerState,
    last_model: Option<u8>,
}

impl TrackDecoder {
    pub fn new(models: &AicModels) -> Result<TrackDecoder, ModelError> {
        Ok(TrackDecoder {
            codes: AicDecoder::new(models.codes.clone()),
            opus: OpusDecoder::at(WIDEBAND_RATE)?,
            vocoder: LpcDecoder::default(),
            enhancer: EnhancerState::new(models.enhancer.clone())?,
            last_model: None,
        })
    }

    /// HOP samples (16 kHz) per frame of the packet.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, ModelError> {
        let p = Packet::decode(packet)?;
        // The other design's state describes audio from before the switch.
        if self.last_model.is_some_and(|m| m != p.model_id) {
            self.reset_state()?;
        }
        self.last_model = Some(p.model_id);
        match p.frame {
            Frame::Codes(codes) => self.codes.decode(&[codes], p.mode),
            // The mode's TOC byte says one 20 ms frame; the enhancer refuses any other length.
            Frame::Opus(packet) => self.enhancer.process(&self.opus.decode(Some(&packet))?, p.mode),
            Frame::Vocoder(params) => Ok(self.vocoder.decode(&params)),
        }
    }

    pub fn reset_state(&mut self) -> Result<(), ModelError> {
        self.codes.reset_state();
        self.opus = OpusDecoder::at(WIDEBAND_RATE)?;
        self.vocoder = LpcDecoder::default();
        self.enhancer.reset_state()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;
    use crate::codec::aic::bitstream::{self, BitstreamError};

    fn models() -> AicModels {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/aic");
        AicModels::load(&dir.join("aic-v1.safetensors"), &dir.join("aic-v2-enhancer.safetensors"), &Device::Cpu)
            .expect("the committed weights load")
    }

    #[test]
    fn modes_and_models_switch_mid_stream() {
        let m = models();
        let (mut enc, mut dec) = (TrackEncoder::new(&m).unwrap(), TrackDecoder::new(&m).unwrap());
        let pcm = &crate::codec::vowel(2.4)[..120 * HOP];
        let plan = [
            (Mode::Conservative, ModelType::AicV2, OPUS_CORE),
            (Mode::Adaptive, ModelType::AicV2, OPUS_CORE),
            (Mode::Aggressive, ModelType::AicV2, VOCODER_CORE),
            (Mode::Adaptive, ModelType::AicV1, AIC_V1.model_id),
            (Mode::Adaptive, ModelType::AicV2, OPUS_CORE),
            (Mode::Conservative, ModelType::AicV2, OPUS_CORE),
        ];
        let energy = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        for (i, part) in pcm.chunks(20 * HOP).enumerate() {
            let (mode, model, id) = plan[i];
            let mut out = Vec::new();
            for (n, frame) in part.chunks(HOP).enumerate() {
                let packet = enc.encode(frame, mode, model, mode.target_ratio()).unwrap();
                assert_eq!(packet[0] >> 2 & 0b11, id, "part {i}: the packet names its model");
                assert_eq!(usize::from(packet[0] & 0b11), (i * 20 + n) % 4, "sequence");
                out.extend(dec.decode(&packet).unwrap());
            }
            assert!(out.iter().all(|s| s.is_finite()));
            // After a few frames to settle, every design reproduces the signal's level.
            let delay = enc.delay(mode, model);
            let ratio = energy(&out[5 * HOP..]) / energy(&part[5 * HOP - delay..part.len() - delay]);
            assert!((0.3..3.0).contains(&ratio), "part {i} ({mode:?}, {model:?}): energy ratio {ratio}");
        }
    }

    #[test]
    fn the_opus_core_keeps_its_modes_configuration_on_speech_noise_and_silence() {
        // The bitstream drops the TOC byte on the strength of this: every packet the encoder
        // makes in a mode must carry that mode's TOC, or encoding fails.
        let m = models();
        let mut enc = TrackEncoder::new(&m).unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let speech = crate::codec::vowel(1.0);
        // The whole range of target ratios the API takes, too.
        for (mode, ratio) in [
            (Mode::Conservative, 0.5),
            (Mode::Adaptive, 0.2),
            (Mode::Conservative, 0.01),
            (Mode::Adaptive, 1.0),
            (Mode::Conservative, 1.0),
            (Mode::Adaptive, 0.01),
        ] {
            for (n, frame) in speech.chunks(HOP).take(50).enumerate() {
                let input: Vec<f32> = match n / 10 {
                    0 => vec![0.0; HOP],
                    1 => (0..HOP).map(|_| noise()).collect(),
                    2 => (0..HOP).map(|_| noise() * 1e-3).collect(),
                    _ => frame.to_vec(),
                };
                let packet = enc.encode(&input, mode, ModelType::AicV2, ratio).unwrap();
                assert!(
                    matches!(Packet::decode(&packet).unwrap().frame, Frame::Opus(_)),
                    "{mode:?} at {ratio}, frame {n}"
                );
            }
        }
    }

    #[test]
    fn the_target_ratio_sets_the_opus_cores_rate_mid_stream() {
        let m = models();
        let (mut enc, mut dec) = (TrackEncoder::new(&m).unwrap(), TrackDecoder::new(&m).unwrap());
        let speech = crate::codec::vowel(2.0);
        let mut kbps = |mode: Mode, ratio: f64| {
            let mut bytes = 0;
            for frame in speech.chunks(HOP).take(100) {
                let packet = enc.encode(frame, mode, ModelType::AicV2, ratio).unwrap();
                assert_eq!(dec.decode(&packet).unwrap().len(), HOP);
                bytes += packet.len();
            }
            bytes as f64 * 8.0 / 2.0 / 1000.0
        };
        // One encoder and decoder throughout: the rate changes without a reset.
        let adaptive = [kbps(Mode::Adaptive, 0.2), kbps(Mode::Adaptive, 0.4), kbps(Mode::Adaptive, 0.2)];
        let conservative = [kbps(Mode::Conservative, 0.5), kbps(Mode::Conservative, 0.3)];
        assert!(
            adaptive[1] > adaptive[0] * 1.4 && adaptive[1] > adaptive[2] * 1.4,
            "ADAPTIVE at 0.2, 0.4, 0.2: {adaptive:?} kbit/s"
        );
        assert!(conservative[0] > conservative[1] * 1.2, "CONSERVATIVE at 0.5, 0.3: {conservative:?} kbit/s");
        assert!(
            (adaptive[0] - 4.8).abs() < 1.5 && (conservative[0] - 12.0).abs() < 3.0,
            "{adaptive:?} {conservative:?}"
        );
    }

    #[test]
    fn bad_packets_and_frames_are_errors_not_panics() {
        let m = models();
        let (mut enc, mut dec) = (TrackEncoder::new(&m).unwrap(), TrackDecoder::new(&m).unwrap());
        assert!(matches!(
            enc.encode(&[0.0; 100], Mode::Adaptive, ModelType::AicV2, 0.2),
            Err(ModelError::FrameSize(100))
        ));
        assert!(matches!(dec.decode(&[]), Err(ModelError::Bitstream(BitstreamError::Truncated))));
        // A well-formed AIC packet around more bytes than an Opus frame may have (1275).
        let mut long = vec![bitstream::VERSION << 6 | 1 << 4 | OPUS_CORE << 2];
        long.resize(1300, 0x55);
        assert!(matches!(dec.decode(&long), Err(ModelError::Codec(CodecError::Opus(_)))));
        // The decoder still works after all that.
        let good = enc.encode(&[0.0; HOP], Mode::Adaptive, ModelType::AicV2, 0.2).unwrap();
        assert_eq!(dec.decode(&good).unwrap().len(), HOP);
    }
}
