"""Idempotency (docs/rules.md): `event_id` is the gateway's key, scoped to its subscription.

A usage event's payload digest is SHA-256 over its canonical encoding (decoded, then encoded
again), so the same event sent with other whitespace or key order is the same payload. The
digest is recorded on the charge, so the idempotency index can be rebuilt from the log.
"""

from __future__ import annotations

import hashlib

import msgspec

from schemas.usage import UsageEvent

PAYLOAD_DIGEST_HEX_CHARS = 32
"""128 bits of SHA-256: ample to tell two payloads of one event id apart."""

_CANONICAL = msgspec.json.Encoder()

UsageKey = tuple[str, str]
"""(subscription_id, event_id)."""


def payload_digest(usage: UsageEvent) -> str:
    return hashlib.sha256(_CANONICAL.encode(usage)).hexdigest()[:PAYLOAD_DIGEST_HEX_CHARS]


def usage_key(usage: UsageEvent) -> UsageKey:
    return usage.subscription_id, usage.event_id
