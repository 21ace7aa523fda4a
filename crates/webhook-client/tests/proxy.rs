#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The egress proxy, with a real one: Debian's `tinyproxy` on loopback
//! (CI installs it, deploy/lib.sh `ensure_test_tools`; without it these
//! tests fail, saying so). Each test runs its own tinyproxy in the
//! foreground with a config and log file of its own.

use std::time::Duration;

use bytes::Bytes;
use test_support::tinyproxy::TinyProxy;
use test_support::{Receiver, Reply};
use webhook_client::{
    AttemptOutcome, Outbound, ProxyUrl, SenderConfig, Signing, Verdict, WebhookSender,
};

const PROXY_USER: &str = "egress-user";
const PROXY_PASSWORD: &str = "Pr0xy-Pa55word";

/// The proxy's URLs for the sender.
trait ProxyUrls {
    fn url(&self, host: &str) -> ProxyUrl;
    fn url_with(&self, user: &str, password: &str) -> ProxyUrl;
}

impl ProxyUrls for TinyProxy {
    fn url(&self, host: &str) -> ProxyUrl {
        ProxyUrl::parse(&format!("http://{host}:{}", self.port())).unwrap()
    }

    fn url_with(&self, user: &str, password: &str) -> ProxyUrl {
        ProxyUrl::parse(&format!(
            "http://{user}:{password}@127.0.0.1:{}",
            self.port()
        ))
        .unwrap()
    }
}

fn sender(proxy: ProxyUrl, allow_private: bool) -> WebhookSender {
    WebhookSender::new(SenderConfig {
        allow_private_targets: allow_private,
        total_timeout: Duration::from_secs(5),
        proxy: Some(proxy),
        ..SenderConfig::default()
    })
    .unwrap()
}

fn outbound(url: &str) -> Outbound<'_> {
    Outbound {
        url,
        webhook_id: 3,
        event_type: "user.created",
        message_id: "msg_e_3",
        timestamp: 1_760_000_000,
        body: Bytes::from_static(br#"{"user_id":1}"#),
        signing: Signing::Hmac(&["s"]),
        headers: &[],
        auth: None,
        traceparent: None,
    }
}

fn assert_no_credentials(text: &str) {
    assert!(
        !text.contains(PROXY_PASSWORD),
        "proxy password leaked: {text}"
    );
    assert!(!text.contains(PROXY_USER), "proxy user leaked: {text}");
}

#[tokio::test]
async fn deliveries_go_through_the_proxy() {
    let proxy = TinyProxy::start("");
    let mut rx = Receiver::start(Reply::ok()).await;
    let port = rx.port();
    // The proxy named by a loopback name: its own address is never checked.
    let s = sender(proxy.url("localhost"), true);

    let out = s.send(&outbound(&rx.url("/hook?token=t"))).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?} {}", proxy.log());
    let got = rx.next().await;
    assert_eq!(got.path, "/hook?token=t");
    assert!(
        got.header("via").is_some_and(|v| v.contains("tinyproxy")),
        "came through tinyproxy: {:?}",
        got.headers
    );
    assert!(got.header("x-webhook-signature").is_some());
    let requests = proxy.requests();
    assert_eq!(
        requests,
        [format!(
            "POST http://127.0.0.1:{port}/hook?token=t HTTP/1.1"
        )],
        "{}",
        proxy.log()
    );

    // https goes through CONNECT (the receiver speaks plain HTTP, so TLS fails after the tunnel).
    let out = s
        .send(&outbound(&format!("https://127.0.0.1:{port}/hook")))
        .await;
    assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
    let requests = proxy.requests();
    assert_eq!(requests.len(), 2, "{}", proxy.log());
    assert_eq!(requests[1], format!("CONNECT 127.0.0.1:{port} HTTP/1.1"));
}

