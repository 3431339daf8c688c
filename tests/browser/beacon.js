// A real Beacon for the browser tests: `beacon up` on a free port of
// 127.0.0.1 with its own nats-server, a temporary data folder and a config
// with known keys; helpers to send events and ask the API; a clean stop.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const KEYS = {
  /** Reads both sites: the dashboard shows a site picker. */
  team: 'rk_browser_team_00000000',
  shopWrite: 'wk_browser_shop_00000000',
  wikiWrite: 'wk_browser_wiki_00000000',
};

/** "shop" gets the known events (and the tracker's, from pages on localhost) and three goals; "wiki" stays empty. */
const CONFIG = `
[[sites]]
id = "shop"
write_keys = ["${KEYS.shopWrite}"]
read_keys = ["${KEYS.team}"]
rate_limit = 0
domains = ["localhost"]

[[sites.goals]]
name = "Signup"
event = "signup"

[[sites.goals]]
name = "Pricing"
path = "/pricing*"

[[sites.goals]]
name = "Purchase"
event = "purchase"

[[sites]]
id = "wiki"
write_keys = ["${KEYS.wikiWrite}"]
read_keys = ["${KEYS.team}"]
rate_limit = 0
`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `check` until it returns something truthy, for at most `ms`. */
export async function until(what, check, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => null);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

export class Beacon {
  /**
   * Start `beacon up` and wait (bounded) until it answers queries. With
   * `fresh`, there is no config: Beacon's first start writes its own, and
   * `readKey` holds the read key it made.
   */
  static async start({ fresh = false } = {}) {
    const bin = process.env.BEACON_BIN || path.join(ROOT, 'target/debug/beacon');
    const nats = process.env.BEACON_TEST_NATS_SERVER || path.join(ROOT, 'tools/nats-server-2.12.8/bin/nats-server');
    const dir = mkdtempSync(path.join(tmpdir(), 'beacon-browser-'));
    if (!fresh) writeFileSync(path.join(dir, 'beacon.toml'), CONFIG);
    const env = { ...process.env, BEACON_NATS__SERVER_BINARY: nats, BEACON_LOG: 'warn' };
    delete env.BEACON_NATS_URL;
    delete env.BEACON_CONFIG;
    // Its own process group, so a stop that comes to SIGKILL takes the
    // nats-server it started along.
    const child = spawn(bin, ['up', '--listen', '127.0.0.1:0'], {
      cwd: dir,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const beacon = new Beacon(child, dir);
    const lines = createInterface({ input: child.stdout });
    const url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('beacon up printed no address within 120 s')), 120_000);
      child.once('exit', (code) => reject(new Error(`beacon up exited with ${code} before it was up`)));
      lines.on('line', (line) => {
        const found = /collector\s+(http:\/\/\S+?)\/api\/v1\/events/.exec(line);
        if (found) {
          clearTimeout(timer);
          resolve(found[1]);
        }
      });
    }).catch(async (e) => {
      await beacon.stop();
      throw e;
    });
    beacon.url = url;
    if (fresh) beacon.readKey = /rk_[0-9a-z]+/.exec(readFileSync(path.join(dir, 'beacon-data/beacon.toml'), 'utf8'))[0];
    await until('beacon to be ready', async () => (await fetch(`${url}/readyz`)).ok, 60_000);
    return beacon;
  }

  constructor(child, dir) {
    this.child = child;
    this.dir = dir;
    this.url = '';
    this.exited = new Promise((resolve) => child.once('exit', resolve));
    this.onExit = () => this.kill('SIGKILL');
    process.once('exit', this.onExit);
  }

  /** Pause (SIGSTOP) or resume (SIGCONT) the nats-server this Beacon started. */
  natsServer(signal) {
    const children = execFileSync('ps', ['-o', 'pid=,comm=', '--ppid', String(this.child.pid)], { encoding: 'utf8' });
    const line = children.split('\n').find((l) => l.includes('nats-server'));
    if (!line) throw new Error(`no nats-server among beacon's children: ${children}`);
    process.kill(Number(line.trim().split(/\s+/)[0]), signal);
  }

  kill(signal) {
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // Already gone.
    }
  }

  /** SIGTERM (Beacon stops its nats-server), SIGKILL after 30 s; then the data is removed. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      let timer;
      const late = new Promise((resolve) => {
        timer = setTimeout(() => resolve(false), 30_000);
      });
      const stopped = await Promise.race([this.exited.then(() => true), late]);
      clearTimeout(timer);
      if (!stopped) this.kill('SIGKILL');
    }
    process.removeListener('exit', this.onExit);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** POST events to the collector; the collector's answer. */
  async send(events, key = KEYS.shopWrite) {
    const response = await fetch(`${this.url}/api/v1/events`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(events),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`events refused: ${JSON.stringify(body)}`);
    return body;
  }

  /** GET an API path with the team key; the JSON answer (throws on an error status). */
  async api(pathAndQuery, key = KEYS.team) {
    const response = await fetch(`${this.url}${pathAndQuery}`, { headers: { Authorization: `Bearer ${key}` } });
    const body = await response.json();
    if (!response.ok) throw new Error(`${pathAndQuery}: ${response.status} ${JSON.stringify(body)}`);
    return body;
  }
}

