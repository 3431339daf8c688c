//! Enrichment: user agent → browser, OS, device and whether it is a bot; URL
//! and referrer → page, referrer host, traffic source, campaign and channel;
//! IP address → country, region and city (with a GeoIP database).

pub mod agent;
pub mod bot;
pub mod campaign;
pub mod geo;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use url::Url;

pub use campaign::{Campaign, channel_of, channels};
pub use geo::{GeoDb, GeoError, Place};

use crate::event::Context;

/// What the request and event say about where the event came from.
#[derive(Debug, Default, Clone)]
pub struct Clues<'a> {
    pub user_agent: Option<&'a str>,
    pub url: Option<&'a str>,
    pub path: Option<&'a str>,
    pub referrer: Option<&'a str>,
    pub country: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// Campaign fields the sender named itself (`context.utm_*`, or what an
    /// SDK's own campaign fields became); they win over the page URL's.
    pub campaign: Campaign,
}

/// How a process enriches events: its GeoIP database, if any, and the sites
/// whose bots count as ordinary traffic. Shared by every event.
#[derive(Debug, Clone)]
pub struct Enricher {
    geo: Option<Arc<GeoDb>>,
    keep_bots: HashSet<String>,
    detect_bots: bool,
}

impl Default for Enricher {
    fn default() -> Self {
        Enricher::new(None, [])
    }
}

impl Enricher {
    pub fn new(geo: Option<Arc<GeoDb>>, keep_bots: impl IntoIterator<Item = String>) -> Self {
        Enricher {
            geo,
            keep_bots: keep_bots.into_iter().collect(),
            detect_bots: true,
        }
    }

    /// Look for bots at all (on by default); off, no event is filtered
    /// traffic, as if every site kept its bots.
    pub fn detecting_bots(mut self, on: bool) -> Self {
        self.detect_bots = on;
        self
    }

    pub fn geo(&self) -> Option<&GeoDb> {
        self.geo.as_deref()
    }

    /// Build an event's context from the clues for `site`; `keep_ip`
    /// decides whether the address stays after the GeoIP lookup.
    pub fn enrich(&self, site: &str, clues: &Clues<'_>, keep_ip: bool) -> Context {
        let mut context = enrich_with(clues, keep_ip, self.detect_bots);
        if self.keep_bots.contains(site) {
            // The site counts its bots: they are not filtered traffic.
            context.bot = None;
        }
        let ip = clues.ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        if let (Some(db), Some(ip)) = (&self.geo, ip) {
            let place = db.lookup(ip);
            // A country the sender named wins; region and city are kept only
            // when they belong to the country the event ends up with.
            if context.country.is_none() {
                context.country = place.country.clone();
            }
            if context.country.is_some() && context.country == place.country {
                context.region = place.region;
                context.city = place.city;
            }
        }
        context
    }
}

/// Build the event's context from the clues without a GeoIP database, for a
/// site that filters its bots; `keep_ip` decides whether the address stays.
pub fn enrich(clues: &Clues<'_>, keep_ip: bool) -> Context {
    enrich_with(clues, keep_ip, true)
}

