"""Named limits of the public contract: every bound a usage event or command is checked against."""

from datetime import UTC, datetime
from typing import Final

MAX_ID_CHARS: Final = 128
"""Longest id accepted: event, subscription, seat, pack, request, api key, gateway."""

ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]+$"
"""The characters of an id that appears in a URL path (subscription, seat, pack, event and
the like): letters, digits and `. _ - : @`, so every id can be written in a path as it is."""

MIN_INSTANT: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_INSTANT: Final = datetime(2199, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
"""Every instant the ledger accepts (anchors, the clock, `occurred_at`, expiries, `as_of`) lies
in [MIN_INSTANT, MAX_INSTANT]: far enough from `datetime`'s years 1 and 9999 that adding a
month, an offset or a validity period to any of them stays representable."""

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
