"""The business in its own words: the model, its errors, who may do what, the sourcing
optimiser. Pure: no I/O, no Redis, no gRPC."""
