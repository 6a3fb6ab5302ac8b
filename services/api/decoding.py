"""How a request's JSON body is read: strictly, into the handler's body type.

Litestar converts a decoded body to the handler's type with msgspec's lax rules (a number
becomes a datetime, the string "5" an integer), so it would take what the OpenAPI document
refuses. This request class decodes the body bytes with msgspec's strict rules straight into
the body type instead: the server refuses exactly what the document refuses, bytes that are
not UTF-8 are a 400 problem, and, as on the usage stream, a key given twice in an object means
its last value.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.types import Empty

from services.api.problems import Problem

_FIELD_PATH: Final = re.compile(r" - at `\$\.?([^`]*)`$")


@functools.lru_cache(maxsize=64)
def _decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type)


def decode_body(raw: bytes, body_type: Any) -> Any:
    """`raw` (empty reads as JSON null) as a `body_type`, or the problem it answers with."""
    try:
        return _decoder(body_type).decode(raw or b"null")
    except UnicodeDecodeError:  # a JSON string holding bytes that are not UTF-8
        raise Problem("invalid-body", "the body must be JSON in UTF-8") from None
    except msgspec.ValidationError as error:
        message = str(error)
        found = _FIELD_PATH.search(message)
        field = found.group(1) if found else None
        text = message[: found.start()] if found else message
        raise ValidationException(
            detail="the body is invalid",
            extra=[{"key": field or "data", "message": text, "source": "body"}],
        ) from None
    except msgspec.DecodeError as error:
        raise Problem("invalid-body", f"the body is not JSON: {error}") from None


class StrictJsonRequest(Request[Any, Any, Any]):
    """A request whose JSON body is decoded strictly into its handler's `data` type."""

    async def json(self) -> Any:
        field = self.route_handler.parsed_data_field
        if field is None:
            return await super().json()
        if self._json is Empty:
            self._json = decode_body(await self.body(), field.annotation)
        return self._json
