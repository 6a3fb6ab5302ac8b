"""The usage resource: a subscription's usage rows by time, oldest first, from the read model
tables, as of the same point of the log as the balances."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import QueryParameter

from projections.usage import (
    CURSOR_PATTERN,
    DEFAULT_PAGE_ROWS,
    MAX_CURSOR_CHARS,
    MAX_PAGE_ROWS,
    InvalidUsageQuery,
    UsageQuery,
)
from schemas.limits import MAX_MODEL_CHARS
from services.api.bodies import AsOf, IdQuery, PathId, instant_query
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import SUBSCRIPTION_READERS, requires
from services.api.problems import Problem, no_subscription
from services.api.reads import Reads, UsageReader, parse_instant
from services.api.views import UsagePageView, usage_row_view


class UsageController(V1Controller):
    path = "/subscriptions/{sub:str}/usage"

    @get(
        "/",
        summary="Usage details by time, oldest first",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_usage(
        self,
        reads: Injected[Reads],
        usage: Injected[UsageReader],
        sub: PathId,
        from_: Annotated[str | None, instant_query("from")] = None,
        to: Annotated[str | None, instant_query()] = None,
        seat: IdQuery = None,
        model: Annotated[
            str | None, QueryParameter(min_length=1, max_length=MAX_MODEL_CHARS)
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_ROWS)] = DEFAULT_PAGE_ROWS,
        cursor: Annotated[
            str | None, QueryParameter(max_length=MAX_CURSOR_CHARS, pattern=CURSOR_PATTERN)
        ] = None,
        as_of: AsOf = None,
    ) -> UsagePageView:
        # Existence as of the head: a usage page never replays the balances.
        with reads.live.reading() as balances:
            if sub not in balances.subscriptions:
                raise no_subscription(sub)
        live = reads.live.position
        query = UsageQuery(
            subscription_id=sub,
            seat_id=seat,
            model=model,
            recorded_from=parse_instant(from_, "from"),
            recorded_to=parse_instant(to, "to"),
            # Without as_of, as of the balances' position: a charge shows in a usage page
            # exactly when it shows in the balances, never before (the projector may be ahead
            # of this process's balances) nor after (the page waits for the projector).
            as_of_position=live if as_of is None else await reads.position_of(as_of),
            limit=limit,
            cursor=cursor,
        )
        await usage.caught_up(live)
        try:
            page = usage.page(query)
        except InvalidUsageQuery as error:
            raise Problem("invalid-parameter", f"cursor: {error}", parameter="cursor") from None
        return UsagePageView([usage_row_view(row) for row in page.items], page.next_cursor)
