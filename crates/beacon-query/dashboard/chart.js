// A small line chart in SVG: one series over time, with the value under the
// pointer shown beside a guide line. The arrow keys move the same guide for
// keyboard users; the chart redraws itself when its box changes size.

const NS = 'http://www.w3.org/2000/svg';
const PAD = { left: 52, right: 14, top: 14, bottom: 26 };

/** Each chart box's data and drawing state. */
const charts = new WeakMap();

/** Redraws a chart whose box changed size (made on first use). */
let resized = null;

function watchWidth(box) {
  resized ??= new ResizeObserver((entries) => {
    for (const entry of entries) {
      const d = charts.get(entry.target);
      const box = entry.target;
      if (d && (box.clientWidth !== d.width || box.clientHeight !== d.height)) render(box, d);
    }
  });
  resized.observe(box);
}

function node(tag, attrs = {}, text = '') {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text) n.textContent = text;
  return n;
}

/** A round number at or above `max`, for the top of the y axis. */
export function niceMax(max) {
  if (!(max > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= max - 1e-9) return step * magnitude;
  }
  return 10 * magnitude;
}

/**
 * Draw `data` in `box`: `points` ([{tick, long, value}], value null for "no
 * figure"), `format` (value → text), `name` (what is drawn, for the label)
 * and `integer` (counts: no gridline at fractions).
 */
export function drawChart(box, data) {
  const known = charts.get(box);
  const d = { ...data, active: known ? known.active : null };
  if (d.active !== null && d.active >= d.points.length) d.active = null;
  charts.set(box, d);
  if (!known) {
    wire(box);
    watchWidth(box);
  }
  render(box, d);
}

function geometry(box, d) {
  const width = Math.max(box.clientWidth, 220);
  const height = Math.max(box.clientHeight, 160);
  const w = width - PAD.left - PAD.right;
  const h = height - PAD.top - PAD.bottom;
  const values = d.points.map((p) => p.value).filter((v) => v !== null && Number.isFinite(v));
  const top = niceMax(Math.max(0, ...values));
  const n = d.points.length;
  const step = n > 1 ? w / (n - 1) : 0;
  return {
    width,
    height,
    w,
    h,
    top,
    step,
    x: (i) => PAD.left + (n > 1 ? i * step : w / 2),
    y: (v) => PAD.top + h - (v / top) * h,
  };
}

function render(box, d) {
  const g = geometry(box, d);
  d.width = box.clientWidth;
  d.height = box.clientHeight;
  d.g = g;
  const root = node('svg', { viewBox: `0 0 ${g.width} ${g.height}`, width: g.width, height: g.height, 'aria-hidden': 'true' });
  for (const f of [0, 0.5, 1]) {
    const v = g.top * f;
    // Counts get no gridline at a fraction.
    if (d.integer && !Number.isInteger(v)) continue;
    root.append(node('line', { class: 'grid', x1: PAD.left, x2: g.width - PAD.right, y1: g.y(v), y2: g.y(v) }));
    root.append(node('text', { class: 'axis', x: PAD.left - 8, y: g.y(v) + 4, 'text-anchor': 'end' }, d.format(v)));
  }
  const n = d.points.length;
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(g.w / 84))));
  for (let i = 0; i < n; i += every) {
    const anchor = n === 1 ? 'middle' : i === 0 ? 'start' : g.x(i) > g.width - 60 ? 'end' : 'middle';
    root.append(node('text', { class: 'axis', x: g.x(i), y: g.height - 8, 'text-anchor': anchor }, d.points[i].tick));
  }
  // Lines break where a bucket has no figure (a rate without sessions).
  const runs = [];
  let run = [];
  d.points.forEach((p, i) => {
    if (p.value === null || !Number.isFinite(p.value)) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push([g.x(i), g.y(p.value)]);
    }
  });
  if (run.length) runs.push(run);
  const base = g.y(0);
  for (const r of runs) {
    const line = r.map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join('');
    if (r.length === 1) {
      root.append(node('circle', { class: 'point', cx: r[0][0], cy: r[0][1], r: 3 }));
      continue;
    }
    root.append(node('path', { class: 'area', d: `${line}L${r[r.length - 1][0].toFixed(1)},${base}L${r[0][0].toFixed(1)},${base}Z` }));
    root.append(node('path', { class: 'line', d: line }));
  }
  d.guide = node('line', { class: 'guide', y1: PAD.top, y2: PAD.top + g.h, x1: 0, x2: 0, visibility: 'hidden' });
  d.dot = node('circle', { class: 'dot', r: 4, cx: 0, cy: 0, visibility: 'hidden' });
  root.append(d.guide, d.dot);
  d.tip = document.createElement('div');
  d.tip.className = 'chart-tip';
  d.tip.hidden = true;
  d.tip.setAttribute('aria-live', 'polite');
  box.replaceChildren(root, d.tip);
  const highest = Math.max(0, ...d.points.map((p) => p.value ?? 0));
  box.setAttribute('aria-label', `${d.name}: ${n} points, highest ${d.format(highest)}. Use the arrow keys to read each point.`);
  if (d.active !== null) show(box, d.active);
}

function show(box, i) {
  const d = charts.get(box);
  if (!d || !d.points.length) return;
  const index = Math.min(Math.max(i, 0), d.points.length - 1);
  d.active = index;
  const p = d.points[index];
  const x = d.g.x(index);
  for (const attr of ['x1', 'x2']) d.guide.setAttribute(attr, x);
  d.guide.setAttribute('visibility', 'visible');
  const known = p.value !== null && Number.isFinite(p.value);
  if (known) {
    d.dot.setAttribute('cx', x);
    d.dot.setAttribute('cy', d.g.y(p.value));
  }
  d.dot.setAttribute('visibility', known ? 'visible' : 'hidden');
  const value = document.createElement('strong');
  value.textContent = known ? d.format(p.value) : 'no figure';
  const when = document.createElement('span');
  when.textContent = p.long;
  d.tip.replaceChildren(value, when);
  d.tip.dataset.index = String(index);
  d.tip.hidden = false;
  const half = d.tip.offsetWidth / 2;
  d.tip.style.left = `${Math.min(Math.max(x - half, 0), d.g.width - 2 * half)}px`;
}

function hide(box) {
  const d = charts.get(box);
  if (!d || !d.tip) return;
  d.active = null;
  d.tip.hidden = true;
  d.guide.setAttribute('visibility', 'hidden');
  d.dot.setAttribute('visibility', 'hidden');
}

function wire(box) {
  box.tabIndex = 0;
  box.addEventListener('pointermove', (e) => {
    const d = charts.get(box);
    if (!d || !d.g) return;
    const px = e.clientX - box.getBoundingClientRect().left;
    show(box, d.g.step ? Math.round((px - PAD.left) / d.g.step) : 0);
  });
  box.addEventListener('pointerleave', () => hide(box));
  box.addEventListener('blur', () => hide(box));
  box.addEventListener('focus', () => {
    const d = charts.get(box);
    if (d && d.active === null) show(box, d.points.length - 1);
  });
  box.addEventListener('keydown', (e) => {
    const d = charts.get(box);
    if (!d) return;
    const moves = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const at = d.active ?? d.points.length - 1;
    const next = Number.isFinite(moves[e.key]) ? at + moves[e.key] : moves[e.key] < 0 ? 0 : d.points.length - 1;
    show(box, next);
  });
}
