// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against a real `beacon up` with known events. Numbers on
// the page are checked against the API's own answers to the same question.
// With BEACON_SCREENSHOTS=<folder>, each state is saved there as a PNG.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { Beacon, KEYS, expected, knownEvents, until } from './beacon.js';

const CHROMIUM = process.env.BEACON_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.BEACON_SCREENSHOTS || '';
const WAIT = 15_000;
const LISTS = ['path', 'entry_page', 'referrer_source', 'browser', 'os', 'device', 'country', 'name'];

let beacon;
let browser;
let known;
/** Whether this Beacon takes the `filters` parameter (every figure under any filters), from its OpenAPI document. */
let richApi = false;

before(async () => {
  beacon = await Beacon.start();
  const events = knownEvents();
  known = expected(events);
  await beacon.send(events);
  await until('the known events to be counted', async () => {
    const s = await beacon.api('/api/v1/sites/shop/summary?from=-1h&metrics=events');
    return s.metrics.events.value === known.events;
  });
  const doc = await beacon.api('/api/v1/openapi.json');
  richApi = Object.values(doc.components.parameters || {}).some((p) => p.name === 'filters');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    timeout: 60_000,
  });
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await beacon?.stop();
});

/** A fresh browser tab (new session storage) that fails the test on any page error. */
async function open(options = {}) {
  const context = await browser.newContext({
    viewport: { width: 1200, height: 820 },
    timezoneId: 'Europe/Berlin',
    locale: 'en-GB',
    ...options,
  });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.outside = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(beacon.url) && !r.url().startsWith('data:')) page.outside.push(r.url());
  });
  // The dashboard asks only questions the API answers: any refusal is a bug.
  page.refused = [];
  page.on('response', (r) => {
    if (r.status() >= 400) page.refused.push(`${r.status()} ${r.url()}`);
  });
  await page.goto(`${beacon.url}/`);
  return page;
}

async function close(page, { refusals = false } = {}) {
  assert.deepEqual(page.errors, [], 'errors on the page');
  assert.deepEqual(page.outside, [], 'requests outside Beacon');
  if (!refusals) assert.deepEqual(page.refused, [], 'requests Beacon refused');
  await page.context().close();
}

