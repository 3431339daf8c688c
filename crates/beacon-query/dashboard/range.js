// Which stretch of time each choice of the range picker asks the API about.
//
// Two rules of the API shape these questions (docs/QUERY.md):
// - With a filter, the rollups answer from hour buckets, so filtered
//   questions must cover whole hours. Realtime then reads the hours that hold
//   the last 30 minutes, per hour; the other ranges already end on an hour.
// - Minute buckets are kept for 48 hours. Ranges end on the next whole hour
//   (not "now"), so the period before them, which summaries compare with, also
//   starts on an hour and stays answerable for months.

export const RANGES = [
  { id: 'realtime', label: 'Realtime (30 min)' },
  { id: 'today', label: 'Today' },
  { id: 'yesterday', label: 'Yesterday' },
  { id: '7d', label: 'Last 7 days' },
  { id: '30d', label: 'Last 30 days' },
  { id: 'custom', label: 'Custom…' },
];

const MINUTE = 60_000;
const HOUR = 3_600_000;
/** The API's limit on points per series. */
const MAX_POINTS = 1500;

/** The date (YYYY-MM-DD) that `ms` falls on in `tz`. */
export function dateIn(ms, tz) {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: tz,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
  }).formatToParts(new Date(ms));
  const part = (type) => parts.find((p) => p.type === type).value;
  return `${part('year')}-${part('month')}-${part('day')}`;
}

/** `date` (YYYY-MM-DD) moved by `days`. */
export function addDays(date, days) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

/** Whole days from `from` to `to`, both included. */
function daysBetween(from, to) {
  return Math.round((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / 86_400_000) + 1;
}

/** Minutes `tz` is ahead of UTC at `ms`. */
export function offsetMinutes(ms, tz) {
  const name = new Intl.DateTimeFormat('en-US', { timeZone: tz, timeZoneName: 'longOffset' })
    .formatToParts(new Date(ms))
    .find((p) => p.type === 'timeZoneName').value;
  const m = /GMT([+-])(\d{1,2}):?(\d{2})?/.exec(name);
  if (!m) return 0;
  const minutes = Number(m[2]) * 60 + Number(m[3] || 0);
  return m[1] === '-' ? -minutes : minutes;
}

/** Whether `tz` names a zone this browser knows. */
export function knownZone(tz) {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const instant = (ms) => new Date(ms).toISOString().replace('.000Z', 'Z');

/**
 * The question for `range` at `now` (Unix ms) in zone `tz`: `from`, `to` and
 * `interval` as the API takes them, the zone to send, and a `note` when the
 * question had to differ from what was picked. `custom` holds the dates of a
 * custom range. Throws an Error saying what is wrong with a custom range.
 */
export function period(range, { now, tz, filtered = false, custom = {} }) {
  const short = range === 'realtime' || range === 'today';
  let zone = tz;
  let note = '';
  // The rollups keep UTC hours: in a zone a half hour off, local hours and
  // days are not whole rollup hours, so questions that need them use UTC.
  if ((filtered || !short) && offsetMinutes(now, tz) % 60 !== 0) {
    zone = 'UTC';
    note = `Times are in UTC: ${tz} is not a whole number of hours from UTC, and this question needs whole hours.`;
  }
  const today = dateIn(now, zone);
  const nextHour = instant(Math.ceil(now / HOUR) * HOUR);
  const answer = (from, to, interval) => ({ from, to, interval, tz: zone, note });
  switch (range) {
    case 'realtime':
      if (!filtered) return answer('-30m', 'now', '1m');
      return {
        ...answer(instant(Math.floor((now - 30 * MINUTE) / HOUR) * HOUR), nextHour, '1h'),
        note: note || 'With a filter the numbers come per whole hour: these are the hours of the last 30 minutes.',
      };
    case 'today':
      return answer(today, nextHour, '1h');
    case 'yesterday': {
      const day = addDays(today, -1);
      return answer(day, day, '1h');
    }
    case '7d':
      return answer(addDays(today, -6), nextHour, '1d');
    case '30d':
      return answer(addDays(today, -29), nextHour, '1d');
    case 'custom': {
      const { from, to } = custom;
      const date = /^\d{4}-\d{2}-\d{2}$/;
      if (!date.test(from || '') || !date.test(to || '')) {
        throw new Error('Pick both dates of the custom range.');
      }
      const days = daysBetween(from, to);
      if (days < 1) throw new Error('The custom range ends before it starts.');
      const interval = days <= 2 ? '1h' : '1d';
      if (days > MAX_POINTS) throw new Error(`A custom range may be at most ${MAX_POINTS} days.`);
      return answer(from, to, interval);
    }
    default:
      throw new Error(`unknown range ${range}`);
  }
}

/** What the cards' changes are measured against (the API's `compare`). */
export const COMPARISONS = [
  { id: 'previous_period', label: 'Previous period', text: 'the period before' },
  { id: 'previous_year', label: 'Same period last year', text: 'the same period last year' },
  { id: 'custom', label: 'Custom…', text: 'the chosen period' },
];
