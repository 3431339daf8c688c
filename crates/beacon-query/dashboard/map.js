// The world map beside the country list: the embedded world.svg (countries
// keyed by their ISO code), shaded by each country's share of the top count.
// The map is a file of the dashboard, so it loads without any network beyond Beacon.

let loaded = null;

/** The map's <svg>, fetched and parsed once. */
function load() {
  loaded ??= fetch('/assets/world.svg')
    .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((text) => new DOMParser().parseFromString(text, 'image/svg+xml').documentElement);
  return loaded;
}

/** Shade levels, 1 (least) to 5 (most): a count's share of the top one, on a square-root scale. */
export function level(count, top) {
  if (!count || !top) return 0;
  return Math.max(1, Math.min(5, Math.ceil(Math.sqrt(count / top) * 5)));
}

/**
 * Draw `rows` ({value: ISO code, count}) into `box`; `name` turns a code into a
 * country name, `pick` is called with the code of a clicked country.
 */
export async function drawMap(box, rows, { name, unit, pick }) {
  let svg = box.querySelector('svg');
  if (!svg) {
    try {
      svg = document.importNode(await load(), true);
    } catch {
      box.hidden = true;
      return;
    }
    svg.setAttribute('role', 'img');
    svg.setAttribute('class', 'world');
    box.replaceChildren(svg);
    svg.addEventListener('click', (e) => {
      const code = e.target.closest('path[data-count]')?.id;
      if (code) pick(code.toUpperCase());
    });
  }
  // Only countries have a shape: `(none)` shades nothing and sets no scale.
  const counts = new Map(rows.filter((r) => /^[A-Za-z]{2}$/.test(r.value)).map((r) => [r.value.toLowerCase(), r.count]));
  const top = Math.max(0, ...counts.values());
  for (const path of svg.querySelectorAll('path')) {
    const count = counts.get(path.id) || 0;
    path.dataset.level = String(level(count, top));
    if (count) path.dataset.count = String(count);
    else delete path.dataset.count;
    let title = path.querySelector('title');
    if (!title) {
      title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
      path.append(title);
    }
    title.textContent = `${name(path.id.toUpperCase())}: ${count} ${unit}`;
  }
  svg.setAttribute('aria-label', `World map of ${unit} by country`);
}
