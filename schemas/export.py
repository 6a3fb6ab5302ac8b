"""Writes the JSON Schema of the public usage event next to this module: `python -m schemas.export`.

The checked-in file is what gateways in other languages code against; a test fails when it is
stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from schemas.usage import UsageEvent

SCHEMA_PATH = Path(__file__).with_name("usage_event.v1.schema.json")


def usage_event_schema() -> bytes:
    schema = msgspec.json.schema(UsageEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Usage event v1 (published on the ledger.usage stream as field `data`)"
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def main() -> int:
    SCHEMA_PATH.write_bytes(usage_event_schema())
    sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
