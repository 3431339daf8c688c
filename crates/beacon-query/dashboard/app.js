// The dashboard page: sign-in with a read key, then the headline cards, the
// trend chart, the top lists and the live panel of one site. What is looked
// at (site, range, zone, chart metric, filters) lives in the address's
// #fragment, so it survives a reload and the back button steps through
// filters; the key lives in sessionStorage only and travels as a header.
// The live stream's `rollups` notices trigger a refetch, so the numbers move
// without a reload.

import { ApiError, getJson, readStream } from './api.js';
import { drawChart } from './chart.js';
import * as format from './format.js';
import { drawMap } from './map.js';
import { RANGES, addDays, dateIn, knownZone, period } from './range.js';

const KEY_STORE = 'beacon.readKey';
const BROWSER_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
/** What the rollups answer under a filter. */
const FILTERABLE = ['events', 'pageviews'];
/** The freshness indicator warns once the numbers are this far behind. */
const WARN_MS = 5000;
/** Live refetches are at least this far apart. */
const REFRESH_GAP_MS = 1000;
/** Ranges that end "now" move on even when nothing arrives. */
const REFRESH_EVERY_MS = 60_000;
const FEED_SHOWN = 25;
const FEED_KEPT = 50;

/** Every card the dashboard knows; those the API does not offer (openapi.json) are left out. */
const ALL_CARDS = [
  { metric: 'users', label: 'Unique users', show: format.count, integer: true },
  { metric: 'pageviews', label: 'Page views', show: format.count, integer: true },
  { metric: 'events', label: 'Events', show: format.count, integer: true },
  { metric: 'sessions', label: 'Sessions', show: format.count, integer: true },
  { metric: 'bounce_rate', label: 'Bounce rate', show: format.percent, isRate: true, lowerIsBetter: true },
  { metric: 'avg_session_duration', label: 'Avg. session', show: format.duration },
  { metric: 'revenue', label: 'Revenue' },
  // Engagement pings: visible time per page view, and how far pages were scrolled.
  { metric: 'avg_engaged_time', label: 'Time on page', show: format.duration },
  { metric: 'avg_scroll_depth', label: 'Scroll depth', show: format.depth },
  // Bots, counted by reason and in no other figure: a count per reason.
  { metric: 'filtered', label: 'Filtered traffic', show: format.count, integer: true, byReason: true, lowerIsBetter: true },
];
let CARDS = ALL_CARDS;

/** Every top list the dashboard knows; `filter` is the parameter a click on a row sets. */
const ALL_LISTS = [
  { title: 'Pages', dimension: 'path', filter: 'path', unit: 'events' },
  { title: 'Entry pages', dimension: 'entry_page', filter: 'path', unit: 'sessions' },
  { title: 'Channels', dimension: 'channel', filter: 'channel', unit: 'events' },
  { title: 'Referrer sources', dimension: 'referrer_source', filter: 'referrer_source', unit: 'events' },
  { title: 'Campaigns', dimension: 'utm_campaign', filter: 'utm_campaign', unit: 'events' },
  { title: 'Campaign sources', dimension: 'utm_source', filter: 'utm_source', unit: 'events' },
  { title: 'Campaign media', dimension: 'utm_medium', filter: 'utm_medium', unit: 'events' },
  { title: 'Browsers', dimension: 'browser', filter: 'browser', unit: 'events' },
  { title: 'Operating systems', dimension: 'os', filter: 'os', unit: 'events' },
  { title: 'Devices', dimension: 'device', filter: 'device', unit: 'events' },
  { title: 'Countries', dimension: 'country', filter: 'country', unit: 'events', map: true, label: format.country },
  { title: 'Regions', dimension: 'region', filter: 'region', unit: 'events' },
  { title: 'Cities', dimension: 'city', filter: 'city', unit: 'events' },
  { title: 'Events', dimension: 'name', filter: 'name', unit: 'events' },
];
let LISTS = ALL_LISTS;
/** Rows asked for a list with a map: enough to shade every country that has any. */
const MAP_ROWS = 250;

