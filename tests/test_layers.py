"""The shape of engine/ (docs/architecture.md), checked on every import statement:

    domain    the business, pure: imports nothing of the engine but itself
    support   metrics, throttle, logs: imported by every layer, importing only domain
    store     the one Redis seam
    usecases  what the engine does
    api       gRPC
    wiring    app, settings, demo: anything

Each layer imports only those listed before it (and support); only engine/store imports
redis, only engine/api and the client import grpc; numpy only in the sourcing optimiser,
the location index, the network view and its listings (columns of figures summed 5x faster
than lists of 500) and the demo data. The client imports only the domain, the generated
stubs and the shared conversions, so that `import engine.client` loads no Redis nor numpy.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.pb.omnistock.v1 import omnistock_pb2 as pb

ENGINE = Path(__file__).resolve().parents[1] / "engine"
LAYERS = ("domain", "support", "store", "usecases", "api", "wiring")
SUPPORT = {"metrics", "throttle", "logs"}
WIRING = {
    "app",
    "settings",
    "demo",
    "demo_cities",
    "demo_supply",
    "client",
    "client_supply",
    "client_states",
    "workers",
}
# A layer's settings-free modules may also import these from the wiring.
CONFIG_FOR = {"api": {"settings"}}
NUMPY = {"domain.sourcing", "usecases.index", "store.netview", "usecases.networks", "demo"}
# the client, and its calls of supply and transfers, of states and returns (the same rule)
CLIENT = {"client", "client_supply", "client_states"}
CLIENT_MAY_IMPORT = (
    "engine.domain",
    "engine.pb",
    "engine.api.convert",
    "engine.client_supply",
    "engine.client_states",
)


def layer_of(module: str) -> str:
    """'store.storage' -> 'store'; 'metrics' -> 'support'; 'pb...' -> 'domain' (generated)."""
    head = module.split(".")[0]
    if head in ("domain", "store", "usecases", "api"):
        return head
    if head == "pb":
        return "domain"
    if head in SUPPORT:
        return "support"
    if head in WIRING:
        return "wiring"
    raise AssertionError(f"engine.{module} belongs to no layer: add it to one")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE).with_suffix("")
        if relative.parts[0] == "pb" or relative.name == "__init__":
            continue
        found.append((".".join(relative.parts), path))
    return found


def imports_of(path: Path) -> set[str]:
    """Every module an import statement names (at any depth: lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "engine":  # from engine import demo
                names.update(f"engine.{alias.name}" for alias in node.names)
    return names


def broken_rules(module: str, imported: set[str]) -> list[str]:
    return [f"imports {name}: {why}" for name in sorted(imported) if (why := _why(module, name))]


def _why(module: str, name: str) -> str:
    """Why `module` may not import `name` ('' if it may)."""
    layer, top = layer_of(module), name.split(".")[0]
    if top == "redis" and layer != "store":
        return "only engine/store imports redis"
    if top.startswith("grpc") and layer != "api" and module not in CLIENT:
        return "only engine/api and the client import grpc"
    if top == "numpy" and module not in NUMPY:
        return f"numpy only in {sorted(NUMPY)}"
    if top != "engine" or name == "engine":
        return ""
    inner = name.removeprefix("engine.")
    if module in CLIENT:
        return (
            ""
            if name.startswith(CLIENT_MAY_IMPORT)
            else f"the client imports only {CLIENT_MAY_IMPORT}"
        )
    if layer == "support":
        return "" if layer_of(inner) == "domain" else "support modules import only the domain"
    if inner.split(".")[0] in CONFIG_FOR.get(layer, ()):
        return ""
    allowed = {*LAYERS[: LAYERS.index(layer) + 1], "support"}
    return "" if layer_of(inner) in allowed else f"{layer} is below {layer_of(inner)}"


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_each_module_imports_only_what_its_layer_may(module: str, path: Path) -> None:
    assert broken_rules(module, imports_of(path)) == []


def test_the_rules_catch_what_they_forbid() -> None:
    """The checker itself: each rule, broken once."""
    assert broken_rules("domain.model", {"redis.asyncio"}) != []
    assert broken_rules("domain.model", {"engine.store.storage"}) != []
    assert broken_rules("store.storage", {"engine.usecases.ingest"}) != []
    assert broken_rules("store.storage", {"engine.settings"}) != []
    assert broken_rules("usecases.ingest", {"grpc"}) != []
    assert broken_rules("usecases.ingest", {"engine.api.convert"}) != []
    assert broken_rules("metrics", {"engine.store.storage"}) != []
    assert broken_rules("client", {"engine.usecases.nearby"}) != []
    assert broken_rules("domain.model", {"numpy"}) != []
    assert broken_rules("api.stock", {"engine.usecases.ingest", "engine.settings", "grpc"}) == []
    # and the tracer's: a call up, a second trip down
    assert _upward([(1, "store.storage", "usecases.ingest")]) != []
    bounce = [
        (1, "", m)
        for m in (
            "api.stock",
            "usecases.ingest",
            "store.storage",
            "usecases.ingest",
            "store.storage",
        )
    ]
    assert _path(bounce, 1) == ["api", "usecases", "store", "usecases", "store"]


def test_importing_the_client_loads_neither_redis_nor_numpy() -> None:
    code = (
        "import sys, engine.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'numpy', 'hiredis'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_import_of_the_engine_in_the_repository_resolves() -> None:
    """bench/, tools and lazy imports are outside mypy's files: a name moved in engine/
    must not leave one of them importing what is no longer there."""
    root = ENGINE.parent
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True
    )
    missing = []
    for name in listed.stdout.split():
        if name.startswith("engine/pb/"):
            continue
        for node in ast.walk(ast.parse((root / name).read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if not node.module.startswith("engine"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and not _submodule(module, alias.name):
                    missing.append(f"{name}:{node.lineno}: {node.module}.{alias.name}")
    assert missing == []


def _submodule(package: object, name: str) -> bool:
    try:
        importlib.import_module(f"{getattr(package, '__name__', '')}.{name}")
    except ImportError:
        return False
    return True


def _path(calls: list[tuple[int, str, str]], task: int) -> list[str]:
    """The layers one task's calls went into, in order (domain and support left out: every
    layer may call them), a run of calls within one layer counted once."""
    out: list[str] = []
    for seen_task, _, module in calls:
        layer = layer_of(module)
        if seen_task == task and layer not in ("domain", "support") and out[-1:] != [layer]:
            out.append(layer)
    return out


def _upward(calls: list[tuple[int, str, str]]) -> list[str]:
    """Calls from a lower layer into a higher one (none may be)."""
    order = {layer: i for i, layer in enumerate(LAYERS)}
    return [
        f"{caller} -> {callee}"
        for _, caller, callee in calls
        if caller and order[layer_of(callee)] > order[layer_of(caller)]
    ]


async def test_a_reserve_goes_down_through_the_layers_and_back_up_once(one_redis_url: str) -> None:
    """Followed by a profiler on a real server: the task serving a Reserve goes from the
    api to the use case to the store (one round trip to Redis) and back up, never calling
    from a lower layer into a higher one, nor going down a second time."""
    from .conftest import served
    from .grpc_helpers import line, stock_up

    calls: list[tuple[int, str, str]] = []  # task, calling module ('' outside engine/), callee
    exchanges: list[int] = []  # the task of each exchange with Redis (Base.guard)
    entered: set[Any] = set()  # a coroutine resumed is "called" again: only its start counts
    root = str(ENGINE) + "/"

    def module_of(frame: Any) -> str:
        path = frame.f_code.co_filename if frame is not None else ""
        if not path.startswith(root) or "/pb/" in path:
            return ""
        return str(path[len(root) : -3].replace("/", "."))

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or frame in entered:
            return
        entered.add(frame)
        callee = module_of(frame)
        if callee:
            task = id(asyncio.current_task()) if _running() else 0
            calls.append((task, module_of(frame.f_back), callee))
            if callee == "store.base" and frame.f_code.co_name == "guard":
                exchanges.append(task)

    async with served(one_redis_url) as (_, stubs):
        await stock_up(stubs, {("L1", "S1"): 10})
        request = pb.ReserveRequest(reservation_id="traced", lines=[line("L1", "S1", 1)])
        # no collector pass while traced: its callback (omnistock_gc_pause_seconds) runs
        # inside whatever frame allocated, and would look like that frame's call
        gc.disable()
        sys.setprofile(profiler)
        try:
            answer = await stubs.reservations.Reserve(request)
        finally:
            sys.setprofile(None)
            gc.enable()
    assert answer.reservation.state == pb.RESERVATION_STATE_HELD
    (task,) = {task for task, _, module in calls if module == "api.reservations"}
    assert _path(calls, task) == ["api", "usecases", "store", "usecases", "api"]
    assert _upward(calls) == []
    assert exchanges.count(task) == 1  # one round trip to Redis


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
