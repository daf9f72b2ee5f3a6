# End to end, TLS: the real `edge run` (2 workers) with certificates made by trustme, real sample backends,
# and real clients (curl with --resolve as the istio.io tasks do, Python ssl, openssl s_client).
#
# Covered: the istio.io task "Secure Gateways" (SIMPLE single host, certificate rotation, multiple hosts with
# their own certificates on one port, MUTUAL) with its YAML; SNI precedence (exact, wildcard, no SNI, unknown
# SNI); MUTUAL with subjectAltNames; OPTIONAL_MUTUAL; rotation of a Kubernetes-style credential folder mid-run
# (old connections keep working, new ones get the new certificate); the task "Ingress Gateway without TLS
# termination" (SNI passthrough) plus a second and a wildcard passthrough backend, each client seeing its
# backend's own certificate; terminating and passthrough servers on one port; protocol TLS + SIMPLE to a TCP
# route; garbage instead of a ClientHello; TLS origination (DestinationRule tls) with every SAN rule;
# httpsRedirect. The ClientHello/handshake deadline (Istio's 15 s) is specified in memory, on trio's autojump clock,
# by tests/workers/test_listeners.py.
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get
from workers.tls.contexts import ROTATION_CHECK_INTERVAL_S

pytestmark = pytest.mark.e2e

TIMEOUT_S = 5.0
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


# ---------------------------------------------------------------------------------------------------------
# Certificates: the task's example_certs1 (CA "example.com" with httpbin, helloworld and client certificates)
# and example_certs2 (another CA, another httpbin certificate).


class Pki:
    def __init__(self, root: Path):
        self.root = root
        self.ca1 = trustme.CA(organization_name="example Inc.")
        self.ca2 = trustme.CA(organization_name="example Inc.")
        self.ca1_file = self._write_ca(self.ca1, "example_certs1.crt")
        self.ca2_file = self._write_ca(self.ca2, "example_certs2.crt")
        self.both_file = root / "both.crt"
        self.both_file.write_bytes(self.ca1.cert_pem.bytes() + self.ca2.cert_pem.bytes())
        self.issued: dict[str, trustme.LeafCert] = {}

    def _write_ca(self, ca: trustme.CA, name: str) -> Path:
        path = self.root / name
        ca.cert_pem.write_to_path(str(path))
        return path

    def leaf(self, name: str, *identities: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """(cert, key) files for a certificate of `ca` (default ca1) covering the identities."""
        issued = (ca or self.ca1).issue_cert(*identities, common_name=identities[0])
        self.issued[name] = issued
        cert, key = self.root / f"{name}.crt", self.root / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


def install_credential(creds: Path, name: str, cert: Path, key: Path, ca: Path | None = None, *, version: int = 1) -> None:
    """A Kubernetes secret volume: files are symlinks into `..data`, itself a symlink to a versioned folder;
    an update writes a new folder and swaps `..data` atomically."""
    folder = creds / name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"..v{version}"
    data.mkdir()
    shutil.copy(cert, data / "tls.crt")
    shutil.copy(key, data / "tls.key")
    files = ["tls.crt", "tls.key"]
    if ca is not None:
        shutil.copy(ca, data / "ca.crt")
        files.append("ca.crt")
    tmp = folder / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, folder / "..data")
    for file in files:
        link = folder / file
        if not link.is_symlink():
            link.symlink_to(f"..data/{file}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.leaf("httpbin1", "httpbin.example.com")
    pki.leaf("httpbin2", "httpbin.example.com", ca=pki.ca2)
    pki.leaf("helloworld", "helloworld.example.com")
    pki.leaf("client", "client.example.com")
    pki.leaf("other-client", "other-client.example.com")
    pki.leaf("stranger", "client.example.com", ca=trustme.CA())
    pki.leaf("wild", "*.wild.example.com")
    pki.leaf("nginx", "nginx.example.com")
    pki.leaf("api", "api.example.com")
    pki.leaf("secure-backend", "secure.backend.example")
    return pki


# ---------------------------------------------------------------------------------------------------------
# Clients


def client_context(ca: Path | None, cert: tuple[Path, Path] | None = None, *, verify: bool = True, check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if not verify or not check_hostname:
        ctx.check_hostname = False
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class TLSClient:
    """One TLS connection to the gateway; HTTP/1.1 requests over it with http.client (keep-alive)."""

    def __init__(self, port: int, sni: str | None, ctx: ssl.SSLContext):
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        self.conn.sock = self.sock

    def peer(self) -> dict:
        return self.sock.getpeercert()

    def get(self, path: str, host: str) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Host": host})
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def https_get(port: int, sni: str | None, path: str = "/", *, host: str | None = None, ca: Path | None = None,
              cert: tuple[Path, Path] | None = None, verify: bool = True, check_hostname: bool = True) -> tuple[int, bytes, dict]:
    client = TLSClient(port, sni, client_context(ca, cert, verify=verify, check_hostname=check_hostname))
    try:
        status, body = client.get(path, host or sni or "localhost")
        return status, body, client.peer()
    finally:
        client.close()


def refused(port: int, sni: str | None, path: str = "/", *, host: str | None = None, ca: Path | None = None,
            cert: tuple[Path, Path] | None = None, verify: bool = True) -> str:
    """The way a request fails: the handshake or the first read errors, or the connection closes with no
    response. Fails the test if an HTTP response arrives."""
    try:
        status, body, _ = https_get(port, sni, path, host=host, ca=ca, cert=cert, verify=verify)
    except ssl.SSLError as exc:
        return f"ssl: {exc}"
    except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine) as exc:
        return f"closed: {exc!r}"
    raise AssertionError(f"expected the connection to be refused, got HTTP {status}: {body[:200]!r}")


def subject_cn(peer_cert: dict) -> str:
    for rdn in peer_cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "-sS", "--max-time", str(TIMEOUT_S), *args], capture_output=True, text=True, timeout=TIMEOUT_S * 3, check=False)


