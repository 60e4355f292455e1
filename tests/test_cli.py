"""The `omnistock` command line, run in-process (cli.main.run, in the loop that serves the real
server) and once as a process, against a real server over a real Redis-compatible store:
what it prints for people and as JSON, its exit codes, alerts paged and followed, dead
letters listed and replayed exactly once, counts, and a token and TLS."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
import orjson
import pytest
import redis.asyncio as aioredis
import trustme

from cli import main
from engine.app import Omnistock, create_server
from engine.domain.auth import Role
from engine.domain.rules import Band
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.store.bands import RowBands
from engine.store.codecs import ChannelHold

from .cli_helpers import DEAD, Omni, Ran, closed_port, has_line, letter, make_alerts, sale
from .conftest import settings_for
from .grpc_helpers import T0, Stubs, delta, level, line, location, seed
from .test_auth import ROLES, bearer, principals_file, tls_files


@pytest.fixture
def stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def target(server: Omnistock) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def omnistock(target: str, capsys: pytest.CaptureFixture[str]) -> Omni:
    """Runs the command against the test's server; its exit code and what it printed."""

    async def run(*argv: str, server: str = target) -> Ran:
        capsys.readouterr()
        code = await main.run([*argv, "--server", server])
        got = capsys.readouterr()
        return Ran(code, got.out, got.err)

    return run


# -- rows, reservations, locations, sources -------------------------------------------------


async def test_a_row_shows_every_field_and_its_holds_oldest_first(
    stubs: Stubs, omnistock: Omni
) -> None:
    # given a row of 10 with two holds
    await seed(stubs, {("s1", "a"): 10})
    for rid, qty in (("r-first", 3), ("r-second", 2)):
        await stubs.reservations.Reserve(
            pb.ReserveRequest(reservation_id=rid, lines=[line("s1", "a", qty)])
        )
    # when an operator looks at it
    ran = await omnistock("row", "s1", "a")
    # then every field is shown, as_of in UTC with its age, and the holds oldest first
    assert ran.code == 0, ran.err
    shown = (("on_hand", 10), ("reserved", 5), ("safety_stock", 0), ("available", 5))
    for name, value in (*shown, ("status", "IN_STOCK")):
        assert has_line(ran.out, name, value), ran.out
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 / 1000))
    assert re.search(rf"^as_of\s+{as_of}\.\d{{3}}Z \(\d+m ago\)$", ran.out, re.M), ran.out
    assert has_line(ran.out, "RESERVATION", "QTY", "HELD", "AT")
    assert has_line(ran.out, "r-first", 3) and has_line(ran.out, "r-second", 2)
    assert ran.out.index("r-first") < ran.out.index("r-second")
    assert re.search(r"r-first\s+3\s+\S+Z \(\d+s ago\)", ran.out)


async def test_a_row_as_json_has_the_proto_fields(stubs: Stubs, omnistock: Omni) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 4)])
    )
    damaged = pb.StockEvent(
        event_id="d1", location_id="s1", sku="a", kind=pb.EVENT_KIND_COUNT, qty=2,
        source_time=T0, state=pb.STOCK_STATE_DAMAGED,
    )  # fmt: skip
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=[damaged]))
    ran = await omnistock("row", "s1", "a", "--json")
    assert ran.code == 0, ran.err
    got = ran.json()
    version = got["level"].pop("version")
    assert version >= 2 and got["level"] == {
        **{"location_id": "s1", "sku": "a", "available": 6, "on_hand": 10, "reserved": 4},
        **{"safety_stock": 0, "as_of": T0, "status": "STOCK_STATUS_IN_STOCK"},
        **{"damaged": 2, "quality_control": 0, "returned": 0},
    }
    (hold,) = got["holds"]
    assert (hold["reservation_id"], hold["qty"]) == ("r1", 4)
    assert abs(hold["held_at"] - time.time() * 1000) < 60_000


