"""What the engine does, in terms of the domain and the store: reservations, allocation,
ingest, locations and nearby search, the sweeper."""
