// Beacon's tracker (/js/beacon.js) in headless Chromium against a real
// `beacon up`: pages served from another origin (http://localhost:PORT) load
// the script from the collector and send across origins, as on a real site.
// Each test counts what the API says about its own page paths and event names.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { Beacon, until } from './beacon.js';

const CHROMIUM = process.env.BEACON_CHROMIUM || '/usr/bin/chromium';
const WAIT = 15_000;
// A desktop Chrome, not "HeadlessChrome": bot filtering must not take the test's visits.
const AGENT = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36';

let beacon;
let browser;
let site;
/** Ids the collector answered as stored (accepted, or already stored). */
const stored = new Set();

/** The test website: every path is one page with the tracker, but /files/* are downloads and /gone is a 404. */
function startSite() {
  let tag = '';
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname.startsWith('/files/')) {
      res.writeHead(200, { 'Content-Type': 'application/pdf', 'Content-Disposition': 'attachment' });
      res.end('%PDF-1.4');
      return;
    }
    res.writeHead(url.pathname === '/gone' ? 404 : 200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html><head><title>Shop</title>${tag}</head><body>
      <h1>Shop</h1>
      <a id="out" href="http://elsewhere.test/landing">elsewhere</a>
      <a id="download" href="/files/price-list.pdf">price list</a>
      <div style="height: 3000px">tall</div>
    </body></html>`);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const origin = `http://localhost:${server.address().port}`;
      resolve({
        origin,
        server,
        setTag: (html) => { tag = html; },
      });
    });
  });
}

before(async () => {
  beacon = await Beacon.start();
  site = await startSite();
  site.setTag(`<script defer data-site="shop" data-404 src="${beacon.url}/js/beacon.js"></script>`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    timeout: 60_000,
  });
});

after(async () => {
  await browser?.close();
  site?.server.close();
  await beacon?.stop();
});

/**
 * A fresh visitor (empty storage) on `path`, recording what the tracker sends
 * and the collector's answers. `optedOut` sets the opt-out flag before any page loads.
 */
async function visit(path, { optedOut = false, referer = undefined } = {}) {
  const context = await browser.newContext({ userAgent: AGENT });
  context.setDefaultTimeout(WAIT);
  if (optedOut) await context.addInitScript(() => localStorage.setItem('beacon_ignore', 'true'));
  // The outbound link's target, answered here instead of the network.
  await context.route('http://elsewhere.test/**', (route) => route.fulfill({ contentType: 'text/html', body: '<p>elsewhere</p>' }));
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.sent = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/api/v1/track')) page.sent.push(...JSON.parse(r.postData()).events);
  });
  page.answers = [];
  page.on('response', async (r) => {
    if (!r.url().endsWith('/api/v1/track')) return;
    page.answers.push(r.status());
    const answer = await r.json().catch(() => ({}));
    for (const result of answer.results || []) if (result.status !== 'rejected') stored.add(result.id);
  });
  await page.goto(`${site.origin}${path}`, { referer });
  await page.waitForFunction(() => typeof window.beacon === 'function');
  return page;
}

/** The queue the tracker keeps in localStorage. */
const queued = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('beacon_queue') || '[]'));

async function done(page) {
  assert.deepEqual(page.errors, [], 'errors on the page');
  await page.context().close();
}

/** The last hour and the next, on whole hours: page views per path are read from hour buckets. */
function hours() {
  const hour = 3_600_000;
  const now = Math.floor(Date.now() / hour) * hour;
  return `from=${new Date(now - hour).toISOString()}&to=${new Date(now + hour).toISOString()}`;
}

/** Count of `value` in a breakdown of the last hours. */
async function count(dimension, value, metric = 'events') {
  const b = await beacon.api(`/api/v1/sites/shop/breakdown?dimension=${dimension}&metric=${metric}&${hours()}&limit=1000`);
  return b.rows.find((r) => r.value === value)?.count ?? 0;
}

/** Wait until `value` is counted `n` times, then check it stays at `n` a moment longer. */
async function countedOnce(dimension, value, metric = 'events', n = 1) {
  await until(`${dimension}=${value} to be counted`, async () => (await count(dimension, value, metric)) >= n);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await count(dimension, value, metric), n, `${dimension}=${value}`);
}

