//! `eventctl tail` (from NATS and through a real gateway that restarts)
//! and `eventctl deadletters`, against the real NATS and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eventctl::deadletters::{self, DeadlettersArgs};
use eventctl::tail::{self, TailArgs};
use proto_events::nats::NatsArgs;
use proto_events::{Namespace, Publisher};
use serde_json::{Value, json};
use storage::testing::TestDb;
use storage::tokens::{TokenHasher, TokenSpec};
use test_support::nats_url;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Tail {
    lines: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_tail(ns: &Namespace, args: TailArgs) -> Tail {
    let (tx, lines) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let (ns, s) = (ns.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut sink = move |l: &str| {
            let _ = tx.send(l.to_owned());
            Ok(())
        };
        tail::tail(&NatsArgs::for_url(&nats_url()), ns, args, &mut sink, s).await
    });
    Tail { lines, stop, task }
}

impl Tail {
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), self.lines.recv())
            .await
            .expect("a line in time")
            .expect("tail running");
        serde_json::from_str(&line).unwrap()
    }
}

fn args() -> TailArgs {
    TailArgs {
        types: Vec::new(),
        since: None,
        via_gateway: None,
        sse: false,
        token: None,
        max: None,
    }
}

async fn backing() -> (Namespace, Publisher) {
    telemetry::init_test_logging();
    let ns = Namespace::unique();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let publisher = Publisher::new(client, ns.clone());
    publisher.ensure_stream().await.unwrap();
    (ns, publisher)
}

async fn cleanup(ns: &Namespace) {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(ns.stream()).await;
    let _ = js.delete_stream(ns.deadletter_stream()).await;
}

#[tokio::test]
async fn tail_from_nats_filters_types_and_starts_after_since() {
    let (ns, publisher) = backing().await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        let t = if i % 2 == 0 {
            "user.created"
        } else {
            "ticket.created"
        };
        seqs.push(
            publisher
                .publish_value(t, json!({"n": i}))
                .await
                .unwrap()
                .sequence,
        );
    }
    let mut t = start_tail(
        &ns,
        TailArgs {
            types: vec!["ticket.*".into()],
            since: Some(seqs[1]),
            max: Some(3),
            ..args()
        },
    );
    for (want_n, want_seq) in [(3, seqs[3]), (5, seqs[5])] {
        let v = t.next().await;
        assert_eq!(v["type"], "ticket.created");
        assert_eq!(v["payload"], json!({"n": want_n}));
        assert_eq!(v["seq"], want_seq);
        assert!(v["id"].is_string() && v["timestamp"].is_string() && v["epoch"].is_string());
    }
    // Then live; --max ends it.
    publisher
        .publish_value("ticket.status_changed", json!({"n": 6}))
        .await
        .unwrap();
    assert_eq!(t.next().await["payload"], json!({"n": 6}));
    tokio::time::timeout(Duration::from_secs(5), t.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    cleanup(&ns).await;
}

fn gateway_config(db: &TestDb, ns: &Namespace, bind: &str) -> gateway::Config {
    let mut c = gateway::Config::from_env().unwrap();
    c.database = storage::DatabaseArgs::for_url(&db.url);
    c.nats.nats_url = nats_url();
    c.nats.nats_prefix = ns.prefix().to_owned();
    c.bind = bind.to_owned();
    c.allowed_origins = Vec::new();
    c.shutdown_grace = Duration::from_secs(2);
    c.workers = 1;
    c.token_hmac_secret = "".into();
    c
}

