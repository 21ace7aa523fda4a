//! `eventctl tail`: live events as one JSON line each, from NATS or
//! through a gateway's WebSocket or Server-Sent Events (`--sse`), and
//! `eventctl deadletters`.
//!
//! Every line is the gateway's event frame:
//! `{"type","payload","timestamp","id","seq","epoch"}` (`epoch` names the
//! stream `seq` belongs to). Through a gateway, a dropped connection is
//! reopened with `since=<last seq>&epoch=<epoch>`, so nothing is missed
//! while the gateway restarts (as long as the stream still holds it); over
//! SSE the same is done with `Last-Event-ID`, as a browser does.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use futures::{SinkExt, StreamExt};
use proto_events::nats::{FirstConnect, NatsArgs};
use proto_events::{Envelope, Namespace, PatternSet};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// `eventctl tail`
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Event types or patterns, comma-separated (`ticket.*,user.created`);
    /// every event when absent.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Start after this stream sequence (stored events first, then live);
    /// only new events when absent.
    #[arg(long)]
    pub since: Option<u64>,
    /// Read through a gateway (`ws://127.0.0.1:8081/ws`) instead of NATS.
    #[arg(long, value_name = "URL")]
    pub via_gateway: Option<String>,
    /// Through the gateway, read its Server-Sent Events (`/sse`, over plain
    /// HTTP) instead of the WebSocket; a `ws://…/ws` URL is read as
    /// `http://…/sse`.
    #[arg(long, requires = "via_gateway")]
    pub sse: bool,
    /// The API token for the gateway.
    #[arg(long, env = "EVENTCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

/// Where the lines go (stdout for the command, a channel in tests).
pub type Sink<'a> = &'a mut (dyn FnMut(&str) -> anyhow::Result<()> + Send);

/// Prints events until `stop`, `--max` or a fatal error.
pub async fn tail(
    nats: &NatsArgs,
    ns: Namespace,
    args: TailArgs,
    sink: Sink<'_>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let patterns: Vec<&str> = args.types.iter().map(String::as_str).collect();
    let filter = if patterns.is_empty() {
        None
    } else {
        Some(PatternSet::parse(patterns.iter().copied())?)
    };
    match &args.via_gateway {
        Some(url) => {
            let token = args
                .token
                .clone()
                .context("--via-gateway needs --token (or EVENTCTL_TOKEN)")?;
            if args.sse {
                tail_sse(url, &token, &args, sink, stop).await
            } else {
                tail_gateway(url, &token, &args, sink, stop).await
            }
        }
        None => tail_nats(nats, ns, &args, filter, sink, stop).await,
    }
}

async fn tail_nats(
    nats: &NatsArgs,
    ns: Namespace,
    args: &TailArgs,
    filter: Option<PatternSet>,
    sink: Sink<'_>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = nats.connect("eventctl", FirstConnect::FailFast).await?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(ns.stream())
        .await
        .with_context(|| format!("no stream {}", ns.stream()))?;
    let epoch = stream
        .info()
        .await?
        .created
        .unix_timestamp_nanos()
        .to_string();
    let deliver_policy = match args.since {
        Some(s) => DeliverPolicy::ByStartSequence {
            start_sequence: s + 1,
        },
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: ns.events_filter(),
            deliver_policy,
            description: Some("eventctl tail".to_owned()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut printed = 0u64;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(m) => m?,
                None => bail!("the stream consumer ended"),
            },
        };
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let env = match Envelope::parse(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(seq, subject = %msg.subject, error = %e, "not an event (dead-lettered by the worker)");
                continue;
            }
        };
        if filter.as_ref().is_some_and(|f| !f.matches(env.event_type)) {
            continue;
        }
        let line = json!({
            "type": env.event_type.as_str(),
            "payload": Value::Object(env.payload),
            "timestamp": env.timestamp,
            "id": env.id,
            "seq": seq,
            "epoch": epoch,
        });
        sink(&line.to_string())?;
        printed += 1;
        if args.max.is_some_and(|m| printed >= m) {
            return Ok(());
        }
    }
}

