"""Named limits of the public contract: every bound a usage event or command is checked against."""

from datetime import UTC, datetime
from typing import Final

MAX_ID_CHARS: Final = 128
"""Longest id accepted: event, subscription, seat, pack, request, api key, gateway."""

ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]+$"
"""The characters of an id that appears in a URL path (subscription, seat, pack, event and
the like): letters, digits and `. _ - : @`, so every id can be written in a path as it is."""
ID_RULE: Final = f"an id is 1 to {MAX_ID_CHARS} of A-Z a-z 0-9 . _ - : @"
"""ID_PATTERN and MAX_ID_CHARS in words, for messages."""

MIN_INSTANT: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_INSTANT: Final = datetime(2199, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
"""Every instant the ledger accepts (anchors, the clock, `occurred_at`, expiries, `as_of`) lies
in [MIN_INSTANT, MAX_INSTANT]: far enough from `datetime`'s years 1 and 9999 that adding a
month, an offset or a validity period to any of them stays representable."""

_DAY: Final = r"(0[1-9]|[12][0-9]|3[01])"
_MONTH_DAY: Final = rf"(0[1-9]|1[0-2])-{_DAY}"
_TIME: Final = r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
_HOURS_MINUTES: Final = r"([01][0-9]|2[0-3]):[0-5][0-9]"
_INNER_DATE: Final = (
    rf"(200[1-9]|20[1-9][0-9]|21[0-8][0-9]|219[0-8])-{_MONTH_DAY}"
    rf"|2000-(0[2-9]|1[0-2])-{_DAY}|2000-01-(0[2-9]|[12][0-9]|3[01])"
    rf"|2199-(0[1-9]|1[01])-{_DAY}|2199-12-(0[1-9]|[12][0-9]|30)"
)
INSTANT_PATTERN: Final = (
    rf"^(({_INNER_DATE}){_TIME}(Z|[+-]{_HOURS_MINUTES})"
    rf"|2000-01-01{_TIME}(Z|[+-]00:00|-{_HOURS_MINUTES})"
    rf"|2199-12-31{_TIME}(Z|[+-]00:00|\+{_HOURS_MINUTES}))$"
)
"""How an instant is written over HTTP: RFC 3339 `YYYY-MM-DDTHH:MM:SS[.ffffff]` then `Z` or
`±HH:MM`, dated (as written, before the offset) 2000-01-01 to 2199-12-31. On those two days
the offset may not carry the instant across the bound: 2000-01-01 takes `Z`, `±00:00` or a
negative offset, 2199-12-31 `Z`, `±00:00` or a positive one. So every instant written this way
lies within [MIN_INSTANT, MAX_INSTANT]; the few inside it that it refuses are written near a
bound with an offset across it (`2000-01-01T05:00:00+03:00`: write `2000-01-01T02:00:00Z`). No
look-arounds: JSON Schema validators and generators in any language read it as it is."""
MAX_INSTANT_CHARS: Final = 32
"""The longest instant written that way (`2026-02-04T10:00:00.123456+05:30`)."""

MAX_MODEL_CHARS: Final = 64
MAX_TOKENS_PER_COMPONENT: Final = 50_000_000
"""No single request carries more input, cached or output tokens than this; above is absurd."""

MAX_TOOL_CALLS_PER_REQUEST: Final = 10_000
MAX_IMAGES_PER_REQUEST: Final = 1_000
UCR_PER_CREDIT: Final = 1_000_000
MAX_ADMIN_CREDITS_UCR: Final = 1_000_000_000 * 1_000_000
"""Most credits one hold, adjustment, grant or reversal may name: a billion credits."""
MAX_REASON_CHARS: Final = 500
MIN_HOLD_TTL_S: Final = 1
MAX_HOLD_TTL_S: Final = 3_600
DEFAULT_HOLD_TTL_S: Final = 600
HOLD_MEMORY_S: Final = 86_400
"""How long an ended hold is remembered (its id answers retries and reads) after it ended."""
"""Micro-credits in one credit: every amount on the money path is an integer of these."""