/** Filter parameters, as a chip names them. */
const ALL_FILTERS = {
  name: 'Event',
  path: 'Page',
  channel: 'Channel',
  referrer_source: 'Source',
  utm_campaign: 'Campaign',
  utm_source: 'Campaign source',
  utm_medium: 'Campaign medium',
  utm_term: 'Campaign term',
  utm_content: 'Campaign content',
  browser: 'Browser',
  os: 'OS',
  device: 'Device',
  country: 'Country',
  region: 'Region',
  city: 'City',
};
let FILTERS = ALL_FILTERS;
let DIMENSION_FILTERS = Object.keys(FILTERS).filter((f) => f !== 'name');

/**
 * Keep the cards, lists and filters the API offers, as its OpenAPI document
 * lists its metrics and dimensions: a newer dashboard asks an older API
 * nothing it would refuse. Without the document, the original seven cards
 * and nine dimensions.
 */
async function learnApi(key) {
  let metrics = ['events', 'users', 'pageviews', 'sessions', 'bounce_rate', 'avg_session_duration', 'revenue'];
  let dimensions = ['name', 'path', 'referrer_source', 'browser', 'os', 'device', 'country', 'entry_page', 'exit_page'];
  try {
    const doc = await getJson('/api/v1/openapi.json', key);
    metrics = doc.components.schemas.Metric.enum;
    dimensions = doc.components.schemas.Dimension.enum;
  } catch {
    // The built-in lists.
  }
  CARDS = ALL_CARDS.filter((c) => metrics.includes(c.metric));
  LISTS = ALL_LISTS.filter((l) => dimensions.includes(l.dimension));
  FILTERS = Object.fromEntries(Object.entries(ALL_FILTERS).filter(([f]) => dimensions.includes(f)));
  DIMENSION_FILTERS = Object.keys(FILTERS).filter((f) => f !== 'name');
}

/** A card's figure as one number (the total of a count per reason). */
const figureValue = (card, value) => (card.byReason ? format.total(value) : value);

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text, never HTML). */
function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  n.append(...children.filter((c) => c !== null && c !== undefined));
  return n;
}

const state = {
  key: null,
  sites: [],
  /** What is looked at: {site, range, from, to, tz, metric, filters}. */
  view: null,
  /** The latest complete answer: {q, filtered, summary, series, ranked}. */
  answer: null,
  gen: 0,
  busy: 0,
  dirty: false,
  pending: null,
  lastStart: 0,
  retry: { timer: null, delay: 0 },
  stream: null,
  lastEventId: '',
  feed: [],
  shownSeq: 0,
  statusAsked: 0,
};

/**
 * Whether the API can rank `list` under `filters`: the rollups count events
 * per name, per single dimension value and per name × dimension value, and
 * sessions (entry pages) only without a filter (docs/QUERY.md).
 */
function rankable(list, filters) {
  const dim = DIMENSION_FILTERS.find((f) => f in filters);
  if (!dim && !('name' in filters)) return true;
  if (list.dimension === 'entry_page') return false;
  if (list.dimension === 'name') return true;
  if (dim) return !('name' in filters) && dim === list.dimension;
  return true;
}

// ---- The view in the address ------------------------------------------------

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const pick = (value, ok, fallback) => (value !== null && ok(value) ? value : fallback);
  const filters = {};
  if (h.get('name')) filters.name = h.get('name');
  const dim = DIMENSION_FILTERS.find((f) => h.get(f));
  if (dim) filters[dim] = h.get(dim);
  return {
    site: pick(h.get('site'), (s) => state.sites.includes(s), state.sites[0]),
    range: pick(h.get('range'), (r) => RANGES.some((x) => x.id === r), 'today'),
    from: h.get('from') || '',
    to: h.get('to') || '',
    tz: pick(h.get('tz'), knownZone, BROWSER_TZ),
    metric: pick(h.get('metric'), (m) => CARDS.some((c) => c.metric === m), 'users'),
    filters,
  };
}

function writeHash(view) {
  const h = new URLSearchParams();
  h.set('site', view.site);
  h.set('range', view.range);
  if (view.range === 'custom') {
    h.set('from', view.from);
    h.set('to', view.to);
  }
  if (view.tz !== BROWSER_TZ) h.set('tz', view.tz);
  if (view.metric !== 'users') h.set('metric', view.metric);
  for (const [k, v] of Object.entries(view.filters)) h.set(k, v);
  const next = `#${h}`;
  if (location.hash === next) apply();
  else location.hash = next;
}

