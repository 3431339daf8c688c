//! Which address a request comes from: the socket peer, or, only when that
//! peer is one of `collector.trusted_proxies`, the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy. A client can write
//! anything into that header, so it is believed only as far as proxies we
//! trust appended to it.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The proxies whose `X-Forwarded-For` is believed: IP addresses and CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parse `collector.trusted_proxies`; `Err` lists every entry that is not
    /// an IP address or a CIDR range.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, Vec<String>> {
        let mut nets = Vec::new();
        let mut bad = Vec::new();
        for entry in entries {
            let text = entry.trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => bad.push(format!(
                    "collector.trusted_proxies: {entry:?} is not an IP address or CIDR range (e.g. 10.0.0.1 or 10.0.0.0/8)"
                )),
            }
        }
        if bad.is_empty() {
            Ok(TrustedProxies(nets))
        } else {
            Err(bad)
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer`.
    pub fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For header, in order, as one list of hops.
        let hops: Vec<&str> = headers
            .get_all(&FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop that is not an address was not written by a proxy we
            // trust; the last trusted hop is as far as the chain can be believed.
            let Ok(ip) = hop.parse::<IpAddr>() else {
                return client;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
            .expect("valid")
    }

    fn ip_of(trusted: &TrustedProxies, peer: &str, xff: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append(
                &FORWARDED_FOR,
                HeaderValue::from_str(value).expect("header"),
            );
        }
        let peer = SocketAddr::new(peer.parse().expect("ip"), 5000);
        trusted.client_ip(&headers, peer).to_string()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            ip_of(&none, "198.51.100.7", &["203.0.113.9"]),
            "198.51.100.7"
        );
        let lb = proxies(&["10.0.0.0/8", "192.0.2.1"]);
        assert_eq!(ip_of(&lb, "198.51.100.7", &["203.0.113.9"]), "198.51.100.7");
        assert_eq!(ip_of(&lb, "10.1.2.3", &["203.0.113.9"]), "203.0.113.9");
        // The client wrote the left entries itself: the right-most untrusted one counts.
        assert_eq!(
            ip_of(&lb, "10.1.2.3", &["6.6.6.6, 203.0.113.9, 192.0.2.1"]),
            "203.0.113.9"
        );
        assert_eq!(
            ip_of(&lb, "10.1.2.3", &["6.6.6.6", "203.0.113.9, 10.9.9.9"]),
            "203.0.113.9"
        );
        assert_eq!(ip_of(&lb, "10.1.2.3", &["junk, 10.0.0.2"]), "10.0.0.2");
        assert_eq!(ip_of(&lb, "10.1.2.3", &[]), "10.1.2.3");
        assert_eq!(
            ip_of(&lb, "::ffff:10.1.2.3", &["2001:db8::1"]),
            "2001:db8::1"
        );
    }

    #[test]
    fn entries_that_are_not_addresses_are_listed() {
        let bad = TrustedProxies::parse(&[
            "10.0.0.0/8".into(),
            "proxy.local".into(),
            "10.0.0.0/33".into(),
        ])
        .expect_err("refused");
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("proxy.local"), "{bad:?}");
    }
}
