"""Prometheus metrics, in their own registry so several servers can live in one process."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # (method, code) -> its latency histogram: labels() costs more than the observe
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self.rpc_seconds = Histogram(
            "omnistock_rpc_seconds",
            "gRPC request latency by method and status code",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.holds = Counter(
            "omnistock_holds_total",
            "Hold outcomes: held (or a retried id's hold), short (not enough stock), full (a "
            "plan's location has no pick capacity left today), limited (a customer past a "
            "per-customer limit)",
            ["outcome"],
            registry=r,
        )
        self.commits = Counter("omnistock_commits_total", "Reservations committed", registry=r)
        self.releases = Counter("omnistock_releases_total", "Reservations released", registry=r)
        self.expiries = Counter(
            "omnistock_expiries_total", "Reservation parts expired by the sweeper", registry=r
        )
        self.returns = Counter(
            "omnistock_returns_total",
            "RecordReturn calls by outcome: recorded, replayed, already_exists, over_bought,"
            " not_committed, not_found",
            ["outcome"],
            registry=r,
        )
        self.returned_units = Counter(
            "omnistock_returned_units_total",
            "Units returned by customers, by the state they landed in (returned, sellable)",
            ["state"],
            registry=r,
        )
        self.shortages = Counter(
            "omnistock_shortages_total",
            "Rows left short: a count or delta dropped on_hand below what is held",
            registry=r,
        )
        self.band_crossings = Counter(
            "omnistock_band_crossings_total",
            "Rows that crossed into a lower stock band (LOW, OUT) for a channel, put on the "
            "alerts stream by this process (each crossing by one process only)",
            ["status"],
            registry=r,
        )
        self.band_detector = Gauge(
            "omnistock_band_detector",
            "This process's part in finding band crossings: 2 the detector (it holds the "
            "lease), 1 its standby, 0 neither (--no-band-alerts, or another two have them)",
            registry=r,
        )
        self.sequence_gaps = Counter(
            "omnistock_sequence_gaps_total",
            "Gaps in a numbered source's events still open --sequence-gap-grace-seconds after "
            "they opened (each reported once, in the log with its source, location and range)",
            registry=r,
        )
        self.clock_skewed_events = Counter(
            "omnistock_clock_skewed_events_total",
            "Stock events from a source whose clock is off by more than --max-clock-skew-seconds "
            "(ahead; or behind, or sending that late): the log and the alerts name the source",
            ["clock"],
            registry=r,
        )
        self.sequence_missing = Counter(
            "omnistock_sequence_missing_total",
            "Event numbers in those gaps",
            registry=r,
        )
        self.events = Counter(
            "omnistock_stock_events_total",
            "Stock events by outcome (applied, duplicate, stale, echo, rejected)",
            ["outcome"],
            registry=r,
        )
        self.moves = Counter(
            "omnistock_moves_total",
            "MoveLine outcomes: moved, short (the destination could not hold the line), "
            "retried (a move id already used for this move)",
            ["outcome"],
            registry=r,
        )
        self.sagas_recovered = Counter(
            "omnistock_sagas_recovered_total",
            "Cross-location steps finished or rolled back by recovery (rolled_back, "
            "committed, released; moved, move_rolled_back)",
            ["action"],
            registry=r,
        )
        self.allocations = Counter(
            "omnistock_allocations_total",
            "Allocate outcomes: planned (no hold asked), held, unfilled (some units could "
            "not be planned, nothing held), not_held (stock kept moving under every plan)",
            ["outcome"],
            registry=r,
        )
        self.replans = Counter(
            "omnistock_replans_total",
            "Allocate plans made again because stock or pick capacity moved before the hold",
            registry=r,
        )
        self.watchers = Gauge(
            "omnistock_watchers", "WatchAvailability streams open on this process", registry=r
        )
        self.event_streams = Gauge(
            "omnistock_event_streams", "StreamEvents streams open on this process", registry=r
        )
        self.redis_up = Gauge(
            "omnistock_redis_up",
            "1 while the health probe finds Redis up, 0 while it finds it down "
            "(engine/store/probe.py)",
            registry=r,
        )
        self.ingest_paced = Counter(
            "omnistock_ingest_paced_seconds_total",
            "Seconds stock events and count lines were held back, their principal being over "
            "--ingest-rate (summed over the calls held)",
            registry=r,
        )
        self.request_bytes_paced = Counter(
            "omnistock_request_bytes_paced_seconds_total",
            "Seconds unary calls were held back before their servicer ran, their principal "
            "being over --request-bytes-rate (summed over the calls held)",
            registry=r,
        )
        self.redis_nodes_down = Gauge(
            "omnistock_redis_nodes_down",
            "On a Redis Cluster: primaries the health probe found down (health stays SERVING "
            "while any answers; their slots' calls fail UNAVAILABLE)",
            registry=r,
        )
        self.refused = Counter(
            "omnistock_refused_total",
            "Calls refused at the edge, by why (unauthenticated, permission, rate, streams)",
            ["reason"],
            registry=r,
        )
        self.store_restarts = Counter(
            "omnistock_store_restarts_total",
            "Times the embedded store died and was started again on the same data",
            registry=r,
        )
        self.read_cache_reads = Counter(
            "omnistock_read_cache_reads_total",
            "Stock rows read by GetAvailability and FindNearby, by where they came from: hit "
            "(this process's cache), filled (Redis, then kept), fallback (Redis: the "
            "location is not in sync, its feed is late, or the cache is off)",
            ["result"],
            registry=r,
        )
        self.read_cache_resyncs = Counter(
            "omnistock_read_cache_resyncs_total",
            "Locations dropped from the read cache by a gap in their feed, to be read from "
            "Redis and subscribed again: gap (a connection lost, out of step or silent), "
            "flush (the store's epoch key changed)",
            ["reason"],
            registry=r,
        )
        self.read_cache_evictions = Counter(
            "omnistock_read_cache_evictions_total",
            "Locations dropped from the read cache to stay within --read-cache-rows",
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "omnistock_gc_pause_seconds",
            "Passes of the garbage collector, by generation (2: full), and how long each "
            "stopped the process",
            ["generation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.read_cache_rows = Gauge(
            "omnistock_read_cache_rows", "Stock rows kept by the read cache", registry=r
        )
        self.read_cache_locations = Gauge(
            "omnistock_read_cache_locations",
            "Locations the read cache follows (subscribed)",
            registry=r,
        )

        self.network_rows = Counter(
            "omnistock_network_rows_total",
            "Rows summed by GetNetworkAvailability, by where their figure came from: kept "
            "(this process's network view), read (Redis: new, changed, or its feed late)",
            ["result"],
            registry=r,
        )
        self.network_view_rows = Gauge(
            "omnistock_network_view_rows",
            "Figures (a location's row, for a network and channel) kept by the network view",
            registry=r,
        )
        self.future_holds = Counter(
            "omnistock_future_holds_total",
            "Units held against future supply (a Reserve line's promise_by), by outcome: "
            "converted (held on hand when supply came), broken (no supply covers them by their "
            "date any more)",
            ["outcome"],
            registry=r,
        )
        self.supply = Counter(
            "omnistock_supply_total",
            "Supplies set by UpsertSupply, by kind (purchase_order, asn, transfer, cancel or "
            "received) and outcome (created, updated, unchanged, cancelled, received)",
            ["kind", "outcome"],
            registry=r,
        )
        self.transfers = Counter(
            "omnistock_transfers_total",
            "Transfer steps by step (create, ship, receive, cancel) and outcome (done: made "
            "now; again: a retry of one made; short: not enough stock to ship; refused: "
            "the transfer's state forbids it; discrepancy: received other than shipped)",
            ["step", "outcome"],
            registry=r,
        )

    def follow_gc(self) -> Callable[[], None]:
        """Times every pass of the garbage collector, by generation (the event loop stops
        for each: a full pass over a big heap is a latency spike every call under way
        feels). Answers the function that stops it (once or more)."""
        passes = [self.gc_pause_seconds.labels(str(gen)) for gen in range(3)]
        started = 0.0

        def timed(phase: str, info: dict[str, int]) -> None:
            nonlocal started
            if phase == "start":
                started = time.perf_counter()
            else:
                passes[info["generation"]].observe(time.perf_counter() - started)

        def stop() -> None:
            if timed in gc.callbacks:
                gc.callbacks.remove(timed)

        gc.callbacks.append(timed)
        return stop

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[(method, code)] = self.rpc_seconds.labels(method, code)
        child.observe(seconds)
