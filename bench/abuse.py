"""python -m bench.abuse: how the server holds up under hostile calls.

Re-measures the abuse table of the issue from outside. For each scenario, abusive clients
(`--clients` processes, bench/abusers.py) start their calls; meanwhile three probes run at
a steady rate (`--rate` a second each, open loop: a probe's time runs from when it was due),
for `--seconds`: the health check (grpc.health.v1 Health/Check), a small read
(GetAvailability of 1 sku at 1 location) and a small write (ApplyEvents of one DELTA on the
same row, +1 and -1 in turn). Every probe has a 5 s deadline. Where the abuse is a finite
upload held open (reconcile), probing lasts while it is sent, then `--seconds` while it is
held, and each part has a row of its own.

Recorded per scenario: each probe's p50 / p99 / max and its errors by status code, the
status codes the abusive calls got, the server process's RSS before, at its peak and after
(VmRSS in /proc), and the CPU the server, its store and every other process on the machine
used meanwhile (the machine is shared: other processes' CPU is measured, not prevented).
After the probing, the probes go on (1 s deadline) until health and read both answer within
the goals three times running, at most 60 s: the "settle" time; then RSS after.

Scenarios: baseline (no abuse), unknown-locations, allocate, watch, stream-events,
safety-stock, reconcile (bench/abusers.py says what each sends). Without --target, each
scenario gets a fresh `python server.py --demo` of this checkout, with an embedded store in
a temporary state dir, on free ports (the demo data is loaded once and its state dir
copied), and an --auth-file of two principals: the abusive clients call as one, the probes
as the other (a per-principal limit the abusers meet is not the probes'). With --target
host:port it measures a running server instead (--server-pid for its RSS and CPU), so an
older commit's server can be measured the same way; the scenarios then share that server,
in the order given. A markdown table goes to stdout, the full results as JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.abusers import FINITE_FEEDS, SCENARIOS, Plan, client_entry, sku
from bench.server import ROOT, BenchServer, bearer, principals_file
from engine.pb.omnistock.v1 import omnistock_pb2 as pb
from engine.pb.omnistock.v1 import omnistock_pb2_grpc as pb_grpc

# The servers the bench starts know two principals: the abusive clients are one, the probes
# the other, so that a per-principal limit the abusers meet is not met by the probes.
TOKENS = {"abuser": "abuser-token", "probe": "probe-token"}
PROBE_DEADLINE = 5.0
SETTLE_DEADLINE = 1.0
SETTLE_LIMIT = 60.0
GOAL_MS = {"health": 50.0, "read": 100.0}  # p99 goals of the issue
READY_LIMIT = 60.0  # seconds for the client processes to start and connect
FEED_LIMIT = 120.0  # seconds that probing waits for a finite feed to be sent
SMALL_STORES, SMALL_SKUS = 8, 200  # --data small
SERVING = health_pb2.HealthCheckResponse.SERVING
KINDS = ("health", "read", "write")
TICK = os.sysconf("SC_CLK_TCK")
NOT_COPIED = shutil.ignore_patterns("redis.pid", "redis.url", "redis.log")  # of a live store


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--seconds", type=float, default=10.0, help="probing time per scenario")
    p.add_argument("--clients", type=int, default=4, help="abusive client processes")
    p.add_argument("--rate", type=float, default=20.0, help="probes a second, of each kind")
    p.add_argument(
        "--scale", type=float, default=1.0, help="times the issue's sizes (a smoke test: 0.001)"
    )
    p.add_argument("--target", help="host:port of a running server (default: start one)")
    p.add_argument("--server-pid", type=int, help="with --target: its pid, for RSS and CPU")
    p.add_argument(
        "--data",
        choices=("demo", "small"),
        default="demo",
        help="the server started: --demo, or 8 stores x 200 skus seeded over gRPC (fast)",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    args = p.parse_args(argv)
    if args.server_pid and not args.target:
        p.error("--server-pid goes with --target")
    return args


# -- the server's RSS, and who used the CPU -----------------------------------------------


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler(threading.Thread):
    """The server's RSS every 100 ms, for its peak."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mb(pid)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            now = rss_mb(self.pid)
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now

    def finish(self) -> float | None:
        self._done.set()
        self.join()
        return self.peak


