//! SSRF guard: which destination addresses a webhook may never reach, and the
//! registry-side URL validation.
//!
//! [`is_forbidden`] is used in three places: by [`validate_url`] for literal IP
//! hosts, by [`crate::WebhookSender`] for literal IP hosts before sending
//! (reqwest never calls the resolver for those), and by the sender's DNS
//! resolver for every address a host name resolves to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const LOOPBACK: &str = "loopback address";
const PRIVATE: &str = "private address";
const LINK_LOCAL: &str = "link-local address";
const UNIQUE_LOCAL: &str = "unique-local address";
const SITE_LOCAL: &str = "site-local address";
const SHARED: &str = "shared (CGNAT) address";
const MULTICAST: &str = "multicast address";
const UNSPECIFIED: &str = "unspecified address";
const BROADCAST: &str = "broadcast address";
const THIS_NETWORK: &str = "\"this network\" (0.0.0.0/8) address";
const DOCUMENTATION: &str = "documentation address";
const BENCHMARKING: &str = "benchmarking address";
const RESERVED: &str = "reserved address";
const METADATA: &str = "cloud metadata address";

/// Cloud metadata endpoints that are not already inside a forbidden range
/// are listed here too, so the reason names them as what they are.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, ...
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(168, 63, 129, 16),   // Azure wire server (publicly routable range)
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// `Some(reason)` when a webhook must not be delivered to `ip` (unless
/// private targets are explicitly allowed), `None` for ordinary public
/// unicast addresses.
///
/// IPv6 forms that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`,
/// Teredo `2001::/32`) are judged by the embedded address. IPv6 outside the
/// global unicast block `2000::/3` is refused.
#[must_use]
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if ip.is_broadcast() {
        return Some(BROADCAST);
    }
    if METADATA_V4.contains(&ip) {
        return Some(METADATA);
    }
    match ip.octets() {
        [0, ..] => Some(THIS_NETWORK),
        [10, ..] => Some(PRIVATE),
        [100, b, ..] if b & 0xc0 == 64 => Some(SHARED),
        [127, ..] => Some(LOOPBACK),
        [169, 254, ..] => Some(LINK_LOCAL),
        [172, b, ..] if b & 0xf0 == 16 => Some(PRIVATE),
        [192, 0, 0, _] => Some(RESERVED), // IETF protocol assignments
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => Some(DOCUMENTATION),
        [192, 88, 99, _] => Some(RESERVED), // deprecated 6to4 relay anycast
        [192, 168, ..] => Some(PRIVATE),
        [198, b, ..] if b & 0xfe == 18 => Some(BENCHMARKING),
        [a, ..] if a & 0xf0 == 224 => Some(MULTICAST),
        [a, ..] if a >= 240 => Some(RESERVED),
        _ => None,
    }
}

fn v4_from_segments(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if ip.is_loopback() {
        return Some(LOOPBACK);
    }
    if ip == METADATA_V6 {
        return Some(METADATA);
    }
    let s = ip.segments();
    // IPv4-mapped ::ffff:a.b.c.d
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated; ::/8 is reserved in any case)
    if s[..6] == [0; 6] {
        return v4_reason(v4_from_segments(s[6], s[7])).or(Some(RESERVED));
    }
    // NAT64 well-known prefix 64:ff9b::/96
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(v4_from_segments(s[6], s[7]));
    }
    // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): translates to local networks.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some(RESERVED);
    }
    // 6to4 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD
    if s[0] == 0x2002 {
        return v4_reason(v4_from_segments(s[1], s[2]));
    }
    // Teredo 2001:0::/32: server in bits 32..64, client (inverted) in the last 32 bits
    if s[0] == 0x2001 && s[1] == 0 {
        return v4_reason(v4_from_segments(!s[6], !s[7]))
            .or_else(|| v4_reason(v4_from_segments(s[2], s[3])));
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return Some(DOCUMENTATION);
    }
    if s[0] == 0x3fff && s[1] & 0xf000 == 0 {
        return Some(DOCUMENTATION); // 3fff::/20 (RFC 9637)
    }
    if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
        return Some(BENCHMARKING); // 2001:2::/48
    }
    if s[0] == 0x2001 && matches!(s[1] & 0xfff0, 0x10 | 0x20) {
        return Some(RESERVED); // ORCHID / ORCHIDv2
    }
    match s[0] {
        x if x & 0xff00 == 0xff00 => Some(MULTICAST),
        x if x & 0xffc0 == 0xfe80 => Some(LINK_LOCAL),
        x if x & 0xffc0 == 0xfec0 => Some(SITE_LOCAL),
        x if x & 0xfe00 == 0xfc00 => Some(UNIQUE_LOCAL),
        x if x & 0xe000 == 0x2000 => None, // global unicast 2000::/3
        _ => Some(RESERVED),               // 100::/64 discard, 5f00::/16 SRv6, unassigned, ...
    }
}