/** Look at something else: the change goes through the address. */
function go(patch) {
  writeHash({ ...state.view, ...patch });
}

function sameQuestion(a, b) {
  const { metric: _a, ...restA } = a;
  const { metric: _b, ...restB } = b;
  return JSON.stringify(restA) === JSON.stringify(restB);
}

/** Take the view from the address and show it. */
function apply() {
  if (!state.key) return;
  const before = state.view;
  const view = readHash();
  state.view = view;
  syncControls();
  renderChips();
  if (!before || before.site !== view.site) startStream();
  if (before && sameQuestion(before, view) && state.answer) {
    renderCards();
    renderChart();
    return;
  }
  renderFeed();
  refresh(true);
}

function addFilter(param, value) {
  const filters = { ...state.view.filters };
  if (param !== 'name') for (const d of DIMENSION_FILTERS) delete filters[d];
  filters[param] = value;
  state.focusChip = param;
  go({ filters });
}

function removeFilter(param) {
  const filters = { ...state.view.filters };
  delete filters[param];
  state.focusChip = Object.keys(filters)[0] || '';
  go({ filters });
}

// ---- Fetching the numbers ------------------------------------------------------

/** Ask for everything the view shows; `navigated` shows the loading state. */
async function refresh(navigated = false) {
  clearTimeout(state.pending);
  state.pending = null;
  clearTimeout(state.retry.timer);
  const gen = ++state.gen;
  const view = state.view;
  const main = $('main');
  const filtered = Object.keys(view.filters).length > 0;
  let q;
  try {
    q = period(view.range, { now: Date.now(), tz: view.tz, filtered, custom: { from: view.from, to: view.to } });
  } catch (e) {
    showNote(e.message);
    main.dataset.state = 'error';
    return;
  }
  showNote(q.note);
  if (navigated) main.dataset.state = 'loading';
  const base = { from: q.from, to: q.to, tz: q.tz, ...view.filters };
  const metrics = (filtered ? FILTERABLE : CARDS.map((c) => c.metric)).join(',');
  const lists = LISTS.filter((l) => rankable(l, view.filters));
  const site = `/api/v1/sites/${encodeURIComponent(view.site)}`;
  const ask = (op, extra) => getJson(`${site}/${op}`, state.key, { ...base, ...extra });
  state.busy++;
  state.lastStart = Date.now();
  try {
    const [summary, series, ...ranked] = await Promise.all([
      ask('summary', { metrics }),
      ask('timeseries', { interval: q.interval, metrics }),
      ...lists.map((l) => ask('breakdown', { dimension: l.dimension, limit: l.map && !filtered ? MAP_ROWS : 10 })),
    ]);
    if (gen !== state.gen) return;
    state.answer = { q, filtered, summary, series, ranked: new Map(lists.map((l, i) => [l.dimension, ranked[i]])) };
    state.retry.delay = 0;
    hideBanner();
    main.dataset.site = view.site;
    main.dataset.query = new URLSearchParams(base).toString();
    render();
    main.dataset.state = 'ready';
  } catch (e) {
    if (gen === state.gen) failed(e, () => refresh(navigated));
  } finally {
    state.busy--;
    if (state.dirty && state.busy === 0) {
      state.dirty = false;
      scheduleRefresh();
    }
  }
}

/** Refetch soon: at most once a second, and never two at once. */
function scheduleRefresh() {
  if (!state.view || state.pending || state.retry.timer) return;
  if (state.busy > 0) {
    state.dirty = true;
    return;
  }
  const wait = Math.max(0, state.lastStart + REFRESH_GAP_MS - Date.now());
  state.pending = setTimeout(() => {
    state.pending = null;
    refresh();
  }, wait);
}

function failed(e, retry) {
  if (e.name === 'AbortError') return;
  if (e.status === 401) {
    signOut(`The key was refused: ${e.message}.`);
    return;
  }
  $('main').dataset.state = 'error';
  if (e.status === 0) {
    retryLater('unreachable', `Cannot reach Beacon at ${location.host}. Is it running?`, retry);
  } else if (e.status === 503) {
    retryLater('starting', `Beacon is not ready: ${e.message}.`, retry);
  } else {
    showBanner('error', `Beacon refused the question: ${e.message}.`);
  }
}

