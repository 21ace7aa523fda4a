//! The delivery audit (docs/contract.md, "Delivery audit"): events and
//! delivery rows written here as the worker writes them, read back through
//! `GET /events` and `GET /events/{event_id}`.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use diesel::sql_types::{Int4, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use proto_events::Publisher;
use reqwest::StatusCode;
use serde_json::{Value, json};
use storage::audit::{SeenEvent, insert_events};
use storage::testing::{diesel, diesel_async};

use crate::helpers::{TestApp, spawn_app};

async fn prepare(app: &TestApp) {
    let mut conn = app.conn().await;
    let today = Utc::now().date_naive();
    storage::history::ensure_partitions(&mut conn, today - TimeDelta::days(2), today)
        .await
        .unwrap();
}

fn seen(id: &str, event_type: &str, seq: i64, at: DateTime<Utc>) -> SeenEvent {
    SeenEvent {
        event_id: id.to_owned(),
        event_type: event_type.to_owned(),
        stream_seq: seq,
        published_at: at - TimeDelta::milliseconds(5),
        processed_at: at,
        matched: Vec::new(),
        filtered: Vec::new(),
    }
}

async fn insert(app: &TestApp, events: &[SeenEvent]) {
    let mut conn = app.conn().await;
    insert_events(&mut conn, events).await.unwrap();
}

/// A delivery row as the worker writes one.
struct Row<'a> {
    webhook_id: i32,
    event_id: &'a str,
    status: &'a str,
    attempt: i32,
    response_status: Option<i32>,
    next_retry_at: Option<DateTime<Utc>>,
    held: Option<&'a str>,
}

impl<'a> Row<'a> {
    fn new(webhook_id: i32, event_id: &'a str, status: &'a str, attempt: i32) -> Self {
        Self {
            webhook_id,
            event_id,
            status,
            attempt,
            response_status: match status {
                "success" => Some(200),
                "failed" => Some(500),
                _ => None,
            },
            next_retry_at: None,
            held: None,
        }
    }
    fn retry_at(mut self, t: DateTime<Utc>) -> Self {
        self.next_retry_at = Some(t);
        self
    }
    fn held(mut self, why: &'a str) -> Self {
        self.held = Some(why);
        self
    }
    fn answered(mut self, status: i32) -> Self {
        self.response_status = Some(status);
        self
    }
}

