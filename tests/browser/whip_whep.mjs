// Two headless Chromium pages join one room through the WHIP/WHEP demo page (/whip): each
// publishes fake camera and microphone over WHIP and plays the other over WHEP; then chat both
// ways, then one leaves. Then the same with the livekit-client room app at /: two pages see and
// hear each other, one presses Leave and its tile disappears on the other. Last, in an org's
// room with AIC and its loopback on, one hears the other's "aic:" twin after pressing Listen.
// Usage: node tests/browser/whip_whep.mjs http://127.0.0.1:<port> <admin key>   (run by tests/browser.rs)
// Exit 0 on success, 1 with the reason on stderr.

import { chromium } from "playwright-core";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [base, admin] = process.argv.slice(2);
if (!base || !admin) {
  console.error("usage: node whip_whep.mjs http://127.0.0.1:<port> <admin key>");
  process.exit(2);
}
const room = "t1";

// Debian's /usr/bin/chromium is a shell wrapper that adds its own flags; launch the real binary
// so ours are the only ones.
const executablePath = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"].find(existsSync);
const userDataDir = mkdtempSync(join(tmpdir(), "auralink-chromium-"));
const args = [
  "--headless",
  "--no-sandbox",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  // Without it Chrome offers no 127.0.0.1 candidate and cannot reach a loopback-only server.
  "--allow-loopback-in-peer-connection",
  // Else host candidates are hidden behind mDNS names (multicast queries off the machine).
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  // Keep every lookup on the machine; the EXCLUDE parts keep the server reachable.
  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
  // Remote audio must play unmuted without a click (autojoin has no user gesture).
  "--autoplay-policy=no-user-gesture-required",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  `--user-data-dir=${userDataDir}`,
  // playwright drives the browser over this pipe (ignoreDefaultArgs drops its own flags).
  "--remote-debugging-pipe",
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `check` until it returns a truthy value or `ms` pass; throws `what` with the last state.
async function waitFor(what, ms, check, describe) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}; state: ${await describe()}`);
    await sleep(250);
  }
}

const state = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.auralink ?? null)));

let browser;
let failed = false;
// Our own deadline, under the Rust driver's hard kill, so Chromium is always closed by us.
const watchdog = setTimeout(async () => {
  console.error("browser test FAILED: overall timeout (210 s)");
  if (browser) await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}, 210_000);
try {
  browser = await chromium.launch({ executablePath, ignoreDefaultArgs: true, args, timeout: 30_000 });
  // One browser context per participant, so each has its own media devices and storage.
  const open = async (identity, url) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("console", (m) => ["error", "warning"].includes(m.type()) && console.log(`[${identity} console.${m.type()}] ${m.text()}`));
    page.on("response", (r) => r.status() >= 400 && console.log(`[${identity}] ${r.request().method()} ${r.url()} -> ${r.status()}`));
    page.on("pageerror", (e) => console.log(`[${identity} pageerror] ${e.message}`));
    await page.goto(url);
    return page;
  };
  const pages = {};
  for (const identity of ["alice", "bob"]) pages[identity] = await open(identity, `${base}/whip?room=${room}&identity=${identity}&autojoin=1`);
  const { alice, bob } = pages;
  const status = async () => {
    const out = {};
    for (const [name, page] of Object.entries(pages)) {
      out[name] = { ...(await state(page)), status: await page.locator("#status").textContent() };
    }
    return JSON.stringify(out);
  };

  // Both published, and each decodes the other's video and hears its audio.
  const flowing = (me, other) => async () => {
    const r = (await state(pages[me]))?.remotes?.[other];
    return r && r.framesDecoded > 0 && r.totalAudioEnergy > 0;
  };
  await waitFor("alice and bob to decode each other's video and audio", 30_000,
    async () => (await flowing("alice", "bob")()) && (await flowing("bob", "alice")()), status);
  // Let a few more seconds of media flow so the summary shows a steady state.
  await sleep(2000);
  const stats = { alice: await state(alice), bob: await state(bob) };

  // Chat both ways: the server relays on channels whose protocol names the sender.
  for (const [from, to] of [["alice", "bob"], ["bob", "alice"]]) {
    const text = `hello from ${from} ${Date.now()}`;
    await waitFor(`${from}'s chat channel to open`, 10_000, () => pages[from].evaluate((t) => window.auralink.sendChat(t), text), status);
    await waitFor(`${to} to receive ${from}'s chat message`, 10_000,
      async () => (await state(pages[to])).chat.some((m) => m.from === from && m.text === text), status);
  }

  // Bob leaves: alice's next participant polls drop his tile.
  await bob.click("#leave");
  await waitFor("bob to be unpublished", 5_000, async () => !(await state(bob)).publishing, status);
  await waitFor("alice's tile for bob to disappear", 10_000,
    async () => !(await state(alice)).remotes.bob && (await alice.locator('.tile[data-key="r-bob"]').count()) === 0, status);

  console.log("WHIP/WHEP page passed");
  for (const [me, other] of [["alice", "bob"], ["bob", "alice"]]) {
    const r = stats[me].remotes[other];
    console.log(`  ${me} <- ${other}: framesDecoded=${r.framesDecoded} videoPackets=${r.videoPacketsReceived} ` +
                `audioPackets=${r.audioPacketsReceived} totalAudioEnergy=${r.totalAudioEnergy.toPrecision(3)}`);
  }
  await alice.context().close();
  await bob.context().close();

  // The livekit-client room app at /: same checks through the SDK and LiveKit signaling.
  const lk = {};
  for (const identity of ["ann", "ben"]) lk[identity] = await open(identity, `${base}/?room=lkdemo&identity=${identity}&autojoin=1`);
  const demo = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.demo ?? null)));
  const lkStatus = async () => {
    const out = {};
    for (const [name, page] of Object.entries(lk)) out[name] = { ...(await demo(page)), status: await page.locator("#status").textContent() };
    return JSON.stringify(out);
  };
  const hears = async (me, other) => {
    const r = (await demo(lk[me]))?.remotes?.[other];
    return r && r.framesDecoded > 0 && r.totalAudioEnergy > 0;
  };
  await waitFor("ann and ben (room app) to decode each other's video and audio", 30_000,
    async () => (await hears("ann", "ben")) && (await hears("ben", "ann")), lkStatus);
  const lkStats = { ann: await demo(lk.ann), ben: await demo(lk.ben) };
  await lk.ann.click("#leave");
  await waitFor("ann to leave", 5_000, async () => !(await demo(lk.ann)).joined, lkStatus);
  await waitFor("ben's tile for ann to disappear", 10_000,
    async () => !(await demo(lk.ben)).remotes.ann && (await lk.ben.locator('.tile[data-key="r-ann"]').count()) === 0, lkStatus);
  console.log("room app passed");
  for (const [me, other] of [["ann", "ben"], ["ben", "ann"]]) {
    const r = lkStats[me].remotes[other];
    console.log(`  ${me} <- ${other}: framesDecoded=${r.framesDecoded} totalAudioEnergy=${r.totalAudioEnergy.toPrecision(3)}`);
  }

  // AIC loopback: an org's room (dev tokens have no org) with AIC and the loopback on.
  const api = async (method, path, key, body) => {
    const r = await fetch(`${base}${path}`, {
      method, headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
    return json;
  };
  const key = (await api("POST", "/v1/orgs", admin, { name: "aic", owner_email: "o@aic.test" })).api_key.key;
  await api("POST", "/v1/rooms", key, { name: "aic" });
  // Floors a debug build meets, so the guard keeps the track on AIC.
  await api("PUT", "/v1/rooms/aic/aic", key, { enabled: true, loopback: true, min_quality: 1.0, max_latency_ms: 1000 });
  const aic = {};
  for (const identity of ["cai", "dee"]) {
    const { token } = await api("POST", "/v1/tokens", key, { room: "aic", identity });
    aic[identity] = await open(identity, `${base}/?token=${token}&autojoin=1`);
  }
  const aicStatus = async () => JSON.stringify({ cai: await demo(aic.cai), dee: await demo(aic.dee) });
  const silent = (page, identity) => page.evaluate((id) => [...document.querySelectorAll(`.tile[data-key="r-${id}"] audio`)].map((a) => a.volume === 0), identity);
  await waitFor("dee to get cai's AIC twin", 30_000, async () => (await demo(aic.dee))?.remotes?.["aic:cai"], aicStatus);
  // Before Listen the twin is silent and cai is heard; after it, the other way round.
  const heard = async () => `twin silent ${await silent(aic.dee, "aic:cai")}, cai silent ${await silent(aic.dee, "cai")}`;
  await waitFor("the twin's audio element", 15_000, async () => (await silent(aic.dee, "aic:cai")).length > 0, aicStatus);
  if (!(await silent(aic.dee, "aic:cai")).every(Boolean) || (await silent(aic.dee, "cai")).some(Boolean)) {
    throw new Error(`before Listen: ${await heard()}`);
  }
  await aic.dee.click('.tile[data-key="r-aic:cai"] button.listen');
  if ((await silent(aic.dee, "aic:cai")).some(Boolean) || !(await silent(aic.dee, "cai")).every(Boolean)) {
    throw new Error(`after Listen: ${await heard()}`);
  }
  await waitFor("dee to hear cai after the codec", 30_000, async () => (await demo(aic.dee)).remotes["aic:cai"].totalAudioEnergy > 0, aicStatus);
  console.log(`AIC loopback passed: dee <- aic:cai totalAudioEnergy=${(await demo(aic.dee)).remotes["aic:cai"].totalAudioEnergy.toPrecision(3)}`);
  console.log("browser test passed");
} catch (e) {
  failed = true;
  console.error(`browser test FAILED: ${e.message}`);
} finally {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