def _ticks(pid: int) -> int:
    """utime + stime of a live process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    """Child processes of any of its threads (the store is started from a worker thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _busy_ticks() -> int:
    """Every CPU's busy time (user, nice, system, irq, softirq, steal) in clock ticks."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu[:8])
    return user + nice + system + irq + softirq + steal


class CpuMeter:
    """Cores used, on average, from start to `read`: by the server, by its store (its child
    processes), by this bench (itself and its client processes, once reaped), and by every
    other process on the machine (the rest of /proc/stat's busy time)."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.started = time.monotonic()
        self.busy = _busy_ticks()
        self.server, self.store = self._server()
        self.bench = self._bench()

    def _server(self) -> tuple[int, int]:
        if self.pid is None:
            return 0, 0
        return _ticks(self.pid), sum(_ticks(c) for c in _children(self.pid))

    @staticmethod
    def _bench() -> int:
        t = os.times()
        return round((t.user + t.system + t.children_user + t.children_system) * TICK)

    def read(self) -> dict[str, float | None]:
        seconds = (time.monotonic() - self.started) * TICK
        server, store = self._server()
        used = {
            "server": server - self.server,
            "store": store - self.store,
            "bench": self._bench() - self.bench,
        }
        others = _busy_ticks() - self.busy - sum(used.values())
        cores: dict[str, float | None] = {k: round(v / seconds, 2) for k, v in used.items()}
        cores["others"] = round(max(0, others) / seconds, 2) if self.pid else None
        if not self.pid:
            cores["server"] = cores["store"] = None
        return cores


# -- the probes ---------------------------------------------------------------------------


@dataclass
class Probe:
    """One kind of probe's calls: (seconds into the window it was due, ms, status), the
    time of an error included."""

    calls: list[tuple[float, float, str]] = field(default_factory=list)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        part = [(ms, code) for at, ms, code in self.calls if since <= at < until]
        ms = sorted(m for m, _ in part)
        return {
            "count": len(ms),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": round(ms[-1], 2) if ms else None,
            "errors": dict(Counter(code for _, code in part if code != "OK")),
        }

    def timeline(self) -> list[dict[str, Any]]:
        """Per second of the window: count, p99 and errors."""
        seconds = sorted({int(at) for at, _, _ in self.calls})
        return [
            {"second": s, **{k: v for k, v in self.summary(s, s + 1).items() if k != "p50_ms"}}
            for s in seconds
        ]


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))
    return round(ordered[int(rank) - 1], 2)


class Probes:
    """The three small calls, on a channel each (as a load balancer and two apps would)."""

    def __init__(self, target: str, token: str, location: str, sku_id: str, run_id: str) -> None:
        self.channels = [grpc.aio.insecure_channel(target) for _ in range(3)]
        self.md = bearer(token)
        self.health = health_pb2_grpc.HealthStub(self.channels[0])
        self.availability = pb_grpc.AvailabilityServiceStub(self.channels[1])
        self.stock = pb_grpc.StockServiceStub(self.channels[2])
        self.location, self.sku, self.run_id = location, sku_id, run_id
        self.writes = 0

    async def check_health(self, within: float) -> str:
        got = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=within)
        if got.status == SERVING:
            return "OK"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(got.status))

    async def read(self, within: float) -> str:
        request = pb.GetAvailabilityRequest(skus=[self.sku], location_ids=[self.location])
        await self.availability.GetAvailability(request, timeout=within, metadata=self.md)
        return "OK"

    async def write(self, within: float) -> str:
        self.writes += 1
        event = pb.StockEvent(
            event_id=f"abuse-probe-{self.run_id}-{self.writes}",
            location_id=self.location,
            sku=self.sku,
            kind=pb.EVENT_KIND_DELTA,
            qty=1 if self.writes % 2 else -1,
            source_time=int(time.time() * 1000),
            source="abuse-probe",
        )
        await self.stock.ApplyEvents(
            pb.ApplyEventsRequest(events=[event]), timeout=within, metadata=self.md
        )
        return "OK"

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def timed(call: Callable[[float], Awaitable[str]], within: float) -> str:
    """The call's status: "OK", a status code's name, or a health status other than SERVING."""
    try:
        return await call(within)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)


