//! Realistic traffic, the same for the same seed: visitors arrive from search,
//! social sites, newsletters or directly, read a few pages of a catalogue
//! whose popularity is skewed (Zipf-like), and some of them sign up, log in
//! (a share of logins fail), add to the cart, check out and buy, with revenue
//! in the currency of their country. Each visitor keeps one browser, OS and
//! device, given by a real user agent string.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

/// One generated event, before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    /// Index of the event's site among the simulated ones.
    pub site: usize,
    pub id: String,
    pub name: &'static str,
    pub user: String,
    pub ts_ms: i64,
    pub path: String,
    pub props: Vec<(&'static str, Value)>,
    pub revenue: Option<(Decimal, &'static str)>,
    pub referrer: Option<&'static str>,
    pub user_agent: &'static str,
    pub country: &'static str,
}

impl SimEvent {
    /// The native event body (`POST /api/v1/events`, or `beacon.ingest.<site>`).
    pub fn to_json(&self) -> Value {
        let mut props = Map::new();
        props.insert("path".into(), self.path.clone().into());
        for (k, v) in &self.props {
            props.insert((*k).into(), v.clone());
        }
        let mut context = Map::new();
        context.insert("user_agent".into(), self.user_agent.into());
        context.insert("country".into(), self.country.into());
        if let Some(r) = self.referrer {
            context.insert("referrer".into(), r.into());
        }
        let mut event = json!({
            "id": self.id,
            "name": self.name,
            "user_id": self.user,
            "ts": chrono::DateTime::from_timestamp_millis(self.ts_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "props": props,
            "context": context,
        });
        if let Some((amount, currency)) = &self.revenue {
            event["revenue"] = json!({"amount": amount.to_string(), "currency": currency});
        }
        event
    }
}

/// Weighted choices: (item, weight).
fn pick<T: Copy>(rng: &mut StdRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut at = rng.random_range(0..total);
    for (item, w) in items {
        if at < *w {
            return *item;
        }
        at -= w;
    }
    items[items.len() - 1].0
}

const USER_AGENTS: [(&str, u32); 8] = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        30,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
        12,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        18,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
        16,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        7,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        3,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        8,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
        6,
    ),
];

const REFERRERS: [(Option<&str>, u32); 8] = [
    (Some("https://www.google.com/search?q=beacon+analytics"), 38),
    (None, 28),
    (Some("https://t.co/x1Yz"), 7),
    (Some("https://www.facebook.com/"), 6),
    (Some("https://news.ycombinator.com/item?id=4242"), 5),
    (Some("https://github.com/search?q=analytics"), 5),
    (Some("https://duckduckgo.com/"), 6),
    (Some("https://www.bing.com/search?q=analytics"), 5),
];

const COUNTRIES: [(&str, u32); 8] = [
    ("US", 34),
    ("DE", 14),
    ("GB", 11),
    ("FR", 9),
    ("IN", 10),
    ("BR", 7),
    ("JP", 6),
    ("NL", 9),
];

fn currency_of(country: &str) -> &'static str {
    match country {
        "DE" | "FR" | "NL" => "EUR",
        "GB" => "GBP",
        "JP" => "JPY",
        _ => "USD",
    }
}

const PRODUCTS: [(&str, i64, u32); 6] = [
    ("t-shirt", 1999, 30),
    ("mug", 1299, 25),
    ("hoodie", 4999, 15),
    ("sticker-pack", 499, 20),
    ("backpack", 8999, 6),
    ("annual-plan", 19900, 4),
];

/// The page catalogue: fixed pages first, then articles and products.
fn catalogue() -> Vec<String> {
    let mut pages: Vec<String> = ["/", "/pricing", "/features", "/blog", "/docs", "/about"]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    pages.extend((1..=24).map(|i| format!("/blog/post-{i}")));
    pages.extend(PRODUCTS.iter().map(|(p, _, _)| format!("/shop/{p}")));
    pages
}

/// What a visitor does in a session, decided when it starts.
#[derive(Debug, Clone)]
struct Visit {
    user: usize,
    referrer: Option<&'static str>,
    /// Page views left to do before the funnel steps.
    pages_left: u32,
    steps: Vec<Step>,
    page: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Signup,
    Login { ok: bool },
    AddToCart(usize),
    Checkout(usize),
    Purchase(usize),
}

/// A visitor's fixed traits.
#[derive(Debug, Clone, Copy)]
struct Visitor {
    user_agent: &'static str,
    country: &'static str,
    site: usize,
}

/// Generates events in time order.
pub struct Traffic {
    rng: StdRng,
    /// Names the run's events and users, see [`run_id`].
    run: String,
    visitors: Vec<Visitor>,
    pages: Vec<String>,
    /// Cumulative Zipf weights over `pages`.
    page_weights: Vec<f64>,
    active: Vec<Visit>,
    busy: Vec<bool>,
    start_ms: i64,
    /// Milliseconds of simulated time per event, ×1000 (for sub-ms spacing).
    step_micros: i64,
    n: u64,
}

