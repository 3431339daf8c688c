// Building the page's elements: text always goes in as text, never as HTML.

export const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text, never HTML). */
export function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  n.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return n;
}

/** A short message in place of a panel's content: why it shows nothing. */
export function message(text, kind = 'muted') {
  return el('p', { class: `${kind} panel-message` }, text);
}
