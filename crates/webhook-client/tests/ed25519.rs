#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ed25519 (`v1a`) signatures, checked by an independent implementation:
//! Python's `cryptography` package. CI installs it (deploy/lib.sh,
//! `ensure_test_tools`); without it these tests fail, saying so.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use test_support::{Receiver, Reply};
use webhook_client::{
    Ed25519Key, Outbound, SenderConfig, Signing, Verdict, WebhookSender,
    standard_signature_ed25519, verify_standard_signature_ed25519,
};

/// Reads one JSON case a line; prints, per case, a JSON list: whether each
/// `v1a` entry of the header verifies under the public key, then the
/// public key derived from `seed` when one is given (or null).
const PY_VERIFY: &str = r#"
import base64, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

for line in sys.stdin:
    case = json.loads(line)
    assert case["pk"].startswith("whpk_"), case["pk"]
    pk = Ed25519PublicKey.from_public_bytes(base64.b64decode(case["pk"][5:], validate=True))
    signed = (case["msg_id"] + "." + str(case["ts"]) + ".").encode("utf-8") + base64.b64decode(case["body"])
    verdicts = []
    for entry in case["header"].split(" "):
        version, _, sig = entry.partition(",")
        assert version == "v1a", entry
        try:
            pk.verify(base64.b64decode(sig, validate=True), signed)
            verdicts.append(True)
        except InvalidSignature:
            verdicts.append(False)
    derived = None
    if case.get("seed"):
        assert case["seed"].startswith("whsk_")
        private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(case["seed"][5:], validate=True))
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        derived = "whpk_" + base64.b64encode(raw).decode()
    print(json.dumps([verdicts, derived]))
"#;

/// Signs `message` with a fresh key in Python and prints the key's `whpk_`
/// text and the signature (base64), one a line.
const PY_SIGN: &str = r#"
import base64, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
key = Ed25519PrivateKey.generate()
raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
print("whpk_" + base64.b64encode(raw).decode())
print(base64.b64encode(key.sign(sys.stdin.buffer.read())).decode())
"#;

