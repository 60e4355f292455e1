"""Lightspeed Retail (X-Series, formerly Vend) inventory.update webhooks as stock events (pure):
one COUNT of the inventory record's `count`, at its outlet, at the time the receiver took it.

What Lightspeed documents, and what is taken from it:

    https://x-series-api.lightspeedhq.com/docs/webhooks
        A POST in UTF-8, application/x-www-form-urlencoded; its form field `payload` holds the
        changed object as JSON, shaped as in API 1.0; other form fields "may be present but are
        not guaranteed". Answered 2xx within 5 s, or retried up to 20 times over 48 h. Signed,
        for OAuth apps, as `X-Signature: signature=...,algorithm=HMAC-SHA256`: "hashing the
        webhook request body" keyed by the app's client_secret.
    https://x-series-api.lightspeedhq.com/docs/webhooks_example_payloads
        inventory.update: one inventory record, a product at an outlet: `id`, `outlet_id`,
        `product_id`, `count` (on hand there), `version`, and no time of any kind.

Which webhook a delivery is comes from the form field `type` (`inventory.update`): the page
names no such field, but integrations read the subscription's type there, and a delivery
without it is refused naming `type` (dead-lettered, kept for a replay).

The signature: the raw body as sent (the literal "request body"), HMAC-SHA256 keyed by the
client secret. The page does not say how the digest is written, and its sample value is
neither hex nor base64, so either is taken: both are the same 32 bytes, so taking both lets
in nothing that does not know the secret. The algorithm must be HMAC-SHA256 (the page says to
use the one named, and names only that one).

Event ids: lightspeed:<record id>:<version>. A retry sends the same body, so the same id, and
the engine applies it once (I5); `version` grows with every change of the record, so two
updates of one record are two events.

The time: the payload has none, so source_time is when the receiver took the delivery (kept
with a dead letter, so a replay gives the same). `version` orders a record's updates, but it
is a counter, not a time: the engine orders a COUNT by its time against its own commits and
against other sources' counts, and a counter in a time's place would be older than all of
them. So two updates of one record order by arrival, to the millisecond, however close
together they were made; one that arrives after a newer one (a retry of an older version)
wins until the record's next update. Lightspeed itself says to poll to stay in sync: a full
count (adapters/counts.py) mends it.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from adapters.webhooks.payloads import count, hmac_sha256, load_object, text, whole
from engine.domain.errors import InvalidArgument
from engine.domain.model import StockEvent

LIGHTSPEED = "lightspeed"
SIGNATURE = "X-Signature"
ALGORITHM = "HMAC-SHA256"
TYPE = "inventory.update"
MAX_FIELDS = 32  # a delivery has about five; more is no delivery of Lightspeed's


def signature_ok(secret: str, body: bytes, given: str) -> bool:
    """X-Signature is `signature=<HMAC-SHA256(client secret, raw body)>,algorithm=HMAC-SHA256`,
    the digest in hex or base64; compared in constant time."""
    members = _members(given)
    signature = members.get("signature", "").encode(errors="replace")
    if members.get("algorithm") != ALGORITHM or not signature:
        return False
    digest = hmac_sha256(secret, body)
    as_hex = hmac.compare_digest(digest.hex().encode(), signature.lower())
    return as_hex or hmac.compare_digest(base64.b64encode(digest), signature)


def events(body: bytes, received_ms: int) -> list[StockEvent]:
    """The COUNT an inventory.update delivery carries; [] for any other type."""
    form = _form(body)
    if text(form, "type", "") != TYPE:
        return []
    record = load_object(text(form, "payload", ""), "payload")
    record_id = text(record, "id", "payload.")
    outlet = text(record, "outlet_id", "payload.")
    product = text(record, "product_id", "payload.")
    event_id = f"{LIGHTSPEED}:{record_id}:{_version(record)}"
    named = {
        "event_id": "payload.id",
        "location_id": "payload.outlet_id",
        "sku": "payload.product_id",
        "qty": "payload.count",
        "source_time": "received",
    }
    return [count(event_id, outlet, product, _count(record), received_ms, LIGHTSPEED, named)]


def delivery_id(body: bytes) -> str:
    """<record id>:<version>, as far as the body gives them (for the dead-letter entry and
    the log)."""
    try:
        record = load_object(_form(body).get("payload", ""), "payload")
    except InvalidArgument:
        return ""
    given = (record.get("id"), record.get("version"))
    return ":".join(str(part) for part in given if isinstance(part, str | int))


def webhook_type(body: bytes) -> str:
    """The form's `type`, as far as the body gives it."""
    try:
        return _form(body).get("type", "")
    except InvalidArgument:
        return ""


def _members(header: str) -> dict[str, str]:
    """`key=value` pairs, comma-separated (a base64 value may end in "=")."""
    members = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        members[key] = value
    return members


def _form(body: bytes) -> dict[str, str]:
    """The fields of a UTF-8 application/x-www-form-urlencoded body, each given once."""
    try:
        pairs = parse_qsl(
            body.decode(),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError as exc:  # not UTF-8, a field without "=", too many fields
        raise InvalidArgument("body", f"not a UTF-8 form ({exc})") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # which one would be the delivery's?
            raise InvalidArgument(name, "given more than once")
        form[name] = value
    return form


def _version(record: Mapping[str, Any]) -> int:
    value = record.get("version")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("payload.version", f"must be a whole number >= 0, got {value!r}")
    return value


def _count(record: Mapping[str, Any]) -> int:
    """An integer in the documented example; API 1.0 writes other quantities as decimals
    ("8.00000"), and a whole one is taken as that many units."""
    value = record.get("count")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float | str):
        return whole(str(value), "payload.count")
    raise InvalidArgument("payload.count", f"must be a whole number of units, got {value!r}")