async function shot(page, name) {
  if (!SHOTS) return;
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** Save one part of the page (`selector`) as a PNG. */
async function shotOf(page, selector, name) {
  if (SHOTS) await page.locator(selector).screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/**
 * Wait until the dashboard shows a complete answer about `site` whose query
 * differs from `other`, holds `has` and lacks `lacks` (each if given).
 */
async function ready(page, { site = 'shop', other = null, has = null, lacks = null } = {}) {
  await page.waitForFunction(
    ([site, other, has, lacks]) => {
      const main = document.getElementById('main');
      const q = main.dataset.query || '';
      return (
        !main.hidden &&
        main.dataset.state === 'ready' &&
        main.dataset.site === site &&
        q !== other &&
        (!has || q.includes(has)) &&
        (!lacks || !q.includes(lacks))
      );
    },
    [site, other, has, lacks],
    { timeout: WAIT },
  );
  return page.$eval('#main', (m) => m.dataset.query);
}

async function signIn(page, key = KEYS.team) {
  await page.fill('#key', key);
  await page.press('#key', 'Enter');
  return ready(page);
}

/** Card values as the page holds them: {metric: {available, value, text}}. */
function cards(page) {
  return page.$$eval('.card', (all) =>
    Object.fromEntries(all.map((c) => [c.dataset.metric, { available: c.dataset.available === 'true', value: c.dataset.value, text: c.textContent }])),
  );
}

/** Each top list's rows, or null where the list is not available. */
function lists(page) {
  return page.$$eval('.list', (all) =>
    Object.fromEntries(
      all.map((l) => [
        l.dataset.dimension,
        l.dataset.available === 'false' ? null : [...l.querySelectorAll('.row')].map((r) => ({ value: r.dataset.value, count: Number(r.dataset.count) })),
      ]),
    ),
  );
}

/**
 * How a "dimension is value" filter shows in the question the page asked
 * (main's data-query): inside `filters=` where the API takes it, else as a
 * shorthand parameter. Without `value`, any such filter on the dimension.
 */
const asked = (dimension, value = '') =>
  richApi ? `${dimension}%3D%3D${encodeURIComponent(value)}` : `${dimension}=${encodeURIComponent(value)}`;

/** The value a card holds for an API figure. */
const asCard = (metric, value) => {
  if (metric === 'revenue') return JSON.stringify(value);
  // Filtered traffic is a count per reason; its card holds the total.
  if (metric === 'filtered') return String(Object.values(value).reduce((a, b) => a + b, 0));
  return value === null ? '' : String(value);
};

async function assertMatchesApi(page, query, filtered) {
  const site = '/api/v1/sites/shop';
  // Every card the page shows (more where the API offers engagement and bot figures).
  const legacy = filtered && !richApi;
  const metrics = legacy ? 'events,pageviews' : await page.$$eval('.card', (all) => all.map((c) => c.dataset.metric).join(','));
  const summary = await beacon.api(`${site}/summary?${query}&metrics=${metrics}`);
  const shown = await cards(page);
  for (const [metric, card] of Object.entries(shown)) {
    const figure = summary.metrics[metric];
    if (!figure) {
      assert.equal(card.available, false, `${metric} is marked unavailable`);
      assert.match(card.text, /not available with a filter/);
      continue;
    }
    assert.equal(card.available, true, metric);
    assert.equal(card.value, asCard(metric, figure.value), `card ${metric}`);
  }
  const rows = await lists(page);
  // Every list the page shows: channels, campaigns, regions and cities too where the API has them.
  const shownLists = Object.keys(rows);
  for (const dimension of LISTS) assert.ok(shownLists.includes(dimension), `the ${dimension} list is shown`);
  for (const dimension of shownLists) {
    if (rows[dimension] === null) {
      assert.ok(legacy, `${dimension} is available without a filter, and with any filter where the API takes them`);
      continue;
    }
    // Visitors first where the API ranks by them; else the rollups' counts.
    const ranking = richApi ? '&metric=users&metrics=users,events,pageviews' : '';
    const answer = await beacon.api(`${site}/breakdown?${query}&dimension=${dimension}&limit=10${ranking}`);
    const expected = answer.rows.map((r) => ({ value: r.value, count: Number(r.users ?? r.count) }));
    assert.deepEqual(rows[dimension], expected, `top list ${dimension}`);
  }
  return summary;
}

test('the cards, top lists and chart equal the API answers, with a site picker and no outside requests', { timeout: 90_000 }, async () => {
  const page = await open();
  await page.waitForSelector('#signin-form');
  await shot(page, 'signin');
  let query = await signIn(page);
  assert.deepEqual(await page.$$eval('#site option', (o) => o.map((x) => x.value)), ['shop', 'wiki']);
  assert.equal(await page.inputValue('#site'), 'shop');
  assert.match(query, /tz=Europe%2FBerlin/, 'the browser zone is sent');

  // Last 7 days: the known events are inside whatever the time of day.
  await page.selectOption('#range', '7d');
  query = await ready(page, { other: query });
  const summary = await assertMatchesApi(page, query, false);
  assert.equal(summary.metrics.pageviews.value, known.pageviews);
  assert.equal(summary.metrics.events.value, known.events);
  assert.ok(Math.abs(summary.metrics.users.value - known.users) <= 1, 'unique users within the sketch error');
  const revenue = Object.fromEntries(Object.entries(known.revenue).map(([c, v]) => [c, String(v)]));
  assert.deepEqual(summary.metrics.revenue.value, revenue);

  // The chart shows the chosen card's metric and the value under the pointer.
  await page.click('.card[data-metric="pageviews"]');
  await page.waitForSelector('.card[data-metric="pageviews"][aria-pressed="true"]');
  const series = await beacon.api(`/api/v1/sites/shop/timeseries?${query}&interval=1d&metrics=pageviews`);
  const box = await page.$eval('#chart', (c) => {
    const r = c.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  });
  await page.mouse.move(box.x + box.width - 16, box.y + box.height / 2);
  await page.waitForSelector('.chart-tip:not([hidden])');
  const index = Number(await page.$eval('.chart-tip', (t) => t.dataset.index));
  assert.equal(index, series.points.length - 1, 'the rightmost point is today');
  assert.equal(await page.textContent('.chart-tip strong'), String(series.points[index].pageviews));
  await close(page);
});

test('a new event reaches the live feed and the counters without a reload', { timeout: 60_000 }, async () => {
  const page = await open();
  const query = await signIn(page);
  // Realtime: the last 30 minutes per minute.
  await page.selectOption('#range', 'realtime');
  await ready(page, { other: query, has: 'from=-30m' });
  await page.waitForSelector('#feed li');
  await page.evaluate(() => {
    window.sameDocument = true;
  });
  const before = await cards(page);
  const active = Number(await page.$eval('#active-users', (e) => e.dataset.value));
  await beacon.send([{ id: 'live-1', name: 'live_check', user_id: 'u-live', props: { path: '/live' } }]);
  await page.waitForSelector('#feed li:first-child .feed-name:text-is("live_check")');
  await page.waitForFunction((n) => Number(document.getElementById('active-users').dataset.value) === n + 1, active);
  await page.waitForFunction(
    (n) => document.querySelector('.card[data-metric="events"]').dataset.value === String(n + 1),
    Number(before.events.value),
  );
  assert.equal(await page.evaluate(() => window.sameDocument), true, 'the page was not reloaded');
  assert.match(await page.textContent('#freshness'), /s behind/);
  await shot(page, 'dashboard');
  await close(page);
});

test('countries are named in the browser language, shaded on the world map, and filter on a click', { timeout: 60_000 }, async () => {
  const page = await open();
  let query = await signIn(page);
  await page.selectOption('#range', '7d');
  query = await ready(page, { other: query });
  const list = '.list[data-dimension="country"]';
  const germany = `${list} .row[data-value="DE"]`;
  await page.waitForSelector(germany);
  // en-GB, the browser's locale here.
  assert.equal(await page.textContent(`${germany} .row-label`), 'Germany');
  assert.equal(await page.textContent(`${list} .row[data-value="US"] .row-label`), 'United States');
  // Every counted country is shaded, the top one darkest, and named with its count.
  const answer = await beacon.api(`/api/v1/sites/shop/breakdown?${query}&dimension=country&limit=250${richApi ? '&metric=users' : ''}`);
  await page.waitForSelector(`${list} .map path#de[data-count]`);
  const shaded = await page.$$eval(`${list} .map path[data-count]`, (all) =>
    Object.fromEntries(all.map((p) => [p.id.toUpperCase(), { count: Number(p.dataset.count), level: p.dataset.level, title: p.querySelector('title').textContent }])),
  );
  // Events without a country (`(none)`) have no place on the map.
  const countries = answer.rows.filter((r) => /^[A-Z]{2}$/.test(r.value));
  assert.deepEqual(Object.keys(shaded).sort(), countries.map((r) => r.value).sort());
  const top = countries[0];
  assert.equal(shaded[top.value].level, '5');
  assert.equal(shaded[top.value].count, top.count);
  // Visitors where the API ranks by them.
  assert.equal(shaded.DE.title, `Germany: ${shaded.DE.count} ${richApi ? 'visitors' : 'events'}`);
  await page.evaluate(() => document.querySelector('.list[data-dimension="country"]').scrollIntoView());
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'countries.png'), fullPage: false });
  // A click on a country filters by its code; the chip names it.
  await page.click(`${list} .map path#de`);
  await ready(page, { has: asked('country', 'DE') });
  assert.match(await page.textContent('.chip[data-filter="country"]'), /Country is Germany/);
  await close(page);
});

