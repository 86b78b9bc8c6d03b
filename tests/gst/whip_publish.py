#!/usr/bin/env python3
"""Publish a 440 Hz tone and a test pattern over WHIP with GStreamer's webrtcbin.

Debian's GStreamer 1.22 has no whipsink, so this drives webrtcbin the way a WHIP
client does (RFC 9725): one non-trickle offer POSTed with a bearer token, the
201's SDP as the answer. webrtcbin's DTLS agent makes an RSA 2048 certificate,
which is what this publisher is here to exercise.

Usage: whip_publish.py URL TOKEN SECONDS
Prints "connected" once the peer connection is up, then publishes for SECONDS
and exits 0; any failure exits 1 with the reason on stderr.
"""

import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = """
webrtcbin name=pc bundle-policy=max-bundle
audiotestsrc is-live=true wave=sine freq=440 volume=0.3
  ! audioconvert ! audioresample ! opusenc bitrate=32000
  ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111
  ! pc.
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1
  ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96
  ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! pc.
"""


def fail(loop, why):
    print(f"whip_publish: {why}", file=sys.stderr, flush=True)
    loop.exit_code = 1
    loop.quit()


def main():
    url, token, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Gst.init(None)
    loop = GLib.MainLoop()
    loop.exit_code = 0
    pipe = Gst.parse_launch(PIPELINE)
    pc = pipe.get_by_name("pc")

    def post_offer():
        offer = pc.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            url,
            data=offer.encode(),
            method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status != 201:
                    return fail(loop, f"POST answered {resp.status}")
                answer = resp.read().decode()
        except urllib.error.HTTPError as e:
            return fail(loop, f"POST answered {e.code}: {e.read().decode()}")
        except OSError as e:
            return fail(loop, f"POST failed: {e}")
        _, sdp = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        pc.emit("set-remote-description", desc, None)

    posted = []

    def on_gathering(pc, _):
        if pc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not posted:
            posted.append(True)
            GLib.idle_add(lambda: post_offer() and False)

    def on_offer(promise, _):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        pc.emit("set-local-description", offer, None)

    def on_negotiation_needed(pc):
        promise = Gst.Promise.new_with_change_func(on_offer, None)
        pc.emit("create-offer", None, promise)

    def on_connection_state(pc, _):
        state = pc.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            print("connected", flush=True)
            GLib.timeout_add_seconds(seconds, loop.quit)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            fail(loop, "peer connection failed")

    def on_message(_, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            fail(loop, f"pipeline error: {err.message} ({debug})")

    pc.connect("on-negotiation-needed", on_negotiation_needed)
    pc.connect("notify::ice-gathering-state", on_gathering)
    pc.connect("notify::connection-state", on_connection_state)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    pipe.set_state(Gst.State.PLAYING)
    # A bound on the whole run: connecting must not take longer than this.
    GLib.timeout_add_seconds(seconds + 30, lambda: fail(loop, "timed out") or False)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    sys.exit(loop.exit_code)


if __name__ == "__main__":
    main()