def s_client_subject(port: int, sni: str, ca: Path) -> tuple[str, str]:
    """(subject line, verify result line) as `openssl s_client` prints them."""
    result = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni, "-CAfile", str(ca)],
        input="", capture_output=True, text=True, timeout=TIMEOUT_S * 3, check=False,
    )
    subject = next((line for line in result.stdout.splitlines() if line.startswith("subject=")), "")
    verify = next((line.strip() for line in result.stdout.splitlines() if "Verify return code" in line), "")
    return subject, verify


def assert_workers_unchanged(edge: EdgeProcess, before: list[int]) -> None:
    assert edge.returncode is None, edge.log_tail()
    assert edge.worker_pids() == before, edge.log_tail()


# ---------------------------------------------------------------------------------------------------------
# istio.io: Secure Gateways (SIMPLE), with the task's YAML (hosts adapted only by the port map)

SECURE_SINGLE_HOST = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"""

HTTPBIN_VS = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"""

SECURE_MULTIPLE_HOSTS = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https-httpbin
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
  - port:
      number: 443
      name: https-helloworld
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: helloworld-credential
    hosts:
    - helloworld.example.com
"""

HELLOWORLD_VS = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: helloworld
spec:
  hosts:
  - helloworld.example.com
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        exact: /hello
    route:
    - destination:
        host: helloworld
        port:
          number: 5000
"""

