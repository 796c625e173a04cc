//! The client's IP address, for the login limit.
//!
//! `X-Forwarded-For` is believed only when the connection comes from a configured trusted
//! proxy (`TASKLANE_TRUSTED_PROXIES`), and then read from the right: the first address not
//! itself a trusted proxy is the client. Entries a client put on the left cannot change the
//! answer, so a spoofed header cannot move a client to a fresh login counter.

use std::net::IpAddr;

use ipnet::IpNet;

pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    for entry in header.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Garbage in the chain: stop at the last address we could trust.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), Some("1.2.3.4"), &trusted),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let header = "6.6.6.6, 198.51.100.7, 10.0.0.3";
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some(header), &trusted),
            Some(ip("198.51.100.7"))
        );
    }
}
