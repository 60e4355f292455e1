"""The webhook payload parsers (adapters/webhooks/shopify.py, square.py and lightspeed.py) as
the pure functions they are: the platforms' documented payloads, the same ones the HTTP tests send
(webhook_helpers.py), become the stock events they mean; a payload of another shape is
refused with InvalidArgument naming the field at fault. Through HTTP and Redis, with the
signatures: test_webhooks.py."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from adapters.webhooks import lightspeed, shopify, square
from engine.domain.errors import InvalidArgument
from engine.domain.model import EventKind, StockEvent

from .webhook_helpers import (
    LIGHTSPEED_INVENTORY,
    LIGHTSPEED_OUTLET,
    LIGHTSPEED_PRODUCT,
    LIGHTSPEED_RECORD,
    LIGHTSPEED_SECRET,
    SHOPIFY_CONNECT,
    SHOPIFY_DISCONNECT,
    SHOPIFY_LEVEL,
    SHOPIFY_LEVEL_AT,
    SQUARE_COUNT_AT,
    SQUARE_COUNT_UPDATED,
    as_body,
    lightspeed_body,
    lightspeed_signature,
    shopify_headers,
    square_count,
    square_payload,
    utc_ms,
)

RECEIVED = 1_767_225_600_123  # when the receiver took the delivery (ms)
ITEM, LOCATION = "271878346596884015", "24826418"  # the Shopify reference's sample ids
SQUARE_EVENT = "df5f3813-a913-45a1-94e9-fdc3f7d5e3b6"


def shopify_count(action: str, qty: int, at: int, delivery: str = "evt-7f3a") -> StockEvent:
    event_id = f"shopify:{delivery}:{action}:{LOCATION}:{ITEM}"
    return StockEvent(event_id, LOCATION, ITEM, EventKind.COUNT, qty, at, source="shopify")


def from_shopify(
    payload: object, topic: str = "inventory_levels/update", **headers: str
) -> list[StockEvent]:
    """What the parser makes of a delivery; `headers` added or replaced, "" removes one."""
    given = shopify_headers(topic, b"")
    given.update(headers)
    return shopify.events(
        {k: v for k, v in given.items() if v},
        payload if isinstance(payload, bytes) else as_body(payload),
        RECEIVED,
    )


# -- Shopify: documented payloads ------------------------------------------------------------


def test_shopify_level_update_is_a_count_of_its_available_at_its_update_time() -> None:
    assert from_shopify(SHOPIFY_LEVEL) == [shopify_count("update", 10, SHOPIFY_LEVEL_AT)]


def test_shopify_connect_is_a_count_of_its_available() -> None:
    got = from_shopify(SHOPIFY_CONNECT, "inventory_levels/connect")
    assert got == [shopify_count("connect", 10, SHOPIFY_LEVEL_AT)]


def test_shopify_disconnect_counts_zero_at_the_trigger_time_else_at_receipt() -> None:
    triggered = "2023-03-29T18:00:27.877041743Z"
    topic = "inventory_levels/disconnect"
    at_trigger = from_shopify(SHOPIFY_DISCONNECT, topic, **{shopify.TRIGGERED_AT: triggered})
    assert at_trigger == [shopify_count("disconnect", 0, utc_ms(2023, 3, 29, 18, 0, 27, 877))]
    assert from_shopify(SHOPIFY_DISCONNECT, topic) == [shopify_count("disconnect", 0, RECEIVED)]


def test_shopify_untracked_level_with_null_available_is_no_count() -> None:
    """Not tracked: Shopify does not know the stock, so nothing is counted (not 0, which
    showed the item out of stock everywhere); the delivery is answered 200, ignored."""
    assert from_shopify({**SHOPIFY_LEVEL, "available": None}) == []
    connect = "inventory_levels/connect"
    assert from_shopify({**SHOPIFY_LEVEL, "available": None}, connect) == []


def test_shopify_level_below_zero_is_an_empty_shelf() -> None:
    got = from_shopify({**SHOPIFY_LEVEL, "available": -2})
    assert got == [shopify_count("update", 0, SHOPIFY_LEVEL_AT)]


def test_shopify_ids_given_as_strings_are_the_same_ids() -> None:
    payload = {**SHOPIFY_LEVEL, "location_id": LOCATION, "inventory_item_id": ITEM}
    assert from_shopify(payload) == from_shopify(SHOPIFY_LEVEL)


def test_shopify_event_id_is_the_delivery_else_the_webhook_id_qualified_by_level() -> None:
    (by_event,) = from_shopify(SHOPIFY_LEVEL, **{shopify.EVENT_ID: "evt-1"})
    (by_webhook,) = from_shopify(
        SHOPIFY_LEVEL, **{shopify.EVENT_ID: "", shopify.WEBHOOK_ID: "wh-2"}
    )
    (other_item,) = from_shopify({**SHOPIFY_LEVEL, "inventory_item_id": 39072856})
    assert by_event.event_id == f"shopify:evt-1:update:{LOCATION}:{ITEM}"
    assert by_webhook.event_id == f"shopify:wh-2:update:{LOCATION}:{ITEM}"
    assert other_item.event_id == f"shopify:evt-7f3a:update:{LOCATION}:39072856"


@pytest.mark.parametrize(
    ("triggered", "at"),
    [
        ("2022-01-01T00:00:00.000Z", SHOPIFY_LEVEL_AT),
        ("2022-01-01T00:00:00.250Z", SHOPIFY_LEVEL_AT + 200),  # 250 * 1000 // 1250
        ("2022-01-01T00:00:01.000Z", SHOPIFY_LEVEL_AT + 500),
        ("2022-01-01T00:10:00.000Z", SHOPIFY_LEVEL_AT + 998),  # however late: under 1 s
        ("2021-12-31T23:59:59.999Z", SHOPIFY_LEVEL_AT),  # earlier than the update
    ],
)
def test_shopify_trigger_time_gives_the_updates_second_a_fraction(triggered: str, at: int) -> None:
    (got,) = from_shopify(SHOPIFY_LEVEL, **{shopify.TRIGGERED_AT: triggered})
    assert got.source_time == at


def test_shopify_a_later_update_in_the_same_second_is_later_however_late_it_fired() -> None:
    """Both updates carry updated_at S (whole seconds); their webhooks fire at S+0.860 and
    S+1.020. The second is the newer figure and must order after the first."""
    first, second = ("2022-01-01T00:00:00.860Z", 10), ("2022-01-01T00:00:01.020Z", 9)
    got = [
        from_shopify({**SHOPIFY_LEVEL, "available": qty}, **{shopify.TRIGGERED_AT: t})[0]
        for t, qty in (first, second)
    ]
    assert SHOPIFY_LEVEL_AT < got[0].source_time < got[1].source_time < SHOPIFY_LEVEL_AT + 1000
    # and an update of the next second still orders after both
    (next_second,) = from_shopify(
        {**SHOPIFY_LEVEL, "updated_at": "2021-12-31T19:00:01-05:00"},
        **{shopify.TRIGGERED_AT: "2022-01-01T00:00:01.000Z"},
    )
    assert next_second.source_time >= got[1].source_time


def test_shopify_other_topics_are_no_stock_events() -> None:
    product = {"id": 788032119674292922, "title": "Example T-Shirt"}
    assert from_shopify(product, "products/update") == []
    assert from_shopify(b"not even JSON", "orders/create") == []


# -- Shopify: other shapes, refused naming the field -----------------------------------------


def without(payload: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != field}


@pytest.mark.parametrize(
    ("payload", "headers", "field"),
    [
        (b"{not json", {}, "body"),
        ([SHOPIFY_LEVEL], {}, "body"),
        (without(SHOPIFY_LEVEL, "location_id"), {}, "location_id"),
        ({**SHOPIFY_LEVEL, "location_id": "store 1"}, {}, "location_id"),
        ({**SHOPIFY_LEVEL, "location_id": True}, {}, "location_id"),
        ({**SHOPIFY_LEVEL, "location_id": ""}, {}, "location_id"),
        (without(SHOPIFY_LEVEL, "inventory_item_id"), {}, "inventory_item_id"),
        ({**SHOPIFY_LEVEL, "inventory_item_id": 2.5}, {}, "inventory_item_id"),
        (without(SHOPIFY_LEVEL, "available"), {}, "available"),
        ({**SHOPIFY_LEVEL, "available": "10"}, {}, "available"),
        ({**SHOPIFY_LEVEL, "available": 1.5}, {}, "available"),
        ({**SHOPIFY_LEVEL, "available": True}, {}, "available"),
        (without(SHOPIFY_LEVEL, "updated_at"), {}, "updated_at"),
        ({**SHOPIFY_LEVEL, "updated_at": "2021-12-31T19:00:00"}, {}, "updated_at"),
        ({**SHOPIFY_LEVEL, "updated_at": "yesterday"}, {}, "updated_at"),
        (SHOPIFY_LEVEL, {shopify.TRIGGERED_AT: "soon"}, shopify.TRIGGERED_AT),
        (SHOPIFY_LEVEL, {shopify.EVENT_ID: "", shopify.WEBHOOK_ID: ""}, shopify.WEBHOOK_ID),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-location",
        "location-the-engine-refuses",
        "location-a-boolean",
        "location-empty",
        "no-item",
        "item-a-fraction",
        "no-available",
        "available-a-string",
        "available-a-fraction",
        "available-a-boolean",
        "no-update-time",
        "update-time-without-offset",
        "update-time-not-a-time",
        "trigger-time-not-a-time",
        "no-delivery-id",
    ],
)
def test_shopify_payload_of_another_shape_is_refused_naming_the_field(
    payload: object, headers: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        from_shopify(payload, **headers)
    assert refused.value.field == field


def test_shopify_disconnect_with_a_bad_trigger_time_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgument) as refused:
        from_shopify(
            SHOPIFY_DISCONNECT, "inventory_levels/disconnect", **{shopify.TRIGGERED_AT: "x"}
        )
    assert refused.value.field == shopify.TRIGGERED_AT


# -- Square: documented payloads -------------------------------------------------------------


def square_event(location: str, sku: str, qty: int, at: int = SQUARE_COUNT_AT) -> StockEvent:
    event_id = f"square:{SQUARE_EVENT}:{location}:{sku}"
    return StockEvent(event_id, location, sku, EventKind.COUNT, qty, at, source="square")


def test_square_documented_count_is_a_count_at_its_calculated_time() -> None:
    got = square.events(SQUARE_COUNT_UPDATED)
    assert got == [square_event("YYQR03DGCTXA4", "FGQ5JJWT2PYTHF35CKZ2DSKP", 10)]


def test_square_counts_only_in_stock_states_one_event_each() -> None:
    # A state change arrives as two counts, before and after
    # (https://developer.squareup.com/docs/inventory-api/webhooks, "State adjustments").
    payload = square_payload(
        square_count(state="IN_STOCK", quantity="7"),
        square_count(state="SOLD", quantity="3", catalog_object_id="W62UWFY35CWMYGVWK6TWJDNI"),
        square_count(state="IN_STOCK", quantity="2", location_id="L2"),
    )
    assert square.events(payload) == [
        square_event("YYQR03DGCTXA4", "FGQ5JJWT2PYTHF35CKZ2DSKP", 7),
        square_event("L2", "FGQ5JJWT2PYTHF35CKZ2DSKP", 2),
    ]
    assert square.events(square_payload(square_count(state="WASTE", quantity="2"))) == []


@pytest.mark.parametrize(
    ("quantity", "units"), [("12.00000", 12), ("0", 0), ("-3", 0), ("1000000000", 10**9)]
)
def test_square_quantity_is_whole_units_and_never_below_zero(quantity: str, units: int) -> None:
    (got,) = square.events(square_payload(square_count(quantity=quantity)))
    assert got.qty == units


def test_square_calculated_time_keeps_its_fraction_and_offset() -> None:
    count = square_count(calculated_at="2019-10-29T20:38:45.5+02:00")
    (got,) = square.events(square_payload(count))
    assert got.source_time == utc_ms(2019, 10, 29, 18, 38, 45, 500)


def test_square_other_event_types_are_no_stock_events() -> None:
    customer = {**SQUARE_COUNT_UPDATED, "type": "customer.created", "data": {"object": {}}}
    assert square.events(customer) == []


def test_square_ids_of_a_body_are_what_it_gives() -> None:
    assert square.ids(as_body(SQUARE_COUNT_UPDATED)) == (SQUARE_EVENT, "inventory.count.updated")
    assert square.ids(as_body({"event_id": 7, "type": None})) == ("", "")
    assert square.ids(b"{not json") == ("", "")


# -- Square: other shapes, refused naming the field ------------------------------------------

COUNT = "data.object.inventory_counts"


def with_data(data: object) -> dict[str, Any]:
    return {**SQUARE_COUNT_UPDATED, "data": data}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (without(SQUARE_COUNT_UPDATED, "type"), "type"),
        (without(SQUARE_COUNT_UPDATED, "event_id"), "event_id"),
        (without(SQUARE_COUNT_UPDATED, "data"), COUNT),
        (with_data({"object": {}}), COUNT),
        (with_data({"object": {"inventory_counts": {"0": {}}}}), COUNT),
        (with_data({"object": {"inventory_counts": ["IN_STOCK"]}}), f"{COUNT}[0]"),
        (square_payload(square_count(quantity="12.375")), f"{COUNT}[0].quantity"),
        (square_payload(square_count(quantity="lots")), f"{COUNT}[0].quantity"),
        (square_payload(square_count(quantity="NaN")), f"{COUNT}[0].quantity"),
        (square_payload(square_count(quantity="Infinity")), f"{COUNT}[0].quantity"),
        # 10^99,999,999 is whole: turned into an int, it took the receiver minutes of a core
        (square_payload(square_count(quantity="1e99999999")), f"{COUNT}[0].quantity"),
        (square_payload({**square_count(), "quantity": 10}), f"{COUNT}[0].quantity"),
        (square_payload(without(square_count(), "location_id")), f"{COUNT}[0].location_id"),
        (square_payload(square_count(location_id="{L1}")), f"{COUNT}[0].location_id"),
        (
            square_payload(without(square_count(), "catalog_object_id")),
            f"{COUNT}[0].catalog_object_id",
        ),
        (
            square_payload(square_count(calculated_at="2019-10-29T18:38:45")),
            f"{COUNT}[0].calculated_at",
        ),
        (
            square_payload(square_count(), square_count(quantity="2.5")),
            f"{COUNT}[1].quantity",
        ),
    ],
    ids=[
        "no-type",
        "no-event-id",
        "no-data",
        "no-counts",
        "counts-not-a-list",
        "count-not-an-object",
        "quantity-a-fraction",
        "quantity-not-a-number",
        "quantity-nan",
        "quantity-infinite",
        "quantity-with-a-vast-exponent",
        "quantity-not-a-string",
        "no-location",
        "location-the-engine-refuses",
        "no-catalog-object",
        "time-without-offset",
        "second-count-a-fraction",
    ],
)
def test_square_payload_of_another_shape_is_refused_naming_the_field(
    payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        square.events(payload)
    assert refused.value.field == field


# -- What the engine would refuse is named by the payload's field, not the event's ---------


def test_shopify_count_over_the_engines_most_is_refused_naming_available() -> None:
    with pytest.raises(InvalidArgument) as refused:
        from_shopify({**SHOPIFY_LEVEL, "available": 10**9 + 1})
    assert refused.value.field == "available"


def test_shopify_delivery_id_too_long_for_an_event_id_is_refused_naming_its_header() -> None:
    with pytest.raises(InvalidArgument) as refused:
        from_shopify(SHOPIFY_LEVEL, **{shopify.EVENT_ID: "e" * 120})
    assert refused.value.field == shopify.EVENT_ID


def test_square_count_calculated_before_1970_is_refused_naming_its_time() -> None:
    old = square_count(calculated_at="1969-12-31T23:59:59Z")
    with pytest.raises(InvalidArgument) as refused:
        square.events(square_payload(old))
    assert refused.value.field == "data.object.inventory_counts[0].calculated_at"


# -- Lightspeed (X-Series): documented payloads ----------------------------------------------

DOCUMENTED_VERSION = 5105100802  # the example's `version`


def lightspeed_count(qty: int, at: int = RECEIVED, version: int = DOCUMENTED_VERSION) -> StockEvent:
    event_id = f"lightspeed:{LIGHTSPEED_RECORD}:{version}"
    return StockEvent(
        event_id, LIGHTSPEED_OUTLET, LIGHTSPEED_PRODUCT, EventKind.COUNT, qty, at, "", "lightspeed"
    )


def from_lightspeed(payload: object, received: int = RECEIVED, **fields: str) -> list[StockEvent]:
    body = payload if isinstance(payload, bytes) else lightspeed_body(payload, **fields)
    return lightspeed.events(body, received)


def test_lightspeed_documented_inventory_update_is_a_count_of_its_count_at_receipt() -> None:
    """The payload has no time: the count is as of when the receiver took it."""
    assert from_lightspeed(LIGHTSPEED_INVENTORY) == [lightspeed_count(10)]


def test_lightspeed_retry_of_a_delivery_carries_the_same_event_id() -> None:
    """A retry is the same body, later; another update of the record has a higher version."""
    (first,) = from_lightspeed(LIGHTSPEED_INVENTORY, RECEIVED)
    (retry,) = from_lightspeed(LIGHTSPEED_INVENTORY, RECEIVED + 60_000)
    (next_update,) = from_lightspeed({**LIGHTSPEED_INVENTORY, "version": DOCUMENTED_VERSION + 7})
    assert retry.event_id == first.event_id == f"lightspeed:{LIGHTSPEED_RECORD}:5105100802"
    assert next_update.event_id == f"lightspeed:{LIGHTSPEED_RECORD}:5105100809"


def test_lightspeed_two_updates_in_the_same_second_order_by_arrival() -> None:
    """Sold down to 9, then to 8, 150 ms apart: the later figure is the newer count."""
    second = RECEIVED - RECEIVED % 1000
    (nine,) = from_lightspeed({**LIGHTSPEED_INVENTORY, "count": 9}, second + 300)
    (eight,) = from_lightspeed(
        {**LIGHTSPEED_INVENTORY, "count": 8, "version": DOCUMENTED_VERSION + 1}, second + 450
    )
    assert second <= nine.source_time < eight.source_time < second + 1000
    assert (nine.qty, eight.qty) == (9, 8)


@pytest.mark.parametrize(
    ("given", "units"), [(-3, 0), (0, 0), ("8.00000", 8), (7.0, 7), (10**9, 10**9)]
)
def test_lightspeed_count_is_whole_units_and_never_below_zero(given: object, units: int) -> None:
    (got,) = from_lightspeed({**LIGHTSPEED_INVENTORY, "count": given})
    assert got.qty == units


def test_lightspeed_other_types_are_no_stock_events() -> None:
    product = {"id": LIGHTSPEED_PRODUCT, "name": "Post Shave Balm", "version": 5303657190}
    assert from_lightspeed(product, kind="product.update") == []
    assert from_lightspeed("not even JSON", kind="sale.update") == []


def test_lightspeed_form_fields_are_read_in_any_order_with_the_store_fields_optional() -> None:
    payload = json.dumps(LIGHTSPEED_INVENTORY)
    body = urlencode({"payload": payload, "type": "inventory.update"}).encode()
    assert from_lightspeed(body) == [lightspeed_count(10)]


def test_lightspeed_ids_of_a_body_are_what_it_gives() -> None:
    body = lightspeed_body(LIGHTSPEED_INVENTORY)
    assert lightspeed.delivery_id(body) == f"{LIGHTSPEED_RECORD}:5105100802"
    assert lightspeed.webhook_type(body) == "inventory.update"
    assert lightspeed.delivery_id(lightspeed_body({"version": 3})) == "3"
    assert lightspeed.delivery_id(b"\xff") == lightspeed.webhook_type(b"\xff") == ""


# -- Lightspeed: the signature ---------------------------------------------------------------

BODY = lightspeed_body(LIGHTSPEED_INVENTORY)


def header(signature: str, algorithm: str = "HMAC-SHA256") -> str:
    return f"signature={signature},algorithm={algorithm}"


@pytest.mark.parametrize(
    "given",
    [
        header(lightspeed_signature(BODY)),
        header(lightspeed_signature(BODY).upper()),
        header(lightspeed_signature(BODY, as_hex=False)),  # base64, "=" padding and all
        f"algorithm=HMAC-SHA256, signature={lightspeed_signature(BODY)}",
    ],
    ids=["hex", "hex-upper-case", "base64", "members-in-any-order"],
)
def test_lightspeed_signature_of_the_raw_body_with_the_client_secret_is_good(given: str) -> None:
    assert lightspeed.signature_ok(LIGHTSPEED_SECRET, BODY, given)


PAYLOAD_ONLY = json.dumps(LIGHTSPEED_INVENTORY).encode()


@pytest.mark.parametrize(
    "given",
    [
        header(lightspeed_signature(BODY, "not-the-secret")),
        header(lightspeed_signature(BODY + b"&x=1")),
        header(lightspeed_signature(PAYLOAD_ONLY)),  # the payload field is not the body
        header(lightspeed_signature(BODY), "HMAC-SHA1"),
        f"signature={lightspeed_signature(BODY)}",  # no algorithm named
        header(""),
        "algorithm=HMAC-SHA256",
        "",
        lightspeed_signature(BODY),  # the bare digest, not the documented header
        header("é" * 64),
    ],
    ids=[
        "wrong-secret",
        "other-body",
        "payload-only",
        "other-algorithm",
        "no-algorithm",
        "empty-signature",
        "no-signature",
        "no-header",
        "bare-digest",
        "not-ascii",
    ],
)
def test_lightspeed_signature_otherwise_is_bad(given: str) -> None:
    assert not lightspeed.signature_ok(LIGHTSPEED_SECRET, BODY, given)


# -- Lightspeed: other shapes, refused naming the field --------------------------------------


def inventory(**changes: object) -> dict[str, Any]:
    return {**LIGHTSPEED_INVENTORY, **changes}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("caf\u00e9=1".encode("latin-1"), "body"),
        (b"type=inventory.update&payload", "body"),
        (lightspeed_body(LIGHTSPEED_INVENTORY) + b"&type=product.update", "type"),
        (lightspeed_body(LIGHTSPEED_INVENTORY, kind=""), "type"),
        (urlencode({"payload": json.dumps(LIGHTSPEED_INVENTORY)}).encode(), "type"),
        (urlencode({"type": "inventory.update"}).encode(), "payload"),
        (lightspeed_body("{not json"), "payload"),
        (lightspeed_body([LIGHTSPEED_INVENTORY]), "payload"),
        (lightspeed_body(without(LIGHTSPEED_INVENTORY, "id")), "payload.id"),
        (lightspeed_body(inventory(id=180)), "payload.id"),
        (lightspeed_body(inventory(id="x" * 120)), "payload.id"),
        (lightspeed_body(without(LIGHTSPEED_INVENTORY, "outlet_id")), "payload.outlet_id"),
        (lightspeed_body(inventory(outlet_id="Shop 1")), "payload.outlet_id"),
        (lightspeed_body(without(LIGHTSPEED_INVENTORY, "product_id")), "payload.product_id"),
        (lightspeed_body(inventory(product_id="{p}")), "payload.product_id"),
        (lightspeed_body(without(LIGHTSPEED_INVENTORY, "count")), "payload.count"),
        (lightspeed_body(inventory(count=None)), "payload.count"),
        (lightspeed_body(inventory(count=2.5)), "payload.count"),
        (lightspeed_body(inventory(count="12.375")), "payload.count"),
        (lightspeed_body(inventory(count="lots")), "payload.count"),
        (lightspeed_body(inventory(count=True)), "payload.count"),
        (lightspeed_body(inventory(count=10**9 + 1)), "payload.count"),
        (lightspeed_body(without(LIGHTSPEED_INVENTORY, "version")), "payload.version"),
        (lightspeed_body(inventory(version="5105100802")), "payload.version"),
        (lightspeed_body(inventory(version=-1)), "payload.version"),
        (lightspeed_body(inventory(version=True)), "payload.version"),
    ],
    ids=[
        "not-utf8",
        "field-without-value",
        "type-twice",
        "type-empty",
        "no-type",
        "no-payload",
        "payload-not-json",
        "payload-not-an-object",
        "no-record-id",
        "record-id-a-number",
        "record-id-too-long-for-an-event-id",
        "no-outlet",
        "outlet-the-engine-refuses",
        "no-product",
        "product-the-engine-refuses",
        "no-count",
        "count-null",
        "count-a-fraction",
        "count-a-fractional-decimal",
        "count-not-a-number",
        "count-a-boolean",
        "count-over-the-engines-most",
        "no-version",
        "version-a-string",
        "version-below-zero",
        "version-a-boolean",
    ],
)
def test_lightspeed_payload_of_another_shape_is_refused_naming_the_field(
    body: bytes, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        lightspeed.events(body, RECEIVED)
    assert refused.value.field == field
