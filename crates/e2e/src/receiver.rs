//! A webhook receiver on loopback that records every POST with its
//! `webhook-id` and can be switched to answer 500.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use parking_lot::Mutex;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The Standard Webhooks `webhook-id` (`msg_<event id>_<webhook id>`).
    pub webhook_id: String,
    pub at: Instant,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    failing: AtomicBool,
}

/// The running receiver; stopped when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

async fn record(req: HttpRequest, _body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let failing = state.failing.load(Ordering::SeqCst);
    let status = if failing { 500 } else { 200 };
    state.received.lock().push(Received {
        path: req.path().to_owned(),
        webhook_id: req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        at: Instant::now(),
        status,
    });
    if failing {
        HttpResponse::InternalServerError().body("failing on purpose")
    } else {
        HttpResponse::Ok().finish()
    }
}

impl Receiver {
    /// Listens on a free loopback port; answers 200 until told otherwise.
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        let data = web::Data::from(state.clone());
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::post().to(record))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            addr,
            state,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on answer 500 (`true`) or 200 (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        let what = format!("{n} webhook requests");
        crate::eventually(within, &what, || async {
            (self.count() >= n).then_some(())
        })
        .await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Stopping is asynchronous; the listener goes with the runtime.
        drop(self.handle.stop(false));
    }
}
