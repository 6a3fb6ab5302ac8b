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


_NO_HOLD_SUFFIX = b',"hold_id":null}'
"""How the canonical encoding of an event without a hold ends (`hold_id` is its last field)."""


def payload_digest(usage: UsageEvent) -> str:
    canonical = _CANONICAL.encode(usage)
    if canonical.endswith(_NO_HOLD_SUFFIX):
        # The digest of an event without a hold is what it was before events could name one:
        # the same event delivered again across an upgrade is a duplicate, not a conflict.
        canonical = canonical[: -len(_NO_HOLD_SUFFIX)] + b"}"
    return hashlib.sha256(canonical).hexdigest()[:PAYLOAD_DIGEST_HEX_CHARS]


def usage_key(usage: UsageEvent) -> UsageKey:
    return usage.subscription_id, usage.event_id
