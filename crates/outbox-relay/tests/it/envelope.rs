//! The Python package builds envelopes the Rust side accepts, for the
//! payload shapes the bot emits. Runs `python3` on the package's envelope
//! module alone (standard library only); skipped, with a message, without
//! python3.

use std::process::Command;

use proto_events::{Envelope, EventType};

const SCRIPT: &str = r#"
import importlib.util, sys, uuid
from datetime import datetime, timezone
from decimal import Decimal
spec = importlib.util.spec_from_file_location("envelope", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
payloads = [
    ("payment.completed", {"transaction_id": 1, "user_id": 2, "type": "deposit",
        "amount_kopeks": 15050, "amount_rubles": Decimal("150.50"),
        "payment_method": "yookassa", "external_id": uuid.uuid4(), "is_completed": True,
        "description": "Пополнение 💰", "created_at": datetime(2024, 1, 15, 10, 30)}),
    ("user.created", {"user_id": 1, "telegram_id": 5, "username": None,
        "first_name": "Иван", "last_name": "👨‍💻", "referral_code": "x", "referred_by_id": None}),
    ("ticket.status_changed", {"ticket_id": 3, "user_id": 1, "old_status": "open",
        "new_status": "closed", "closed_at": datetime.now(timezone.utc)}),
]
for t, p in payloads:
    print(m.build(t, p)[1])
"#;

#[test]
fn python_envelopes_parse_as_the_rust_envelope() {
    let module = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../clients/python/bedolaga_events/_envelope.py"
    );
    let out = match Command::new("python3")
        .args(["-c", SCRIPT, module])
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            println!("SKIPPED: python3 is not installed");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let envs: Vec<Envelope> = text
        .lines()
        .map(|l| Envelope::parse(l.as_bytes()).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(envs.len(), 3);
    assert_eq!(envs[0].event_type, EventType::PaymentCompleted);
    assert_eq!(envs[0].payload["amount_rubles"], "150.50");
    assert_eq!(envs[0].payload["created_at"], "2024-01-15 10:30:00");
    assert_eq!(envs[0].payload["description"], "Пополнение 💰");
    assert_eq!(envs[1].payload["first_name"], "Иван");
    assert!(envs.iter().all(|e| e.timestamp.ends_with('Z')));
    // UUIDv7 ids, as the Rust side makes them.
    assert!(
        envs.iter()
            .all(|e| e.id.len() == 36 && &e.id[14..15] == "7")
    );
}
