"""The webhook receiver: Shopify, Square and Lightspeed (X-Series) push stock changes here, and
each delivery whose signature checks out becomes stock events on the ingest stream, written
durably before the platform gets its answer.

    shopify.py, square.py,  each platform's signature and payloads -> stock events (pure)
    lightspeed.py
    payloads.py             what they have in common (pure)
    writer.py               the durable write to the stream (MULTI/EXEC, then WAITAOF)
    receiver.py             the HTTP side (aiohttp): routes, answers, metrics
    command.py              `python -m adapters.webhooks`: flags, environment, serving
"""
