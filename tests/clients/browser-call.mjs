// Drives the astrtc demo softphone (served by Asterisk at /static/phone/index.html) in Debian's
// headless chromium: register, call, watch getStats(), hang up. Prints one JSON object on
// stdout; the Rust test (tests/clients.rs) asserts on it. Exits non-zero, quickly and with a
// reason, when the page cannot load (e.g. untrusted certificate) or registration fails.
//
// node browser-call.mjs --page URL --wss URL --user ID --password-env VAR --target EXT
//                       --seconds N --profile DIR --artifacts DIR
//                       [--ice-servers-env VAR] [--relay-only 1] [--ice-timeout S] [--answer 1]
//                       [--map-host ADDR]
// With --answer, the phone places no call: it answers the first call it gets (within 60 s),
// samples getStats() for --seconds and waits for the caller to hang up.
// With --ice-servers-env, the phone's "ICE servers" field gets that variable's JSON (e.g. the
// output of `astrtc turn-credentials --json`). After the call is answered it waits for ICE to
// connect or fail (--ice-timeout, default 40 s) and reports each ICE state, the time from the
// call to ICE connected, and the selected candidate pair; ICE failing (Chrome: "disconnected"
// before ever connecting, "failed" much later) is an error.
import { chromium } from 'playwright-core';
import { writeFileSync, mkdirSync } from 'node:fs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const seconds = Number(args.seconds || 3);
const password = process.env[args['password-env'] || 'ASTRTC_PASSWORD'] || '';
const result = {
  ok: false, registeredMs: null, confirmedMs: null, firstRtpMs: null, samples: [], errors: [], endCause: null,
  iceStates: [], iceConnectedMs: null, iceFailed: false, pair: null, relayCandidates: 0,
};
const consoleLines = [];
const t0 = Date.now();

function finish(code) {
  result.elapsedMs = Date.now() - t0;
  if (args.artifacts) {
    mkdirSync(args.artifacts, { recursive: true });
    writeFileSync(`${args.artifacts}/browser-console.log`, consoleLines.join('\n') + '\n');
    writeFileSync(`${args.artifacts}/browser-result.json`, JSON.stringify(result, null, 2));
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
}

async function waitFor(page, predicate, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => window.astrtcPhone.state);
    if (s.errors.length) throw new Error(`${what}: ${s.errors.join('; ')}`);
    if (predicate(s)) return s;
    await page.waitForTimeout(50);
  }
  throw new Error(`${what}: timed out after ${timeoutMs} ms`);
}

