"""Reading the one-shot commands' input files (counts.py, mappings.py): lines numbered, blank
ones skipped, .gz unzipped; CSV rows and headers; batches. A line that cannot be used is a
BadLine, named by its number."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class BadLine(Exception):
    """A line of an input file that cannot be used; the message is "<line>: <field>: <why>"."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"{lineno}: {reason}")


def gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


@contextmanager
def opened(path: Path) -> Iterator[tuple[io.BufferedIOBase, io.BufferedIOBase]]:
    """The file's bytes, unzipped if its name ends in .gz; and the file as stored, whose
    position tells how much of it has been read."""
    with path.open("rb") as stored:
        if gzipped(path):
            with gzip.GzipFile(fileobj=stored) as unzipped:
                yield unzipped, stored
        else:
            yield stored, stored


def numbered(data: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """The lines that are not blank, each with its line number."""
    for lineno, raw in enumerate(data, 1):
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise BadLine(lineno, f"line: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if lineno == 1:
            text = text.removeprefix("\ufeff")  # the byte order mark spreadsheets write
        if text.strip():
            yield lineno, text


def csv_row(lineno: int, text: str) -> list[str]:
    try:
        return next(csv.reader([text]))
    except csv.Error as exc:
        raise BadLine(lineno, f"line: not CSV ({exc})") from None


def columns(lineno: int, header: list[str], names: Sequence[str]) -> dict[str, int]:
    """Where each of `names` is in a CSV header."""
    found = [name.strip().lower() for name in header]
    for name in names:
        if name not in found:
            raise BadLine(lineno, f"{name}: not a column of the header ({', '.join(found)})")
    return {name: found.index(name) for name in names}


def cell(lineno: int, row: list[str], at: dict[str, int], name: str) -> str:
    if at[name] >= len(row):
        raise BadLine(lineno, f"{name}: missing (the line ends before column {at[name] + 1})")
    return row[at[name]].strip()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
