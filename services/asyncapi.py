"""The AsyncAPI document of the usage stream (and of the notification stream the ledger
publishes on): `python -m services.asyncapi` writes `docs/asyncapi.json`.

FastStream generates the channel, the consumer group and the server from the subscriber
itself; the subscriber takes raw entries (so that dead letters keep their original bytes),
so the message payload is filled in here from the `UsageEvent` Struct, and the dead-letter
stream, which is written with plain XADD, is added as a send operation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
from faststream.specification import AsyncAPI

from schemas.notifications import Notification
from schemas.usage import UsageEvent
from services.config import DEFAULT_NOTIFICATION_STREAM, DEFAULT_STREAM
from services.ingest.consumer import IngestConfig, create_app
from services.ingest.dead_letters import DeadLetter
from services.ingest.processor import IngestProcessor

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
EXAMPLE_REDIS_URL = "redis://127.0.0.1:6379/0"
CONSUMER_PLACEHOLDER = "<hostname>-<pid>"


class _NeverCalled:
    def write(self, letters: object) -> None:
        raise AssertionError("the document is generated without processing anything")


def asyncapi_document(stream: str = DEFAULT_STREAM) -> dict[str, Any]:
    processor = IngestProcessor(None, None, _NeverCalled())  # type: ignore[arg-type]
    config = IngestConfig(stream=stream, consumer=CONSUMER_PLACEHOLDER)
    app = create_app(EXAMPLE_REDIS_URL, processor, config)
    assert app.broker is not None
    spec = AsyncAPI(
        app.broker,
        title="Credits ledger usage stream",
        version="1",
        description=(
            "Gateways publish one usage event per served request with "
            f"`XADD {stream} * data <json>`. Entries that cannot be charged are copied to "
            f"`{stream}.dead` with a machine-readable reason and acknowledged. With "
            "LEDGER_PARTITIONS=N > 1 the stream is split by subscription: partition = the "
            "first 8 bytes of SHA-256 of the UTF-8 subscription_id, big-endian unsigned, "
            f"modulo N; partition k is the stream `{{{stream}.k}}` (dead letters "
            f"`{{{stream}.k}}.dead`), with the same messages as the channel below; an event "
            "on another partition's stream is dead-lettered `wrong_partition`."
        ),
    )
    document: dict[str, Any] = msgspec.json.decode(spec.to_specification().to_json())
    schemas = document["components"]["schemas"]
    schemas.pop("EmptyPayload", None)
    (usage_schema,), usage_defs = msgspec.json.schema_components([UsageEvent])
    (letter_schema,), letter_defs = msgspec.json.schema_components([DeadLetter])
    schemas.update(usage_defs)
    schemas.update(letter_defs)
    for message in document["components"]["messages"].values():
        message["payload"] = _ref(usage_schema)
        message["description"] = "The stream entry's field `data` holds this JSON object."
    dead = f"{stream}.dead"
    document["channels"][dead] = {
        "address": dead,
        "description": "Dead letters: fields reason, detail, data (original bytes), source_id.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    document["components"]["messages"]["DeadLetter"] = {
        "title": "DeadLetter",
        "payload": _ref(letter_schema),
    }
    document["operations"][f"{dead}:publish"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{dead}"},
        "messages": [{"$ref": f"#/channels/{dead}/messages/DeadLetter"}],
    }
    _add_notifications(document)
    return document


def _add_notifications(document: dict[str, Any], stream: str = DEFAULT_NOTIFICATION_STREAM) -> None:
    """The notification stream the ledger publishes on (`XADD <stream> MAXLEN ~ N * data`)."""
    (schema,), definitions = msgspec.json.schema_components([Notification])
    document["components"]["schemas"].update(definitions)
    document["channels"][stream] = {
        "address": stream,
        "description": (
            "Notifications the ledger derives from its log (docs/notifications.md), each"
            " once per crossing with a stable notification_id: read with XREAD, dedupe on"
            " the id (delivery is at least once)."
        ),
        "messages": {"Notification": {"$ref": "#/components/messages/Notification"}},
    }
    document["components"]["messages"]["Notification"] = {
        "title": "Notification",
        "description": "The stream entry's field `data` holds this JSON object.",
        "payload": _ref(schema),
    }
    document["operations"][f"{stream}:publish"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{stream}"},
        "messages": [{"$ref": f"#/channels/{stream}/messages/Notification"}],
    }


def _ref(schema: dict[str, Any]) -> dict[str, Any]:
    ref = str(schema["$ref"]).replace("#/$defs/", "#/components/schemas/")
    return {"$ref": ref}


def rendered() -> bytes:
    return msgspec.json.format(msgspec.json.encode(asyncapi_document()), indent=2) + b"\n"


def main() -> int:
    DOCUMENT_PATH.write_bytes(rendered())
    sys.stdout.write(f"wrote {DOCUMENT_PATH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
