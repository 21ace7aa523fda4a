#!/usr/bin/env python3
"""Generate the golden vectors for proto-events' canonical JSON serializer.

Each vector is {"input": <JSON text>, "expected": json.dumps(value, sort_keys=True)}.
The input is kept as text so that float spellings survive exactly.

Regenerate (from the repository root):
    python3 proto-events/tests/vectors/gen_canonical.py > proto-events/tests/vectors/canonical.json
"""

import json
import sys

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1


def values():
    # Scalars.
    yield None
    yield True
    yield False
    yield ""
    yield []
    yield {}
    yield [[]]
    yield {"": {}}

    # Integers (all within i64/u64: serde_json turns larger ones into floats).
    for n in (0, 1, -1, 42, -42, 255, 65535, 2**31 - 1, -(2**31), 2**32,
              2**53, 2**53 + 1, -(2**53) - 1, I64_MIN, I64_MAX, I64_MAX + 1,
              U64_MAX - 1, U64_MAX):
        yield n
        yield [n]
        yield {"n": n}

    # Floats.
    floats = [
        0.0, -0.0, 1.0, -1.0, 0.1, 0.2, 0.1 + 0.2, 0.5, 1.5, 100.0, 1e15,
        1e16, 1e17, 1e-05, 0.0001, 0.001, 0.00012345, 1.2345e-05, 1e-07,
        5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
        1.7976931348623157e308, -1.7976931348623157e308, 123456789.123,
        1 / 3, 2 / 3, -1 / 3, 1234567890123456.0, 12345678901234567.0,
        9007199254740993.0, 1.5e300, 1e22, 1e23, 1e21, 9.999999999999999e15,
        9999999999999998.0, 0.30000000000000004, 3.141592653589793,
        2.718281828459045, 1e-4, 9.9999e-05, 1e100, -1e-100, 4.35, 0.07,
        299792458.0, 6.02214076e23, 1.602176634e-19, 2.0**-1074 * 3,
        float(2**63), float(2**64), 0.1 * 3,
        # Exact ties between two shortest candidates: repr keeps the even one.
        1658206780088562.25, 2.0**50 + 0.25, 2.0**50 + 0.75, -(2.0**51 + 0.5), 1e308 * 1.7976931348623157e-308,
    ]
    for f in floats:
        yield f
        yield {"f": f}
    yield floats

    # Strings: controls, quotes, backslashes, DEL.
    for c in range(0x20):
        yield chr(c)
    yield "\x7f"
    yield "".join(chr(c) for c in range(0x80))
    yield 'say "hi" \\ back\\slash / slash'
    yield "tab\tnl\ncr\rbs\bff\f"
    yield "\u2028\u2029"
    yield "line\u2028sep\u2029para"
    yield "\u0080\u009f\u00a0\u00ff\u0100"

    # Cyrillic, emoji and other non-ASCII / astral characters.
    yield "Привет, мир"
    yield "Ёлка ёжик"
    yield "😀"
    yield "👨‍👩‍👧‍👦"
    yield "🇷🇺🇺🇸"
    yield "\U00010000\U0010ffff"
    yield "\ud7ff\ue000\uffff\ufffd\ufeff"
    yield "𝄞 music, 𠀀 CJK ext B, 中文, 日本語, العربية, עברית"
    yield "mixed: Вася 😀 tab\t quote\" end"
    yield "e\u0301 combining"

    # Key sorting, including non-ASCII and astral keys.
    yield {"b": 1, "a": 2, "c": 3}
    yield {"B": 1, "a": 2, "_": 3, "A": 4, "1": 5, "": 6, " ": 7}
    yield {"\uffff": "bmp-high", "\U0001f600": "astral", "\ue000": "pua", "z": "ascii"}
    yield {"\U0001f600": 1, "\uffff": 2}
    yield {"\uff61": 1, "\U00010000": 2, "\ud7ff": 3}
    yield {"я": 1, "а": 2, "Я": 3, "ё": 4, "Ё": 5, "z": 6}
    yield {"ab": 1, "a": 2, "abc": 3, "a\u0000": 4, "a\x7f": 5}
    yield {"key\"q": 1, "key\\b": 2, "key\nn": 3}

    # Nesting.
    yield {"user": {"id": 123, "name": "Иван", "tags": ["vip", "😀"],
                    "balance": 100.5, "meta": {"z": None, "a": [True, False]}},
           "event": "user.created", "ts": "2024-01-01T00:00:00Z"}
    yield [1, [2, [3, [4, [5]]]], {"a": {"b": {"c": {}}}}]
    yield [{"b": 2, "a": 1}, {"d": [{"f": 1, "e": 0}], "c": None}]
    deep = "bottom"
    for i in range(100):
        deep = [deep] if i % 2 == 0 else {"k%d" % i: deep, "a": i}
    yield deep
    yield {"amount_kopeks": 19900, "amount_rubles": 199.0, "currency": "RUB",
           "description": "Пополнение баланса 💳", "payment_method": "yookassa"}


def main():
    out = []
    for v in values():
        assert json.dumps(v, allow_nan=False)
        # Input text: non-ASCII written raw and keys in insertion order, so
        # the Rust side has to escape and sort by itself.
        text = json.dumps(v, ensure_ascii=False)
        assert json.loads(text) == v or v != v
        out.append({"input": text, "expected": json.dumps(v, sort_keys=True)})
    # Hand-written inputs whose text spelling differs from the output.
    for text in ["1E2", "1e-7", "0.10", "-0.0", "1.0e+16", "[1.0, 2.50]",
                 '{"b":1,"a":{"d":[],"c":{}}}', '"\\u00e9\\ud83d\\ude00"',
                 '"\\/"', "12345678901234567890.0", "2.5e-324", "1e-400"]:
        out.append({"input": text, "expected": json.dumps(json.loads(text), sort_keys=True)})
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