/// The gateway URL with the token, filter and resume point.
fn gateway_url(
    base: &str,
    token: &str,
    types: &[String],
    since: Option<u64>,
    epoch: Option<&str>,
) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("bad gateway URL {base}"))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("token", token);
        if !types.is_empty() {
            q.append_pair("events", &types.join(","));
        }
        if let Some(s) = since {
            q.append_pair("since", &s.to_string());
        }
        if let Some(e) = epoch {
            q.append_pair("epoch", e);
        }
    }
    Ok(url)
}

async fn tail_gateway(
    base: &str,
    token: &str,
    args: &TailArgs,
    sink: Sink<'_>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut since = args.since;
    let mut epoch: Option<String> = None;
    let mut printed = 0u64;
    let mut failures = 0u32;
    loop {
        let url = gateway_url(base, token, &args.types, since, epoch.as_deref())?;
        let connected = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str())) => c,
        };
        let why = match connected {
            Ok(Ok((ws, _))) => {
                failures = 0;
                tracing::info!(since = ?since, "connected to the gateway");
                let (mut tx, mut rx) = ws.split();
                let mut ping = tokio::time::interval(Duration::from_secs(20));
                loop {
                    let frame = tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = tx.send(Message::Close(None)).await;
                            return Ok(());
                        }
                        _ = ping.tick() => {
                            let _ = tx.send(Message::text(r#"{"type":"ping"}"#)).await;
                            continue;
                        }
                        f = rx.next() => f,
                    };
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            let v: Value = match serde_json::from_str(text.as_str()) {
                                Ok(v) => v,
                                Err(_) => continue,
                            };
                            match v.get("seq").and_then(Value::as_u64) {
                                Some(seq) if v.get("payload").is_some() => {
                                    // A resumed connection never repeats a
                                    // sequence; this guards against it anyway.
                                    if since.is_some_and(|s| seq <= s)
                                        && epoch.as_deref() == v["epoch"].as_str()
                                    {
                                        continue;
                                    }
                                    since = Some(seq);
                                    epoch = v["epoch"].as_str().map(str::to_owned);
                                    sink(text.as_str())?;
                                    printed += 1;
                                    if args.max.is_some_and(|m| printed >= m) {
                                        let _ = tx.send(Message::Close(None)).await;
                                        return Ok(());
                                    }
                                }
                                _ => control(&v, &mut epoch),
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            if let Some(f) = &frame
                                && u16::from(f.code) == 1008
                            {
                                bail!("the gateway refused the token: {}", f.reason);
                            }
                            break format!("closed: {frame:?}");
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break e.to_string(),
                        None => break "connection ended".to_owned(),
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        failures += 1;
        tracing::warn!(reason = %why, since = ?since, "gateway connection lost; resuming");
        if !back_off(failures, &stop).await {
            return Ok(());
        }
    }
}

/// Waits before the next attempt, longer after each failure in a row
/// (200 ms each, at most 5 s); false when stopped meanwhile.
async fn back_off(failures: u32, stop: &CancellationToken) -> bool {
    let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
    tracing::info!(retry_in = ?wait, "reconnecting");
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The `/sse` URL of a gateway given as its WebSocket or SSE URL.
fn sse_url(base: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("bad gateway URL {base}"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("bad gateway URL {base}: scheme {other}"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("bad gateway URL {base}"))?;
    if matches!(url.path(), "" | "/" | "/ws") {
        url.set_path("/sse");
    }
    Ok(url)
}

/// One event of an SSE body: its `event:` name, `id:` and joined `data:`.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

/// Takes every complete event (up to a blank line) off the front of
/// `buf`; comments and events without data are skipped.
fn sse_events(buf: &mut String) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut ev = SseEvent::default();
        let mut data = Vec::new();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => data.push(value),
                "id" => ev.id = Some(value.to_owned()),
                "event" => ev.event = Some(value.to_owned()),
                _ => {}
            }
        }
        if !data.is_empty() {
            ev.data = data.join("\n");
            out.push(ev);
        }
    }
    out
}

