"""Reference points for bench/: what omnistock's figures are measured against, each run as
`python -m bench.peers <name>` (see bench/README.md).

    raw-redis            the engine's hold script and plain GET / HINCRBY, driven straight at
                         a private Redis-compatible server: the raw limit
    storage-flash-sale   the flash sale through omnistock's storage layer (Reservations over
                         Storage, no gRPC) on a private Redis-compatible server
    postgres-flash-sale  the same flash sale through a row-locking PostgreSQL storage layer
                         (SELECT ... FOR UPDATE, as Saleor does) on a private PostgreSQL
    flash-sale-ratio     both flash sales in one run, one after the other, and their ratio

Every peer starts its own private server on a loopback port, stops and deletes it at the end,
prints a one-line summary and writes its result as JSON into bench/out/.
"""