#[tokio::test]
async fn private_destinations_are_refused_before_the_proxy() {
    // Everything tinyproxy is asked for is refused by its filter (so no
    // request leaves this machine): a public destination gets 403 from it.
    let dir_filter = std::env::temp_dir().join(format!(
        "webhook-client-tinyproxy-filter-{}",
        std::process::id()
    ));
    std::fs::write(&dir_filter, "").unwrap();
    let proxy = TinyProxy::start(&format!(
        "Filter \"{}\"\nFilterDefaultDeny Yes\n",
        dir_filter.display()
    ));
    let mut rx = Receiver::start(Reply::ok()).await;
    let port = rx.port();
    let s = sender(proxy.url("localhost"), false);
    let connections_at_start = proxy.connections();
    for (url, needle) in [
        (
            format!("http://127.0.0.1:{port}/hook?token=t"),
            "destination refused: 127.0.0.1 is a loopback address".to_owned(),
        ),
        (
            format!("http://localhost:{port}/hook?token=t"),
            "destination refused: localhost resolves to ".to_owned(),
        ),
        (
            format!("https://localhost:{port}/hook?token=t"),
            "destination refused: localhost resolves to ".to_owned(),
        ),
        (
            format!("http://[::1]:{port}/hook"),
            "destination refused: ::1 is a loopback address".to_owned(),
        ),
        (
            "http://10.0.0.8/hook".to_owned(),
            "destination refused: 10.0.0.8 is a private address".to_owned(),
        ),
    ] {
        let out = s.send(&outbound(&url)).await;
        assert_eq!(out.verdict, Verdict::Refused, "{url}: {out:?}");
        let err = out.error.as_deref().unwrap();
        assert!(err.starts_with(&needle), "{err}");
        assert!(!err.contains("token"), "{err}");
    }
    assert!(rx.untouched_after(Duration::from_millis(200)).await);
    assert!(proxy.requests().is_empty(), "{}", proxy.log());
    assert_eq!(
        proxy.connections(),
        connections_at_start,
        "not even a connection to the proxy: {}",
        proxy.log()
    );

    // A public destination is handed to the proxy (named by a loopback
    // name, with private targets refused): its filter answers 403.
    let out = s.send(&outbound("http://93.184.215.14/hook")).await;
    assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
    assert_eq!(out.response_status, Some(403), "{out:?} {}", proxy.log());
    assert_eq!(
        proxy.requests(),
        ["POST http://93.184.215.14/hook HTTP/1.1"],
        "{}",
        proxy.log()
    );
    let _ = std::fs::remove_file(dir_filter);
}

fn assert_outcome_clean(out: &AttemptOutcome) {
    assert_no_credentials(&format!("{out:?}"));
}

#[tokio::test]
async fn proxy_credentials_work_and_never_show() {
    let proxy = TinyProxy::start(&format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}"));
    let mut rx = Receiver::start(Reply::ok()).await;
    let port = rx.port();
    let url = proxy.url_with(PROXY_USER, PROXY_PASSWORD);
    assert_no_credentials(&url.to_string());
    assert_no_credentials(&format!("{url:?}"));
    assert_eq!(
        url.to_string(),
        format!("http://***@127.0.0.1:{}", proxy.port())
    );
    let s = sender(url, true);
    assert_no_credentials(&format!("{s:?}"));
    assert_no_credentials(&format!("{:?}", s.config()));

    let out = s.send(&outbound(&rx.url("/hook"))).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?} {}", proxy.log());
    let got = rx.next().await;
    assert!(got.header("via").is_some_and(|v| v.contains("tinyproxy")));
    assert_eq!(got.header("proxy-authorization"), None, "not forwarded");
    assert_outcome_clean(&out);

    // Wrong password: the proxy answers 407 (http) or refuses the tunnel (https).
    let wrong = sender(proxy.url_with(PROXY_USER, "wrong-password"), true);
    let out = wrong.send(&outbound(&rx.url("/hook"))).await;
    assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
    // tinyproxy answers 401 to wrong credentials, 407 to none.
    assert_eq!(out.response_status, Some(401), "{out:?}");
    assert!(!format!("{out:?}").contains("wrong-password"));
    let out = wrong
        .send(&outbound(&format!("https://127.0.0.1:{port}/hook")))
        .await;
    assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
    let err = out.error.as_deref().unwrap();
    assert!(
        err.ends_with(&format!(
            "(via proxy http://***@127.0.0.1:{})",
            proxy.port()
        )),
        "{err}"
    );
    assert!(!format!("{out:?}").contains("wrong-password"));
    // Without credentials at all.
    let none = sender(proxy.url("127.0.0.1"), true);
    let out = none.send(&outbound(&rx.url("/hook"))).await;
    assert_eq!(out.response_status, Some(407), "{out:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.count(), 1, "only the authenticated delivery arrived");

    // With the right credentials the tunnel opens (TLS then fails against
    // the plain-HTTP receiver).
    let out = s
        .send(&outbound(&format!("https://127.0.0.1:{port}/hook")))
        .await;
    assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
    let err = out.error.as_deref().unwrap();
    assert!(!err.contains("tunnel"), "{err}");
    assert_no_credentials(err);
    assert_eq!(
        proxy
            .requests()
            .iter()
            .filter(|r| r.starts_with("CONNECT "))
            .count(),
        2,
        "{}",
        proxy.log()
    );

    // The proxy's own log never has the password either.
    assert!(!proxy.log().contains(PROXY_PASSWORD));
}
