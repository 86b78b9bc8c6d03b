//! Prometheus text exposition at `/metrics`: router counters and gauges, no per-participant
//! labels (their cardinality would grow with traffic).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::ApiError;

pub async fn metrics(State(s): State<AppState>) -> Response {
    let Ok((stats, (rooms, participants, tracks))) = s.sfu.call(|sfu, _| (sfu.stats().clone(), sfu.gauges())).await
    else {
        return ApiError::unavailable().into_response();
    };
    let hooks = &s.webhooks;
    let series = [
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
            "auralink_redis_errors_total",
            "counter",
            "Redis calls that failed or timed out (the node's own budget applied).",
            s.limiter.redis_errors.load(Relaxed),
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
