//! The egress proxy every webhook POST (and OAuth2 token request) goes
//! through, when one is configured ([`crate::SenderConfig::proxy`]).
//!
//! An HTTP proxy: `https` destinations are reached through `CONNECT`, `http`
//! ones with absolute-form requests. Credentials in the proxy URL are sent
//! as proxy basic auth; they never appear in `Display`, `Debug` or errors
//! (`http://***@host:port`).
//!
//! The SSRF guard still decides on the destination: with a proxy and
//! without `allow_private_targets`, the sender resolves the destination's
//! host itself and refuses it, before anything is sent to the proxy, when
//! any address is forbidden (a literal IP is checked as it is). The proxy's
//! own host is not checked (it is normally a private address). The proxy
//! then resolves the name again: a DNS answer that changes between the two
//! lookups is a residual window, so operators should make the proxy deny
//! private ranges as well.

use std::fmt;
use std::str::FromStr;

/// Why a proxy URL was refused. Never repeats the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("proxy URL must look like http://[user:password@]host:port")]
    Malformed,
    #[error("proxy URL scheme must be http")]
    Scheme,
    #[error("proxy URL must have a host")]
    NoHost,
    #[error("proxy URL must not have a path, query or fragment")]
    Path,
}

/// A validated `http://[user:password@]host[:port]` proxy URL (port 80 when
/// omitted). `Display` and `Debug` hide the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: url::Url,
}

impl ProxyUrl {
    pub fn parse(text: &str) -> Result<Self, ProxyUrlError> {
        let url = url::Url::parse(text.trim()).map_err(|_| ProxyUrlError::Malformed)?;
        if url.scheme() != "http" {
            return Err(ProxyUrlError::Scheme);
        }
        if url.host().is_none() {
            return Err(ProxyUrlError::NoHost);
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(ProxyUrlError::Path);
        }
        Ok(Self { url })
    }

    /// Whether the URL carries a username or password.
    #[must_use]
    pub fn has_credentials(&self) -> bool {
        !self.url.username().is_empty() || self.url.password().is_some()
    }

    /// The reqwest proxy for all traffic (credentials become proxy basic
    /// auth; reqwest percent-decodes them).
    pub(crate) fn to_reqwest(&self) -> reqwest::Result<reqwest::Proxy> {
        reqwest::Proxy::all(self.url.clone())
    }
}

impl FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if self.has_credentials() {
            f.write_str("***@")?;
        }
        // A host is checked at parse time.
        if let Some(host) = self.url.host() {
            write!(f, "{host}")?;
        }
        if let Some(port) = self.url.port_or_known_default() {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl(\"{self}\")")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn display_and_debug_hide_credentials() {
        let p = ProxyUrl::parse("http://proxy-user:pr0xy-pass@egress.internal:3128").unwrap();
        assert!(p.has_credentials());
        assert_eq!(p.to_string(), "http://***@egress.internal:3128");
        assert_eq!(
            format!("{p:?}"),
            "ProxyUrl(\"http://***@egress.internal:3128\")"
        );
        let p: ProxyUrl = "http://10.0.0.1:8888/".parse().unwrap();
        assert!(!p.has_credentials());
        assert_eq!(p.to_string(), "http://10.0.0.1:8888");
        let p = ProxyUrl::parse("http://[::1]").unwrap();
        assert_eq!(p.to_string(), "http://[::1]:80");
        assert!(p.to_reqwest().is_ok());
    }

    #[test]
    fn what_is_refused() {
        assert_eq!(ProxyUrl::parse("not a url"), Err(ProxyUrlError::Malformed));
        assert_eq!(
            ProxyUrl::parse("socks5://u:secret@h:1"),
            Err(ProxyUrlError::Scheme)
        );
        assert_eq!(ProxyUrl::parse("https://h:1"), Err(ProxyUrlError::Scheme));
        assert_eq!(ProxyUrl::parse("http://h:1/x"), Err(ProxyUrlError::Path));
        assert_eq!(ProxyUrl::parse("http://h:1/?q"), Err(ProxyUrlError::Path));
        assert_eq!(
            ProxyUrl::parse("http://h:99999"),
            Err(ProxyUrlError::Malformed)
        );
        let err = ProxyUrl::parse("socks5://u:secret@h:1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
