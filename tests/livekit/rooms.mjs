// The real livekit-client SDK in headless Chromium against an AuraLink server.
// Usage: node rooms.mjs <http-url> <api-key> <api-secret>
// Exits 0 when every check passed; prints what failed otherwise.
import { chromium } from 'playwright-core';
import { AccessToken, DataPacket_Kind, RoomServiceClient, WebhookReceiver } from 'livekit-server-sdk';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const [url, apiKey, apiSecret, hookPort] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const umd = join(here, 'node_modules/livekit-client/dist/livekit-client.umd.js');
const wsUrl = url.replace(/^http/, 'ws');

function log(...a) {
  console.log(new Date().toISOString().slice(11, 23), ...a);
}

// Webhooks from the server, each checked by the SDK's WebhookReceiver (signature, body hash).
const hooks = [];
const receiver = new WebhookReceiver(apiKey, apiSecret);
const hookServer = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', async () => {
    try {
      const e = await receiver.receive(body, req.headers.authorization);
      hooks.push(`${e.event}:${e.room?.name}:${e.participant?.identity || e.participant?.sid || ''}`);
      res.writeHead(200).end();
    } catch (err) {
      hooks.push(`invalid:${err.message}`);
      res.writeHead(401).end();
    }
  });
});
await new Promise((r) => hookServer.listen(Number(hookPort), '127.0.0.1', r));

async function token(identity, room, grant = {}, ttl = '10m') {
  const at = new AccessToken(apiKey, apiSecret, { identity, name: identity.toUpperCase(), ttl });
  at.addGrant({ roomJoin: true, room, ...grant });
  return at.toJwt();
}

/** Polls `fn` (run in the page) until it returns truthy, at most `ms`. */
async function until(page, what, fn, arg, ms = 30000) {
  const start = Date.now();
  let last;
  while (Date.now() - start < ms) {
    last = await page.evaluate(fn, arg);
    if (last && (last === true || last.ok)) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
}

// Runs in the page: joins, publishes fake camera and mic, attaches what it receives. The SDK's
// default is one peer connection (`/rtc/v1`); `singlePeerConnection: false` makes it use two.
async function joinRoom({ wsUrl, token, publish, singlePeerConnection = true, dynacast = false }) {
  const { Room, RoomEvent } = window.LivekitClient;
  const room = new Room({ adaptiveStream: false, dynacast, singlePeerConnection });
  window.received = [];
  window.events = [];
  room.on(RoomEvent.TrackSubscribed, (track, pub, participant) => {
    const el = track.attach();
    el.muted = false;
    document.body.appendChild(el);
    el.play().catch(() => {});
    window.events.push(`subscribed:${participant.identity}:${track.kind}`);
  });
  room.on(RoomEvent.TrackMuted, (pub, p) => window.events.push(`muted:${p.identity}:${pub.kind}`));
  room.on(RoomEvent.TrackUnmuted, (pub, p) => window.events.push(`unmuted:${p.identity}:${pub.kind}`));
  room.on(RoomEvent.ParticipantDisconnected, (p) => window.events.push(`left:${p.identity}`));
  room.on(RoomEvent.TrackUnpublished, (pub, p) => window.events.push(`unpublished:${p.identity}:${pub.kind}`));
  room.on(RoomEvent.ActiveSpeakersChanged, (s) => window.events.push(`speakers:${s.map((p) => p.identity).join(',')}`));
  room.on(RoomEvent.DataReceived, (payload, p, kind, topic) =>
    window.received.push({ from: p?.identity, topic, text: new TextDecoder().decode(payload) }),
  );
  room.on(RoomEvent.Reconnected, () => window.events.push('reconnected'));
  await room.connect(wsUrl, token, { autoSubscribe: true });
  if (publish) {
    await room.localParticipant.enableCameraAndMicrophone();
  }
  window.room = room;
  return room.engine.pcManager.mode;
}

// Runs in the page: decode counters for every subscribed track of `identity`.
async function decoded(identity) {
  const room = window.room;
  const p = [...room.remoteParticipants.values()].find((x) => x.identity === identity);
  if (!p) return { ok: false, why: 'participant unknown', known: [...room.remoteParticipants.values()].map((x) => x.identity) };
  const out = { ok: false, framesDecoded: 0, totalAudioEnergy: 0, sid: p.sid, pubs: [...p.trackPublications.values()].map((t) => `${t.trackSid}:${t.kind}:${!!t.track}:${t.isSubscribed}`), events: window.events.slice(-8) };
  for (const pub of p.trackPublications.values()) {
    if (!pub.track) continue;
    const report = await pub.track.getRTCStatsReport();
    report?.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') {
        out.framesDecoded += s.framesDecoded || 0;
        out.frameWidth = s.frameWidth || 0;
        out.videoPackets = (out.videoPackets || 0) + (s.packetsReceived || 0);
        out.pli = (out.pli || 0) + (s.pliCount || 0);
      }
      if (s.kind === 'audio') out.totalAudioEnergy += s.totalAudioEnergy || 0;
    });
  }
  out.ok = out.framesDecoded > 0 && out.totalAudioEnergy > 0;
  return out;
}

