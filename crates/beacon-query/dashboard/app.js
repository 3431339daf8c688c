// The dashboard page: sign-in with a read key, then the headline cards, the
// trend chart, the top lists, goals, properties, funnels, retention and the
// live panel of one site. What is looked at (site, range, zone, comparison,
// chart metric, filters, the view and its questions) lives in the address's
// #fragment, so it survives a reload and the back button steps through
// filters; the key lives in sessionStorage only and travels as a header.
// The live stream's `rollups` notices trigger a refetch, so the numbers move
// without a reload.

import { renderFunnel, renderGoals, renderRetention, formatSteps, parseSteps, STEP_KINDS } from './analysis.js';
import { ApiError, getJson, readStream } from './api.js';
import { drawChart } from './chart.js';
import { $, el, message } from './dom.js';
import { OPERATORS, formatFilters, operatorLabel, parseFilters, passes as passesFilters, withFilter } from './filters.js';
import * as format from './format.js';
import { drawMap } from './map.js';
import { COMPARISONS, RANGES, addDays, dateIn, knownZone, period } from './range.js';

const KEY_STORE = 'beacon.readKey';
const BROWSER_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
/** What an API without the `filters` parameter (rollups only) answers under a filter. */
const FILTERABLE = ['events', 'pageviews'];
/** The freshness indicator warns once the numbers are this far behind. */
const WARN_MS = 5000;
/** Live refetches are at least this far apart. */
const REFRESH_GAP_MS = 1000;
/** Ranges that end "now" move on even when nothing arrives. */
const REFRESH_EVERY_MS = 60_000;
/** Goals, properties, funnels and retention are read from the event store: live refreshes ask them this seldom. */
const PANELS_EVERY_MS = 10_000;
const FEED_SHOWN = 25;
const FEED_KEPT = 50;

