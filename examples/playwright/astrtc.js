// Helpers for tests against an astrtc test environment: start one (`astrtc testenv up --json`),
// remove it, and a Chromium that trusts the environment's CA through an NSS database in a
// throwaway HOME (no certificate errors ignored).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from '@playwright/test';

const ASTRTC = process.env.ASTRTC || 'astrtc';

/** Starts a test environment; returns what `testenv up --json` printed. */
export function up(args = []) {
  return JSON.parse(execFileSync(ASTRTC, ['testenv', 'up', '--json', ...args], { encoding: 'utf8' }));
}

/** Removes it. */
export function down(env) {
  execFileSync(ASTRTC, ['testenv', 'down', env.name], { stdio: 'inherit' });
}

/** A headless Chromium whose certificate store trusts `caFile`; call `close()` when done. */
export async function browserTrusting(caFile) {
  const home = mkdtempSync(join(tmpdir(), 'astrtc-browser-'));
  const nss = `sql:${home}/.pki/nssdb`;
  execFileSync('mkdir', ['-p', `${home}/.pki/nssdb`]);
  execFileSync('certutil', ['-d', nss, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', nss, '-A', '-t', 'C,,', '-n', 'astrtc-testenv', '-i', caFile]);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    env: { ...process.env, HOME: home },
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** page.goto, retried when Chromium aborts the load because a network interface on the host
 * came or went (ERR_NETWORK_CHANGED; e.g. other test environments starting). When the change
 * lands mid-navigation Playwright reports it as a navigation "interrupted by another navigation"
 * (to chrome-error://chromewebdata/, Chromium's network error page, or to the same URL, which
 * Chromium reloads by itself after a network change): retried as well.
 * Retried for up to 30 s (a host where many environments start at once changes its interfaces
 * many times in a row); any other error, or the last one, is thrown with every attempt's. */
export async function gotoRetrying(page, url, { withinMs = 30_000 } = {}) {
  const deadline = Date.now() + withinMs;
  const seen = [];
  for (let attempt = 1; ; attempt++) {
    try {
      return await page.goto(url);
    } catch (e) {
      const first = e.message.split('\n')[0];
      seen.push(`attempt ${attempt}: ${first}`);
      const networkChanged = e.message.includes('ERR_NETWORK_CHANGED') || e.message.includes('is interrupted by another navigation to');
      if (!networkChanged || Date.now() >= deadline) {
        e.message = `loading ${url} failed (${seen.join('; ')})\n${e.message}`;
        throw e;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}