SECURE_MUTUAL = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: MUTUAL
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"""


def service_entry(name: str, host: str, port: int, target_port: int, protocol: str = "HTTP", labels: dict | None = None) -> str:
    label_text = "".join(f"      {k}: {v}\n" for k, v in (labels or {}).items())
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata:\n  name: {name}\nspec:\n  hosts:\n  - {host}\n  resolution: STATIC\n"
        f"  ports:\n  - number: {port}\n    name: {protocol.lower()}\n    protocol: {protocol}\n    targetPort: {target_port}\n"
        f"  endpoints:\n  - address: 127.0.0.1\n" + (f"    labels:\n{label_text}" if label_text else "")
    )


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    with SampleBackends(tmp_path_factory.mktemp("http-backends"), http=["httpbin", "helloworld"]) as b:
        yield b


def backend_entries(backends: SampleBackends) -> dict[str, str]:
    return {
        "se-httpbin.yaml": service_entry("httpbin", "httpbin.default.svc.cluster.local", 8000, backends.port("httpbin")),
        "se-helloworld.yaml": service_entry("helloworld", "helloworld.default.svc.cluster.local", 5000, backends.port("helloworld")),
    }


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_secure_gateways_single_host_and_rotation(tmp_path, pki, backends):
    """The task's single-host flow: curl with --resolve and the example.com CA gets the teapot; the secret is
    replaced by example_certs2 (symlink swap, no restart, no reload): a connection opened before keeps working,
    curl with the new CA works and curl with the old CA fails verification."""
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", *pki.leaf("httpbin1", "httpbin.example.com"), version=1)
    config = {"gateway.yaml": SECURE_SINGLE_HOST, "httpbin-vs.yaml": HTTPBIN_VS, **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
        port = edge.port(443)
        resolve = f"httpbin.example.com:{port}:127.0.0.1"
        out = curl("-HHost:httpbin.example.com", "--resolve", resolve, "--cacert", str(pki.ca1_file), "-o", "/dev/null",
                   "-w", "%{http_code}", f"https://httpbin.example.com:{port}/status/418")
        assert out.returncode == 0 and out.stdout == "418", out.stderr
        # Routing is the server's own route table: /hello is not on httpbin's VirtualService.
        status, _, _ = https_get(port, "httpbin.example.com", "/hello", ca=pki.ca1_file)
        assert status == 404

        old = TLSClient(port, "httpbin.example.com", client_context(pki.ca1_file))
        assert old.get("/status/200", "httpbin.example.com")[0] == 200
        workers = edge.worker_pids()

        install_credential(creds, "httpbin-credential", pki.root / "httpbin2.crt", pki.root / "httpbin2.key", version=2)
        # Every worker re-checks the files on its first handshake after the interval.
        time.sleep(ROTATION_CHECK_INTERVAL_S + 0.3)
        for _ in range(6):  # several new connections, spread over both workers by the kernel
            out = curl("-HHost:httpbin.example.com", "--resolve", resolve, "--cacert", str(pki.ca2_file), "-o", "/dev/null",
                       "-w", "%{http_code}", f"https://httpbin.example.com:{port}/status/418")
            assert out.returncode == 0 and out.stdout == "418", out.stderr
        out = curl("-HHost:httpbin.example.com", "--resolve", resolve, "--cacert", str(pki.ca1_file),
                   f"https://httpbin.example.com:{port}/status/418")
        assert out.returncode != 0 and "certificate" in out.stderr.lower(), out
        # The connection made before the rotation is untouched.
        assert old.get("/status/201", "httpbin.example.com")[0] == 201
        old.close()
        assert_workers_unchanged(edge, workers)
        edge.wait_for_log("context reloaded")  # a worker's log line reaches edge.log a moment after its handshake


def test_secure_gateways_multiple_hosts_sni(tmp_path, pki, backends):
    """Two certificates on one port chosen by SNI (the task's multiple-hosts step), plus SNI precedence:
    unknown names and no SNI are refused because no server has `*` hosts."""
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key")
    install_credential(creds, "helloworld-credential", pki.root / "helloworld.crt", pki.root / "helloworld.key")
    config = {"gateway.yaml": SECURE_MULTIPLE_HOSTS, "httpbin-vs.yaml": HTTPBIN_VS, "helloworld-vs.yaml": HELLOWORLD_VS,
              **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
        port = edge.port(443)
        status, body, peer = https_get(port, "helloworld.example.com", "/hello", ca=pki.ca1_file)
        assert status == 200 and json.loads(body)["instance"] == "helloworld"
        assert subject_cn(peer) == "helloworld.example.com"
        headers = json.loads(body)["headers"]
        assert headers["x-forwarded-proto"] == "https"
        status, body, peer = https_get(port, "httpbin.example.com", "/status/418", ca=pki.ca1_file)
        assert status == 418 and subject_cn(peer) == "httpbin.example.com"
        # SNI picks the chain and its route table: helloworld's certificate never serves httpbin's routes.
        status, _, peer = https_get(port, "helloworld.example.com", "/status/418", host="httpbin.example.com", ca=pki.ca1_file)
        assert status == 404 and subject_cn(peer) == "helloworld.example.com"
        if CURL:
            out = curl("-HHost:helloworld.example.com", "--resolve", f"helloworld.example.com:{port}:127.0.0.1",
                       "--cacert", str(pki.ca1_file), "-o", "/dev/null", "-w", "%{http_code}", f"https://helloworld.example.com:{port}/hello")
            assert out.stdout == "200", out.stderr
        workers = edge.worker_pids()
        assert refused(port, "unknown.example.com", verify=False)
        assert refused(port, None, host="httpbin.example.com", verify=False)  # curl https://1.2.3.4 -H Host:...
        assert_workers_unchanged(edge, workers)


WILDCARD_AND_CATCH_ALL = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-exact, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-wild, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: wild-credential}
    hosts: ["*.wild.example.com"]
  - port: {number: 443, name: https-any, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: helloworld-credential}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: everything
spec:
  hosts: ["*"]
  gateways: [mygateway]
  http:
  - route:
    - destination: {host: helloworld, port: {number: 5000}}
"""


def test_sni_precedence_exact_wildcard_catch_all(tmp_path, pki, backends):
    creds = tmp_path / "creds"
    for name, leaf in (("httpbin-credential", "httpbin1"), ("wild-credential", "wild"), ("helloworld-credential", "helloworld")):
        install_credential(creds, name, pki.root / f"{leaf}.crt", pki.root / f"{leaf}.key")
    config = {"gateway.yaml": WILDCARD_AND_CATCH_ALL, **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
        port = edge.port(443)
        cases = [
            ("httpbin.example.com", "httpbin.example.com"),
            ("HTTPBIN.example.com", "httpbin.example.com"),
            ("a.wild.example.com", "*.wild.example.com"),
            ("a.b.wild.example.com", "*.wild.example.com"),
            ("other.example.org", "helloworld.example.com"),
            (None, "helloworld.example.com"),  # no SNI: the `*` server
        ]
        for sni, expected_cn in cases:
            # Each server routes with its own table (server hosts ∩ VirtualService hosts), so Host = SNI.
            status, _, peer = https_get(port, sni, "/", host=(sni or "x.example").lower(), ca=pki.ca1_file, check_hostname=False)
            assert status == 200, sni
            assert subject_cn(peer) == expected_cn, sni
        # A Host outside the chosen server's hosts is a 404 even though the catch-all server would route it.
        status, _, peer = https_get(port, "httpbin.example.com", "/", host="other.example.org", ca=pki.ca1_file)
        assert status == 404 and subject_cn(peer) == "httpbin.example.com"


# ---------------------------------------------------------------------------------------------------------
# MUTUAL and OPTIONAL_MUTUAL


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_secure_gateways_mutual(tmp_path, pki, backends):
    """The task's MUTUAL step: without a client certificate curl fails with "certificate required"; with the
    client certificate it gets the teapot. A certificate from another CA fails the handshake."""
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key", pki.ca1_file)
    config = {"gateway.yaml": SECURE_MUTUAL, "httpbin-vs.yaml": HTTPBIN_VS, **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
        port = edge.port(443)
        resolve = f"httpbin.example.com:{port}:127.0.0.1"
        out = curl("-HHost:httpbin.example.com", "--resolve", resolve, "--cacert", str(pki.ca1_file),
                   f"https://httpbin.example.com:{port}/status/418")
        assert out.returncode != 0 and "certificate required" in out.stderr, out
        out = curl("-HHost:httpbin.example.com", "--resolve", resolve, "--cacert", str(pki.ca1_file),
                   "--cert", str(pki.root / "client.crt"), "--key", str(pki.root / "client.key"),
                   "-o", "/dev/null", "-w", "%{http_code}", f"https://httpbin.example.com:{port}/status/418")
        assert out.returncode == 0 and out.stdout == "418", out.stderr
        reason = refused(port, "httpbin.example.com", "/status/200", ca=pki.ca1_file,
                         cert=(pki.root / "stranger.crt", pki.root / "stranger.key"))
        assert reason.startswith("ssl:"), reason


MUTUAL_WITH_SANS = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-mutual, protocol: HTTPS}
    tls:
      mode: MUTUAL
      credentialName: httpbin-credential
      subjectAltNames: [client.example.com]
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    tls:
      mode: OPTIONAL_MUTUAL
      credentialName: helloworld-credential
    hosts: [helloworld.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: all
spec:
  hosts: [httpbin.example.com, helloworld.example.com]
  gateways: [mygateway]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"""


def test_mutual_subject_alt_names_and_optional_mutual(tmp_path, pki, backends):
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key", pki.ca1_file)
    install_credential(creds, "helloworld-credential", pki.root / "helloworld.crt", pki.root / "helloworld.key", pki.ca1_file)
    config = {"gateway.yaml": MUTUAL_WITH_SANS, **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
        port = edge.port(443)
        client = (pki.root / "client.crt", pki.root / "client.key")
        other = (pki.root / "other-client.crt", pki.root / "other-client.key")
        stranger = (pki.root / "stranger.crt", pki.root / "stranger.key")
        workers = edge.worker_pids()
        # MUTUAL + subjectAltNames: the right SAN passes, a valid certificate with another SAN is closed.
        status, _, _ = https_get(port, "httpbin.example.com", "/status/200", ca=pki.ca1_file, cert=client)
        assert status == 200
        assert refused(port, "httpbin.example.com", "/status/200", ca=pki.ca1_file, cert=other).startswith(("closed", "ssl"))
        assert refused(port, "httpbin.example.com", "/status/200", ca=pki.ca1_file).startswith("ssl")
        # OPTIONAL_MUTUAL: no certificate is fine, a good one is fine, a bad one fails the handshake.
        assert https_get(port, "helloworld.example.com", "/status/200", ca=pki.ca1_file)[0] == 200
        assert https_get(port, "helloworld.example.com", "/status/200", ca=pki.ca1_file, cert=other)[0] == 200
        assert refused(port, "helloworld.example.com", "/status/200", ca=pki.ca1_file, cert=stranger).startswith("ssl")
        assert_workers_unchanged(edge, workers)


# ---------------------------------------------------------------------------------------------------------
# istio.io: Ingress Gateway without TLS Termination (SNI passthrough), with the task's YAML

PASSTHROUGH_GATEWAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: PASSTHROUGH
    hosts:
    - nginx.example.com
"""

PASSTHROUGH_VS = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts:
  - nginx.example.com
  gateways:
  - mygateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - nginx.example.com
    route:
    - destination:
        host: my-nginx
        port:
          number: 443
"""

# A second passthrough Gateway on the same port (merged, told apart by SNI): an exact and a wildcard name.
API_PASSTHROUGH = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: apigateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: tls-api, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: [api.example.com, "*.wild.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api
spec:
  hosts: [api.example.com, "*.wild.example.com"]
  gateways: [apigateway]
  tls:
  - match:
    - port: 443
      sniHosts: [api.example.com]
    route:
    - destination: {host: api-backend, port: {number: 443}}
  - match:
    - sniHosts: ["*.wild.example.com"]
    route:
    - destination: {host: wild-backend, port: {number: 443}}
"""


@pytest.fixture(scope="module")
def tls_backends(tmp_path_factory, pki):
    """Three HTTPS sample backends, each with its own certificate."""
    work = tmp_path_factory.mktemp("tls-backends")
    with SampleBackends(work, https=["nginx"], tls_cert=pki.root / "nginx.crt", tls_key=pki.root / "nginx.key") as nginx, \
         SampleBackends(work, https=["api"], tls_cert=pki.root / "api.crt", tls_key=pki.root / "api.key") as api, \
         SampleBackends(work, https=["wild"], tls_cert=pki.root / "wild.crt", tls_key=pki.root / "wild.key") as wild:  # fmt: skip
        yield {"nginx": nginx.port("nginx"), "api": api.port("api"), "wild": wild.port("wild")}


def passthrough_entries(ports: dict[str, int]) -> dict[str, str]:
    return {
        "se-nginx.yaml": service_entry("my-nginx", "my-nginx.default.svc.cluster.local", 443, ports["nginx"], "TLS"),
        "se-api.yaml": service_entry("api-backend", "api-backend.default.svc.cluster.local", 443, ports["api"], "TLS"),
        "se-wild.yaml": service_entry("wild-backend", "wild-backend.default.svc.cluster.local", 443, ports["wild"], "TLS"),
    }


def test_sni_passthrough(tmp_path, pki, tls_backends):
    """The client's TLS session ends at the backend: it sees the backend's own certificate, and the backend
    sees the client's SNI. Unknown SNI, no SNI and garbage are closed; the workers stay up and keep serving."""
    config = {"gateway.yaml": PASSTHROUGH_GATEWAY, "nginx-vs.yaml": PASSTHROUGH_VS, "api.yaml": API_PASSTHROUGH,
              **passthrough_entries(tls_backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--access-log", "-")) as edge:
        port = edge.port(443)
        if CURL:  # the task's check
            out = curl("-v", "--resolve", f"nginx.example.com:{port}:127.0.0.1", "--cacert", str(pki.ca1_file),
                       f"https://nginx.example.com:{port}")
            assert out.returncode == 0, out.stderr
            assert "CN=nginx.example.com" in out.stderr and json.loads(out.stdout)["instance"] == "nginx"
        for sni, instance in (("nginx.example.com", "nginx"), ("api.example.com", "api"), ("x.wild.example.com", "wild")):
            status, body, peer = https_get(port, sni, "/", ca=pki.ca1_file)
            document = json.loads(body)
            assert status == 200 and document["instance"] == instance
            assert document["tls"]["sni"] == sni  # the backend terminated TLS itself
            assert subject_cn(peer) == (sni if instance != "wild" else "*.wild.example.com")
        if OPENSSL:
            subject, verify = s_client_subject(port, "api.example.com", pki.ca1_file)
            assert "CN = api.example.com" in subject or "CN=api.example.com" in subject, subject
            assert "0 (ok)" in verify

        workers = edge.worker_pids()
        assert refused(port, "unknown.example.com", verify=False)
        assert refused(port, None, verify=False)
        for junk in (b"GET / HTTP/1.1\r\nHost: nginx.example.com\r\n\r\n", b"\x16\x03\x01\xff\xff" + b"\x00" * 100, os.urandom(300)):
            for _ in range(4):  # both workers get some
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
                    sock.sendall(junk)
                    try:
                        assert sock.recv(100) == b""  # closed without a byte
                    except ConnectionResetError:
                        pass
        assert_workers_unchanged(edge, workers)
        for _ in range(6):
            assert https_get(port, "nginx.example.com", "/", ca=pki.ca1_file)[0] == 200
        # Access log: Envoy's lines for a spliced connection and for an SNI no chain matches.
        deadline = time.monotonic() + TIMEOUT_S
        while "unknown.example.com" not in edge.out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = edge.out_path.read_text().splitlines()
        assert any('"- - -" 0 NR filter_chain_not_found' in line and line.endswith(" unknown.example.com -") for line in lines), lines
        assert any("outbound|443||my-nginx.default.svc.cluster.local" in line and " nginx.example.com default/nginx" in line for line in lines), lines


MIXED_PORT = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mixed
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-httpbin, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: tls-nginx, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
  - port: {number: 443, name: tls-echo, protocol: TLS}
    tls: {mode: SIMPLE, credentialName: echo-credential}
    hosts: [echo.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin.example.com]
  gateways: [mixed]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts: [nginx.example.com]
  gateways: [mixed]
  tls:
  - match:
    - sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
spec:
  hosts: [echo.example.com]
  gateways: [mixed]
  tcp:
  - route:
    - destination: {host: echo, port: {number: 9000}}
"""


def test_terminate_passthrough_and_tls_tcp_on_one_port(tmp_path, pki, backends, tls_backends):
    """HTTPS termination, SNI passthrough and protocol TLS + SIMPLE (terminated, then TCP) share port 443."""
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key")
    echo_cert = pki.leaf("echo", "echo.example.com")
    install_credential(creds, "echo-credential", *echo_cert)
    with SampleBackends(tmp_path, tcp=["echo-v1"]) as tcp:
        config = {"gateway.yaml": MIXED_PORT, **backend_entries(backends), **passthrough_entries(tls_backends),
                  "se-echo.yaml": service_entry("echo", "echo.default.svc.cluster.local", 9000, tcp.port("echo-v1"), "TCP")}
        with EdgeProcess(tmp_path, config, gateway_ports=(443,), extra_args=("--credentials-dir", str(creds))) as edge:
            port = edge.port(443)
            status, body, peer = https_get(port, "httpbin.example.com", "/status/200", ca=pki.ca1_file)
            assert status == 200 and subject_cn(peer) == "httpbin.example.com"
            status, body, peer = https_get(port, "nginx.example.com", "/", ca=pki.ca1_file)
            assert status == 200 and json.loads(body)["instance"] == "nginx" and subject_cn(peer) == "nginx.example.com"
            ctx = client_context(pki.ca1_file)
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S), server_hostname="echo.example.com") as sock:
                assert subject_cn(sock.getpeercert()) == "echo.example.com"
                sock.sendall(b"hello over tls\n")
                received = b""
                while b"hello over tls\n" not in received:
                    chunk = sock.recv(4096)
                    assert chunk, received
                    received += chunk
                assert received == b"echo-v1\nhello over tls\n"


def _tls_get_after_proxy_header(port: int, ctx: ssl.SSLContext, sni: str, path: str) -> tuple[int, dict, dict]:
    """A load balancer's connection: a PROXY v1 header in clear, then TLS. (status, JSON body, peer certificate)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    raw.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n")
    with ctx.wrap_socket(raw, server_hostname=sni) as sock:
        peer = sock.getpeercert()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), peer


def test_proxy_protocol_before_tls_termination_and_passthrough(tmp_path, pki, backends, tls_backends):
    """--proxy-protocol on a TLS port: the header is read before the ClientHello, for terminated and
    passthrough chains alike; a connection that starts with a ClientHello is closed."""
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key")
    install_credential(creds, "echo-credential", *pki.leaf("echo", "echo.example.com"))
    with SampleBackends(tmp_path, tcp=["echo-v1"]) as tcp:
        config = {"gateway.yaml": MIXED_PORT, **backend_entries(backends), **passthrough_entries(tls_backends),
                  "se-echo.yaml": service_entry("echo", "echo.default.svc.cluster.local", 9000, tcp.port("echo-v1"), "TCP")}
        args = ("--credentials-dir", str(creds), "--proxy-protocol")
        with EdgeProcess(tmp_path, config, gateway_ports=(443,), workers=1, extra_args=args) as edge:
            port = edge.port(443)
            ctx = client_context(pki.ca1_file)
            status, body, peer = _tls_get_after_proxy_header(port, ctx, "httpbin.example.com", "/headers")
            assert status == 200 and subject_cn(peer) == "httpbin.example.com"
            assert body["headers"]["x-envoy-external-address"] == "203.0.113.7"
            assert body["headers"]["x-forwarded-proto"] == "https"
            status, body, peer = _tls_get_after_proxy_header(port, ctx, "nginx.example.com", "/")
            assert status == 200 and body["instance"] == "nginx" and subject_cn(peer) == "nginx.example.com"
            assert refused(port, "httpbin.example.com", "/headers", ca=pki.ca1_file)


# ---------------------------------------------------------------------------------------------------------
# TLS origination (DestinationRule trafficPolicy.tls)

HTTP_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""

# name → DestinationRule tls block (indented under `tls:`); every host is the same HTTPS backend whose
# certificate names only secure.backend.example.
ORIGINATION = {
    "secure": "mode: SIMPLE\n        caCertificates: {ca}",
    "alias": "mode: SIMPLE\n        caCertificates: {ca}",
    "pinned": "mode: SIMPLE\n        caCertificates: {ca}\n        subjectAltNames: [secure.backend.example]",
    "wrongsan": "mode: SIMPLE\n        caCertificates: {ca}\n        subjectAltNames: [nope.example]",
    "untrusted": "mode: SIMPLE\n        caCertificates: {other_ca}",
    "system": "mode: SIMPLE",  # no caCertificates: the system trust store, which does not know our CA
    "insecure": "mode: SIMPLE\n        insecureSkipVerify: true",
    "sni": "mode: SIMPLE\n        caCertificates: {ca}\n        sni: secure.backend.example",
}


def origination_config(backend_port: int, ca: Path, other_ca: Path) -> dict[str, str]:
    config = {"gateway.yaml": HTTP_GATEWAY}
    for name, tls in ORIGINATION.items():
        host = f"{name}.backend.example"
        config[f"{name}.yaml"] = (
            service_entry(name, host, 80, backend_port)
            + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata:\n  name: {name}\nspec:\n  host: {host}\n  trafficPolicy:\n    portLevelSettings:\n"
            f"    - port: {{number: 80}}\n      tls:\n        {tls.format(ca=ca, other_ca=other_ca)}\n"
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata:\n  name: {name}\nspec:\n  hosts: [{host}]\n  gateways: [gw]\n  http:\n"
            f"  - route:\n    - destination: {{host: {host}, port: {{number: 80}}}}\n"
        )
    # Another name routed to the same cluster: auto SNI must not reuse a connection verified for another Host.
    config["aliased.yaml"] = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata:\n  name: aliased\nspec:\n  hosts: [aliased.example]\n  gateways: [gw]\n  http:\n"
        "  - route:\n    - destination: {host: secure.backend.example, port: {number: 80}}\n"
    )
    return config


def test_tls_origination(tmp_path, pki):
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    cert, key = pki.root / "secure-backend.crt", pki.root / "secure-backend.key"
    with SampleBackends(tmp_path, https=["secure"], tls_cert=cert, tls_key=key) as backend:
        config = origination_config(backend.port("secure"), pki.ca1_file, other_ca)
        with EdgeProcess(tmp_path, config, gateway_ports=(80,)) as edge:
            port = edge.port(80)

            def get(name: str) -> tuple[int, dict]:
                host = name if "." in name else f"{name}.backend.example"
                status, body, _ = http_get(port, "/headers", host=host)
                return status, (json.loads(body) if status == 200 else {"body": body})

            # Auto SNI = Host, verified against the certificate (auto SAN validation).
            status, doc = get("secure")
            assert status == 200 and doc["tls"]["sni"] == "secure.backend.example" and doc["tls"]["version"].startswith("TLSv1.")
            # Keep-alive: more requests reuse the pooled TLS connection (one per worker at most).
            def backend_stats(path: str) -> dict:  # SampleBackends.stats speaks plain HTTP; this listener is TLS
                return json.loads(https_get(backend.port("secure"), "secure.backend.example", path, ca=pki.ca1_file)[1])

            backend_stats("/__reset")
            for _ in range(6):
                assert get("secure")[0] == 200
            stats = backend_stats("/__stats")
            assert stats["requests_total"] == 6 and stats["connections_total"] <= 2
            # Same cluster, another Host: auto SNI sends that Host and the certificate does not cover it, even
            # though pooled connections to the same endpoint (verified for secure.backend.example) are idle.
            for _ in range(4):
                assert get("aliased.example")[0] == 503
            assert backend_stats("/__stats")["requests_total"] == 6
            # Host not in the certificate and no SANs configured: refused (503, upstream TLS failure).
            status, doc = get("alias")
            assert status == 503, doc
            # subjectAltNames configured: checked instead of the Host.
            status, doc = get("pinned")
            assert status == 200 and doc["tls"]["sni"] == "pinned.backend.example"
            assert get("wrongsan")[0] == 503
            assert get("untrusted")[0] == 503
            assert get("system")[0] == 503
            assert get("insecure")[0] == 200
            # Explicit sni: sent as is, the chain is verified.
            status, doc = get("sni")
            assert status == 200 and doc["tls"]["sni"] == "secure.backend.example"


HTTPS_REDIRECT = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.example.com]
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"""


def test_https_redirect(tmp_path, pki, backends):
    creds = tmp_path / "creds"
    install_credential(creds, "httpbin-credential", pki.root / "httpbin1.crt", pki.root / "httpbin1.key")
    config = {"gateway.yaml": HTTPS_REDIRECT, **backend_entries(backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(80, 443), extra_args=("--credentials-dir", str(creds))) as edge:
        status, _, headers = http_get(edge.port(80), "/status/200?a=1", host="httpbin.example.com")
        assert status == 301 and headers["location"] == "https://httpbin.example.com/status/200?a=1"
        status, body, _ = https_get(edge.port(443), "httpbin.example.com", "/status/200", ca=pki.ca1_file)
        assert status == 200 and json.loads(body)["headers"]["x-forwarded-proto"] == "https"
