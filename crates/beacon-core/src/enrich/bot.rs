//! Filtered traffic: crawlers, headless browsers and monitoring tools, told
//! apart from people by their user agent.
//!
//! Whether an agent is a bot is the `isbot` crate's call (the Rust port of the
//! `isbot` project's pattern list, kept by its maintainers against corpora of
//! real bot and browser agents). Beacon only sorts the agents it flags into
//! reasons, so the filtered-traffic figure says what kind of bot it was.

use std::sync::LazyLock;

/// A crawler, feed reader, link previewer or any other bot the list knows.
pub const CRAWLER: &str = "crawler";
/// A browser driven by a program (headless Chrome, PhantomJS, Selenium, …).
pub const HEADLESS: &str = "headless";
/// An uptime or performance monitor (Pingdom, UptimeRobot, Lighthouse, …).
pub const MONITOR: &str = "monitor";
/// Every reason, in the order the docs list them.
pub const REASONS: [&str; 3] = [CRAWLER, HEADLESS, MONITOR];

/// The list, compiled once per process (one combined regular expression).
static BOTS: LazyLock<isbot::Bots> = LazyLock::new(isbot::Bots::default);

/// Words (lowercase) that sort a flagged agent into a reason other than
/// crawler. They only classify what the list already flagged; they never
/// decide on their own whether an agent is a bot.
const HEADLESS_WORDS: &[&str] = &[
    "headless",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "webdriver",
    "electron",
    "slimerjs",
];
const MONITOR_WORDS: &[&str] = &[
    "monitor",
    "uptime",
    "pingdom",
    "statuscake",
    "site24x7",
    "lighthouse",
    "pagespeed",
    "gtmetrix",
    "datadog",
    "newrelic",
    "checkly",
    "synthetic",
];

/// Why an agent is filtered traffic, or `None` for a person's browser.
/// `woothee_crawler` is the user-agent parser's own verdict, which catches
/// a few crawlers the list does not name.
pub fn reason(agent: &str, woothee_crawler: bool) -> Option<&'static str> {
    if !BOTS.is_bot(agent) {
        return woothee_crawler.then_some(CRAWLER);
    }
    // Only flagged agents (a small share of traffic) are looked at again.
    let lower = agent.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    Some(if has(HEADLESS_WORDS) {
        HEADLESS
    } else if has(MONITOR_WORDS) {
        MONITOR
    } else {
        CRAWLER
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_sorted_into_reasons_and_people_are_not_bots() {
        let cases = [
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                Some(CRAWLER),
            ),
            (
                "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                Some(CRAWLER),
            ),
            ("curl/8.5.0", Some(CRAWLER)),
            ("python-requests/2.31.0", Some(CRAWLER)),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
                Some(HEADLESS),
            ),
            (
                "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
                Some(HEADLESS),
            ),
            (
                "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
                Some(MONITOR),
            ),
            (
                "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
                Some(MONITOR),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                None,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                None,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
                None,
            ),
        ];
        for (agent, want) in cases {
            assert_eq!(reason(agent, false), want, "{agent}");
        }
        assert_eq!(reason("SomethingNew/1.0", true), Some(CRAWLER));
    }
}
