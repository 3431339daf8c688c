// The dashboard's modules that need no page: which range asks what, the
// stream parser, how changes and scales read, the filter syntax, funnel
// steps and the revenue card's currencies.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatSteps, parseSteps, pct } from '../../crates/beacon-query/dashboard/analysis.js';
import { SseParser } from '../../crates/beacon-query/dashboard/api.js';
import { niceMax } from '../../crates/beacon-query/dashboard/chart.js';
import { formatFilters, parseFilters, passes, withFilter } from '../../crates/beacon-query/dashboard/filters.js';
import * as format from '../../crates/beacon-query/dashboard/format.js';
import { level } from '../../crates/beacon-query/dashboard/map.js';
import { addDays, dateIn, offsetMinutes, period } from '../../crates/beacon-query/dashboard/range.js';

// 2026-11-25 14:20:30 UTC, 15:20:30 in Berlin.
const NOW = Date.parse('2026-11-25T14:20:30Z');

test('ranges ask for whole hours, end on the next hour, and realtime per minute', () => {
  const ask = (range, more = {}) => period(range, { now: NOW, tz: 'Europe/Berlin', ...more });
  assert.deepEqual(ask('realtime'), { from: '-30m', to: 'now', interval: '1m', tz: 'Europe/Berlin', note: '' });
  assert.deepEqual(ask('today'), { from: '2026-11-25', to: '2026-11-25T15:00:00Z', interval: '1h', tz: 'Europe/Berlin', note: '' });
  assert.deepEqual(ask('yesterday'), { from: '2026-11-24', to: '2026-11-24', interval: '1h', tz: 'Europe/Berlin', note: '' });
  assert.equal(ask('7d').from, '2026-11-19');
  assert.equal(ask('7d').interval, '1d');
  assert.equal(ask('30d').from, '2026-10-27');
  // A filter needs whole hours: realtime covers the hours of the last 30 minutes.
  const filtered = ask('realtime', { filtered: true });
  assert.equal(filtered.from, '2026-11-25T13:00:00Z');
  assert.equal(filtered.to, '2026-11-25T15:00:00Z');
  assert.equal(filtered.interval, '1h');
  assert.match(filtered.note, /whole hour/);
});

test('a zone a half hour off UTC is read in UTC where whole hours matter', () => {
  assert.equal(offsetMinutes(NOW, 'Asia/Kolkata'), 330);
  assert.equal(offsetMinutes(NOW, 'America/New_York'), -300);
  assert.equal(period('today', { now: NOW, tz: 'Asia/Kolkata' }).tz, 'Asia/Kolkata');
  const week = period('7d', { now: NOW, tz: 'Asia/Kolkata' });
  assert.equal(week.tz, 'UTC');
  assert.match(week.note, /UTC/);
  assert.equal(period('realtime', { now: NOW, tz: 'Asia/Kolkata', filtered: true }).tz, 'UTC');
});

test('custom ranges take two dates in order and pick their interval', () => {
  const custom = (from, to) => period('custom', { now: NOW, tz: 'UTC', custom: { from, to } });
  assert.equal(custom('2026-11-01', '2026-11-02').interval, '1h');
  assert.equal(custom('2026-11-01', '2026-11-20').interval, '1d');
  assert.throws(() => custom('2026-11-20', '2026-11-01'), /ends before it starts/);
  assert.throws(() => custom('', '2026-11-01'), /both dates/);
  assert.equal(dateIn(NOW, 'Pacific/Kiritimati'), '2026-11-26');
  assert.equal(addDays('2026-03-01', -1), '2026-02-28');
});

test('the stream parser joins chunks, split line ends, data lines and ids', () => {
  const p = new SseParser();
  const text = 'event: event\r\nid: 7\r\ndata: {"a":1}\r\n\r\n: keep-alive\n\nevent: live\ndata: x\ndata: y\n\ndata:plain\n\n';
  const events = [];
  // One character at a time: every split, including inside CRLF.
  for (const c of text) events.push(...p.push(c));
  assert.deepEqual(events, [
    { type: 'event', data: '{"a":1}', id: '7' },
    { type: 'live', data: 'x\ny', id: '7' },
    { type: 'message', data: 'plain', id: '7' },
  ]);
  assert.equal(p.lastId, '7');
  assert.deepEqual(new SseParser('3').push('event: rollups\ndata: {}\n\n'), [{ type: 'rollups', data: '{}', id: '3' }]);
});

test('changes read as good or bad, and scales end on round numbers', () => {
  assert.deepEqual(format.change(0.25), { text: '▲ 25.0%', tone: 'good', title: 'Up 25.0% against the period before.' });
  assert.equal(format.change(0.05, { isRate: true, lowerIsBetter: true }).tone, 'bad');
  assert.equal(format.change(0.05, { isRate: true }).text, '▲ 5.0 pts');
  assert.equal(format.change(null, { previous: 0, value: 3 }).text, 'new');
  assert.equal(format.change(null, { previous: 0, value: 0 }).text, '–');
  assert.equal(format.change(0.1, { previousKnown: false }).text, 'no earlier data');
  assert.equal(format.duration(65), '1m 05s');
  assert.equal(format.duration(7260), '2h 01m');
  assert.equal(format.mainCurrency({ EUR: '5', USD: '19.99' }), 'USD');
  assert.equal(niceMax(0), 1);
  assert.equal(niceMax(7), 10);
  assert.equal(niceMax(180), 200);
  assert.equal(niceMax(0.42), 0.5);
});