async def test_a_reservation_shows_its_state_expiry_and_lines(
    stubs: Stubs, omnistock: Omni
) -> None:
    await seed(stubs, {("s1", "a"): 5, ("s2", "b"): 5})
    lines = [line("s1", "a", 2), line("s2", "b", 1)]
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="order-7", lines=lines, ttl_seconds=600)
    )
    ran = await omnistock("reservation", "order-7")
    assert ran.code == 0, ran.err
    assert has_line(ran.out, "state", "HELD")
    assert re.search(r"^expires_at\s+\S+Z \(in (9|10)m\)$", ran.out, re.M), ran.out
    assert has_line(ran.out, "s1", "a", 2) and has_line(ran.out, "s2", "b", 1)
    got = (await omnistock("reservation", "order-7", "--json")).json()
    assert got["state"] == "RESERVATION_STATE_HELD"
    assert got["expires_at"] > time.time() * 1000 + 500_000
    none = {"promise_by": 0, "future_qty": 0, "promise_broken": False}  # nothing waits
    assert got["lines"] == [
        {"location_id": "s1", "sku": "a", "qty": 2, **none},
        {"location_id": "s2", "sku": "b", "qty": 1, **none},
    ]


async def test_a_location_shows_its_fields_rows_and_held_reservations(
    stubs: Stubs, omnistock: Omni
) -> None:
    await seed(stubs, {("s1", "a"): 5, ("s1", "b"): 5, ("s1", "c"): 0})
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 1)])
    )
    ran = await omnistock("location", "s1")
    assert ran.code == 0, ran.err
    shown = {"type": "STORE", "ship_capacity": "unlimited", "rows": 3, "held_reservations": 1}
    assert all(has_line(ran.out, name, value) for name, value in shown.items()), ran.out
    got = (await omnistock("location", "s1", "--json")).json()
    assert (got["rows"], got["held_reservations"]) == (3, 1)
    assert got["location"]["type"] == "LOCATION_TYPE_STORE"
    assert got["location"]["ship_capacity"] is None  # not set: unlimited


async def test_a_location_shows_its_numbered_sources_and_their_gaps(
    stubs: Stubs, omnistock: Omni
) -> None:
    await seed(stubs, {("s1", "a"): 5})
    now = int(time.time() * 1000)
    sent = [delta(f"t-{n}", "s1", "a", -1, now, source="till-7", sequence=n) for n in (1, 4, 7)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=sent))
    ran = await omnistock("location", "s1")
    assert ran.code == 0, ran.err
    assert re.search(
        r"^till-7\s+7\s+2-3 \(open since \S+Z \(\d+s ago\)\), 5-6 \(open since ", ran.out, re.M
    ), ran.out
    (numbered,) = (await omnistock("location", "s1", "--json")).json()["numbered_sources"]
    assert [(g["first"], g["last"]) for g in numbered["gaps"]] == [(2, 3), (5, 6)]


async def test_sources_show_each_ones_events_lag_and_clock(stubs: Stubs, omnistock: Omni) -> None:
    # given one source on time and one whose events arrive a quarter of an hour late
    await seed(stubs, {("s1", "a"): 100})
    now = int(time.time() * 1000)
    on_time = [delta(f"ok-{i}", "s1", "a", -1, now - 50, source="till-1") for i in range(3)]
    late = [delta(f"late-{i}", "s1", "a", -1, now - 900_000, source="till-2") for i in range(2)]
    await stubs.stock.ApplyEvents(pb.ApplyEventsRequest(events=on_time + late))
    ran = await omnistock("sources")
    assert ran.code == 0, ran.err
    assert has_line(ran.out, "SOURCE", "EVENTS", "LAST", "ARRIVAL")
    assert re.search(r"^till-1\s+3\s+\S+Z \(\d+s ago\)\s+\S+Z\s+\+0\.\d+s\s+ok$", ran.out, re.M)
    assert re.search(r"^till-2\s+2\s+.*\+9\d\d\.\ds\s+behind$", ran.out, re.M), ran.out
    assert has_line(ran.out, "(none)", 1)  # the seeding count names no source
    got = {s["source"]: s for s in (await omnistock("sources", "--json")).json()}
    assert got["till-2"]["clock"] == "behind" and got["till-2"]["events"] == 2
    assert got["till-2"]["last_source_time"] == now - 900_000
    assert list(got["till-1"]) == [f.name for f in pb.SourceStatus.DESCRIPTOR.fields]


