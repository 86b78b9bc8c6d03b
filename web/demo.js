// Shared by the demo pages (/ and /whip): status line, error handling, dev-mode tokens.
// Each page defines leave(closeNow).
const $ = (id) => document.getElementById(id);

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function fail(e) {
  console.error(e);
  status(String(e.message || e), true);
  leave(false);
}

async function getToken(room, identity) {
  const pasted = $("token").value.trim();
  if (pasted) return pasted;
  const r = await fetch(`/dev/token?room=${encodeURIComponent(room)}&identity=${encodeURIComponent(identity)}`);
  if (r.status === 404) {
    // Not dev mode: the server cannot mint tokens, so the user brings one.
    $("tokenbox").hidden = false;
    throw new Error("server is not in dev mode: paste a join token and press Join");
  }
  if (!r.ok) throw new Error(`token: ${r.status} ${await r.text()}`);
  return (await r.json()).token;
}
