//! The live console page at `/`, driven in headless Chromium through the
//! DevTools protocol: load it, connect, see a published event, see a
//! reconnect resume with `since`, see "catching up" while the page cannot
//! keep up.

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Backing, TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_is_served() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let res = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"));
    // a browser's own request for an icon is answered, not refused
    let icon = app.http.get(app.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), 204);
    assert!(csp.contains("img-src 'self'"));
    let body = res.text().await.unwrap();
    assert!(body.contains("src=\"/console.js\""));
    assert!(!body.contains("src=\"http"), "no external assets");
    // The live view is the shared module (the portal serves the same file).
    let live = app.http.get(app.url("/live.js")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(live.text().await.unwrap(), proto_events::LIVE_JS);
    assert!(proto_events::LIVE_JS.contains("new WebSocket("));
    let console = app.http.get(app.url("/console.js")).send().await.unwrap();
    assert!(console.text().await.unwrap().contains("from \"/live.js\""));
    app.stop().await;
    b.cleanup().await;
}

fn find_chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

struct DevTools {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl DevTools {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::Text(
                json!({"id": id, "method": method, "params": params})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("DevTools answer")
                .expect("DevTools socket open")
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let v = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        v["result"]["result"]["value"].clone()
    }

    /// Opens the console signed in with `token` and waits until it is
    /// connected.
    async fn open_console(&mut self, app: &TestApp, token: &str) {
        let url = format!("{}#token={token}", app.url("/"));
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "document.getElementById('status')?.textContent === 'connected'",
            "connecting",
        )
        .await;
    }

