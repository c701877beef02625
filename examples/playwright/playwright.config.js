// Playwright with the system's Chromium (Debian's package), headless. No browser download:
// set CHROMIUM to use another binary.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: '.',
  timeout: 60_000,
  reporter: [['list']],
  workers: 2,
});
