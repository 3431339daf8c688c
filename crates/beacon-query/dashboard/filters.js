// The filter list as the API reads it (docs/QUERY.md, `filters`): filters
// joined by `;`, each `<dimension><operator><value>[|<value>…]`, with `\`
// escaping `;`, `|` and `\` inside values. The page keeps the same string in
// its address, so one parser serves the address and the question.

/** The operators, longest first so `!*=` is not read as `!` + `*=`; each with how a chip says it. */
export const OPERATORS = [
  { op: '!*=', label: 'does not contain' },
  { op: '==', label: 'is' },
  { op: '!=', label: 'is not' },
  { op: '*=', label: 'contains' },
  { op: '~=', label: 'matches' },
];

const SPECIAL = /[;|\\]/g;

/** A value with `;`, `|` and `\` escaped. */
export function escapeValue(value) {
  return value.replace(SPECIAL, (c) => `\\${c}`);
}

/** One filter `{dimension, op, values}` as the API writes it. */
export function formatFilter({ dimension, op, values }) {
  return `${dimension}${op}${values.map(escapeValue).join('|')}`;
}

/** A filter list as the `filters` parameter ('' when empty). */
export function formatFilters(filters) {
  return filters.map(formatFilter).join(';');
}

/**
 * Split `text` at unescaped `sep` characters, dropping the escapes. Returns
 * the parts, or throws when the text ends in a lone `\`.
 */
function split(text, sep) {
  const parts = [''];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') {
      if (i + 1 === text.length) throw new Error(`"${text}" ends with a lone \\`);
      // Keep the escape for the inner split; the last split drops it.
      parts[parts.length - 1] += sep === ';' ? c + text[i + 1] : text[i + 1];
      i++;
    } else if (c === sep) {
      parts.push('');
    } else {
      parts[parts.length - 1] += c;
    }
  }
  return parts;
}

/**
 * The filter list in a `filters` string: `[{dimension, op, values}]`.
 * Throws an Error naming the filter that cannot be read.
 */
export function parseFilters(text) {
  if (!text) return [];
  return split(text, ';').map((part) => {
    // The dimension is a plain name: the first operator after it ends it.
    const m = /^([A-Za-z0-9_.:$-]+?)(!\*=|==|!=|\*=|~=)/.exec(part);
    if (!m) throw new Error(`"${part}" is not <dimension><operator><values>`);
    const values = split(part.slice(m[0].length), '|');
    if (values.some((v) => v === '')) throw new Error(`"${part}" has an empty value`);
    return { dimension: m[1], op: m[2], values };
  });
}

/** How an operator reads in a chip. */
export function operatorLabel(op) {
  return OPERATORS.find((o) => o.op === op)?.label ?? op;
}

/** The list with `filter` in the place of any filter on the same dimension and operator. */
export function withFilter(filters, filter) {
  const rest = filters.filter((f) => !(f.dimension === filter.dimension && f.op === filter.op));
  return [...rest, filter];
}

/**
 * Whether a feed event (the live panel's, with its dimensions as fields and
 * `props`) passes every filter, as the API would judge it. Regular
 * expressions the browser cannot compile pass, so the feed never hides
 * everything over a syntax difference between Rust's regex and JavaScript's.
 */
export function passes(event, filters) {
  return filters.every(({ dimension, op, values }) => {
    const raw = dimension.startsWith('props.') ? event.props?.[dimension.slice(6)] : event[dimension];
    // Entry and exit pages are session figures the feed does not know.
    if (raw === undefined && (dimension === 'entry_page' || dimension === 'exit_page' || dimension === 'goal')) return true;
    const value = raw === undefined || raw === null ? '(none)' : String(raw);
    const lower = value.toLowerCase();
    const any = {
      '==': () => values.includes(value),
      '!=': () => !values.includes(value),
      '*=': () => values.some((v) => lower.includes(v.toLowerCase())),
      '!*=': () => !values.some((v) => lower.includes(v.toLowerCase())),
      '~=': () =>
        values.some((v) => {
          try {
            return new RegExp(v).test(value);
          } catch {
            return true;
          }
        }),
    }[op];
    return any ? any() : true;
  });
}