    /// Polls `expr` until it is true.
    async fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.eval(expr).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let page = self.eval("document.body.innerText").await;
                panic!("console page: {what} did not happen; page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A headless Chromium with one page, driven over DevTools.
struct Browser {
    child: tokio::process::Child,
    profile: std::path::PathBuf,
    dt: DevTools,
}

impl Browser {
    /// Starts Chromium; `None` when it is not installed.
    async fn start(app: &TestApp) -> Option<Browser> {
        let chromium = find_chromium()?;
        let profile = std::env::temp_dir().join(format!("gw-chromium-{}", uuid::Uuid::new_v4()));
        let mut child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                    return url.to_owned();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium did not start");
        // keep draining stderr so chromium never blocks on it
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let targets: Value = app
            .http
            .get(format!("http://{host}/json/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_ws = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str())
            .await
            .unwrap();
        Some(Browser {
            child,
            profile,
            dt: DevTools { ws, next_id: 0 },
        })
    }

    async fn close(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_streams_events_and_resumes_in_headless_chromium() {
    let b = Backing::new().await;
    let app = TestApp::spawn(b.config()).await;
    let Some(browser) = Browser::start(&app).await else {
        println!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let mut dt = browser.dt;
    dt.open_console(&app, &b.token).await;
    // the token left the address bar
    assert_eq!(dt.eval("location.hash").await, json!(""));

    let marker = format!("console-{}", uuid::Uuid::new_v4().simple());
    let mut payload = crate::helpers::user_payload(1);
    payload["username"] = json!(marker);
    let seq = b.publish("user.created", payload).await;
    dt.wait_for(
        &format!("document.getElementById('log').innerText.includes('{marker}')"),
        "showing the published event",
    )
    .await;
    assert_eq!(
        dt.eval("document.getElementById('last-seq').textContent")
            .await,
        json!(seq.to_string())
    );

    // type filters: only tickets from now on
    dt.eval(
        "document.getElementById('all').click(); \
         document.querySelectorAll('input.type').forEach(b => { if (!b.value.startsWith('ticket.')) b.click(); }); true",
    )
    .await;
    dt.wait_for(
        "document.getElementById('log').innerText.includes('subscribed to ticket.created')",
        "subscribing to ticket types",
    )
    .await;
    let hidden = format!("hidden-{}", uuid::Uuid::new_v4().simple());
    let mut p = crate::helpers::user_payload(2);
    p["username"] = json!(hidden);
    b.publish("user.created", p).await;
    let shown = format!("shown-{}", uuid::Uuid::new_v4().simple());
    b.publish(
        "ticket.created",
        json!({"ticket_id": 1, "user_id": 1, "title": shown, "status": "open", "priority": "low", "has_media": false}),
    )
    .await;
    dt.wait_for(
        &format!("document.getElementById('log').innerText.includes('{shown}')"),
        "showing the ticket event",
    )
    .await;
    assert_eq!(
        dt.eval(&format!(
            "document.getElementById('log').innerText.includes('{hidden}')"
        ))
        .await,
        json!(false)
    );

    // drop the socket; an event published meanwhile arrives after the
    // reconnect, which resumes with since
    dt.eval("gatewayConsole.ws.close(4000, 'test'); true").await;
    let missed = format!("missed-{}", uuid::Uuid::new_v4().simple());
    b.publish(
        "ticket.created",
        json!({"ticket_id": 2, "user_id": 1, "title": missed, "status": "open", "priority": "low", "has_media": false}),
    )
    .await;
    dt.wait_for(
        &format!("document.getElementById('log').innerText.includes('{missed}')"),
        "showing the event published while disconnected",
    )
    .await;
    dt.wait_for(
        "document.getElementById('connects').textContent === '2' && \
         document.getElementById('log').innerText.includes('connected, resuming after seq')",
        "reconnecting with since",
    )
    .await;

    // pause closes the socket; an event published meanwhile is replayed by
    // the resume (since/epoch), not lost
    dt.eval("document.getElementById('pause').click(); true")
        .await;
    dt.wait_for(
        "document.getElementById('status').textContent === 'paused'",
        "pausing",
    )
    .await;
    let paused = format!("paused-{}", uuid::Uuid::new_v4().simple());
    b.publish(
        "ticket.created",
        json!({"ticket_id": 3, "user_id": 1, "title": paused, "status": "open", "priority": "low", "has_media": false}),
    )
    .await;
    dt.eval("document.getElementById('pause').click(); true")
        .await;
    dt.wait_for(
        &format!(
            "document.getElementById('log').innerText.includes('{paused}') && \
             document.getElementById('log').innerText.includes('1 missed event(s) replayed')"
        ),
        "resuming after a pause with the missed event",
    )
    .await;

    Browser { dt, ..browser }.close().await;
    app.stop().await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_catching_up_when_the_page_falls_behind() {
    let b = Backing::new().await;
    // A short queue and a small socket buffer, so a page that stops reading
    // for a few seconds overflows its queue and is switched to catch-up.
    let mut cfg = b.config();
    cfg.client_queue_messages = 16;
    cfg.socket_send_buffer = 4096;
    let app = TestApp::spawn(cfg).await;
    let Some(browser) = Browser::start(&app).await else {
        println!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let mut dt = browser.dt;
    dt.open_console(&app, &b.token).await;

    // The log keeps only its latest rows: note every status and info line.
    dt.eval(
        "window.seen = []; \
         const note = (t) => window.seen.push(t); \
         new MutationObserver(() => note('status: ' + document.getElementById('status').textContent)) \
           .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true}); \
         new MutationObserver((ms) => ms.forEach(m => m.addedNodes.forEach(n => { \
           if (n.classList?.contains('info')) note('info: ' + n.textContent); }))) \
           .observe(document.getElementById('log'), {childList: true}); true",
    )
    .await;

    // The page's main thread is busy for 6 s (it reads nothing) while
    // 1,500 events of about 4 KB each are published: more than the
    // browser's and the kernel's buffers hold.
    let total = 1500u64;
    let filler = "ж".repeat(2000);
    let publish = async {
        let mut last = 0;
        for n in 0..total {
            let mut p = crate::helpers::user_payload(n);
            p["username"] = json!(format!("{filler}-{n}"));
            last = b.publish("user.created", p).await;
        }
        last
    };
    let (busy, last) = tokio::join!(
        dt.eval("const until = Date.now() + 6000; while (Date.now() < until) {} true"),
        publish
    );
    assert_eq!(busy, json!(true));
    dt.wait_for(
        &format!(
            "document.getElementById('last-seq').textContent === '{last}' && \
             document.getElementById('count').textContent === '{total}'"
        ),
        "every event shown once",
    )
    .await;
    let seen = dt.eval("window.seen.join('\\n')").await;
    let seen = seen.as_str().unwrap();
    assert!(seen.contains("status: catching up ("), "{seen}");
    assert!(
        seen.contains("info: ") && seen.contains("catching up after seq"),
        "{seen}"
    );
    assert!(seen.contains("caught up: "), "{seen}");
    assert!(!seen.contains("resync required"), "{seen}");
    assert_eq!(
        dt.eval("document.getElementById('status').textContent")
            .await,
        json!("connected")
    );
    let m = app.metrics().await;
    let sample = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    // Falling behind again after a catch-up starts another one.
    assert!(sample("gateway_catchups_started_total ") >= 1, "{m}");
    assert_eq!(
        sample("gateway_catchups_finished_total "),
        sample("gateway_catchups_started_total "),
        "{m}"
    );
    assert!(m.contains("gateway_catchup_clients 0"), "{m}");
    Browser { dt, ..browser }.close().await;
    app.stop().await;
    b.cleanup().await;
}
