"""A greeter for Meridian's proxyless gRPC tests, on grpcio (gRPC C-core).

    greeter.py serve NAME PORT
        Serves /greeter.Greeter/SayHello on 127.0.0.1:PORT, answering NAME.
    greeter.py call TARGET SECONDS [AUTHORITY]
        Calls SayHello on TARGET (`xds:///host:port` with GRPC_XDS_BOOTSTRAP set, or
        `host:port`) for SECONDS, one at a time, printing a JSON line per call:
        {"t": seconds since the first answer, "backend": NAME} or {"t": …, "error": CODE}.

Messages are raw bytes: no generated code, nothing but grpcio needed.
"""

import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/greeter.Greeter/SayHello"


def serve(name, port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("greeter.Greeter", {"SayHello": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def call(target, seconds, authority=None):
    options = [("grpc.default_authority", authority)] if authority else []
    channel = grpc.insecure_channel(target, options=options)
    say_hello = channel.unary_unary(METHOD)
    # The first call waits for the channel (xDS resolution, connections) to be ready.
    first = say_hello(b"", timeout=60, wait_for_ready=True)
    start = time.monotonic()
    print(json.dumps({"t": 0.0, "backend": first.decode()}), flush=True)
    while time.monotonic() - start < seconds:
        now = time.monotonic() - start
        try:
            answer = say_hello(b"", timeout=5)
            print(json.dumps({"t": round(now, 3), "backend": answer.decode()}), flush=True)
        except grpc.RpcError as error:
            print(json.dumps({"t": round(now, 3), "error": error.code().name,
                              "detail": error.details()}), flush=True)
    channel.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "call":
        call(sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        sys.exit(__doc__)
