//! Puts the speech stage on the audio tracks of rooms that turned transcription on, and
//! takes the captions the stages make: each goes out on the room's data channel (JSON on topic
//! `captions`; LiveKit clients get LiveKit's transcription packet) and, when final, into
//! `transcripts`. A node transcribes at most
//! `speech.max_tracks` tracks, one org's rooms at most `speech.max_tracks_per_org` of them;
//! more are refused and counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::capacity::{TapCapacity, running};
use super::track_events::{self, TrackTaps};
use crate::db::Db;
use crate::db::transcripts::{self, Transcript};
use crate::ids::{ParticipantId, RoomName, TrackId};
use crate::pipeline::speech::translate::TextTranslator;
use crate::pipeline::speech::{Caption, CaptionSink, SpeechConfig, SpeechStage, SpeechWorkers};
use crate::pipeline::{self, GatedTap, PipelineStats, TrackPipeline};
use crate::sfu::data::DataMessage;
use crate::sfu::driver::SfuHandle;
use crate::signal::livekit;
use crate::wall::Clock;

/// The data channel topic captions travel on.
pub const TOPIC: &str = "captions";
/// Captions waiting to be sent and stored before new ones are dropped.
const CAPTION_QUEUE: usize = 256;

struct Room {
    settings: watch::Sender<SpeechConfig>,
    /// Tracks with the stage, and their taps' revocation flags.
    tracks: HashMap<TrackId, Arc<AtomicBool>>,
    /// Tracks refused for capacity, counted once however often they are tried again.
    refused: HashSet<TrackId>,
}

pub struct SpeechTaps {
    db: Db,
    clock: Clock,
    sfu: SfuHandle,
    pub workers: Arc<SpeechWorkers>,
    pub translator: Option<Arc<dyn TextTranslator>>,
    pub capacity: TapCapacity,
    pipelines: Arc<PipelineStats>,
    captions: Arc<Captions>,
    rooms: Mutex<HashMap<RoomName, Room>>,
}

/// The stages' way out: a bounded queue to the task that sends and stores.
struct Captions {
    tx: mpsc::Sender<Caption>,
    workers: Arc<SpeechWorkers>,
}

impl CaptionSink for Captions {
    fn deliver(&self, caption: Caption) {
        if self.tx.try_send(caption).is_err() {
            self.workers.stats.captions_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// What the node's speech taps are built from.
pub struct SpeechSetup {
    pub workers: Arc<SpeechWorkers>,
    /// For translation targets other than English; none ships yet.
    pub translator: Option<Arc<dyn TextTranslator>>,
    pub capacity: TapCapacity,
    /// Counters shared with the node's other track pipelines.
    pub pipelines: Arc<PipelineStats>,
}

impl SpeechTaps {
    /// Follows router events until the router stops.
    pub fn spawn(db: Db, sfu: SfuHandle, setup: SpeechSetup, clock: Clock) -> Arc<SpeechTaps> {
        let (tx, mut rx) = mpsc::channel::<Caption>(CAPTION_QUEUE);
        let taps = Arc::new(SpeechTaps {
            db,
            clock,
            sfu: sfu.clone(),
            captions: Arc::new(Captions { tx, workers: Arc::clone(&setup.workers) }),
            workers: setup.workers,
            translator: setup.translator,
            capacity: setup.capacity,
            pipelines: setup.pipelines,
            rooms: Mutex::new(HashMap::new()),
        });
        // Weak: the queue's sender lives in the taps, so this task must not keep them alive.
        let this = Arc::downgrade(&taps);
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let Some(this) = this.upgrade() else { return };
                this.send(c).await;
            }
        });
        track_events::follow(Arc::clone(&taps), sfu, "speech");
        taps
    }

    /// Tracks transcribed on this node, in all rooms and in the rooms of `org`.
    pub fn active(&self, org: Option<&str>) -> (usize, usize) {
        let rooms = self.rooms.lock().expect("speech rooms lock");
        running(rooms.iter().map(|(name, r)| (name, r.tracks.len())), org)
    }

    /// Tracks of `room` transcribed on this node.
    pub fn active_in(&self, room: &RoomName) -> usize {
        self.rooms.lock().expect("speech rooms lock").get(room).map_or(0, |r| r.tracks.len())
    }

    /// The room's settings, `None` when unreadable (logged; its tracks stay as they are).
    async fn settings(&self, room: &RoomName) -> Option<SpeechConfig> {
        let org = room.org()?;
        super::settings::speech(&self.db, org, room.local())
            .await
            .inspect_err(|e| tracing::warn!(%room, error = %e, "speech settings not readable"))
            .ok()
    }

    /// The room's audio tracks on this node.
    pub async fn audio_tracks(&self, room: &RoomName) -> Vec<TrackId> {
        track_events::audio_tracks(&self.sfu, room).await.into_iter().map(|(t, _)| t).collect()
    }

    /// After the room's settings changed: running stages get them, and the room's audio
    /// tracks are tapped if they now ask for transcription.
    pub async fn set_room(&self, room: &RoomName, config: SpeechConfig) {
        let tracks = self.audio_tracks(room).await;
        self.apply(room, config, &tracks).await;
    }

