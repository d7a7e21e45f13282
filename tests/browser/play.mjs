// Plays live streams in headless Chromium with real players and prints what
// they did as one JSON object on stdout.
//
//   node play.mjs --player hls --src relays=https://127.0.0.1:8443/ll/master.m3u8 \
//       [--src direct=http://127.0.0.1:9100/ll/master.m3u8] [--tabs 1] \
//       [--warmup 6] [--seconds 20] [--screenshot out.png] [--chromium /usr/bin/chromium]
//       [--token TOKEN]
//
// Each --src LABEL=URL is opened in --tabs tabs at once. The page is served
// from this script's own origin, so every media request is cross-origin (CORS).
// Certificates are not checked (the test relays use a throwaway CA).
// For each tab, after --warmup seconds of playing, it measures over --seconds:
// how fast currentTime advanced per wall second, stall ('waiting') events,
// and the player's own live latency (hls.latency, dash getCurrentLiveLatency).
// --token TOKEN: hls.js sends `Authorization: Bearer TOKEN` on key requests
// (HLS AES-128, EXT-X-KEY) only.
// Exit code 0 even when a player failed: the caller judges the figures.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const a = { player: 'hls', srcs: [], tabs: 1, warmup: 6, seconds: 20, screenshot: null, chromium: '/usr/bin/chromium', token: null };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${k} needs a value`);
    i++;
    switch (k) {
      case '--player': a.player = v; break;
      case '--src': {
        const eq = v.indexOf('=');
        if (eq < 1) throw new Error(`--src wants LABEL=URL, got ${v}`);
        a.srcs.push({ label: v.slice(0, eq), url: v.slice(eq + 1) });
        break;
      }
      case '--tabs': a.tabs = Number(v); break;
      case '--warmup': a.warmup = Number(v); break;
      case '--seconds': a.seconds = Number(v); break;
      case '--screenshot': a.screenshot = v; break;
      case '--chromium': a.chromium = v; break;
      case '--token': a.token = v; break;
      default: throw new Error(`unknown flag ${k}`);
    }
  }
  if (!['hls', 'dash'].includes(a.player)) throw new Error('--player is hls or dash');
  if (a.srcs.length === 0) throw new Error('at least one --src LABEL=URL');
  if (!(a.tabs >= 1 && a.tabs <= 20)) throw new Error('--tabs 1..20');
  if (!(a.seconds > 0 && a.seconds <= 600) || !(a.warmup >= 0 && a.warmup <= 120)) throw new Error('bad --seconds/--warmup');
  return a;
}

// The page and the two player libraries, from this folder's node_modules.
const files = {
  '/player.html': [path.join(here, 'player.html'), 'text/html'],
  '/lib/hls.min.js': [path.join(here, 'node_modules/hls.js/dist/hls.min.js'), 'text/javascript'],
  '/lib/dash.all.min.js': [path.join(here, 'node_modules/dashjs/dist/modern/umd/dash.all.min.js'), 'text/javascript'],
};