test('clicking a top-list row filters the whole dashboard; its chip removes the filter', { timeout: 60_000 }, async () => {
  const page = await open();
  let query = await signIn(page);
  await page.selectOption('#range', '7d');
  query = await ready(page, { other: query });
  const unfiltered = await cards(page);

  await page.click('.list[data-dimension="path"] .row[data-value="/pricing"]');
  query = await ready(page, { has: asked('path', '/pricing') });
  assert.match(await page.textContent('.chip[data-filter="path"]'), /Page is \/pricing/);
  const summary = await assertMatchesApi(page, query, true);
  assert.equal(summary.metrics.pageviews.value, known.pageviewsOn('/pricing'));
  const filtered = await cards(page);
  assert.notEqual(filtered.pageviews.value, unfiltered.pageviews.value, 'the numbers changed');
  // Where the API takes `filters`, every list keeps its rows under a filter.
  assert.equal(await page.getAttribute('.list[data-dimension="browser"]', 'data-available'), String(richApi));
  // The feed keeps only the events that pass the filter.
  const pages = await page.$$eval('#feed .feed-where', (all) => all.map((e) => e.textContent));
  assert.ok(pages.length > 0 && pages.every((p) => p.startsWith('/pricing')), pages.join(', '));
  await shot(page, 'filtered');

  // A second filter on the event name, then both removed.
  await page.click('.list[data-dimension="name"] .row[data-value="signup"]');
  query = await ready(page, { has: asked('name', 'signup') });
  await assertMatchesApi(page, query, true);
  assert.equal(await page.locator('.chip').count(), 2);
  await page.click('.chip[data-filter="name"] .chip-remove');
  query = await ready(page, { lacks: asked('name') });
  await page.click('.chip[data-filter="path"] .chip-remove');
  query = await ready(page, { lacks: asked('path') });
  assert.equal(await page.locator('.chip').count(), 0);
  assert.deepEqual(await cards(page), unfiltered);
  await assertMatchesApi(page, query, false);
  await close(page);
});

