//! The Python example publisher (nats-py) produces envelopes the Rust side
//! accepts. Skipped, with a message, when python3 or nats-py is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use proto_events::{Envelope, EventType, Namespace};

fn python_with_nats() -> bool {
    Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn python_example_publishes_a_valid_envelope() {
    if !python_with_nats() {
        println!("SKIPPED: python3 with nats-py is not installed (pip install nats-py)");
        return;
    }
    let ns = Namespace::unique();
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/publish.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("ticket.message_added")
        .arg(r#"{"ticket_id": 7, "message_id": 70, "user_id": 2, "is_from_admin": false, "message_text": "Привет 👋", "has_media": false, "status": "open"}"#)
        .env("NATS_URL", &nats_url)
        .env("NATS_PREFIX", ns.prefix())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let id = stdout.split_whitespace().next().unwrap().to_owned();
    assert!(stdout.contains("seq=1"), "{stdout}");

    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(ns.stream()).await.unwrap();
    let raw = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        raw.subject.as_str(),
        ns.event_subject("ticket.message_added")
    );
    assert_eq!(raw.headers.get("Nats-Msg-Id").unwrap().as_str(), id);
    let env = Envelope::parse(&raw.payload).unwrap();
    assert_eq!(env.id, id);
    assert_eq!(env.event_type, EventType::TicketMessageAdded);
    assert_eq!(env.payload["message_text"], "Привет 👋");

    // An unknown type is refused by the example before anything is sent.
    let out = Command::new("python3")
        .arg(script)
        .args(["user.deleted", "{}"])
        .env("NATS_URL", &nats_url)
        .env("NATS_PREFIX", ns.prefix())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown event type"));
    let _ = js.delete_stream(ns.stream()).await;
}
