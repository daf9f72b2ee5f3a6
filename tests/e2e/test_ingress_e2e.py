# End to end, Kubernetes Ingress: the real `edge run` (one process for the module) serving an Ingress of class
# istio, with its backends as ServiceEntries on loopback sample backends: path types as Istio converts them, TLS by
# tls.secretName through the credentials directory, mixing with an Istio Gateway and VirtualService, and a reload
# that changes the Ingress.
from __future__ import annotations

import json
import socket
import ssl

import pytest
import trustme

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get, recv_until_eof

pytestmark = pytest.mark.e2e

INGRESS_CLASS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: istio
spec:
  controller: istio.io/ingress-controller
"""

# As the istio.io "Kubernetes Ingress" task writes it, with a second path type and a TLS entry.
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ingress
spec:
  ingressClassName: istio
  tls:
  - hosts: [httpbin.example.com]
    secretName: httpbin-credential
  rules:
  - host: httpbin.example.com
    http:
      paths:
      - path: /status
        pathType: Prefix
        backend:
          service:
            name: httpbin
            port:
              number: 8000
      - path: /exact
        pathType: Exact
        backend:
          service:
            name: other
            port:
              number: 8000
      - path: /legacy/*
        pathType: ImplementationSpecific
        backend:
          service:
            name: other
            port:
              name: http
"""

ISTIO = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [istio.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs
spec:
  hosts: [istio.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: other.default.svc.cluster.local, port: {number: 8000}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingress")
    ca = trustme.CA()
    leaf = ca.issue_cert("httpbin.example.com")
    creds = root / "credentials" / "httpbin-credential"
    creds.mkdir(parents=True)
    leaf.cert_chain_pems[0].write_to_path(str(creds / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(creds / "tls.key"))
    with SampleBackends(root / "backends", http=["httpbin", "other"]) as backends:
        config = {
            "class.yaml": INGRESS_CLASS,
            "ingress.yaml": INGRESS,
            "istio.yaml": ISTIO,
            "services.yaml": backends.service_entry("httpbin.default.svc.cluster.local", ["httpbin"], port=8000)
            + "---\n"
            + backends.service_entry("other.default.svc.cluster.local", ["other"], port=8000),
        }
        args = ("--credentials-dir", str(root / "credentials"))
        with EdgeProcess(root / "edge", config, gateway_ports=(80, 443), extra_args=args) as edge:
            yield edge, ca


def served_by(edge, path: str, host: str = "httpbin.example.com") -> tuple[int, str]:
    status, body, _ = http_get(edge.port(80), path, host=host)
    return status, json.loads(body)["instance"] if status == 200 else ""


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/status/200", (200, "httpbin")),
        ("/status", (200, "httpbin")),
        ("/statusx", (404, "")),  # Prefix is path-separated for Ingress (Istio's route semantics)
        ("/exact", (200, "other")),
        ("/exact/x", (404, "")),
        ("/legacy/a/b", (200, "other")),  # "x/*" is a prefix; the named port resolves through the ServiceEntry
        ("/headers", (404, "")),
    ],
)
def test_ingress_paths(setup, path, expected):
    edge, _ = setup
    assert served_by(edge, path) == expected


def test_ingress_tls_secret_name_is_the_credential(setup):
    edge, ca = setup
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", edge.port(443)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="httpbin.example.com") as tls:
            tls.sendall(b"GET /status/200 HTTP/1.1\r\nHost: httpbin.example.com\r\nConnection: close\r\n\r\n")
            data = recv_until_eof(tls)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert b'"instance":"httpbin"' in data


def test_istio_resources_beside_the_ingress(setup):
    edge, _ = setup
    assert served_by(edge, "/anything", host="istio.example.com") == (200, "other")


def test_reload_changes_the_ingress(setup):
    edge, _ = setup
    changed = INGRESS.replace("path: /status\n", "path: /moved\n")
    edge.write_config("ingress.yaml", changed)
    try:
        assert "published" in edge.reload()
        assert served_by(edge, "/moved/1") == (200, "httpbin")
        assert served_by(edge, "/status/200") == (404, "")
    finally:
        edge.write_config("ingress.yaml", INGRESS)
        edge.reload()
    assert served_by(edge, "/status/200") == (200, "httpbin")
