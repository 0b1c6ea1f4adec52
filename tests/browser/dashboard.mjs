// Opens the dram dashboard in a real browser and reports what it shows.
//
//   node dashboard.mjs <url> <screenshot.png>
//
// Drives the system chromium (/usr/bin/chromium) through playwright-core, headless,
// with a fresh profile; never downloads a browser. Waits (at most 20 s) until the
// members table has rows, saves a full-page screenshot and prints ONE line of JSON:
//   {"members": [id…], "flagged": [id…], "databases": {name: {shard: copies}},
//    "under": ["db/shard"…], "over": ["db/shard"…], "banner": text|null,
//    "disks": {"member/disk": {dram, used, watermark: percent, text}},
//    "errors": [console errors and page errors]}.
// Exit status 0 when the page rendered, 1 when it did not (the JSON line then has
// "error"), 2 on bad usage.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const WAIT_MS = 20_000;
const HARD_LIMIT_MS = 50_000;

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node dashboard.mjs <url> <screenshot.png>');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'dram-chromium-'));
const cleanup = () => rmSync(profile, { recursive: true, force: true });

// Whatever hangs, the script ends (the caller also kills it after 60 s).
const hardLimit = setTimeout(() => {
  console.log(JSON.stringify({ error: `no result after ${HARD_LIMIT_MS} ms` }));
  cleanup();
  process.exit(1);
}, HARD_LIMIT_MS);

const errors = [];
let context;
let exitCode = 0;
let result = {};
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // TESTING.md's flags; the profile is `profile` (playwright passes it as
    // --user-data-dir), fresh for this run.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
    viewport: { width: 1280, height: 900 },
    timeout: WAIT_MS,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // A fetch answered with an error status is logged by the browser itself
    // ("Failed to load resource"): the page handles those; they are not script errors.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      errors.push(`console: ${message.text()}`);
    }
  });

  await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });
  let error = null;
  try {
    await page.waitForFunction(
      () => Number(document.body.dataset.refreshes || 0) >= 1
        && document.querySelectorAll('#members tbody tr[data-member]').length > 0,
      null,
      { timeout: WAIT_MS, polling: 100 },
    );
  } catch (e) {
    error = `the members table stayed empty: ${e.message.split('\n')[0]}`;
    exitCode = 1;
  }

  const seen = await page.evaluate(() => {
    const all = (selector) => [...document.querySelectorAll(selector)];
    const shardName = (cell) => `${cell.closest('[data-database]').dataset.database}/${cell.dataset.shard}`;
    const databases = {};
    for (const section of all('[data-database]')) {
      const shards = {};
      for (const cell of section.querySelectorAll('[data-shard]')) {
        shards[cell.dataset.shard] = Number(cell.textContent);
      }
      databases[section.dataset.database] = shards;
    }
    const banner = document.getElementById('banner');
    return {
      members: all('[data-member]').map((row) => row.dataset.member),
      flagged: all('[data-member].disagree').map((row) => row.dataset.member),
      databases,
      under: all('[data-database] [data-shard].under').map(shardName),
      over: all('[data-database] [data-shard].over').map(shardName),
      banner: banner && !banner.hidden ? banner.textContent : null,
      disks: Object.fromEntries(all('[data-disk]').map((card) => [card.dataset.disk, {
        dram: Number(card.dataset.dramPct),
        used: Number(card.dataset.usedPct),
        watermark: card.dataset.watermarkPct === '' ? null : Number(card.dataset.watermarkPct),
        text: card.querySelector('.label').textContent,
      }])),
    };
  });
  result = { ...seen, errors, ...(error ? { error } : {}) };
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  result = { ...result, error: `browser failed: ${e.message.split('\n')[0]}`, errors };
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  clearTimeout(hardLimit);
  cleanup();
}
console.log(JSON.stringify(result));
process.exit(exitCode);
