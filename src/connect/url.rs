//! The server's URL: parsed by the `url` crate (the WHATWG rules browsers follow: IDNA, percent-
//! encoding, canonical IPv4 such as `0x7f.1` → `127.0.0.1`), then checked against what RFC 6455
//! section 3 allows a WebSocket URI to be. The `Host` header and the request target are taken
//! from the parsed form, never from the text as written.

use std::fmt;

use ::url::{Host, Position, Url};

/// A parsed and checked `ws://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Host, resource and `Host` header, one after the other: one allocation per client
    /// rather than three (see [`host`](Self::host) and the others).
    text: Box<str>,
    host_end: u32,
    resource_end: u32,
    pub port: u16,
}

/// Why a URL was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not a valid `ws://host[:port][/path]` URL; the text says what is wrong.
    Invalid(String),
    /// Valid, but needs something this build does not do yet (`wss://`).
    Unsupported(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let bad = |m: &str| Err(UrlError::Invalid(format!("{m}: {url:?}")));
        // WHATWG parsing silently drops tabs and newlines and trims spaces; a URL that carries
        // them was most likely assembled by mistake, so it is refused instead.
        if url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return bad("URL contains whitespace or control characters");
        }
        let parsed = match Url::parse(url) {
            Ok(u) => u,
            Err(::url::ParseError::RelativeUrlWithoutBase) => {
                return bad("URL has no scheme (expected ws://host[:port][/path])")
            }
            Err(::url::ParseError::InvalidPort) => return bad("port must be 1..=65535 (digits)"),
            Err(e) => return bad(&format!("not a valid URL ({e})")),
        };
        match parsed.scheme() {
            "ws" => {}
            "wss" => {
                return Err(UrlError::Unsupported(
                    "wss:// (TLS) is not supported by this build yet; use ws://".into(),
                ))
            }
            s => return bad(&format!("URL scheme must be ws:// (got {s}:)")),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return bad("URL must not carry user info (send credentials as a header)");
        }
        if parsed.fragment().is_some() {
            return bad("URL must not have a fragment (RFC 6455 section 3; escape '#' as %23)");
        }
        // The parser takes "host:" as the default port; a port, when there is a colon, is digits.
        if authority(url).ends_with(':') {
            return bad("port after ':' is empty (must be 1..=65535)");
        }
        let host = match parsed.host() {
            Some(Host::Domain(d)) => d.to_owned(),
            Some(Host::Ipv4(a)) => a.to_string(),
            Some(Host::Ipv6(a)) => a.to_string(),
            None => return bad("URL has no host"),
        };
        if host.is_empty() {
            return bad("URL has no host");
        }
        // `port()` is None for the scheme's default port (80), which the Host header omits.
        let port = match parsed.port() {
            Some(0) => return bad("port must be 1..=65535"),
            Some(p) => p,
            None => 80,
        };
        let resource = &parsed[Position::BeforePath..Position::AfterQuery];
        let resource = if resource.is_empty() { "/" } else { resource };
        let host_header = &parsed[Position::BeforeHost..Position::AfterPort];
        let too_long = || UrlError::Invalid("URL longer than 4 GiB".into());
        let host_end = u32::try_from(host.len()).map_err(|_| too_long())?;
        let resource_end = u32::try_from(host.len() + resource.len()).map_err(|_| too_long())?;
        let mut text = String::with_capacity(host.len() + resource.len() + host_header.len());
        text.push_str(&host);
        text.push_str(resource);
        text.push_str(host_header);
        Ok(Target {
            text: text.into_boxed_str(),
            host_end,
            resource_end,
            port,
        })
    }

    /// Host in canonical form (domain in lower-case ASCII, IDNA-encoded; IPv4 dotted; IPv6
    /// compressed, without brackets).
    pub fn host(&self) -> &str {
        &self.text[..self.host_end as usize]
    }

    /// Path and query, percent-encoded, at least `/`: the request target.
    pub fn resource(&self) -> &str {
        &self.text[self.host_end as usize..self.resource_end as usize]
    }

    /// The `Host` header value: the host (IPv6 in brackets), and `:port` unless it is 80.
    pub fn host_header(&self) -> &str {
        &self.text[self.resource_end as usize..]
    }

    /// True when the host is an IP address, which needs no resolver.
    pub fn is_ip_literal(&self) -> bool {
        self.host().parse::<std::net::IpAddr>().is_ok()
    }
}

