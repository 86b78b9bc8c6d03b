//! Puts the AIC stage on the audio tracks of rooms whose settings enable it, and hands
//! running stages new settings when operators change them (they apply from the next frame).
//! With `loopback` on, each such track also gets a participant the server plays, `aic:` and
//! the publisher's identity, whose audio track is the track after the codec.
//! Stages run on their tracks' pipeline threads; this only wires them up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::capacity::{TapCapacity, running};
use super::track_events::{self, TrackTaps};
use crate::codec::aic::track::AicDevices;
use crate::codec::modes::Mode;
use crate::db::Db;
use crate::db::aic::{self, Counters, EndedTrack};
use crate::ids::{Identity, ParticipantId, RoomName, TrackId};
use crate::pipeline::aic::{AicConfig, AicStage, AicStats};
use crate::pipeline::loopback::Loopback;
use crate::pipeline::{self, GatedTap, PipelineStats, TrackPipeline};
use crate::sfu::LeaveReason;
use crate::sfu::driver::SfuHandle;
use crate::wall::Clock;

struct Room {
    settings: watch::Sender<AicConfig>,
    /// Tracks with the stage.
    tapped: HashMap<TrackId, Tapped>,
    /// Tracks refused for capacity, counted once however often they are tried again.
    refused: HashSet<TrackId>,
}

struct Tapped {
    stats: Arc<AicStats>,
    /// Set to close the track's tap (see `GatedTap`).
    revoked: Arc<AtomicBool>,
    participant: ParticipantId,
    started_at: i64,
    /// Whether it was started with a loopback, and the participant that plays it once there.
    loopback: bool,
    local: Option<ParticipantId>,
}

pub struct AicTaps {
    db: Db,
    clock: Clock,
    sfu: SfuHandle,
    /// `None` when the weights could not be loaded: AIC is unavailable.
    model: Option<Arc<AicDevices>>,
    pub stats: Arc<AicStats>,
    pub pipelines: Arc<PipelineStats>,
    capacity: TapCapacity,
    /// Tracks that stayed Opus because the node or their org had its most.
    pub refused: AtomicU64,
    rooms: Mutex<HashMap<RoomName, Room>>,
}

impl AicTaps {
    /// Follows router events until the router stops.
    pub fn spawn(
        db: Db,
        sfu: SfuHandle,
        model: Option<Arc<AicDevices>>,
        capacity: TapCapacity,
        clock: Clock,
    ) -> Arc<AicTaps> {
        let taps = Arc::new(AicTaps {
            db,
            clock,
            model,
            stats: Default::default(),
            pipelines: Default::default(),
            capacity,
            refused: AtomicU64::new(0),
            rooms: Mutex::new(HashMap::new()),
            sfu: sfu.clone(),
        });
        track_events::follow(Arc::clone(&taps), sfu, "AIC");
        taps
    }

    pub fn available(&self) -> bool {
        self.model.is_some()
    }

    /// Tracks of `room` on this node that have the AIC stage, and their counters.
    pub fn active_tracks(&self, room: &RoomName) -> Vec<(TrackId, Arc<AicStats>)> {
        let rooms = self.rooms.lock().expect("aic rooms lock");
        let mut tracks: Vec<_> = rooms
            .get(room)
            .map(|r| r.tapped.iter().map(|(t, x)| (*t, Arc::clone(&x.stats))).collect())
            .unwrap_or_default();
        tracks.sort_by_key(|t| t.0);
        tracks
    }

    /// Brings a new track under its room's stored settings.
    async fn attach(&self, room: &RoomName, track: TrackId, participant: ParticipantId) {
        if self.model.is_none() {
            return;
        }
        let Some(org) = room.org() else { return };
        match super::settings::aic(&self.db, org, room.local()).await {
            Ok(config) => self.attach_with(room, track, participant, config).await,
            Err(e) => tracing::warn!(%room, error = %e, "AIC settings not readable; the track stays Opus"),
        }
    }