const flags = [
  '--headless',
  // Playwright drives the browser over this pipe; ignoreDefaultArgs drops it otherwise.
  '--remote-debugging-pipe',
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

const profile = mkdtempSync(join(tmpdir(), 'auralink-lk-'));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/lib/chromium/chromium',
  ignoreDefaultArgs: true,
  args: [...flags, `--user-data-dir=${profile}`],
});

async function newPage(name) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || process.env.LK_DEBUG) log(`[${name}] ${m.type()}: ${m.text()}`);
  });
  await page.goto(`${url}/healthz`);
  await page.addScriptTag({ path: umd });
  // Page-side checks below call it by name.
  await page.addScriptTag({ content: `window.decoded = ${decoded.toString()};` });
  if (process.env.LK_DEBUG) await page.evaluate(() => window.LivekitClient.setLogLevel('debug'));
  return page;
}

let failed = false;
let lastCall = '';
try {
  const room = 'lk-room';
  const alice = await newPage('alice');
  const bob = await newPage('bob');
  // Alice publishes with dynacast: she encodes only the simulcast layers someone watches.
  const aliceMode = await alice.evaluate(joinRoom, { wsUrl, token: await token('alice', room, { canUpdateOwnMetadata: true }), publish: true, dynacast: true });
  log('alice joined', aliceMode);
  const bobMode = await bob.evaluate(joinRoom, { wsUrl, token: await token('bob', room), publish: true });
  log('bob joined', bobMode);
  // Both on one peer connection: the SDK took /rtc/v1 and did not fall back.
  if (aliceMode !== 'publisher-only' || bobMode !== 'publisher-only') throw new Error(`peer connection modes: ${aliceMode}, ${bobMode}`);

  log('alice decodes bob', JSON.stringify(await until(alice, 'alice to decode bob', decoded, 'bob')));
  log('bob decodes alice', JSON.stringify(await until(bob, 'bob to decode alice', decoded, 'alice')));

  // Connection quality, from the server's loss and RTT measurements.
  await until(alice, 'a connection quality for bob', () => {
    const p = [...window.room.remoteParticipants.values()].find((x) => x.identity === 'bob');
    return { ok: p?.connectionQuality === 'excellent', q: p?.connectionQuality };
  });
  log('connection quality: excellent');

  // Data, reliable, from alice to bob with a topic; the server stamps the sender.
  await alice.evaluate(() =>
    window.room.localParticipant.publishData(new TextEncoder().encode('hello bob'), { reliable: true, topic: 'chat' }),
  );
  await until(bob, 'bob to receive data', () => window.received.some((m) => m.from === 'alice' && m.text === 'hello bob' && m.topic === 'chat'));
  log('data delivered');

  // Names and metadata: alice may change hers (her token says so) and bob sees it; bob may not.
  await alice.evaluate(() => window.room.localParticipant.setName('Alice Liddell'));
  await until(bob, 'bob to see alice renamed', () =>
    [...window.room.remoteParticipants.values()].some((p) => p.identity === 'alice' && p.name === 'Alice Liddell'),
  );
  const denied = await bob.evaluate(async () => {
    try {
      await window.room.localParticipant.setMetadata('{"role":"host"}');
      return 'allowed';
    } catch (e) {
      return String(e.message || e);
    }
  });
  if (denied === 'allowed') throw new Error('bob changed his metadata without canUpdateOwnMetadata');
  log('metadata: rename seen, unpermitted change refused:', denied);

  // Mute seen by the other side.
  await alice.evaluate(() => window.room.localParticipant.setMicrophoneEnabled(false));
  await until(bob, 'bob to see alice muted', () => window.events.includes('muted:alice:audio'));
  await alice.evaluate(() => window.room.localParticipant.setMicrophoneEnabled(true));
  await until(bob, 'bob to see alice unmuted', () => window.events.includes('unmuted:alice:audio'));
  log('mute/unmute seen');

  // A third participant, on two peer connections (/rtc), sees both and both see it.
  const carol = await newPage('carol');
  // Her token expires in four minutes, within the server's refresh margin: it sends her a
  // fresh one (refresh_token) at once.
  const carolToken = await token('carol', room, {}, '4m');
  const carolMode = await carol.evaluate(joinRoom, { wsUrl, token: carolToken, publish: true, singlePeerConnection: false });
  if (carolMode === 'publisher-only') throw new Error('carol was asked for two peer connections');
  const refreshed = await until(carol, 'a refreshed token', (first) => {
    const t = window.room.engine.token;
    return { ok: !!t && t !== first, t };
  }, carolToken);
  const claims = JSON.parse(Buffer.from(refreshed.t.split('.')[1], 'base64url'));
  const firstClaims = JSON.parse(Buffer.from(carolToken.split('.')[1], 'base64url'));
  if (claims.exp - firstClaims.exp < 300 || claims.sub !== 'carol' || claims.video.room !== room) throw new Error(`refreshed token: ${JSON.stringify(claims)}`);
  log('token refreshed:', claims.exp - firstClaims.exp, 's longer');
  await until(carol, 'carol to decode alice', decoded, 'alice');
  await until(carol, 'carol to decode bob', decoded, 'bob');
  await until(alice, 'alice to decode carol', decoded, 'carol');
  log('three-way media');

  // Leave: the others see the participant go.
  await carol.evaluate(() => window.room.disconnect());
  await until(alice, 'alice to see carol leave', () => window.events.includes('left:carol'));
  log('leave seen');

  // Simulcast: bob asks for low quality of alice's camera; the layer he receives shrinks.
  const width = async () => (await bob.evaluate(decoded, 'alice')).frameWidth;
  await until(bob, 'alice full-size layer', async () => {
    const d = await window.decoded('alice');
    return { ok: d.frameWidth >= 640, d };
  });
  const before = await width();
  await bob.evaluate(() => {
    const p = [...window.room.remoteParticipants.values()].find((x) => x.identity === 'alice');
    const pub = [...p.trackPublications.values()].find((t) => t.kind === 'video');
    pub.setVideoQuality(window.LivekitClient.VideoQuality.LOW);
  });
  await until(bob, 'the low layer', async (w) => {
    const d = await window.decoded('alice');
    return { ok: d.frameWidth > 0 && d.frameWidth < w, d };
  }, before);
  log(`simulcast: ${before}px wide, then ${await width()}px after asking for LOW`);
  // Dynacast: with LOW all that anyone watches of her camera, alice stops encoding the rest.
  await until(alice, 'alice to encode the low layer only', () => {
    const pub = [...window.room.localParticipant.trackPublications.values()].find((t) => t.kind === 'video');
    const active = pub.track.sender.getParameters().encodings.filter((e) => e.active).map((e) => e.rid ?? '');
    return { ok: active.length === 1, active };
  });
  log('dynacast: the publisher encodes only the layer watched');

  // Bad input on a signal connection closes that connection with a reason; the room goes on.
  const bad = await newPage('bad-ws');
  const badToken = await token('fuzzer', room);
  const closes = await bad.evaluate(async ({ wsUrl, badToken }) => {
    const attempt = (send) =>
      new Promise((resolve) => {
        const ws = new WebSocket(`${wsUrl}/rtc?access_token=${badToken}&auto_subscribe=0`);
        ws.binaryType = 'arraybuffer';
        let joined = false;
        ws.onmessage = () => {
          if (!joined) {
            joined = true;
            send(ws);
          }
        };
        ws.onclose = (e) => resolve(`${e.code} ${e.reason}`);
        setTimeout(() => resolve('no close'), 5000);
      });
    return [
      await attempt((ws) => ws.send(new Uint8Array([0xff, 0xff, 0xff, 0x01, 0x02]))),
      await attempt((ws) => ws.send('{"offer": {}}')),
      // SignalRequest{answer: {type:"answer", sdp:"v=0"}}: a broken answer to the server's offer.
      await attempt((ws) => ws.send(new Uint8Array([0x12, 0x0d, 0x0a, 0x06, ...new TextEncoder().encode('answer'), 0x12, 0x03, ...new TextEncoder().encode('v=0')]))),
      // SignalRequest{mute: {sid:"TR_1", muted:true}}: muting a track of somebody else.
      await attempt((ws) => ws.send(new Uint8Array([0x2a, 0x08, 0x0a, 0x04, ...new TextEncoder().encode('TR_1'), 0x10, 0x01]))),
      await attempt((ws) => ws.send(new Uint8Array(300 * 1024))),
    ];
  }, { wsUrl, badToken });
  log('bad frames ->', JSON.stringify(closes));
  // A join request that is not one is refused before the upgrade, with the reason.
  const badJoin = await fetch(`${url}/rtc/v1/validate?access_token=${badToken}&join_request=bm90IGEgam9pbg==`);
  const badJoinText = await badJoin.text();
  log('malformed join_request ->', badJoin.status, badJoinText);
  if (badJoin.status !== 400 || !/WrappedJoinRequest/.test(badJoinText)) throw new Error(`malformed join_request: ${badJoin.status} ${badJoinText}`);
  const expect = [/^1008 malformed/, /^1008 text frames/, /^1008 negotiation failed: malformed SDP/, /^1008 invalid value: TR_1 is not a track of this participant/, /^1009/];
  closes.forEach((c, i) => {
    if (!expect[i].test(c)) throw new Error(`bad frame ${i} closed with ${c}`);
  });
  const aliceStill = await alice.evaluate(decoded, 'bob');
  await until(alice, 'alice still decoding bob after the bad clients', async (n) => {
    const d = await window.decoded('bob');
    return { ok: d.framesDecoded > n, d };
  }, aliceStill.framesDecoded);
  log('room unaffected by bad clients');

  // Mixed room: the WHIP/WHEP demo page and SDK clients see each other.
  const whip = await newPage('whip');
  await whip.goto(`${url}/whip?room=${room}&identity=whipper&autojoin=1`);
  await until(whip, 'the WHEP player to decode alice', () => {
    const r = window.auralink?.remotes?.alice;
    return { ok: !!r && r.framesDecoded > 0 && r.totalAudioEnergy > 0, r };
  });
  await until(alice, 'alice to decode the WHIP publisher', decoded, 'whipper');
  log('mixed room: WHIP/WHEP page and SDK clients see each other');
  await whip.close();

  // The signal connection drops: the SDK resumes the session. Bob stays the same
  // participant with the same subscriptions, alice never sees him leave, and media goes on.
  const bobSid = await bob.evaluate(() => window.room.localParticipant.sid);
  const seen = async (p) => p.evaluate(() => window.events.length);
  const [aliceSeen, bobSeen] = [await seen(alice), await seen(bob)];
  const framesBefore = (await bob.evaluate(decoded, 'alice')).framesDecoded;
  await bob.evaluate(() => window.room.simulateScenario('signal-reconnect'));
  await until(bob, 'bob to resume', () => window.events.includes('reconnected'));
  await until(bob, 'bob to decode alice after resuming', async (n) => {
    const d = await window.decoded('alice');
    return { ok: d.ok && d.framesDecoded > n + 30, d };
  }, framesBefore);
  const framesAlice = (await alice.evaluate(decoded, 'bob')).framesDecoded;
  await until(alice, 'alice to keep decoding bob', async (n) => {
    const d = await window.decoded('bob');
    return { ok: d.framesDecoded > n + 30, d };
  }, framesAlice);
  const after = {
    sid: await bob.evaluate(() => window.room.localParticipant.sid),
    alice: await alice.evaluate((n) => window.events.slice(n), aliceSeen),
    bob: await bob.evaluate((n) => window.events.slice(n), bobSeen),
  };
  if (after.sid !== bobSid) throw new Error(`resume made bob a new participant: ${bobSid} -> ${after.sid}`);
  if (after.alice.includes('left:bob')) throw new Error(`alice saw bob leave during a resume: ${after.alice}`);
  if (after.bob.some((e) => e.startsWith('subscribed:'))) throw new Error(`bob subscribed again: ${after.bob}`);
  log('signal connection resumed: same participant, same subscriptions, media flowing');

  // A resume of a session that does not exist, or with somebody else's token, is refused
  // with a leave that sends the SDK to a full rejoin.
  const refused = await bad.evaluate(async ({ wsUrl, badToken, sids }) => {
    const attempt = (sid) =>
      new Promise((resolve) => {
        const ws = new WebSocket(`${wsUrl}/rtc?access_token=${badToken}&reconnect=1&sid=${sid}`);
        ws.onclose = (e) => resolve(`${e.code} ${e.reason}`);
        setTimeout(() => resolve('no close'), 5000);
      });
    return [await attempt(sids[0]), await attempt(sids[1])];
  }, { wsUrl, badToken, sids: ['PA_ffffff', bobSid] });
  log('refused resumes ->', JSON.stringify(refused));
  if (!/^1000 no session PA_ffffff/.test(refused[0]) || !/^1000 the token is not for/.test(refused[1])) {
    throw new Error(`resume refusals: ${refused}`);
  }

  // Tokens: tampered and expired ones are refused with the SDK's error.
  const attemptJoin = async (t) => {
    const p = await newPage('token');
    const r = await p.evaluate(
      async ({ wsUrl, t }) => {
        try {
          await new window.LivekitClient.Room().connect(wsUrl, t);
          return 'connected';
        } catch (e) {
          return `${e.name}: ${e.message} status=${e.status ?? ''}`;
        }
      },
      { wsUrl, t },
    );
    await p.close();
    return r;
  };
  const good = await token('eve', room);
  const [h, b, sig] = good.split('.');
  const tampered = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(b, 'base64url')), sub: 'admin' })).toString('base64url')}.${sig}`;
  const expiredAt = new AccessToken(apiKey, apiSecret, { identity: 'eve', ttl: 1 });
  expiredAt.addGrant({ roomJoin: true, room });
  const expired = await expiredAt.toJwt();
  await new Promise((r) => setTimeout(r, 12_000)); // past the 10 s clock-skew leeway
  for (const [what, t, want] of [
    ['tampered', tampered, /401.*signature|signature.*401/],
    ['expired', expired, /expired/],
  ]) {
    const r = await attemptJoin(t);
    log(`${what} token ->`, r);
    if (!want.test(r)) throw new Error(`${what} token: ${r}`);
  }

  // A token for another room is refused with the SDK's error.
  const wrong = await newPage('mallory');
  const err = await wrong.evaluate(
    async ({ wsUrl, token }) => {
      try {
        const room = new window.LivekitClient.Room();
        await room.connect(wsUrl, token);
        return 'connected';
      } catch (e) {
        return `${e.name}: ${e.message} status=${e.status ?? ''}`;
      }
    },
    { wsUrl, token: await token('mallory', '', { roomJoin: false }) },
  );
  log('bad token ->', err);
  if (err === 'connected' || !/403|401|not ?allowed/i.test(err)) throw new Error(`bad token was not refused properly: ${err}`);

  // LiveKit's server SDK manages rooms through the Twirp RoomService.
  // Each call is noted, so that a failure says which one it was.
  const client = new RoomServiceClient(url, apiKey, apiSecret);
  const svc = new Proxy(client, {
    get(target, name) {
      const v = target[name];
      if (typeof v !== 'function') return v;
      return (...args) => {
        lastCall = `${String(name)}(${args.slice(0, 2).map((a) => JSON.stringify(a)).join(', ')})`;
        return v.apply(target, args);
      };
    },
  });
  const created = await svc.createRoom({ name: 'svc-room', emptyTimeout: 60, metadata: 'hello' });
  if (created.name !== 'svc-room' || created.metadata !== 'hello' || created.emptyTimeout !== 60) {
    throw new Error(`createRoom: ${JSON.stringify(created)}`);
  }
  const again = await svc.createRoom({ name: 'svc-room' });
  if (again.metadata !== 'hello') throw new Error('createRoom is get-or-create');
  const listed = await svc.listRooms();
  const live = listed.find((r) => r.name === room);
  if (!listed.some((r) => r.name === 'svc-room') || !live || live.numParticipants < 2) {
    throw new Error(`listRooms: ${JSON.stringify(listed)}`);
  }
  const people = (await svc.listParticipants(room)).map((p) => p.identity).sort();
  if (!people.includes('alice') || !people.includes('bob')) throw new Error(`listParticipants: ${people}`);
  const bobInfo = await svc.getParticipant(room, 'bob');
  const bobAudio = bobInfo.tracks.find((t) => t.type === 0 || t.type === 'AUDIO');
  if (!bobAudio || bobInfo.sid !== bobSid) throw new Error(`getParticipant: ${JSON.stringify(bobInfo)}`);
  await svc.updateParticipant(room, 'bob', { metadata: 'set-by-server', attributes: { desk: '7' } });
  await until(alice, 'alice to see the server-set metadata', () => {
    const b = [...window.room.remoteParticipants.values()].find((p) => p.identity === 'bob');
    return { ok: b?.metadata === 'set-by-server' && b?.attributes?.desk === '7', m: b?.metadata };
  });
  // Room metadata: pushed to those in the room (room_update), and in the join of later ones.
  await svc.updateRoomMetadata(room, 'agenda: demo');
  await until(alice, 'alice to see the room metadata', () => ({ ok: window.room.metadata === 'agenda: demo', m: window.room.metadata }));
  const dave = await newPage('dave');
  await dave.evaluate(joinRoom, { wsUrl, token: await token('dave', room), publish: false });
  const daveSees = await dave.evaluate(() => window.room.metadata);
  if (daveSees !== 'agenda: demo') throw new Error(`room metadata at join: ${daveSees}`);
  await dave.evaluate(() => window.room.disconnect());
  // Data from the server: only alice is addressed; it arrives with no sender, as LiveKit's.
  await svc.sendData(room, new TextEncoder().encode('from the server'), DataPacket_Kind.RELIABLE, { topic: 'ops', destinationIdentities: ['alice'] });
  await until(alice, 'alice to receive the server data', () => window.received.some((m) => m.from === undefined && m.topic === 'ops' && m.text === 'from the server'));
  await svc.mutePublishedTrack(room, 'bob', bobAudio.sid, true);
  await until(alice, 'alice to see bob muted by the server', () => window.events.includes('muted:bob:audio'));
  // The server takes bob's publish permission: his tracks are unpublished for alice, and his
  // own SDK learns the new permission.
  await svc.updateParticipant(room, 'bob', { permission: { canPublish: false, canSubscribe: true, canPublishData: true } });
  await until(alice, 'alice to see bob unpublished', () => ({
    ok: window.events.includes('unpublished:bob:audio') && window.events.includes('unpublished:bob:video'),
    e: window.events.slice(-6),
  }));
  await until(bob, 'bob to learn he may not publish', () => ({ ok: window.room.localParticipant.permissions?.canPublish === false }));
  const refusals = [];
  for (const attempt of [() => svc.getParticipant(room, 'nobody'), () => svc.deleteRoom('no-such-room')]) {
    try {
      await attempt();
      refusals.push('accepted');
    } catch (e) {
      refusals.push(`${e.status} ${e.code}`);
    }
  }
  if (refusals.join() !== '404 not_found,404 not_found') throw new Error(`refusals: ${refusals}`);
  await svc.deleteRoom('svc-room');
  if ((await svc.listRooms(['svc-room'])).length !== 0) throw new Error('deleteRoom left the room listed');
  await svc.removeParticipant(room, 'bob');
  await until(alice, 'alice to see bob removed', () => window.events.includes('left:bob'));
  log('RoomService over Twirp: create/list/delete rooms, room metadata pushed and at join, send data, list/get/update/mute/remove participants, permissions');

  // Every webhook verified; the room's life is in them.
  await new Promise((r) => setTimeout(r, 1000));
  const wanted = ['room_started:lk-room:', 'participant_joined:lk-room:alice', 'participant_joined:lk-room:bob', 'participant_left:lk-room:bob'];
  const missing = wanted.filter((w) => !hooks.includes(w));
  const invalid = hooks.filter((h) => h.startsWith('invalid'));
  if (missing.length || invalid.length || !hooks.some((h) => h.startsWith('track_published:lk-room:PA_')) || !hooks.some((h) => h.startsWith('track_unpublished:lk-room:'))) {
    throw new Error(`webhooks: missing ${missing}, invalid ${invalid}, got ${hooks}`);
  }
  log(`webhooks: ${hooks.length} received, all verified by WebhookReceiver`);
} catch (e) {
  failed = true;
  console.error('FAILED:', e.message, lastCall && `(last RoomService call: ${lastCall})`);
} finally {
  hookServer.close();
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
