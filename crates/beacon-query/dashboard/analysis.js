// Goals, funnels and retention as the page draws them from the API's answers
// (docs/QUERY.md): a table of goals with their conversion rates, a bar per
// funnel step, and a cohort table. Also the funnel's `steps` parameter, which
// the page keeps in its address.

import { el, message } from './dom.js';
import * as format from './format.js';

/** The kinds of funnel step, as the `steps` parameter names them. */
export const STEP_KINDS = [
  { kind: 'event', label: 'Event' },
  { kind: 'path', label: 'Page' },
  { kind: 'goal', label: 'Goal' },
];

/** Funnel steps `[{kind, value}]` as the `steps` parameter: `event:signup;path:/pricing*`. */
export function formatSteps(steps) {
  return steps.map(({ kind, value }) => `${kind}:${value.replace(/[;\\]/g, (c) => `\\${c}`)}`).join(';');
}

/** The steps of a `steps` parameter; unknown kinds are kept as events so nothing is lost silently. */
export function parseSteps(text) {
  if (!text) return [];
  const parts = [''];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && i + 1 < text.length) parts[parts.length - 1] += text[++i];
    else if (text[i] === ';') parts.push('');
    else parts[parts.length - 1] += text[i];
  }
  return parts.map((part) => {
    const colon = part.indexOf(':');
    const kind = part.slice(0, colon);
    return STEP_KINDS.some((k) => k.kind === kind) ? { kind, value: part.slice(colon + 1) } : { kind: 'event', value: part };
  });
}

/** A percentage the API gives with two decimals (41.67), as the page shows it. */
export function pct(value) {
  if (value === null || value === undefined) return '–';
  return `${Number(value).toFixed(1)}%`;
}

/**
 * The goals report: one row per goal with its conversions, visitors, rate and
 * revenue; `pick(name)`, when given, is called when a goal's name is chosen.
 */
export function renderGoals(box, answer, { pick = null } = {}) {
  const goals = answer.goals || [];
  if (!goals.length) {
    box.replaceChildren(message('No goals are defined for this site: add them under [[sites.goals]] or with PUT …/goals/{name}.'));
    return;
  }
  const head = el('tr', {}, el('th', { scope: 'col' }, 'Goal'), el('th', { scope: 'col' }, 'Visitors'), el('th', { scope: 'col' }, 'Conversions'), el('th', { scope: 'col' }, 'Rate'), el('th', { scope: 'col' }, 'Revenue'));
  const rows = goals.map((g) => {
    const revenue = format.currencies(g.revenue).map(([c, v]) => format.moneyLong(v, c)).join(', ') || '–';
    const bar = el('span', { class: 'fill' });
    bar.style.width = `${Math.min(100, Math.max(0, Number(g.conversion_rate) || 0))}%`;
    return el(
      'tr',
      { 'data-goal': g.name, 'data-users': g.converting_users, 'data-conversions': g.conversions, 'data-rate': g.conversion_rate },
      el(
        'th',
        { scope: 'row', class: 'goal-name' },
        bar,
        pick ? el('button', { type: 'button', class: 'link', title: `Filter the dashboard by the goal ${g.name}` }, g.name) : el('span', {}, g.name),
      ),
      el('td', {}, format.count(g.converting_users)),
      el('td', {}, format.count(g.conversions)),
      el('td', { class: 'goal-rate' }, pct(g.conversion_rate)),
      el('td', {}, revenue),
    );
  });
  const table = el('table', { class: 'table goals-table' }, el('thead', {}, head), el('tbody', {}, rows));
  if (pick) table.addEventListener('click', (e) => {
    const name = e.target.closest('.link') && e.target.closest('tr')?.dataset.goal;
    if (name) pick(name);
  });
  box.replaceChildren(el('div', { class: 'table-scroll' }, table));
}

/** A funnel: per step a bar of its users, with the conversion and median time from the step before. */
export function renderFunnel(box, answer) {
  const steps = answer.steps || [];
  const first = Number(steps[0]?.users) || 0;
  const items = steps.map((s, i) => {
    const bar = el('span', { class: 'funnel-bar' });
    bar.style.width = `${first ? Math.max(0.5, (Number(s.users) / first) * 100) : 0}%`;
    const detail =
      i === 0
        ? 'start'
        : `${pct(s.conversion_from_previous)} of the step before · ${pct(s.conversion_from_start)} of the start` +
          (s.median_seconds_from_previous === null || s.median_seconds_from_previous === undefined
            ? ''
            : ` · median ${format.duration(s.median_seconds_from_previous)} after it`);
    return el(
      'li',
      {
        class: 'funnel-step',
        'data-step': s.step,
        'data-users': s.users,
        'data-from-previous': s.conversion_from_previous,
        'data-from-start': s.conversion_from_start,
        'data-median': s.median_seconds_from_previous ?? '',
      },
      el('div', { class: 'funnel-head' }, el('span', { class: 'funnel-name' }, `${i + 1}. ${s.step}`), el('strong', { class: 'funnel-users' }, `${format.count(s.users)} visitors`)),
      el('div', { class: 'funnel-track' }, bar),
      el('div', { class: 'muted funnel-detail' }, detail),
    );
  });
  box.replaceChildren(steps.length ? el('ol', { class: 'funnel' }, items) : message('The funnel has no steps.'));
}

/** A retention table: per cohort its users and the share returning in each later period. */
export function renderRetention(box, answer, { period = 'week' } = {}) {
  const cohorts = answer.cohorts || [];
  if (!cohorts.length) {
    box.replaceChildren(message('No cohort starts in this range.'));
    return;
  }
  const periods = Math.max(...cohorts.map((c) => (c.returned || []).length));
  const unit = period === 'day' ? 'Day' : 'Week';
  const head = el(
    'tr',
    {},
    el('th', { scope: 'col' }, 'Cohort'),
    el('th', { scope: 'col' }, 'Visitors'),
    Array.from({ length: periods }, (_, k) => el('th', { scope: 'col' }, `${unit} ${k}`)),
  );
  const rows = cohorts.map((c) => {
    const users = Number(c.users) || 0;
    const cells = Array.from({ length: periods }, (_, k) => {
      const n = c.returned?.[k];
      if (n === undefined || n === null) return el('td', { class: 'retention-cell', 'data-k': k });
      // A cohort without visitors has no shares, only its zeros.
      const share = users ? (Number(n) / users) * 100 : 0;
      const td = el('td', { class: 'retention-cell', 'data-k': k, 'data-returned': n, title: `${format.count(n)} of ${format.count(users)} visitors` }, users ? pct(share) : '–');
      td.style.setProperty('--share', (share / 100).toFixed(3));
      return td;
    });
    return el('tr', { 'data-cohort': c.cohort, 'data-users': users }, el('th', { scope: 'row' }, c.cohort), el('td', {}, format.count(users)), cells);
  });
  box.replaceChildren(el('div', { class: 'table-scroll' }, el('table', { class: 'table retention-table' }, el('thead', {}, head), el('tbody', {}, rows))));
}
