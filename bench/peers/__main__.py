"""python -m bench.peers <name> [options]: the reference points; see bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

from bench.__main__ import machine
from bench.peers import flash_sale, raw_redis
from bench.peers.common import Peer, install_event_loop
from bench.peers.postgres import PostgresMissing

PEERS: dict[str, Peer] = {peer.name: peer for peer in (*raw_redis.PEERS, *flash_sale.PEERS)}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    names = p.add_subparsers(dest="peer", required=True, metavar="name")
    for peer in PEERS.values():
        sub = names.add_parser(
            peer.name,
            help=peer.help,
            description=peer.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        peer.add_arguments(sub)
        sub.add_argument("--out", type=Path, default=Path("bench/out"), help="where results go")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    peer = PEERS[args.peer]
    loop = install_event_loop()
    try:
        result = peer.run(args)
    except PostgresMissing as exc:
        print(f"{peer.name}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"{peer.name}: interrupted; private servers stopped, nothing written", file=sys.stderr
        )
        return 130
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {
        "peer": peer.name,
        "command": shlex.join(["python", "-m", "bench.peers", *argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine() | {"event_loop": loop},
        "config": config,
        "result": result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"peer-{peer.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(peer.summary(result))
    print("results:", path)
    return 0 if peer.ok(result) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
