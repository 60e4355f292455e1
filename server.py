"""omnistock server: `python server.py --help`."""

from __future__ import annotations

import signal

# SIGHUP's default action ends a process: until its handler is set (on_signals, before the
# auth file is first read, so a reload asked earlier has nothing to do), it is ignored, not
# only after the imports (the half second most of a start takes).
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import gc
import logging
import sys

import uvloop

from engine.app import create_server
from engine.logs import setup_logging
from engine.settings import from_args
from engine.workers import Workers, on_signals

log = logging.getLogger("omnistock")


async def serve(argv: list[str]) -> None:
    settings = from_args(argv)
    setup_logging(settings.log_level)
    if settings.workers > 1:
        await Workers(settings).run()
        return
    app = create_server(settings)
    # Signals are ours before the port listens. One that comes during the start is taken
    # after it (a stop) or finds the file read anyway (a reload).
    stop = on_signals(app.reload_auth)
    await app.start()
    # What start made lives as long as the process: out of the collector's sight, a full
    # collection walks only what came after (the read cache's rows), not every module.
    gc.freeze()
    host = settings.listen.rsplit(":", 1)[0]
    where = f"{host}:{app.port}"
    log.info("omnistock serving on %s", where)
    if settings.metrics_port:
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    print(
        f"\nomnistock is listening on {where}. Try:\n"
        f'  grpcurl -plaintext -d \'{{"skus": ["SKU-000001"], '
        f'"location_types": ["LOCATION_TYPE_DC"]}}\' \\\n'
        f"    {where} omnistock.v1.AvailabilityService/GetAvailability\n",
        flush=True,
    )
    await stop.wait()
    log.info("shutting down: draining calls")
    await app.stop()
    log.info("stopped")


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1:]))
