"""The one-shot file adapters, adapters.counts and adapters.mappings, run in-process (and once
as a real command) against a real server over a real Redis-compatible store."""

from __future__ import annotations

import asyncio
import gzip
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
import orjson
import pytest

from adapters import counts, mappings
from engine.app import Omnistock
from engine.pb.omnistock.v1 import omnistock_pb2 as pb

from .grpc_helpers import T0, Stubs, level, line, location, seed

AT = T0 + 10  # when the files' shelves were counted


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def target(server: Omnistock) -> str:
    return f"127.0.0.1:{server.port}"


async def on_hand(stubs: Stubs, loc: str, skus: list[str]) -> dict[str, int]:
    got = await stubs.availability.GetAvailability(
        pb.GetAvailabilityRequest(skus=skus, location_ids=[loc])
    )
    return {lv.sku: lv.on_hand for lv in got.levels}


# -- writing count files (sync: no blocking file I/O inside the tests' event loop) --------


def csv_text(lines: dict[str, object]) -> str:
    """Columns in another order than sku,qty, and one more the adapter ignores."""
    rows = [f"{qty},Item {sku},{sku}" for sku, qty in lines.items()]
    return "\n".join(["qty,name,sku", *rows]) + "\n"


def ndjson_text(lines: dict[str, object]) -> str:
    return "".join(
        orjson.dumps({"sku": sku, "qty": qty}).decode() + "\n" for sku, qty in lines.items()
    )


def write_count(path: Path, lines: dict[str, object]) -> Path:
    text = csv_text(lines) if ".csv" in path.suffixes else ndjson_text(lines)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def run_counts(path: Path, target: str, *more: str, at: int | str = AT) -> int:
    """adapters.counts of a count of s1 at `at` (unless `more` says otherwise)."""
    argv = [str(path), "--location", "s1", "--counted-at", str(at), "--server", target, *more]
    return await counts.run(counts.parse_args(argv))


async def run_mappings(*argv: str) -> int:
    return await mappings.run(mappings.parse_args(list(argv)))


# -- counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["count.csv", "count.ndjson", "count.jsonl", "count.csv.gz", "count.ndjson.gz"]
)
async def test_a_count_file_sets_on_hand_and_zeroes_the_rows_it_does_not_list(
    name: str, stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a store with three rows
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10, ("s1", "gone"): 4})
    path = write_count(tmp_path / name, {"a": 5, "b": 0, "new": 3})
    # when its count (without "gone") is sent with missing=zero
    code = await run_counts(path, target, "--missing", "zero")
    # then every listed row has its counted on_hand as of AT, and the unlisted one is zeroed
    assert code == 0
    out = capsys.readouterr().out
    assert f"count s1@{AT} of s1: lines 3, changed 3, unchanged 0, zeroed 1" in out
    assert await on_hand(stubs, "s1", ["a", "b", "new", "gone"]) == {
        "a": 5,
        "b": 0,
        "new": 3,
        "gone": 0,
    }
    assert (await level(stubs, "s1", "a")).as_of == AT


async def test_missing_keep_leaves_the_rows_a_count_does_not_list(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(stubs, {("s1", "a"): 10, ("s1", "kept"): 4})
    path = write_count(tmp_path / "count.ndjson", {"a": 2})
    code = await run_counts(path, target, "--missing", "keep")
    assert code == 0
    assert "lines 1, changed 1, unchanged 0, zeroed 0" in capsys.readouterr().out
    assert await on_hand(stubs, "s1", ["a", "kept"]) == {"a": 2, "kept": 4}


async def test_running_the_same_command_again_changes_nothing(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a count applied once, and a sale after its time
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10})
    path = write_count(tmp_path / "count.csv", {"a": 5, "b": 8})
    assert await run_counts(path, target) == 0
    await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(
            events=[
                pb.StockEvent(
                    event_id="sale-1",
                    location_id="s1",
                    sku="a",
                    kind=pb.EVENT_KIND_DELTA,
                    qty=-1,
                    source_time=AT + 5,
                )
            ]
        )
    )
    capsys.readouterr()
    # when the very same command runs again
    assert await run_counts(path, target) == 0
    # then the server recognises the count: every line unchanged, the sale still counts
    assert "lines 2, changed 0, unchanged 2, zeroed 0, stale 0" in capsys.readouterr().out
    assert await on_hand(stubs, "s1", ["a", "b"]) == {"a": 4, "b": 8}


