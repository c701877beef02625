// Playwright with the system's Chromium (Debian's package), headless. No browser download:
// set CHROMIUM to use another binary.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: '.',
  // A test and each hook have this long: the test's page load may be retried for up to 30 s
  // (`gotoRetrying`), and `beforeAll` starts a fresh test environment, which on a host busy
  // with other environments can take most of a minute.
  timeout: 120_000,
  reporter: [['list']],
  workers: 2,
});