let context;
try {
  context = await chromium.launchPersistentContext(args.profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      // --map-host: the host names of the page and of the WebSocket go to this address (also
      // `localhost`, which Chromium never looks up otherwise), e.g. a deployment's own address on
      // its Docker network. A page loaded from a file has no host name.
      ...(args['map-host'] ? [`--host-resolver-rules=${[args.page, args.wss]
        .map((u) => (u ? new URL(u).hostname : ''))
        .filter((h, i, all) => h && all.indexOf(h) === i)
        .map((h) => `MAP ${h} ${args['map-host']}`)
        .join(',')}`] : []),
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  // Chromium aborts a load with ERR_NETWORK_CHANGED when an interface comes or goes on the host
  // (other tests create namespaces, veths and Docker networks): that, and only that, is retried.
  // Mid-navigation Playwright reports it as interrupted by another navigation (to Chromium's
  // network error page, chrome-error://chromewebdata/, or to the same URL, which Chromium reloads
  // by itself after a network change); a server that stays unreachable still fails on attempt 4.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(args.page, { timeout: 10000 });
      break;
    } catch (e) {
      const networkChanged = e.message.includes('ERR_NETWORK_CHANGED') || e.message.includes('is interrupted by another navigation to');
      if (attempt < 4 && networkChanged) {
        consoleLines.push(`[retry] ${e.message.split('\n')[0]}`);
        // Interrupted by Chromium's own reload of the same page: let that load finish and take it
        // (another goto at once was interrupted in turn, four times within 2 s in a CI run).
        if (e.message.includes(`interrupted by another navigation to "${args.page}"`)) {
          const landed = await page
            .waitForLoadState('load', { timeout: 10000 })
            .then(() => page.url() === args.page)
            .catch(() => false);
          if (landed) break;
        }
        continue;
      }
      throw new Error(`cannot load ${args.page}: ${e.message.split('\n')[0]}`);
    }
  }
  await page.fill('#wss', args.wss);
  await page.fill('#user', args.user);
  await page.fill('#password', password);
  // Checked before registering: a call that comes before the box is checked is refused 486 (the
  // page answers only with it checked), and the caller may call the moment the registration is
  // stored, while a loaded Playwright is still checking the box (a CI run saw exactly that).
  if (args.autoanswer || args.answer) await page.check('#autoanswer');
  await page.click('#register');
  let s = await waitFor(page, (st) => st.registered, 'registration', 10000);
  result.registeredMs = s.registeredAt;
  if (args.answer) {
    s = await waitFor(page, (st) => st.callState === 'confirmed' || st.callState === 'ended', 'incoming call', 60000);
  } else {
    await page.fill('#target', args.target);
    if (args['ice-servers-env']) await page.fill('#ice-servers', process.env[args['ice-servers-env']] || '');
    if (args['relay-only']) await page.check('#relay-only');
    await page.click('#call');
    s = await waitFor(page, (st) => st.callState === 'confirmed' || st.callState === 'ended', 'call', 20000);
  }
  if (s.callState !== 'confirmed') throw new Error(`call ended before it was answered: ${s.endCause}`);
  result.confirmedMs = s.confirmedAt;
  // ICE: connected, or failed (the page records each state), within --ice-timeout.
  const iceDeadline = Date.now() + Number(args['ice-timeout'] || 40) * 1000;
  for (;;) {
    s = await page.evaluate(() => window.astrtcPhone.state);
    // Failed, or (as Chrome reports it first) disconnected without ever having connected.
    const failed = s.iceConnectedAt === null && s.iceStates.some((x) => x.state === 'failed' || x.state === 'disconnected');
    if (s.iceConnectedAt !== null || failed || Date.now() > iceDeadline) break;
    await page.waitForTimeout(100);
  }
  result.iceStates = s.iceStates.map((x) => ({ state: x.state, ms: Math.round(x.at - s.callStartedAt) }));
  result.relayCandidates = s.relayCandidates;
  if (s.iceConnectedAt === null) {
    result.iceFailed = s.iceStates.some((x) => x.state === 'failed' || x.state === 'disconnected');
    const last = await page.evaluate(() => window.astrtcPhone.stats());
    result.samples.push({ t: 0, ...last });
    if (await page.isEnabled('#hangup')) await page.click('#hangup');
    throw new Error(result.iceFailed ? 'ICE failed' : `ICE did not connect within ${args['ice-timeout'] || 40} s`);
  }
  result.iceConnectedMs = s.iceConnectedAt - s.callStartedAt;
  const callStart = Date.now();
  const callStartPage = s.confirmedAt;
  while (Date.now() - callStart < seconds * 1000) {
    const st = await page.evaluate(() => window.astrtcPhone.stats());
    result.samples.push({ t: Date.now() - callStart, ...st });
    if (result.firstRtpMs === null && st && st.packetsReceived > 0) {
      result.firstRtpMs = callStartPage + (Date.now() - callStart);
    }
    await page.waitForTimeout(250);
  }
  result.pair = result.samples.length ? result.samples[result.samples.length - 1].pair : null;
  if (args.answer) {
    s = await waitFor(page, (st) => st.callState === 'ended', 'the caller hanging up', 20000);
  } else {
    await page.click('#hangup');
    s = await waitFor(page, (st) => st.callState === 'ended', 'hang-up', 5000);
  }
  result.endCause = s.endCause;
  result.ok = true;
  await context.close();
  finish(0);
} catch (e) {
  result.errors.push(e.message);
  if (context) await context.close().catch(() => {});
  finish(1);
}
