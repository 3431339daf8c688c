//! Enrichment: user agent → browser, OS and device; URL and referrer → page,
//! referrer host and traffic source.

use url::Url;

use crate::event::Context;

/// What the request and event say about where the event came from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clues<'a> {
    pub user_agent: Option<&'a str>,
    pub url: Option<&'a str>,
    pub path: Option<&'a str>,
    pub referrer: Option<&'a str>,
    pub country: Option<&'a str>,
    pub ip: Option<&'a str>,
}

/// Build the event's context from the clues; `keep_ip` decides whether the address stays.
pub fn enrich(clues: &Clues<'_>, keep_ip: bool) -> Context {
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
        apply_user_agent(&mut context, agent);
    }
    let referrer = clues
        .referrer
        .filter(|r| !r.trim().is_empty())
        .and_then(|r| Url::parse(r).ok());
    let referrer_host = referrer.as_ref().and_then(host_of);
    let campaign = page.as_ref().and_then(|u| {
        u.query_pairs()
            .find(|(k, v)| k == "utm_source" && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    });
    let internal = matches!(
        (&referrer_host, page.as_ref().and_then(host_of)),
        (Some(r), Some(p)) if *r == p
    );
    context.referrer_source = Some(match (&campaign, &referrer_host) {
        (Some(source), _) => source.clone(),
        (None, Some(host)) if !internal => source_of_host(host),
        _ => DIRECT.to_owned(),
    });
    context.referrer_host = referrer_host.filter(|_| !internal);
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

fn apply_user_agent(context: &mut Context, agent: &str) {
    let Some(found) = woothee::parser::Parser::new().parse(agent) else {
        return;
    };
    let known =
        |v: &str| (v != woothee::woothee::VALUE_UNKNOWN && !v.is_empty()).then(|| v.to_owned());
    context.browser = known(found.name);
    context.browser_version = known(found.version);
    context.os = known(found.os);
    context.device = Some(
        match found.category {
            "pc" => "desktop",
            "smartphone" if found.os == "iPad" || is_android_tablet(agent) => "tablet",
            "smartphone" | "mobilephone" => "mobile",
            "crawler" => "bot",
            "appliance" => "appliance",
            _ => "unknown",
        }
        .to_owned(),
    );
}

/// Android tablets say "Android" without "Mobile" (Google's documented convention).
fn is_android_tablet(agent: &str) -> bool {
    agent.contains("Android") && !agent.contains("Mobile")
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
        assert_eq!(c.os.as_deref(), Some("Mac OSX"));
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
}
