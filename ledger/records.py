"""How a log event is stored: the record formats, and the one place that writes and reads them.

Format 1 (logs written before the compact format) is the event's JSON object; its first byte is
always `{`. Format 2 is one format byte (2) and a MessagePack array: the event's numeric tag,
then its fields in the order `FIELD_ORDER` fixes, trailing fields at their defaults left out;
nested structs are arrays too. A record's first byte says its format, so one log may hold both,
and a record is hashed as it is stored. Tags and orders are stable: a tag is never reused and a
field never moves; a new field (always with a default) goes after the fields listed, in the
order the struct declares it. An event type without a compact tag is stored in format 1.
"""

from __future__ import annotations

import functools
import operator
import types
from collections.abc import Callable
from typing import Any, Final, Union, get_args, get_origin

import msgspec

from schemas.events import (
    Actor,
    Allocation,
    ChargeReversed,
    Coefficients,
    Components,
    CreditsGranted,
    CycleStarted,
    GrantExpired,
    GrantVoided,
    HoldExpired,
    HoldExtended,
    HoldPlaced,
    HoldReleased,
    HoldSettled,
    HoldShrunk,
    LogEvent,
    NotificationSettingsChanged,
    PackExpired,
    PackPurchased,
    PackVoided,
    ReversalPart,
    SeatAdded,
    SeatAdjusted,
    SeatQuotaGranted,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.usage import Usage

JSON_FORMAT_FIRST_BYTE: Final = ord("{")
"""Format 1: the event's JSON object."""
COMPACT_FORMAT: Final = 2
COMPACT_PREFIX: Final = bytes([COMPACT_FORMAT])

COMPACT_TAGS: Final[dict[type, int]] = {
    SubscriptionOpened: 1,
    CycleStarted: 2,
    SeatAdded: 3,
    SeatTierChanged: 4,
    SeatRemoved: 5,
    SeatQuotaGranted: 6,
    PackPurchased: 7,
    PackExpired: 8,
    UsageCharged: 9,
    SeatSuspended: 10,
    SeatResumed: 11,
    HoldPlaced: 12,
    HoldExtended: 13,
    HoldReleased: 14,
    HoldExpired: 15,
    HoldSettled: 16,
    HoldShrunk: 17,
    SeatAdjusted: 18,
    CreditsGranted: 19,
    GrantExpired: 20,
    ChargeReversed: 21,
    PackVoided: 22,
    GrantVoided: 23,
    NotificationSettingsChanged: 24,
}
"""Each event type's tag in format 2 (first element of its array). Never reuse a number."""

FIELD_ORDER: Final[dict[type, tuple[str, ...]]] = {
    UsageCharged: (
        # What the balances need comes first, so the replay's view decodes a prefix.
        "subscription_id",
        "seat_id",
        "model",
        "credits_ucr",
        "allocation",
        "event_id",
        "payload_digest",
        "occurred_at",
        "product",
        "usage",
        "rate_card_version",
        "coefficients",
        "components",
        "request_id",
        "api_key_id",
        "gateway",
        "hold_id",
        "hold_status",
    ),
    SubscriptionOpened: ("subscription_id", "anchor", "actor", "reason"),
    CycleStarted: ("subscription_id", "cycle", "cycle_start", "cycle_end"),
    SeatAdded: ("subscription_id", "seat_id", "tier", "quota_ucr", "cycle", "actor", "reason"),
    SeatTierChanged: (
        "subscription_id",
        "seat_id",
        "from_tier",
        "to_tier",
        "effect",
        "quota_ucr",
        "actor",
        "reason",
    ),
    SeatRemoved: ("subscription_id", "seat_id", "forfeited_ucr", "actor", "reason"),
    SeatQuotaGranted: ("subscription_id", "seat_id", "tier", "cycle", "quota_ucr", "lapsed_ucr"),
    PackPurchased: (
        "subscription_id",
        "pack_id",
        "credits_ucr",
        "purchased_at",
        "expires_at",
        "actor",
        "reason",
    ),
    PackExpired: ("subscription_id", "pack_id", "expires_at", "expired_ucr"),
    SeatSuspended: ("subscription_id", "seat_id", "reason", "event_id"),
    SeatResumed: ("subscription_id", "seat_id", "reason"),
    HoldPlaced: (
        "subscription_id",
        "seat_id",
        "hold_id",
        "credits_ucr",
        "allocation",
        "ttl_s",
        "placed_at",
        "expires_at",
        "actor",
    ),
    HoldExtended: (
        "subscription_id",
        "seat_id",
        "hold_id",
        "ttl_s",
        "extended_at",
        "expires_at",
        "actor",
    ),
    HoldReleased: (
        "subscription_id",
        "seat_id",
        "hold_id",
        "released_ucr",
        "released_at",
        "reason",
        "actor",
    ),
    HoldExpired: ("subscription_id", "seat_id", "hold_id", "released_ucr", "expires_at"),
    HoldSettled: (
        "subscription_id",
        "seat_id",
        "hold_id",
        "event_id",
        "released_ucr",
        "settled_at",
    ),
    HoldShrunk: ("subscription_id", "seat_id", "hold_id", "source", "id", "by_ucr", "at"),
    SeatAdjusted: (
        "subscription_id",
        "seat_id",
        "adjustment_id",
        "credits_ucr",
        "cycle",
        "actor",
        "reason",
    ),
    CreditsGranted: (
        "subscription_id",
        "grant_id",
        "credits_ucr",
        "granted_at",
        "expires_at",
        "actor",
        "reason",
    ),
    GrantExpired: ("subscription_id", "grant_id", "expires_at", "expired_ucr"),
    ChargeReversed: (
        "subscription_id",
        "seat_id",
        "event_id",
        "reversal_id",
        "credits_ucr",
        "parts",
        "model",
        "charge_cycle",
        "actor",
        "reason",
    ),
    PackVoided: ("subscription_id", "pack_id", "voided_ucr", "actor", "reason"),
    GrantVoided: ("subscription_id", "grant_id", "voided_ucr", "actor", "reason"),
    NotificationSettingsChanged: (
        "subscription_id",
        "thresholds_percent",
        "credits_low_ucr",
        "actor",
        "reason",
    ),
    Allocation: ("source", "id", "credits_ucr"),
    ReversalPart: ("source", "id", "credits_ucr", "outcome"),
    Actor: ("token_id", "role"),
    Usage: ("input_tokens", "cached_tokens", "output_tokens", "tool_calls", "images", "thinking"),
    Components: (
        "input_ucr",
        "cached_ucr",
        "output_ucr",
        "thinking_ucr",
        "tools_ucr",
        "images_ucr",
    ),
    Coefficients: (
        "input_ucr_per_1k",
        "cached_ucr_per_1k",
        "output_ucr_per_1k",
        "thinking_ucr_per_1k",
        "tool_call_ucr",
        "image_ucr",
    ),
}
"""Each stored struct's fields in array order. Append, never reorder."""


def field_order(struct_type: type) -> list[str]:
    """The fields of `struct_type` in array order: `FIELD_ORDER`'s, then any it does not list."""
    listed = FIELD_ORDER[struct_type]
    declared = [f.name for f in msgspec.structs.fields(struct_type)]
    return [*listed, *(name for name in declared if name not in listed)]


_COMPACT_TYPES: dict[type, type] = {}
"""Each stored struct type -> its array-like mirror (same field names, array order)."""


def _struct_in(annotation: Any) -> tuple[str, type] | None:
    """How a stored struct type sits in a field's annotation: ("one", T), ("optional", T) for
    `T | None`, ("tuple", T) for `tuple[T, ...]`; None when it holds none."""
    if isinstance(annotation, type) and annotation in FIELD_ORDER:
        return "one", annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (types.UnionType, Union):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1 and inner[0] in FIELD_ORDER:
            return "optional", inner[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in FIELD_ORDER:
        return "tuple", args[0]
    for arg in args:
        if _struct_in(arg) is not None:
            raise TypeError(f"a stored struct in {annotation!r}: not a shape records.py knows")
    return None


def _mirrored(annotation: Any) -> Any:
    """`annotation` with its stored struct type (if any) replaced by that type's mirror."""
    found = _struct_in(annotation)
    if found is None:
        return annotation
    shape, struct_type = found
    mirror = _compact_type(struct_type)
    if shape == "one":
        return mirror
    if shape == "optional":
        return mirror | None
    return tuple[mirror, ...]  # type: ignore[valid-type]


def _compact_type(struct_type: type) -> type:
    if struct_type in _COMPACT_TYPES:
        return _COMPACT_TYPES[struct_type]
    info = {f.name: f for f in msgspec.structs.fields(struct_type)}
    fields: list[Any] = []
    for name in field_order(struct_type):
        spec = info[name]
        kind = _mirrored(spec.type)
        if spec.default is not msgspec.NODEFAULT:
            fields.append((name, kind, spec.default))
        elif spec.default_factory is not msgspec.NODEFAULT:
            fields.append((name, kind, msgspec.field(default_factory=spec.default_factory)))
        else:
            fields.append((name, kind))
    mirror = msgspec.defstruct(
        f"Compact{struct_type.__name__}",
        fields,
        array_like=True,
        frozen=True,
        gc=False,
        tag=COMPACT_TAGS.get(struct_type),
    )
    _COMPACT_TYPES[struct_type] = mirror
    return mirror


Convert = Callable[[Any], Any]


def _expression(
    annotation: Any, value: str, depth: int, build: Callable[[type, str, int], str]
) -> str:
    """Python source converting `value` (an expression) of a field typed `annotation`."""
    found = _struct_in(annotation)
    if found is None:
        return value
    shape, struct_type = found
    if shape == "one":
        return build(struct_type, value, depth + 1)
    if shape == "optional":
        return f"(None if {value} is None else {build(struct_type, value, depth + 1)})"
    item = f"x{depth}"
    return f"tuple([{build(struct_type, item, depth + 1)} for {item} in {value}])"


def _original_source(struct_type: type, value: str, depth: int) -> str:
    """Source building the `struct_type` value a mirror (`value`) stands for."""
    parts = [
        _expression(f.type, f"{value}.{f.name}", depth, _original_source)
        for f in msgspec.structs.fields(struct_type)
    ]
    return f"{struct_type.__name__}({', '.join(parts)})"


def _array_source(struct_type: type, value: str, depth: int) -> str:
    """Source building the stored array of a `struct_type` value (`value`)."""
    info = {f.name: f for f in msgspec.structs.fields(struct_type)}
    parts = [
        _expression(info[name].type, f"{value}.{name}", depth, _array_source)
        for name in field_order(struct_type)
    ]
    tag = COMPACT_TAGS.get(struct_type)
    if tag is not None:
        parts.insert(0, str(tag))
    return f"_trim_{struct_type.__name__}([{', '.join(parts)}], {int(tag is not None)})"


@functools.cache  # every converter's namespace holds every trimmer: build each once
def _trimmer(struct_type: type) -> Callable[[list[Any], int], list[Any]]:
    """Drops the trailing fields of an array that hold their defaults (after `keep` leading
    items, the tag)."""
    info = {f.name: f for f in msgspec.structs.fields(struct_type)}
    defaults = [info[name].default for name in field_order(struct_type)]

    def trim(values: list[Any], keep: int) -> list[Any]:
        end = len(values)
        while end > keep and values[end - 1] == defaults[end - 1 - keep]:
            end -= 1
        del values[end:]
        return values

    return trim


def _compiled(name: str, source: str) -> Convert:
    namespace: dict[str, Any] = {t.__name__: t for t in FIELD_ORDER}
    namespace.update({f"_trim_{t.__name__}": _trimmer(t) for t in FIELD_ORDER})
    exec(f"def {name}(v):\n    return {source}\n", namespace)  # source built from the types above
    return namespace[name]  # type: ignore[no-any-return]


def _to_array(struct_type: type) -> Convert:
    """`struct_type`'s value -> its stored array: the tag, fields in array order, nested
    structs as arrays, trailing fields at their defaults left out."""
    return _compiled("to_array", _array_source(struct_type, "v", 0))


def _to_original(struct_type: type) -> Convert:
    """A decoded mirror -> the `struct_type` value it stands for."""
    return _compiled("to_original", _original_source(struct_type, "v", 0))


_MIRRORS: Final = {event_type: _compact_type(event_type) for event_type in COMPACT_TAGS}
_ORIGINALS: Final = {mirror: _to_original(event_type) for event_type, mirror in _MIRRORS.items()}
_TO_ARRAY: Final = {event_type: _to_array(event_type) for event_type in COMPACT_TAGS}
_COMPACT_UNION: Any = functools.reduce(operator.or_, _MIRRORS.values())


def _values_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:  # attrgetter of one name gives the value, not a tuple
        return lambda value: (getattr(value, names[0]),)
    return operator.attrgetter(*names)


_VALUES: Final = {
    kind: _values_getter(field_order(struct_type))
    for struct_type in FIELD_ORDER
    for kind in (struct_type, _compact_type(struct_type))
}

_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_DECODER: Final[msgspec.json.Decoder[LogEvent]] = msgspec.json.Decoder(LogEvent)
_COMPACT_ENCODER: Final = msgspec.msgpack.Encoder()
_COMPACT_DECODER: Final = msgspec.msgpack.Decoder(_COMPACT_UNION)


def encode_event(event: LogEvent) -> bytes:
    """The bytes a record stores for `event`: format 2, or format 1 for a type without a tag."""
    to_array = _TO_ARRAY.get(type(event))
    if to_array is None:
        return _JSON_ENCODER.encode(event)
    return COMPACT_PREFIX + _COMPACT_ENCODER.encode(to_array(event))


def decode_stored(data: bytes) -> Any:
    """What a record's bytes hold, as stored: for format 2 the array-like mirror of its event
    (the event's field names, nested structs mirrored too; `event_of` gives the event), for
    format 1 the event itself (`msgspec.DecodeError` when they hold none). Decoding validates
    as fully as `decode_event`; checks that read a few fields of every record skip building
    the event."""
    if data[:1] == COMPACT_PREFIX:
        return _COMPACT_DECODER.decode(data[1:])
    return _JSON_DECODER.decode(data)


def event_of(stored: Any) -> LogEvent:
    """The event a value of `decode_stored` stands for."""
    to_original = _ORIGINALS.get(type(stored))
    return stored if to_original is None else to_original(stored)  # type: ignore[no-any-return]


def stored_types(event_type: type) -> frozenset[type]:
    """The types `decode_stored` gives for an `event_type`: the event's, and its mirror's."""
    return frozenset((event_type, _COMPACT_TYPES.get(event_type, event_type)))


def stored_values(value: Any) -> tuple[Any, ...]:
    """A stored struct's field values in array order, whether `value` is the struct or its
    mirror: what compares a re-derived value with a decoded one (nested structs compare as
    themselves, so compare those by their own values)."""
    return _VALUES[type(value)](value)


def is_compact(data: bytes) -> bool:
    return data[:1] == COMPACT_PREFIX


def decode_event(data: bytes) -> LogEvent:
    """The event a record's bytes hold, whatever their format (`msgspec.DecodeError` when they
    hold none)."""
    if data[:1] == COMPACT_PREFIX:
        # A copy of a record's few hundred bytes costs less than a memoryview of them.
        compact = _COMPACT_DECODER.decode(data[1:])
        return _ORIGINALS[type(compact)](compact)  # type: ignore[no-any-return]
    return _JSON_DECODER.decode(data)


def event_json(data: bytes) -> bytes:
    """A record's event as JSON (its stored bytes when it is format 1), for people and exports."""
    if data[:1] == COMPACT_PREFIX:
        return _JSON_ENCODER.encode(decode_event(data))
    return data


def compact_view_decoder(event_type: type, view: type) -> Callable[[bytes], Any]:
    """A decoder of format-2 records: into `view` when they hold an `event_type`, into the full
    event otherwise. `view` is an array-like struct tagged as `event_type` whose fields are a
    prefix of its array order (the rest of the array is skipped): one pass for hot paths that
    need a few fields of one frequent event."""
    config = view.__struct_config__  # type: ignore[attr-defined]
    if not config.array_like or config.tag != COMPACT_TAGS[event_type]:
        raise TypeError(f"{view.__name__} is not an array-like view tagged as {event_type}")
    others = [mirror for kind, mirror in _MIRRORS.items() if kind is not event_type]
    decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
        functools.reduce(operator.or_, [view, *others])
    )

    def decode(data: bytes) -> Any:
        found = decoder.decode(data[1:])
        if type(found) is view:
            return found
        return _ORIGINALS[type(found)](found)

    return decode


def compact_tag(event_type: type) -> int:
    """`event_type`'s tag in format 2 (for views of it: `compact_view_decoder`)."""
    return COMPACT_TAGS[event_type]
