"""x-forwarded-client-cert behind MUTUAL and OPTIONAL_MUTUAL servers (issue 10, item 12).

Before: a backend behind a MUTUAL server got no x-forwarded-client-cert and could not know the client. Istio's
gateways run Envoy's SANITIZE_SET with subject, cert, URI and DNS (istio/istio gateway.go): the header carries the
verified certificate's Hash, Cert, Subject, URI and DNS, and a client's own header never passes.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import socket
import ssl
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import route_all, static_service

pytestmark = pytest.mark.e2e

HOST = "app.example.com"
CLIENT_URI = "spiffe://cluster.local/ns/default/sa/client"


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, sans: list, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    def __init__(self, root: Path):
        self.root = root
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
        self.ca = _cert(ca_name, ca_key, ca_name, ca_key, [], ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]), server_key, ca_name, ca_key, [x509.DNSName(HOST)])
        client_key = ec.generate_private_key(ec.SECP256R1())
        self.client_subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme, Inc"),
            x509.NameAttribute(NameOID.COMMON_NAME, "client one"),
        ])  # fmt: skip
        self.client = _cert(self.client_subject, client_key, ca_name, ca_key, [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName("client.example")])
        creds = root / "creds" / "app-cred"
        creds.mkdir(parents=True)
        pem = serialization.Encoding.PEM
        (creds / "tls.crt").write_bytes(server.public_bytes(pem))
        (creds / "tls.key").write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (creds / "ca.crt").write_bytes(self.ca.public_bytes(pem))
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(pem))
        self.client_cert_file = root / "client.crt"
        self.client_cert_file.write_bytes(self.client.public_bytes(pem))
        self.client_key_file = root / "client.key"
        self.client_key_file.write_bytes(client_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def gateway(mode: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: {mode}, credentialName: app-cred}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
"""


def https_get(port: int, pki: Pki, *, with_client_cert: bool, headers: dict | None = None) -> int:
    """One HTTPS request with SNI app.example.com (the server's chain matches on it), the status it got."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if with_client_cert:
        context.load_cert_chain(str(pki.client_cert_file), str(pki.client_key_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=HOST) as tls:
        lines = ["GET /xfcc HTTP/1.1", f"Host: {HOST}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        response.read()
        return response.status


def parse_xfcc(value: str) -> list[tuple[str, str]]:
    pairs = []
    for part in value.split(";"):
        key, _, val = part.partition("=")
        pairs.append((key, val))
    return pairs


@pytest.mark.parametrize("mode", ["MUTUAL", "OPTIONAL_MUTUAL"])
def test_the_backend_learns_the_verified_client_certificate(tmp_path, mode):
    pki = Pki(tmp_path)
    with FixedBackend("be") as backend:
        config = {"gw.yaml": gateway(mode), "vs.yaml": route_all(HOST, "be.local"), "se.yaml": static_service("be.local", backend.port)}
        with EdgeProcess(tmp_path, config, gateway_ports=(443, 80), extra_args=("--credentials-dir", str(tmp_path / "creds"))) as edge:
            forged = {"X-Forwarded-Client-Cert": "Hash=forged;Subject=\"CN=admin\""}
            assert https_get(edge.port(443), pki, with_client_cert=True, headers=forged) == 200
            xfcc = backend.requests()[-1].headers["x-forwarded-client-cert"]
            der = pki.client.public_bytes(serialization.Encoding.DER)
            assert parse_xfcc(xfcc) == [
                ("Hash", hashlib.sha256(der).hexdigest()),
                ("Cert", '"' + urllib.parse.quote(pki.client.public_bytes(serialization.Encoding.PEM).decode(), safe="") + '"'),
                ("Subject", '"' + pki.client_subject.rfc4514_string() + '"'),
                ("URI", CLIENT_URI),
                ("DNS", "client.example"),
            ]
            assert pki.client_subject.rfc4514_string() == "CN=client one,O=Acme\\, Inc,C=US"
            # A client's own header never passes: not over plain HTTP, not over TLS without a certificate.
            assert http_get(edge.port(80), "/xfcc", host=HOST, headers=forged)[0] == 200
            assert "x-forwarded-client-cert" not in backend.requests()[-1].headers
            if mode == "OPTIONAL_MUTUAL":
                assert https_get(edge.port(443), pki, with_client_cert=False, headers=forged) == 200
                assert "x-forwarded-client-cert" not in backend.requests()[-1].headers