test('countries read as names, filtered traffic as its total, and the map shades by share', () => {
  // Node's Intl speaks the process locale; the code is kept for what it cannot name.
  assert.equal(new Intl.DisplayNames(['en'], { type: 'region' }).of('DE'), 'Germany');
  assert.notEqual(format.country('DE'), 'DE');
  assert.equal(format.country('(none)'), '(none)');
  assert.equal(format.country(''), '');
  assert.equal(format.total({ crawler: 42, monitor: 3 }), 45);
  assert.equal(format.total(null), 0);
  assert.equal(format.depth(62.5), '62.5%');
  assert.equal(format.depth(null), '–');
  assert.deepEqual([0, 1, 4, 25, 100].map((n) => level(n, 100)), [0, 1, 1, 3, 5]);
  assert.equal(level(5, 0), 0);
});

test('filters round-trip through the API syntax, escapes included', () => {
  const filters = [
    { dimension: 'path', op: '==', values: ['/pricing', '/docs'] },
    { dimension: 'country', op: '!=', values: ['DE'] },
    { dimension: 'utm_campaign', op: '*=', values: ['black;friday', 'a|b', 'back\\slash'] },
    { dimension: 'referrer', op: '!*=', values: ['spam'] },
    { dimension: 'props.plan', op: '~=', values: ['^pro(-.*)?$'] },
  ];
  const text = formatFilters(filters);
  assert.equal(text, 'path==/pricing|/docs;country!=DE;utm_campaign*=black\\;friday|a\\|b|back\\\\slash;referrer!*=spam;props.plan~=^pro(-.*)?$');
  assert.deepEqual(parseFilters(text), filters);
  assert.deepEqual(parseFilters(''), []);
  // The longest operator wins: `!*=` is not `!` then `*=`.
  assert.deepEqual(parseFilters('name!*=x'), [{ dimension: 'name', op: '!*=', values: ['x'] }]);
  assert.throws(() => parseFilters('path=/x'), /dimension><operator/);
  assert.throws(() => parseFilters('path==a||b'), /empty value/);
  assert.throws(() => parseFilters('path==a\\'), /lone/);
  // A row's click replaces the "is" filter on its dimension and keeps the others.
  const next = withFilter(filters, { dimension: 'path', op: '==', values: ['/about'] });
  assert.deepEqual(next.map((f) => formatFilters([f])).at(-1), 'path==/about');
  assert.equal(next.filter((f) => f.dimension === 'path').length, 1);
});

test('the live feed keeps the events that pass every filter', () => {
  const event = { name: 'pageview', path: '/Pricing/pro', country: 'DE', props: { plan: 'pro' } };
  const ok = (text) => passes(event, parseFilters(text));
  assert.equal(ok('path==/Pricing/pro'), true);
  assert.equal(ok('path==/x|/Pricing/pro'), true);
  assert.equal(ok('country!=DE'), false);
  assert.equal(ok('path*=pricing'), true, 'contains ignores case');
  assert.equal(ok('path!*=PRO'), false);
  assert.equal(ok('path~=^/P.*o$'), true);
  assert.equal(ok('props.plan==pro;country==DE'), true);
  assert.equal(ok('props.plan==free'), false);
  assert.equal(ok('browser==Firefox'), false, 'a missing value is (none)');
  assert.equal(ok('entry_page==/'), true, 'session dimensions are not judged in the feed');
});

test('funnel steps round-trip, and percentages read with one decimal', () => {
  const steps = [
    { kind: 'path', value: '/pricing*' },
    { kind: 'event', value: 'sign;up' },
    { kind: 'goal', value: 'Purchase' },
  ];
  assert.equal(formatSteps(steps), 'path:/pricing*;event:sign\\;up;goal:Purchase');
  assert.deepEqual(parseSteps(formatSteps(steps)), steps);
  assert.deepEqual(parseSteps(''), []);
  assert.equal(pct(41.666), '41.7%');
  assert.equal(pct(null), '–');
});

test('the revenue card ranks currencies without cents at a hundredth, and names each unambiguously', () => {
  // ¥226,200 is less than $8,493 in any year: raw numbers said the opposite.
  const revenue = { JPY: '226200', USD: '8493.10', EUR: '120.00', GBP: '0' };
  assert.deepEqual(format.currencies(revenue).map(([c]) => c), ['USD', 'JPY', 'EUR']);
  assert.equal(format.mainCurrency(revenue), 'USD');
  assert.equal(format.mainCurrency({}), null);
  const money = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'JPY', currencyDisplay: 'symbol' }).format(226200);
  assert.match(money, /226,200/);
  assert.match(format.moneyLong('226200', 'JPY'), /226.200/, 'never shortened');
  assert.notEqual(format.moneyLong('5', 'USD'), format.moneyLong('5', 'CAD'), 'two dollars read differently');
});
