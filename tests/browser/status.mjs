// Opens a relay's status page (GET / on the admin port) in headless Chromium,
// waits until it has rendered /status.json at least --polls times, and prints
// what the page shows as one JSON object on stdout: every figure's raw
// data-value, the stream and parent tables as displayed text, the number of
// chart windows, and every request the page made (to prove it loads nothing
// but itself and status.json) plus console errors and CSP violations.
//
//   node status.mjs --url http://127.0.0.1:9901/ [--polls 2] [--screenshot out.png]
//       [--chromium /usr/bin/chromium] [--width 1100]
//
// Exits non-zero when the page never shows data.

import { openPage } from './page.mjs';

function parseArgs(argv) {
  const a = { url: null, polls: 2, screenshot: null, chromium: '/usr/bin/chromium', width: 1100 };
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (v === undefined) throw new Error(`${k} needs a value`);
    switch (k) {
      case '--url': a.url = v; break;
      case '--polls': a.polls = Number(v); break;
      case '--screenshot': a.screenshot = v; break;
      case '--chromium': a.chromium = v; break;
      case '--width': a.width = Number(v); break;
      default: throw new Error(`unknown flag ${k}`);
    }
  }
  if (!a.url) throw new Error('--url is required');
  if (!(a.polls >= 1 && a.polls <= 30)) throw new Error('--polls 1..30');
  return a;
}

const a = parseArgs(process.argv.slice(2));
const { browser, page, requests, errors } = await openPage(a.chromium, a.width);
let code = 0;
try {
  await page.goto(a.url, { waitUntil: 'load', timeout: 20000 });
  await page.waitForFunction(
    (n) => Number(document.getElementById('state').dataset.polls || 0) >= n,
    { timeout: 20000, polling: 100 }, a.polls);
  const shown = await page.evaluate(() => {
    const num = (id) => {
      const v = document.getElementById(id).dataset.value;
      return v === undefined || v === '' ? null : Number(v);
    };
    const rows = (id) => [...document.getElementById(id).tBodies[0].rows]
      .filter((r) => !r.querySelector('.empty'))
      .map((r) => [...r.cells].map((c) => c.textContent));
    return {
      id: document.getElementById('relay-id').textContent,
      parked_viewers: num('parked'),
      open_flights: num('flights'),
      connections: num('connections'),
      cache_entries: num('cache-entries'),
      cache_bytes: num('cache-bytes'),
      hit_ratio: num('hit-ratio'),
      hit: num('req-hit'),
      coalesced: num('req-coalesced'),
      miss: num('req-miss'),
      memory_used: num('memory-used'),
      memory_limit: num('memory-limit'),
      delivery_count: num('delivery-count'),
      bytes_out: num('bytes-out'),
      streams: rows('streams'),
      streams_total: Number(document.getElementById('streams').dataset.total),
      upstreams: rows('upstreams'),
      chart_windows: Number(document.getElementById('chart').dataset.windows),
      chart_lines: document.querySelectorAll('#chart polyline').length,
      // Anything the page's data could have turned into markup.
      injected: document.querySelectorAll('main img, main script, main iframe').length,
      polls: Number(document.getElementById('state').dataset.polls),
    };
  });
  if (a.screenshot) await page.screenshot({ path: a.screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({ shown, requests, errors }) + '\n');
} catch (e) {
  process.stderr.write(`status.mjs: ${e.stack || e}\n`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