fn enrich_with(clues: &Clues<'_>, keep_ip: bool, detect_bots: bool) -> Context {
    let page = clues.url.and_then(|u| Url::parse(u).ok());
    let mut context = Context {
        path: clues
            .path
            .map(str::to_owned)
            .or_else(|| page.as_ref().map(|u| u.path().to_owned())),
        country: clues.country.map(str::to_ascii_uppercase),
        ip: clues.ip.filter(|_| keep_ip).map(str::to_owned),
        ..Context::default()
    };
    if let Some(agent) = clues.user_agent {
        agent::apply_user_agent(&mut context, agent);
        if detect_bots {
            context.bot =
                bot::reason(agent, context.device.as_deref() == Some("bot")).map(str::to_owned);
        }
    }
    let referrer = clues
        .referrer
        .filter(|r| !r.trim().is_empty())
        .and_then(|r| Url::parse(r).ok());
    let referrer_host = referrer.as_ref().and_then(host_of);
    let campaign = clues
        .campaign
        .clone()
        .or(page.as_ref().map(Campaign::from_url).unwrap_or_default());
    let internal = matches!(
        (&referrer_host, page.as_ref().and_then(host_of)),
        (Some(r), Some(p)) if *r == p
    );
    let external_source = referrer_host
        .as_deref()
        .filter(|_| !internal)
        .map(source_of_host);
    context.channel = Some(channel_of(&campaign, external_source.as_deref()).to_owned());
    context.referrer_source = Some(match (&campaign.source, external_source) {
        (Some(source), _) => source.clone(),
        (None, Some(source)) => source,
        _ => DIRECT.to_owned(),
    });
    context.referrer_host = referrer_host.filter(|_| !internal);
    context.utm_source = campaign.source;
    context.utm_medium = campaign.medium;
    context.utm_campaign = campaign.name;
    context.utm_term = campaign.term;
    context.utm_content = campaign.content;
    context
}

/// The source of visits with no (external) referrer and no campaign.
pub const DIRECT: &str = "Direct";

fn host_of(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(host.strip_prefix("www.").unwrap_or(&host).to_owned())
}

/// Well-known referrer hosts grouped under one source name; anything else is its host.
const SOURCES: &[(&str, &str)] = &[
    ("google", "Google"),
    ("bing.com", "Bing"),
    ("duckduckgo.com", "DuckDuckGo"),
    ("yahoo", "Yahoo"),
    ("baidu.com", "Baidu"),
    ("yandex", "Yandex"),
    ("ecosia.org", "Ecosia"),
    ("facebook.com", "Facebook"),
    ("fb.com", "Facebook"),
    ("t.co", "Twitter"),
    ("twitter.com", "Twitter"),
    ("x.com", "Twitter"),
    ("linkedin.com", "LinkedIn"),
    ("lnkd.in", "LinkedIn"),
    ("reddit.com", "Reddit"),
    ("news.ycombinator.com", "Hacker News"),
    ("youtube.com", "YouTube"),
    ("instagram.com", "Instagram"),
    ("github.com", "GitHub"),
];

