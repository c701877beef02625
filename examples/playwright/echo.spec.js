// A browser registers a WebRTC endpoint of a fresh astrtc test environment through the demo
// softphone the instance serves, calls the echo extension, and gets audio back.
import { test, expect } from '@playwright/test';
import { up, down, browserTrusting, gotoRetrying } from './astrtc.js';

let env;
let chrome;

test.beforeAll(async () => {
  env = up();
  chrome = await browserTrusting(env.ca_file);
});

test.afterAll(async () => {
  if (chrome) await chrome.close();
  if (env) down(env);
});

test('a browser calls the echo extension and hears itself', async () => {
  const user = env.endpoints.find((e) => e.kind === 'webrtc');
  const page = await chrome.browser.newPage();
  await gotoRetrying(page, env.phone_url);
  await page.fill('#wss', env.wss_url);
  await page.fill('#user', user.id);
  await page.fill('#password', user.password);
  await page.click('#register');
  await expect(page.locator('#state')).toHaveText(`registered as ${user.id}`);

  await page.fill('#target', env.echo_extension);
  await page.click('#call');
  await expect(page.locator('#state')).toHaveText('in call');
  // The echo sends our (fake microphone) audio back: inbound RTP keeps arriving.
  await expect
    .poll(async () => (await page.evaluate(() => window.astrtcPhone.stats()))?.packetsReceived ?? 0)
    .toBeGreaterThan(50);
  const stats = await page.evaluate(() => window.astrtcPhone.stats());
  expect(stats.dtlsState).toBe('connected');
  expect(stats.codec).toBe('audio/opus');

  await page.click('#hangup');
  await expect(page.locator('#state')).toContainText('call ended');
});