async fn tail_sse(
    base: &str,
    token: &str,
    args: &TailArgs,
    sink: Sink<'_>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let base = sse_url(base)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut last_id: Option<String> = None;
    let mut printed = 0u64;
    let mut failures = 0u32;
    loop {
        // the first request resumes after --since; later ones after the
        // last event printed
        let since = if last_id.is_none() { args.since } else { None };
        let url = gateway_url(base.as_str(), token, &args.types, since, None)?;
        let mut req = http.get(url).header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let sent = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(Duration::from_secs(10), req.send()) => r,
        };
        let why = match sent {
            Ok(Ok(resp)) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                bail!("the gateway refused the token")
            }
            Ok(Ok(resp)) if !resp.status().is_success() => format!("status {}", resp.status()),
            Ok(Ok(mut resp)) => {
                failures = 0;
                tracing::info!(last_event_id = ?last_id, "connected to the gateway's event stream");
                let mut buf = String::new();
                loop {
                    let chunk = tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        c = resp.chunk() => c,
                    };
                    let chunk = match chunk {
                        Ok(Some(c)) => c,
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(e) => break e.to_string(),
                    };
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    for ev in sse_events(&mut buf) {
                        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                        match ev.event.as_deref() {
                            None => {
                                last_id = ev.id;
                                sink(&ev.data)?;
                                printed += 1;
                                if args.max.is_some_and(|m| printed >= m) {
                                    return Ok(());
                                }
                            }
                            Some("close") if v["code"] == 1008 => {
                                bail!("the gateway refused the token: {}", v["reason"]);
                            }
                            Some(_) => control(&v, &mut None),
                        }
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        failures += 1;
        tracing::warn!(reason = %why, last_event_id = ?last_id, "gateway event stream lost; resuming");
        if !back_off(failures, &stop).await {
            return Ok(());
        }
    }
}

/// Control messages go to the log, not to the output.
fn control(v: &Value, epoch: &mut Option<String>) {
    match v["type"].as_str() {
        Some("resync_required") => {
            tracing::warn!(message = %v["message"], first_seq = %v["first_seq"],
                "the gateway cannot resume from here; events were missed");
            // Sequences of another stream mean nothing now.
            *epoch = v["epoch"].as_str().map(str::to_owned);
        }
        Some("error") => tracing::warn!(message = %v["message"], "gateway error"),
        _ => tracing::debug!(message = %v, "gateway message"),
    }
}

/// Prints each line on stdout, flushed (for pipes).
pub fn stdout_sink() -> impl FnMut(&str) -> anyhow::Result<()> + Send {
    move |line: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_gateway_url_carries_the_resume_point() {
        let u = gateway_url(
            "ws://127.0.0.1:8081/ws",
            "t k",
            &["ticket.*".into(), "user.created".into()],
            Some(42),
            Some("17"),
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "ws://127.0.0.1:8081/ws?token=t+k&events=ticket.*%2Cuser.created&since=42&epoch=17"
        );
        let u = gateway_url("ws://h/ws", "t", &[], None, None).unwrap();
        assert_eq!(u.as_str(), "ws://h/ws?token=t");
    }

    #[test]
    fn sse_urls_and_events() {
        assert_eq!(sse_url("ws://h:1/ws").unwrap().as_str(), "http://h:1/sse");
        assert_eq!(sse_url("wss://h/").unwrap().as_str(), "https://h/sse");
        assert_eq!(
            sse_url("http://h/gw/sse").unwrap().as_str(),
            "http://h/gw/sse"
        );
        assert!(sse_url("ftp://h").is_err());
        let mut buf = "retry: 1000\n\n: ping\n\nevent: resumed\ndata: {}\n\nid: 1:2\ndata: {\"a\":\ndata: 1}\n\nid: 1:3\nda".to_owned();
        let evs = sse_events(&mut buf);
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: Some("resumed".into()),
                    id: None,
                    data: "{}".into()
                },
                SseEvent {
                    event: None,
                    id: Some("1:2".into()),
                    data: "{\"a\":\n1}".into()
                },
            ]
        );
        assert_eq!(buf, "id: 1:3\nda");
    }
}
