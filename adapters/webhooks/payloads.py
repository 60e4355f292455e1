"""What the platforms' webhook payloads have in common (pure): a signature over the raw body,
a JSON object, ISO 8601 times, ids, whole units, and the COUNT a stock level becomes.
InvalidArgument names the field and why."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from adapters.config import epoch_ms
from engine.domain.errors import InvalidArgument
from engine.domain.events import check_event
from engine.domain.model import EventKind, StockEvent, check_id


def hmac_sha256(key: str, signed: bytes) -> bytes:
    return hmac.new(key.encode(), signed, hashlib.sha256).digest()


def signature_matches(key: str, signed: bytes, given: str) -> bool:
    """base64(HMAC-SHA256(key, signed)) == given, compared in constant time."""
    expected = base64.b64encode(hmac_sha256(key, signed))
    return bool(given) and hmac.compare_digest(expected, given.encode(errors="replace"))


def load_object(body: bytes | str, field: str = "body") -> dict[str, Any]:
    """A JSON object; `field` names where it came from."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(field, f"not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidArgument(field, f"must be a JSON object, got {type(payload).__name__}")
    return payload


def iso_ms(value: object, field: str) -> int:
    """An ISO 8601 / RFC 3339 time with a UTC offset, as ms since the epoch."""
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidArgument(field, f"must be an ISO 8601 time with a UTC offset, got {value!r}")
    return epoch_ms(when)


def int_id(payload: Mapping[str, Any], field: str) -> str:
    """An id given as a JSON integer or string."""
    value = payload.get(field)
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise InvalidArgument(field, f"must be an id, got {value!r}")
    return check_id(str(value), field)


def text(payload: Mapping[str, Any], field: str, where: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}{field}", f"must be a non-empty string, got {value!r}")
    return value


def whole(decimal: str, field: str) -> int:
    """A quantity given as a decimal ("10", "12.00000"): stock is counted in whole units."""
    try:
        value = Decimal(decimal)
    except InvalidOperation:
        value = Decimal("NaN")
    # an exponent past 18 digits is refused before anything expands it: "1e99999999" is
    # whole, and as an int it would take minutes of a core (any count that large is refused
    # further on in any case, over MAX_QTY)
    if not value.is_finite() or value.adjusted() > 18 or value != value.to_integral_value():
        raise InvalidArgument(field, f"must be a whole number of units, got {decimal[:40]!r}")
    return int(value)


def count(
    event_id: str,
    location: str,
    sku: str,
    qty: int,
    at: int,
    source: str,
    named: Mapping[str, str],
) -> StockEvent:
    """named: the payload's (or header's) name of each of the event's fields (event_id,
    location_id, sku, qty, source_time), so that what the engine would refuse is refused
    naming what the platform sent."""
    # The platforms let a count go below zero (sold more than was recorded); no units are
    # left on the shelf then, and a COUNT is absolute physical stock, which is never negative.
    on_hand = max(qty, 0)
    event = StockEvent(event_id, location, sku, EventKind.COUNT, on_hand, at, source=source)
    try:
        return check_event(event, "event")
    except InvalidArgument as exc:
        field = named.get(exc.field.removeprefix("event."), exc.field)
        raise InvalidArgument(field, exc.reason) from None
