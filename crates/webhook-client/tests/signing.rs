#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signature helpers against known vectors.

use base64::Engine as _;
use webhook_client::{
    message_id, standard_signature, verify_standard_signature, verify_x_webhook_signature,
    x_webhook_signature,
};

#[test]
fn x_webhook_signature_matches_known_hmac_vectors() {
    // Wikipedia / common HMAC-SHA256 vector.
    assert_eq!(
        x_webhook_signature("key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    // RFC 4231 test case 2.
    assert_eq!(
        x_webhook_signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn x_webhook_signature_verification() {
    let body = br#"{"a": 1}"#;
    let sig = x_webhook_signature("s3cret", body);
    assert!(verify_x_webhook_signature("s3cret", body, &sig));
    assert!(verify_x_webhook_signature(
        "s3cret",
        body,
        &sig.to_uppercase().replace("SHA256=", "sha256=")
    ));
    assert!(verify_x_webhook_signature(
        "s3cret",
        body,
        &sig["sha256=".len()..]
    ));
    assert!(!verify_x_webhook_signature("s3cret2", body, &sig));
    assert!(!verify_x_webhook_signature("s3cret", br#"{"a": 2}"#, &sig));
    assert!(!verify_x_webhook_signature("s3cret", body, "sha256=zz"));
    assert!(!verify_x_webhook_signature("s3cret", body, ""));
    assert!(!verify_x_webhook_signature(
        "s3cret",
        body,
        &sig[..sig.len() - 2]
    ));
}

#[test]
fn standard_signature_vector() {
    // The signed message is "{msg_id}.{timestamp}.{body}" keyed with the
    // secret's UTF-8 bytes; check it against the (vector-tested) X-Webhook-Signature HMAC
    // over the same bytes.
    let sig = standard_signature("what do", 0, b"ya want for nothing?", &["Jefe"]);
    let expected_hex = x_webhook_signature("Jefe", b"what do.0.ya want for nothing?");
    let b64 = sig.strip_prefix("v1,").unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(format!("sha256={}", hex::encode(raw)), expected_hex);
}

#[test]
fn standard_signature_multiple_secrets_in_order() {
    let body = br#"{"x": "\u0436"}"#;
    let sig = standard_signature("msg_1_2", 1_700_000_000, body, &["new", "old"]);
    let parts: Vec<&str> = sig.split(' ').collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[0],
        standard_signature("msg_1_2", 1_700_000_000, body, &["new"])
    );
    assert_eq!(
        parts[1],
        standard_signature("msg_1_2", 1_700_000_000, body, &["old"])
    );
    assert_eq!(standard_signature("msg_1_2", 1, body, &[]), "");
    for s in ["new", "old"] {
        assert!(verify_standard_signature(
            s,
            "msg_1_2",
            1_700_000_000,
            body,
            &sig
        ));
    }
    assert!(!verify_standard_signature(
        "none",
        "msg_1_2",
        1_700_000_000,
        body,
        &sig
    ));
    // Unknown versions and garbage are ignored, not errors.
    let mixed = format!("v2,abc garbage {}", parts[1]);
    assert!(verify_standard_signature(
        "old",
        "msg_1_2",
        1_700_000_000,
        body,
        &mixed
    ));
    assert!(!verify_standard_signature(
        "new",
        "msg_1_2",
        1_700_000_000,
        body,
        &mixed
    ));
    assert!(!verify_standard_signature(
        "new",
        "msg_1_2",
        1_700_000_000,
        body,
        ""
    ));
}

#[test]
fn message_ids_are_stable() {
    assert_eq!(message_id("0192f0c1-aaaa", 7), "msg_0192f0c1-aaaa_7");
    assert_eq!(message_id("e", -1), message_id("e", -1));
    assert_ne!(message_id("e", 1), message_id("e", 2));
}
