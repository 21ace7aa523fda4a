#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SSRF guard tables: `is_forbidden` and `validate_url`.

use std::net::IpAddr;

use webhook_client::ssrf::{UrlProblem, is_forbidden, validate_url};

fn check(ip: &str) -> Option<&'static str> {
    is_forbidden(ip.parse::<IpAddr>().unwrap())
}

#[test]
fn forbidden_addresses() {
    let table: &[(&str, &str)] = &[
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.0.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.0.8", "reserved"),
        ("192.0.2.10", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.5", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "metadata"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("100::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::127.0.0.1", "loopback"),
        ("::8.8.8.8", "reserved"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("64:ff9b::c0a8:101", "private"),
        ("64:ff9b:1::1", "reserved"),
        ("2002:7f00:1::1", "loopback"),
        ("2002:a00:1::", "private"),
        ("2002:a9fe:a9fe::1", "metadata"),
        // Teredo with an obfuscated client 127.0.0.1 (inverted bits)
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
    ];
    for (ip, word) in table {
        let reason = check(ip).unwrap_or_else(|| panic!("{ip} must be forbidden"));
        assert!(
            reason.contains(word),
            "{ip}: {reason:?} should mention {word}"
        );
    }
}

#[test]
fn public_addresses_pass() {
    for ip in [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.15.255.255",
        "172.32.0.1",
        "100.63.255.255",
        "100.128.0.1",
        "169.253.255.255",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.1",
        "223.255.255.255",
        "11.0.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:4860:4860::8888",
    ] {
        assert_eq!(check(ip), None, "{ip} is public");
    }
}

#[test]
fn validate_url_accepts_public_http_and_https() {
    let u = validate_url("https://example.com/hook?token=abc", false).unwrap();
    assert_eq!(u.host_str(), Some("example.com"));
    assert!(validate_url("http://8.8.8.8:8080/x", false).is_ok());
    assert!(validate_url("https://[2606:4700:4700::1111]/x", false).is_ok());
    assert!(validate_url("HTTPS://Example.COM/Hook", false).is_ok());
    // No DNS here: a name is accepted even if it would resolve privately.
    assert!(validate_url("https://internal.example/x", false).is_ok());
    assert!(validate_url("https://localhost.example.com/x", false).is_ok());
}

#[test]
fn validate_url_problems() {
    let cases: &[(&str, UrlProblem)] = &[
        ("/relative/path", UrlProblem::NotAbsolute),
        ("", UrlProblem::NotAbsolute),
        ("example.com/hook", UrlProblem::NotAbsolute),
        ("http://example.com:99999/", UrlProblem::NotAbsolute),
        ("ftp://example.com/x", UrlProblem::Scheme),
        ("file:///etc/passwd", UrlProblem::Scheme),
        ("javascript:alert(1)", UrlProblem::Scheme),
        ("http://", UrlProblem::NoHost),
        ("http://[::1/", UrlProblem::NoHost),
        ("https://user:pass@example.com/", UrlProblem::Credentials),
        ("https://user@example.com/", UrlProblem::Credentials),
        (
            "http://127.0.0.1/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://2130706433/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://[::1]:8080/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://[::ffff:127.0.0.1]/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://10.1.2.3/",
            UrlProblem::ForbiddenHost("private address"),
        ),
        (
            "http://169.254.169.254/latest",
            UrlProblem::ForbiddenHost("cloud metadata address"),
        ),
        (
            "http://localhost:8080/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://LOCALHOST./",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
        (
            "http://api.localhost/",
            UrlProblem::ForbiddenHost("loopback address"),
        ),
    ];
    for (url, want) in cases {
        assert_eq!(validate_url(url, false).err(), Some(*want), "{url:?}");
    }
}

#[test]
fn validate_url_allow_private() {
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://169.254.169.254/",
    ] {
        assert!(validate_url(url, true).is_ok(), "{url}");
    }
    // Structural problems stay problems.
    assert_eq!(
        validate_url("ftp://127.0.0.1/", true).err(),
        Some(UrlProblem::Scheme)
    );
    assert_eq!(
        validate_url("http://u:p@127.0.0.1/", true).err(),
        Some(UrlProblem::Credentials)
    );
}

#[test]
fn url_problem_messages_never_repeat_the_url() {
    let e = validate_url("http://10.0.0.1/hook?token=abc", false).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("a private address"), "{msg}");
    assert!(!msg.contains("token"), "{msg}");
    let e = validate_url("https://user:hunter2@example.com/", false).unwrap_err();
    assert!(!e.to_string().contains("hunter2"));
    for p in [
        UrlProblem::NotAbsolute,
        UrlProblem::Scheme,
        UrlProblem::NoHost,
        UrlProblem::Credentials,
        UrlProblem::ForbiddenHost("unspecified address"),
    ] {
        assert!(!p.to_string().is_empty());
    }
    assert!(
        UrlProblem::ForbiddenHost("unspecified address")
            .to_string()
            .contains("an unspecified address")
    );
    assert!(
        UrlProblem::ForbiddenHost("unique-local address")
            .to_string()
            .contains("a unique-local address")
    );
}