class Window:
    """The probing time: `seconds`; for a finite feed, the time it takes to send it all
    (at most FEED_LIMIT), then `seconds` of holding it."""

    def __init__(self, seconds: float, fed_at: Callable[[], float | None] | None) -> None:
        self.seconds, self.fed_at = seconds, fed_at
        self.start = time.monotonic()
        self.fed: float | None = None  # seconds into the window when all was sent
        self.probed = 0.0  # seconds, once over

    def over(self) -> bool:
        elapsed = time.monotonic() - self.start
        if self.fed_at is None:
            return elapsed >= self.seconds
        if self.fed is None and (fed := self.fed_at()) is not None:
            self.fed = max(0.0, fed - self.start)  # a small feed may be sent before it starts
        limit = min(self.fed, FEED_LIMIT) if self.fed is not None else FEED_LIMIT
        return elapsed >= limit + self.seconds

    def phases(self) -> dict[str, tuple[float, float]]:
        """A finite feed's two parts: while it was sent, and while it was held."""
        if self.fed is None:
            return {}
        return {"sending": (0.0, self.fed), "held": (self.fed, float("inf"))}


async def steady(
    call: Callable[[float], Awaitable[str]], probe: Probe, rate: float, window: Window
) -> None:
    """Open loop: one call every 1/rate s, each timed from when it was due."""
    start, tasks = window.start, set()

    async def one(due: float) -> None:
        code = await timed(call, PROBE_DEADLINE)
        probe.calls.append((due - start, (time.monotonic() - due) * 1000, code))

    n = 0
    while not window.over():
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def probe_for(probes: Probes, rate: float, window: Window) -> dict[str, Probe]:
    kinds = dict(zip(KINDS, (probes.check_health, probes.read, probes.write), strict=True))
    results = {name: Probe() for name in kinds}
    await asyncio.gather(
        *(steady(call, results[name], rate, window) for name, call in kinds.items())
    )
    return results


async def settle(probes: Probes) -> float | None:
    """Seconds until health and the small read answer within the goals three times running;
    None if not within SETTLE_LIMIT."""
    start, good = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < SETTLE_LIMIT:
        if good >= 3:
            return round(elapsed, 2)
        ok = True
        for name, call in (("health", probes.check_health), ("read", probes.read)):
            began = time.perf_counter()
            code = await timed(call, SETTLE_DEADLINE)
            ok = ok and code == "OK" and (time.perf_counter() - began) * 1000 < GOAL_MS[name]
        good = good + 1 if ok else 0
        await asyncio.sleep(0.1)
    return None


# -- the abusive clients ------------------------------------------------------------------