/** Every card the dashboard knows; those the API does not offer (openapi.json) are left out. */
const ALL_CARDS = [
  { metric: 'users', label: 'Visitors', show: format.count, integer: true },
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

/**
 * Every top list the dashboard knows; `filter` is the dimension a click on a
 * row filters by (`legacyFilter` where the API reads single-value shorthands
 * only), `unit` what an API without visitor rankings counts.
 */
const ALL_LISTS = [
  { title: 'Pages', dimension: 'path', filter: 'path', unit: 'events' },
  { title: 'Entry pages', dimension: 'entry_page', filter: 'entry_page', legacyFilter: 'path', unit: 'sessions' },
  { title: 'Exit pages', dimension: 'exit_page', filter: 'exit_page', legacyFilter: 'path', unit: 'sessions' },
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

/** Filter dimensions, as a chip and the filter editor name them. */
const ALL_FILTERS = {
  name: 'Event',
  goal: 'Goal',
  path: 'Page',
  entry_page: 'Entry page',
  exit_page: 'Exit page',
  channel: 'Channel',
  referrer: 'Referrer',
  referrer_source: 'Source',
  utm_campaign: 'Campaign',
  utm_source: 'Campaign source',
  utm_medium: 'Campaign medium',
  utm_term: 'Campaign term',
  utm_content: 'Campaign content',
  browser: 'Browser',
  browser_version: 'Browser version',
  os: 'OS',
  os_version: 'OS version',
  device: 'Device',
  country: 'Country',
  region: 'Region',
  city: 'City',
};
/** Those an API without the `filters` parameter takes as single-value shorthands. */
const LEGACY_FILTERS = ['name', 'path', 'channel', 'referrer_source', 'utm_campaign', 'utm_source', 'utm_medium', 'utm_term', 'utm_content', 'browser', 'os', 'device', 'country', 'region', 'city'];
let FILTERS = ALL_FILTERS;

/** What the API offers beyond the rollups' questions, from its OpenAPI document. */
const api = {
  /** The `filters` parameter: every card and list under any filters. */
  filters: false,
  /** The `compare` parameter: previous period, previous year or custom. */
  compare: false,
  /** Breakdowns ranked by any metric, each row with several figures. */
  rankByUsers: false,
  /** Whether `goal` is a filter dimension (the `filters` parameter's documentation names it). */
  goalFilter: false,
};

/** How a filter's dimension reads: its label, or the property's key. */
function dimensionLabel(dimension) {
  if (dimension.startsWith('props.')) return `Property ${dimension.slice(6)}`;
  return FILTERS[dimension] || ALL_FILTERS[dimension] || dimension;
}

/**
 * Learn what the API offers from its OpenAPI document: the cards, lists and
 * filters whose metric or dimension it lists, and which parameters and
 * operations it has, so a newer dashboard asks an older API nothing it would
 * refuse. Without the document, the original seven cards and nine dimensions.
 */
async function learnApi(key) {
  let metrics = ['events', 'users', 'pageviews', 'sessions', 'bounce_rate', 'avg_session_duration', 'revenue'];
  let dimensions = ['name', 'path', 'referrer_source', 'browser', 'os', 'device', 'country', 'entry_page', 'exit_page'];
  let doc = null;
  try {
    doc = await getJson('/api/v1/openapi.json', key);
    metrics = doc.components.schemas.Metric.enum;
    dimensions = doc.components.schemas.Dimension.enum;
  } catch {
    // The built-in lists.
  }
  const parameters = new Set(Object.values(doc?.components?.parameters || {}).map((p) => p.name));
  for (const op of Object.values(doc?.paths || {})) {
    for (const p of op.get?.parameters || []) if (p.name) parameters.add(p.name);
  }
  api.filters = parameters.has('filters');
  const filtersDoc = Object.values(doc?.components?.parameters || {}).find((p) => p.name === 'filters')?.description || '';
  api.goalFilter = /\bgoal\b/.test(filtersDoc);
  api.compare = parameters.has('compare');
  api.rankByUsers = api.filters;
  CARDS = ALL_CARDS.filter((c) => metrics.includes(c.metric));
  LISTS = ALL_LISTS.filter((l) => dimensions.includes(l.dimension));
  // With `filters`, every dimension of the contract filters (`goal` once the goals report answers).
  FILTERS = Object.fromEntries(
    Object.entries(ALL_FILTERS).filter(([f]) => (api.filters ? true : LEGACY_FILTERS.includes(f) && dimensions.includes(f))),
  );
}

/** A card's figure as one number (the total of a count per reason). */
const figureValue = (card, value) => (card.byReason ? format.total(value) : value);

const state = {
  key: null,
  sites: [],
  /** What is looked at: {site, range, from, to, tz, metric, filters}. */
  view: null,
  /** The latest complete answer: {q, filtered, summary, series, ranked}. */
  answer: null,
  gen: 0,
  /** Bumped whenever the panels are asked again, so a late answer is dropped. */
  panelGen: 0,
  /** When the panels were last asked. */
  panelsAt: 0,
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

/** A filter list as single-value shorthands (`{path: '/pricing'}`), for an API without `filters`. */
function legacyParams(filters) {
  return Object.fromEntries(filters.map((f) => [f.dimension, f.values[0]]));
}

/**
 * Whether an API without `filters` can rank `list` under `filters`: the
 * rollups count events per name, per single dimension value and per name ×
 * dimension value, and sessions (entry and exit pages) only without a filter
 * (docs/QUERY.md). With `filters`, every list under any filters.
 */
function rankable(list, filters) {
  if (api.filters || !filters.length) return true;
  if (list.dimension === 'entry_page' || list.dimension === 'exit_page') return false;
  if (list.dimension === 'name') return true;
  const dim = filters.find((f) => f.dimension !== 'name');
  const name = filters.some((f) => f.dimension === 'name');
  if (dim) return !name && dim.dimension === list.dimension;
  return true;
}

// ---- The view in the address ------------------------------------------------

const TABS = ['overview', 'funnel', 'retention'];
const WINDOWS = ['30m', '1h', '1d', '7d', '30d'];

/** The filters in the address: `filters=` (the API's syntax), or an old link's `name=` and dimension shorthands. */
function hashFilters(h) {
  let filters = [];
  try {
    filters = parseFilters(h.get('filters') || '');
  } catch {
    // A hand-edited address the page cannot read: no filters rather than a broken page.
  }
  for (const d of LEGACY_FILTERS) {
    if (h.get(d)) filters = withFilter(filters, { dimension: d, op: '==', values: [h.get(d)] });
  }
  // Without `filters` the API takes an event name and one dimension, each one value, "is".
  if (!api.filters) {
    const plain = filters.filter((f) => f.op === '==' && f.values.length === 1 && LEGACY_FILTERS.includes(f.dimension));
    const name = plain.find((f) => f.dimension === 'name');
    const dim = plain.find((f) => f.dimension !== 'name');
    filters = [name, dim].filter(Boolean);
  }
  return filters;
}

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const pick = (value, ok, fallback) => (value !== null && ok(value) ? value : fallback);
  return {
    site: pick(h.get('site'), (s) => state.sites.includes(s), state.sites[0]),
    range: pick(h.get('range'), (r) => RANGES.some((x) => x.id === r), 'today'),
    from: h.get('from') || '',
    to: h.get('to') || '',
    tz: pick(h.get('tz'), knownZone, BROWSER_TZ),
    metric: pick(h.get('metric'), (m) => CARDS.some((c) => c.metric === m), 'users'),
    filters: hashFilters(h),
    compare: pick(h.get('compare'), (c) => COMPARISONS.some((x) => x.id === c), 'previous_period'),
    compareFrom: h.get('compare_from') || '',
    compareTo: h.get('compare_to') || '',
    tab: pick(h.get('tab'), (t) => TABS.includes(t), 'overview'),
    prop: h.get('prop') || '',
    steps: h.get('steps') || '',
    funnel: h.get('funnel') || '',
    window: pick(h.get('window'), (w) => /^\d{1,4}[mhd]$/.test(w), '1d'),
    period: pick(h.get('period'), (p) => p === 'day' || p === 'week', 'week'),
    cohortEvent: h.get('cohort_event') || '',
    returnEvent: h.get('return_event') || '',
  };
}

function writeHash(view) {
  const h = new URLSearchParams();
  const put = (k, v, fallback = '') => {
    if (v && v !== fallback) h.set(k, v);
  };
  h.set('site', view.site);
  h.set('range', view.range);
  if (view.range === 'custom') {
    h.set('from', view.from);
    h.set('to', view.to);
  }
  put('tz', view.tz, BROWSER_TZ);
  put('metric', view.metric, 'users');
  put('filters', formatFilters(view.filters));
  put('compare', view.compare, 'previous_period');
  if (view.compare === 'custom') {
    put('compare_from', view.compareFrom);
    put('compare_to', view.compareTo);
  }
  put('tab', view.tab, 'overview');
  put('prop', view.prop);
  put('funnel', view.funnel);
  put('steps', view.steps);
  put('window', view.window, '1d');
  put('period', view.period, 'week');
  put('cohort_event', view.cohortEvent);
  put('return_event', view.returnEvent);
  const next = `#${h}`;
  if (location.hash === next) apply();
  else location.hash = next;
}

/** Look at something else: the change goes through the address. */
function go(patch) {
  writeHash({ ...state.view, ...patch });
}

/** What the cards, chart and lists depend on: a change asks them again. */
const overviewQuestion = (v) =>
  JSON.stringify([v.site, v.range, v.from, v.to, v.tz, v.filters, v.compare, v.compareFrom, v.compareTo]);
/** What the open view's own panels depend on beyond that. */
const panelQuestion = (v) =>
  JSON.stringify([overviewQuestion(v), v.tab, v.prop, v.funnel, v.steps, v.window, v.period, v.cohortEvent, v.returnEvent]);

/** Take the view from the address and show it. */
function apply() {
  if (!state.key) return;
  const before = state.view;
  const view = readHash();
  state.view = view;
  syncControls();
  renderChips();
  showTab();
  if (!before || before.site !== view.site) startStream();
  if (before && overviewQuestion(before) === overviewQuestion(view) && state.answer) {
    renderCards();
    renderChart();
    if (panelQuestion(before) !== panelQuestion(view)) refreshPanels();
    return;
  }
  renderFeed();
  refresh(true);
}

/** Filter by `dimension` is `value` (a row's click): it replaces an "is" filter on that dimension. */
function addFilter(dimension, value) {
  let filters = withFilter(state.view.filters, { dimension, op: '==', values: [value] });
  // Without `filters`, a dimension filter replaces another one: the rollups count per single dimension.
  if (!api.filters && dimension !== 'name') filters = filters.filter((f) => f.dimension === 'name' || f.dimension === dimension);
  state.focusChip = formatFilters([filters.at(-1)]);
  go({ filters });
}

function removeFilter(index) {
  const filters = state.view.filters.filter((_, i) => i !== index);
  state.focusChip = filters.length ? formatFilters([filters[0]]) : '';
  go({ filters });
}

// ---- Fetching the numbers ------------------------------------------------------

/** The question's range and filters as parameters (with the comparison for summaries). */
function baseParams(q, view) {
  const filters = api.filters ? (view.filters.length ? { filters: formatFilters(view.filters) } : {}) : legacyParams(view.filters);
  return { from: q.from, to: q.to, tz: q.tz, ...filters };
}

/**
 * The panels' range: the exact instants the summary covered (with their
 * offset), so goals, funnels and retention count the same stretch as the
 * cards without a `tz` (the analysis operations take none).
 */
function panelParams(answer, view) {
  const { summary, q } = answer;
  const range = summary.range || { from: summary.from, to: summary.to };
  const { from, to, tz, ...filters } = baseParams(q, view);
  return { from: range.from, to: range.to, ...filters };
}

function compareParams(view) {
  if (!api.compare) return {};
  if (view.compare !== 'custom') return { compare: view.compare };
  if (!view.compareFrom || !view.compareTo) return { compare: 'previous_period' };
  return { compare: 'custom', compare_from: view.compareFrom, compare_to: view.compareTo };
}

/** Ask for everything the view shows; `navigated` shows the loading state. */
async function refresh(navigated = false) {
  clearTimeout(state.pending);
  state.pending = null;
  clearTimeout(state.retry.timer);
  const gen = ++state.gen;
  const view = state.view;
  const main = $('main');
  // Only an API without `filters` needs filtered questions shaped for the rollups.
  const filtered = view.filters.length > 0;
  const legacyFiltered = filtered && !api.filters;
  let q;
  try {
    q = period(view.range, { now: Date.now(), tz: view.tz, filtered: legacyFiltered, custom: { from: view.from, to: view.to } });
  } catch (e) {
    showNote(e.message);
    main.dataset.state = 'error';
    return;
  }
  showNote(q.note);
  if (navigated) main.dataset.state = 'loading';
  const base = baseParams(q, view);
  const metrics = (legacyFiltered ? FILTERABLE : CARDS.map((c) => c.metric)).join(',');
  const lists = LISTS.filter((l) => rankable(l, view.filters));
  const ask = (op, extra) => getJson(`${sitePath(view.site)}/${op}`, state.key, { ...base, ...extra });
  const rows = (l) => (l.map && !filtered ? MAP_ROWS : 10);
  const ranking = (l) => (api.rankByUsers ? { metric: 'users', metrics: 'users,events,pageviews' } : {});
  state.busy++;
  state.lastStart = Date.now();
  try {
    const [summary, series, ...ranked] = await Promise.all([
      ask('summary', { metrics, ...compareParams(view) }),
      ask('timeseries', { interval: q.interval, metrics }),
      ...lists.map((l) => ask('breakdown', { dimension: l.dimension, limit: rows(l), ...ranking(l) })),
    ]);
    if (gen !== state.gen) return;
    state.answer = { q, filtered: legacyFiltered, summary, series, ranked: new Map(lists.map((l, i) => [l.dimension, ranked[i]])) };
    state.retry.delay = 0;
    hideBanner();
    main.dataset.site = view.site;
    main.dataset.query = new URLSearchParams(base).toString();
    render();
    main.dataset.state = 'ready';
    // The panels read the event store: a live refresh asks them again at most every PANELS_EVERY_MS.
    if (navigated || Date.now() - state.panelsAt >= PANELS_EVERY_MS) refreshPanels();
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

const sitePath = (site) => `/api/v1/sites/${encodeURIComponent(site)}`;

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
  $('period').textContent = `${format.span(a.summary.from, a.summary.to, a.q.tz)} (${a.q.tz}), ${comparedWith(a.summary)}`;
  $('period').title = sourceNote(a.summary);
  renderCards();
  renderChart();
  renderLists();
  const empty = !state.view.filters.length && a.summary.metrics.events?.value === 0;
  $('main').dataset.empty = String(empty);
  $('empty').hidden = !empty;
  $('chart').hidden = empty;
  if (empty) $('chart-title').textContent = 'No events in this period yet';
  $('lists').hidden = empty;
}

/** The metric the chart shows: the chosen card's, or page views when the API cannot filter it. */
function chartMetric() {
  const { metric, filters } = state.view;
  return !api.filters && filters.length && !FILTERABLE.includes(metric) ? 'pageviews' : metric;
}

/** What the cards' changes are measured against, as the line above them says. */
function comparedWith(summary) {
  const range = summary.comparison?.range || summary.previous;
  const label = COMPARISONS.find((c) => c.id === (api.compare ? state.view.compare : 'previous_period'))?.text || 'the period before';
  return range?.from && range?.to ? `compared with ${label} (${format.span(range.from, range.to, state.answer.q.tz)})` : `compared with ${label}`;
}

/** Where the numbers came from, for a tooltip: the API says rollups or store, and how fresh. */
function sourceNote(answer) {
  if (!answer?.source) return '';
  const fresh = answer.fresh_through ? `, counting events up to ${format.clock(answer.fresh_through, state.view.tz)}` : '';
  return `Answered from the ${answer.source === 'store' ? 'event store' : 'rollups'}${fresh}.`;
}

/**
 * A card's figure in the comparison period and its change: from the answer's
 * `comparison` where the API compares as asked, else from the figure's own
 * `previous` and `change` (the period before). `known` is false when the
 * comparison period is past retention.
 */
function compared(summary, metric) {
  const figure = summary.metrics[metric];
  const c = summary.comparison;
  if (!c) return { known: summary.previous?.available !== false, previous: figure?.previous ?? null, change: figure?.change ?? null };
  // The comparison's figures are plain values (`comparison.metrics.users = 28`); the change is worked out here.
  const other = c.metrics ? c.metrics[metric] : c[metric];
  const previous = other && typeof other === 'object' && 'value' in other ? other.value : other ?? null;
  return { known: c.available !== false, previous, change: null };
}

/** A card's figure in the comparison period as the card would show it, or ''. */
function comparedFigure(card, prior, value) {
  if (prior === null || prior === undefined) return '';
  if (card.metric === 'revenue') {
    const currency = format.mainCurrency(value);
    return currency ? format.moneyLong(prior?.[currency] ?? 0, currency) : '';
  }
  return card.show(card.byReason ? format.total(prior) : prior);
}

/** The relative change from `previous` to `value` (the difference for rates), or null. */
function changeOf(card, value, previous) {
  if (previous === null || previous === undefined || value === null || value === undefined) return null;
  if (card.isRate) return Number(value) - Number(previous);
  return Number(previous) ? (Number(value) - Number(previous)) / Number(previous) : null;
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
  for (const card of CARDS) {
    const button = document.querySelector(`.card[data-metric="${card.metric}"]`);
    const [, valueEl, changeEl] = button.children;
    button.setAttribute('aria-pressed', String(card.metric === shown));
    const figure = a.summary.metrics[card.metric];
    const extra = button.querySelector('.currencies');
    if (extra) extra.remove();
    if (!figure) {
      button.dataset.available = 'false';
      button.dataset.value = '';
      button.setAttribute('aria-disabled', 'true');
      button.title = 'With a filter this Beacon counts events and page views only: its rollups do not keep users, sessions or revenue per filter value.';
      valueEl.textContent = '—';
      changeEl.textContent = 'not available with a filter';
      changeEl.dataset.tone = 'none';
      changeEl.title = '';
      continue;
    }
    button.dataset.available = 'true';
    button.removeAttribute('aria-disabled');
    button.title = [`Show ${card.label.toLowerCase()} in the chart.`, sourceNote(a.summary)].filter(Boolean).join(' ');
    const { known: previousKnown, previous: prior, change: given } = compared(a.summary, card.metric);
    let change;
    if (card.metric === 'revenue') {
      // Every currency, each in its own: the largest big, the others below it, none cut short.
      const all = format.currencies(figure.value);
      const currency = all[0]?.[0] ?? null;
      button.dataset.value = JSON.stringify(figure.value);
      button.dataset.currencies = all.map(([c]) => c).join(',');
      valueEl.textContent = currency ? format.moneyLong(figure.value[currency], currency) : '0';
      if (all.length > 1) {
        valueEl.after(
          el('ul', { class: 'currencies' }, all.slice(1).map(([c, v]) => el('li', { 'data-currency': c }, format.moneyLong(v, c)))),
        );
      }
      button.title = [all.map(([c, v]) => format.moneyLong(v, c)).join(' · '), sourceNote(a.summary)].filter(Boolean).join('. ');
      const previous = currency ? Number(prior?.[currency] ?? 0) : 0;
      const relative = given && typeof given === 'object' ? given[currency] : changeOf(card, figure.value?.[currency], previous);
      change = format.change(currency ? relative : null, { previousKnown, previous, value: currency ? figure.value[currency] : 0 });
    } else if (card.byReason) {
      const value = format.total(figure.value);
      const previous = prior ? format.total(prior) : null;
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
      change = format.change(given ?? changeOf(card, figure.value, prior), {
        isRate: card.isRate,
        lowerIsBetter: card.lowerIsBetter,
        previousKnown,
        previous: prior,
        value: figure.value,
      });
    }
    changeEl.textContent = change.text;
    changeEl.dataset.tone = change.tone;
    changeEl.title = change.title.replace('the period before', COMPARISONS.find((c) => c.id === state.view.compare)?.text || 'the period before');
    // The comparison period's own figure, beside the change.
    const then = comparedFigure(card, prior, figure.value);
    if (then) changeEl.title += ` Then: ${then}.`;
    button.dataset.previous = prior === null || prior === undefined ? '' : typeof prior === 'object' ? JSON.stringify(prior) : String(prior);
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
        el('h2', { id }, list.title, ' ', el('span', { class: 'muted unit' }, api.rankByUsers ? 'visitors' : list.unit)),
        list.map ? el('div', { class: 'map' }) : null,
        el('div', { class: 'rows' }),
      ),
    );
  }
}

/** A row's ranked figure: visitors where the API ranks by them, else its count. */
const rowCount = (row) => Number(row.users ?? row.count ?? 0);

/** What the rows leave out, in the ranked figure. */
function otherCount(answer) {
  const other = answer.other;
  if (other && typeof other === 'object') return Number(other.users ?? other.count ?? 0);
  return Number(other || 0);
}

/** A row's other figures, for its tooltip. */
function rowDetail(row) {
  const parts = [];
  if (row.events !== undefined) parts.push(`${format.count(row.events)} events`);
  if (row.pageviews !== undefined) parts.push(`${format.count(row.pageviews)} page views`);
  return parts.length ? ` (${parts.join(', ')})` : '';
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
    const param = api.filters ? list.filter : list.legacyFilter || list.filter;
    const active = state.view.filters.find((f) => f.dimension === param && f.op === '==' && f.values.length === 1)?.values[0];
    const drawn = JSON.stringify([answer?.rows, answer?.other, active, api.rankByUsers]);
    if (panel.dataset.drawn === drawn) continue;
    panel.dataset.drawn = drawn;
    if (!answer) {
      panel.dataset.available = 'false';
      const map = panel.querySelector('.map');
      if (map) map.hidden = true;
      rows.replaceChildren(
        el('p', { class: 'muted unavailable' }, list.dimension === 'entry_page' || list.dimension === 'exit_page'
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
      const counted = answer.rows.map((r) => ({ ...r, count: rowCount(r) }));
      drawMap(map, counted, { name: label, unit: api.rankByUsers ? 'visitors' : list.unit, pick: (code) => addFilter(param, code) });
    }
    if (!answer.rows.length) {
      rows.replaceChildren(el('p', { class: 'muted' }, 'Nothing in this period.'));
      continue;
    }
    const top = Math.max(1, ...answer.rows.map(rowCount));
    // A list with a map asks for every country; it shows the top ten, the rest as Other.
    const shown = answer.rows.slice(0, 10);
    const other = otherCount(answer) + answer.rows.slice(10).reduce((sum, r) => sum + rowCount(r), 0);
    const items = shown.map((row) => {
      const fill = el('span', { class: 'fill' });
      fill.style.width = `${Math.max(1, (rowCount(row) / top) * 100).toFixed(1)}%`;
      const button = el(
        'button',
        {
          type: 'button',
          class: 'row',
          'data-value': row.value,
          'data-count': rowCount(row),
          'data-events': row.events ?? null,
          'aria-current': active === row.value ? 'true' : null,
          title: `Filter the dashboard by ${dimensionLabel(param).toLowerCase()} ${row.value}${rowDetail(row)}`,
        },
        fill,
        el('span', { class: 'row-label' }, label(row.value)),
        el('span', { class: 'row-count' }, format.count(rowCount(row))),
      );
      button.addEventListener('click', () => addFilter(param, row.value));
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
  const chips = state.view.filters.map((f, i) => {
    const shown = f.values.map((v) => (f.dimension === 'country' ? format.country(v) : v));
    const what = `${dimensionLabel(f.dimension)} ${operatorLabel(f.op)}`;
    const remove = el('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove filter ${what} ${shown.join(' or ')}` }, '×');
    remove.addEventListener('click', () => removeFilter(i));
    const values = shown.flatMap((v, k) => (k ? [' or ', el('strong', {}, v)] : [el('strong', {}, v)]));
    return el('span', { class: 'chip', 'data-filter': f.dimension, 'data-op': f.op, 'data-text': formatFilters([f]) }, `${what} `, ...values, remove);
  });
  $('chips').replaceChildren(...chips);
  if (state.focusChip !== undefined) {
    const target = state.focusChip
      ? [...document.querySelectorAll('.chip')].find((c) => c.dataset.text === state.focusChip)?.querySelector('.chip-remove')
      : document.querySelector('.card');
    target?.focus();
    state.focusChip = undefined;
  }
}

// ---- Goals, properties, funnels and retention ---------------------------------

/** Which view is open: the overview's lists and panels, the funnel or the retention table. */
function showTab() {
  const tab = state.view.tab;
  for (const t of TABS) {
    $(`tab-${t}`).setAttribute('aria-selected', String(t === tab));
    $(`view-${t}`).hidden = t !== tab;
  }
}

/**
 * Ask one panel's question and draw the answer into `box` (its `.panel-body`);
 * the panel says briefly why it is empty when this Beacon has no such
 * operation (an older node: no `filters` parameter, or a 404) or refuses
 * the question.
 */
async function askPanel(box, op, params, draw, { missing }) {
  const body = box.querySelector('.panel-body');
  const view = state.view;
  const query = new URLSearchParams(params).toString();
  // A node without `filters` predates goals, properties, funnels and retention: nothing to ask.
  if (!api.filters) {
    box.dataset.state = 'unavailable';
    body.replaceChildren(message(missing));
    return;
  }
  if (box.dataset.query !== query) box.dataset.state = 'loading';
  const pg = state.panelGen;
  try {
    const answer = await getJson(`${sitePath(view.site)}/${op}`, state.key, params);
    if (pg !== state.panelGen) return;
    draw(answer, body);
    box.dataset.query = query;
    box.dataset.state = 'ready';
    box.title = sourceNote(answer);
  } catch (e) {
    if (pg !== state.panelGen || e.name === 'AbortError') return;
    box.dataset.query = query;
    if (e.status === 404 && !/no site/.test(e.message)) {
      box.dataset.state = 'unavailable';
      body.replaceChildren(message(missing));
    } else if (e.status === 400) {
      box.dataset.state = 'refused';
      body.replaceChildren(message(`Beacon refused the question: ${e.message}.`, 'error'));
    } else {
      box.dataset.state = 'error';
      body.replaceChildren(message(`No answer: ${e.message}.`, 'error'));
    }
  }
}

/** Ask the open view's panels (goals and properties, the funnel, or the retention table). */
function refreshPanels() {
  const a = state.answer;
  if (!a) return;
  state.panelGen++;
  state.panelsAt = Date.now();
  const view = state.view;
  const base = panelParams(a, view);
  if (view.tab === 'overview') {
    askPanel($('goals'), 'goals/report', base, (answer, body) => renderGoals(body, answer, { pick: api.goalFilter ? (name) => addFilter('goal', name) : null }), {
      missing: 'This Beacon does not report goals yet.',
    });
    askPanel($('properties'), 'properties', base, (answer, body) => drawProperties(body, answer, base), {
      missing: 'This Beacon does not list custom properties yet.',
    });
  } else if (view.tab === 'funnel') {
    askFunnel(base);
  } else if (view.tab === 'retention') {
    const params = { ...base, period: view.period };
    if (view.cohortEvent) params.cohort_event = view.cohortEvent;
    if (view.returnEvent) params.return_event = view.returnEvent;
    askPanel($('retention'), 'retention', params, (answer, body) => renderRetention(body, answer, { period: view.period }), {
      missing: 'This Beacon does not answer retention questions yet.',
    });
  }
}

/** The property keys of the range, and a breakdown by the chosen one (the first by default). */
async function drawProperties(body, answer, base) {
  const keys = (answer.properties || answer.keys || []).map((p) => (typeof p === 'string' ? { key: p } : p));
  if (!keys.length) {
    body.replaceChildren(message('No event in this range has custom properties.'));
    return;
  }
  const chosen = keys.some((k) => k.key === state.view.prop) ? state.view.prop : keys[0].key;
  const picker = el(
    'div',
    { class: 'prop-keys', role: 'group', 'aria-label': 'Property keys' },
    keys.map((k) =>
      el(
        'button',
        {
          type: 'button',
          class: 'prop-key',
          'data-key': k.key,
          'aria-pressed': String(k.key === chosen),
          title: [k.events !== undefined ? `${format.count(k.events)} events` : null, k.users !== undefined ? `${format.count(k.users)} visitors` : null].filter(Boolean).join(', '),
        },
        k.key,
      ),
    ),
  );
  picker.addEventListener('click', (e) => {
    const key = e.target.closest('.prop-key')?.dataset.key;
    if (key) go({ prop: key });
  });
  const rows = el('div', { class: 'rows' }, message('…'));
  body.replaceChildren(picker, rows);
  const pg = state.panelGen;
  try {
    const dimension = `props.${chosen}`;
    const ranked = await getJson(`${sitePath(state.view.site)}/breakdown`, state.key, { ...base, dimension, limit: 10, metric: 'users', metrics: 'users,events' });
    if (pg !== state.panelGen) return;
    const top = Math.max(1, ...ranked.rows.map(rowCount));
    const items = ranked.rows.map((row) => {
      const fill = el('span', { class: 'fill' });
      fill.style.width = `${Math.max(1, (rowCount(row) / top) * 100).toFixed(1)}%`;
      const button = el(
        'button',
        { type: 'button', class: 'row', 'data-value': row.value, 'data-count': rowCount(row), title: `Filter the dashboard by ${chosen} ${row.value}${rowDetail(row)}` },
        fill,
        el('span', { class: 'row-label' }, row.value),
        el('span', { class: 'row-count' }, format.count(rowCount(row))),
      );
      button.addEventListener('click', () => addFilter(dimension, row.value));
      return el('li', {}, button);
    });
    rows.dataset.key = chosen;
    rows.replaceChildren(items.length ? el('ol', {}, items) : message('Nothing in this period.'));
  } catch (e) {
    if (pg === state.panelGen) rows.replaceChildren(message(`No breakdown: ${e.message}.`, 'error'));
  }
}

/** The funnel: a saved one by name, or the steps in the editor. */
function askFunnel(base) {
  const view = state.view;
  drawStepsEditor();
  const box = $('funnel');
  if (api.filters) loadSavedFunnels();
  const steps = parseSteps(view.steps);
  if (!view.funnel && steps.length < 2) {
    box.dataset.state = 'idle';
    box.querySelector('.panel-body').replaceChildren(message('Add two to eight steps (events, pages or goals), then show the funnel.'));
    return;
  }
  const params = { ...base, window: view.window, ...(view.funnel ? { funnel: view.funnel } : { steps: view.steps }) };
  askPanel(box, 'funnel', params, (answer, body) => renderFunnel(body, answer), {
    missing: 'This Beacon does not answer funnel questions yet.',
  });
}

/** The saved funnels, in the picker (asked once per site). */
async function loadSavedFunnels() {
  const select = $('funnel-saved');
  if (select.dataset.site === state.view.site) {
    select.value = state.view.funnel;
    return;
  }
  select.dataset.site = state.view.site;
  try {
    const answer = await getJson(`${sitePath(state.view.site)}/funnels`, state.key);
    const funnels = (answer.funnels || []).map((f) => (typeof f === 'string' ? { name: f } : f));
    select.replaceChildren(el('option', { value: '' }, 'Ad hoc (the steps below)'), funnels.map((f) => el('option', { value: f.name }, f.name)));
    select.dataset.funnels = JSON.stringify(funnels);
  } catch {
    select.replaceChildren(el('option', { value: '' }, 'Ad hoc (the steps below)'));
  }
  select.value = state.view.funnel;
}

/** The steps editor, from the address (or a saved funnel's steps when one is picked). */
function drawStepsEditor() {
  const list = $('funnel-steps');
  // A live refresh must not undo steps being typed: redraw only when the address changed them.
  const drawn = JSON.stringify([state.view.steps, state.view.window]);
  if (list.dataset.drawn === drawn) return;
  list.dataset.drawn = drawn;
  const steps = parseSteps(state.view.steps);
  while (steps.length < 2) steps.push({ kind: steps.length ? 'event' : 'path', value: '' });
  list.replaceChildren(...steps.map((s, i) => stepRow(s, i)));
  const windows = $('funnel-window');
  // A saved funnel's window may be one the picker does not offer.
  if (![...windows.options].some((o) => o.value === state.view.window)) windows.append(el('option', { value: state.view.window }, state.view.window));
  windows.value = state.view.window;
}

function stepRow(step, i) {
  const kind = el('select', { class: 'step-kind', 'aria-label': `Step ${i + 1} kind` }, STEP_KINDS.map((k) => el('option', { value: k.kind }, k.label)));
  kind.value = step.kind;
  const value = el('input', { class: 'step-value', type: 'text', value: step.value, 'aria-label': `Step ${i + 1}`, placeholder: 'signup, /pricing*, Signup…', spellcheck: 'false' });
  const remove = el('button', { type: 'button', class: 'button quiet step-remove', 'aria-label': `Remove step ${i + 1}` }, '×');
  remove.addEventListener('click', () => {
    remove.closest('li').remove();
    renumberSteps();
  });
  return el('li', { class: 'step' }, kind, value, remove);
}

function renumberSteps() {
  [...$('funnel-steps').children].forEach((li, i) => {
    li.querySelector('.step-kind').setAttribute('aria-label', `Step ${i + 1} kind`);
    li.querySelector('.step-value').setAttribute('aria-label', `Step ${i + 1}`);
    li.querySelector('.step-remove').setAttribute('aria-label', `Remove step ${i + 1}`);
  });
}

/** The steps as the editor holds them. */
function editedSteps() {
  return [...$('funnel-steps').children]
    .map((li) => ({ kind: li.querySelector('.step-kind').value, value: li.querySelector('.step-value').value.trim() }))
    .filter((s) => s.value);
}

// ---- The filter editor ------------------------------------------------------------

function openEditor() {
  const form = $('filter-editor');
  $('filter-dimension').replaceChildren(
    ...Object.entries(FILTERS)
      .filter(([d]) => d !== 'goal' || api.goalFilter)
      .map(([d, label]) => el('option', { value: d }, label)),
    api.filters ? el('option', { value: 'props.' }, 'Property…') : null,
  );
  setOperators('');
  $('filter-values').value = '';
  $('filter-prop').value = '';
  $('filter-error').hidden = true;
  $('filter-prop-field').hidden = true;
  $('filter-values-hint').textContent = api.filters ? 'One value per line: any of them.' : 'One value: this Beacon filters by one value of one dimension.';
  form.hidden = false;
  $('filter-add').setAttribute('aria-expanded', 'true');
  $('filter-dimension').focus();
}

/** The conditions the editor offers for `dimension`: "is" alone on an older node, "is" and "is not" for goals. */
function setOperators(dimension) {
  const select = $('filter-op');
  const before = select.value || '==';
  const ops = OPERATORS.filter((o) => (!api.filters ? o.op === '==' : dimension !== 'goal' || o.op === '==' || o.op === '!='));
  select.replaceChildren(...ops.map((o) => el('option', { value: o.op }, o.label)));
  select.value = ops.some((o) => o.op === before) ? before : '==';
}

function closeEditor() {
  $('filter-editor').hidden = true;
  $('filter-add').setAttribute('aria-expanded', 'false');
}

/** The editor's filter, or an Error saying what to fix. */
function editedFilter() {
  let dimension = $('filter-dimension').value;
  if (dimension === 'props.') {
    const key = $('filter-prop').value.trim();
    if (!/^[A-Za-z0-9_.:$-]{1,64}$/.test(key)) throw new Error('A property key is 1 to 64 letters, digits or _ . : $ -');
    dimension = `props.${key}`;
  }
  const values = $('filter-values').value.split('\n').map((v) => v.trim()).filter(Boolean);
  if (!values.length) throw new Error('Give at least one value.');
  if (!api.filters && values.length > 1) throw new Error('This Beacon filters by one value at a time.');
  return { dimension, op: $('filter-op').value, values };
}

function wireEditor() {
  $('filter-add').addEventListener('click', () => ($('filter-editor').hidden ? openEditor() : closeEditor()));
  $('filter-dimension').addEventListener('change', (e) => {
    $('filter-prop-field').hidden = e.target.value !== 'props.';
    setOperators(e.target.value);
  });
  $('filter-cancel').addEventListener('click', () => {
    closeEditor();
    $('filter-add').focus();
  });
  $('filter-editor').addEventListener('submit', (e) => {
    e.preventDefault();
    let filter;
    try {
      filter = editedFilter();
    } catch (err) {
      $('filter-error').textContent = err.message;
      $('filter-error').hidden = false;
      return;
    }
    closeEditor();
    let filters = withFilter(state.view.filters, filter);
    if (!api.filters && filter.dimension !== 'name') filters = filters.filter((f) => f.dimension === 'name' || f.dimension === filter.dimension);
    state.focusChip = formatFilters([filter]);
    go({ filters });
  });
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
  return passesFilters(event, state.view.filters);
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
  $('compare-field').hidden = !api.compare;
  $('compare').value = v.compare;
  $('compare-custom').hidden = !api.compare || v.compare !== 'custom';
  if (v.compare === 'custom') {
    $('compare-from').value = v.compareFrom;
    $('compare-to').value = v.compareTo;
  }
  $('period-select').value = v.period;
  $('cohort-event').value = v.cohortEvent;
  $('return-event').value = v.returnEvent;
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
  $('compare').replaceChildren(...COMPARISONS.map((c) => el('option', { value: c.id }, c.label)));
  $('compare').addEventListener('change', (e) => {
    if (e.target.value !== 'custom') {
      go({ compare: e.target.value });
      return;
    }
    // A custom comparison waits for its dates; start from the same length just before.
    $('compare-custom').hidden = false;
    $('compare-from').focus();
  });
  $('compare-custom').addEventListener('submit', (e) => {
    e.preventDefault();
    go({ compare: 'custom', compareFrom: $('compare-from').value, compareTo: $('compare-to').value });
  });
  for (const tab of TABS) $(`tab-${tab}`).addEventListener('click', () => go({ tab }));
  wireEditor();
  $('funnel-window').replaceChildren(...WINDOWS.map((w) => el('option', { value: w }, w)));
  $('funnel-add-step').addEventListener('click', () => {
    const list = $('funnel-steps');
    if (list.children.length >= 8) return;
    list.append(stepRow({ kind: 'event', value: '' }, list.children.length));
    list.lastElementChild.querySelector('.step-value').focus();
  });
  $('funnel-saved').addEventListener('change', (e) => {
    const funnels = JSON.parse(e.target.dataset.funnels || '[]');
    const saved = funnels.find((f) => f.name === e.target.value);
    // A saved funnel's steps fill the editor, so it can be changed into an ad hoc one.
    // Saved steps are a list of `kind:value`; the address holds them as one `steps` string.
    const list = Array.isArray(saved?.steps) ? saved.steps.flatMap((step) => parseSteps(step.replace(/[;\\]/g, (c) => `\\${c}`))) : null;
    const steps = list ? formatSteps(list) : saved?.steps || state.view.steps;
    go({ funnel: e.target.value, steps, window: saved?.window || state.view.window });
  });
  $('funnel-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const steps = editedSteps();
    if (steps.length < 2 || steps.length > 8) {
      $('funnel').querySelector('.panel-body').replaceChildren(message('A funnel has two to eight steps.', 'error'));
      return;
    }
    go({ funnel: '', steps: formatSteps(steps), window: $('funnel-window').value });
  });
  $('retention-form').addEventListener('submit', (e) => {
    e.preventDefault();
    go({ period: $('period-select').value, cohortEvent: $('cohort-event').value.trim(), returnEvent: $('return-event').value.trim() });
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
