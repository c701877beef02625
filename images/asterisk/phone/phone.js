// The astrtc demo softphone. The test suite drives exactly this page, so it cannot rot:
// window.astrtcPhone exposes the state the tests assert on.
import JsSIP from 'jssip';

const $ = (id) => document.getElementById(id);
const state = {
  registered: false,
  registeredAt: null,
  callState: 'idle',
  confirmedAt: null,
  endCause: null,
  errors: [],
  startedAt: performance.now(),
  // ICE of the current call: every state with its time (ms since the page loaded).
  iceStates: [],
  iceConnectedAt: null,
  relayCandidates: 0,
  callStartedAt: null,
};
let ua = null;
let session = null;

function show(text) {
  $('state').textContent = text;
}

function fail(text) {
  state.errors.push(text);
  show(text);
}

// Prefill the WSS URL from the page's own origin when it is served by Asterisk.
if (location.protocol === 'https:') {
  $('wss').value = `wss://${location.host}/ws`;
}
const params = new URLSearchParams(location.hash.slice(1));
for (const key of ['wss', 'user', 'target']) {
  if (params.get(key)) $(key).value = params.get(key);
}

$('account').addEventListener('submit', (event) => {
  event.preventDefault();
  register($('wss').value, $('user').value, $('password').value);
});
$('unregister').addEventListener('click', () => ua && ua.stop());
$('dial').addEventListener('submit', (event) => {
  event.preventDefault();
  call($('target').value);
});
$('hangup').addEventListener('click', () => session && session.terminate());

function register(wss, user, password) {
  let host;
  try {
    host = new URL(wss).hostname;
  } catch (e) {
    fail(`not a WSS URL: ${wss}`);
    return;
  }
  const socket = new JsSIP.WebSocketInterface(wss);
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: `sip:${user}@${host}`,
    password,
    register: true,
    session_timers: false,
    connection_recovery_min_interval: 2,
    connection_recovery_max_interval: 4,
  });
  ua.on('connecting', () => show(`connecting to ${wss}`));
  ua.on('disconnected', (e) => {
    if (!state.registered) {
      fail(`cannot connect to ${wss}: the WebSocket failed (is the port open and the certificate trusted?)`);
    }
  });
  ua.on('registered', () => {
    state.registered = true;
    state.registeredAt = performance.now() - state.startedAt;
    show(`registered as ${user}`);
    $('call').disabled = false;
    $('unregister').disabled = false;
  });
  ua.on('unregistered', () => {
    state.registered = false;
    show('not registered');
    $('call').disabled = true;
  });
  ua.on('registrationFailed', (e) => fail(`registration failed: ${e.cause}`));
  ua.on('newRTCSession', (e) => {
    if (e.originator === 'remote') {
      if (session || !$('autoanswer').checked) {
        e.session.terminate({ status_code: 486 });
        return;
      }
      track(e.session);
      e.session.answer({ mediaConstraints: { audio: true, video: false } });
    }
  });
  ua.start();
}

// The ICE servers field: one iceServers entry ({"urls": [...], "username": ..., "credential": ...},
// as `astrtc turn-credentials --json` prints it) or a list of them; empty: none.
function iceServers() {
  const text = $('ice-servers').value.trim();
  if (!text) return [];
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new Error(`ICE servers: not JSON (${e.message})`);
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  for (const entry of list) {
    const urls = entry && (Array.isArray(entry.urls) ? entry.urls : [entry.urls]);
    if (!urls || !urls.every((u) => typeof u === 'string' && /^(stun|turns?):/.test(u))) {
      throw new Error('ICE servers: each entry needs "urls" (stun:, turn: or turns: URLs)');
    }
  }
  return list;
}

function call(target) {
  if (!ua) return;
  const host = new URL($('wss').value).hostname;
  let servers;
  try {
    servers = iceServers();
  } catch (e) {
    fail(e.message);
    return;
  }
  const relayOnly = $('relay-only').checked;
  const s = ua.call(`sip:${target}@${host}`, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: servers, iceTransportPolicy: relayOnly ? 'relay' : 'all' },
  });
  track(s);
  // Each candidate as it is gathered, with its time (the browser console; the tests keep it).
  const t0 = performance.now();
  s.on('icecandidate', (e) => {
    const c = e.candidate;
    const ms = Math.round(performance.now() - t0);
    console.log(`ICE candidate after ${ms} ms: ${c.type} ${c.protocol} ${c.address}:${c.port}${c.relayProtocol ? ` via TURN over ${c.relayProtocol}` : ''}`);
    if (c.type === 'relay') state.relayCandidates += 1;
  });
  s.on('sending', () => console.log(`INVITE sent ${Math.round(performance.now() - t0)} ms after the call started`));
}

