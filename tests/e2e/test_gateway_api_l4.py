# End to end, Kubernetes Gateway API over TCP and TLS: TCPRoute and TLSRoute conformance tests
# (kubernetes-sigs/gateway-api conformance/tests/tcproute-*.yaml, tlsroute-*.yaml copied unchanged into
# tests/e2e/gateway_api/ but for {GATEWAY_CLASS_NAME} → istio; expectations from the matching .go files).
#
# - One `edge run` for the module, every Gateway port of these cases mapped to a loopback port; each test loads its
#   case and reloads. The suite's Service/Deployment documents in the cases are skipped by edge (not a kind it
#   serves); the Services are ServiceEntries here: TCP `<name>.<ns>.svc.cluster.local:3000` → a sample backend's
#   TCP echo (it greets with its name, then echoes), TLS `tls-backend[-2]...:443` → a sample backend's HTTPS
#   listener (certificate for abc.example.com and other.example.com), reached by SNI passthrough.
# - tlsroute-hostname-intersection puts four Gateways on port 443, each its own address in a cluster; one process
#   has one port 443, so the test loads one Gateway with its routes at a time.
# - Status conditions are read from `edge check`'s report.
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import EdgeProcess, SampleBackends

pytestmark = pytest.mark.e2e

CASES = Path(__file__).parent / "gateway_api"
INFRA = "gateway-conformance-infra"
WEB = "gateway-conformance-web-backend"
TCP_PORTS = (9300, 9301, 9302, 9310, 9311, 9312, 9313, 9320, 9321)
# (namespace, Service) of the TCP echo backends the cases name; the sample backend's name is the Service's.
TCP_SERVICES = [(INFRA, n) for n in ("tcp-backend-v1", "tcp-backend-v2", "tcp-backend-v3", "tcp-echo-one", "tcp-echo-two", "tcp-echo-three", "tcp-echo-attach-all")]
TCP_SERVICES.append((WEB, "tcp-reference-grant-backend"))
TLS_SERVICES = ["tls-backend", "tls-backend-2"]


def _service_entry(backends: SampleBackends, host: str, name: str, port: int, protocol: str) -> str:
    return backends.service_entry(host, [name], port=port, protocol=protocol, resource_name=host.replace(".", "-"))


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-api-l4")
    ca = trustme.CA()
    leaf = ca.issue_cert("abc.example.com", "other.example.com")
    cert, key = root / "tls.crt", root / "tls.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    tcp = sorted({name for _, name in TCP_SERVICES})
    with SampleBackends(root / "backends", tcp=tcp, https=TLS_SERVICES, tls_cert=cert, tls_key=key) as backends:
        services = [_service_entry(backends, f"{n}.{ns}.svc.cluster.local", n, 3000, "TCP") for ns, n in TCP_SERVICES]
        services += [_service_entry(backends, f"{n}.{INFRA}.svc.cluster.local", n, 443, "TLS") for n in TLS_SERVICES]
        config = {"services.yaml": "---\n".join(services), "case.yaml": "# no case yet\n"}
        with EdgeProcess(root / "edge", config, gateway_ports=(443, *TCP_PORTS)) as process:
            process.ca = ca
            yield process


def load(edge: EdgeProcess, text: str) -> None:
    edge.write_config("case.yaml", text)
    outcome = edge.reload()
    assert "published" in outcome or "unchanged" in outcome, outcome


def case_text(name: str) -> str:
    return (CASES / f"{name}.yaml").read_text()