    /// Brings a track under `config`, which the room's running stages get too; the track is
    /// tapped if it enables AIC and it is not yet.
    async fn attach_with(&self, room: &RoomName, track: TrackId, participant: ParticipantId, config: AicConfig) {
        let Some(model) = &self.model else { return };
        let mut ended = Vec::new();
        let started = {
            let mut rooms = self.rooms.lock().expect("aic rooms lock");
            let running = running(rooms.iter().map(|(name, r)| (name, r.tapped.len())), room.org());
            let r = rooms.entry(room.clone()).or_insert_with(|| Room {
                settings: watch::channel(config.clone()).0,
                tapped: HashMap::new(),
                refused: HashSet::new(),
            });
            r.settings.send_if_modified(|c| std::mem::replace(c, config.clone()) != config);
            if !config.enabled {
                // Their taps close at their next frame, ending the threads.
                ended.extend(r.tapped.drain().map(|(t, x)| {
                    x.revoked.store(true, Ordering::Relaxed);
                    (t, x, config.mode)
                }));
                None
            } else if r.tapped.get(&track).is_some_and(|x| x.loopback == config.loopback) {
                None
            } else if !r.tapped.contains_key(&track) && !self.capacity.admits(running) {
                if r.refused.insert(track) {
                    tracing::warn!(%room, %track, ?running, "AIC capacity reached; the track stays Opus");
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
                None
            } else {
                // New, or its loopback was turned on or off: (re)started.
                r.refused.remove(&track);
                if let Some(x) = r.tapped.remove(&track) {
                    x.revoked.store(true, Ordering::Relaxed);
                    ended.push((track, x, config.mode));
                }
                let stats = Arc::new(AicStats::default());
                let revoked = Arc::new(AtomicBool::new(false));
                let t = Tapped {
                    stats: Arc::clone(&stats),
                    revoked: Arc::clone(&revoked),
                    participant,
                    started_at: self.clock.now_ms(),
                    loopback: config.loopback,
                    local: None,
                };
                r.tapped.insert(track, t);
                Some((r.settings.subscribe(), stats, revoked))
            }
        };
        self.finish(room, ended).await;
        let Some((receiver, track_stats, revoked)) = started else { return };
        let local = if config.loopback {
            self.join_loopback(room, track)
                .await
                .inspect_err(|e| tracing::warn!(%room, %track, error = %e, "AIC loopback not published"))
                .ok()
        } else {
            None
        };
        match self.start(model, receiver, track_stats, Arc::clone(&revoked), track, local).await {
            Ok(()) => tracing::info!(%room, %track, mode = config.mode.as_str(), "AIC stage on track"),
            Err(e) => {
                tracing::warn!(%room, %track, error = %e, "AIC stage not started; the track stays Opus");
                if let Some(r) = self.rooms.lock().expect("aic rooms lock").get_mut(room) {
                    r.tapped.remove(&track);
                }
                self.leave_loopback(local.map(|l| l.0)).await;
                return;
            }
        }
        let Some((local, _)) = local else { return };
        // The tap may have ended while this started; then its loopback goes at once.
        let kept = {
            let mut rooms = self.rooms.lock().expect("aic rooms lock");
            let tapped = rooms.get_mut(room).and_then(|r| r.tapped.get_mut(&track));
            match tapped.filter(|t| Arc::ptr_eq(&t.revoked, &revoked)) {
                Some(t) => {
                    t.local = Some(local);
                    true
                }
                None => false,
            }
        };
        if !kept {
            self.leave_loopback(Some(local)).await;
        }
    }

    /// Adds the participant that plays `track` after the codec: `aic:` and the publisher's
    /// identity, with one audio track.
    async fn join_loopback(&self, room: &RoomName, track: TrackId) -> Result<(ParticipantId, TrackId), LoopbackError> {
        let room = room.clone();
        self.sfu
            .call(move |sfu, now| {
                let publisher = sfu
                    .participants(&room)
                    .into_iter()
                    .find(|p| p.tracks.iter().any(|t| t.id == track))
                    .ok_or(LoopbackError::Gone)?;
                let identity = format!("aic:{}", publisher.identity);
                let identity = Identity::new(identity.clone()).map_err(|e| LoopbackError::Identity(identity, e))?;
                let local = sfu.join_local(&room, identity)?;
                Ok((local, sfu.publish_local_audio(now, local)?))
            })
            .await
            .map_err(|_| LoopbackError::Gone)?
    }

    async fn leave_loopback(&self, local: Option<ParticipantId>) {
        if let Some(local) = local {
            let _ = self.sfu.call(move |sfu, now| sfu.remove_participant(now, local, LeaveReason::Removed)).await;
        }
    }

    async fn start(
        &self,
        model: &Arc<AicDevices>,
        settings: watch::Receiver<AicConfig>,
        stats: Arc<AicStats>,
        revoked: Arc<AtomicBool>,
        track: TrackId,
        local: Option<(ParticipantId, TrackId)>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let loopback = match local {
            Some((_, local_track)) => {
                let sfu = self.sfu.clone();
                // Never waits: a router that is behind loses the packet, and its listeners
                // conceal it.
                Some(Loopback::new(Box::new(move |rtp_time, packet| {
                    sfu.try_run(move |sfu, now| {
                        let _ = sfu.write_local(now, local_track, rtp_time, packet.into());
                    })
                }))?)
            }
            None => None,
        };
        let stage = AicStage::new(Arc::clone(model), settings, [stats, Arc::clone(&self.stats)], loopback)?;
        let pipe = TrackPipeline::new(vec![Box::new(stage)], Arc::clone(&self.pipelines))?;
        let tap = GatedTap { tx: pipeline::spawn(pipe)?, revoked };
        // A track already gone leaves the tap unregistered; the thread ends with its channel.
        self.sfu.call(move |sfu, _| sfu.add_tap(track, Box::new(tap))).await??;
        Ok(())
    }

    /// The rooms of `org` open on this node: those a change of the org's default reaches.
    pub async fn open_rooms(&self, org: &str) -> Vec<RoomName> {
        let org = org.to_string();
        self.sfu
            .call(move |sfu, _| sfu.rooms().filter(|r| r.org() == Some(org.as_str())).cloned().collect())
            .await
            .unwrap_or_default()
    }

    /// The room's settings changed to `config`: its running stages get them, and its audio
    /// tracks are tapped if they now enable AIC (or untapped if they no longer do).
    pub async fn set_room(&self, room: &RoomName, config: AicConfig) {
        if self.model.is_none() {
            return;
        }
        for (track, owner) in track_events::audio_tracks(&self.sfu, room).await {
            self.attach_with(room, track, owner, config.clone()).await;
        }
    }

    /// Keeps the counters of tracks that left the stage (`aic_metrics`) and takes their
    /// loopbacks out of the room.
    async fn finish(&self, room: &RoomName, ended: Vec<(TrackId, Tapped, Mode)>) {
        let Some(org) = room.org() else { return };
        for (track, t, mode) in ended {
            self.leave_loopback(t.local).await;
            let ended = EndedTrack {
                room: room.local(),
                track: track.to_string(),
                participant: t.participant.to_string(),
                mode: mode.as_str(),
                counters: Counters::of(&t.stats),
                started_at: t.started_at,
                ended_at: self.clock.now_ms(),
            };
            if let Err(e) = aic::insert_metrics(&self.db, org, ended).await {
                tracing::warn!(%room, %track, error = %e, "AIC track metrics not recorded");
            }
        }
    }
}

impl TrackTaps for AicTaps {
    async fn audio_published(&self, room: RoomName, track: TrackId, owner: ParticipantId) {
        self.attach(&room, track, owner).await;
    }

    async fn unpublished(&self, room: RoomName, track: TrackId) {
        let ended = self.rooms.lock().expect("aic rooms lock").get_mut(&room).and_then(|r| {
            r.refused.remove(&track);
            let t = r.tapped.remove(&track)?;
            Some((track, t, r.settings.borrow().mode))
        });
        if let Some(ended) = ended {
            self.finish(&room, vec![ended]).await;
        }
    }

    fn room_closed(&self, room: &RoomName) {
        self.rooms.lock().expect("aic rooms lock").remove(room);
    }

    fn tracked(&self) -> Vec<(RoomName, Vec<TrackId>)> {
        let rooms = self.rooms.lock().expect("aic rooms lock");
        rooms.iter().map(|(name, r)| (name.clone(), r.tapped.keys().copied().collect())).collect()
    }
}

#[derive(Debug, thiserror::Error)]
enum LoopbackError {
    #[error("the track or the router is gone")]
    Gone,
    #[error("loopback identity {0:?}: {1}")]
    Identity(String, crate::ids::NameError),
    #[error(transparent)]
    Sfu(#[from] crate::sfu::SfuError),
}