@pytest.mark.parametrize("when", ["same time", "older than the window"])
async def test_a_count_not_applied_because_it_is_stale_exits_3_with_the_reason(
    when: str, stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a count applied at AT
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 10})
    assert await run_counts(write_count(tmp_path / "count.csv", {"a": 5, "b": 8}), target) == 0
    capsys.readouterr()
    # when a correction with lower figures is sent for the same time (its own count id),
    # or a count older than the event window (72 h before the server's clock)
    fix = write_count(tmp_path / "fix.csv", {"a": 3, "b": 2})
    at = AT if when == "same time" else AT - 73 * 3600 * 1000
    code = await run_counts(fix, target, "--count-id", f"fix-{when.replace(' ', '-')}", at=at)
    # then nothing of it is applied, and the command says so and fails, for a cron job
    assert code == 3
    out = capsys.readouterr()
    assert "lines 2, changed 0, unchanged 0, zeroed 0, stale 2" in out.out
    assert "2 of 2 lines were not applied" in out.err
    assert await on_hand(stubs, "s1", ["a", "b"]) == {"a": 5, "b": 8}


async def test_a_count_below_what_is_held_names_the_uncovered_reservations(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given 7 of 10 units held
    await seed(stubs, {("s1", "a"): 10})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="web-1", lines=[line("s1", "a", 7)])
    )
    # when the shelves hold only 4
    path = write_count(tmp_path / "count.csv", {"a": 4})
    now = datetime.now(UTC).isoformat()
    code = await run_counts(path, target, at=now)
    # then the count is applied (not an error) and the hold left 3 units short is named
    assert code == 0
    out = capsys.readouterr().out
    assert "short s1 a: on_hand 4 < reserved 7; uncovered: web-1 (qty 7, missing 3)" in out
    row = await level(stubs, "s1", "a")
    assert (row.on_hand, row.reserved) == (4, 7)


GOOD = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}