/** Say what failed and try again after a growing pause (or at once on request). */
function retryLater(kind, text, retry) {
  const r = state.retry;
  clearTimeout(r.timer);
  r.delay = Math.min(r.delay ? r.delay * 2 : 2000, 15_000);
  const due = Date.now() + r.delay;
  const tick = () => {
    const left = Math.ceil((due - Date.now()) / 1000);
    if (left <= 0) {
      r.timer = null;
      retry();
      return;
    }
    showBanner(kind, `${text} Trying again in ${left} s.`, () => {
      clearTimeout(r.timer);
      r.timer = null;
      retry();
    });
    r.timer = setTimeout(tick, 1000);
  };
  tick();
}

function showBanner(kind, text, retry = null) {
  const banner = $('banner');
  banner.dataset.kind = kind;
  $('banner-text').textContent = text;
  const button = $('banner-retry');
  button.hidden = !retry;
  button.onclick = retry;
  banner.hidden = false;
}

function hideBanner() {
  $('banner').hidden = true;
}

function showNote(text) {
  $('note').textContent = text || '';
  $('note').hidden = !text;
}

// ---- Drawing the numbers -------------------------------------------------------

function render() {
  const a = state.answer;
  $('period').textContent = `${format.span(a.summary.from, a.summary.to, a.q.tz)} (${a.q.tz}), compared with the period before`;
  renderCards();
  renderChart();
  renderLists();
  const empty = !a.filtered && a.summary.metrics.events.value === 0;
  $('main').dataset.empty = String(empty);
  $('empty').hidden = !empty;
  $('chart').hidden = empty;
  if (empty) $('chart-title').textContent = 'No events in this period yet';
  $('lists').hidden = empty;
}

/** The metric the chart shows: the chosen card's, or page views when a filter rules it out. */
function chartMetric() {
  const { metric, filters } = state.view;
  return Object.keys(filters).length && !FILTERABLE.includes(metric) ? 'pageviews' : metric;
}

function buildCards() {
  const box = $('cards');
  box.replaceChildren();
  for (const card of CARDS) {
    const button = el(
      'button',
      { type: 'button', class: 'card', 'data-metric': card.metric, 'aria-pressed': 'false' },
      el('span', { class: 'label' }, card.label),
      el('span', { class: 'value' }, '…'),
      el('span', { class: 'change', 'data-tone': 'none' }, ' '),
    );
    button.addEventListener('click', () => {
      if (button.getAttribute('aria-disabled') === 'true') return;
      go({ metric: card.metric });
    });
    box.append(button);
  }
}

function renderCards() {
  const a = state.answer;
  if (!a) return;
  const shown = chartMetric();
  const previousKnown = a.summary.previous.available;
  for (const card of CARDS) {
    const button = document.querySelector(`.card[data-metric="${card.metric}"]`);
    const [, valueEl, changeEl] = button.children;
    button.setAttribute('aria-pressed', String(card.metric === shown));
    const figure = a.summary.metrics[card.metric];
    if (!figure) {
      button.dataset.available = 'false';
      button.dataset.value = '';
      button.setAttribute('aria-disabled', 'true');
      button.title = 'With a filter Beacon counts events and page views only: the rollups do not keep users, sessions or revenue per filter value.';
      valueEl.textContent = '—';
      changeEl.textContent = 'not available with a filter';
      changeEl.dataset.tone = 'none';
      changeEl.title = '';
      continue;
    }
    button.dataset.available = 'true';
    button.removeAttribute('aria-disabled');
    button.title = `Show ${card.label.toLowerCase()} in the chart`;
    let change;
    if (card.metric === 'revenue') {
      const currency = format.mainCurrency(figure.value);
      const others = Object.keys(figure.value).length - 1;
      button.dataset.value = JSON.stringify(figure.value);
      valueEl.textContent = currency ? format.money(figure.value[currency], currency) : '0';
      if (others > 0) {
        valueEl.append(' ', el('small', {}, `+${others} more`));
        button.title = Object.entries(figure.value)
          .map(([c, v]) => format.money(v, c))
          .join(', ');
      }
      change = format.change(currency ? figure.change?.[currency] : null, {
        previousKnown,
        previous: currency ? Number(figure.previous?.[currency] ?? 0) : 0,
        value: currency ? figure.value[currency] : 0,
      });
    } else if (card.byReason) {
      const value = format.total(figure.value);
      const previous = figure.previous ? format.total(figure.previous) : null;
      button.dataset.value = String(value);
      valueEl.textContent = card.show(value);
      const reasons = Object.entries(figure.value || {}).map(([r, n]) => `${r} ${format.count(n)}`);
      button.title = reasons.length
        ? `Excluded from every other figure: ${reasons.join(', ')}`
        : 'No bot traffic was filtered in this period.';
      const relative = previous ? (value - previous) / previous : null;
      change = format.change(relative, { lowerIsBetter: true, previousKnown, previous, value });
    } else {
      button.dataset.value = figure.value === null ? '' : String(figure.value);
      valueEl.textContent = card.show(figure.value);
      change = format.change(figure.change, {
        isRate: card.isRate,
        lowerIsBetter: card.lowerIsBetter,
        previousKnown,
        previous: figure.previous,
        value: figure.value,
      });
    }
    changeEl.textContent = change.text;
    changeEl.dataset.tone = change.tone;
    changeEl.title = change.title;
  }
}

