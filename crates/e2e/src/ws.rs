//! A gateway WebSocket client that records every event frame and, when the
//! connection drops, reconnects with `since=<last seq>&epoch=<epoch>` (the
//! gateway's resume protocol). Nothing is filtered: a repeated or missing
//! sequence shows in what it recorded.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// What the client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `(seq, event id)` of every event frame, in arrival order.
    pub events: Vec<(u64, String)>,
    /// Connections opened (the first and every resume).
    pub connections: usize,
    /// `resumed` messages (one per successful resume with `since`).
    pub resumed: usize,
    /// Messages that mean events were missed or something went wrong
    /// (`resync_required`, `error`, a welcome that is not the contract's).
    pub problems: Vec<String>,
}

/// The running client; stopped when dropped.
pub struct ResumingClient {
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

const WELCOME: &str =
    r#"{"type":"connection","status":"connected","message":"WebSocket connection established"}"#;

impl ResumingClient {
    /// Connects to `ws_url` (`ws://…/ws`) with `token`; returns once the
    /// first connection got the welcome message.
    pub async fn connect(ws_url: &str, token: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            ws_url.to_owned(),
            token.to_owned(),
            seen.clone(),
            stop_rx,
        ));
        let client = Self {
            seen,
            stop,
            task: Some(task),
        };
        crate::eventually(Duration::from_secs(10), "the WebSocket welcome", || async {
            (client.seen.lock().connections > 0).then_some(())
        })
        .await;
        client
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().clone()
    }

    pub fn event_count(&self) -> usize {
        self.seen.lock().events.len()
    }

    /// Waits until `n` event frames arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        let what = format!("{n} WebSocket events");
        crate::eventually(within, &what, || async {
            (self.event_count() >= n).then_some(())
        })
        .await;
    }

    pub async fn stop(mut self) -> Seen {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.seen()
    }
}

impl Drop for ResumingClient {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn run(url: String, token: String, seen: Arc<Mutex<Seen>>, mut stop: watch::Receiver<bool>) {
    let mut since: Option<(u64, String)> = None;
    loop {
        // A query in `url` (e.g. `events=operator.*`) is kept after the token.
        let mut target = match url.split_once('?') {
            Some((base, query)) => format!("{base}?token={token}&{query}"),
            None => format!("{url}?token={token}"),
        };
        if let Some((seq, epoch)) = &since {
            target.push_str(&format!("&since={seq}&epoch={epoch}"));
        }
        let connected = tokio::select! {
            _ = stop.changed() => return,
            c = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(target.as_str())) => c,
        };
        if let Ok(Ok((ws, _))) = connected {
            let (mut tx, mut rx) = ws.split();
            let mut welcomed = false;
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    f = rx.next() => f,
                };
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let mut seen = seen.lock();
                if !welcomed {
                    welcomed = true;
                    seen.connections += 1;
                    if text != WELCOME {
                        seen.problems.push(format!("welcome: {text}"));
                    }
                    continue;
                }
                let v: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => {
                        seen.problems.push(format!("not JSON: {text}"));
                        continue;
                    }
                };
                match (v["seq"].as_u64(), v["type"].as_str()) {
                    (Some(seq), _) if v.get("payload").is_some() => {
                        let id = v["id"].as_str().unwrap_or_default().to_owned();
                        seen.events.push((seq, id));
                        let epoch = v["epoch"].as_str().unwrap_or_default().to_owned();
                        since = Some((seq, epoch));
                    }
                    (_, Some("resumed")) => seen.resumed += 1,
                    (_, Some("pong")) => {}
                    _ => seen.problems.push(text),
                }
            }
        }
        // Refused while the gateway restarts: try again shortly.
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
