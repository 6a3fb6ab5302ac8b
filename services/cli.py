"""The `ledger` command line: serve, publish, simulate, replay, audit, export, backfill, clock.

Errors leave with a one-line message and a non-zero exit code (services.cli_errors).
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast, get_args

import click
import msgspec

from projections.snapshot_policy import SNAPSHOTS_KEPT
from services.cli_errors import OneLineGroup, one_line_errors
from services.config import ConfigError, Role, Settings, check_redis_url, parse_instant

if TYPE_CHECKING:
    from ledger.clock import SharedManualClock
    from projections.balances import Balances
    from projections.usage import UsageQuery
    from schemas.commands import AdminCommand, Command
    from schemas.events import LogEvent
    from schemas.read_models import UsageRow
    from services.bootstrap import Parts

# Each command imports what it runs inside itself: `ledger serve` and every child it spawns
# (which imports this module again as its `__main__`) load none of the other commands' modules.

BACKFILL_BATCH_COMMANDS = 1_000
PROGRESS_MIN_RECORDS = 50_000
"""Logs longer than this get a progress bar on replay and audit."""
EXPORT_PAGE_ROWS = 1_000
MAX_PORT = 65_535

LAZY_COMMANDS = {"publish": "services.publish", "simulate": "services.simulate"}
"""Commands defined in modules of their own, imported when named (or listed by --help)."""


@cache
def _admin_decoder() -> msgspec.json.Decoder[AdminCommand]:
    from schemas.commands import AdminCommand

    return msgspec.json.Decoder(AdminCommand)


@contextmanager
def opened(settings: Settings) -> Iterator[Parts]:
    from services.bootstrap import bootstrap

    parts = bootstrap(settings)
    try:
        yield parts
    finally:
        parts.close()


class LedgerGroup(OneLineGroup):
    """The `ledger` group, with `LAZY_COMMANDS` loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            return cast(click.Command, getattr(import_module(LAZY_COMMANDS[cmd_name]), cmd_name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), help="Overrides LEDGER_DATA_DIR.")
@click.option("--database-url", help="Overrides LEDGER_DATABASE_URL (sqlite:///PATH).")
@click.pass_context
@one_line_errors
def main(ctx: click.Context, data_dir: Path | None, database_url: str | None) -> None:
    """The credits ledger: an event-sourced, hash-chained log of seat and pack credits."""
    ctx.obj = Settings.from_env().with_overrides(data_dir=data_dir, database_url=database_url)


# --- serve ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="Overrides LEDGER_HOST.")
@click.option("--port", type=click.IntRange(1, MAX_PORT), help="Overrides LEDGER_PORT.")
@click.option("--redis-url", help="Overrides LEDGER_REDIS_URL (unset: a private Redis).")
@click.option("--stream", help="Overrides LEDGER_USAGE_STREAM.")
@click.option(
    "--role",
    type=click.Choice(get_args(Role)),
    help="Overrides LEDGER_ROLE: all (default, one process), ingest (a worker under partition "
    "leases), api (HTTP and projector).",
)
@click.pass_obj
@one_line_errors
def serve(
    settings: Settings,
    host: str | None,
    port: int | None,
    redis_url: str | None,
    stream: str | None,
    role: str | None,
) -> None:
    """Run ingest, the lifecycle ticker and projections in one process (--role all), or one
    part of them."""
    from services.launch import launch

    check_redis_url(redis_url, "--redis-url")
    launch(
        settings.with_overrides(
            host=host, port=port, redis_url=redis_url, usage_stream=stream, role=role
        )
    )


# --- clock ---------------------------------------------------------------------------------

DURATION_UNITS_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
DURATION_UNITS_US["d"] = 24 * DURATION_UNITS_US["h"]


@main.group()
def clock() -> None:
    """Read or move the manual ledger clock (LEDGER_CLOCK=manual; sandboxes and tests only).

    A running `ledger serve` picks the new time up within a second and appends the cycle
    starts and pack expiries that fell due.
    """


