//! Prometheus text exposition at `/metrics`: router counters and gauges, no per-participant
//! labels (their cardinality would grow with traffic).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::state::AppState;
use crate::error::ApiError;

pub async fn metrics(State(s): State<AppState>) -> Response {
    let Ok((stats, (rooms, participants, tracks))) = s.sfu.call(|sfu, _| (sfu.stats().clone(), sfu.gauges())).await
    else {
        return ApiError::unavailable().into_response();
    };
    let hooks = &s.webhooks;
    let tcp = s.sfu.ice_tcp_stats();
    let series = [
        ("auralink_ice_tcp_connections", "gauge", "Open ICE-TCP connections.", tcp.open),
        (
            "auralink_aic_tracks_refused_total",
            "counter",
            "Audio tracks that stayed Opus: the node, or the track's org, had its most AIC tracks.",
            s.aic.refused.load(Relaxed),
        ),
        (
            "auralink_ice_tcp_connections_refused_total",
            "counter",
            "ICE-TCP connections closed on accept: the node or their address had its maximum.",
            tcp.refused,
        ),
        (
            "auralink_ice_tcp_connections_timed_out_total",
            "counter",
            "ICE-TCP connections closed because no session took them in time, or they went idle.",
            tcp.timed_out,
        ),
        (
            "auralink_ice_tcp_frames_too_long_total",
            "counter",
            "ICE-TCP connections closed for a frame longer than allowed.",
            tcp.frames_too_long,
        ),
        ("auralink_sfu_frames_in_total", "counter", "Media frames received from publishers.", stats.frames_in),
        (
            "auralink_sfu_frames_forwarded_total",
            "counter",
            "Media frames written to subscribers.",
            stats.frames_forwarded,
        ),
        (
            "auralink_sfu_bytes_forwarded_total",
            "counter",
            "Payload bytes written to subscribers.",
            stats.bytes_forwarded,
        ),
        (
            "auralink_sfu_frames_dropped_total",
            "counter",
            "Frames not forwarded (codec mismatch, awaiting keyframe).",
            stats.frames_dropped,
        ),
        (
            "auralink_sfu_keyframe_requests_total",
            "counter",
            "Keyframe requests sent to publishers.",
            stats.keyframe_requests,
        ),
        (
            "auralink_sfu_data_messages_relayed_total",
            "counter",
            "Data channel messages relayed.",
            stats.data_messages_relayed,
        ),
        (
            "auralink_sfu_datagrams_unrouted_total",
            "counter",
            "Datagrams no session accepted.",
            stats.datagrams_unrouted,
        ),
        (
            "auralink_sfu_datagrams_malformed_total",
            "counter",
            "Datagrams that were not STUN, DTLS or RTP.",
            stats.datagrams_malformed,
        ),
        ("auralink_rooms", "gauge", "Open rooms.", rooms as u64),
        ("auralink_participants", "gauge", "Connected participant sessions.", participants as u64),
        ("auralink_tracks", "gauge", "Published tracks.", tracks as u64),
        (
            "auralink_api_rate_limited_total",
            "counter",
            "Control API requests refused with 429.",
            s.limiter.limited.load(Relaxed),
        ),
        (
            "auralink_auth_rate_limited_total",
            "counter",
            "Authentication attempts refused with 429: their address failed too often.",
            s.auth_failures.limited.load(Relaxed),
        ),
        (
            "auralink_redis_errors_total",
            "counter",
            "Redis calls that failed or timed out (the node's own budget applied).",
            s.limiter.redis_errors.load(Relaxed) + s.auth_failures.redis_errors.load(Relaxed),
        ),
        (
            "auralink_webhooks_delivered_total",
            "counter",
            "Webhook deliveries acknowledged.",
            hooks.delivered.load(Relaxed),
        ),
        (
            "auralink_webhooks_failed_total",
            "counter",
            "Webhook deliveries given up after retries.",
            hooks.failed.load(Relaxed),
        ),
        (
            "auralink_webhooks_dropped_total",
            "counter",
            "Webhooks dropped from a full queue.",
            hooks.dropped.load(Relaxed),
        ),
        (
            "auralink_history_events_recorded_total",
            "counter",
            "Router events written to call history.",
            s.history.recorded.load(Relaxed),
        ),
        (
            "auralink_history_events_dropped_total",
            "counter",
            "Router events call history lost (database down or behind).",
            s.history.dropped.load(Relaxed),
        ),
        (
            "auralink_tap_frames_total",
            "counter",
            "Audio frames copied to processing taps (AIC, transcription).",
            stats.tap_frames,
        ),
        (
            "auralink_tap_frames_dropped_total",
            "counter",
            "Audio frames a tap's consumer was too far behind to take.",
            stats.tap_frames_dropped,
        ),
        (
            "auralink_compute_cuda_build",
            "gauge",
            "1 when this binary was built with CUDA support.",
            u64::from(crate::codec::device::Devices::cuda_build()),
        ),
        (
            "auralink_compute_gpu_available",
            "gauge",
            "1 when neural stages can run on a GPU.",
            u64::from(s.devices.gpu_available()),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    aic(&mut out, &s);
    speech(&mut out, &s);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The AIC stages' series: frames per route, bytes, savings, fallbacks, latency, quality.
fn aic(out: &mut String, s: &AppState) {
    let a = &s.aic.stats;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed);
    let (aic_bytes, opus_bytes) = (load(&a.aic_bytes), load(&a.opus_bytes));
    let _ = writeln!(
        out,
        "# HELP auralink_aic_available 1 when the AIC model is loaded.\n# TYPE auralink_aic_available gauge\n\
         auralink_aic_available {}",
        u64::from(s.aic.available())
    );
    let _ = writeln!(
        out,
        "# HELP auralink_aic_frames_total Audio frames by where they went: through AIC, or Opus (disabled, \
         fallen back, failed).\n# TYPE auralink_aic_frames_total counter\n\
         auralink_aic_frames_total{{route=\"aic\"}} {}\nauralink_aic_frames_total{{route=\"opus\"}} {}",
        load(&a.frames_aic),
        load(&a.frames_opus)
    );
    let _ = writeln!(
        out,
        "# HELP auralink_aic_bytes_total Bytes of frames that went through AIC, as AIC packets and as the \
         publisher's Opus.\n# TYPE auralink_aic_bytes_total counter\n\
         auralink_aic_bytes_total{{codec=\"aic\"}} {aic_bytes}\nauralink_aic_bytes_total{{codec=\"opus\"}} {opus_bytes}"
    );
    let _ = writeln!(
        out,
        "# HELP auralink_aic_bandwidth_saved_bytes Opus bytes minus AIC bytes over the same frames (below zero \
         where AIC took more).\n# TYPE auralink_aic_bandwidth_saved_bytes gauge\nauralink_aic_bandwidth_saved_bytes {}",
        opus_bytes as i128 - aic_bytes as i128
    );
    for (name, help, v) in [
        ("auralink_aic_fallbacks_total", "Tracks sent back to Opus by the latency or quality guard.", &a.fallbacks),
        ("auralink_aic_recoveries_total", "Fallen-back tracks that went back to AIC.", &a.recoveries),
        ("auralink_aic_errors_total", "AIC frames that failed (kept as Opus).", &a.errors),
        ("auralink_aic_loopback_packets_total", "Packets of loopback tracks sent to the router.", &a.loopback_packets),
        (
            "auralink_aic_loopback_dropped_total",
            "Packets of loopback tracks dropped: the router's queue was full.",
            &a.loopback_dropped,
        ),
        (
            "auralink_pipeline_frames_decoded_total",
            "Tapped Opus frames decoded by track pipelines.",
            &s.aic.pipelines.frames_decoded,
        ),
        (
            "auralink_pipeline_frames_concealed_total",
            "Lost frames track pipelines concealed.",
            &s.aic.pipelines.frames_concealed,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", load(v));
    }
    let _ = writeln!(
        out,
        "# HELP auralink_aic_tracks_fallen_back Tracks the guard has on Opus now.\n\
         # TYPE auralink_aic_tracks_fallen_back gauge\nauralink_aic_tracks_fallen_back {}",
        load(&a.fallen_back)
    );
    let name = "auralink_aic_frame_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Encode + decode time per 20 ms frame.\n# TYPE {name} histogram");
    for (b, le) in a.latency_buckets.iter().zip(crate::pipeline::aic::LATENCY_BUCKETS) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", load(b));
    }
    let count = load(&a.latency_count);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_count {count}");
    let _ = writeln!(out, "{name}_sum {}", load(&a.latency_sum_us) as f64 / 1e6);
    let q = load(&a.quality_count);
    let _ = writeln!(
        out,
        "# HELP auralink_aic_quality_estimate Mean estimated quality (PESQ-like, 1 to 4.5) of voiced AIC frames.\n\
         # TYPE auralink_aic_quality_estimate gauge\nauralink_aic_quality_estimate {}",
        if q == 0 { 0.0 } else { load(&a.quality_milli_sum) as f64 / 1000.0 / q as f64 }
    );
    let ratio = if opus_bytes == 0 { 0.0 } else { aic_bytes as f64 / opus_bytes as f64 };
    let _ = writeln!(
        out,
        "# HELP auralink_aic_compression_ratio AIC bytes over the same frames' Opus bytes.\n\
         # TYPE auralink_aic_compression_ratio gauge\nauralink_aic_compression_ratio {ratio}"
    );
    // 50 frames a second; rate(auralink_aic_bytes_total) gives the node's bitrate now.
    let frames = load(&a.frames_aic);
    let bitrate = if frames == 0 { 0.0 } else { (aic_bytes * 8 * 50) as f64 / frames as f64 };
    let _ = writeln!(
        out,
        "# HELP auralink_aic_bitrate_bps Mean bitrate of an AIC track's packets over the frames that went through AIC.\n\
         # TYPE auralink_aic_bitrate_bps gauge\nauralink_aic_bitrate_bps {bitrate}"
    );
}

/// The speech taps' series: utterances, drops, captions, caption lag, real-time factor.
fn speech(out: &mut String, s: &AppState) {
    let st = &s.speech.workers.stats;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed);
    for (name, help, v) in [
        ("auralink_speech_segments_total", "Utterances handed to the Whisper workers.", &st.segments),
        (
            "auralink_speech_segments_dropped_total",
            "Utterances dropped: the workers were behind.",
            &st.segments_dropped,
        ),
        ("auralink_speech_partials_total", "Previews of utterances in progress handed to the workers.", &st.partials),
        ("auralink_speech_partials_skipped_total", "Previews skipped: the workers were busy.", &st.partials_skipped),
        ("auralink_speech_silent_total", "Utterances Whisper read as silence or noise.", &st.silent),
        ("auralink_speech_errors_total", "Utterances Whisper failed on.", &st.errors),
        ("auralink_speech_captions_total", "Captions sent to rooms.", &st.captions),
        ("auralink_speech_captions_dropped_total", "Captions dropped: the sender was behind.", &st.captions_dropped),
        (
            "auralink_speech_tracks_refused_total",
            "Tracks not transcribed: the node, or the track's org, was at its limit.",
            &st.tracks_refused,
        ),
        ("auralink_speech_audio_seconds_total", "Audio Whisper read.", &st.audio_ms),
        ("auralink_speech_inference_seconds_total", "Time Whisper took reading it.", &st.inference_ms),
    ] {
        // The two time series are kept in ms.
        let v =
            if name.ends_with("seconds_total") { (load(v) as f64 / 1000.0).to_string() } else { load(v).to_string() };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP auralink_speech_tracks Tracks transcribed on this node now.\n# TYPE auralink_speech_tracks gauge\n\
         auralink_speech_tracks {}",
        s.speech.active(None).0
    );
    let name = "auralink_speech_caption_lag_seconds";
    let _ = writeln!(out, "# HELP {name} End of speech to final caption sent.\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (b, le) in st.lag_buckets.iter().zip(crate::pipeline::speech::workers::LAG_BUCKETS_MS) {
        cumulative += load(b);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", le as f64 / 1000.0);
    }
    let count = cumulative + load(&st.lag_buckets[crate::pipeline::speech::workers::LAG_BUCKETS_MS.len()]);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_count {count}");
    let _ = writeln!(out, "{name}_sum {}", load(&st.lag_ms_sum) as f64 / 1000.0);
}
