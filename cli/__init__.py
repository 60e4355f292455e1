"""`omnistock`, the operators' command line: what an operator looks at and mends in a running
server, over gRPC with the same auth as any client (OperatorService, and the calls of
ReservationService and StockService it needs).

    omnistock row LOCATION SKU          a row's every field, and its holds by reservation
    omnistock reservation ID            state, expiry, lines
    omnistock location ID               its fields, its rows and held reservations
    omnistock sources                   each source of stock events: its lag and clock
    omnistock alerts [--after ID] [--limit N] [--follow [--follow-seconds S]]
    omnistock dead-letters list [--from ORIGIN] [--reason TEXT] [--after ID] [--limit N]
    omnistock dead-letters replay [--from ORIGIN] [--reason TEXT] [--dry-run]
    omnistock count FILE --location L --counted-at WHEN ...     (python -m adapters.counts)

Every command takes --server HOST:PORT (127.0.0.1:50051), a bearer token from --token-file
or OMNISTOCK_TOKEN, TLS with --tls / --tls-ca PATH (and --tls-cert/--tls-key for mutual
TLS); all but count take --json (one JSON document, a list as an array; field names as in
the proto) and --timeout SECONDS (a call's limit, 10).

Exit codes: 0 ok; 1 the server could not be reached, or failed the call (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, ...); 2 bad input: the command line, or INVALID_ARGUMENT;
3 something left undone: dead letters still bad, stale count lines; 4 NOT_FOUND;
5 UNAUTHENTICATED or PERMISSION_DENIED; 130 Ctrl-C. `count` exits as adapters.counts does
(1 for any refusal by the server).

    main.py     the flags, errors and exit codes
    views.py    rows, reservations, locations, sources, alerts (band crossings as lines)
    letters.py  dead letters: list, replay
    show.py     JSON, tables, times
"""