function renderChart() {
  const a = state.answer;
  if (!a) return;
  const metric = chartMetric();
  const card = CARDS.find((c) => c.metric === metric);
  const per = { '1m': 'minute', '1h': 'hour', '1d': 'day' }[a.series.interval];
  let value = (p) => figureValue(card, p[metric]);
  let show = card.show;
  if (metric === 'revenue') {
    const currency = format.mainCurrency(a.summary.metrics.revenue?.value);
    value = (p) => (currency ? Number(p.revenue?.[currency] ?? 0) : 0);
    show = (v) => (currency ? format.money(v, currency) : String(v));
  }
  const title = `${card.label} per ${per}`;
  $('chart-title').textContent = title;
  const points = a.series.points.map((p) => {
    const at = format.bucket(p.start, a.series.interval, a.q.tz);
    const v = value(p);
    return { tick: at.tick, long: at.long, value: v === null || v === undefined ? null : Number(v) };
  });
  drawChart($('chart'), { points, format: show, name: title, integer: Boolean(card.integer) });
}

function buildLists() {
  const box = $('lists');
  box.replaceChildren();
  for (const list of LISTS) {
    const id = `list-${list.dimension}`;
    box.append(
      el(
        'section',
        { class: `panel list${list.map ? ' with-map' : ''}`, 'data-dimension': list.dimension, 'aria-labelledby': id },
        el('h2', { id }, list.title, ' ', el('span', { class: 'muted unit' }, list.unit)),
        list.map ? el('div', { class: 'map' }) : null,
        el('div', { class: 'rows' }),
      ),
    );
  }
}

