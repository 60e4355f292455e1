"""gRPC: the rpc decorator, pb and domain conversion, the servicers, the edge (who calls,
what they may do) and the listener. Only this package and engine/client.py import grpc."""