/// What names one run's events (`sim-<run>-<n>`) and users (`<run>-u<n>`):
/// the seed and the start. A second run with another seed or start sends
/// new events of new visitors, so it neither dedupes against nor joins the
/// sessions of an earlier one; the same seed and start repeat a run exactly.
pub fn run_id(seed: u64, start_ms: i64) -> String {
    format!("{seed}-{start_ms}")
}

impl Traffic {
    /// `users` visitors of `sites` sites (the first site the busiest, the
    /// second half as busy, and so on); events spaced evenly at `rate` per
    /// simulated second from `start_ms`.
    pub fn new(seed: u64, users: usize, sites: usize, start_ms: i64, rate: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let site_weights: Vec<(usize, u32)> = (0..sites.max(1))
            .map(|i| (i, (1000 / (i + 1)) as u32))
            .collect();
        let visitors = (0..users.max(1))
            .map(|_| Visitor {
                user_agent: pick(&mut rng, &USER_AGENTS),
                country: pick(&mut rng, &COUNTRIES),
                site: pick(&mut rng, &site_weights),
            })
            .collect();
        let pages = catalogue();
        let mut acc = 0.0;
        let page_weights = (1..=pages.len())
            .map(|rank| {
                acc += 1.0 / (rank as f64).powf(1.1);
                acc
            })
            .collect();
        // Each visit gets an event about every 20 simulated seconds.
        let concurrent = ((rate * 20.0) as usize).clamp(1, (users / 2).max(1));
        Traffic {
            rng,
            run: run_id(seed, start_ms),
            busy: vec![false; users.max(1)],
            visitors,
            pages,
            page_weights,
            active: Vec::with_capacity(concurrent),
            start_ms,
            step_micros: (1_000_000.0 / rate.max(0.001)) as i64,
            n: 0,
        }
        .filled(concurrent)
    }

    fn filled(mut self, concurrent: usize) -> Self {
        while self.active.len() < concurrent {
            let visit = self.new_visit();
            self.active.push(visit);
        }
        self
    }

    fn zipf_page(&mut self) -> String {
        let total = self.page_weights.last().copied().unwrap_or(1.0);
        let at = self.rng.random_range(0.0..total);
        let i = self.page_weights.partition_point(|w| *w < at);
        self.pages[i.min(self.pages.len() - 1)].clone()
    }