class Clients:
    """The abusive client processes of one scenario, and what they told."""

    def __init__(self, plans: list[Plan]) -> None:
        spawn = mp.get_context("spawn")
        self.flag, self.results = spawn.Event(), spawn.Queue()
        self.processes = [
            spawn.Process(target=client_entry, args=(plan, self.flag, self.results), daemon=True)
            for plan in plans
        ]
        self.told: list[tuple[float, tuple[Any, ...]]] = []  # (when, message)

    def start(self) -> None:
        for process in self.processes:
            process.start()
        self._wait_for("ready", READY_LIMIT)

    def fed_at(self) -> float | None:
        """When the last client said its feed was sent (monotonic), or None."""
        self._drain()
        times = [t for t, msg in self.told if msg[0] == "fed"]
        return max(times) if len(times) == len(self.processes) else None

    def stop(self, within: float) -> list[dict[str, Any]]:
        self.flag.set()
        self._wait_for("done", within)
        for process in self.processes:
            process.join(5)
        self.kill()  # any still there after its report
        return [msg[2] for _, msg in self.told if msg[0] == "done"]

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join()

    def _drain(self) -> None:
        while True:
            try:
                self.told.append((time.monotonic(), self.results.get_nowait()))
            except queue.Empty:
                return

    def _wait_for(self, what: str, within: float) -> None:
        deadline = time.monotonic() + within
        while sum(msg[0] == what for _, msg in self.told) < len(self.processes):
            self._drain()
            failed = any(p.exitcode not in (None, 0) for p in self.processes)
            if failed or time.monotonic() > deadline:
                have = sum(msg[0] == what for _, msg in self.told)
                raise RuntimeError(f"{have} of {len(self.processes)} abusive clients {what}")
            time.sleep(0.05)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    statuses, sent, seconds = Counter[str](), Counter[str](), []
    for r in reports:
        statuses.update(r["statuses"])
        sent.update({k: v for k, v in r["sent"].items() if k != "feed_ms"})
        seconds += r["call_seconds"]
    seconds.sort()
    feeds = [r["sent"]["feed_ms"] for r in reports if "feed_ms" in r["sent"]]
    return {
        "statuses": dict(statuses),
        "sent": dict(sent) | ({"feed_s_max": max(feeds) / 1000} if feeds else {}),
        "calls_finished": len(seconds),
        "call_p50_ms": percentile([s * 1000 for s in seconds], 50),
        "call_max_ms": round(seconds[-1] * 1000, 1) if seconds else None,
    }


# -- a scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    target: str
    server_pid: int | None
    clients: int
    scale: float
    seconds: float
    rate: float
    run_id: str
    locations: tuple[str, ...]  # the probe's first
    tokens: dict[str, str]  # principal -> bearer token: "abuser" and "probe" ({}: open server)

    def plans(self, scenario: str) -> list[Plan]:
        return [
            Plan(
                scenario=scenario,
                target=self.target,
                clients=self.clients,
                index=i,
                scale=self.scale,
                run_id=self.run_id,
                probe_location=self.locations[0],
                probe_sku=sku(0),
                locations=self.locations,
                stop_after=self.seconds + READY_LIMIT + FEED_LIMIT + 30,
                token=self.tokens.get("abuser", ""),
            )
            for i in range(self.clients)
        ]


def run_scenario(setup: Setup, scenario: str) -> dict[str, Any]:
    before, cpu = rss_mb(setup.server_pid), CpuMeter(setup.server_pid)
    sampler = RssSampler(setup.server_pid)
    sampler.start()
    clients = Clients(setup.plans(scenario)) if scenario != "baseline" else None
    try:
        if clients:
            clients.start()
        waits = clients.fed_at if clients and scenario in FINITE_FEEDS else None
        window = Window(setup.seconds, waits)
        seen, settled, abuse = asyncio.run(_measure(setup, clients, window))
    except BaseException:
        if clients:
            clients.kill()
        raise
    finally:
        peak = sampler.finish()
    return {
        "scenario": scenario,
        "probe_s": round(window.probed, 1),
        "probes": {name: probe.summary() for name, probe in seen.items()},
        "phases": {
            phase: {"from_s": round(since, 1)}
            | {name: probe.summary(since, until) for name, probe in seen.items()}
            for phase, (since, until) in window.phases().items()
        },
        "timeline": {name: probe.timeline() for name, probe in seen.items()},
        "abuse": abuse,
        "settle_s": settled,
        "rss_mb": {"before": before, "peak": peak, "after": rss_mb(setup.server_pid)},
        "cpu_cores": cpu.read(),
    }


