"""A few-second smoke run of every bench scenario, so bench/ keeps working. It asserts that
the run completes, measures something and keeps the invariants; never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS
from engine.store.loopback import free_port

SMALL = {  # a small data set for each scenario that seeds one
    "storefront": ["--param", "stores=3"],
    "pos": ["--param", "stores=3"],
    "mixed": ["--param", "stores=3"],
    "nearby": ["--param", "stores=100", "--param", "skus=20"],
    "networks": ["--param", "members=5", "--param", "skus=60", "--param", "writes=0.2"],
    "returns": ["--param", "stores=3"],
    "preorder": ["--param", "stores=2", "--param", "skus=5"],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_runs_and_keeps_the_invariants(
    scenario: str, project_root: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "bench", scenario, "--duration", "1.5", "--concurrency", "8",
        "--channels", "2", *SMALL.get(scenario, []),
        "--out", str(tmp_path), *(["--no-charts"] if scenario != "pos" else []),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["load"]["requests"] > 0
    assert result["load"]["errors"] == 0, result["load"]["outcomes"]
    if scenario != "grpc-floor":
        assert result["invariants"]["reserved_equals_held"]
        assert result["invariants"]["no_oversell"]
    if scenario == "pos":
        assert len(list(tmp_path.glob("*.png"))) == 2


def test_memory_and_curves_commands_run(project_root: Path, tmp_path: Path) -> None:
    memory = [sys.executable, "-m", "bench.memory", "--rows", "4000", "--out", str(tmp_path)]
    done = subprocess.run(memory, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    (measured,) = json.loads(next(tmp_path.glob("memory-*.json")).read_text())["results"]
    assert 0 < measured["bytes_per_row"] <= 64
    curves = [sys.executable, "-m", "bench.curves", "concurrency", "--scenario", "pos"]
    curves += ["--levels", "1", "4", "--duration", "1", "--out", str(tmp_path)]
    done = subprocess.run(curves, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    points = json.loads(next(tmp_path.glob("curve-*.json")).read_text())["points"]
    assert [p["level"] for p in points] == [1, 4]
    assert all(p["invariants"]["reserved_equals_held"] for p in points)


def test_the_network_listing_curve_runs(project_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.networks", "--members", "3", "6", "--skus", "60"]
    command += ["--duration", "1", "--warmup", "0.5", "--baseline", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    points = json.loads(next(tmp_path.glob("networks-*.json")).read_text())["points"]
    assert [p["members"] for p in points] == [3, 6]
    assert all(p["errors"] == 0 and p["one_store"]["errors"] == 0 for p in points)


def test_the_nearby_curve_and_the_geo_comparison_run(project_root: Path, tmp_path: Path) -> None:
    curves = [sys.executable, "-m", "bench.curves", "stores", "--scenario", "nearby"]
    curves += ["--levels", "60", "120", "--param", "skus=20", "--duration", "1"]
    curves += ["--concurrency", "4", "--out", str(tmp_path)]
    done = subprocess.run(curves, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    points = json.loads(next(tmp_path.glob("curve-*.json")).read_text())["points"]
    assert [p["level"] for p in points] == [60, 120] and all(p["p50_ms"] > 0 for p in points)
    geo = [sys.executable, "-m", "bench.geo", "--stores", "200", "--queries", "50"]
    done = subprocess.run(
        [*geo, "--out", str(tmp_path)], cwd=project_root, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (measured,) = json.loads(next(tmp_path.glob("geo-*.json")).read_text())["results"]
    # both ways find the same stores (a store within a metre of the edge may differ)
    assert measured["candidates_mean"] > 0 and measured["same_ids_share"] >= 0.9


def test_the_sourcing_comparison_runs_every_strategy(project_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.sourcing", "--orders", "200", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("sourcing-*.json")).read_text())
    names = {"omnistock", "priority", "distance", "fewest_splits", "most_stock"}
    assert set(result["strategies"]) == names
    for figures in result["strategies"].values():
        assert figures["orders"] == 200 and figures["total_cost"] > 0
    # the optimiser is checked against the exhaustive optimum on the small orders
    gap = result["exhaustive"]
    assert gap["orders"] > 0 and gap["omnistock_fills_fewer_units"] == 0
    assert gap["cost_ratio_max"] == pytest.approx(1.0)


def test_the_bounded_search_gap_is_measured(project_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.search_gap", "--orders", "5", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("search-gap-*.json")).read_text())
    # the bounded plan is never cheaper than the exact one
    assert result["orders"] == 5 and result["cost_ratio_mean"] >= 1.0 - 1e-9


def test_every_ingest_path_is_measured_and_applies_each_event_once(
    project_root: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "bench.ingest", "--events", "2000", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("ingest-*.json")).read_text())["results"]
    assert set(result) == {"apply", "stream", "streams", "webhooks", "count"}
    assert all(r["every_event_applied_once"] and r["events_per_s"] > 0 for r in result.values())


def test_the_abuse_run_probes_the_server_and_records_what_the_abuse_got(
    project_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "abuse.json"
    command = [
        sys.executable, "-m", "bench.abuse", "--data", "small", "--scale", "0.001",
        "--seconds", "1", "--clients", "1", "--rate", "10",
        "--scenarios", "unknown-locations", "reconcile", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"unknown-locations", "reconcile"}
    for r in results.values():
        assert all(p["count"] > 0 for p in r["probes"].values())
        assert r["rss_mb"]["peak"] > 0
    # the location ids are unknown: refused; the count never ends: still open at the end
    assert results["unknown-locations"]["abuse"]["statuses"].get("INVALID_ARGUMENT", 0) > 0
    assert results["reconcile"]["abuse"]["statuses"] == {"open": 1}
    assert set(results["reconcile"]["phases"]) == {"sending", "held"}
    assert "| unknown-locations |" in done.stdout


def test_the_in_process_listing_cost_is_measured(project_root: Path) -> None:
    command = [sys.executable, "-m", "bench.handler", "--stores", "2", "--calls", "20"]
    command += ["--rounds", "2"]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "50 skus at 1 stores, in process: least" in done.stdout


def test_the_storefront_runs_against_the_answer_floor(project_root: Path, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    floor = [sys.executable, "-m", "bench.answer_floor", "--listen", listen]
    with subprocess.Popen(floor, cwd=project_root, stdout=subprocess.PIPE, text=True) as server:
        _storefront_against(server, listen, project_root, tmp_path)


def _storefront_against(
    server: subprocess.Popen[str], listen: str, project_root: Path, tmp_path: Path
) -> None:
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        command = [sys.executable, "-m", "bench", "storefront", "--target", listen]
        command += ["--duration", "1", "--no-charts", "--out", str(tmp_path)]
        done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        load = json.loads(next(tmp_path.glob("storefront-*.json")).read_text())["load"]
        assert load["requests"] > 0 and load["errors"] == 0, load["outcomes"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_receipts_command_runs(project_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.receipts", "--holds", "20", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    (measured,) = json.loads((tmp_path / "receipts.json").read_text())
    assert measured["holds"] == 20 and measured["receive_ms"] > 0