function track(s) {
  session = s;
  state.callState = 'calling';
  state.confirmedAt = null;
  state.endCause = null;
  state.iceStates = [];
  state.iceConnectedAt = null;
  state.relayCandidates = 0;
  state.callStartedAt = performance.now() - state.startedAt;
  show('calling');
  $('hangup').disabled = false;
  s.on('peerconnection', (e) => attach(e.peerconnection));
  if (s.connection) attach(s.connection);
  s.on('progress', () => { state.callState = 'ringing'; show('ringing'); });
  s.on('confirmed', () => {
    state.callState = 'confirmed';
    state.confirmedAt = performance.now() - state.startedAt;
    show('in call');
  });
  const done = (e) => {
    state.callState = 'ended';
    state.endCause = e.cause;
    session = null;
    $('hangup').disabled = true;
    show(`call ended: ${e.cause}`);
  };
  s.on('ended', done);
  s.on('failed', (e) => { done(e); state.errors.push(`call failed: ${e.cause}`); });
}

function attach(pc) {
  pc.addEventListener('track', (e) => {
    $('remote').srcObject = e.streams[0] || new MediaStream([e.track]);
  });
  pc.addEventListener('iceconnectionstatechange', () => {
    const at = performance.now() - state.startedAt;
    state.iceStates.push({ state: pc.iceConnectionState, at });
    if (pc.iceConnectionState === 'connected' && state.iceConnectedAt === null) state.iceConnectedAt = at;
    // Chrome reports "disconnected" (and only much later "failed") once every check of a call
    // that never connected has timed out: either way there is no path for the media.
    const never = state.iceConnectedAt === null;
    if (pc.iceConnectionState === 'failed' || (never && pc.iceConnectionState === 'disconnected')) {
      fail('ICE failed: no path for the media (a TURN server in "ICE servers" may help)');
    }
  });
}

// Audio levels and the figures the tests read, from getStats().
async function stats() {
  const pc = session && session.connection;
  if (!pc) return null;
  const report = await pc.getStats();
  const out = {
    dtlsState: null, codec: null, packetsReceived: 0, packetsSent: 0, audioLevelIn: 0, audioLevelOut: 0,
    iceState: pc.iceConnectionState, pair: null,
  };
  const codecs = new Map();
  const byId = new Map();
  report.forEach((r) => {
    byId.set(r.id, r);
    if (r.type === 'codec') codecs.set(r.id, r.mimeType);
  });
  report.forEach((r) => {
    if (r.type === 'transport' && r.dtlsState) out.dtlsState = r.dtlsState;
    // The selected candidate pair: how the media actually travels.
    if (r.type === 'transport' && r.selectedCandidatePairId) {
      const pair = byId.get(r.selectedCandidatePairId);
      const local = pair && byId.get(pair.localCandidateId);
      const remote = pair && byId.get(pair.remoteCandidateId);
      if (local && remote) {
        out.pair = {
          local: { type: local.candidateType, address: local.address, port: local.port, protocol: local.protocol,
            relayProtocol: local.relayProtocol || null, url: local.url || null },
          remote: { type: remote.candidateType, address: remote.address, port: remote.port, protocol: remote.protocol },
        };
      }
    }
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.packetsReceived = r.packetsReceived || 0;
      out.audioLevelIn = r.audioLevel || 0;
      if (r.codecId) out.codec = codecs.get(r.codecId) || out.codec;
    }
    if (r.type === 'outbound-rtp' && r.kind === 'audio') out.packetsSent = r.packetsSent || 0;
    if (r.type === 'media-source' && r.kind === 'audio') out.audioLevelOut = r.audioLevel || 0;
  });
  return out;
}

setInterval(async () => {
  const s = await stats();
  $('level-in').value = s ? s.audioLevelIn : 0;
  $('level-out').value = s ? s.audioLevelOut : 0;
  const p = s && s.pair;
  $('path').textContent = p
    ? `media: ${p.local.type}${p.local.relayProtocol ? ` (TURN over ${p.local.relayProtocol})` : ''} ${p.local.address}:${p.local.port}`
      + ` -> ${p.remote.type} ${p.remote.address}:${p.remote.port}, ICE ${s.iceState}`
    : '';
}, 250);

window.astrtcPhone = { state, stats, register, call, hangup: () => session && session.terminate() };
