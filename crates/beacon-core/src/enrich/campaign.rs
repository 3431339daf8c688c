//! Campaigns and channels: the `utm_*` fields of a visit, and the channel
//! (Direct, Organic Search, Paid Social, …) its source and medium put it in.
//!
//! The channel rules are modelled on the default channel grouping most web
//! analytics products share; docs/INGEST.md lists them in the order applied.

use url::Url;

/// Campaign fields, from the page URL or as an SDK sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Campaign {
    pub source: Option<String>,
    pub medium: Option<String>,
    pub name: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
    /// An ad click id (`gclid`, `gbraid`, `wbraid`, `msclkid`, `dclid`) on the
    /// page URL: the visit came from a paid search ad even without `utm_*`.
    pub paid_click: bool,
}

/// Query parameters that only paid search ads add.
const PAID_CLICK_IDS: [&str; 5] = ["gclid", "gbraid", "wbraid", "msclkid", "dclid"];

impl Campaign {
    /// The `utm_*` parameters (and ad click ids) of a page URL. Empty values
    /// count as absent; the first of a repeated parameter wins.
    pub fn from_url(url: &Url) -> Campaign {
        let mut c = Campaign::default();
        for (key, value) in url.query_pairs() {
            let slot = match key.as_ref() {
                "utm_source" => &mut c.source,
                "utm_medium" => &mut c.medium,
                "utm_campaign" => &mut c.name,
                "utm_term" => &mut c.term,
                "utm_content" => &mut c.content,
                k if PAID_CLICK_IDS.contains(&k) => {
                    c.paid_click = true;
                    continue;
                }
                _ => continue,
            };
            let value = value.trim();
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        }
        c
    }

    /// Fields set here win; the others are taken from `other`.
    pub fn or(self, other: Campaign) -> Campaign {
        Campaign {
            source: self.source.or(other.source),
            medium: self.medium.or(other.medium),
            name: self.name.or(other.name),
            term: self.term.or(other.term),
            content: self.content.or(other.content),
            paid_click: self.paid_click || other.paid_click,
        }
    }
}

/// The channels, as stored in `context.channel`.
pub mod channels {
    pub const DIRECT: &str = "Direct";
    pub const ORGANIC_SEARCH: &str = "Organic Search";
    pub const PAID_SEARCH: &str = "Paid Search";
    pub const ORGANIC_SOCIAL: &str = "Organic Social";
    pub const PAID_SOCIAL: &str = "Paid Social";
    pub const ORGANIC_VIDEO: &str = "Organic Video";
    pub const PAID_VIDEO: &str = "Paid Video";
    pub const EMAIL: &str = "Email";
    pub const AFFILIATES: &str = "Affiliates";
    pub const DISPLAY: &str = "Display";
    pub const PAID_OTHER: &str = "Paid Other";
    pub const REFERRAL: &str = "Referral";
    /// A campaign whose source and medium match no rule.
    pub const UNASSIGNED: &str = "Unassigned";
}

/// What a source is, as far as channels care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Search,
    Social,
    Video,
    Email,
    Other,
}

/// Source names (lowercase, as `source_of_host` names hosts or as people
/// write `utm_source`) by kind.
const SEARCH_SOURCES: &[&str] = &[
    "google",
    "bing",
    "duckduckgo",
    "yahoo",
    "baidu",
    "yandex",
    "ecosia",
    "brave",
    "qwant",
    "startpage",
    "naver",
    "seznam",
    "search",
];
const SOCIAL_SOURCES: &[&str] = &[
    "facebook",
    "fb",
    "instagram",
    "ig",
    "twitter",
    "x",
    "t.co",
    "linkedin",
    "reddit",
    "hacker news",
    "pinterest",
    "tiktok",
    "snapchat",
    "threads",
    "mastodon",
    "bluesky",
    "bsky",
    "quora",
    "whatsapp",
    "telegram",
    "discord",
    "social",
];
const VIDEO_SOURCES: &[&str] = &["youtube", "vimeo", "twitch", "dailymotion", "video"];
const EMAIL_SOURCES: &[&str] = &["email", "e-mail", "mail", "newsletter", "gmail", "outlook"];

fn kind_of_source(source: &str) -> Kind {
    let s = source.to_ascii_lowercase();
    let any = |names: &[&str]| names.contains(&s.as_str());
    if any(SEARCH_SOURCES) {
        Kind::Search
    } else if any(SOCIAL_SOURCES) {
        Kind::Social
    } else if any(VIDEO_SOURCES) {
        Kind::Video
    } else if any(EMAIL_SOURCES) {
        Kind::Email
    } else {
        Kind::Other
    }
}

/// A medium that says the visit was paid for: contains `cp` (cpc, cpm, cpv,
/// ppc is listed), or is `ppc`, `retargeting`, or starts with `paid`.
fn is_paid(medium: &str) -> bool {
    medium.contains("cp")
        || medium == "ppc"
        || medium == "retargeting"
        || medium.starts_with("paid")
}

