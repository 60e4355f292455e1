"""The Redis Streams adapter: store systems append stock events to a stream; this process
applies them through the server's StockService.StreamEvents, exactly once (consumer.py;
command.py is `python -m adapters.streams`).

    python -m adapters.streams [--stream omnistock:events] [--group omnistock]
                               [--consumer <host>] [--server 127.0.0.1:50051]

A consumer group delivers every entry at least once; the server's dedupe by event id makes
that exactly once. An entry is acknowledged (XACK) only after the server has answered for it
(applied, duplicate, stale or echo), so a consumer killed mid-batch leaves its entries
pending, and they are sent again: by itself when it restarts under the same name (it reads
its own pending entries first), or by another consumer of the group once they have been
idle for --claim-idle-ms (XAUTOCLAIM). The server then answers DUPLICATE for what it had
applied already.

An entry that can never be applied goes to the dead-letter stream `<stream>:dead` with the
reason, and is acknowledged, so it does not block the rest: one that is not a stock event
(adapters/config.py lists the fields), one the server rejects (a bad field, an unknown
location), and one delivered --max-deliveries times without ever being answered. While the
server or Redis cannot be reached nothing is acknowledged; the adapter retries with backoff.

Metrics (127.0.0.1:9465): omnistock_streams_events_total{outcome},
omnistock_streams_dead_letters_total{reason}, omnistock_streams_errors_total{kind},
omnistock_streams_lag (entries not yet delivered to the group), omnistock_streams_pending
(delivered, not yet acknowledged), omnistock_streams_lag_seconds (age of the oldest entry
not yet delivered), omnistock_streams_batch_seconds.
"""