/// Name the source of a referrer host: `google.co.uk` → `Google`, `l.facebook.com` → `Facebook`.
pub fn source_of_host(host: &str) -> String {
    for (pattern, source) in SOURCES {
        let matched = if pattern.contains('.') {
            host == *pattern || host.ends_with(&format!(".{pattern}"))
        } else {
            // A brand without a TLD: google.com, google.de, news.google.co.uk.
            host.split('.').any(|label| label == *pattern)
        };
        if matched {
            return (*source).to_owned();
        }
    }
    host.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn with_agent(agent: &str) -> Context {
        enrich(
            &Clues {
                user_agent: Some(agent),
                ..Clues::default()
            },
            false,
        )
    }

    #[test]
    fn user_agents_become_browser_os_and_device() {
        let c = with_agent(CHROME_MAC);
        assert_eq!(c.browser.as_deref(), Some("Chrome"));
        assert_eq!(c.os.as_deref(), Some("macOS"));
        assert_eq!(c.device.as_deref(), Some("desktop"));
        assert_eq!(with_agent(SAFARI_IPHONE).device.as_deref(), Some("mobile"));
        assert_eq!(with_agent(IPAD).device.as_deref(), Some("tablet"));
        assert_eq!(with_agent(GOOGLEBOT).device.as_deref(), Some("bot"));
        assert_eq!(with_agent("").browser, None);
    }

    #[test]
    fn referrers_become_sources() {
        let c = enrich(
            &Clues {
                url: Some("https://shop.example/pricing?x=1"),
                referrer: Some("https://www.google.co.uk/search?q=beacon"),
                ..Clues::default()
            },
            false,
        );
        assert_eq!(c.path.as_deref(), Some("/pricing"));
        assert_eq!(c.referrer_host.as_deref(), Some("google.co.uk"));
        assert_eq!(c.referrer_source.as_deref(), Some("Google"));
        assert_eq!(source_of_host("l.facebook.com"), "Facebook");
        assert_eq!(source_of_host("blog.example.org"), "blog.example.org");
        assert_eq!(source_of_host("notgoogle.com"), "notgoogle.com");
    }

    #[test]
    fn no_referrer_or_an_internal_one_is_direct_and_campaigns_win() {
        let direct = enrich(&Clues::default(), false);
        assert_eq!(direct.referrer_source.as_deref(), Some(DIRECT));
        let internal = enrich(
            &Clues {
                url: Some("https://shop.example/b"),
                referrer: Some("https://shop.example/a"),
                ..Clues::default()
            },
            false,
        );
        assert_eq!(internal.referrer_source.as_deref(), Some(DIRECT));
        assert_eq!(internal.referrer_host, None);
        let campaign = enrich(
            &Clues {
                url: Some("https://shop.example/?utm_source=newsletter"),
                referrer: Some("https://mail.example/"),
                ..Clues::default()
            },
            false,
        );
        assert_eq!(campaign.referrer_source.as_deref(), Some("newsletter"));
    }

    #[test]
    fn ip_is_dropped_unless_kept() {
        let clues = Clues {
            ip: Some("203.0.113.9"),
            ..Clues::default()
        };
        assert_eq!(enrich(&clues, false).ip, None);
        assert_eq!(enrich(&clues, true).ip.as_deref(), Some("203.0.113.9"));
    }

    #[test]
    fn campaigns_and_channels_come_from_the_url_and_what_was_sent() {
        let c = enrich(
            &Clues {
                url: Some(
                    "https://shop.example/?utm_source=google&utm_medium=cpc&utm_campaign=spring",
                ),
                referrer: Some("https://www.google.com/"),
                ..Clues::default()
            },
            false,
        );
        assert_eq!(c.channel.as_deref(), Some(channels::PAID_SEARCH));
        assert_eq!(c.utm_campaign.as_deref(), Some("spring"));
        assert_eq!(c.referrer_source.as_deref(), Some("google"));
        let sent = enrich(
            &Clues {
                url: Some("https://shop.example/?utm_source=google"),
                campaign: Campaign {
                    source: Some("newsletter".into()),
                    ..Campaign::default()
                },
                ..Clues::default()
            },
            false,
        );
        assert_eq!(sent.utm_source.as_deref(), Some("newsletter"));
        assert_eq!(sent.channel.as_deref(), Some(channels::EMAIL));
        let direct = enrich(&Clues::default(), false);
        assert_eq!(direct.channel.as_deref(), Some(channels::DIRECT));
        let internal = enrich(
            &Clues {
                url: Some("https://shop.example/b"),
                referrer: Some("https://shop.example/a"),
                ..Clues::default()
            },
            false,
        );
        assert_eq!(internal.channel.as_deref(), Some(channels::DIRECT));
    }

    #[test]
    fn bots_are_flagged_unless_their_site_keeps_them() {
        let clues = Clues {
            user_agent: Some(GOOGLEBOT),
            ..Clues::default()
        };
        let enricher = Enricher::new(None, ["keeps".to_owned()]);
        assert_eq!(
            enricher.enrich("filters", &clues, false).bot.as_deref(),
            Some(bot::CRAWLER)
        );
        let kept = enricher.enrich("keeps", &clues, false);
        assert_eq!(kept.bot, None);
        assert_eq!(kept.device.as_deref(), Some("bot"));
        let person = Clues {
            user_agent: Some(CHROME_MAC),
            ..Clues::default()
        };
        assert_eq!(enricher.enrich("filters", &person, false).bot, None);
    }
}