/// The channel of a visit, from its campaign and the source its referrer
/// was named (`source_of_host`, or `None` without an external referrer).
/// The rules are applied in order; the first that matches wins.
pub fn channel_of(campaign: &Campaign, referrer_source: Option<&str>) -> &'static str {
    use channels::*;
    let medium = campaign
        .medium
        .as_deref()
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let source = campaign.source.as_deref().or(referrer_source);
    let kind = source.map_or(Kind::Other, kind_of_source);
    let paid = is_paid(&medium);
    if source.is_none() && medium.is_empty() && !campaign.paid_click {
        return DIRECT;
    }
    if medium == "affiliate" || medium == "affiliates" {
        AFFILIATES
    } else if matches!(
        medium.as_str(),
        "email" | "e-mail" | "e_mail" | "newsletter"
    ) || kind == Kind::Email
    {
        EMAIL
    } else if campaign.paid_click || (paid && kind == Kind::Search) {
        PAID_SEARCH
    } else if paid && kind == Kind::Social {
        PAID_SOCIAL
    } else if paid && kind == Kind::Video {
        PAID_VIDEO
    } else if matches!(
        medium.as_str(),
        "display" | "banner" | "expandable" | "interstitial" | "cpm"
    ) {
        DISPLAY
    } else if paid {
        PAID_OTHER
    } else if kind == Kind::Search || medium == "organic" {
        ORGANIC_SEARCH
    } else if kind == Kind::Social
        || matches!(
            medium.as_str(),
            "social" | "social-network" | "social-media" | "sm" | "social network" | "social media"
        )
    {
        ORGANIC_SOCIAL
    } else if kind == Kind::Video || medium.contains("video") {
        ORGANIC_VIDEO
    } else if matches!(medium.as_str(), "referral" | "app" | "link")
        || (campaign.source.is_none() && campaign.medium.is_none())
    {
        // No campaign at all, only an external referrer.
        REFERRAL
    } else {
        UNASSIGNED
    }
}

#[cfg(test)]
mod tests {
    use super::channels::*;
    use super::*;

    fn campaign(source: Option<&str>, medium: Option<&str>) -> Campaign {
        Campaign {
            source: source.map(str::to_owned),
            medium: medium.map(str::to_owned),
            ..Campaign::default()
        }
    }

    /// utm_source, utm_medium, the referrer's source, and the channel expected.
    type Rule = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    /// The rules table of docs/INGEST.md, case by case.
    #[test]
    fn channel_rules() {
        let cases: &[Rule] = &[
            // utm_source, utm_medium, referrer source, channel
            (None, None, None, DIRECT),
            (None, None, Some("Google"), ORGANIC_SEARCH),
            (None, None, Some("Bing"), ORGANIC_SEARCH),
            (None, None, Some("DuckDuckGo"), ORGANIC_SEARCH),
            (None, None, Some("Facebook"), ORGANIC_SOCIAL),
            (None, None, Some("Twitter"), ORGANIC_SOCIAL),
            (None, None, Some("Hacker News"), ORGANIC_SOCIAL),
            (None, None, Some("YouTube"), ORGANIC_VIDEO),
            (None, None, Some("blog.example.org"), REFERRAL),
            (Some("google"), Some("cpc"), None, PAID_SEARCH),
            (Some("bing"), Some("ppc"), Some("Bing"), PAID_SEARCH),
            (Some("facebook"), Some("paid_social"), None, PAID_SOCIAL),
            (Some("instagram"), Some("cpc"), None, PAID_SOCIAL),
            (Some("youtube"), Some("cpv"), None, PAID_VIDEO),
            (Some("adnetwork"), Some("display"), None, DISPLAY),
            (Some("adnetwork"), Some("banner"), None, DISPLAY),
            (Some("adnetwork"), Some("cpm"), None, DISPLAY),
            (Some("partner"), Some("cpc"), None, PAID_OTHER),
            (Some("newsletter"), None, None, EMAIL),
            (Some("weekly"), Some("email"), Some("mail.example"), EMAIL),
            (Some("partner"), Some("affiliate"), None, AFFILIATES),
            (Some("google"), Some("organic"), None, ORGANIC_SEARCH),
            (Some("somewhere"), Some("organic"), None, ORGANIC_SEARCH),
            (Some("reddit"), None, None, ORGANIC_SOCIAL),
            (Some("launch"), Some("social"), None, ORGANIC_SOCIAL),
            (Some("podcast"), Some("video"), None, ORGANIC_VIDEO),
            (Some("partner"), Some("referral"), None, REFERRAL),
            (Some("partner"), Some("print"), None, UNASSIGNED),
            (Some("flyer"), None, None, UNASSIGNED),
            (None, Some("qr"), None, UNASSIGNED),
        ];
        for (source, medium, referrer, want) in cases {
            assert_eq!(
                channel_of(&campaign(*source, *medium), *referrer),
                *want,
                "utm_source={source:?} utm_medium={medium:?} referrer={referrer:?}"
            );
        }
        // An ad click id makes a visit paid search, with or without a referrer.
        let clicked = Campaign {
            paid_click: true,
            ..Campaign::default()
        };
        assert_eq!(channel_of(&clicked, None), PAID_SEARCH);
        assert_eq!(channel_of(&clicked, Some("Google")), PAID_SEARCH);
    }

    #[test]
    fn utm_fields_come_from_the_url() {
        let url = Url::parse(
            "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=spring%20sale\
             &utm_term=shoes&utm_content=hero&utm_source=ignored&gclid=abc",
        )
        .expect("url");
        let c = Campaign::from_url(&url);
        assert_eq!(c.source.as_deref(), Some("news"));
        assert_eq!(c.medium.as_deref(), Some("email"));
        assert_eq!(c.name.as_deref(), Some("spring sale"));
        assert_eq!(c.term.as_deref(), Some("shoes"));
        assert_eq!(c.content.as_deref(), Some("hero"));
        assert!(c.paid_click);
        let empty = Campaign::from_url(&Url::parse("https://x.example/?utm_source=").expect("url"));
        assert_eq!(empty, Campaign::default());
        let sent = Campaign {
            name: Some("sdk".into()),
            ..Campaign::default()
        };
        let merged = sent.or(c);
        assert_eq!(merged.name.as_deref(), Some("sdk"));
        assert_eq!(merged.source.as_deref(), Some("news"));
    }
}