async def _measure(
    setup: Setup, clients: Clients | None, window: Window
) -> tuple[dict[str, Probe], float | None, dict[str, Any] | None]:
    probes = Probes(
        setup.target, setup.tokens.get("probe", ""), setup.locations[0], sku(0), setup.run_id
    )
    try:
        seen = await probe_for(probes, setup.rate, window)
        window.probed = time.monotonic() - window.start
        abuse = merge(await asyncio.to_thread(clients.stop, 60.0)) if clients else None
        return seen, await settle(probes), abuse
    finally:
        await probes.close()


# -- the servers and their data -----------------------------------------------------------


async def seed_small(target: str) -> None:
    """8 stores x 200 skus, 50 units each, for a fast run (the smoke test)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stock = pb_grpc.StockServiceStub(channel)
        stores = [
            pb.Location(
                id=f"store-small-{i:02d}",
                type=pb.LOCATION_TYPE_STORE,
                latitude=51.5 + i / 100,
                longitude=-0.12,
                pickup_enabled=True,
                ship_enabled=True,
                active=True,
            )
            for i in range(SMALL_STORES)
        ]
        await stock.UpsertLocations(pb.UpsertLocationsRequest(locations=stores))
        now = int(time.time() * 1000)
        events = [
            pb.StockEvent(
                event_id=f"seed-{s.id}-{j}",
                location_id=s.id,
                sku=sku(j),
                kind=pb.EVENT_KIND_COUNT,
                qty=50,
                source_time=now,
            )
            for s in stores
            for j in range(SMALL_SKUS)
        ]
        await stock.ApplyEvents(pb.ApplyEventsRequest(events=events))


async def active_locations(target: str) -> tuple[str, ...]:
    """Every active location, the probed one first (the README's dc-gb on the demo data)."""
    async with grpc.aio.insecure_channel(target) as channel:
        got = await pb_grpc.AvailabilityServiceStub(channel).GetAvailability(
            pb.GetAvailabilityRequest(skus=[sku(0)], include_empty=True)
        )
    ids = sorted({lv.location_id for lv in got.levels})
    if not ids:
        raise SystemExit("the server has no active location")
    first = "dc-gb" if "dc-gb" in ids else ids[0]
    return (first, *(i for i in ids if i != first))


class Servers:
    """A fresh server of this checkout per scenario, each from a copy of one state dir that
    holds the data (loaded once: the demo takes tens of seconds to load)."""

    def __init__(self, data: str) -> None:
        self.args = ["--demo"] if data == "demo" else []
        seed = BenchServer(self.args)
        seed.start(timeout=300.0)
        try:
            if data == "small":
                asyncio.run(seed_small(seed.target))
            self.locations = asyncio.run(active_locations(seed.target))
        finally:
            seed.stop(remove_state=False)
        self.state = seed.state

    def start(self) -> BenchServer:
        """With principals of their own for the abusers and the probes (TOKENS)."""
        server = BenchServer(self.args)
        shutil.copytree(self.state, server.state, ignore=NOT_COPIED, dirs_exist_ok=True)
        auth = principals_file(Path(server.state) / "auth.toml", TOKENS)
        server.extra = [*server.extra, "--auth-file", str(auth)]
        server.start(timeout=120.0)
        return server

    def close(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


def checkout() -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": "yes" if git("status", "--porcelain", "--untracked-files=no") else "no",
    }


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


# -- the table ----------------------------------------------------------------------------


def _n(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {k}" for k, n in sorted(codes.items(), key=lambda kv: -kv[1]))


def _probe(p: dict[str, Any]) -> str:
    return f"{_n(p['p50_ms'])} / **{_n(p['p99_ms'])}** / {_n(p['max_ms'])}"


def _errors(probes: dict[str, Any]) -> str:
    parts = [f"{k}: {_codes(probes[k]['errors'])}" for k in KINDS if probes[k]["errors"]]
    return "; ".join(parts) or "none"


def _abuse(a: dict[str, Any] | None) -> str:
    if a is None:
        return "none"
    text = _codes(a["statuses"]) or "none"
    if a["call_p50_ms"] is not None:
        text += f" (call p50 {_n(a['call_p50_ms'], 0)} ms, max {_n(a['call_max_ms'], 0)} ms)"
    sent = dict(a["sent"])
    feed = sent.pop("feed_s_max", None)
    if sent:
        text += "; " + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in sent.items())
        text += f" in {feed:.1f} s" if feed is not None else ""
    return text


def _rss(r: dict[str, float | None]) -> str:
    if r["before"] is None:
        return "n/a"
    return f"{_n(r['before'], 0)} / {_n(r['peak'], 0)} / {_n(r['after'], 0)}"


def _cpu(c: dict[str, float | None]) -> str:
    return " / ".join(_n(c[k], 2) for k in ("server", "store", "bench", "others"))


HEAD = (
    "| scenario | abusive calls got | health p50 / p99 / max ms | read p50 / p99 / max ms "
    "| write p50 / p99 / max ms | probe errors | server RSS MB before / peak / after "
    "| settle s | cores: server / store / bench / others |"
)


def _row(name: str, abuse: str, probes: dict[str, Any], rest: str) -> str:
    cells = [name, abuse, *(_probe(probes[k]) for k in KINDS), _errors(probes)]
    return "| " + " | ".join(cells) + " | " + rest + " |"


def _rows(r: dict[str, Any]) -> list[str]:
    """One row; for a finite feed, one while it was sent and one while it was held."""
    rest = f"{_rss(r['rss_mb'])} | {_n(r['settle_s'])} | {_cpu(r['cpu_cores'])}"
    if "error" in r:
        return [f"| {r['scenario']} | failed: {r['error']} |" + " |" * 7]
    if not r["phases"]:
        return [_row(r["scenario"], _abuse(r["abuse"]), r["probes"], rest)]
    (sending, first), (held, second) = r["phases"].items()
    return [
        _row(f"{r['scenario']}: {sending}", _abuse(r["abuse"]), first, rest),
        _row(f"{r['scenario']}: {held} (from {second['from_s']:.1f} s)", "(the same)", second,
             "(the same) | | "),
    ]  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    rows = [HEAD, "|" + "---|" * 9]
    for r in results:
        rows += _rows(r)
    return "\n".join(rows)


# -- main ---------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, run_id: str) -> list[dict[str, Any]]:
    servers = None if args.target else Servers(args.data)
    locations = servers.locations if servers else asyncio.run(active_locations(args.target))
    setup = Setup(
        args.target or "", args.server_pid, args.clients, args.scale, args.seconds, args.rate,
        run_id, locations, TOKENS if servers else {},
    )  # fmt: skip
    results = []
    try:
        for scenario in args.scenarios:
            print(f"[abuse] {scenario} ...", file=sys.stderr, flush=True)
            server = servers.start() if servers else None
            here = setup
            if server and server.process:
                pid = server.process.pid
                here = dataclasses.replace(setup, target=server.target, server_pid=pid)
            try:
                results.append(run_scenario(here, scenario))
            except RuntimeError as exc:  # the clients failed: the other scenarios still run
                results.append({"scenario": scenario, "error": str(exc)})
            finally:
                if server:
                    server.stop()
    finally:
        if servers:
            servers.close()
    return results


def main(argv: list[str]) -> int:
    args = parse(argv)
    run_id = time.strftime("%Y%m%d%H%M%S")
    started = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    results = run_all(args, run_id)
    report = started | {
        "command": "python -m bench.abuse " + " ".join(argv),
        "server": {"target": args.target, "pid": args.server_pid}
        if args.target
        else {"checkout": checkout(), "data": args.data, "fresh_per_scenario": True},
        "config": {k: v for k, v in vars(args).items() if k != "out"}
        | {"probe_deadline_s": PROBE_DEADLINE, "run_id": run_id},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(table(results))
    print(f"results: {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