def tcp_backend(edge: EdgeProcess, port: int) -> str | None:
    """The name the TCP echo backend greets with, after echoing a line; None when the gateway closes at once."""
    try:
        with socket.create_connection(("127.0.0.1", edge.port(port)), timeout=5) as sock:
            sock.sendall(b"ping\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:  # reset, not connected, refused: the gateway closed the connection at once
        return None
    if not data:
        return None
    name, _, echoed = data.decode().partition("\n")
    assert echoed == "ping\n", data
    return name


def tls_backend(edge: EdgeProcess, sni: str) -> str | None:
    """The backend instance that answers an HTTPS request with this SNI through port 443, None when refused."""
    context = ssl.create_default_context()
    edge.ca.configure_trust(context)
    try:
        with socket.create_connection(("127.0.0.1", edge.port(443)), timeout=5) as raw, context.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError):
        return None
    if not data:
        return None
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return "tls-backend-2" if b'"tls-backend-2"' in data else "tls-backend" if b'"tls-backend"' in data else data.decode()


def check_report(tmp_path: Path, text: str, ok: bool = True) -> str:
    (tmp_path / "case.yaml").write_text(text)
    services = [
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {n}-{ns}\nspec:\n  hosts: [{n}.{ns}.svc.cluster.local]\n"
        f"  resolution: STATIC\n  ports: [{{number: 3000, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1}}]\n"
        for ns, n in TCP_SERVICES
    ]  # fmt: skip
    (tmp_path / "services.yaml").write_text("---\n".join(services))
    result = subprocess.run([sys.executable, "-m", "edge", "check", "-v", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == (0 if ok else 1), result.stderr
    return result.stderr


# ----------------------------------------------------------------------------------------------- TCPRoute


def test_tcproute_weighted_routing(edge):
    """conformance/tests/tcproute-weighted-routing.go (TCPRouteWeightedRouting): 70/30/0 by connection."""
    load(edge, case_text("tcproute-weighted-routing"))
    counts = {"tcp-backend-v1": 0, "tcp-backend-v2": 0, "tcp-backend-v3": 0}
    for _ in range(100):
        counts[tcp_backend(edge, 9300)] += 1
    assert counts["tcp-backend-v3"] == 0
    assert 50 <= counts["tcp-backend-v1"] <= 88 and 12 <= counts["tcp-backend-v2"] <= 50, counts


def test_tcproute_parentref_port_and_section_name(edge):
    """conformance/tests/tcproute-parentref-port-and-section-name.go (TCPRouteParentRefPortAndSectionName)."""
    load(edge, case_text("tcproute-parentref-port-and-section-name"))
    assert [tcp_backend(edge, p) for p in (9300, 9301, 9302)] == ["tcp-echo-one", "tcp-echo-two", "tcp-echo-three"]


def test_tcproute_parentref_attach_all(edge):
    """conformance/tests/tcproute-parentref-attach-all.go (TCPRouteParentRefAttachAll): no sectionName or port,
    every listener of the Gateway."""
    load(edge, case_text("tcproute-parentref-attach-all"))
    assert [tcp_backend(edge, p) for p in (9310, 9311, 9312, 9313)] == ["tcp-echo-attach-all"] * 4


def test_tcproute_reference_grant(edge, tmp_path):
    """conformance/tests/tcproute-reference-grant.go (TCPRouteReferenceGrant): granted, the connection reaches the
    backend in the other namespace; with the grant deleted, RefNotPermitted and the connection is closed."""
    text = case_text("tcproute-reference-grant")
    load(edge, text)
    assert tcp_backend(edge, 9320) == "tcp-reference-grant-backend"
    without = "\n---\n".join(d for d in text.split("\n---\n") if "kind: ReferenceGrant" not in d)
    load(edge, without)
    assert tcp_backend(edge, 9320) is None
    assert "ResolvedRefs=False (RefNotPermitted): backendRef gateway-conformance-web-backend/tcp-reference-grant-backend" in check_report(tmp_path, without)


# conformance/tests/<case>.go: the reason edge check reports (the connection, where there is a listener, is closed).
TCP_CONDITIONS = {
    "tcproute-invalid-backendref-nonexistent": (9300, "ResolvedRefs=False (BackendNotFound): Service gateway-conformance-infra/nonexistent-service not found"),
    "tcproute-invalid-cross-namespace-backend-ref": (9321, "ResolvedRefs=False (RefNotPermitted): backendRef gateway-conformance-web-backend/tcp-invalid-xns-backend"),
    "tcproute-invalid-non-tcp-listener": (None, "Accepted=False (NotAllowedByListeners): no listener of Gateway tcp-mixed-protocol-gateway allows a TCPRoute"),
}


@pytest.mark.parametrize("case", list(TCP_CONDITIONS))
def test_tcproute_conditions(edge, tmp_path, case):
    port, reason = TCP_CONDITIONS[case]
    report = check_report(tmp_path, case_text(case))
    assert reason in report, report
    if port is not None:
        load(edge, case_text(case))
        assert tcp_backend(edge, port) is None
    else:
        assert "listener only-allow-http-routes: AttachedRoutes=0" in report


# ----------------------------------------------------------------------------------------------- TLSRoute

# conformance/tests/tlsroute-hostname-intersection.go (TLSRouteHostnameIntersection): per Gateway, SNI → backend.
TLS_INTERSECTION = {
    "gw-tlsroute-exact-hostname-x-1": [("abc.example.com", "tls-backend"), ("non.matching.com", None)],
    "gw-tlsroute-more-specific-wc-hostname-x-2": [("abc.example.com", "tls-backend"), ("other.example.com", "tls-backend-2"), ("non.matching.com", None)],
    "gw-tlsroute-less-specific-wc-hostname-x-3": [("abc.example.com", "tls-backend"), ("other.example.com", "tls-backend-2"), ("non.matching.com", None)],
    "gw-tlsroute-empty-hostname-x-4": [("abc.example.com", "tls-backend"), ("other.example.com", "tls-backend-2"), ("non.matching.org", None)],
}


@pytest.mark.parametrize("gateway", list(TLS_INTERSECTION))
def test_tlsroute_hostname_intersection(edge, gateway):
    documents = case_text("tlsroute-hostname-intersection").split("\n---\n")
    load(edge, "\n---\n".join(d for d in documents if f"name: {gateway}\n" in d))
    for sni, expected in TLS_INTERSECTION[gateway]:
        assert tls_backend(edge, sni) == expected, sni


TLS_CONDITIONS = {
    "tlsroute-invalid-backendref-nonexistent": "ResolvedRefs=False (BackendNotFound)",
    "tlsroute-invalid-backendref-unknown-kind": "ResolvedRefs=False (InvalidKind)",
    "tlsroute-invalid-no-matching-listener-hostname": "Accepted=False (NoMatchingListenerHostname)",
    "tlsroute-invalid-no-matching-listener": "Accepted=False (NotAllowedByListeners)",
    "tlsroute-invalid-reference-grant": "ResolvedRefs=False (RefNotPermitted)",
}


@pytest.mark.parametrize("case", list(TLS_CONDITIONS))
def test_tlsroute_conditions(edge, tmp_path, case):
    """conformance/tests/<case>.go: the route's condition as edge check reports it, and a TLS connection for the
    route's hostname is refused (closed) where the case has a passthrough listener."""
    # tlsroute-invalid-no-matching-listener's HTTPS-only and passthrough-only Gateways both want port 443's `*`:
    # separate addresses in a cluster, one port in one process, which edge check refuses (the only error).
    many = case == "tlsroute-invalid-no-matching-listener"
    report = check_report(tmp_path, case_text(case), ok=not many)
    assert TLS_CONDITIONS[case] in report, report
    if many:
        assert "Accepted=False (NoMatchingParent)" in report
        assert [line for line in report.splitlines() if ": warning: " not in line and ": note: " not in line] == [
            next(line for line in report.splitlines() if "duplicate TLS host names ['*'] on port 443" in line)
        ]
    if case in ("tlsroute-invalid-backendref-nonexistent", "tlsroute-invalid-backendref-unknown-kind"):
        load(edge, case_text(case))
        assert tls_backend(edge, "abc.example.com") is None