# -- what goes wrong --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["row", "nowhere", "a"], 4, "NOT_FOUND: location_id: no location 'nowhere'"),
        (["reservation", "no-such"], 4, "NOT_FOUND"),
        (["location", "nowhere"], 4, "NOT_FOUND"),
        (["row", "s1", "a b"], 2, "INVALID_ARGUMENT: sku"),
        (["alerts", "--after", "{omnistock}:x"], 2, "INVALID_ARGUMENT: after"),
        (["row", "s1"], 2, "the following arguments are required: sku"),
        (["alerts", "--limit", "0"], 2, "must be 1 to 1000"),
        (["alerts", "--lim", "5"], 2, "unrecognized arguments: --lim"),  # no abbreviations
        (["row", "s1", "a", "--tls-cert", "c.pem"], 2, "--tls-cert: and --tls-key go together"),
    ],
)
async def test_what_is_wrong_is_said_on_stderr_with_its_exit_code(
    stubs: Stubs, omnistock: Omni, argv: list[str], code: int, says: str
) -> None:
    await seed(stubs, {("s1", "a"): 1})
    ran = await omnistock(*argv)
    assert (ran.code, ran.out) == (code, "")
    assert says in ran.err


async def test_a_server_that_cannot_be_reached_exits_1(omnistock: Omni) -> None:
    server = f"127.0.0.1:{closed_port()}"
    ran = await omnistock("sources", server=server)
    assert ran.code == 1
    assert f"omnistock: {server}: UNAVAILABLE" in ran.err


# -- alerts ---------------------------------------------------------------------------------


async def test_alerts_page_after_an_id(stubs: Stubs, omnistock: Omni) -> None:
    await seed(stubs, {("s1", "a"): 1})
    await make_alerts(stubs, "fast-0", "fast-1", "fast-2")
    ran = await omnistock("alerts", "--limit", "2", "--json")
    first = ran.json()
    assert [a["details"]["source"] for a in first] == ["fast-0", "fast-1"]
    assert all(a["kind"] == "clock_skew" and a["details"]["clock"] == "ahead" for a in first)
    assert f"(more: --after {first[-1]['id']})" in ran.err
    rest = (await omnistock("alerts", "--after", first[-1]["id"], "--json")).json()
    assert [a["details"]["source"] for a in rest] == ["fast-2"]
    table = await omnistock("alerts")
    assert table.code == 0
    assert has_line(table.out, "ID", "AT", "KIND", "DETAILS")
    assert re.search(
        rf"^{first[0]['id']}\s+\S+Z \(\d+s ago\)\s+clock_skew\s+.*source=fast-0", table.out, re.M
    )


async def test_a_band_crossing_reads_as_a_line_and_its_row_shows_the_band_checked(
    stubs: Stubs, omnistock: Omni, server: Omnistock
) -> None:
    # given a row of 10 checked for band crossings (LOW at 3), held down to 2, checked again
    await seed(stubs, {("s1", "a"): 10})
    rows, plain = [RowBands("a", [Band(low=3)])], [ChannelHold()]
    await server.storage.check_bands("s1", T0, 0, plain, rows)
    await stubs.reservations.Reserve(
        pb.ReserveRequest(reservation_id="r1", lines=[line("s1", "a", 8)])
    )
    await server.storage.publish_crossings(
        "s1", await server.storage.check_bands("s1", T0, 0, plain, rows)
    )
    # when an operator lists the alerts, and looks at the row
    table = await omnistock("alerts")
    row = await omnistock("row", "s1", "a")
    # then the crossing reads as a line, and the row shows the band it was found in
    fell = r"s1 a: IN_STOCK -> LOW \(available 2, version \d+\)"
    assert re.search(rf"\s+band\s+{fell}$", table.out, re.M), table.out
    assert has_line(row.out, "detected_bands", "LOW (no channel)"), row.out


async def test_following_alerts_prints_new_ones_until_its_time_is_up(
    stubs: Stubs, omnistock: Omni
) -> None:
    # given one alert already there
    await seed(stubs, {("s1", "a"): 1})
    await make_alerts(stubs, "early")
    # when alerts are followed for 2.5 s, and another comes a second in
    started = time.monotonic()
    following = asyncio.create_task(
        omnistock("alerts", "--follow", "--follow-seconds", "2.5", "--json")
    )
    await asyncio.sleep(1.0)
    await make_alerts(stubs, "later")
    ran = await following
    # then both are printed, one JSON document a line, oldest first, and it stopped on time
    assert ran.code == 0, ran.err
    assert 2.5 <= time.monotonic() - started < 6
    lines = [orjson.loads(text) for text in ran.out.splitlines()]
    assert [a["details"]["source"] for a in lines] == ["early", "later"]


