#!/usr/bin/env python3
"""Copies the Envoy API protos Meridian renders as JSON from the envoy-types crate.

envoy-types ships compiled Rust types for every Envoy proto but exposes no descriptor set, so
build.rs compiles one with protox from the .proto files copied here, unmodified. Only the roots
below and what they import are copied. Run after changing the envoy-types version in Cargo.toml
(it is pinned exactly so that the Rust types and these files cannot drift apart):

    python3 proto/envoy-api/vendor.py
"""

import json
import os
import re
import shutil
import subprocess
import sys

# Messages Meridian serves or reads, and what they may carry inside an `Any`.
ROOTS = [
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/udp/udp_proxy/v3/route.proto",
    "envoy/extensions/filters/udp/udp_proxy/v3/udp_proxy.proto",
    "envoy/extensions/transport_sockets/proxy_protocol/v3/upstream_proxy_protocol.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/load_stats/v3/lrs.proto",
]

# Include roots inside the crate's proto/ directory. google/protobuf/* is built into protox.
INCLUDES = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis", "cel-spec"]

IMPORT = re.compile(r'^import (?:public |weak )?"([^"]+)";', re.M)


def envoy_types_dir(repo):
    metadata = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--locked"], cwd=repo
        )
    )
    for package in metadata["packages"]:
        if package["name"] == "envoy-types":
            return os.path.dirname(package["manifest_path"]), package["version"]
    sys.exit("envoy-types is not a dependency")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    crate, version = envoy_types_dir(repo)
    includes = [os.path.join(crate, "proto", d) for d in INCLUDES]

    def locate(name):
        for include in includes:
            path = os.path.join(include, name)
            if os.path.exists(path):
                return path
        return None

    found, pending = {}, list(ROOTS)
    while pending:
        name = pending.pop()
        if name in found or name.startswith("google/protobuf/"):
            continue
        path = locate(name)
        if path is None:
            sys.exit(f"{name} is not in envoy-types {version}")
        found[name] = path
        with open(path, encoding="utf-8") as f:
            pending.extend(IMPORT.findall(f.read()))

    for entry in os.listdir(here):
        if os.path.isdir(os.path.join(here, entry)):
            shutil.rmtree(os.path.join(here, entry))
    for name, path in sorted(found.items()):
        target = os.path.join(here, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
    with open(os.path.join(here, "VERSION"), "w", encoding="utf-8") as f:
        f.write(f"envoy-types {version}\n")
    with open(os.path.join(here, "ROOTS"), "w", encoding="utf-8") as f:
        f.write("\n".join(ROOTS) + "\n")
    print(f"copied {len(found)} protos from envoy-types {version}")


if __name__ == "__main__":
    main()
