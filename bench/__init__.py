"""bench: load tests over real gRPC, reference points measured in the same run, and charts."""
