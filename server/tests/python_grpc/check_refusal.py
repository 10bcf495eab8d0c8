"""A gRPC client past max_connections, as grpcio reports it: with ferroserve's max_connections=1 and one
connection held open, a call on a second connection fails with UNAVAILABLE and ferroserve's message (not a
protocol error), and the first connection keeps working.

Usage: check_refusal.py GRPC_HOST_PORT
"""

import sys

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

ADDR = sys.argv[1]


def check(condition, what):
    if not condition:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def stub():
    # A channel of its own: grpcio would otherwise share one connection between channels to the same address.
    channel = grpc.insecure_channel(ADDR, options=[("grpc.use_local_subchannel_pool", 1)])
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


first = stub()
check(first.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live, "the first connection is served")
try:
    stub().ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
    sys.exit("FAIL: a second connection past max_connections=1 was served")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.UNAVAILABLE and "too many open connections" in (e.details() or ""),
          f"a second connection is refused UNAVAILABLE: {e.code()} {e.details()}")
check(first.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live, "the first connection still works")
print("all refusal checks passed")