# -- dead letters -------------------------------------------------------------------------------


async def test_dead_letters_are_listed_by_origin_and_reason(
    redis: aioredis.Redis, omnistock: Omni
) -> None:
    for origin, reason in (("stream", "sku: bad"), ("shopify", "no: x"), ("stream", "kind: bad")):
        await redis.xadd(DEAD, letter(origin, reason, event_id=f"e-{reason[:3]}", qty="1"))
    ran = await omnistock("dead-letters", "list", "--from", "stream")
    assert ran.code == 0, ran.err
    assert has_line(ran.out, "ID", "DEAD", "AT", "FROM", "REASON", "WHAT")
    assert re.search(r"stream\s+sku: bad\s+event_id=e-sku qty=1$", ran.out, re.M), ran.out
    assert re.search(r"stream\s+kind: bad\s+event_id=e-kin qty=1$", ran.out, re.M)
    assert "shopify" not in ran.out
    got = (await omnistock("dead-letters", "list", "--reason", "no:", "--json")).json()
    assert [(d["origin"], d["reason"], d["at"]) for d in got] == [("shopify", "no: x", T0)]
    assert got[0]["fields"]["event_id"] == "e-no:"


async def test_a_replay_after_the_mapping_is_mended_applies_each_letter_once(
    stubs: Stubs, redis: aioredis.Redis, omnistock: Omni
) -> None:
    # given a row of 10, and a dead letter whose sku its source (which maps items) does not map
    await seed(stubs, {("s1", "a"): 10})
    mapped = pb.Mapping(source="pos-x", kind=pb.MAPPING_KIND_ITEM, external_id="their-b", id="b")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[mapped]))
    why = "sku: no pos-x mapping for 'their-a'"
    unmapped = sale("sale-1", "their-a", "DELTA", -2, why, source="pos-x")
    await redis.xadd(DEAD, unmapped)
    # when it is replayed before the mapping is mended, it stays, and says why
    ran = await omnistock("dead-letters", "replay")
    assert ran.code == 3
    assert "still bad: events[0].sku: no pos-x mapping for 'their-a'" in ran.err
    assert "replayed 0; still bad 1" in ran.out
    assert await redis.xlen(DEAD) == 1 and (await level(stubs, "s1", "a")).on_hand == 10
    # when the mapping is set and it is replayed: applied once, and deleted
    mended = pb.Mapping(source="pos-x", kind=pb.MAPPING_KIND_ITEM, external_id="their-a", id="a")
    await stubs.stock.SetMappings(pb.SetMappingsRequest(mappings=[mended]))
    ran = await omnistock("dead-letters", "replay", "--reason", "their-a")
    assert ran.code == 0, ran.err
    assert "replayed 1 (events: applied 1); still bad 0" in ran.out
    assert await redis.xlen(DEAD) == 0 and (await level(stubs, "s1", "a")).on_hand == 8
    # a second replay finds nothing
    again = await omnistock("dead-letters", "replay")
    assert (again.code, again.out.strip()) == (0, "replayed 0; still bad 0")
    # and the same letter once more (a replay killed before it deleted it) is a duplicate
    await redis.xadd(DEAD, unmapped)
    ran = await omnistock("dead-letters", "replay", "--json")
    assert ran.code == 0, ran.err
    done = {"replayed": 1, "outcomes": {"duplicate": 1}, "still_bad": [], "short_rows": []}
    assert ran.json() == {"dry_run": False, **done}
    assert await redis.xlen(DEAD) == 0 and (await level(stubs, "s1", "a")).on_hand == 8


async def test_a_letter_that_cannot_be_read_stays_and_a_dry_run_moves_nothing(
    stubs: Stubs, redis: aioredis.Redis, omnistock: Omni
) -> None:
    await seed(stubs, {("s1", "a"): 10})
    await redis.xadd(DEAD, sale("g1", "a", "COUNT", 4, "location_id: unknown location 's1'"))
    await redis.xadd(DEAD, letter("stream", "kind: bad", event_id="b1", kind="SOMETIMES"))
    dry = await omnistock("dead-letters", "replay", "--dry-run")
    assert dry.code == 3
    assert "would replay 1; still bad 1" in dry.out
    assert "still bad: kind: must be COUNT or DELTA, got 'SOMETIMES'" in dry.err
    assert await redis.xlen(DEAD) == 2 and (await level(stubs, "s1", "a")).on_hand == 10
    ran = await omnistock("dead-letters", "replay", "--from", "stream")
    assert ran.code == 3
    assert "replayed 1 (events: applied 1); still bad 1" in ran.out
    assert await redis.xlen(DEAD) == 1 and (await level(stubs, "s1", "a")).on_hand == 4


