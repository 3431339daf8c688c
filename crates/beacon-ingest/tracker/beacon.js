/*! Beacon tracker, no cookies. docs/TRACKER.md */
// Page views (SPA too), outbound links, downloads, opt-in 404s, custom events
// and engagement. The collector serves this file without its comment lines
// and indentation: keep every comment on a line of its own.
(() => {
  const w = window, d = document, l = location, s = d.currentScript;
  if (!s) return;
  const data = (n) => s.getAttribute('data-' + n);
  const api = (data('api') || new URL(s.src).origin) + '/api/v1/track';
  const site = data('site');
  const domain = data('domain') || (site ? void 0 : l.hostname);
  const hashes = data('hash') != null;
  // data-exclude="/admin/*, /drafts/**": * is one path segment, ** any.
  const excluded = (data('exclude') || '').split(',').filter((g) => g.trim()).map((g) => RegExp('^' +
    g.trim().replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*\*?/g, (m) => m[1] ? '.*' : '[^/]*') + '$'));
  const get = (k) => { try { return localStorage.getItem(k); } catch { return null; } };
  const QUEUE = 'beacon_queue';
  let memory = [];
  const load = () => { try { return JSON.parse(get(QUEUE)) || memory; } catch { return memory; } };
  const save = (q) => {
    // Bounded: the oldest events go first.
    memory = q.slice(-100);
    try { localStorage.setItem(QUEUE, JSON.stringify(memory)); } catch { /* memory only */ }
  };

  // Events go to the queue first and leave it only once the collector has
  // answered for them, so a retry (after 429, 503, or offline) sends the same
  // ids and counts once. Two tabs may send one event twice: it dedupes.
  const flying = new Set();
  let timer = 0, backoff = 1;
  const send = () => {
    const batch = load().filter((e) => !flying.has(e.id)).slice(0, 50);
    if (timer || !batch.length) return;
    batch.forEach((e) => flying.add(e.id));
    const done = (ok, wait) => {
      batch.forEach((e) => flying.delete(e.id));
      if (ok) {
        save(load().filter((e) => !batch.some((b) => b.id === e.id)));
        backoff = 1;
        send();
      } else if (!timer) {
        timer = setTimeout(() => { timer = 0; send(); }, 1e3 * (wait || backoff));
        backoff = Math.min(backoff * 2, 300);
      }
    };
    // keepalive: the request outlives the page (a click that leaves it);
    // text/plain: a simple request, no CORS preflight.
    fetch(api, {
      method: 'POST', keepalive: true, headers: { 'Content-Type': 'text/plain' },
      body: JSON.stringify({ site, domain, sent_at: Date.now(), events: batch }),
    // A 4xx but 429 is final: the same events would be refused again.
    }).then((r) => done(r.status < 500 && r.status !== 429, +r.headers.get('Retry-After')), () => done());
  };
  w.addEventListener('online', () => { clearTimeout(timer); timer = 0; send(); });

  const path = () => l.pathname + (hashes ? l.hash : '');
  const track = (name, o = {}, url = l.href) => {
    if (get('beacon_ignore') === 'true' || excluded.some((g) => g.test(path()))) return;
    const id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => (b | 256).toString(16).slice(1)).join('');
    // With data-hash the page's path includes its hash route, which a URL's path leaves out.
    const h = hashes && new URL(url).hash, props = h ? { path: new URL(url).pathname + h, ...o.props } : o.props;
    save([...load(), { id, name, ts: Date.now(), url, referrer: o.referrer || void 0, props, revenue: o.revenue }]);
    send();
  };

  // Engagement: visible time and deepest scroll of the current page, sent as
  // an `engagement` ping when the page is hidden or left.
  let shown = 0, engaged = 0, depth = 0, page, last;
  const scrolled = () => {
    const h = d.documentElement.scrollHeight;
    depth = Math.max(depth, Math.min(100, Math.round(100 * (scrollY + innerHeight) / h)));
  };
  const engage = () => {
    if (shown) engaged += Date.now() - shown;
    shown = d.visibilityState === 'visible' ? Date.now() : 0;
    if (page && engaged > 0) track('engagement', { props: { engaged_ms: engaged, scroll_depth: depth } }, page);
    engaged = 0;
  };
  w.addEventListener('scroll', scrolled, { passive: true });
  d.addEventListener('visibilitychange', engage);
  w.addEventListener('pagehide', engage);

  const pageview = () => {
    if (last === path()) return;
    const first = !last;
    last = path();
    engage();
    page = l.href;
    depth = 0;
    // After the new view has rendered.
    setTimeout(scrolled);
    track('pageview', { referrer: first && d.referrer });
    const nav = performance.getEntriesByType('navigation')[0];
    if (first && data('404') != null && nav && nav.responseStatus === 404) track('404', { props: { path: last } });
  };
  const push = history.pushState;
  history.pushState = function (...a) {
    push.apply(this, a);
    pageview();
  };
  w.addEventListener('popstate', pageview);
  if (hashes) w.addEventListener('hashchange', pageview);

  const click = (e) => {
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || e.button > 1) return;
    const url = new URL(a.href, l.href), props = { url: url.href };
    if (!/^https?:$/.test(url.protocol)) return;
    if (/\.(pdf|xlsx?|docx?|pptx?|csv|txt|zip|rar|7z|t?gz|dmg|pkg|exe|msi|apk|mp3|mp4|mov|epub|iso)$/i.test(url.pathname)) track('File Download', { props });
    else if (url.host !== l.host) track('Outbound Link: Click', { props });
  };
  d.addEventListener('click', click, true);
  d.addEventListener('auxclick', click, true);

  // The global API: beacon('Signup', {props, revenue: {amount, currency}}),
  // also as plausible(…) for pages written for Plausible. Calls made before
  // the script loaded wait in beacon.q / plausible.q.
  const api$ = (name, o) => track(name, o);
  for (const n of ['beacon', 'plausible']) {
    const early = (w[n] && w[n].q) || [];
    if (n === 'beacon' || !w[n] || w[n].q) w[n] = api$;
    early.forEach((a) => api$(...a));
  }
  // What earlier pages left in the queue goes too.
  send();
  pageview();
})();
