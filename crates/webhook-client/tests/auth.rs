#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Custom headers and receiver authentication (Basic, Bearer, OAuth2 client
//! credentials against a local token endpoint), over real HTTP on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use test_support::{Received, Receiver, Reply};
use webhook_client::{
    AttemptOutcome, Auth, OAuth2Client, Outbound, SenderConfig, Signing, Verdict, WebhookSender,
    check_custom_header,
};

const CLIENT_SECRET: &str = "cl1ent-s3cret/ü";
const BODY: &[u8] = br#"{"user_id":1}"#;

fn sender(allow_private: bool) -> WebhookSender {
    WebhookSender::new(SenderConfig {
        allow_private_targets: allow_private,
        ..SenderConfig::default()
    })
    .unwrap()
}

fn outbound<'a>(
    url: &'a str,
    webhook_id: i32,
    headers: &'a [(HeaderName, HeaderValue)],
    auth: Option<&'a Auth>,
) -> Outbound<'a> {
    Outbound {
        url,
        webhook_id,
        event_type: "user.created",
        message_id: "msg_e_1",
        timestamp: 1_760_000_000,
        body: Bytes::from_static(BODY),
        signing: Signing::Hmac(&["s"]),
        headers,
        auth,
        traceparent: None,
    }
}

#[tokio::test]
async fn custom_headers_arrive_after_ours_and_never_replace_them() {
    let mut rx = Receiver::start(Reply::ok()).await;
    let url = rx.url("/hook");
    let mut headers = vec![
        check_custom_header("X-Tenant", "acme").unwrap(),
        check_custom_header("X-Tag", "a").unwrap(),
        check_custom_header("x-tag", "b").unwrap(),
        check_custom_header("Authorization", "Token custom").unwrap(),
    ];
    // What check_custom_header refuses, handed over anyway: dropped.
    for (n, v) in [
        ("content-type", "text/plain"),
        ("x-webhook-signature", "sha256=forged"),
        ("user-agent", "other"),
        ("host", "elsewhere"),
    ] {
        headers.push((HeaderName::from_static(n), HeaderValue::from_static(v)));
    }
    let out = sender(true).send(&outbound(&url, 1, &headers, None)).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    let got = rx.next().await;
    assert_eq!(got.header("x-tenant"), Some("acme"));
    let tags: Vec<&str> = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-tag"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["a", "b"]);
    // Without receiver auth, a custom Authorization is sent.
    assert_eq!(got.header("authorization"), Some("Token custom"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header_count("content-type"), 1);
    assert_eq!(got.header_count("x-webhook-signature"), 1);
    assert_ne!(got.header("x-webhook-signature"), Some("sha256=forged"));
    assert_eq!(got.header("user-agent"), Some(webhook_client::USER_AGENT));
    assert_eq!(got.header("host"), Some(rx.addr.to_string().as_str()));
    // Custom headers come after ours.
    let pos = |name: &str| {
        got.headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap()
    };
    assert!(pos("x-tenant") > pos("webhook-timestamp"));
    // Values are not shown by Debug.
    let req = outbound(&url, 1, &headers, None);
    assert!(!format!("{req:?}").contains("acme"));
}

#[tokio::test]
async fn basic_and_bearer_arrive_and_win_over_a_custom_authorization() {
    let mut rx = Receiver::start(Reply::ok()).await;
    let url = rx.url("/hook");
    let custom = [check_custom_header("Authorization", "Token custom").unwrap()];
    let basic = Auth::Basic {
        username: "Aladdin".into(),
        password: "open sesame".into(),
    };
    let out = sender(true)
        .send(&outbound(&url, 1, &custom, Some(&basic)))
        .await;
    assert!(out.is_success(), "{out:?}");
    let got = rx.next().await;
    assert_eq!(got.header_count("authorization"), 1);
    assert_eq!(
        got.header("authorization"),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );

    let bearer = Auth::Bearer {
        token: "b3arer-t0ken".into(),
    };
    let out = sender(true)
        .send(&outbound(&url, 1, &custom, Some(&bearer)))
        .await;
    assert!(out.is_success(), "{out:?}");
    let got = rx.next().await;
    assert_eq!(got.header_count("authorization"), 1);
    assert_eq!(got.header("authorization"), Some("Bearer b3arer-t0ken"));

    let bad = Auth::Bearer {
        token: "bad\r\ntoken".into(),
    };
    let out = sender(true).send(&outbound(&url, 1, &[], Some(&bad))).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(
        out.error.as_deref(),
        Some("bearer token is not a valid header value")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.count(), 2, "nothing sent with an invalid token");
}

/// A token endpoint (`/token`) and a receiver (`/hook`) on one server.
/// Tokens are `tok-<n>` for the n-th token request; the receiver answers
/// 401 to revoked tokens and to requests without a bearer token.
struct OAuthWorld {
    rx: Receiver,
    revoked_first: Arc<AtomicBool>,
    client: OAuth2Client,
}

impl OAuthWorld {
    async fn start(expires_in: Option<u64>) -> Self {
        Self::start_with(move |n| {
            let expires = expires_in.map_or(String::new(), |e| format!(r#","expires_in":{e}"#));
            Reply::Respond {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer"{expires}}}"#)
                    .into_bytes(),
                delay: Duration::ZERO,
            }
        })
        .await
    }

    async fn start_with(token_reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let revoked_first = Arc::new(AtomicBool::new(false));
        let revoked = revoked_first.clone();
        let rx = Receiver::start_with(move |r: &Received, n| {
            if r.path == "/token" {
                return token_reply(n);
            }
            match r.header("authorization") {
                Some("Bearer tok-0") if revoked.load(Ordering::SeqCst) => Reply::status(401),
                Some(v) if v.starts_with("Bearer tok-") => Reply::ok(),
                _ => Reply::status(401),
            }
        })
        .await;
        let client = OAuth2Client {
            token_url: rx.url("/token"),
            client_id: "hook client".into(),
            client_secret: CLIENT_SECRET.into(),
            scope: Some("webhooks.receive".into()),
        };
        Self {
            rx,
            revoked_first,
            client,
        }
    }

    fn token_requests(&self) -> Vec<Received> {
        self.rx.on("/token")
    }

    fn hooks(&self) -> Vec<Received> {
        self.rx.on("/hook")
    }
}

fn assert_clean(out: &AttemptOutcome) {
    let err = out.error.as_deref().unwrap_or_default();
    assert!(!err.contains(CLIENT_SECRET), "{err}");
    assert!(!err.contains("tok-"), "{err}");
}

#[tokio::test]
async fn oauth2_many_deliveries_use_one_token_request() {
    let world = OAuthWorld::start(Some(3600)).await;
    let auth = Auth::OAuth2(world.client.clone());
    let url = world.rx.url("/hook");
    let s = sender(true);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, url, auth) = (s.clone(), url.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            s.send(&outbound(&url, 5, &[], Some(&auth))).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.is_success(), "{out:?}");
    }
    let tokens = world.token_requests();
    assert_eq!(
        tokens.len(),
        1,
        "one token request for 20 concurrent deliveries"
    );
    let hooks = world.hooks();
    assert_eq!(hooks.len(), 20);
    assert!(
        hooks
            .iter()
            .all(|h| h.header("authorization") == Some("Bearer tok-0"))
    );

    // The token request itself (RFC 6749 4.4 with 2.3.1 client authentication).
    let t = &tokens[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        std::str::from_utf8(&t.body).unwrap(),
        "grant_type=client_credentials&scope=webhooks.receive"
    );
    let basic = t
        .header("authorization")
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    assert_eq!(
        String::from_utf8(B64.decode(basic).unwrap()).unwrap(),
        "hook+client:cl1ent-s3cret%2F%C3%BC"
    );

    // Another webhook has its own token; a changed secret never reuses the old one.
    assert!(
        s.send(&outbound(&url, 6, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert_eq!(world.token_requests().len(), 2);
    assert!(
        s.send(&outbound(&url, 5, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert_eq!(world.token_requests().len(), 2, "webhook 5 still cached");
    let mut rotated = world.client.clone();
    rotated.client_secret = "rotated-secret".into();
    let rotated = Auth::OAuth2(rotated);
    assert!(
        s.send(&outbound(&url, 5, &[], Some(&rotated)))
            .await
            .is_success()
    );
    assert_eq!(
        world.token_requests().len(),
        3,
        "changed settings fetch anew"
    );
    let last = world.hooks().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer tok-2"));
}

#[tokio::test]
async fn oauth2_expired_token_is_fetched_again() {
    // expires_in 31 s less the 30 s margin: usable for one second.
    let world = OAuthWorld::start(Some(31)).await;
    let auth = Auth::OAuth2(world.client.clone());
    let url = world.rx.url("/hook");
    let s = sender(true);
    for _ in 0..3 {
        assert!(
            s.send(&outbound(&url, 1, &[], Some(&auth)))
                .await
                .is_success()
        );
    }
    assert_eq!(world.token_requests().len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        s.send(&outbound(&url, 1, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert_eq!(world.token_requests().len(), 2, "expired: fetched again");
    assert_eq!(
        world.hooks().pop().unwrap().header("authorization"),
        Some("Bearer tok-1")
    );

    // Within the margin: every delivery fetches.
    let world = OAuthWorld::start(Some(30)).await;
    let auth = Auth::OAuth2(world.client.clone());
    let url = world.rx.url("/hook");
    for _ in 0..2 {
        assert!(
            s.send(&outbound(&url, 2, &[], Some(&auth)))
                .await
                .is_success()
        );
    }
    assert_eq!(world.token_requests().len(), 2);
}

#[tokio::test]
async fn oauth2_revoked_token_is_refetched_once_and_the_request_resent() {
    // Without expires_in the token is kept until a 401.
    let world = OAuthWorld::start(None).await;
    let auth = Auth::OAuth2(world.client.clone());
    let url = world.rx.url("/hook");
    let s = sender(true);
    assert!(
        s.send(&outbound(&url, 1, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert!(
        s.send(&outbound(&url, 1, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert_eq!(world.token_requests().len(), 1);

    world.revoked_first.store(true, Ordering::SeqCst);
    let out = s.send(&outbound(&url, 1, &[], Some(&auth))).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    assert_eq!(
        out.response_status,
        Some(200),
        "the outcome is the resend's"
    );
    assert_eq!(world.token_requests().len(), 2, "exactly one refetch");
    let hooks = world.hooks();
    let auths: Vec<_> = hooks
        .iter()
        .map(|h| h.header("authorization").unwrap())
        .collect();
    assert_eq!(
        auths,
        [
            "Bearer tok-0",
            "Bearer tok-0",
            "Bearer tok-0",
            "Bearer tok-1"
        ]
    );
    assert_eq!(hooks[2].status, Some(401));
    assert_eq!(hooks[2].body, hooks[3].body);
    assert_eq!(
        hooks[2].header("webhook-signature"),
        hooks[3].header("webhook-signature")
    );
    // The new token is cached.
    assert!(
        s.send(&outbound(&url, 1, &[], Some(&auth)))
            .await
            .is_success()
    );
    assert_eq!(world.token_requests().len(), 2);
}

#[tokio::test]
async fn oauth2_401_to_a_fresh_token_is_the_outcome() {
    // Tokens the receiver never takes.
    let s = sender(true);
    let world2 = OAuthWorld::start_with(|n| {
        Reply::with_body(
            200,
            format!(r#"{{"access_token":"nope-{n}","token_type":"bearer"}}"#),
        )
    })
    .await;
    let auth = Auth::OAuth2(world2.client.clone());
    let url = world2.rx.url("/hook");
    let out = s.send(&outbound(&url, 1, &[], Some(&auth))).await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(out.response_status, Some(401));
    assert_eq!(
        world2.token_requests().len(),
        1,
        "a fresh token is not fetched again"
    );
    assert_eq!(world2.hooks().len(), 1);
    // The next delivery reuses the cached token: 401 to it means one refetch and one resend.
    let out = s.send(&outbound(&url, 1, &[], Some(&auth))).await;
    assert_eq!(out.response_status, Some(401));
    assert_eq!(world2.token_requests().len(), 2);
    assert_eq!(world2.hooks().len(), 3);
}

#[tokio::test]
async fn oauth2_token_endpoint_failures_fail_the_attempt_without_secrets() {
    for (reply, expected) in [
        (
            Reply::with_body(400, r#"{"error":"invalid_client"}"#),
            "OAuth2 token request failed: HTTP 400",
        ),
        (
            Reply::with_body(200, "<html>not json</html>"),
            "OAuth2 token request failed: invalid response",
        ),
        (
            Reply::with_body(200, r#"{"access_token":"tok-x","token_type":"mac"}"#),
            "OAuth2 token request failed: invalid response",
        ),
    ] {
        let world = OAuthWorld::start_with(move |_| reply.clone()).await;
        let auth = Auth::OAuth2(world.client.clone());
        let url = world.rx.url("/hook");
        let out = sender(true)
            .send(&outbound(&url, 1, &[], Some(&auth)))
            .await;
        assert_eq!(out.verdict, Verdict::Failed);
        assert_eq!(out.error.as_deref(), Some(expected));
        assert_eq!(out.response_status, None);
        assert_eq!(out.response_body, None);
        assert_clean(&out);
        assert_eq!(world.token_requests().len(), 1);
        assert!(world.hooks().is_empty(), "no delivery without a token");
    }

    // Nobody listening at the token URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rx = Receiver::start(Reply::ok()).await;
    let url = rx.url("/hook");
    let auth = Auth::OAuth2(OAuth2Client {
        token_url: format!("http://127.0.0.1:{port}/token"),
        client_id: "c".into(),
        client_secret: CLIENT_SECRET.into(),
        scope: None,
    });
    let out = sender(true)
        .send(&outbound(&url, 1, &[], Some(&auth)))
        .await;
    assert_eq!(out.verdict, Verdict::Failed);
    assert_eq!(
        out.error.as_deref(),
        Some("OAuth2 token request failed: connection refused")
    );
    assert!(rx.untouched_after(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn oauth2_private_token_url_is_refused_without_a_token_request() {
    let mut world = OAuthWorld::start(Some(3600)).await;
    let port = world.rx.port();
    // A public destination: the token is needed before it is contacted.
    let url = "http://93.184.215.14/hook";
    let s = sender(false);
    for (token_url, needle) in [
        (
            format!("http://127.0.0.1:{port}/token"),
            "OAuth2 token request failed: destination refused: 127.0.0.1 is a loopback address",
        ),
        (
            format!("http://localhost:{port}/token"),
            "OAuth2 token request failed: destination refused: localhost resolves to ",
        ),
    ] {
        let mut client = world.client.clone();
        client.token_url = token_url;
        let auth = Auth::OAuth2(client);
        let out = s.send(&outbound(url, 1, &[], Some(&auth))).await;
        assert_eq!(out.verdict, Verdict::Refused, "{out:?}");
        let err = out.error.as_deref().unwrap();
        assert!(err.starts_with(needle), "{err}");
        assert!(!err.contains("/token"), "{err}");
        assert_clean(&out);
    }
    assert!(world.rx.untouched_after(Duration::from_millis(200)).await);
}