    fn new_visit(&mut self) -> Visit {
        // A visitor not already in the middle of a visit, if one is found quickly.
        let mut user = self.rng.random_range(0..self.visitors.len());
        for _ in 0..8 {
            if !self.busy[user] {
                break;
            }
            user = self.rng.random_range(0..self.visitors.len());
        }
        self.busy[user] = true;
        // Page views: 1 with probability 0.42 (a bounce, unless a step follows), else more.
        let mut pages_left = 1;
        while pages_left < 12 && self.rng.random_bool(0.58) {
            pages_left += 1;
        }
        let mut steps = Vec::new();
        let r: f64 = self.rng.random_range(0.0..1.0);
        if r < 0.05 {
            steps.push(Step::Signup);
        } else if r < 0.25 {
            // 15 % of logins fail; most who fail try again.
            if self.rng.random_bool(0.15) {
                steps.push(Step::Login { ok: false });
                if self.rng.random_bool(0.7) {
                    steps.push(Step::Login { ok: true });
                }
            } else {
                steps.push(Step::Login { ok: true });
            }
        }
        if pages_left > 1 && self.rng.random_bool(0.18) {
            let product = pick(
                &mut self.rng,
                &PRODUCTS
                    .map(|(_, _, w)| w)
                    .iter()
                    .copied()
                    .enumerate()
                    .collect::<Vec<_>>(),
            );
            steps.push(Step::AddToCart(product));
            if self.rng.random_bool(0.55) {
                steps.push(Step::Checkout(product));
                if self.rng.random_bool(0.7) {
                    steps.push(Step::Purchase(product));
                }
            }
        }
        let page = self.zipf_page();
        Visit {
            user,
            referrer: pick(&mut self.rng, &REFERRERS),
            pages_left,
            steps,
            page,
        }
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// The time of the `n`-th event (from 0).
    pub fn time_of(&self, n: u64) -> i64 {
        self.start_ms + (n as i64 * self.step_micros) / 1000
    }

    /// The next event, and whether its visit ended with it.
    fn step(&mut self, slot: usize) -> (SimEvent, bool) {
        let ts_ms = self.time_of(self.n);
        let id = format!("sim-{}-{}", self.run, self.n);
        self.n += 1;
        let next_page = self.zipf_page();
        let visit = &mut self.active[slot];
        let visitor = self.visitors[visit.user];
        let mut event = SimEvent {
            site: visitor.site,
            id,
            name: "pageview",
            user: format!("{}-u{}", self.run, visit.user),
            ts_ms,
            path: visit.page.clone(),
            props: Vec::new(),
            revenue: None,
            // The referrer belongs to the visit's first page view only.
            referrer: visit.referrer.take(),
            user_agent: visitor.user_agent,
            country: visitor.country,
        };
        if visit.pages_left > 0 {
            visit.pages_left -= 1;
            visit.page = next_page;
        } else if let Some(step) = (!visit.steps.is_empty()).then(|| visit.steps.remove(0)) {
            event.referrer = None;
            match step {
                Step::Signup => {
                    event.name = "signup";
                    event.path = "/signup".into();
                }
                Step::Login { ok } => {
                    event.name = "login";
                    event.path = "/login".into();
                    event.props.push(("success", ok.into()));
                }
                Step::AddToCart(p) => {
                    event.name = "add_to_cart";
                    event.path = format!("/shop/{}", PRODUCTS[p].0);
                    event.props.push(("product", PRODUCTS[p].0.into()));
                }
                Step::Checkout(p) => {
                    event.name = "checkout";
                    event.path = "/checkout".into();
                    event.props.push(("product", PRODUCTS[p].0.into()));
                }
                Step::Purchase(p) => {
                    event.name = "purchase";
                    event.path = "/checkout/done".into();
                    event.props.push(("product", PRODUCTS[p].0.into()));
                    let currency = currency_of(visitor.country);
                    let amount = if currency == "JPY" {
                        // Yen have no minor unit: about 150 yen to the dollar.
                        Decimal::new(PRODUCTS[p].1 * 3 / 2, 0)
                    } else {
                        Decimal::new(PRODUCTS[p].1, 2)
                    };
                    event.revenue = Some((amount, currency));
                }
            }
        }
        let done = visit.pages_left == 0 && visit.steps.is_empty();
        (event, done)
    }
}

impl Iterator for Traffic {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        let slot = self.rng.random_range(0..self.active.len());
        let (event, done) = self.step(slot);
        if done {
            let user = self.active[slot].user;
            self.busy[user] = false;
            self.active[slot] = self.new_visit();
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let a: Vec<SimEvent> = Traffic::new(7, 500, 1, 1_790_000_000_000, 50.0)
            .take(2_000)
            .collect();
        let b: Vec<SimEvent> = Traffic::new(7, 500, 1, 1_790_000_000_000, 50.0)
            .take(2_000)
            .collect();
        assert_eq!(a, b);
        let c: Vec<SimEvent> = Traffic::new(8, 500, 1, 1_790_000_000_000, 50.0)
            .take(2_000)
            .collect();
        assert_ne!(a, c);
        // Another seed or start: other visitors, so sessions never collide.
        let user = |e: &SimEvent| e.user.clone();
        assert!(c.iter().map(user).all(|u| !a.iter().any(|e| e.user == u)));
        let d: Vec<SimEvent> = Traffic::new(7, 500, 1, 1_790_000_060_000, 50.0)
            .take(10)
            .collect();
        assert!(
            d.iter()
                .all(|e| !a.iter().any(|f| f.user == e.user || f.id == e.id))
        );
    }

    #[test]
    fn traffic_looks_like_a_site() {
        let events: Vec<SimEvent> = Traffic::new(1, 5_000, 2, 0, 100.0).take(50_000).collect();
        let count = |name: &str| events.iter().filter(|e| e.name == name).count();
        let pageviews = count("pageview");
        assert!(pageviews > events.len() * 3 / 4, "{pageviews}");
        // The funnel narrows at every step.
        let (cart, checkout, purchase) =
            (count("add_to_cart"), count("checkout"), count("purchase"));
        assert!(
            cart > checkout && checkout > purchase && purchase > 0,
            "{cart} {checkout} {purchase}"
        );
        let failed = events
            .iter()
            .filter(|e| e.name == "login" && e.props.contains(&("success", false.into())))
            .count();
        assert!(failed > 0 && failed < count("login") / 2);
        // Popularity is skewed: the home page is viewed far more than the last post.
        let views = |p: &str| {
            events
                .iter()
                .filter(|e| e.name == "pageview" && e.path == p)
                .count()
        };
        assert!(views("/") > 5 * views("/blog/post-24").max(1));
        // Time moves forward evenly: 100 events per simulated second.
        assert_eq!(events[100].ts_ms, 1_000);
        assert!(events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let currencies: std::collections::BTreeSet<&str> = events
            .iter()
            .filter_map(|e| e.revenue.map(|r| r.1))
            .collect();
        assert!(currencies.len() >= 3, "{currencies:?}");
        // Two sites, the first about twice as busy.
        let first = events.iter().filter(|e| e.site == 0).count();
        assert!(
            first > events.len() / 2 && first < events.len() * 4 / 5,
            "{first}"
        );
    }
}