test('realtime with a filter, a custom range and UTC all ask questions the API answers', { timeout: 60_000 }, async () => {
  const page = await open();
  let query = await signIn(page);
  // Realtime filtered by a page: the last 30 minutes where the store answers
  // filters; else whole hours from the rollups, said in a note.
  await page.selectOption('#range', 'realtime');
  query = await ready(page, { other: query, has: 'from=-30m' });
  await page.click('.list[data-dimension="path"] .row[data-value="/docs"]');
  query = await ready(page, { has: asked('path', '/docs') });
  if (richApi) {
    assert.match(query, /from=-30m/);
    assert.equal(await page.isHidden('#note'), true);
  } else {
    assert.match(query, /from=\d{4}-\d\d-\d\dT\d\d%3A00%3A00Z/, 'a whole hour');
    assert.match(await page.textContent('#note'), /whole hour/);
  }
  await assertMatchesApi(page, query, true);
  await page.click('.chip[data-filter="path"] .chip-remove');
  query = await ready(page, { lacks: asked('path') });
  // A custom range of two days, then in UTC.
  await page.selectOption('#range', 'custom');
  await page.waitForSelector('#custom:not([hidden])');
  const today = await page.inputValue('#custom-to');
  const yesterday = new Date(Date.parse(`${today}T00:00:00Z`) - 86_400_000).toISOString().slice(0, 10);
  await page.fill('#custom-from', yesterday);
  await page.click('#custom button[type="submit"]');
  query = await ready(page, { has: `from=${yesterday}&to=${today}` });
  await assertMatchesApi(page, query, false);
  await page.selectOption('#tz', 'UTC');
  query = await ready(page, { has: 'tz=UTC' });
  await assertMatchesApi(page, query, false);
  await close(page);
});

test('a wrong key or a write key shows the error state', { timeout: 30_000 }, async () => {
  const page = await open();
  await page.fill('#key', 'rk_not_a_key');
  await page.press('#key', 'Enter');
  await page.waitForSelector('#signin-error:not([hidden])');
  assert.match(await page.textContent('#signin-error'), /refused: unknown read key/);
  assert.equal(await page.isHidden('#main'), true);
  await shot(page, 'wrong-key');
  await page.fill('#key', KEYS.shopWrite);
  await page.press('#key', 'Enter');
  await page.waitForSelector('#signin-error:text("write key")');
  await close(page, { refusals: true });
});

test('a site without events shows the empty state with the curl line', { timeout: 30_000 }, async () => {
  const page = await open();
  await signIn(page);
  await page.selectOption('#site', 'wiki');
  await ready(page, { site: 'wiki' });
  await page.waitForSelector('#empty:not([hidden])');
  const curl = await page.textContent('#curl');
  assert.ok(curl.includes(`curl -X POST ${beacon.url}/api/v1/events`), curl);
  assert.ok(curl.includes('Authorization: Bearer <write key>'), curl);
  assert.equal(await page.isHidden('#lists'), true);
  await shot(page, 'empty');
  await close(page);
});

test('an unreachable server shows the error state, and the page recovers', { timeout: 60_000 }, async () => {
  const page = await open();
  const query = await signIn(page);
  await page.route('**/api/v1/**', (route) => route.abort('connectionrefused'));
  await page.selectOption('#range', 'yesterday');
  await page.waitForSelector('#banner[data-kind="unreachable"]:not([hidden])');
  assert.match(await page.textContent('#banner'), /Cannot reach Beacon/);
  await shot(page, 'unreachable');
  await page.unroute('**/api/v1/**');
  await page.click('#banner-retry');
  await ready(page, { other: query });
  assert.equal(await page.isHidden('#banner'), true);
  await close(page);
});

