//! Whisper in candle against speech espeak-ng makes: English read back by tiny.en within
//! the word error rate the issue sets, other languages translated to English by base, and
//! the speech stage turning a stream of frames into final captions. Needs the models
//! (scripts/models.sh; test.sh runs it) and espeak-ng and sox.

#[path = "support/speech.rs"]
mod speech;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auralink::pipeline::speech::wer::wer;
use auralink::pipeline::speech::{Caption, CaptionSink, SpeechConfig, SpeechStage, SpeechWorkers};
use auralink::pipeline::whisper::{Task, Whisper};
use auralink::pipeline::{PipelineStats, TrackPipeline};
use speech::{ENGLISH, speak};

fn model_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/whisper").join(name);
    assert!(dir.join("model.safetensors").is_file(), "{} missing: run scripts/models.sh", dir.display());
    dir
}

#[test]
fn tiny_en_reads_english_within_a_quarter_word_error() {
    let mut w = Whisper::load(&model_dir("tiny.en"), &candle_core::Device::Cpu).unwrap();
    assert!(!w.multilingual());
    let (mut errors, mut words) = (0.0, 0.0);
    for (voice, text) in ENGLISH {
        let t = w.transcribe(&speak(voice, text), None, Task::Transcribe).unwrap();
        let n = text.split_whitespace().count() as f64;
        eprintln!("{voice}: {:?} (wer {:.2}, confidence {:.2})", t.text, wer(text, &t.text), t.confidence());
        assert_eq!(t.language, "en");
        assert!(!t.is_silence());
        errors += wer(text, &t.text) * n;
        words += n;
    }
    let rate = errors / words;
    assert!(rate <= 0.25, "word error rate {rate:.2}");
    // Silence is recognised as such, and an English-only model refuses other work.
    let quiet = w.transcribe(&vec![0.0; 32_000], None, Task::Transcribe).unwrap();
    assert!(quiet.is_silence(), "{quiet:?}");
    assert!(w.transcribe(&[0.0; 160], Some("fr"), Task::Transcribe).is_err());
    assert!(w.transcribe(&[0.0; 160], None, Task::Translate).is_err());
}

#[test]
fn base_detects_languages_and_translates_to_english() {
    let mut w = Whisper::load(&model_dir("base"), &candle_core::Device::Cpu).unwrap();
    assert!(w.multilingual());
    let cases = [
        ("de", "Ich trinke jeden Morgen eine Tasse Kaffee mit Milch.", &["coffee", "milk"][..]),
        ("es", "Mi perro come carne y bebe agua todos los días.", &["water", "meat"][..]),
    ];
    for (voice, text, keywords) in cases {
        let pcm = speak(voice, text);
        let t = w.transcribe(&pcm, None, Task::Translate).unwrap();
        eprintln!("{voice}: {:?} detected {}", t.text, t.language);
        assert_eq!(t.language, voice);
        let lower = t.text.to_lowercase();
        assert!(keywords.iter().any(|k| lower.contains(k)), "{voice}: {:?} lacks {keywords:?}", t.text);
    }
    assert!(w.transcribe(&[0.0; 160], Some("xx"), Task::Transcribe).is_err());
}

struct Collect(Mutex<Vec<Caption>>);

impl CaptionSink for Collect {
    fn deliver(&self, c: Caption) {
        self.0.lock().unwrap().push(c);
    }
}

/// Two utterances with a pause between, through Opus, the track pipeline and the stage:
/// two final captions with the right words, times and speaker.
#[test]
fn the_stage_turns_a_track_into_final_captions() {
    use auralink::codec::opus::{FRAME_SAMPLES, OpusEncoder};
    use auralink::codec::resample::Upsampler;
    use auralink::ids::{Identity, ParticipantId, RoomName, TrackId};
    use auralink::sfu::TapFrame;

    let models = model_dir("tiny.en").parent().unwrap().to_path_buf();
    let workers = SpeechWorkers::spawn(models, candle_core::Device::Cpu, 1, 4).unwrap();
    let (first, second) = (ENGLISH[0].1, ENGLISH[1].1);
    let mut pcm16 = vec![0.0; 8_000];
    pcm16.extend(speak("en-us", first));
    pcm16.extend(vec![0.0; 24_000]);
    pcm16.extend(speak("en-us", second));
    pcm16.extend(vec![0.0; 24_000]);
    let pcm48 = Upsampler::default().process(&pcm16);

    let sink = Arc::new(Collect(Mutex::new(Vec::new())));
    let config = SpeechConfig { enabled: true, ..Default::default() };
    let (_settings, rx) = tokio::sync::watch::channel(config);
    let stage = SpeechStage::new(rx, Arc::clone(&workers), sink.clone(), None, Box::new(|| 1_000_000));
    let mut pipe = TrackPipeline::new(vec![Box::new(stage)], Arc::new(PipelineStats::default())).unwrap();
    let mut enc = OpusEncoder::new(32_000).unwrap();
    let room = RoomName::new("captions").unwrap();
    let identity = Identity::new("ana").unwrap();
    for (i, chunk) in pcm48.chunks_exact(FRAME_SAMPLES).enumerate() {
        let frame = TapFrame {
            room: room.clone(),
            track: TrackId(7),
            participant: ParticipantId(3),
            identity: identity.clone(),
            rtp_time: 10_000 + (i * FRAME_SAMPLES) as u64,
            received: std::time::Instant::now(),
            data: enc.encode(chunk).unwrap().into(),
        };
        pipe.handle_frame(&frame);
    }
    drop(pipe);
    // Bounded wait for the worker: two utterances of a few seconds each.
    let finals = || sink.0.lock().unwrap().iter().filter(|c| c.is_final).cloned().collect::<Vec<_>>();
    for _ in 0..600 {
        if finals().len() >= 2 && workers.stats.segments.load(std::sync::atomic::Ordering::Relaxed) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let finals = finals();
    assert_eq!(finals.len(), 2, "{finals:?}");
    for (c, text) in finals.iter().zip([first, second]) {
        eprintln!("{} – {}: {:?}", c.start_ms, c.end_ms, c.text);
        assert!(wer(text, &c.text) <= 0.25, "{:?} for {text:?}", c.text);
        assert_eq!(c.participant, "ana");
        assert_eq!(c.language, "en");
    }
    // Times on the stage's clock: the first word half a second in (less the pre-roll), and
    // the second utterance after the first.
    assert!((1_000_000 + 150..1_000_000 + 600).contains(&finals[0].start_ms), "{}", finals[0].start_ms);
    assert!(finals[1].start_ms >= finals[0].end_ms);
}
