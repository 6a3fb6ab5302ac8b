"""Named limits of the public contract: every bound a usage event or command is checked against."""

from typing import Final

MAX_ID_CHARS: Final = 128
"""Longest id accepted: event, subscription, seat, pack, request, api key, gateway."""

MAX_MODEL_CHARS: Final = 64
MAX_TOKENS_PER_COMPONENT: Final = 50_000_000
"""No single request carries more input, cached or output tokens than this; above is absurd."""

MAX_TOOL_CALLS_PER_REQUEST: Final = 10_000
MAX_IMAGES_PER_REQUEST: Final = 1_000
UCR_PER_CREDIT: Final = 1_000_000
"""Micro-credits in one credit: every amount on the money path is an integer of these."""