test('the freshness indicator warns when the numbers fall behind', { timeout: 30_000 }, async () => {
  const page = await open();
  await page.route('**/live/stream', (route) =>
    route.fulfill({
      status: 200,
      contentType: 'text/event-stream',
      body: 'event: live\ndata: {"site":"shop","active_users":1,"events_per_second":0,"events_last_minute":0,"events_last_5_minutes":0,"last_seq":1,"behind_ms":12400}\n\n',
    }),
  );
  await page.evaluate(() => {
    window.freshness = [];
    new MutationObserver(() => {
      const pill = document.getElementById('freshness');
      window.freshness.push(`${pill.dataset.state}: ${pill.textContent}`);
    }).observe(document.getElementById('freshness'), { attributes: true, childList: true });
  });
  await signIn(page);
  await page.waitForFunction(() => window.freshness.some((s) => s.startsWith('warn')));
  const seen = await page.evaluate(() => window.freshness);
  assert.ok(seen.includes('warn: Numbers 12 s behind'), seen.join(' | '));
  await close(page);
});

test('the keyboard reaches and works the sign-in, the chart, the top lists and the chips', { timeout: 60_000 }, async () => {
  const page = await open();
  await page.waitForFunction(() => document.activeElement?.id === 'key');
  await page.keyboard.type(KEYS.team);
  await page.keyboard.press('Enter');
  await ready(page);
  const focused = () => page.evaluate(() => {
    const e = document.activeElement;
    return e?.id || e?.dataset.value || e?.className || '';
  });
  // Tab to the chart and read its points with the arrow keys.
  for (let i = 0; i < 30 && (await focused()) !== 'chart'; i++) await page.keyboard.press('Tab');
  assert.equal(await focused(), 'chart');
  await page.keyboard.press('ArrowLeft');
  await page.waitForSelector('.chart-tip:not([hidden])');
  // On to the first page in the top list, and filter by it.
  for (let i = 0; i < 30 && !(await page.evaluate(() => document.activeElement?.closest('.list[data-dimension="path"]'))); i++) {
    await page.keyboard.press('Tab');
  }
  const value = await focused();
  assert.ok(value.startsWith('/'), `a page row has the focus, not ${value}`);
  // A live refresh that redraws the list leaves the focus where it was.
  const events = await page.$eval('.card[data-metric="events"]', (c) => Number(c.dataset.value));
  await beacon.send([{ id: 'keyboard-1', name: 'pageview', user_id: 'u-keyboard', props: { path: value } }]);
  await page.waitForFunction((n) => document.querySelector('.card[data-metric="events"]').dataset.value === String(n + 1), events);
  assert.equal(await focused(), value, 'the focus stayed on the row');
  await page.keyboard.press('Enter');
  await ready(page, { has: asked('path', value) });
  // The focus lands on the new chip's remove button; Enter removes it.
  await page.waitForFunction(() => document.activeElement?.classList.contains('chip-remove'));
  await page.keyboard.press('Enter');
  await ready(page, { lacks: asked('path') });
  await close(page);
});

test('on a phone-width screen nothing overflows and a row can be tapped', { timeout: 60_000 }, async () => {
  const page = await open({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1 });
  await signIn(page);
  await page.waitForSelector('#feed li');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  const outside = await page.$$eval('.card, .list, .panel, .bar select', (all) =>
    all.filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5).map((e) => e.className || e.id),
  );
  assert.deepEqual(outside, []);
  await shot(page, 'phone');
  await page.tap('.list[data-dimension="browser"] .row[data-value="Firefox"]');
  await ready(page, { has: asked('browser', 'Firefox') });
  await page.waitForSelector('.chip[data-filter="browser"]');
  await close(page);
});

// ---- Issue 16: filters that keep every figure, the filter editor, comparison,
// goals, properties, funnels, retention and the revenue card's currencies.

/** Open the dashboard at `hash` after signing in; the question it asked. */
async function openAt(hash, options = {}) {
  const page = await open(options);
  const first = await signIn(page);
  await page.evaluate((h) => {
    location.hash = h;
  }, hash);
  const query = await ready(page, { other: first });
  return { page, query };
}

/** Wait for a panel (goals, properties, funnel, retention) to show an answer; the question it asked. */
async function panelReady(page, id) {
  await page.waitForSelector(`#${id}[data-state="ready"]`);
  return page.$eval(`#${id}`, (p) => p.dataset.query);
}