/// The authority as written: after the scheme's `:` and any slashes (WHATWG reads `ws:h`,
/// `ws:/h` and `ws:\\h` as `ws://h`), up to the first `/`, `\`, `?` or `#`.
fn authority(url: &str) -> &str {
    let rest = url.split_once(':').map_or("", |(_, r)| r);
    let rest = rest.trim_start_matches(['/', '\\']);
    rest.find(['/', '\\', '?', '#'])
        .map_or(rest, |i| &rest[..i])
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host())
            .field("port", &self.port)
            .field("resource", &self.resource())
            .field("host_header", &self.host_header())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
    }

    #[test]
    fn parses_good_urls() {
        let t = ok("ws://example.com/chat?x=1");
        assert_eq!(
            (t.host(), t.port, t.resource()),
            ("example.com", 80, "/chat?x=1")
        );
        assert_eq!(t.host_header(), "example.com");
        let t = ok("ws://127.0.0.1:9001");
        assert_eq!(
            (t.port, t.resource(), t.host_header()),
            (9001, "/", "127.0.0.1:9001")
        );
        let t = ok("WS://[::1]:8080/a");
        assert_eq!(
            (t.host(), t.port, t.host_header()),
            ("::1", 8080, "[::1]:8080")
        );
        let t = ok("ws://h?q");
        assert_eq!(t.resource(), "/?q");
        // The default port is not repeated in the Host header.
        let t = ok("ws://Example.COM:80/");
        assert_eq!(
            (t.host(), t.port, t.host_header()),
            ("example.com", 80, "example.com")
        );
        let t = ok("ws://[::1]:80/");
        assert_eq!(t.host_header(), "[::1]");
        // Leading zeros are still digits.
        assert_eq!(ok("ws://h:0080/").port, 80);
        assert!(ok("ws://h:8080/").host_header().ends_with(":8080"));
    }

    #[test]
    fn whatwg_rules_apply() {
        // IDNA: Unicode host names go on the wire as their ASCII (punycode) form.
        let t = ok("ws://Bücher.example/");
        assert_eq!(t.host(), "xn--bcher-kva.example");
        assert_eq!(t.host_header(), "xn--bcher-kva.example");
        // Canonical IPv4: hex, octal and short forms are one address.
        for u in ["ws://0x7f.1/", "ws://2130706433/", "ws://0177.0.0.1/"] {
            let t = ok(u);
            assert_eq!(
                (t.host(), t.host_header()),
                ("127.0.0.1", "127.0.0.1"),
                "{u}"
            );
            assert!(t.is_ip_literal());
        }
        // IPv6 compressed.
        assert_eq!(ok("ws://[0:0:0:0:0:0:0:1]/").host(), "::1");
        // Percent-encoding: the request target is encoded, the host decoded.
        assert_eq!(
            ok("ws://h/a b".replace(' ', "%20").as_str()).resource(),
            "/a%20b"
        );
        assert_eq!(ok("ws://h/é?q=ü").resource(), "/%C3%A9?q=%C3%BC");
        assert_eq!(ok("ws://h%41/").host(), "ha");
        // Dot segments are resolved, backslash is a slash for ws:.
        assert_eq!(ok("ws://h/a/../b").resource(), "/b");
        assert_eq!(ok("ws://h\\x").resource(), "/x");
        assert_eq!(ok("ws:h:81/p").host_header(), "h:81");
        assert!(!ok("ws://example.com/").is_ip_literal());
    }

    #[test]
    fn refuses_bad_urls_with_reasons() {
        for (url, why) in [
            ("", "no scheme"),
            ("example.com", "no scheme"),
            ("http://example.com", "scheme must be ws://"),
            ("mailto:x@example.com", "scheme must be ws://"),
            ("ws://", "not a valid URL"),
            ("ws://:80", "not a valid URL"),
            ("ws://h:0", "port must be"),
            ("ws://h:65536", "port must be"),
            ("ws://h:x", "port must be"),
            ("ws://h:+80", "port must be"),
            ("ws://h:-1", "port must be"),
            ("ws://h:/", "port after ':' is empty"),
            ("ws://[::1]:", "port after ':' is empty"),
            ("ws:h:", "port after ':' is empty"),
            ("ws:\\h:?x", "port after ':' is empty"),
            ("ws://u:p@h/", "user info"),
            ("ws://u@h/", "user info"),
            ("ws://h/#frag", "fragment"),
            ("ws://h/#", "fragment"),
            ("ws://h h/", "whitespace"),
            ("ws://h\n/", "whitespace"),
            ("ws://h/\t", "whitespace"),
            ("ws://[::1", "not a valid URL"),
            ("ws://[zz]/", "not a valid URL"),
            ("ws://[::1]x/", "not a valid URL"),
            ("ws://1.2.3.256/", "not a valid URL"),
            ("ws://h<x>/", "not a valid URL"),
            ("ws://xn--a.example/", "not a valid URL"),
        ] {
            match Target::parse(url) {
                Err(UrlError::Invalid(m)) => assert!(m.contains(why), "{url:?}: {m}"),
                other => panic!("{url:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Target::parse("wss://example.com"),
            Err(UrlError::Unsupported(_))
        ));
    }
}
