// How figures read on the page: counts, rates, durations, money, changes and
// times, in the browser's locale.

const counts = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

/** A count: 1,234, or 1.2M once it is too long for a card. */
export function count(n) {
  if (n === null || n === undefined) return '–';
  return Math.abs(n) >= 1_000_000 ? compact.format(n) : counts.format(n);
}

/** A rate between 0 and 1 as a percentage. */
export function percent(rate) {
  if (rate === null || rate === undefined) return '–';
  return `${(rate * 100).toFixed(1)}%`;
}

/** Seconds as 45s, 3m 05s or 2h 10m. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** An amount (a decimal string or a number) in an ISO currency. */
export function money(amount, currency) {
  const n = Number(amount);
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency, currencyDisplay: 'narrowSymbol' }).format(n);
  } catch {
    return `${amount} ${currency}`;
  }
}

/** Events per second, with one decimal below ten. */
export function rate(n) {
  if (n === null || n === undefined) return '–';
  return n < 10 ? n.toFixed(1) : counts.format(n);
}

/** Digits after the decimal point of `currency` (2 for USD, 0 for JPY). */
function minorDigits(currency) {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/**
 * A revenue object's currencies, largest first: `[[currency, amount]]`.
 * Amounts in different currencies cannot be compared without rates, so a
 * currency without cents (JPY, KRW) counts at a hundredth: ¥226,200 ranks
 * below $8,493, not above it as raw numbers would.
 */
export function currencies(revenue) {
  const weight = ([currency, amount]) => Number(amount) / 10 ** Math.max(0, 2 - minorDigits(currency));
  return Object.entries(revenue || {})
    .filter(([, amount]) => Number(amount) !== 0)
    .sort((a, b) => weight(b) - weight(a) || a[0].localeCompare(b[0]));
}

/** The currency the revenue card shows large, if any. */
export function mainCurrency(revenue) {
  return currencies(revenue)[0]?.[0] ?? null;
}

/** An amount in its currency with an unambiguous symbol (US$ and CA$, not two $), never shortened. */
export function moneyLong(amount, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency, currencyDisplay: 'symbol' }).format(Number(amount));
  } catch {
    return `${amount} ${currency}`;
  }
}

/**
 * The change against the previous period, as shown under a card: its text,
 * its tone (good, bad, flat or none) and a longer title. `change` is
 * relative (0.25 is +25 %), except for rates, where it is the difference.
 */
export function change(change, { isRate = false, lowerIsBetter = false, previousKnown = true, previous = null, value = null } = {}) {
  if (!previousKnown) return { text: 'no earlier data', tone: 'none', title: 'The period before is past retention.' };
  if (change === null || change === undefined) {
    const fresh = (previous === 0 || previous === null) && Number(value) > 0;
    return { text: fresh ? 'new' : '–', tone: 'none', title: 'Nothing to compare with in the period before.' };
  }
  if (change === 0) return { text: '±0%', tone: 'flat', title: 'Same as the period before.' };
  const up = change > 0;
  const size = isRate ? `${Math.abs(change * 100).toFixed(1)} pts` : `${Math.abs(change * 100).toFixed(change >= 10 ? 0 : 1)}%`;
  const good = up !== lowerIsBetter;
  return {
    text: `${up ? '▲' : '▼'} ${size}`,
    tone: good ? 'good' : 'bad',
    title: `${up ? 'Up' : 'Down'} ${size} against the period before.`,
  };
}

/** A bucket's start, for a chart's axis (short) and its hover value (long). */
export function bucket(start, interval, tz) {
  const at = new Date(start);
  const opts = { timeZone: tz };
  if (interval === '1d') {
    return {
      tick: at.toLocaleDateString(undefined, { ...opts, day: 'numeric', month: 'short' }),
      long: at.toLocaleDateString(undefined, { ...opts, weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' }),
    };
  }
  const time = at.toLocaleTimeString(undefined, { ...opts, hour: '2-digit', minute: '2-digit' });
  return {
    tick: time,
    long: `${at.toLocaleDateString(undefined, { ...opts, weekday: 'short', day: 'numeric', month: 'short' })}, ${time}`,
  };
}

/** A range's edges as the API answered them, for the line above the cards. */
export function span(from, to, tz) {
  const opts = { timeZone: tz, day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' };
  const a = new Date(from).toLocaleString(undefined, opts);
  const b = new Date(to).toLocaleString(undefined, opts);
  return `${a} – ${b}`;
}

/** A clock time (HH:MM:SS) in `tz` (the browser's zone when not given). */
export function clock(iso, tz = undefined) {
  return new Date(iso).toLocaleTimeString(undefined, { timeZone: tz, hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A scroll depth, already in % of the page (0–100). */
export function depth(value) {
  if (value === null || value === undefined) return '–';
  return `${Number(value).toFixed(1)}%`;
}

/** The total of a count per reason (filtered traffic), or 0. */
export function total(byReason) {
  return Object.values(byReason || {}).reduce((sum, n) => sum + Number(n || 0), 0);
}

const regions = (() => {
  try {
    return new Intl.DisplayNames(undefined, { type: 'region' });
  } catch {
    return null;
  }
})();

/** A country's name in the browser's language from its ISO code (DE → Germany); the code itself when unknown. */
export function country(code) {
  if (!/^[A-Za-z]{2}$/.test(code || '')) return code;
  try {
    return regions?.of(code.toUpperCase()) || code;
  } catch {
    return code;
  }
}
