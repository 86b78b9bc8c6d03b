//! Speech for tests: espeak-ng voices, resampled by sox to 16 kHz (test.sh installs both).

use std::process::Command;

/// `text` spoken by espeak-ng voice `voice`, as 16 kHz mono samples.
pub fn speak(voice: &str, text: &str) -> Vec<f32> {
    let dir = std::env::temp_dir().join(format!("auralink-speech-{}-{voice}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (raw, wav) = (dir.join("raw.wav"), dir.join("16k.wav"));
    let ok = Command::new("espeak-ng").args(["-v", voice, "-s", "150", "-w"]).arg(&raw).arg(text).status();
    assert!(ok.expect("espeak-ng runs (test.sh installs it)").success());
    let ok = Command::new("sox").arg(&raw).args(["-r", "16000", "-c", "1", "-b", "16"]).arg(&wav).status();
    assert!(ok.expect("sox runs (test.sh installs it)").success());
    let mut r = hound::WavReader::open(&wav).unwrap();
    let pcm = r.samples::<i16>().map(|s| s.unwrap() as f32 / 32768.0).collect();
    std::fs::remove_dir_all(&dir).ok();
    pcm
}

/// Clean English sentences and the espeak-ng voices that read them.
pub const ENGLISH: [(&str, &str); 3] = [
    ("en-us", "Good morning everyone, thank you for joining the call today."),
    ("en-us+f2", "Can you hear me now? The sound is much better than before."),
    ("en-us+m3", "Please send the quarterly report to the finance team before Friday."),
];