async fn start_gateway(
    config: gateway::Config,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = gateway::Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..200 {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_via_gateway_resumes_across_a_gateway_restart_with_nothing_missed() {
    tail_across_a_gateway_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_over_sse_resumes_by_last_event_id_across_a_gateway_restart() {
    tail_across_a_gateway_restart(true).await;
}

async fn tail_across_a_gateway_restart(sse: bool) {
    let (ns, publisher) = backing().await;
    let db = TestDb::new().await.unwrap();
    let token = {
        let pool = db.pool().unwrap();
        let mut conn = pool.get().await.unwrap();
        let (_, token) = storage::tokens::create_token(
            &mut conn,
            &TokenHasher::new(None),
            TokenSpec {
                name: "tail".into(),
                ..TokenSpec::default()
            },
        )
        .await
        .unwrap();
        token
    };
    let (addr, stop, task) = start_gateway(gateway_config(&db, &ns, "127.0.0.1:0")).await;
    let mut published = Vec::new();
    let publish = async |n: usize, published: &mut Vec<(u64, String)>| {
        for i in 0..n {
            let p = publisher
                .publish_value("user.created", json!({"user_id": published.len() + i}))
                .await
                .unwrap();
            published.push((p.sequence, p.id));
        }
    };
    publish(3, &mut published).await;
    let mut t = start_tail(
        &ns,
        TailArgs {
            since: Some(0),
            via_gateway: Some(format!("ws://{addr}/ws")),
            sse,
            token: Some(token.clone()),
            ..args()
        },
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(t.next().await);
    }
    publish(3, &mut published).await;
    for _ in 0..3 {
        got.push(t.next().await);
    }
    // The gateway goes away; events keep coming.
    stop.cancel();
    task.await.unwrap().unwrap();
    publish(5, &mut published).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, stop, task) = start_gateway(gateway_config(&db, &ns, &addr.to_string())).await;
    publish(4, &mut published).await;
    for _ in 0..9 {
        got.push(t.next().await);
    }
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(
        seqs,
        published.iter().map(|p| p.0).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(
        ids,
        published.iter().map(|p| p.1.as_str()).collect::<Vec<_>>()
    );
    // Nothing more.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), t.lines.recv())
            .await
            .is_err()
    );
    t.stop.cancel();
    t.task.await.unwrap().unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    cleanup(&ns).await;
}

#[tokio::test]
async fn deadletters_are_listed_with_reasons_and_a_fixed_one_republished() {
    let (ns, publisher) = backing().await;
    let js = publisher.jetstream().clone();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        proto_events::deadletter::DEADLETTER_REASON,
        "body is not valid JSON: EOF while parsing",
    );
    headers.insert(proto_events::deadletter::DEADLETTER_STREAM_SEQUENCE, "41");
    headers.insert(proto_events::deadletter::DEADLETTER_ORIGINAL_SIZE, "5");
    js.publish_with_headers(
        ns.deadletter_subject(&ns.event_subject("user.created")),
        headers,
        "{bad".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let mut lines = Vec::new();
    let mut sink = |l: &str| {
        lines.push(serde_json::from_str::<Value>(l).unwrap());
        Ok(())
    };
    let list = DeadlettersArgs {
        limit: 10,
        republish: None,
        payload: None,
    };
    deadletters::run(
        &NatsArgs::for_url(&nats_url()),
        ns.clone(),
        list.clone(),
        &mut sink,
    )
    .await
    .unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let dl = lines[0].clone();
    assert_eq!(dl["reason"], "body is not valid JSON: EOF while parsing");
    assert_eq!(dl["original_seq"], 41);
    assert_eq!(dl["body"], "{bad");
    assert_eq!(
        dl["subject"],
        ns.deadletter_subject(&ns.event_subject("user.created"))
    );
    let seq = dl["seq"].as_u64().unwrap();

    // Still broken: refused.
    let mut out = Vec::new();
    let mut sink = |l: &str| {
        out.push(l.to_owned());
        Ok(())
    };
    let again = DeadlettersArgs {
        republish: Some(seq),
        ..list.clone()
    };
    assert!(
        deadletters::run(
            &NatsArgs::for_url(&nats_url()),
            ns.clone(),
            again,
            &mut sink
        )
        .await
        .is_err()
    );
    // Fixed: the payload alone, wrapped as the subject's type.
    let fixed = DeadlettersArgs {
        republish: Some(seq),
        payload: Some(r#"{"user_id": 7, "first_name": "Иван"}"#.into()),
        ..list
    };
    deadletters::run(
        &NatsArgs::for_url(&nats_url()),
        ns.clone(),
        fixed,
        &mut sink,
    )
    .await
    .unwrap();
    let done: Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(done["type"], "user.created");
    let mut t = start_tail(
        &ns,
        TailArgs {
            since: Some(0),
            max: Some(1),
            ..args()
        },
    );
    let v = t.next().await;
    assert_eq!(v["seq"], done["seq"]);
    assert_eq!(v["payload"], json!({"user_id": 7, "first_name": "Иван"}));
    cleanup(&ns).await;
}