test('the collector serves the script, cached, gzipped, and at the Plausible path too', async () => {
  const plain = await fetch(`${beacon.url}/js/beacon.js`, { headers: { 'Accept-Encoding': 'identity' } });
  assert.equal(plain.status, 200);
  assert.match(plain.headers.get('content-type'), /javascript/);
  assert.match(plain.headers.get('cache-control'), /max-age=\d+/);
  const body = await plain.text();
  assert.match(body, /\/api\/v1\/track/);
  const again = await fetch(`${beacon.url}/js/beacon.js`, { headers: { 'If-None-Match': plain.headers.get('etag') } });
  assert.equal(again.status, 304);
  const plausible = await fetch(`${beacon.url}/js/script.js`, { headers: { 'Accept-Encoding': 'identity' } });
  assert.equal(await plausible.text(), body);
});

test('page views of a single-page app, with the referrer of the first', async () => {
  const page = await visit('/spa', { referer: 'https://www.google.com/' });
  await page.evaluate(() => history.pushState({}, '', '/spa/pricing'));
  await page.evaluate(() => history.pushState({}, '', '/spa/checkout'));
  // Back to /spa/pricing: a page view too.
  await page.goBack();
  await until('the page views to be sent', async () => (await queued(page)).length === 0 && page.answers.length > 0);
  await countedOnce('path', '/spa', 'pageviews');
  await countedOnce('path', '/spa/pricing', 'pageviews', 2);
  await countedOnce('path', '/spa/checkout', 'pageviews');
  assert.ok(page.answers.every((s) => s === 200), `answers ${page.answers}`);
  const views = page.sent.filter((e) => e.name === 'pageview');
  assert.deepEqual(views.map((e) => [new URL(e.url).pathname, e.referrer]), [
    ['/spa', 'https://www.google.com/'],
    ['/spa/pricing', undefined],
    ['/spa/checkout', undefined],
    ['/spa/pricing', undefined],
  ]);
  assert.equal(new Set(page.sent.map((e) => e.id)).size, page.sent.length, 'every event has its own id');
  await done(page);
});

test('with data-hash, a hash route is a page view of its own path', async () => {
  site.setTag(`<script defer data-site="shop" data-hash src="${beacon.url}/js/beacon.js"></script>`);
  try {
    const page = await visit('/hash-app');
    await page.evaluate(() => { location.hash = '#/settings'; });
    await until('both page views to be sent', async () => page.sent.filter((e) => e.name === 'pageview').length === 2);
    await countedOnce('path', '/hash-app#/settings', 'pageviews');
    await done(page);
  } finally {
    site.setTag(`<script defer data-site="shop" data-404 src="${beacon.url}/js/beacon.js"></script>`);
  }
});

test('an outbound link and a download are events with the url', async () => {
  const page = await visit('/links');
  await page.click('#download');
  await Promise.all([page.waitForURL('http://elsewhere.test/landing'), page.click('#out')]);
  await countedOnce('name', 'File Download');
  await countedOnce('name', 'Outbound Link: Click');
  await done(page);
});

test('a custom event with props and revenue, and an opt-in 404', async () => {
  const page = await visit('/gone');
  await page.evaluate(() => window.beacon('Signup', { props: { plan: 'pro' }, revenue: { amount: '19.99', currency: 'EUR' } }));
  await countedOnce('name', 'Signup');
  await countedOnce('name', '404');
  const summary = await beacon.api('/api/v1/sites/shop/summary?from=-1h&metrics=revenue');
  assert.equal(summary.metrics.revenue.value.EUR, '19.99');
  await done(page);
});

test('the opt-out flag and excluded paths send nothing', async () => {
  const page = await visit('/optout', { optedOut: true });
  await page.evaluate(() => window.beacon('Ignored Event'));
  await page.evaluate(() => history.pushState({}, '', '/optout/next'));
  assert.deepEqual(await queued(page), []);
  assert.deepEqual(page.sent, []);
  await done(page);
  site.setTag(`<script defer data-site="shop" data-exclude="/admin/**" src="${beacon.url}/js/beacon.js"></script>`);
  const admin = await visit('/admin/users/7');
  await admin.evaluate(() => window.beacon('Admin Event'));
  assert.deepEqual(await queued(admin), []);
  await done(admin);
  site.setTag(`<script defer data-site="shop" data-404 src="${beacon.url}/js/beacon.js"></script>`);
  // Counted last, after everything above had time to arrive.
  await countedOnce('path', '/spa', 'pageviews');
  assert.equal(await count('name', 'Ignored Event'), 0);
  assert.equal(await count('name', 'Admin Event'), 0);
  assert.equal(await count('path', '/optout', 'pageviews'), 0);
});