const AGENTS = [
  'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15',
];
const COUNTRIES = ['DE', 'US', 'FR', 'GB', 'NL', 'US', 'DE', 'JP'];
const REFERRERS = [undefined, 'https://www.google.com/', 'https://news.ycombinator.com/', undefined, 'https://github.com/', 'https://www.google.com/'];
const PAGES = ['/', '/', '/pricing', '/docs', '/docs/install', '/blog/launch', '/pricing', '/about'];

/** A small seeded generator (mulberry32), so every run sends the same visits. */
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The known events: 30 users' visits over the last 22 minutes, each one to
 * six page views from one browser, country and referrer; a signup on
 * /pricing for some, and purchases in USD and EUR for a few. The same every
 * run but for the times, which follow `now`. User u-1 browses with Firefox.
 */
export function knownEvents(now = Date.now()) {
  const next = random(7);
  const pick = (list) => list[Math.floor(next() * list.length)];
  const events = [];
  for (let u = 1; u <= 30; u++) {
    const user = `u-${u}`;
    const agent = u === 1 ? AGENTS[0] : pick(AGENTS);
    const country = pick(COUNTRIES);
    const referrer = pick(REFERRERS);
    let at = now - (2 + next() * 20) * 60_000;
    const add = (name, page, extra = {}) => {
      events.push({
        id: `known-${events.length}`,
        name,
        user_id: user,
        ts: new Date(Math.min(at, now - 5_000)).toISOString(),
        props: { path: page },
        context: {
          user_agent: agent,
          country,
          url: `https://shop.example${page}`,
          ...(referrer && events.at(-1)?.user_id !== user ? { referrer } : {}),
        },
        ...extra,
      });
      at += (20 + next() * 70) * 1000;
    };
    const views = 1 + Math.floor(next() * next() * 6);
    for (let v = 0; v < views; v++) add('pageview', v === 0 ? pick(PAGES) : pick(PAGES.slice(1)));
    if (events.some((e) => e.user_id === user && e.props.path === '/pricing') && next() < 0.6) {
      add('signup', '/pricing');
      if (next() < 0.5) {
        const [amount, currency] = pick([['19.00', 'USD'], ['49.00', 'USD'], ['49.00', 'USD'], ['29.00', 'EUR']]);
        add('purchase', '/checkout', { revenue: { amount, currency } });
      }
    }
  }
  return events;
}

/** What the known events add up to, computed here, not by Beacon. */
export function expected(events) {
  const revenue = {};
  for (const e of events.filter((e) => e.revenue)) {
    revenue[e.revenue.currency] = (revenue[e.revenue.currency] || 0) + Number(e.revenue.amount);
  }
  return {
    events: events.length,
    pageviews: events.filter((e) => e.name === 'pageview').length,
    users: new Set(events.map((e) => e.user_id)).size,
    revenue,
    pageviewsOn: (path) => events.filter((e) => e.name === 'pageview' && e.props.path === path).length,
  };
}