async fn rows(app: &TestApp, rows: &[Row<'_>]) {
    let mut conn = app.conn().await;
    for r in rows {
        diesel::sql_query(
            "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, response_status, \
               status, attempt_number, next_retry_at, event_id, held, delivered_at) \
             VALUES ($1, 'user.created', '{\"user_id\": 7}', $2, $3, $4, $5, $6, $7, \
               CASE WHEN $3 = 'pending' THEN NULL ELSE now() END)",
        )
        .bind::<Int4, _>(r.webhook_id)
        .bind::<Nullable<Int4>, _>(r.response_status)
        .bind::<Text, _>(r.status)
        .bind::<Int4, _>(r.attempt)
        .bind::<Nullable<Timestamptz>, _>(r.next_retry_at)
        .bind::<Text, _>(r.event_id)
        .bind::<Nullable<Text>, _>(r.held)
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

async fn hook(app: &TestApp, name: &str) -> i32 {
    app.create_webhook(name, &format!("https://example.com/{name}"), "*")
        .await["id"]
        .as_i64()
        .unwrap() as i32
}

fn states(event: &Value) -> Vec<(String, String)> {
    event["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or("<deleted>").to_owned(),
                w["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_state_of_an_event() {
    let app = spawn_app().await;
    prepare(&app).await;
    let mut ids = Vec::new();
    for name in [
        "ok",
        "retry",
        "rate",
        "circuit",
        "busy",
        "waiting",
        "exhausted",
        "gone",
        "refused",
        "off",
        "filtered",
        "deleted",
    ] {
        ids.push(hook(&app, name).await);
    }
    let [
        ok,
        retry,
        rate,
        circuit,
        busy,
        waiting,
        exhausted,
        gone,
        refused,
        off,
        filtered,
        deleted,
    ] = ids[..]
    else {
        unreachable!()
    };
    let (status, _) = app
        .patch(&format!("/webhooks/{off}"), json!({"is_active": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let later = Utc::now() + TimeDelta::minutes(5);
    let e = "0194b3c2-7c1e-7a3f-9e4b-000000000001";
    rows(
        &app,
        &[
            Row::new(ok, e, "failed", 1).retry_at(later),
            Row::new(ok, e, "success", 2),
            Row::new(retry, e, "failed", 1).retry_at(later),
            Row::new(retry, e, "pending", 2).retry_at(later),
            Row::new(rate, e, "pending", 1)
                .retry_at(later)
                .held("rate_limit"),
            Row::new(circuit, e, "pending", 1)
                .retry_at(later)
                .held("circuit"),
            Row::new(busy, e, "pending", 1).retry_at(later).held("busy"),
            Row::new(exhausted, e, "failed", 1).retry_at(later),
            Row::new(exhausted, e, "failed", 2),
            Row::new(gone, e, "failed", 1).answered(410),
            Row::new(off, e, "failed", 1).retry_at(later),
            Row::new(off, e, "pending", 2).retry_at(later),
            Row::new(deleted, e, "failed", 1),
        ],
    )
    .await;
    {
        let mut conn = app.conn().await;
        diesel::sql_query(
            "INSERT INTO webhook_deliveries (webhook_id, event_type, payload, status, \
               attempt_number, event_id, error_message, delivered_at) \
             VALUES ($1, 'user.created', '{}', 'failed', 1, $2, \
               'destination refused: 10.0.0.1 is a private address', now())",
        )
        .bind::<Int4, _>(refused)
        .bind::<Text, _>(e)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let (status, _) = app.delete(&format!("/webhooks/{deleted}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut event = seen(e, "user.created", 42, Utc::now() - TimeDelta::seconds(1));
    event.matched = vec![
        ok, retry, rate, circuit, busy, waiting, exhausted, gone, refused, off, deleted,
    ];
    event.filtered = vec![filtered];
    insert(&app, &[event]).await;

    let (status, got) = app.get(&format!("/events/{e}")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let want: Vec<(String, String)> = [
        ("ok", "succeeded"),
        ("retry", "retrying"),
        ("rate", "rate_limited"),
        ("circuit", "circuit_open"),
        ("busy", "queued"),
        ("waiting", "queued"),
        ("exhausted", "exhausted"),
        ("gone", "failed"),
        ("refused", "failed"),
        ("off", "disabled"),
        ("<deleted>", "deleted"),
        ("filtered", "filtered_out"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(states(&got), want, "{got}");
    assert_eq!(got["event_id"], e);
    assert_eq!(got["event_type"], "user.created");
    assert_eq!(got["stream_sequence"], 42);
    assert_eq!(got["payload"], json!({"user_id": 7}));
    assert!(got.get("payload_unavailable").is_none(), "{got}");
    let of = |name: &str| {
        got["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap()
            .clone()
    };
    let r = of("retry");
    assert_eq!(r["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(r["attempts"][0]["attempt_number"], 1);
    assert_eq!(r["attempts"][0]["status"], "failed");
    assert_eq!(r["attempts"][1]["status"], "pending");
    assert!(r["next_attempt_at"].is_string(), "{r}");
    assert_eq!(of("rate")["attempts"][0]["held"], "rate_limit");
    assert!(of("rate")["next_attempt_at"].is_string());
    assert_eq!(of("waiting")["attempts"], json!([]));
    assert_eq!(of("waiting")["next_attempt_at"], Value::Null);
    assert_eq!(of("ok")["next_attempt_at"], Value::Null);
    assert_eq!(of("off")["next_attempt_at"], Value::Null);
    let gone_hook = &got["webhooks"][10];
    assert_eq!(gone_hook["webhook_id"], deleted);
    assert_eq!(gone_hook["name"], Value::Null);

    // The list's summary of the same event.
    let (status, page) = app.get("/events").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["event_id"], e);
    assert_eq!(page["items"][0]["webhooks"], 12);
    assert_eq!(
        page["items"][0]["states"],
        json!({"succeeded": 1, "retrying": 1, "rate_limited": 1, "circuit_open": 1, "queued": 2,
               "exhausted": 1, "failed": 2, "disabled": 1, "filtered_out": 1, "deleted": 1})
    );
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn an_event_processed_twice_is_shown_once_with_both_lists() {
    let app = spawn_app().await;
    prepare(&app).await;
    let a = hook(&app, "a").await;
    let b = hook(&app, "b").await;
    let t = Utc::now() - TimeDelta::minutes(3);
    let mut first = seen("twice", "ticket.created", 9, t);
    first.matched = vec![a];
    let mut again = seen("twice", "ticket.created", 9, t + TimeDelta::seconds(40));
    again.matched = vec![a, b];
    insert(&app, &[first, again]).await;
    let (_, got) = app.get("/events/twice").await;
    assert_eq!(
        states(&got),
        [("a".into(), "queued".into()), ("b".into(), "queued".into())]
    );
    let (_, page) = app.get("/events").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["webhooks"], 2);
    assert_eq!(items[0]["processed_at"], got["processed_at"]);
}

#[tokio::test]
async fn the_payload_comes_from_the_stream_or_says_why_not() {
    let app = spawn_app().await;
    prepare(&app).await;
    let f = hook(&app, "f").await;
    let client = async_nats::connect(&app.config.nats.nats_url)
        .await
        .unwrap();
    let p = Publisher::new(client, app.ns.clone());
    p.ensure_stream().await.unwrap();
    let published = p
        .publish_value("user.created", json!({"user_id": 5, "first_name": "Иван"}))
        .await
        .unwrap();
    let now = Utc::now();
    let mut kept = seen(
        &published.id,
        "user.created",
        published.sequence as i64,
        now,
    );
    kept.filtered = vec![f];
    let mut lost = seen("lost", "user.created", 999_999, now);
    lost.filtered = vec![f];
    insert(&app, &[kept, lost]).await;

    let (status, got) = app.get(&format!("/events/{}", published.id)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["payload"], json!({"user_id": 5, "first_name": "Иван"}));
    assert_eq!(states(&got), [("f".into(), "filtered_out".into())]);

    let (status, got) = app.get("/events/lost").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["payload"], Value::Null);
    assert!(
        got["payload_unavailable"]
            .as_str()
            .unwrap()
            .contains("999999"),
        "{got}"
    );
}

#[tokio::test]
async fn an_unknown_event_is_404_and_the_audit_needs_a_token() {
    let app = spawn_app().await;
    prepare(&app).await;
    let (status, body) = app.get("/events/never-seen").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Event not found"}));
    for path in ["/events", "/events/x"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The catalogue stays open.
    let resp = app
        .client
        .get(app.url("/events/types"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

fn event_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of `query`, following `next_cursor`; the pages' ids.
async fn all_pages(app: &TestApp, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let path = match &cursor {
            Some(c) => format!("/events?{query}&cursor={c}"),
            None => format!("/events?{query}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        pages.push(event_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
    }
    panic!("paging does not end");
}

#[tokio::test]
async fn the_list_pages_newest_first_with_filters() {
    let app = spawn_app().await;
    prepare(&app).await;
    let a = hook(&app, "a").await;
    let base = Utc::now() - TimeDelta::minutes(30);
    let mut events = Vec::new();
    for i in 0..11 {
        let t = if i % 2 == 0 {
            "user.created"
        } else {
            "ticket.created"
        };
        let mut e = seen(
            &format!("ev-{i:02}"),
            t,
            i + 1,
            base + TimeDelta::seconds(i * 10),
        );
        e.matched = vec![a];
        events.push(e);
    }
    // Two events processed in the same microsecond: the id breaks the tie.
    events[5].processed_at = events[4].processed_at;
    insert(&app, &events).await;
    // Some succeeded, the others wait.
    for i in [1, 4, 5, 9] {
        rows(&app, &[Row::new(a, &format!("ev-{i:02}"), "success", 1)]).await;
    }
    let newest_first: Vec<String> = {
        let mut v: Vec<(DateTime<Utc>, String)> = events
            .iter()
            .map(|e| (e.processed_at, e.event_id.clone()))
            .collect();
        v.sort();
        v.reverse();
        v.into_iter().map(|(_, id)| id).collect()
    };

    let pages = all_pages(&app, "limit=3").await;
    assert!(pages.iter().all(|p| p.len() <= 3));
    let flat: Vec<String> = pages.concat();
    assert_eq!(flat, newest_first, "no gap, no duplicate, newest first");

    // By type.
    let flat = all_pages(&app, "type=ticket.created&limit=2")
        .await
        .concat();
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| id[3..].parse::<i64>().unwrap() % 2 == 1)
        .cloned()
        .collect();
    assert_eq!(flat, want);

    // By time: since inclusive, until exclusive.
    let since =
        (base + TimeDelta::seconds(20)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let until =
        (base + TimeDelta::seconds(60)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (status, page) = app
        .get(&format!("/events?since={since}&until={until}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(event_ids(&page), ["ev-05", "ev-04", "ev-03", "ev-02"]);

    // By state: a page may be short while more exist; the union is exact.
    let pages = all_pages(&app, "state=succeeded&limit=1").await;
    let flat = pages.concat();
    assert_eq!(flat, ["ev-09", "ev-05", "ev-04", "ev-01"]);
    let (_, page) = app.get("/events?state=succeeded&limit=1").await;
    assert_eq!(page["items"][0]["states"], json!({"succeeded": 1}));
    let queued = all_pages(&app, "state=queued&limit=2").await.concat();
    let unique: HashSet<&String> = queued.iter().collect();
    assert_eq!(queued.len(), 7);
    assert_eq!(unique.len(), 7);
    let (_, page) = app.get("/events?state=exhausted").await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn bad_list_parameters_are_422() {
    let app = spawn_app().await;
    // An empty range is no error: an empty page.
    let (status, page) = app
        .get("/events?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"], json!([]));
    for (query, loc) in [
        ("type=user.deleted", "type"),
        ("type=ticket.*", "type"),
        ("state=lost", "state"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=nope", "cursor"),
    ] {
        let (status, body) = app.get(&format!("/events?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["query", loc]),
            "{query}: {body}"
        );
    }
}
