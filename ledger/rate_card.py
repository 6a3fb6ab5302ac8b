"""The versioned rate card: which coefficients price a model at a given instant.

Rates are held as integer micro-credits (per 1K tokens, per tool call, per image). A version
is in force from its `effective_from` until the next version's; a model absent from the
version in force is unknown and never priced at zero.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ledger.errors import RateCardError
from schemas.events import Coefficients
from schemas.limits import UCR_PER_CREDIT

Product = Literal["text", "image"]

TEXT_RATE_FIELDS = (
    "input_per_1k",
    "cached_per_1k",
    "output_per_1k",
    "thinking_per_1k",
    "tool_call",
)
IMAGE_RATE_FIELDS = ("image",)
DEFAULT_RATE_CARD = "default.toml"


@dataclass(frozen=True, slots=True)
class ModelRates:
    model: str
    product: Product
    coefficients: Coefficients
    assumed: frozenset[str]


@dataclass(frozen=True, slots=True)
class RateCardVersion:
    version: str
    effective_from: datetime
    models: Mapping[str, ModelRates]


@dataclass(frozen=True, slots=True)
class RateCard:
    """All versions, oldest first; `in_force(at)` picks the one that prices a charge at `at`."""

    versions: tuple[RateCardVersion, ...]
    _starts: tuple[datetime, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(v.effective_from for v in self.versions))

    def in_force(self, at: datetime) -> RateCardVersion | None:
        index = bisect.bisect_right(self._starts, at) - 1
        return self.versions[index] if index >= 0 else None

    def version(self, name: str) -> RateCardVersion | None:
        for candidate in self.versions:
            if candidate.version == name:
                return candidate
        return None


def ucr_from_credits(text: str, where: str) -> int:
    """Parse a decimal credits string into exact micro-credits; refuse what is not whole µcr."""
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise RateCardError(f"{where}: {text!r} is not a decimal number") from exc
    ucr = amount * UCR_PER_CREDIT
    if ucr != ucr.to_integral_value() or ucr < 0:
        raise RateCardError(f"{where}: {text!r} is not a whole, non-negative number of µcr")
    return int(ucr)


def _model_rates(version: str, model: str, raw: Mapping[str, Any]) -> ModelRates:
    where = f"rate card {version} model {model}"
    product = raw.get("product")
    if product not in ("text", "image"):
        raise RateCardError(f"{where}: product must be 'text' or 'image'")
    allowed = TEXT_RATE_FIELDS if product == "text" else IMAGE_RATE_FIELDS
    unknown = set(raw) - set(allowed) - {"product", "assumed"}
    if unknown:
        raise RateCardError(f"{where}: unknown fields {sorted(unknown)}")
    missing = [name for name in allowed if name not in raw]
    if missing:
        raise RateCardError(f"{where}: missing rates {missing}")
    assumed = raw.get("assumed")
    if not isinstance(assumed, list) or not set(assumed) <= set(allowed):
        raise RateCardError(f"{where}: 'assumed' must list the rates not taken from the seed")
    ucr = {name: ucr_from_credits(str(raw[name]), f"{where} {name}") for name in allowed}
    coefficients = Coefficients(
        input_ucr_per_1k=ucr.get("input_per_1k", 0),
        cached_ucr_per_1k=ucr.get("cached_per_1k", 0),
        output_ucr_per_1k=ucr.get("output_per_1k", 0),
        thinking_ucr_per_1k=ucr.get("thinking_per_1k", 0),
        tool_call_ucr=ucr.get("tool_call", 0),
        image_ucr=ucr.get("image", 0),
    )
    return ModelRates(model, product, coefficients, frozenset(assumed))


def parse_rate_card(document: Mapping[str, Any]) -> RateCard:
    raw_versions = document.get("versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        raise RateCardError("rate card has no [[versions]]")
    versions: list[RateCardVersion] = []
    for raw in raw_versions:
        name = raw.get("version")
        start = raw.get("effective_from")
        if not isinstance(name, str) or not name:
            raise RateCardError("every rate card version needs a 'version' name")
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise RateCardError(f"rate card {name}: effective_from must be an instant with offset")
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise RateCardError(f"rate card {name}: no models")
        parsed = {model: _model_rates(name, model, rates) for model, rates in models.items()}
        versions.append(RateCardVersion(name, start, parsed))
    versions.sort(key=lambda v: v.effective_from)
    names = [v.version for v in versions]
    if len(set(names)) != len(names):
        raise RateCardError("rate card version names must be unique")
    starts = [v.effective_from for v in versions]
    if len(set(starts)) != len(starts):
        raise RateCardError("two rate card versions take effect at the same instant")
    return RateCard(tuple(versions))


def load_rate_card(path: str | Path | None = None) -> RateCard:
    """The card at `path`, or the one shipped with the package."""
    try:
        if path is None:
            text = resources.files("ledger.rate_cards").joinpath(DEFAULT_RATE_CARD).read_text()
        else:
            text = Path(path).read_text()
        document = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RateCardError(f"cannot read rate card {path or DEFAULT_RATE_CARD}: {exc}") from exc
    return parse_rate_card(document)