test('under two filters every card and list keeps its numbers, equal to the API', { timeout: 90_000 }, async () => {
  assert.ok(richApi, 'this Beacon takes the filters parameter');
  const filters = 'path==/pricing|/docs;browser!=Firefox';
  const { page, query } = await openAt(`site=shop&range=7d&filters=${encodeURIComponent(filters)}`);
  assert.ok(query.includes(new URLSearchParams({ filters }).toString()), query);
  const summary = await assertMatchesApi(page, query, true);
  const shown = await cards(page);
  for (const metric of ['users', 'sessions', 'bounce_rate', 'avg_session_duration', 'revenue']) {
    assert.equal(shown[metric].available, true, `${metric} under two filters`);
    assert.doesNotMatch(shown[metric].text, /not available/);
    assert.notEqual(shown[metric].value, '', `${metric} shows a number`);
  }
  // The truth from the known events: page views on either page by a browser other than Firefox.
  assert.ok(summary.metrics.pageviews.value > 0 && summary.metrics.pageviews.value < known.pageviews);
  assert.equal(await page.locator('.chip').count(), 2);
  assert.match(await page.textContent('.chip[data-filter="path"]'), /Page is \/pricing or \/docs/);
  assert.match(await page.textContent('.chip[data-filter="browser"]'), /Browser is not Firefox/);
  assert.equal(await page.locator('.list[data-available="false"]').count(), 0, 'no list is unavailable');
  await close(page);
});

test('the filter editor adds several kinds of filter, shown as chips, and they round-trip through the address', { timeout: 90_000 }, async () => {
  const { page } = await openAt('site=shop&range=7d');
  const add = async (dimension, op, values, prop = '') => {
    await page.click('#filter-add');
    await page.selectOption('#filter-dimension', dimension);
    if (prop) await page.fill('#filter-prop', prop);
    await page.selectOption('#filter-op', op);
    await page.fill('#filter-values', values.join('\n'));
    await page.click('#filter-apply');
  };
  await add('path', '*=', ['pric', 'docs']);
  await ready(page, { has: 'filters=path' });
  await add('country', '!=', ['JP']);
  let query = await ready(page, { has: 'country%21%3DJP' });
  const expected = 'path*=pric|docs;country!=JP';
  const hash = () => page.evaluate(() => new URLSearchParams(location.hash.slice(1)).get('filters'));
  assert.equal(await hash(), expected);
  assert.ok(query.includes(new URLSearchParams({ filters: expected }).toString()), query);
  if (SHOTS) {
    await page.click('#filter-add');
    await page.selectOption('#filter-dimension', 'props.');
    await page.selectOption('#filter-op', '~=');
    await page.fill('#filter-prop', 'plan');
    await page.fill('#filter-values', '^pro');
    await shot(page, 'filter-editor');
    await page.click('#filter-cancel');
  }
  const chips = () => page.$$eval('.chip', (all) => all.map((c) => [c.dataset.text, c.textContent.replace('×', '').trim()]));
  assert.deepEqual(await chips(), [
    ['path*=pric|docs', 'Page contains pric or docs'],
    ['country!=JP', 'Country is not Japan'],
  ]);
  // A reload reads the same filters from the address, and asks the same question.
  await page.reload();
  const again = await ready(page);
  assert.equal(again, query);
  assert.equal(await hash(), expected);
  assert.deepEqual((await chips()).map(([text]) => text), ['path*=pric|docs', 'country!=JP']);
  await assertMatchesApi(page, again, true);
  // The back button steps back to one filter; a chip's × removes it.
  await page.goBack();
  query = await ready(page, { lacks: 'country' });
  assert.equal(await hash(), 'path*=pric|docs');
  await page.click('.chip[data-filter="path"] .chip-remove');
  await ready(page, { lacks: 'filters=' });
  assert.equal(await page.locator('.chip').count(), 0);
  await close(page);
});

