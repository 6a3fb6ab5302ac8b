"""Benchmark (not a test): what refusing duplicate keys in a usage event's JSON object would
cost per event on the stream, beside decoding it as ingest does today.

    python bench/bench_duplicate_keys.py [--events 200000]

msgspec, which decodes every entry, keeps the last value of a key given twice and has no option
to refuse it, so a refusal needs a second look at the bytes. Each row decodes the same events
(a gateway's usual event, about 250 bytes) and prints microseconds per event:

- `msgspec decode`: what ingest does (services/ingest/processor.py's USAGE_DECODER);
- `+ json object_pairs_hook`: the standard library parses the bytes once more with a hook
  that sees every key of every object, and refuses a repeated one.

No cheaper second look exists in the libraries at hand: msgspec decodes an object to a dict or
a Struct (a repeated key is gone by then), and so do orjson and the standard library without a
hook. The rule is therefore written down instead: the last value of a repeated key wins, on the
stream and over HTTP alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from services.ingest.processor import USAGE_DECODER

EVENT = {
    "event_id": "0c6b0e8e-2f43-4f5e-9c1b-6a4b3f7f2f11",
    "subscription_id": "team-1",
    "seat_id": "alice",
    "model": "qwen3.6-plus",
    "occurred_at": "2026-02-04T10:00:00.123456Z",
    "input_tokens": 8_349,
    "cached_tokens": 40_794,
    "output_tokens": 573,
    "request_id": "req-7f3a",
    "api_key_id": "key-12",
    "gateway": "gw-eu-1",
}


class DuplicateKey(ValueError):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def decode_only(raw: bytes) -> object:
    return USAGE_DECODER.decode(raw)


def decode_and_refuse_repeats(raw: bytes) -> object:
    json.loads(raw, object_pairs_hook=_no_repeats)
    return USAGE_DECODER.decode(raw)


def per_event_us(decode: Callable[[bytes], object], events: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in events:
        decode(raw)
    return (time.perf_counter() - started) / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    events = [
        msgspec.json.encode({**EVENT, "event_id": f"{i:08d}-{EVENT['event_id']}"})
        for i in range(args.events)
    ]
    rows = [
        ("msgspec decode (ingest today)", per_event_us(decode_only, events)),
        (
            "+ json object_pairs_hook refusing repeats",
            per_event_us(decode_and_refuse_repeats, events),
        ),
    ]
    base = rows[0][1]
    print(f"events: {args.events:,}, {len(events[0])} bytes each")
    print("| decoding | µs per event | extra µs per event |")
    print("|---|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} | {us - base:.2f} |")


if __name__ == "__main__":
    main()
