//! User agent → browser, OS and device, with the OS named as its users know it.
//!
//! woothee does the parsing; its OS names are a mix of products and devices
//! (`iPhone`, `iPad`, `Mac OSX`, `Windows 10`), so [`os_of`] maps them onto one
//! name per operating system, with the version in its own field.

use crate::event::Context;

/// Set browser, OS and device from a user agent.
pub(super) fn apply_user_agent(context: &mut Context, agent: &str) {
    let Some(found) = woothee::parser::Parser::new().parse(agent) else {
        return;
    };
    let known =
        |v: &str| (v != woothee::woothee::VALUE_UNKNOWN && !v.is_empty()).then(|| v.to_owned());
    context.browser = known(found.name);
    context.browser_version = known(found.version);
    let (os, version) = os_of(found.os, &found.os_version);
    context.os = os.map(str::to_owned);
    context.os_version = version;
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

/// woothee's OS name and version → the OS name users know and its version.
///
/// | woothee | Beacon |
/// |---|---|
/// | `iPhone`, `iPod`, `iOS` | `iOS` |
/// | `iPad` | `iPadOS` |
/// | `Mac OSX` | `macOS` |
/// | `Windows 10`, `Windows 7`, … | `Windows`, version `10`, `7`, … |
/// | `Windows UNKNOWN Ver` | `Windows`, no version |
/// | `Windows Phone OS` | `Windows Phone` |
/// | `ChromeOS` | `ChromeOS`, the platform version without the CPU |
/// | anything else | unchanged |
///
/// Versions use dots (`17_4` → `17.4`). Browsers freeze part of what they
/// report: every macOS since 10.15 says `10.15.7`, and Windows 11 says
/// Windows 10, so those versions are what the browser claims.
pub fn os_of<'a>(os: &'a str, version: &str) -> (Option<&'a str>, Option<String>) {
    let version = (version != woothee::woothee::VALUE_UNKNOWN && !version.is_empty())
        .then(|| version.replace('_', "."));
    match os {
        woothee::woothee::VALUE_UNKNOWN | "" => (None, None),
        "iPhone" | "iPod" | "iOS" => (Some("iOS"), version),
        "iPad" => (Some("iPadOS"), version),
        "Mac OSX" => (Some("macOS"), version),
        "Windows UNKNOWN Ver" => (Some("Windows"), None),
        "Windows Phone OS" => (Some("Windows Phone"), version),
        // woothee keeps the CPU in front (`x86_64 14541.0.0`): the platform
        // version is the last word.
        "ChromeOS" => (
            Some("ChromeOS"),
            version.and_then(|v| v.split_whitespace().last().map(str::to_owned)),
        ),
        windows if windows.starts_with("Windows ") && windows != "Windows CE" => (
            Some("Windows"),
            Some(windows["Windows ".len()..].to_owned()),
        ),
        other => (Some(other), version),
    }
}

/// Android tablets say "Android" without "Mobile" (Google's documented convention).
fn is_android_tablet(agent: &str) -> bool {
    agent.contains("Android") && !agent.contains("Mobile")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(agent: &str) -> Context {
        let mut c = Context::default();
        apply_user_agent(&mut c, agent);
        c
    }

    #[test]
    fn operating_systems_are_named_as_users_know_them() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                "iOS",
                Some("17.4"),
                "mobile",
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
                "iPadOS",
                Some("16.6"),
                "tablet",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "macOS",
                Some("10.15.7"),
                "desktop",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "Windows",
                Some("10"),
                "desktop",
            ),
            (
                "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:52.0) Gecko/20100101 Firefox/52.0",
                "Windows",
                Some("7"),
                "desktop",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
                "Android",
                Some("14"),
                "mobile",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "Linux",
                None,
                "desktop",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
                "ChromeOS",
                Some("14541.0.0"),
                "desktop",
            ),
        ];
        for (agent, os, version, device) in cases {
            let c = parsed(agent);
            assert_eq!(
                (
                    c.os.as_deref(),
                    c.os_version.as_deref(),
                    c.device.as_deref()
                ),
                (Some(os), version, Some(device)),
                "{agent}"
            );
        }
        let chrome = parsed(cases_chrome());
        assert_eq!(chrome.browser.as_deref(), Some("Chrome"));
        assert_eq!(chrome.browser_version.as_deref(), Some("124.0.0.0"));
    }

    fn cases_chrome() -> &'static str {
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    }

    #[test]
    fn unknown_agents_leave_the_fields_empty() {
        let c = parsed("");
        assert_eq!((c.browser, c.os, c.os_version), (None, None, None));
        assert_eq!(os_of("Windows CE", "UNKNOWN"), (Some("Windows CE"), None));
    }
}
