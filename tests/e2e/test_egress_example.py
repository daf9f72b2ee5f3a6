# End to end: conf/examples/egress (istio.io's "Egress Gateways" task YAML, unchanged) served by the real `edge run`
# with --gateway-labels istio=egressgateway. There is no internet here: edition.cnn.com is a loopback sample
# backend, through one ServiceEntry for the same host in a file that loads first (the first ServiceEntry of a host
# is the one used, as in Istio), with the task's port name; the example's own files are copied as they are.
from __future__ import annotations

import json

import pytest

from tests.e2e.harness import REPO_ROOT, EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

EXAMPLE = REPO_ROOT / "conf" / "examples" / "egress"


def test_egress_gateway_example_forwards_to_the_external_host(tmp_path):
    with SampleBackends(tmp_path / "backends", http=["cnn"]) as backends:
        loopback = (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cnn-on-loopback}\n"
            "spec:\n  hosts: [edition.cnn.com]\n  ports: [{number: 80, name: http-port, protocol: HTTP}]\n"
            f"  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http-port: {backends.port('cnn')}}}}}]\n"
        )
        config = {"00-loopback.yaml": loopback, **{p.name: p.read_text() for p in sorted(EXAMPLE.glob("*.yaml"))}}
        args = ("--gateway-labels", "istio=egressgateway")
        with EdgeProcess(tmp_path / "edge", config, gateway_ports=(80,), workers=1, extra_args=args) as edge:
            status, body, _ = http_get(edge.port(80), "/politics", host="edition.cnn.com")
            assert status == 200
            seen = json.loads(body)
            assert seen["instance"] == "cnn" and seen["path"] == "/politics"
            # Only the task's host is routed: the Gateway server exposes edition.cnn.com alone.
            assert http_get(edge.port(80), "/politics", host="other.example.com")[0] == 404