def _manual_clock(settings: Settings) -> SharedManualClock:
    from ledger.clock import SharedManualClock
    from services.bootstrap import make_clock

    if settings.clock != "manual":
        raise ConfigError("the ledger clock is the system clock; set LEDGER_CLOCK=manual")
    made = make_clock(settings)
    assert isinstance(made, SharedManualClock)
    return made


@clock.command("show")
@click.pass_obj
@one_line_errors
def clock_show(settings: Settings) -> None:
    """Print the manual clock's now (RFC 3339)."""
    from ledger.log import datetime_from_us

    click.echo(_instant(datetime_from_us(_manual_clock(settings).now_us())))


@clock.command("set")
@click.argument("instant")
@click.pass_obj
@one_line_errors
def clock_set(settings: Settings, instant: str) -> None:
    """Move the manual clock forward to INSTANT (RFC 3339)."""
    from ledger.log import datetime_from_us, us_from_datetime

    manual = _manual_clock(settings)
    try:
        manual.set(us_from_datetime(parse_instant(instant, "INSTANT")))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    click.echo(_instant(datetime_from_us(manual.now_us())))


@clock.command("advance")
@click.argument("duration")
@click.pass_obj
@one_line_errors
def clock_advance(settings: Settings, duration: str) -> None:
    """Move the manual clock forward by DURATION (e.g. 90s, 2h, 31d, 1500ms)."""
    from ledger.log import datetime_from_us

    unit = next((u for u in ("ms", "s", "m", "h", "d") if duration.endswith(u)), None)
    number = duration.removesuffix(unit) if unit else ""
    if unit is None or not number.isdigit():
        raise ConfigError(f"DURATION: {duration!r} is not like 90s, 2h, 31d or 1500ms")
    manual = _manual_clock(settings)
    manual.advance(int(number) * DURATION_UNITS_US[unit])
    click.echo(_instant(datetime_from_us(manual.now_us())))


# --- replay ---------------------------------------------------------------------------------


# --- notifications -------------------------------------------------------------------------


@main.group()
def notifications() -> None:
    """The notifications the ledger derives from its log (stream, webhooks, feed)."""


@notifications.command("rebuild")
@click.pass_obj
@one_line_errors
def notifications_rebuild(settings: Settings) -> None:
    """Derive every notification again from position 0 of the log.

    Ids come from the log, so nothing already stored is stored, published or delivered again;
    a running notifier starts over at once, a stopped one when `ledger serve` starts.
    """
    from services.bootstrap import open_notification_store

    store = open_notification_store(settings)
    try:
        store.reset()
    finally:
        store.close()
    click.echo("notifications: deriving again from position 0")


@main.command()
@click.option("--until", "until", help="An RFC 3339 instant or position:N (default: the head).")
@click.option("--json", "as_json", is_flag=True, help="One JSON overview per subscription.")
@click.option(
    "--from-snapshot",
    is_flag=True,
    help="Start from the newest valid snapshot at or before that point (default: position 0).",
)
@click.pass_obj
@one_line_errors
def replay(settings: Settings, until: str | None, as_json: bool, from_snapshot: bool) -> None:
    """Replay the log up to a point and print every subscription's balances as of then."""
    from projections.replay import resolve_as_of
    from projections.snapshots import balances_from_snapshot

    with opened(settings) as parts:
        position = resolve_as_of(parts.store, until) if until else parts.store.head().position
        if from_snapshot:
            balances, _ = balances_from_snapshot(parts.snapshots, parts.store, position)
        else:
            balances = _replay_with_progress(parts, position)
        _print_balances(balances, position, as_json)


def _replay_with_progress(parts: Parts, position: int) -> Balances:
    from projections.replay import balances_as_of

    if position < PROGRESS_MIN_RECORDS:
        return balances_as_of(parts.store, position)
    with click.progressbar(length=position, label="replaying", file=sys.stderr) as bar:
        return balances_as_of(parts.store, position, on_progress=bar.update)