function renderLists() {
  const a = state.answer;
  // A live refresh must not take the focus from a row a keyboard user is on.
  const focused = document.activeElement?.closest?.('.list .row');
  const keep = focused && [focused.closest('.list').dataset.dimension, focused.dataset.value];
  for (const list of LISTS) {
    const panel = document.querySelector(`.list[data-dimension="${list.dimension}"]`);
    const rows = panel.querySelector('.rows');
    const answer = a.ranked.get(list.dimension);
    const drawn = JSON.stringify([answer?.rows, answer?.other, state.view.filters[list.filter]]);
    if (panel.dataset.drawn === drawn) continue;
    panel.dataset.drawn = drawn;
    if (!answer) {
      panel.dataset.available = 'false';
      const map = panel.querySelector('.map');
      if (map) map.hidden = true;
      rows.replaceChildren(
        el('p', { class: 'muted unavailable' }, list.dimension === 'entry_page'
          ? 'Not available with a filter: sessions are not kept per filter value.'
          : 'Not available with this filter: the rollups count events per single dimension.'),
      );
      continue;
    }
    panel.dataset.available = 'true';
    const label = list.label || ((v) => v);
    const map = panel.querySelector('.map');
    if (map) {
      map.hidden = false;
      drawMap(map, answer.rows, { name: label, unit: list.unit, pick: (code) => addFilter(list.filter, code) });
    }
    if (!answer.rows.length) {
      rows.replaceChildren(el('p', { class: 'muted' }, 'Nothing in this period.'));
      continue;
    }
    const top = answer.rows[0].count || 1;
    const active = state.view.filters[list.filter];
    // A list with a map asks for every country; it shows the top ten, the rest as Other.
    const shown = answer.rows.slice(0, 10);
    const other = answer.other + answer.rows.slice(10).reduce((sum, r) => sum + r.count, 0);
    const items = shown.map((row) => {
      const fill = el('span', { class: 'fill' });
      fill.style.width = `${Math.max(1, (row.count / top) * 100).toFixed(1)}%`;
      const button = el(
        'button',
        {
          type: 'button',
          class: 'row',
          'data-value': row.value,
          'data-count': row.count,
          'aria-current': active === row.value ? 'true' : null,
          title: `Filter the dashboard by ${FILTERS[list.filter].toLowerCase()} ${row.value}`,
        },
        fill,
        el('span', { class: 'row-label' }, label(row.value)),
        el('span', { class: 'row-count' }, format.count(row.count)),
      );
      button.addEventListener('click', () => addFilter(list.filter, row.value));
      return el('li', {}, button);
    });
    if (other > 0) {
      items.push(
        el('li', { class: 'other' }, el('span', { class: 'row-label' }, 'Other'), el('span', { class: 'row-count' }, format.count(other))),
      );
    }
    rows.replaceChildren(el('ol', {}, ...items));
  }
  if (keep && !document.activeElement?.closest?.('.list .row')) {
    const [dimension, value] = keep;
    const rows = document.querySelectorAll(`.list[data-dimension="${dimension}"] .row`);
    [...rows].find((r) => r.dataset.value === value)?.focus();
  }
}