test('the comparison choice lives in the address and reaches the summary', { timeout: 60_000 }, async () => {
  const { page } = await openAt('site=shop&range=7d');
  assert.equal(await page.isVisible('#compare'), true, 'the API takes compare');
  const asks = [];
  page.on('request', (r) => {
    if (r.url().includes('/summary?')) asks.push(new URL(r.url()).searchParams.get('compare'));
  });
  await page.selectOption('#compare', 'previous_year');
  await page.waitForFunction(() => location.hash.includes('compare=previous_year'));
  await page.waitForFunction(() => /last year/.test(document.getElementById('period').textContent));
  assert.ok(asks.includes('previous_year'), asks.join(','));
  // The cards hold the comparison period's figures as the API answers them.
  const query = await page.$eval('#main', (m) => m.dataset.query);
  const answer = await beacon.api(`/api/v1/sites/shop/summary?${query}&metrics=users,pageviews&compare=previous_year`);
  for (const metric of ['users', 'pageviews']) {
    const card = await page.$eval(`.card[data-metric="${metric}"]`, (c) => ({ previous: c.dataset.previous, title: c.querySelector('.change').title }));
    assert.equal(card.previous, String(answer.comparison.metrics[metric]), metric);
    assert.match(card.title, /Then: /);
  }
  await page.reload();
  await ready(page);
  assert.equal(await page.inputValue('#compare'), 'previous_year');
  await close(page);
});

test('the goals and properties panels show the API numbers', { timeout: 60_000 }, async () => {
  const { page, query } = await openAt('site=shop&range=7d');
  const goalsQuery = await panelReady(page, 'goals');
  const report = await beacon.api(`/api/v1/sites/shop/goals/report?${goalsQuery}`);
  const rows = await page.$$eval('#goals tbody tr', (all) =>
    all.map((r) => ({ name: r.dataset.goal, users: Number(r.dataset.users), conversions: Number(r.dataset.conversions), rate: Number(r.dataset.rate) })),
  );
  assert.deepEqual(
    rows,
    report.goals.map((g) => ({ name: g.name, users: g.converting_users, conversions: g.conversions, rate: g.conversion_rate })),
  );
  assert.deepEqual(rows.map((r) => r.name), ['Signup', 'Pricing', 'Purchase'], 'the goals of the config');
  // Independently of Beacon: every known visitor who signed up converted on Signup.
  const signups = new Set(knownEvents(0).filter((e) => e.name === 'signup').map((e) => e.user_id)).size;
  assert.equal(rows[0].users, signups);
  // The panel counts the cards' range: the summary's exact instants.
  const summary = await beacon.api(`/api/v1/sites/shop/summary?${query}&metrics=users`);
  const asked = new URLSearchParams(goalsQuery);
  assert.equal(asked.get('from'), (summary.range || summary).from);
  assert.equal(asked.get('to'), (summary.range || summary).to);
  await panelReady(page, 'properties');
  await shotOf(page, '.panels', 'goals');
  // A goal's name filters by it: then the visitors are the goal's converting visitors.
  await page.click('#goals tr[data-goal="Signup"] .link');
  const filtered = await ready(page, { has: 'goal%3D%3DSignup' });
  assert.match(await page.textContent('.chip[data-filter="goal"]'), /Goal is Signup/);
  const users = await page.$eval('.card[data-metric="users"]', (c) => Number(c.dataset.value));
  assert.equal(users, rows[0].users);
  await assertMatchesApi(page, filtered, true);
  await close(page);
});

test('a funnel renders the numbers the API returns for the same question', { timeout: 60_000 }, async () => {
  const steps = 'path:/pricing;event:signup;event:purchase';
  const { page } = await openAt(`site=shop&range=7d&tab=funnel&steps=${encodeURIComponent(steps)}&window=1d`);
  const asked = await panelReady(page, 'funnel');
  const answer = await beacon.api(`/api/v1/sites/shop/funnel?${asked}`);
  const shown = await page.$$eval('#funnel .funnel-step', (all) =>
    all.map((s) => ({
      step: s.dataset.step,
      users: Number(s.dataset.users),
      conversion_from_previous: Number(s.dataset.fromPrevious),
      conversion_from_start: Number(s.dataset.fromStart),
      median: s.dataset.median,
    })),
  );
  assert.equal(shown.length, 3);
  assert.deepEqual(
    shown,
    answer.steps.map((s) => ({
      step: s.step,
      users: s.users,
      conversion_from_previous: Number(s.conversion_from_previous),
      conversion_from_start: Number(s.conversion_from_start),
      median: s.median_seconds_from_previous === null ? '' : String(s.median_seconds_from_previous),
    })),
  );
  // Independently of Beacon: only those who signed up can reach the second step.
  assert.ok(shown[1].users <= new Set(knownEvents(0).filter((e) => e.name === 'signup').map((e) => e.user_id)).size);
  assert.ok(shown[0].users >= shown[1].users && shown[1].users >= shown[2].users);
  // The editor holds the steps; adding one and showing the funnel asks again.
  assert.deepEqual(await page.$$eval('#funnel-steps .step-value', (all) => all.map((i) => i.value)), ['/pricing', 'signup', 'purchase']);
  await shotOf(page, '#funnel', 'funnel');
  await page.click('#funnel-add-step');
  await page.fill('#funnel-steps li:last-child .step-value', 'pageview');
  await page.selectOption('#funnel-window', '7d');
  await page.click('#funnel-show');
  await page.waitForFunction(() => /window=7d/.test(document.getElementById('funnel').dataset.query) && document.getElementById('funnel').dataset.state === 'ready');
  assert.equal(await page.locator('#funnel .funnel-step').count(), 4);
  await close(page);
});