test('a 503 while NATS is paused, then the retry: counted once', async () => {
  const page = await visit('/before-pause');
  await until('the first page view to be sent', async () => (await queued(page)).length === 0);
  beacon.natsServer('SIGSTOP');
  try {
    await page.evaluate(() => window.beacon('Paused Purchase', { revenue: { amount: '5.00', currency: 'USD' } }));
    await until('the collector to answer 503', async () => page.answers.includes(503), 30_000);
    assert.equal((await queued(page)).length, 1, 'the event waits in the queue');
  } finally {
    beacon.natsServer('SIGCONT');
  }
  await until('the retry to be answered 200', async () => page.answers.at(-1) === 200 && (await queued(page)).length === 0, 30_000);
  await countedOnce('name', 'Paused Purchase');
  await done(page);
});

test('offline: events wait in localStorage, then go once the browser is online', async () => {
  const page = await visit('/before-offline');
  await until('the first page view to be sent', async () => (await queued(page)).length === 0);
  await page.context().setOffline(true);
  await page.evaluate(() => window.beacon('Offline Signup'));
  await page.evaluate(() => history.pushState({}, '', '/while-offline'));
  await until('the events to be queued', async () => (await queued(page)).length >= 2);
  // A reload while offline would fail; the queue survives in localStorage meanwhile.
  await page.context().setOffline(false);
  await until('the queue to empty', async () => (await queued(page)).length === 0, 30_000);
  await countedOnce('name', 'Offline Signup');
  await countedOnce('path', '/while-offline', 'pageviews');
  await done(page);
});

test('engagement: a ping with time on page and scroll depth when the page is left', async () => {
  const page = await visit('/long-read');
  await page.mouse.wheel(0, 1500);
  await page.waitForFunction(() => window.scrollY > 0);
  await new Promise((r) => setTimeout(r, 300));
  await page.evaluate(() => history.pushState({}, '', '/after-read'));
  await until('the ping to be sent', async () => (await queued(page)).length === 0);
  const sent = page.sent.find((e) => e.name === 'engagement' && e.url.endsWith('/long-read'));
  assert.ok(sent, 'an engagement ping for /long-read was sent');
  assert.ok(sent.props.engaged_ms > 0, `engaged_ms ${sent.props.engaged_ms}`);
  assert.ok(sent.props.scroll_depth > 0 && sent.props.scroll_depth <= 100, `scroll_depth ${sent.props.scroll_depth}`);
  // The collector stored it (it answers 200 only once JetStream has it).
  await until('the engagement ping to be stored', async () => stored.has(sent.id));
  // The query API reports the ping as engagement of its page.
  const s = await beacon.api(`/api/v1/sites/shop/summary?${hours()}&metrics=avg_engaged_time,avg_scroll_depth`);
  assert.ok(s.metrics.avg_engaged_time.value > 0, JSON.stringify(s.metrics));
  assert.ok(s.metrics.avg_scroll_depth.value > 0, JSON.stringify(s.metrics));
  await done(page);
});

test('an engagement ping is not counted as an event', async () => {
  const page = await visit('/ping-only');
  await page.evaluate(() => history.pushState({}, '', '/ping-only/next'));
  const ping = await until('a ping to be sent', async () => page.sent.find((e) => e.name === 'engagement'));
  await until('the ping to be stored', async () => stored.has(ping.id));
  await countedOnce('path', '/ping-only/next', 'pageviews');
  assert.equal(await count('name', 'engagement'), 0);
  await done(page);
});

test('done when: a page with only the script tag is counted on a fresh `beacon up`', async () => {
  const fresh = await Beacon.start({ fresh: true });
  try {
    site.setTag(`<script defer data-site="default" src="${fresh.url}/js/beacon.js"></script>`);
    const context = await browser.newContext({ userAgent: AGENT });
    const page = await context.newPage();
    await page.goto(`${site.origin}/first-visit`);
    const rows = await until('the page view to be counted', async () => {
      const b = await fresh.api(`/api/v1/sites/default/breakdown?dimension=path&metric=pageviews&${hours()}`, fresh.readKey);
      return b.rows.length ? b.rows : null;
    });
    // A row carries its ranking figure as `count`, beside every figure of `metrics`.
    assert.deepEqual(rows.map(({ value, count }) => ({ value, count })), [{ value: '/first-visit', count: 1 }]);
    await context.close();
  } finally {
    site.setTag(`<script defer data-site="shop" data-404 src="${beacon.url}/js/beacon.js"></script>`);
    await fresh.stop();
  }
});