/// "a"/"an" for one of the reasons returned by [`is_forbidden`].
pub(crate) fn article(reason: &str) -> &'static str {
    match reason.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o') => "an",
        Some(b'u') if !reason.starts_with("uni") => "an",
        _ => "a",
    }
}

/// Why [`validate_url`] refused a webhook URL. `Display` is a sentence fit for
/// an API validation error; it never repeats the URL (which may carry tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlProblem {
    /// Not a parseable absolute URL (relative, malformed, bad port, ...).
    NotAbsolute,
    /// Scheme other than `http` or `https`.
    Scheme,
    /// No host, or an empty/invalid one.
    NoHost,
    /// A username or password is embedded in the URL.
    Credentials,
    /// The host is a forbidden address (the reason from [`is_forbidden`]) or
    /// a `localhost` name.
    ForbiddenHost(&'static str),
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAbsolute => {
                f.write_str("URL must be a valid absolute URL, e.g. https://example.com/webhook")
            }
            Self::Scheme => f.write_str("URL scheme must be http or https"),
            Self::NoHost => f.write_str("URL must have a valid host"),
            Self::Credentials => f.write_str("URL must not contain a username or password"),
            Self::ForbiddenHost(reason) => write!(
                f,
                "URL host is {} {reason}; deliveries to internal destinations are not allowed",
                article(reason)
            ),
        }
    }
}

impl std::error::Error for UrlProblem {}

/// Registry-side validation of a webhook URL: an absolute `http`/`https` URL
/// with a host and without userinfo. Unless `allow_private`, a literal IP host
/// for which [`is_forbidden`] answers, and `localhost` / `*.localhost`, are
/// refused. No DNS lookup is done here: names that resolve to forbidden
/// addresses are refused at delivery time by the sender's resolver.
pub fn validate_url(url: &str, allow_private: bool) -> Result<url::Url, UrlProblem> {
    use url::ParseError as P;
    let parsed = url::Url::parse(url).map_err(|e| match e {
        P::EmptyHost
        | P::IdnaError
        | P::InvalidIpv4Address
        | P::InvalidIpv6Address
        | P::InvalidDomainCharacter => UrlProblem::NoHost,
        _ => UrlProblem::NotAbsolute,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlProblem::Scheme);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlProblem::Credentials);
    }
    let host = parsed.host().ok_or(UrlProblem::NoHost)?;
    if !allow_private && let Some(reason) = host_reason(&host) {
        return Err(UrlProblem::ForbiddenHost(reason));
    }
    Ok(parsed)
}

fn host_reason(host: &url::Host<&str>) -> Option<&'static str> {
    match host {
        url::Host::Ipv4(ip) => v4_reason(*ip),
        url::Host::Ipv6(ip) => v6_reason(*ip),
        url::Host::Domain(name) => {
            // The url crate lowercases special-scheme hosts already.
            let name = name.strip_suffix('.').unwrap_or(name);
            (name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost"))
            .then_some(LOOPBACK)
        }
    }
}