# -- counts, a process, auth ------------------------------------------------------------------


async def test_count_sends_a_count_file_as_adapters_counts_does(
    stubs: Stubs, omnistock: Omni, tmp_path: Path
) -> None:
    await seed(stubs, {("s1", "a"): 10, ("s1", "b"): 3})
    path = tmp_path / "count.csv"
    path.write_text("sku,qty\na,7\n")
    at, count = str(T0 + 10), ("count", str(path), "--location", "s1", "--missing", "keep")
    ran = await omnistock(*count, "--counted-at", at)
    assert ran.code == 0, ran.err
    assert f"count s1@{at} of s1: lines 1, changed 1, unchanged 0, zeroed 0, stale 0" in ran.out
    assert (await level(stubs, "s1", "a")).on_hand == 7
    older = await omnistock(*count, "--counted-at", str(T0 - 10))
    assert older.code == 3 and "1 of 1 lines were not applied" in older.err
    bad = await omnistock(*count, "--counted-at", "yesterday")
    assert bad.code == 2 and "neither ISO 8601 nor ms since the epoch" in bad.err


async def test_the_command_runs_as_a_process(stubs: Stubs, target: str, project_root: Path) -> None:
    await seed(stubs, {("s1", "a"): 10})
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cli", "row", "s1", "a", "--json", "--server", target],
        cwd=project_root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert orjson.loads(out)["level"]["on_hand"] == 10


async def test_a_token_and_tls_reach_a_secured_server(
    redis: aioredis.Redis,
    one_redis_url: str,
    tmp_path: Path,
    omnistock: Omni,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a server with principals and TLS, and an admin token in a file
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = settings_for(
        one_redis_url, auth_file=principals_file(tmp_path / "a.toml"), **tls_files(ca, tmp_path)
    )
    app = create_server(settings)
    await app.start()
    server, admin = f"127.0.0.1:{app.port}", ("--token-file", str(tmp_path / "admin"))
    (tmp_path / "admin").write_text(ROLES[Role.ADMIN] + "\n")

    def secured(*argv: str, tls: bool = True) -> Awaitable[Ran]:
        return omnistock(
            *argv, *(("--tls-ca", str(tmp_path / "ca.pem")) if tls else ()), server=server
        )

    try:
        creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(server, creds) as channel:
            await Stubs(channel).stock.UpsertLocations(
                pb.UpsertLocationsRequest(locations=[location("L1")]),
                metadata=bearer(ROLES[Role.ADMIN]),
            )
        # when a count is sent with the ingest token from the environment (a stream call)
        (tmp_path / "c.csv").write_text("sku,qty\nS1,9\n")
        monkeypatch.setenv("OMNISTOCK_TOKEN", ROLES[Role.INGEST])
        counted = await secured(
            "count", str(tmp_path / "c.csv"), "--location", "L1", "--counted-at", str(T0)
        )
        assert counted.code == 0, counted.err
        # then an admin sees the row; a role without the right, or no token, is refused
        denied = await secured("row", "L1", "S1")
        assert denied.code == 5 and "PERMISSION_DENIED" in denied.err
        both = await secured("row", "L1", "S1", *admin)
        assert both.code == 2 and "OMNISTOCK_TOKEN: set, and" in both.err
        monkeypatch.delenv("OMNISTOCK_TOKEN")
        ran = await secured("row", "L1", "S1", *admin)
        assert ran.code == 0 and has_line(ran.out, "on_hand", 9), ran.err
        anonymous = await secured("row", "L1", "S1")
        assert anonymous.code == 5 and "UNAUTHENTICATED" in anonymous.err
        plaintext = await secured("row", "L1", "S1", *admin, tls=False)
        assert plaintext.code == 1 and "UNAVAILABLE" in plaintext.err
    finally:
        await app.stop(grace=1.0)
