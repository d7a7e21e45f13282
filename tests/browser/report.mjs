// Opens the loadgen's HTML report (`mlcache-loadgen live --report DIR`) in
// headless Chromium, waits for it to load, and prints one JSON object on
// stdout: how many <svg> charts rendered and with what width, the section
// ids, every request the page made (it should make none but itself) and any
// console errors. Optionally saves a full-page screenshot.
//
//   node report.mjs --url file:///tmp/DIR/index.html [--screenshot out.png]
//       [--chromium /usr/bin/chromium] [--width 1000]

import { openPage } from './page.mjs';

const a = { url: null, screenshot: null, chromium: '/usr/bin/chromium', width: 1000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const [k, v] = [argv[i], argv[i + 1]];
  if (v === undefined) throw new Error(`${k} needs a value`);
  switch (k) {
    case '--url': a.url = v; break;
    case '--screenshot': a.screenshot = v; break;
    case '--chromium': a.chromium = v; break;
    case '--width': a.width = Number(v); break;
    default: throw new Error(`unknown flag ${k}`);
  }
}
if (!a.url) throw new Error('--url is required');

const { browser, page, requests, errors } = await openPage(a.chromium, a.width);
let code = 0;
try {
  await page.goto(a.url, { waitUntil: 'load', timeout: 20000 });
  const shown = await page.evaluate(() => {
    const svgs = [...document.querySelectorAll('section > svg')];
    return {
      svgs: svgs.length,
      width: Math.min(...svgs.map((s) => s.getBoundingClientRect().width)),
      lines: document.querySelectorAll('section > svg polyline, section > svg path').length,
      sections: [...document.querySelectorAll('section')].map((s) => s.id),
      missing: document.querySelectorAll('.none').length,
    };
  });
  if (a.screenshot) await page.screenshot({ path: a.screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({ ...shown, requests, errors }) + '\n');
} catch (e) {
  process.stderr.write(`report.mjs: ${e.stack || e}\n`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