fn require_python_cryptography() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import cryptography.hazmat.primitives.asymmetric.ed25519",
        ])
        .output();
    match out {
        Err(e) => panic!(
            "python3 is required for the ed25519 interoperability test and could not be run ({e}); \
             install python3 and `python3 -m pip install cryptography` (deploy/lib.sh ensure_test_tools)"
        ),
        Ok(o) if !o.status.success() => panic!(
            "the Python package `cryptography` is required for the ed25519 interoperability test: \
             run `python3 -m pip install cryptography` (deploy/lib.sh ensure_test_tools); python said: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
}

fn python(script: &str, stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Case<'a> {
    public_key: String,
    seed: Option<String>,
    msg_id: &'a str,
    ts: i64,
    body: &'a [u8],
    header: &'a str,
}

/// Python's verdicts: per case, one bool per header entry, and the public
/// key it derives from the seed.
fn python_verdicts(cases: &[Case<'_>]) -> Vec<(Vec<bool>, Option<String>)> {
    let mut input = Vec::new();
    for c in cases {
        let line = serde_json::json!({
            "pk": c.public_key,
            "seed": c.seed,
            "msg_id": c.msg_id,
            "ts": c.ts,
            "body": B64.encode(c.body),
            "header": c.header,
        });
        writeln!(input, "{line}").unwrap();
    }
    python(PY_VERIFY, &input)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{}".to_vec(),
        br#"{"user_id": 1, "first_name": "\u0418\u0432\u0430\u043d"}"#.to_vec(),
        r#"{"first_name":"Иван","last_name":"Петров 🚀 ёжик","note":"𝄞 Ω 中文"}"#
            .as_bytes()
            .to_vec(),
        "line\nbreak\ttab \"quoted\" \\ back".as_bytes().to_vec(),
        vec![0, 1, 2, 0xff, 0xfe, b'.', b'.'],
    ];
    for i in 0..40 {
        bodies.push(format!(r#"{{"n":{i},"text":"{}"}}"#, "жё🚀x".repeat(i * 7)).into_bytes());
    }
    bodies
}

#[test]
fn python_cryptography_verifies_our_signatures() {
    require_python_cryptography();
    let key = Ed25519Key::generate().unwrap();
    let bodies = bodies();
    let msg_ids: Vec<String> = (0..bodies.len())
        .map(|i| format!("msg_evt-{i}_{}", i % 5))
        .collect();
    let headers: Vec<String> = bodies
        .iter()
        .zip(&msg_ids)
        .enumerate()
        .map(|(i, (body, id))| {
            standard_signature_ed25519(id, 1_760_000_000 + i as i64, body, &[&key])
        })
        .collect();
    let mut cases: Vec<Case<'_>> = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let ts = 1_760_000_000 + i as i64;
        cases.push(Case {
            public_key: key.public_key_text(),
            seed: Some(key.secret_text()),
            msg_id: &msg_ids[i],
            ts,
            body,
            header: &headers[i],
        });
        // Tampered: another timestamp must not verify.
        cases.push(Case {
            public_key: key.public_key_text(),
            seed: None,
            msg_id: &msg_ids[i],
            ts: ts + 1,
            body,
            header: &headers[i],
        });
        assert!(verify_standard_signature_ed25519(
            &key.public_key_text(),
            &msg_ids[i],
            ts,
            body,
            &headers[i]
        ));
    }
    let verdicts = python_verdicts(&cases);
    assert_eq!(verdicts.len(), cases.len());
    for (i, pair) in verdicts.chunks(2).enumerate() {
        assert_eq!(pair[0].0, [true], "message {i} verifies in Python");
        assert_eq!(
            pair[0].1.as_deref(),
            Some(key.public_key_text().as_str()),
            "Python derives the same public key from the whsk_ seed"
        );
        assert_eq!(pair[1].0, [false], "message {i} with another timestamp");
    }
}

#[test]
fn rotation_entries_verify_each_under_its_own_key_only_in_python() {
    require_python_cryptography();
    let current = Ed25519Key::generate().unwrap();
    let previous = Ed25519Key::generate().unwrap();
    let body = r#"{"event":"user.created","name":"Иван 🚀"}"#.as_bytes();
    let header =
        standard_signature_ed25519("msg_e1_7", 1_760_000_000, body, &[&current, &previous]);
    assert_eq!(header.split(' ').count(), 2);
    let case = |key: &Ed25519Key| Case {
        public_key: key.public_key_text(),
        seed: None,
        msg_id: "msg_e1_7",
        ts: 1_760_000_000,
        body,
        header: &header,
    };
    let other = Ed25519Key::generate().unwrap();
    let verdicts = python_verdicts(&[case(&current), case(&previous), case(&other)]);
    assert_eq!(
        verdicts[0].0,
        [true, false],
        "current key: first entry only"
    );
    assert_eq!(
        verdicts[1].0,
        [false, true],
        "previous key: second entry only"
    );
    assert_eq!(verdicts[2].0, [false, false], "an unrelated key: none");
}

#[test]
fn we_verify_what_python_signs() {
    require_python_cryptography();
    let body = "{\"name\":\"Ёж 🚀\"}".as_bytes();
    let mut signed = b"msg_p_1.1760000000.".to_vec();
    signed.extend_from_slice(body);
    let out = python(PY_SIGN, &signed);
    let mut lines = out.lines();
    let public_key = lines.next().unwrap();
    let signature = lines.next().unwrap();
    let header = format!("v1,bm90IGl0 v1a,{signature}");
    assert!(verify_standard_signature_ed25519(
        public_key,
        "msg_p_1",
        1_760_000_000,
        body,
        &header
    ));
    assert!(!verify_standard_signature_ed25519(
        public_key,
        "msg_p_1",
        1_760_000_000,
        b"{}",
        &header
    ));
}

#[tokio::test]
async fn ed25519_posts_carry_v1a_entries_and_no_x_webhook_signature() {
    let mut rx = Receiver::start(Reply::ok()).await;
    let url = rx.url("/hook");
    let current = Ed25519Key::generate().unwrap();
    let previous =
        Ed25519Key::from_secret_text(&Ed25519Key::generate().unwrap().secret_text()).unwrap();
    let keys = [&current, &previous];
    let body = r#"{"name":"Иван"}"#;
    let req = Outbound {
        url: &url,
        webhook_id: 7,
        event_type: "user.created",
        message_id: "msg_evt1_7",
        timestamp: 1_760_000_000,
        body: Bytes::from_static(body.as_bytes()),
        signing: Signing::Ed25519(&keys),
        headers: &[],
        auth: None,
        traceparent: None,
    };
    let dbg = format!("{req:?}");
    assert!(!dbg.contains(&current.secret_text()[5..]), "{dbg}");
    let sender = WebhookSender::new(SenderConfig {
        allow_private_targets: true,
        ..SenderConfig::default()
    })
    .unwrap();
    let out = sender.send(&req).await;
    assert_eq!(out.verdict, Verdict::Success, "{out:?}");
    let got = rx.next().await;
    assert_eq!(got.header("x-webhook-signature"), None);
    assert_eq!(got.header_count("webhook-signature"), 1);
    let sig = got.header("webhook-signature").unwrap();
    let entries: Vec<&str> = sig.split(' ').collect();
    assert_eq!(entries.len(), 2, "{sig}");
    assert!(entries.iter().all(|e| e.starts_with("v1a,")), "{sig}");
    for (key, own, other) in [
        (&current, entries[0], entries[1]),
        (&previous, entries[1], entries[0]),
    ] {
        let pk = key.public_key_text();
        assert!(verify_standard_signature_ed25519(
            &pk,
            "msg_evt1_7",
            1_760_000_000,
            &got.body,
            own
        ));
        assert!(!verify_standard_signature_ed25519(
            &pk,
            "msg_evt1_7",
            1_760_000_000,
            &got.body,
            other
        ));
    }
    assert!(!webhook_client::verify_standard_signature(
        "any",
        "msg_evt1_7",
        1_760_000_000,
        &got.body,
        sig
    ));

    // No keys: unsigned.
    let out = sender
        .send(&Outbound {
            signing: Signing::Ed25519(&[]),
            ..req
        })
        .await;
    assert!(out.is_success());
    let got = rx.next().await;
    assert_eq!(got.header("webhook-signature"), None);
    assert_eq!(got.header("x-webhook-signature"), None);
}