@pytest.mark.parametrize(
    ("name", "bad", "reason"),
    [
        ("count.csv", "three,Item e,e", "qty: must be an integer, got 'three'"),
        ("count.csv", "-2,Item e,e", "qty: must be at least 0, got -2"),
        ("count.csv", "5", "sku: missing (the line ends before column 3)"),
        ("count.csv", "5,Item e,", "sku: must not be empty"),
        ("count.ndjson", '{"sku": "e", "qty": 5', "json: not valid JSON"),
        ("count.ndjson", '{"sku": "e"}', "qty: missing"),
        ("count.ndjson", '{"sku": "e", "qty": 5.5}', "qty: must be an integer, got 5.5"),
    ],
)
async def test_a_bad_line_stops_the_count_and_the_server_applies_none_of_it(
    name: str,
    bad: str,
    reason: str,
    server: Omnistock,
    stubs: Stubs,
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a file whose line for "e" is bad, after four good lines sent two a message
    await seed(stubs, dict.fromkeys((("s1", sku) for sku in GOOD), 10))
    path = write_count(tmp_path / name, GOOD)
    lines = path.read_text().splitlines()
    bad_at = lines.index(next(ln for ln in lines if re.search(r"\be\b", ln)))
    lines[bad_at] = bad
    write_text(path, "\n".join(lines) + "\n")
    # when it is sent
    code = await run_counts(path, target, "--batch", "2")
    # then it stops at that line, naming it and the field; the call is cancelled before
    # its `end`, so no row changes
    assert code == 2
    assert f"{path}:{bad_at + 1}: {reason}" in capsys.readouterr().err
    assert await on_hand(stubs, "s1", list(GOOD)) == dict.fromkeys(GOOD, 10)
    # and the server kept none of its lines: the corrected file, sent as the same count,
    # changes every row (a line of the first attempt applied would come back unchanged)
    write_count(path, GOOD)
    assert await run_counts(path, target, "--batch", "2") == 0
    assert "lines 6, changed 6, unchanged 0" in capsys.readouterr().out
    assert await on_hand(stubs, "s1", list(GOOD)) == GOOD


async def test_a_count_the_server_refuses_exits_1_with_its_status(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a count that lists "a" twice, early, then many more lines one a message
    await seed(stubs, {("s1", "a"): 10})
    rows = "".join(f"{i},x,sku-{i}\n" for i in range(200))
    path = write_text(tmp_path / "count.csv", "qty,name,sku\n1,x,a\n2,x,a\n" + rows)
    # when it is sent
    code = await run_counts(path, target, "--batch", "1")
    # then the server's refusal is printed, with its reason, and nothing changed
    assert code == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "'a' is counted twice" in err
    assert (await level(stubs, "s1", "a")).on_hand == 10


async def test_an_unknown_location_is_the_servers_invalid_argument(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    path = write_count(tmp_path / "count.csv", {"a": 1})
    code = await run_counts(path, target, "--location", "nowhere")
    assert code == 1
    assert "INVALID_ARGUMENT: header.location_id" in capsys.readouterr().err


async def test_a_name_without_a_known_format_is_refused_before_anything_is_sent(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_text(tmp_path / "count.txt", "sku,qty\na,1\n")
    code = await run_counts(path, target)
    assert code == 2
    assert "give --format csv or ndjson" in capsys.readouterr().err


def write_large(path: Path, n: int) -> Path:
    with path.open("w") as f:
        f.write("sku,qty\n")
        f.writelines(f"SKU-{i:06d},{i % 50}\n" for i in range(n))
    return path


async def test_a_large_count_is_streamed_with_progress_on_stderr(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a 100,000-line count of an empty store
    await stubs.stock.UpsertLocations(pb.UpsertLocationsRequest(locations=[location("big")]))
    path = write_large(tmp_path / "big.csv", 100_000)
    # when it is sent
    code = await run_counts(path, target, "--location", "big")
    # then every line is applied, and progress went to stderr as it was sent: the first
    # line after the first message, when little of the file had been read
    assert code == 0
    out, err = capsys.readouterr()
    assert "lines 100000, changed 100000, unchanged 0, zeroed 0" in out
    progress = [ln for ln in err.splitlines() if ln.startswith(f"{path}: ")]
    assert re.match(rf"{re.escape(str(path))}: 1,000 lines sent, ([0-9]|10)% read", progress[0])
    assert re.match(rf"{re.escape(str(path))}: 100,000 lines sent, 100% read", progress[-1])
    skus = ["SKU-000000", "SKU-000049", "SKU-050001", "SKU-099999"]
    assert await on_hand(stubs, "big", skus) == {sku: int(sku[4:]) % 50 for sku in skus}


async def test_the_command_runs_as_a_process(
    stubs: Stubs, target: str, tmp_path: Path, project_root: Path
) -> None:
    # given a gzipped CSV count, its time in ISO 8601 with Z
    await seed(stubs, {("s1", "a"): 10})
    path = write_count(tmp_path / "count.csv.gz", {"a": 6, "b": 2})
    when = datetime.fromtimestamp(AT / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # when `python -m adapters.counts` runs (not blocking the loop the server shares)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.counts",
        str(path),
        "--location",
        "s1",
        "--counted-at",
        when,
        "--server",
        target,
        cwd=project_root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    # then it succeeds, prints its summary, and the rows are counted as of that time
    assert proc.returncode == 0, err.decode()
    assert f"count s1@{AT} of s1: lines 2, changed 2" in out.decode()
    assert await on_hand(stubs, "s1", ["a", "b"]) == {"a": 6, "b": 2}
    assert (await level(stubs, "s1", "a")).as_of == AT


async def test_ctrl_c_midway_applies_nothing_of_the_count(
    server: Omnistock, stubs: Stubs, target: str, tmp_path: Path, project_root: Path
) -> None:
    # given a long count being sent by the command, one line a message
    await seed(stubs, {("s1", "SKU-000000"): 10})
    path = write_large(tmp_path / "big.csv", 100_000)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "adapters.counts", str(path), "--location", "s1"],
        *["--counted-at", str(AT), "--batch", "1", "--server", target],
        cwd=project_root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    # when Ctrl-C comes once its first line is sent
    assert b"1 lines sent" in await proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    # then it stops before the count's `end`, and no row changed
    assert proc.returncode == 130, err.decode()
    assert b"interrupted; nothing of the count was applied unless its end" in err
    assert await on_hand(stubs, "s1", ["SKU-000000", "SKU-000001"]) == {
        "SKU-000000": 10,
        "SKU-000001": 0,
    }


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1714564800000", 1714564800000),
        ("2024-05-01T12:00:00Z", 1714564800000),
        ("2024-05-01T14:00:00.250+02:00", 1714564800250),
    ],
)
def test_counted_at_takes_iso_8601_with_an_offset_or_ms(text: str, ms: int) -> None:
    assert counts.counted_at(text) == ms


@pytest.mark.parametrize("text", ["2024-05-01T12:00:00", "yesterday", "0"])
def test_counted_at_refuses_a_time_without_an_offset_or_a_number(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        counts.parse_args(["f.csv", "--location", "s1", "--counted-at", text])
    assert exit_.value.code == 2
    assert "--counted-at" in capsys.readouterr().err


# -- mappings -----------------------------------------------------------------------------


def pos_sale(event_id: str, location_id: str, sku: str, qty: int) -> pb.StockEvent:
    return pb.StockEvent(
        event_id=event_id,
        location_id=location_id,
        sku=sku,
        kind=pb.EVENT_KIND_COUNT,
        qty=qty,
        source_time=AT,
        source="pos",
    )


async def test_a_mappings_file_maps_a_sources_ids_onto_our_rows(
    stubs: Stubs, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a store, and a file mapping the till's ids onto it and onto 2,001 items
    await seed(stubs, {("store-1", "SKU-1"): 10, ("store-1", "SKU-2000"): 10})
    items = "".join(f"pos,item,EAN-{i},SKU-{i}\n" for i in range(1, 2002))
    path = write_text(
        tmp_path / "map.csv", "source,kind,external_id,id\npos,location,LDN-1,store-1\n" + items
    )
    # when it is sent
    assert await run_mappings(str(path), "--server", target) == 0
    assert "2002 mappings set, 0 removed" in capsys.readouterr().out
    # then the till's events, in its own ids, land on the mapped rows (the last batch too)
    got = await stubs.stock.ApplyEvents(
        pb.ApplyEventsRequest(
            events=[
                pos_sale("pos:1", "LDN-1", "EAN-1", 6),
                pos_sale("pos:2", "LDN-1", "EAN-2000", 3),
            ]
        )
    )
    assert list(got.outcomes) == [pb.EVENT_OUTCOME_APPLIED] * 2
    assert await on_hand(stubs, "store-1", ["SKU-1", "SKU-2000"]) == {"SKU-1": 6, "SKU-2000": 3}
    # and a line with an empty id removes its mapping
    path = write_text(tmp_path / "unmap.csv", "source,kind,external_id,id\npos,location,LDN-1,\n")
    assert await run_mappings(str(path), "--server", target) == 0
    assert "0 mappings set, 1 removed" in capsys.readouterr().out
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[pos_sale("pos:3", "LDN-1", "EAN-1", 1)])
        )
    assert "unknown location 'LDN-1'" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("pos,shelf,A-1,SKU-1", "kind: must be location or item, got 'shelf'"),
        (",item,A-1,SKU-1", "source: must not be empty"),
        ("pos,item,A 1,SKU-1", "external_id: may hold only"),
        ("pos,item,A-1", "id: missing (the line ends before column 4)"),
    ],
)
async def test_a_bad_mappings_line_sets_nothing(
    bad: str,
    reason: str,
    stubs: Stubs,
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a good line, then a bad one at line 3
    await seed(stubs, {("store-1", "SKU-1"): 10})
    path = write_text(
        tmp_path / "map.csv", f"source,kind,external_id,id\npos,location,LDN-1,store-1\n{bad}\n"
    )
    # when it is sent
    code = await run_mappings(str(path), "--server", target)
    # then the bad line is named, and not even the good line was set
    assert code == 2
    assert f"{path}:3: {reason}" in capsys.readouterr().err
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[pos_sale("pos:1", "LDN-1", "SKU-1", 1)])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