    /// Brings `tracks` of `room` under `config`: registered and started within the node's
    /// limit when it asks for transcription, their taps revoked when it does not.
    async fn apply(&self, room: &RoomName, config: SpeechConfig, tracks: &[TrackId]) {
        let starting = {
            let mut rooms = self.rooms.lock().expect("speech rooms lock");
            let (node, org) = running(rooms.iter().map(|(name, r)| (name, r.tracks.len())), room.org());
            let r = rooms.entry(room.clone()).or_insert_with(|| Room {
                settings: watch::channel(config.clone()).0,
                tracks: HashMap::new(),
                refused: HashSet::new(),
            });
            r.settings.send_if_modified(|c| std::mem::replace(c, config.clone()) != config);
            if !config.enabled {
                // Each tap closes at its next frame.
                r.tracks.drain().for_each(|(_, revoked)| revoked.store(true, Relaxed));
                return;
            }
            if let Err(e) = self.workers.check(config.model()) {
                tracing::warn!(%room, error = %e, "speech model unavailable; tracks not transcribed");
                return;
            }
            let mut starting = Vec::new();
            for &track in tracks {
                if r.tracks.contains_key(&track) {
                    continue;
                }
                if !self.capacity.admits((node + starting.len(), org + starting.len())) {
                    if r.refused.insert(track) {
                        tracing::warn!(%room, %track, capacity = ?self.capacity, "speech capacity reached; track not transcribed");
                        self.workers.stats.tracks_refused.fetch_add(1, Relaxed);
                    }
                    continue;
                }
                r.refused.remove(&track);
                let revoked = Arc::new(AtomicBool::new(false));
                r.tracks.insert(track, Arc::clone(&revoked));
                starting.push((track, r.settings.subscribe(), revoked));
            }
            starting
        };
        for (track, settings, revoked) in starting {
            match self.start(track, settings, Arc::clone(&revoked)).await {
                Ok(()) => tracing::info!(%room, %track, model = config.model(), "speech stage on track"),
                Err(e) => {
                    tracing::warn!(%room, %track, error = %e, "speech stage not started");
                    if let Some(r) = self.rooms.lock().expect("speech rooms lock").get_mut(room)
                        && r.tracks.get(&track).is_some_and(|f| Arc::ptr_eq(f, &revoked))
                    {
                        r.tracks.remove(&track);
                    }
                }
            }
        }
    }

    async fn start(
        &self,
        track: TrackId,
        settings: watch::Receiver<SpeechConfig>,
        revoked: Arc<AtomicBool>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let clock = self.clock.clone();
        let stage = SpeechStage::new(
            settings,
            Arc::clone(&self.workers),
            Arc::clone(&self.captions) as Arc<dyn CaptionSink>,
            self.translator.clone(),
            Box::new(move || clock.now_ms()),
        );
        let pipe = TrackPipeline::new(vec![Box::new(stage)], Arc::clone(&self.pipelines))?;
        let tap = GatedTap { tx: pipeline::spawn(pipe)?, revoked };
        // A track already gone leaves the tap unregistered; the thread ends with its channel.
        self.sfu.call(move |sfu, _| sfu.add_tap(track, Box::new(tap))).await??;
        Ok(())
    }

    /// Sends a caption to the room, and stores it when final.
    async fn send(&self, c: Caption) {
        let stats = &self.workers.stats;
        let payload = serde_json::to_vec(&serde_json::json!({ "type": "caption", "caption": &c })).expect("serializes");
        let mut msg = DataMessage::from_server(payload, TOPIC.into(), c.is_final, Vec::new());
        // An utterance's previews and final text share the segment id, so each replaces the last.
        let segment = livekit_protocol::TranscriptionSegment {
            id: format!("{}-{}", c.track, c.start_ms),
            text: c.text.clone(),
            start_time: u64::try_from(c.start_ms).unwrap_or(0),
            end_time: u64::try_from(c.end_ms).unwrap_or(0),
            r#final: c.is_final,
            language: c.language.clone(),
        };
        msg.native = Some(livekit::transcription(&c.participant, &c.track, segment, c.is_final));
        let room = c.room.clone();
        if self.sfu.call(move |sfu, now| sfu.send_data(now, &room, &msg)).await.is_err() {
            return;
        }
        stats.captions.fetch_add(1, Relaxed);
        if !c.is_final {
            return;
        }
        let now = self.clock.now_ms();
        stats.record_lag(u64::try_from(now - c.end_ms).unwrap_or(0));
        let Some(org) = c.room.org() else { return };
        let transcript = Transcript {
            room: &c.room,
            identity: &c.participant,
            track: &c.track,
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            text: &c.text,
            language: &c.language,
            source_language: c.source_language.as_deref(),
            confidence: c.confidence,
        };
        if let Err(e) = transcripts::insert(&self.db, org, transcript, now).await {
            tracing::warn!(room = %c.room, error = %e, "transcript not stored");
        }
    }
}

impl TrackTaps for SpeechTaps {
    async fn audio_published(&self, room: RoomName, track: TrackId, _owner: ParticipantId) {
        if let Some(config) = self.settings(&room).await {
            self.apply(&room, config, &[track]).await;
        }
    }

    async fn unpublished(&self, room: RoomName, track: TrackId) {
        if let Some(r) = self.rooms.lock().expect("speech rooms lock").get_mut(&room) {
            r.tracks.remove(&track);
            r.refused.remove(&track);
        }
    }

    fn room_closed(&self, room: &RoomName) {
        self.rooms.lock().expect("speech rooms lock").remove(room);
    }

    fn tracked(&self) -> Vec<(RoomName, Vec<TrackId>)> {
        let rooms = self.rooms.lock().expect("speech rooms lock");
        rooms.iter().map(|(name, r)| (name.clone(), r.tracks.keys().copied().collect())).collect()
    }
}