def _print_balances(balances: Balances, position: int, as_json: bool) -> None:
    from ledger.money import format_credits
    from projections.balances import overview

    subscription_ids = sorted(balances.subscriptions)
    if as_json:
        for subscription_id in subscription_ids:
            click.echo(msgspec.json.encode(overview(balances, subscription_id)))
        return
    click.echo(f"as of position {position}")
    for subscription_id in subscription_ids:
        view = overview(balances, subscription_id)
        assert view is not None
        click.echo(
            f"\nsubscription {subscription_id}  cycle {view.cycle} "
            f"[{_instant(view.cycle_start)} .. {_instant(view.cycle_end)})  "
            f"quota used {format_credits(view.quota_used_ucr)} of "
            f"{format_credits(view.quota_total_ucr)}  "
            f"packs remaining {format_credits(view.packs_remaining_ucr)}  "
            f"uncovered {format_credits(view.uncovered_ucr)}"
        )
        for seat in view.seats:
            click.echo(
                f"  seat {seat.seat_id:<24} {seat.tier:<9} {seat.status:<9} "
                f"quota {format_credits(seat.quota_ucr):>14}  "
                f"used {format_credits(seat.used_ucr):>14}  "
                f"remaining {format_credits(seat.remaining_ucr):>14}"
            )
        for pack in view.packs:
            click.echo(
                f"  pack {pack.pack_id:<24} {pack.status:<9} "
                f"remaining {format_credits(pack.remaining_ucr):>14} of "
                f"{format_credits(pack.credits_ucr)}  expires {_instant(pack.expires_at)}"
            )


