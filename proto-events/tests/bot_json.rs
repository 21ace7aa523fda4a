//! The bot's body format against Python itself: for random values, the
//! compact ASCII text (`json.dumps(v, separators=(",", ":"))`, what a
//! non-Python publisher might send) and serde_json's own text must both be
//! rewritten to exactly `json.dumps(v, ensure_ascii=False)`, and that text
//! must be left as it is. Skipped when `python3` is not on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use proto_events::bot_json::reformat;

const SCRIPT: &str = r#"
import json, random
random.seed(7)
ALPHABET = ['a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\x01', '\x1f', '\x7f',
            'И', 'ж', '€', '\u2028', '😀', '𝄞', ',', ':', '{', ']']
def s():
    return ''.join(random.choice(ALPHABET) for _ in range(random.randint(0, 8)))
def v(d):
    r = random.random()
    if d > 3 or r < 0.3:
        return random.choice([s(), random.randint(-10**15, 10**15), random.uniform(-1e6, 1e6),
                              random.choice([1e-05, 1e16, 0.1, 100.0, -0.0]), True, False, None])
    if r < 0.6:
        return [v(d + 1) for _ in range(random.randint(0, 4))]
    return {s(): v(d + 1) for _ in range(random.randint(0, 4))}
for _ in range(2000):
    x = {s(): v(0) for _ in range(random.randint(0, 5))}
    print(json.dumps([json.dumps(x, separators=(",", ":")), json.dumps(x, ensure_ascii=False)]))
"#;

#[test]
fn matches_python_json_dumps() {
    let Ok(out) = Command::new("python3").arg("-c").arg(SCRIPT).output() else {
        eprintln!("matches_python_json_dumps: SKIPPED, python3 is not on PATH");
        return;
    };
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let (ascii, want): (String, String) = serde_json::from_str(line).unwrap();
        assert_eq!(reformat(&ascii), want, "from {ascii}");
        assert_eq!(reformat(&want), want, "idempotent on {want}");
        n += 1;
    }
    assert_eq!(n, 2000);
}