function renderChips() {
  const chips = Object.entries(state.view.filters).map(([param, value]) => {
    const remove = el('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove filter ${FILTERS[param]} is ${value}` }, '×');
    remove.addEventListener('click', () => removeFilter(param));
    return el('span', { class: 'chip', 'data-filter': param }, `${FILTERS[param]} is `, el('strong', {}, param === 'country' ? format.country(value) : value), remove);
  });
  $('chips').replaceChildren(...chips);
  if (state.focusChip !== undefined) {
    const target = state.focusChip
      ? document.querySelector(`.chip[data-filter="${state.focusChip}"] .chip-remove`)
      : document.querySelector('.card');
    target?.focus();
    state.focusChip = undefined;
  }
}

// ---- Live ----------------------------------------------------------------------

function startStream() {
  state.stream?.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  state.feed = [];
  state.lastEventId = '';
  state.shownSeq = 0;
  for (const id of ['active-users', 'events-per-second', 'events-last-minute']) $(id).textContent = '–';
  renderFeed();
  runStream(state.view.site, ctrl);
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

/** Keep the site's live stream open, reconnecting from the last event id. */
async function runStream(site, ctrl) {
  let delay = 1000;
  let dropped = false;
  setFreshness('connecting');
  while (!ctrl.signal.aborted) {
    try {
      await readStream(`/api/v1/sites/${encodeURIComponent(site)}/live/stream`, {
        key: state.key,
        lastEventId: state.lastEventId,
        signal: ctrl.signal,
        onOpen: () => {
          delay = 1000;
          if (dropped) scheduleRefresh();
          dropped = false;
        },
        onEvent: (event) => {
          if (!ctrl.signal.aborted) onStreamEvent(event);
        },
      });
    } catch (e) {
      if (ctrl.signal.aborted || e.name === 'AbortError') return;
      if (e.status === 401) {
        signOut(`The key was refused: ${e.message}.`);
        return;
      }
      if (e.status === 403 || e.status === 404) {
        showBanner('error', `The live stream was refused: ${e.message}.`);
        return;
      }
    }
    if (ctrl.signal.aborted) return;
    dropped = true;
    setFreshness('off');
    await sleep(delay, ctrl.signal);
    delay = Math.min(delay * 2, 15_000);
  }
}

function onStreamEvent(event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  if (event.type === 'event') {
    state.lastEventId = event.id;
    if (!state.feed.some((e) => e.seq === data.seq)) {
      state.feed.unshift(data);
      state.feed.length = Math.min(state.feed.length, FEED_KEPT);
    }
    renderFeed();
  } else if (event.type === 'rollups') {
    scheduleRefresh();
  } else if (event.type === 'live') {
    renderLive(data);
  }
}

function renderLive(live) {
  const put = (id, value, text) => {
    $(id).textContent = text;
    $(id).dataset.value = String(value);
  };
  put('active-users', live.active_users, format.count(live.active_users));
  put('events-per-second', live.events_per_second, format.rate(live.events_per_second));
  put('events-last-minute', live.events_last_minute, format.count(live.events_last_minute));
  setFreshness(live.behind_ms >= WARN_MS ? 'warn' : 'ok', live.behind_ms);
}

/** Whether a feed event passes the dashboard's filters. */
function passes(event) {
  return Object.entries(state.view.filters).every(([k, v]) => (event[k] ?? '(none)') === v);
}

function renderFeed() {
  const shown = state.view ? state.feed.filter(passes).slice(0, FEED_SHOWN) : [];
  const seen = state.shownSeq;
  const items = shown.map((e) => {
    const where = [e.path, e.referrer_source && e.referrer_source !== 'Direct' ? `from ${e.referrer_source}` : null].filter(Boolean).join(' ');
    const who = [e.user, e.browser, e.device, e.country].filter(Boolean).join(' · ');
    const money = e.revenue ? format.money(e.revenue.amount, e.revenue.currency) : null;
    return el(
      'li',
      { 'data-seq': e.seq, class: seen && e.seq > seen ? 'fresh' : null },
      el('time', { datetime: e.received_at }, format.clock(e.received_at, state.view?.tz)),
      el('span', { class: 'feed-name' }, e.name),
      money ? el('span', { class: 'feed-money' }, money) : null,
      where ? el('span', { class: 'feed-where' }, where) : null,
      el('span', { class: 'feed-who' }, who),
    );
  });
  state.shownSeq = Math.max(seen, ...state.feed.map((e) => e.seq));
  $('feed').replaceChildren(...items);
  $('feed-empty').textContent = state.feed.length && !shown.length ? 'No recent event passes the filters.' : 'Waiting for events…';
  $('feed-empty').hidden = shown.length > 0;
}

/** The freshness indicator: how far the numbers are behind the stream. */
function setFreshness(kind, behindMs = 0) {
  const pill = $('freshness');
  pill.dataset.state = kind;
  const seconds = behindMs < 10_000 ? (behindMs / 1000).toFixed(1) : String(Math.round(behindMs / 1000));
  if (kind === 'connecting') {
    pill.textContent = 'Connecting…';
    pill.title = 'Opening the live stream.';
  } else if (kind === 'off') {
    pill.textContent = 'Live stream lost, reconnecting…';
    pill.title = 'The numbers shown may be out of date.';
  } else if (kind === 'ok') {
    pill.textContent = `Live · ${seconds} s behind`;
    pill.title = 'The numbers count every event in the stream but those of the last few moments.';
  } else {
    pill.textContent = `Numbers ${seconds} s behind`;
    pill.title = 'Events are waiting to be counted: the aggregators are behind.';
    askStatus();
  }
  pill.dataset.behindMs = String(behindMs);
}

/** While the numbers lag, say how many events wait (from /status, at most every 10 s). */
async function askStatus() {
  if (Date.now() - state.statusAsked < 10_000) return;
  state.statusAsked = Date.now();
  try {
    const status = await getJson('/api/v1/status', state.key);
    const pill = $('freshness');
    if (pill.dataset.state === 'warn') {
      const late = status.partitions.filter((p) => p.lag > 0).length;
      pill.title = `${format.count(status.lag)} events not counted yet, in ${late} of ${status.partitions.length} partitions.`;
    }
  } catch {
    // The indicator already says enough.
  }
}

// ---- Sign-in and controls --------------------------------------------------------

async function signIn(key, remembered) {
  const button = $('signin-button');
  button.disabled = true;
  button.textContent = 'Checking the key…';
  try {
    const answer = await getJson('/api/v1/sites', key);
    if (!answer.sites.length) throw new ApiError(403, 'this key reads no site');
    await learnApi(key);
    buildCards();
    buildLists();
    state.key = key;
    state.sites = answer.sites;
    sessionStorage.setItem(KEY_STORE, key);
    showDashboard();
  } catch (e) {
    if (e.status === 0) {
      showSignin('');
      retryLater('unreachable', `Cannot reach Beacon at ${location.host}. Is it running?`, () => signIn(key, remembered));
    } else {
      sessionStorage.removeItem(KEY_STORE);
      showSignin(remembered ? `The saved key no longer works: ${e.message}.` : `That key was refused: ${e.message}.`);
    }
  } finally {
    button.disabled = false;
    button.textContent = 'Open dashboard';
  }
}

function signOut(message = '') {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  state.view = null;
  state.answer = null;
  state.stream?.abort();
  clearTimeout(state.pending);
  state.pending = null;
  showSignin(message);
}

function showSignin(message) {
  for (const id of ['main', 'controls', 'bar-end', 'foot', 'banner']) $(id).hidden = true;
  $('signin').hidden = false;
  const error = $('signin-error');
  error.textContent = message;
  error.hidden = !message;
  $('key').value = '';
  $('key').focus();
}

function showDashboard() {
  clearTimeout(state.retry.timer);
  state.retry = { timer: null, delay: 0 };
  hideBanner();
  $('signin').hidden = true;
  for (const id of ['main', 'controls', 'bar-end', 'foot']) $(id).hidden = false;
  const select = $('site');
  select.replaceChildren(...state.sites.map((s) => el('option', { value: s }, s)));
  $('site-field').hidden = state.sites.length < 2;
  $('site-name').hidden = state.sites.length > 1;
  state.view = null;
  apply();
  // The sign-in form is gone: start keyboard users at the top of the numbers.
  $('main').focus();
}

function syncControls() {
  const v = state.view;
  $('site').value = v.site;
  $('site-name').textContent = v.site;
  $('range').value = v.range;
  const zones = [...new Set([BROWSER_TZ, 'UTC', v.tz])];
  $('tz').replaceChildren(
    ...zones.map((z) => el('option', { value: z }, z === BROWSER_TZ ? `${z} (this browser)` : z)),
  );
  $('tz').value = v.tz;
  $('custom').hidden = v.range !== 'custom';
  if (v.range === 'custom') {
    $('custom-from').value = v.from;
    $('custom-to').value = v.to;
  }
}

function wireControls() {
  $('range').replaceChildren(...RANGES.map((r) => el('option', { value: r.id }, r.label)));
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key').value.trim();
    if (key) signIn(key, false);
  });
  $('signout').addEventListener('click', () => signOut());
  $('site').addEventListener('change', (e) => go({ site: e.target.value }));
  $('tz').addEventListener('change', (e) => go({ tz: e.target.value }));
  $('range').addEventListener('change', (e) => {
    if (e.target.value !== 'custom') {
      go({ range: e.target.value });
      return;
    }
    // A custom range waits for its dates; start from the last seven days.
    const today = dateIn(Date.now(), state.view.tz);
    $('custom-from').value = state.view.from || addDays(today, -6);
    $('custom-to').value = state.view.to || today;
    $('custom').hidden = false;
    $('custom-from').focus();
  });
  $('custom').addEventListener('submit', (e) => {
    e.preventDefault();
    go({ range: 'custom', from: $('custom-from').value, to: $('custom-to').value });
  });
  $('copy-curl').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('curl').textContent);
      $('copy-curl').textContent = 'Copied';
    } catch {
      getSelection().selectAllChildren($('curl'));
    }
  });
  $('curl').textContent = [
    `curl -X POST ${location.origin}/api/v1/events \\`,
    `  -H "Authorization: Bearer <write key>" \\`,
    `  -d '{"name": "pageview", "user_id": "u-1", "props": {"path": "/"}}'`,
  ].join('\n');
  window.addEventListener('hashchange', apply);
  setInterval(() => {
    if (state.view && document.visibilityState === 'visible') scheduleRefresh();
  }, REFRESH_EVERY_MS);
}

wireControls();
const saved = sessionStorage.getItem(KEY_STORE);
if (saved) signIn(saved, true);
else showSignin('');
