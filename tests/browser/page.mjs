// One headless Chromium page for the page checks (report.mjs, status.mjs):
// launched with the same flags, and recording every request the page makes
// and every console error, page error and dialog, so a check can prove a
// page loads nothing but itself and runs clean.

import puppeteer from 'puppeteer-core';

export async function openPage(chromium, width) {
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width, height: 900 });
    const requests = [];
    const errors = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('dialog', async (d) => { errors.push('dialog: ' + d.message()); await d.dismiss(); });
    return { browser, page, requests, errors };
  } catch (e) {
    await browser.close();
    throw e;
  }
}