test('a retention table renders the numbers the API returns for the same question', { timeout: 60_000 }, async () => {
  const { page } = await openAt('site=shop&range=7d&tab=retention&period=day');
  const asked = await panelReady(page, 'retention');
  const answer = await beacon.api(`/api/v1/sites/shop/retention?${asked}`);
  const shown = await page.$$eval('#retention tbody tr', (all) =>
    all.map((r) => ({
      cohort: r.dataset.cohort,
      users: Number(r.dataset.users),
      returned: [...r.querySelectorAll('.retention-cell[data-returned]')].map((c) => Number(c.dataset.returned)),
      shares: [...r.querySelectorAll('.retention-cell[data-returned]')].map((c) => c.textContent),
    })),
  );
  assert.deepEqual(
    shown.map(({ shares, ...rest }) => rest),
    answer.cohorts.map((c) => ({ cohort: c.cohort, users: c.users, returned: c.returned })),
  );
  // The known visitors were all first seen today: one cohort with all of them, and period 0 is the cohort itself.
  const today = shown.filter((row) => row.users > 0);
  assert.equal(today.length, 1);
  assert.equal(today[0].users, answer.cohorts.find((c) => c.users > 0).users);
  assert.equal(today[0].shares[0], '100.0%');
  await shotOf(page, '#retention', 'retention');
  await close(page);
});

test('the revenue card shows every currency, in its own, none cut short', { timeout: 60_000 }, async () => {
  const before = await beacon.api('/api/v1/sites/shop/summary?from=-1h&metrics=revenue');
  await beacon.send([
    { id: 'yen-1', name: 'purchase', user_id: 'u-yen', props: { path: '/checkout' }, revenue: { amount: '226200', currency: 'JPY' } },
    { id: 'euro-1', name: 'purchase', user_id: 'u-euro', props: { path: '/checkout' }, revenue: { amount: '29.00', currency: 'EUR' } },
    { id: 'dollar-1', name: 'purchase', user_id: 'u-dollar', props: { path: '/checkout' }, revenue: { amount: '8493.10', currency: 'USD' } },
  ]);
  await until('the new purchases to be counted', async () => {
    const s = await beacon.api('/api/v1/sites/shop/summary?from=-1h&metrics=revenue');
    return s.metrics.revenue.value.JPY === '226200' && Number(s.metrics.revenue.value.EUR || 0) === Number(before.metrics.revenue.value.EUR || 0) + 29;
  });
  const { page } = await openAt('site=shop&range=7d');
  await page.waitForFunction(() => (document.querySelector('.card[data-metric="revenue"]').dataset.currencies || '').includes('JPY'));
  const card = await page.$eval('.card[data-metric="revenue"]', (c) => ({
    currencies: c.dataset.currencies.split(','),
    main: c.querySelector('.value').textContent,
    others: [...c.querySelectorAll('.currencies li')].map((li) => [li.dataset.currency, li.textContent]),
    cut: [...c.querySelectorAll('.value, .currencies li')].some((e) => e.scrollWidth > e.clientWidth + 1),
  }));
  // Dollars first: ¥226,200 is less money than the dollars, though a larger number (the case).
  assert.deepEqual(card.currencies, ['USD', 'JPY', 'EUR']);
  const usd = (Number(before.metrics.revenue.value.USD || 0) + 8493.1).toLocaleString('en-GB', { minimumFractionDigits: 2 });
  assert.equal(card.main, `US$${usd}`);
  assert.deepEqual(card.others.map(([c]) => c), ['JPY', 'EUR']);
  assert.match(card.others[0][1], /226,200/);
  assert.match(card.others[1][1], /€/);
  assert.equal(card.cut, false, 'no amount is cut short');
  await shotOf(page, '#cards', 'revenue');
  await close(page);
});