function serve() {
  const server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': f[1] });
    fs.createReadStream(f[0]).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function summarise(s, warmupMs, windowMs) {
  const out = { label: s.label, keyRequests: s.keyRequests || 0, errors: s.errors, nonFatal: s.nonFatal, nonFatalDetails: s.nonFatalDetails, stallsTotal: s.stalls, targetLatency: s.targetLatency, fragments: s.fragments, playing: s.started !== null };
  if (s.started === null) return { ...out, advance: 0, stalls: null, latency: null };
  const from = s.started + warmupMs;
  const win = s.samples.filter(([t]) => t >= from && t <= from + windowMs);
  if (win.length < 2) return { ...out, advance: 0, stalls: null, latency: null };
  const [t0, c0] = win[0];
  const [t1, c1] = win[win.length - 1];
  const lats = win.map((x) => x[2]).filter((x) => x !== null).sort((x, y) => x - y);
  const q = (p) => (lats.length ? lats[Math.min(lats.length - 1, Math.floor(p * lats.length))] : null);
  return {
    ...out,
    advance: (c1 - c0) / ((t1 - t0) / 1000),
    measuredSeconds: (t1 - t0) / 1000,
    stalls: s.stallsInWindow,
    latency: lats.length ? { p50: q(0.5), min: lats[0], max: lats[lats.length - 1], mean: lats.reduce((x, y) => x + y, 0) / lats.length } : null,
  };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const server = await serve();
  const base = `http://127.0.0.1:${server.address().port}`;
  const browser = await puppeteer.launch({
    executablePath: a.chromium,
    headless: true,
    acceptInsecureCerts: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required', '--ignore-certificate-errors',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows', '--disable-background-media-suspend',
      '--disable-features=MediaSessionService,BackgroundVideoTrackOptimization,IntensiveWakeUpThrottling',
    ],
  });
  const result = { player: a.player, page: base, tabs: [] };
  try {
    const pages = [];
    for (const s of a.srcs) {
      for (let i = 0; i < a.tabs; i++) {
        // One window per player: Chromium stops video in hidden tabs.
        const page = await browser.newPage({ type: 'window', windowBounds: { width: 700, height: 520 } });
        await page.setViewport({ width: 680, height: 460 });
        const consoleLines = [];
        page.on('console', (m) => { if (consoleLines.length < 50) consoleLines.push(m.text()); });
        const u = `${base}/player.html?player=${a.player}&label=${encodeURIComponent(s.label)}&src=${encodeURIComponent(s.url)}`
          + (a.token ? `&token=${encodeURIComponent(a.token)}` : '');
        await page.goto(u, { waitUntil: 'load' });
        pages.push({ page, label: s.label, tab: i, consoleLines });
      }
    }
    // Wait until every tab plays (or the warm-up budget runs out), then
    // mark the window start in each page so stalls count inside it only.
    const startBy = Date.now() + (a.warmup + 20) * 1000;
    // Chromium defers media in a tab that has never been visible: show each
    // tab until its player plays.
    for (const p of pages) {
      await p.page.bringToFront();
      while (Date.now() < startBy) {
        const started = await p.page.evaluate(() => window.mlStats && window.mlStats.started !== null);
        if (started) break;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    await new Promise((r) => setTimeout(r, a.warmup * 1000));
    for (const p of pages) {
      await p.page.evaluate(() => { window.mlStats.stallsAtWindow = window.mlStats.stalls; });
    }
    const t0 = Date.now();
    let shot = false;
    while (Date.now() - t0 < a.seconds * 1000) {
      await new Promise((r) => setTimeout(r, 1000));
      process.stderr.write(`play.mjs: ${Math.round((Date.now() - t0) / 1000)}/${a.seconds} s\n`);
      if (a.screenshot && !shot && Date.now() - t0 > (a.seconds * 1000) / 2) {
        await pages[0].page.screenshot({ path: a.screenshot });
        shot = true;
      }
    }
    for (const p of pages) {
      const s = await p.page.evaluate(() => {
        const s = window.mlStats;
        s.stallsInWindow = s.stalls - (s.stallsAtWindow || 0);
        return s;
      });
      if (!s) { result.tabs.push({ label: p.label, errors: ['page did not load'] }); continue; }
      // Wall-clock measurement window in page time: warm-up after 'playing'
      // may have been longer for tabs that started first; use the samples
      // from the marked window onwards.
      const windowMs = a.seconds * 1000;
      const warmupMs = s.samples.length ? Math.max(0, (s.samples[s.samples.length - 1][0] - windowMs) - s.started) : 0;
      const sum = summarise(s, warmupMs, windowMs);
      sum.tab = p.tab;
      if (sum.errors.length || !sum.playing) sum.console = p.consoleLines;
      result.tabs.push(sum);
    }
  } finally {
    await browser.close();
    server.close();
  }
  process.stdout.write(JSON.stringify(result, null, 1) + '\n');
}

main().catch((e) => {
  process.stderr.write(`play.mjs: ${e.stack || e}\n`);
  process.exit(2);
});
