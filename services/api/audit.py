"""The audit resource (admins and auditors): the raw hash-chained log, page by page, and its
digest (head position and hash), now or as of a point of the log."""

from __future__ import annotations

from typing import Annotated, Final

from litestar import get
from litestar.params import QueryParameter

from ledger.log import GENESIS_HASH, EventStore
from services.api.bodies import AsOf
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import AUDITORS, requires
from services.api.reads import Reads, record_at
from services.api.views import DigestView, LogPage, log_record_view

MAX_LOG_PAGE_RECORDS: Final = 1_000
DEFAULT_LOG_PAGE_RECORDS: Final = 100
MAX_AFTER_POSITION: Final = 2**53
"""The largest `after` a JSON number holds exactly (a document's bounds are JSON numbers); no
log comes near it."""


class AuditController(V1Controller):
    path = "/"

    @get("/log", summary="The raw hash-chained log, for auditors", guards=[requires(AUDITORS)])
    async def get_log(
        self,
        events: Injected[EventStore],
        reads: Injected[Reads],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_AFTER_POSITION)] = 0,
        limit: Annotated[
            int, QueryParameter(ge=1, le=MAX_LOG_PAGE_RECORDS)
        ] = DEFAULT_LOG_PAGE_RECORDS,
        as_of: AsOf = None,
    ) -> LogPage:
        end = events.head().position if as_of is None else await reads.position_of(as_of)
        until = min(after + limit, end)
        records = events.read(after=after, until=until) if until > after else ()
        return LogPage([log_record_view(r) for r in records], until if until < end else None)

    @get(
        "/audit/digest",
        summary="The log's head position and hash",
        guards=[requires(AUDITORS)],
    )
    async def get_digest(
        self, events: Injected[EventStore], reads: Injected[Reads], as_of: AsOf = None
    ) -> DigestView:
        if as_of is None:
            head = events.head()
            return DigestView(head.position, head.hash.hex())
        position = await reads.position_of(as_of)
        record = record_at(events, position)
        return DigestView(position, (GENESIS_HASH if record is None else record.hash).hex())
