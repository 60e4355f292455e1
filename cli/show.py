"""How the command line shows what the server answers: a protobuf message as JSON with the
proto's field names, aligned tables and `name  value` lists for people, and times as UTC ISO
8601 with how long ago (or how soon) they are."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# -- JSON -----------------------------------------------------------------------------------


def as_json(message: Message) -> dict[str, Any]:
    """Every field of `message` by its proto name, set or not: 64-bit integers as numbers
    (times stay ms since the epoch, as in the proto), enums by name, bytes as UTF-8 text
    (bytes that are not UTF-8 as \\xNN), an optional field not set as null."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value, of_map = getattr(message, field.name), _map_value(field)
        if of_map is not None:
            out[field.name] = {k: _value(of_map, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def _map_value(field: Any) -> Any:
    """The descriptor of a map field's values; None if `field` is no map. (Descriptors are
    typed Any here: their stubs give each of two unlike classes.)"""
    entry = field.message_type
    return entry.fields_by_name["value"] if entry and entry.GetOptions().map_entry else None


def _value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return as_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value).decode("utf-8", "backslashreplace")
    return value


def dumps(document: Any) -> str:
    """One JSON document, indented for reading."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def dumps_line(document: Any) -> str:
    """One JSON document on one line (JSON Lines, for what is followed as it comes)."""
    return orjson.dumps(document).decode()


# -- for people -------------------------------------------------------------------------------


def say(text: str) -> None:
    """A line on stdout, at once (a followed list is read as it comes)."""
    print(text, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned under their headers; a column of integers aligned to the right."""
    data = [list(row) for row in rows]
    numeric = [
        bool(data) and all(isinstance(r[i], int) and not isinstance(r[i], bool) for r in data)
        for i in range(len(headers))
    ]
    cells = [list(headers), *([str(c) for c in row] for row in data)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """`name  value` lines, the values aligned."""
    listed = [(name, str(value)) for name, value in pairs]
    width = max((len(name) for name, _ in listed), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in listed)


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    """ms since the epoch as UTC ISO 8601 to the millisecond; "-" for 0 (never)."""
    if ms <= 0:
        return "-"
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span(ms: int) -> str:
    """A length of time in its largest sensible unit: 45s, 12m, 5h, 3d."""
    seconds = abs(ms) / 1000
    for unit, size, below in (("s", 1, 120), ("m", 60, 120), ("h", 3600, 48)):
        if seconds < size * below:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def ago(ms: int, now: int) -> str:
    """ "12s ago" (or, for a time still to come, "in 12s")."""
    return f"{span(now - ms)} ago" if ms <= now else f"in {span(ms - now)}"


def when(ms: int, now: int) -> str:
    """ "2026-11-30T13:34:45.123Z (12s ago)"; "-" for 0."""
    return "-" if ms <= 0 else f"{iso(ms)} ({ago(ms, now)})"


def offset(ms: int) -> str:
    """A signed span in seconds: +900.0s."""
    return f"{ms / 1000:+.1f}s"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def enum_name(enum: Any, number: int, prefix: str) -> str:
    """An enum value by its short name: LOCATION_TYPE_STORE -> STORE."""
    return str(enum.Name(number)).removeprefix(prefix)