def _instant(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat().replace("+00:00", "Z")


# --- audit ----------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Verify the log, or print its digest."""


@audit.command("verify")
@click.option(
    "--admin-writes",
    "list_admin_writes",
    is_flag=True,
    help="Also list every admin write checked: position, type, subscription, who asked and why.",
)
@click.pass_obj
@one_line_errors
def audit_verify(settings: Settings, list_admin_writes: bool) -> None:
    """Recompute the hash chain and re-derive every charge; exit 1 at the first bad position."""
    from ledger.audit import verify
    from ledger.log import find_charge
    from schemas.commands import ChargeOnRecord

    admin_writes: list[str] = []

    def admin_write(position: int, event: LogEvent) -> None:
        if list_admin_writes:
            admin_writes.append(admin_write_line(position, event))

    with opened(settings) as parts:
        head = parts.store.head().position
        records = parts.store.read()
        store = parts.store

        def charges(subscription_id: str, event_id: str) -> ChargeOnRecord | None:
            return find_charge(store, subscription_id, event_id)

        if head >= PROGRESS_MIN_RECORDS:
            with click.progressbar(length=head, label="verifying", file=sys.stderr) as bar:
                last = [0]

                def advance(position: int) -> None:
                    bar.update(position - last[0])
                    last[0] = position

                report = verify(records, parts.rate_card, advance, charges, admin_write)
        else:
            report = verify(records, parts.rate_card, charges=charges, on_admin_write=admin_write)
    if report.failure is not None:
        click.echo(
            f"ledger: audit failed at position {report.failure.position}: {report.failure.reason}",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"ok: {report.records} records, head hash {report.head_hash}; {report.admin_writes}"
        f" admin writes, {report.corrections} of them corrections (who asked and why:"
        " --admin-writes, or ledger export log)"
    )
    for line in admin_writes:
        click.echo(line)


def admin_write_line(position: int, event: LogEvent) -> str:
    """One admin write as the audit lists it: position, type, subscription, who asked, why."""
    from ledger.log import EVENT_TYPE_TAG

    actor = getattr(event, "actor", None)
    who = "unknown" if actor is None else f"token {actor.token_id} ({actor.role})"
    reason = getattr(event, "reason", None)
    why = "" if reason is None else f": {reason}"
    return f"{position}\t{EVENT_TYPE_TAG[type(event)]}\t{event.subscription_id}\t{who}{why}"


@audit.command("digest")
@click.pass_obj
@one_line_errors
def audit_digest(settings: Settings) -> None:
    """Print the head position and hash as JSON."""
    with opened(settings) as parts:
        head = parts.store.head()
    click.echo(msgspec.json.encode({"position": head.position, "hash": head.hash.hex()}))


# --- snapshots ------------------------------------------------------------------------------


@main.group()
def snapshot() -> None:
    """Snapshots of the writer's state and the balances: derived, so deleting them costs time
    only (a start then folds more of the log)."""


@snapshot.command("show")
@click.pass_obj
@one_line_errors
def snapshot_show(settings: Settings) -> None:
    """List the snapshots, newest first, each with whether a start may use it and why not."""
    from ledger.log import datetime_from_us
    from ledger.snapshots import problem_with

    with opened(settings) as parts:
        infos = parts.snapshots.infos()
        for info in infos:
            stored = parts.snapshots.load(info.position)
            problem = "gone" if stored is None else problem_with(stored, parts.store)[0]
            created = datetime_from_us(info.created_at_us).isoformat(timespec="seconds")
            click.echo(
                f"position {info.position}  created {created}  {info.size_bytes} bytes"
                f"  format {info.format}  {'valid' if problem is None else 'skipped: ' + problem}"
            )
    if not infos:
        click.echo("no snapshots")


@snapshot.command("create")
@click.pass_obj
@one_line_errors
def snapshot_create(settings: Settings) -> None:
    """Save a snapshot at the head (from the newest valid one and the records after it)."""
    from projections.snapshots import create_snapshot

    with opened(settings) as parts:
        info = create_snapshot(parts.snapshots, parts.store)
    click.echo(f"snapshot at position {info.position}: {info.size_bytes} bytes")


@snapshot.command("prune")
@click.option("--keep", type=click.IntRange(min=1), default=SNAPSHOTS_KEPT, show_default=True)
@click.pass_obj
@one_line_errors
def snapshot_prune(settings: Settings, keep: int) -> None:
    """Delete all but the newest snapshots."""
    from projections.snapshots import prune

    with opened(settings) as parts:
        gone = prune(parts.snapshots, keep)
    click.echo(f"deleted {len(gone)} snapshot(s)" + (f": {gone}" if gone else ""))


# --- export ---------------------------------------------------------------------------------


@main.group()
def export() -> None:
    """Export read models."""


CSV_COLUMNS = (
    "position",
    "recorded_at",
    "occurred_at",
    "event_id",
    "subscription_id",
    "seat_id",
    "model",
    "product",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "tool_calls",
    "images",
    "thinking",
    "rate_card_version",
    "credits",
    "seat_credits",
    "pack_credits",
    "uncovered_credits",
    "allocation",
    "grant_credits",
    "kind",
    "reverses",
    "reversed_credits",
    "reason",
)
"""A reversal is a row of its own (kind `reversal`, negative credits, the charge's event id in
`reverses`); a charge row says what its reversals gave back in `reversed_credits`."""


@export.command("usage")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.option("--from", "from_", help="RFC 3339; rows recorded at or after it.")
@click.option("--to", help="RFC 3339; rows recorded before it.")
@click.option("--subscription", help="Only this subscription (default: all).")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File (default stdout).")
@click.pass_obj
@one_line_errors
def export_usage(
    settings: Settings,
    fmt: str,
    from_: str | None,
    to: str | None,
    subscription: str | None,
    output: IO[str],
) -> None:
    """Export usage details (one row per charge), oldest first."""
    from projections.usage import UsageQuery

    recorded_from = parse_instant(from_, "--from") if from_ else None
    recorded_to = parse_instant(to, "--to") if to else None
    with opened(settings) as parts:
        runner = parts.projections()
        runner.catch_up()
        subscription_ids = [subscription] if subscription else sorted(runner.balances.subscriptions)
        writer = csv.writer(output, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        for subscription_id in subscription_ids:
            query = UsageQuery(
                subscription_id,
                recorded_from=recorded_from,
                recorded_to=recorded_to,
                limit=EXPORT_PAGE_ROWS,
            )
            for row in _all_usage(parts, query):
                if writer is not None:
                    writer.writerow(_csv_row(row))
                else:
                    output.write(msgspec.json.encode(row).decode() + "\n")


@export.command("log")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
@click.option("--subscription", help="Only this subscription (default: all).")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File (default stdout).")
@click.pass_obj
@one_line_errors
def export_log(settings: Settings, fmt: str, subscription: str | None, output: IO[str]) -> None:
    """Export the admin writes (corrections included) with who asked and why, in log order."""
    from services.export_log import write_admin_actions

    with opened(settings) as parts:
        runner = parts.projections()
        runner.catch_up()
        subscription_ids = [subscription] if subscription else sorted(runner.balances.subscriptions)
        write_admin_actions(parts.read_store, subscription_ids, fmt, output)


def _all_usage(parts: Parts, query: UsageQuery) -> Iterator[UsageRow]:
    while True:
        page = parts.read_store.usage(query)
        yield from page.items
        if page.next_cursor is None:
            return
        query = msgspec.structs.replace(query, cursor=page.next_cursor)


def _csv_row(row: UsageRow) -> list[object]:
    from ledger.money import format_credits

    by_source: Counter[str] = Counter()
    for part in row.allocation:
        by_source[part.source] += part.credits_ucr
    allocation = ";".join(
        f"{p.source}:{p.id}={format_credits(p.credits_ucr)}"
        if p.id
        else f"{p.source}={format_credits(p.credits_ucr)}"
        for p in row.allocation
    )
    u = row.usage
    return [
        row.position,
        _instant(row.recorded_at),
        _instant(row.occurred_at),
        row.event_id,
        row.subscription_id,
        row.seat_id,
        row.model,
        row.product or "",
        u.input_tokens,
        u.cached_tokens,
        u.output_tokens,
        u.tool_calls,
        u.images,
        str(u.thinking).lower(),
        row.rate_card_version,
        format_credits(row.credits_ucr),
        format_credits(by_source["seat"]),
        format_credits(by_source["pack"]),
        format_credits(by_source["uncovered"]),
        allocation,
        format_credits(by_source["grant"]),
        row.kind,
        row.reverses or "",
        format_credits(row.reversed_ucr),
        row.reason or "",
    ]


# --- rerate ---------------------------------------------------------------------------------


@main.command()
@click.option("--from", "from_", required=True, help="RFC 3339; charges recorded at or after it.")
@click.option("--to", required=True, help="RFC 3339; charges recorded before it.")
@click.option(
    "--rate-card",
    "rate_card_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The rate card (TOML) the charges should have been priced under.",
)
@click.option("--apply", "apply_", is_flag=True, help="Make the corrections (default: dry run).")
@click.pass_obj
@one_line_errors
def rerate(settings: Settings, from_: str, to: str, rate_card_path: Path, apply_: bool) -> None:
    """Price the charges recorded in [--from, --to) again under --rate-card and print the
    differences per seat and in total; with --apply, reverse each overcharge and take each
    undercharge from its seat, reason rerate:<card version> (a second --apply writes nothing).
    Refused corrections are listed on stderr (exit 3)."""
    from ledger.rate_card import load_rate_card
    from services.rerate import apply as apply_rerate
    from services.rerate import rerate_lines
    from services.rerate import table as rerate_table

    start, end = parse_instant(from_, "--from"), parse_instant(to, "--to")
    if end <= start:
        raise ConfigError("--to must be later than --from")
    card = load_rate_card(rate_card_path)
    with opened(settings) as parts:
        lines = rerate_lines(parts.store, card, start, end)
        for row in rerate_table(lines):
            click.echo(row)
        if not apply_:
            click.echo("dry run: nothing written (--apply makes the corrections)")
            return
        applied = apply_rerate(parts.ledger(), lines)
        parts.projections().catch_up()
    for line, reason in applied.refused:
        click.echo(
            f"ledger: refused for {line.subscription_id}/{line.event_id}: {reason}", err=True
        )
    click.echo(
        f"applied: {applied.written} corrections written, {applied.already} made before,"
        f" {len(applied.refused)} refused"
    )
    if applied.refused:
        sys.exit(3)


# --- backfill -------------------------------------------------------------------------------


@main.command()
@click.argument("source", type=click.File("rb"))
@click.option(
    "--batch", default=BACKFILL_BATCH_COMMANDS, show_default=True, help="Commands per append."
)
@click.pass_obj
@one_line_errors
def backfill(settings: Settings, source: IO[bytes], batch: int) -> None:
    """Append commands from a JSONL file (- for stdin) through the decider.

    Each line is a usage event (the v1 event a gateway publishes), or an admin command with a
    "type" of subscription.open, seat.add, seat.change_tier, seat.remove, pack.buy, or a
    correction: seat.adjust, grant.issue, usage.reverse, pack.void, grant.void (amounts in
    micro-credits, `credits_ucr`; a reason; optionally an actor {token_id, role}). A line
    may carry "at" (RFC 3339): the ledger clock is then a manual clock moved to it (never
    backwards), so history can be written with the times it happened. Refused lines are
    reported on stderr as JSON; the summary goes to stdout.
    """
    from ledger.clock import ManualClock
    from ledger.log import us_from_datetime

    if not 1 <= batch <= BACKFILL_BATCH_COMMANDS * 10:
        raise click.BadParameter(f"must be 1..{BACKFILL_BATCH_COMMANDS * 10}", param_hint="--batch")
    with opened(settings) as parts:
        manual: ManualClock | None = None
        ledger = parts.ledger()
        counts: Counter[str] = Counter()
        pending: list[tuple[int, Command]] = []

        def flush() -> None:
            if not pending:
                return
            outcomes = ledger.execute([command for _, command in pending])
            for (line_no, _), outcome in zip(pending, outcomes, strict=True):
                counts[outcome.status] += 1
                if outcome.status == "rejected":
                    report = {"line": line_no, "reason": outcome.reason, "detail": outcome.detail}
                    click.echo(msgspec.json.encode(report), err=True)
            pending.clear()

        for line_no, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            at, command = parse_backfill_line(raw, line_no)
            if at is not None and manual is not None and us_from_datetime(at) < manual.now_us():
                flush()
                raise ConfigError(f"line {line_no}: 'at' goes back in time; stopped before it")
            if at is not None and (manual is None or us_from_datetime(at) > manual.now_us()):
                flush()
                if manual is None:
                    manual = ManualClock(us_from_datetime(at))
                    ledger.clock = manual
                manual.set(us_from_datetime(at))
                ledger.tick()
            pending.append((line_no, command))
            if len(pending) >= batch:
                flush()
        flush()
        parts.projections().catch_up()
        summary = {**{k: counts[k] for k in ("applied", "duplicate", "rejected")}}
        summary["position"] = ledger.position
    click.echo(msgspec.json.encode(summary))


def parse_backfill_line(raw: bytes, line_no: int) -> tuple[datetime | None, Command]:
    from ledger.idempotency import payload_digest
    from schemas.commands import ChargeUsage
    from schemas.usage import UsageEvent

    try:
        fields = msgspec.json.decode(raw)
        if not isinstance(fields, dict):
            raise msgspec.ValidationError("a line must be a JSON object")
        at_text = fields.pop("at", None)
        at = parse_instant(at_text, f"line {line_no}: at") if at_text is not None else None
        if "type" in fields:
            return at, _admin_decoder().decode(msgspec.json.encode(fields))
        usage = msgspec.convert(fields, UsageEvent)
        return at, ChargeUsage(usage, payload_digest(usage))
    except (msgspec.DecodeError, ConfigError) as error:
        raise msgspec.DecodeError(f"line {line_no}: {error}") from error


if __name__ == "__main__":
    main()
