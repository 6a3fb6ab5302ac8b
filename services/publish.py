"""`ledger publish`: one usage event onto the usage stream, for people without redis-cli.

The event comes as JSON on stdin or from flags, is checked against the v1 usage event before
anything is sent (a typo stops here, with exit 2), and goes where a gateway's would: the Redis
and stream of LEDGER_REDIS_URL, or of the `ledger serve` running on the data dir. Then it waits
(`--wait`, the default) until consumer group `ledger` has taken the entry: a dead letter is
reported with its reason (exit 3); an accepted event is waited for until the running serve's
HTTP API shows it, so a read right after sees the charge.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import click
import httpx
import msgspec

from ledger.errors import LedgerError
from schemas.usage import Usage, UsageEvent
from services.cli_errors import one_line_errors
from services.client import AnyRedis, UsagePublisher, as_text, redis_client
from services.config import ConfigError, Settings, parse_instant
from services.ingest.dead_letters import dead_letter_index, dead_letter_stream
from services.running import UsageTarget, usage_target

WAIT_S: Final = 10.0
"""Longest wait for the ledger to take the event, then for its HTTP API to show it."""
POLL_S: Final = 0.02
HTTP_TIMEOUT_S: Final = 2.0
EVENT_ID_PREFIX: Final = "evt-"


class DeadLettered(LedgerError):
    """The ledger refused the event: it is on the dead-letter stream with this reason."""


class NotTaken(OSError):
    """Nothing consumed the entry in time: no ledger reads that stream."""


@click.command()
@click.option("--subscription", help="subscription_id (with --seat and --model: from flags).")
@click.option("--seat", help="seat_id.")
@click.option("--model", help="The model, as the rate card names it (e.g. qwen3.6-plus).")
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cached-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tool-calls", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--images", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--thinking", is_flag=True, help="Thinking mode was on.")
@click.option("--event-id", help="The idempotency key (default: a new random one).")
@click.option("--occurred-at", help="RFC 3339 (default: now).")
@click.option("--redis-url", help="Overrides LEDGER_REDIS_URL (default: the running serve's).")
@click.option("--stream", help="Overrides the usage stream.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the ledger has charged or dead-lettered the event.",
)
@click.pass_obj
@one_line_errors
def publish(settings: Settings, /, redis_url: str | None, stream: str | None, **given: Any) -> None:
    """Publish one usage event: JSON on stdin, or --subscription, --seat, --model and counts.

    \b
      echo '{"event_id": "e-1", ...}' | ledger publish
      ledger publish --subscription team-1 --seat alice --model qwen3.6-plus --output-tokens 9

    Prints one line once the ledger has taken it; a dead-lettered event exits 3 with its
    reason.
    """
    wait = given.pop("wait")
    event = event_from_flags(given) if given["subscription"] else event_from_stdin()
    target = usage_target(settings, redis_url, stream)
    client: AnyRedis = redis_client(target.redis_url, cluster=target.cluster)
    try:
        with UsagePublisher(
            target.redis_url, target.stream, partitions=target.partitions, client=client
        ) as publisher:
            stream_name = publisher.stream_of(event)
            entry_id = publisher.publish(event)
        where = f"event {event.event_id} on {stream_name}, entry {entry_id}"
        if not wait:
            click.echo(f"published: {where}")
            return
        letter = wait_taken(client, stream_name, entry_id)
    finally:
        client.close()
    if letter is not None:
        raise DeadLettered(f"{where} was dead-lettered: {letter}")
    wait_shown(target)
    click.echo(f"accepted: {where}")


def event_from_flags(given: dict[str, Any]) -> UsageEvent:
    missing = [f"--{name}" for name in ("seat", "model") if not given[name]]
    if missing:
        raise ConfigError(f"--subscription needs {' and '.join(missing)}")
    occurred = given["occurred_at"]
    fields = {
        "event_id": given["event_id"] or EVENT_ID_PREFIX + uuid.uuid4().hex,
        "subscription_id": given["subscription"],
        "seat_id": given["seat"],
        "model": given["model"],
        "occurred_at": parse_instant(occurred, "--occurred-at") if occurred else _now(),
        **{count: given[count] for count in Usage.__struct_fields__},
    }
    try:
        return msgspec.convert(fields, UsageEvent)
    except msgspec.ValidationError as error:
        raise ConfigError(f"the event: {error}") from None


def event_from_stdin() -> UsageEvent:
    if sys.stdin.isatty():
        raise ConfigError("give the event as JSON on stdin, or as --subscription, --seat, --model")
    raw = sys.stdin.buffer.read()
    try:
        return msgspec.json.decode(raw, type=UsageEvent)
    except msgspec.DecodeError as error:  # ValidationError included
        raise ConfigError(f"the event on stdin: {error}") from None


def _now() -> datetime:
    return datetime.now(UTC)


def wait_taken(client: AnyRedis, stream: str, entry_id: str) -> str | None:
    """Wait until group `ledger` has acknowledged the entry; its dead letter's `reason: detail`,
    or None when it was accepted."""
    deadline = time.monotonic() + WAIT_S
    while not _acknowledged(client, stream, entry_id):
        if time.monotonic() > deadline:
            raise NotTaken(
                f"published entry {entry_id} on {stream}, but no ledger took it within "
                f"{WAIT_S:g} s; does a `ledger serve` read that stream?"
            )
        time.sleep(POLL_S)
    dead_id = client.hget(dead_letter_index(stream), entry_id)
    if dead_id is None:
        return None
    letters: Any = client.xrange(dead_letter_stream(stream), dead_id, dead_id)
    fields = {as_text(k): as_text(v) for k, v in letters[0][1].items()} if letters else {}
    reason = fields.get("reason", "unknown")
    return f"{reason}: {fields['detail']}" if fields.get("detail") else reason


def _acknowledged(client: AnyRedis, stream: str, entry_id: str) -> bool:
    # Imported here: the stream module brings FastStream, which no other command needs.
    from services.ingest.stream import CONSUMER_GROUP

    groups: Any = client.xinfo_groups(stream)
    group = next((g for g in groups if as_text(g["name"]) == CONSUMER_GROUP), None)
    if group is None or _id(as_text(group["last-delivered-id"])) < _id(entry_id):
        return False
    pending: Any = client.xpending_range(stream, CONSUMER_GROUP, entry_id, entry_id, 1)
    return not pending


def _id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def wait_shown(target: UsageTarget) -> None:
    """Wait until the running serve's HTTP API has folded the log's head (the charge among it);
    a serve whose API does not answer is not waited for."""
    if target.http_url is None:
        return
    deadline = time.monotonic() + WAIT_S
    head: int | None = None
    with httpx.Client(base_url=target.http_url, timeout=HTTP_TIMEOUT_S) as http:
        while time.monotonic() < deadline:
            try:
                reply = http.get("/readyz")
            except httpx.HTTPError:
                return
            if reply.status_code != httpx.codes.OK:
                return
            ready = reply.json()
            head = ready["head"] if head is None else head
            if ready["position"] >= head:
                return
            time.sleep(POLL_S)
