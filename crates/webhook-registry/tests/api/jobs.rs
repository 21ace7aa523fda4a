//! Recover, replay and bulk retry jobs: creation (one unfinished job per
//! webhook), reading, cancelling and validation. Running them is the
//! delivery worker's part (its `jobs` tests).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

const JOB_FIELDS: [&str; 17] = [
    "id",
    "webhook_id",
    "kind",
    "status",
    "total",
    "done",
    "failed",
    "unavailable",
    "rate_per_s",
    "since",
    "until",
    "since_seq",
    "delivery_status",
    "error",
    "created_at",
    "started_at",
    "finished_at",
];

fn loc(body: &Value) -> Vec<String> {
    body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("no detail list: {body}"))
        .iter()
        .map(|e| {
            e["loc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect()
}

#[tokio::test]
async fn one_unfinished_job_per_webhook_readable_and_cancellable() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap();

    let resp = app
        .req(reqwest::Method::POST, &format!("/webhooks/{id}/recover"))
        .json(&json!({"since": "2026-11-30T10:00:00Z", "until": "2026-11-30T12:00:00+02:00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    let job_id = job["id"].as_i64().unwrap();
    assert_eq!(location, format!("/webhooks/{id}/jobs/{job_id}"));
    let keys: Vec<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for f in JOB_FIELDS {
        assert!(keys.contains(&f), "{f} missing in {job}");
    }
    assert_eq!(job["kind"], "recover");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["since"], "2026-11-30T10:00:00Z");
    assert_eq!(job["until"], "2026-11-30T10:00:00Z");
    assert_eq!(job["rate_per_s"], 50, "the configured default");
    assert_eq!(job["done"], 0);
    assert_eq!(job["total"], Value::Null);
    assert_eq!(job["unavailable"], Value::Null, "replay only");

    // A second request of any kind gets the unfinished job.
    for (path, body) in [
        ("recover", json!({"since": "2026-11-01T00:00:00Z"})),
        ("replay", json!({"since_seq": 0})),
        ("deliveries/retry", json!({})),
    ] {
        let (status, again) = app.post(&format!("/webhooks/{id}/{path}"), body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {again}");
        assert_eq!(again["id"], job_id, "{path}");
    }

    let (status, got) = app.get(&format!("/webhooks/{id}/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, job);

    // Pause and resume; a paused job is still the webhook's unfinished one.
    let pause = format!("/webhooks/{id}/jobs/{job_id}/pause");
    let resume = format!("/webhooks/{id}/jobs/{job_id}/resume");
    for _ in 0..2 {
        let (status, paused) = app.post(&pause, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{paused}");
        assert_eq!(paused["status"], "paused");
    }
    let (status, again) = app.post(&format!("/webhooks/{id}/replay"), json!({})).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &json!(job_id)));
    assert_eq!(again["status"], "paused");
    for _ in 0..2 {
        let (status, resumed) = app.post(&resume, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{resumed}");
        assert_eq!(resumed["status"], "queued");
    }
    let (status, _) = app.post(&pause, json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // A paused job can be cancelled.
    let (status, cancelled) = app.delete(&format!("/webhooks/{id}/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_string());
    // Cancelling again changes nothing.
    let (status, again) = app.delete(&format!("/webhooks/{id}/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, cancelled);

    // A finished job is neither paused nor resumed.
    for path in [&pause, &resume] {
        let (status, body) = app.post(path, json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("Job is cancelled; only an unfinished job can be"),
            "{body}"
        );
    }

    // Now a new job can start.
    let (status, replay) = app
        .post(
            &format!("/webhooks/{id}/replay"),
            json!({"since_seq": 7, "rate_per_s": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(replay["kind"], "replay");
    assert_eq!(replay["since_seq"], 7);
    assert_eq!(replay["rate_per_s"], 5);
    assert_eq!(replay["unavailable"], 0);
    assert_ne!(replay["id"], job_id);

    let (status, page) = app.get(&format!("/webhooks/{id}/jobs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["id"], replay["id"], "newest first");
    assert_eq!(page["items"][1]["id"], job_id);

    // Another webhook's job is not this webhook's.
    let other = app.create_webhook("b", "https://example.com/b", "*").await;
    let other_id = other["id"].as_i64().unwrap();
    let (status, body) = app
        .get(&format!("/webhooks/{other_id}/jobs/{job_id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Job not found"}));
    let (status, body) = app
        .delete(&format!("/webhooks/{other_id}/jobs/{job_id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for action in ["pause", "resume"] {
        let (status, body) = app
            .post(
                &format!("/webhooks/{other_id}/jobs/{job_id}/{action}"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}: {body}");
        let (status, _) = app
            .post(&format!("/webhooks/{id}/jobs/x/{action}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{action}");
    }

    // A bulk retry with defaults.
    let (status, retry) = app
        .post(&format!("/webhooks/{other_id}/deliveries/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retry}");
    assert_eq!(retry["kind"], "retry");
    assert_eq!(retry["delivery_status"], "failed");
    // An empty body is accepted too.
    let resp = app
        .req(reqwest::Method::POST, &format!("/webhooks/{id}/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn jobs_of_missing_or_disabled_webhooks_are_refused() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/webhooks/999999/recover",
            json!({"since": "2026-11-30T10:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Webhook not found"}));
    let (status, _) = app.get("/webhooks/999999/jobs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/webhooks/999999/jobs/1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap();
    let (status, _) = app
        .patch(&format!("/webhooks/{id}"), json!({"is_active": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.post(&format!("/webhooks/{id}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("disabled"));
}

#[tokio::test]
async fn job_requests_are_validated_like_fastapi() {
    let app = spawn_app().await;
    let hook = app.create_webhook("a", "https://example.com/a", "*").await;
    let id = hook["id"].as_i64().unwrap();
    let cases: Vec<(&str, Value, Vec<&str>, &str)> = vec![
        ("recover", json!({}), vec!["body.since"], "missing"),
        (
            "recover",
            json!({"since": null}),
            vec!["body.since"],
            "datetime_type",
        ),
        (
            "recover",
            json!({"since": "yesterday"}),
            vec!["body.since"],
            "datetime_from_date_parsing",
        ),
        (
            "recover",
            json!({"since": "2026-11-30T10:00:00Z", "rate_per_s": 0}),
            vec!["body.rate_per_s"],
            "greater_than_equal",
        ),
        (
            "recover",
            json!({"since": 5, "until": "x", "rate_per_s": 10001}),
            vec!["body.since", "body.until", "body.rate_per_s"],
            "datetime_type",
        ),
        (
            "replay",
            json!({"since": "2026-11-30T10:00:00Z", "since_seq": 3}),
            vec!["body"],
            "value_error",
        ),
        (
            "replay",
            json!({"since_seq": -1}),
            vec!["body.since_seq"],
            "greater_than_equal",
        ),
        (
            "replay",
            json!({"until": null}),
            vec!["body.until"],
            "datetime_type",
        ),
        ("replay", json!([1]), vec!["body"], "model_attributes_type"),
        (
            "deliveries/retry",
            json!({"status": "success"}),
            vec!["body.status"],
            "enum",
        ),
        (
            "deliveries/retry",
            json!({"status": null}),
            vec!["body.status"],
            "enum",
        ),
    ];
    for (path, body, locs, first_kind) in cases {
        let (status, answer) = app
            .post(&format!("/webhooks/{id}/{path}"), body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {answer}"
        );
        assert_eq!(loc(&answer), locs, "{path} {body}: {answer}");
        assert_eq!(
            answer["detail"][0]["type"], first_kind,
            "{path} {body}: {answer}"
        );
    }
    // An empty body is a missing body for recover.
    let resp = app
        .req(reqwest::Method::POST, &format!("/webhooks/{id}/recover"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Path ids.
    let (status, body) = app.get(&format!("/webhooks/{id}/jobs/abc")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(loc(&body), ["path.job_id"]);
    let (status, body) = app.get(&format!("/webhooks/{id}/jobs?limit=0")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Nothing was created by the refused requests.
    let (_, page) = app.get(&format!("/webhooks/{id}/jobs")).await;
    assert_eq!(page["total"], 0);
}
